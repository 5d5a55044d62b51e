// Package message builds the canary e-mail that a probe submits with DATA.
//
// The result is a complete RFC 5322 message in 7-bit MIME: every line ends
// with CRLF and is at most 998 octets long, so any server accepts it without
// BODY=8BITMIME and relays that still enforce 7-bit pass it unchanged. The
// message is not dot-stuffed; that is the SMTP client's job.
package message

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"mime"
	"net/mail"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/smtp-exporter/smtp_exporter/config"
)

// Options carries what a probe adds to the configured message.
type Options struct {
	// ProbeID goes into the X-SMTP-Exporter-Probe-ID header so that a
	// delivered canary can be matched to the probe that sent it.
	ProbeID string
	// Hostname is the right-hand side of the Message-ID; default: the
	// domain of the From address.
	Hostname string
	// Now is the Date header; the zero value means time.Now().
	Now time.Time
}

// Message is a canary ready for DATA.
type Message struct {
	// Bytes is the whole message: CRLF line endings, 7-bit clean, not
	// dot-stuffed.
	Bytes []byte
	// MessageID is the Message-ID header value, with its angle brackets.
	MessageID string
}

// ProbeIDHeader carries Options.ProbeID.
const ProbeIDHeader = "X-SMTP-Exporter-Probe-ID"

const (
	// maxLineOctets is the RFC 5322 limit on a line, without its CRLF.
	maxLineOctets = 998
	// foldWidth is where header lines are folded when a space allows it
	// (the 78 characters RFC 5322 recommends).
	foldWidth = 78
	// maxProbeIDInMessageID keeps the Message-ID short whatever the caller
	// uses as probe id; the full id is in its own header anyway.
	maxProbeIDInMessageID = 64
)

// Build renders the canary described by m. Attachments are read from disk
// on every call, so a file changed between probes is sent as it is now.
// Bcc recipients never appear in the message: they exist only in the
// envelope.
func Build(m *config.Mail, opts Options) (*Message, error) {
	if m == nil {
		return nil, errors.New("no mail configured")
	}
	from, err := parseAddress("from", m.From)
	if err != nil {
		return nil, err
	}
	host := opts.Hostname
	if host == "" {
		host = from.Address[strings.LastIndexByte(from.Address, '@')+1:]
	}
	if !isMessageIDDomain(host) {
		return nil, fmt.Errorf("hostname %q cannot be the domain of a Message-ID", host)
	}
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	messageID := "<" + rand.Text() + messageIDProbePart(opts.ProbeID) + "@" + host + ">"

	msg := &m.Message
	var h headerWriter
	h.add("Date", now.Format(time.RFC1123Z))
	h.add("Message-ID", messageID)
	if config.ContainsControl(msg.FromName) {
		return nil, errors.New("from_name: must not contain control characters")
	}
	h.add("From", formatAddress(&mail.Address{Name: msg.FromName, Address: from.Address}))
	if err := h.addAddressList("To", "to", m.To); err != nil {
		return nil, err
	}
	if err := h.addAddressList("Cc", "cc", m.Cc); err != nil {
		return nil, err
	}
	if msg.ReplyTo != "" {
		replyTo, err := parseAddress("reply_to", msg.ReplyTo)
		if err != nil {
			return nil, err
		}
		h.add("Reply-To", formatAddress(replyTo))
	}
	if err := h.addText("Subject", msg.Subject); err != nil {
		return nil, err
	}
	h.add("MIME-Version", "1.0")
	// RFC 3834: tells vacation responders and mailing lists not to answer.
	h.add("Auto-Submitted", "auto-generated")
	if err := h.addText(ProbeIDHeader, opts.ProbeID); err != nil {
		return nil, err
	}
	if msg.Priority > 0 {
		h.add("X-Priority", strconv.Itoa(msg.Priority))
	}
	names := make([]string, 0, len(msg.Headers))
	for name := range msg.Headers {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if !config.IsHeaderName(name) {
			return nil, fmt.Errorf("headers: %q is not a valid header name", name)
		}
		// Checked again here, not only at load time, so that a Mail that
		// never went through validation cannot smuggle in a Bcc or a second From.
		if slices.Contains(config.GeneratedHeaders, strings.ToLower(name)) {
			return nil, fmt.Errorf("headers: %s is set by the exporter and cannot be overridden", name)
		}
		if err := h.addText(name, msg.Headers[name]); err != nil {
			return nil, err
		}
	}
	if h.err != nil {
		return nil, h.err
	}

	body, err := buildBody(msg)
	if err != nil {
		return nil, err
	}
	// The body's own fields (Content-Type, Content-Transfer-Encoding) close
	// the header, in a fixed order so that the output is reproducible.
	for _, name := range []string{"Content-Type", "Content-Transfer-Encoding"} {
		if v := body.header.Get(name); v != "" {
			h.add(name, v)
		}
	}
	if h.err != nil {
		return nil, h.err
	}
	out := &h.buf
	out.WriteString("\r\n")
	out.Write(body.content)
	if b := out.Bytes(); len(b) > 0 && !bytes.HasSuffix(b, []byte("\r\n")) {
		out.WriteString("\r\n")
	}
	if err := checkWireFormat(out.Bytes()); err != nil {
		// Unreachable unless the encoders above have a bug; refusing to
		// send is better than sending something a server may mangle.
		return nil, fmt.Errorf("built message is not 7-bit SMTP text: %w", err)
	}
	return &Message{Bytes: out.Bytes(), MessageID: messageID}, nil
}

// parseAddress accepts one RFC 5322 address, with or without a display name,
// whose addr-spec is ASCII: without SMTPUTF8 nothing else can be sent.
func parseAddress(field, s string) (*mail.Address, error) {
	if config.ContainsControl(s) {
		return nil, fmt.Errorf("%s: must not contain control characters", field)
	}
	a, err := mail.ParseAddress(s)
	if err != nil {
		return nil, fmt.Errorf("%s: %q is not an address: %w", field, s, err)
	}
	if !isASCII(a.Address) {
		return nil, fmt.Errorf("%s: %q: non-ASCII addresses are not supported", field, s)
	}
	return a, nil
}

// formatAddress is mail.Address.String, except that a non-ASCII display
// name with a backslash is B-encoded: String Q-encodes it and leaves the
// backslash bare, which RFC 2047 (section 5) does not allow in a phrase and
// net/mail cannot parse back.
func formatAddress(a *mail.Address) string {
	if a.Name != "" && !isASCII(a.Name) && strings.Contains(a.Name, `\`) {
		return mime.BEncoding.Encode("utf-8", a.Name) + " " + (&mail.Address{Address: a.Address}).String()
	}
	return a.String()
}

// messageIDProbePart keeps the characters of the probe id that are safe in
// the dot-atom left of a Message-ID's "@", so an odd id cannot make the
// header unparsable.
func messageIDProbePart(probeID string) string {
	var b strings.Builder
	for _, r := range probeID {
		if b.Len() == maxProbeIDInMessageID {
			break
		}
		if r < 0x80 && (r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			b.WriteRune(r)
		}
	}
	if b.Len() == 0 {
		return ""
	}
	return "." + b.String()
}

// isMessageIDDomain reports whether s is a dot-atom or a domain literal
// (RFC 5322 id-right), such as "mx.example.net" or "[192.0.2.1]".
func isMessageIDDomain(s string) bool {
	if len(s) > 255 {
		return false
	}
	if len(s) > 2 && s[0] == '[' && s[len(s)-1] == ']' {
		for _, c := range []byte(s[1 : len(s)-1]) {
			if c < 33 || c > 126 || c == '[' || c == ']' || c == '\\' {
				return false
			}
		}
		return true
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" {
			return false
		}
		for _, c := range []byte(label) {
			if c < 33 || c > 126 || strings.IndexByte(`()<>[]:;@\,."`, c) >= 0 {
				return false
			}
		}
	}
	return true
}

// headerWriter writes header fields folded at spaces; the first error sticks.
type headerWriter struct {
	buf bytes.Buffer
	err error
}

// addAddressList writes a comma-separated address field, or nothing for an
// empty list. key names the configuration field in errors.
func (h *headerWriter) addAddressList(name, key string, addrs []string) error {
	if len(addrs) == 0 {
		return nil
	}
	formatted := make([]string, len(addrs))
	for i, a := range addrs {
		parsed, err := parseAddress(key+"."+strconv.Itoa(i), a)
		if err != nil {
			return err
		}
		formatted[i] = formatAddress(parsed)
	}
	h.add(name, strings.Join(formatted, ", "))
	return h.err
}

// addText writes an unstructured field: a value that is not plain ASCII is
// RFC 2047 Q-encoded, in encoded-words that can be folded between them.
func (h *headerWriter) addText(name, value string) error {
	if config.ContainsControl(value) {
		return fmt.Errorf("header %s: value must not contain control characters", name)
	}
	if !isASCII(value) {
		value = mime.QEncoding.Encode("utf-8", value)
	}
	h.add(name, value)
	return h.err
}

// add writes one field, folding it before spaces to keep lines near
// foldWidth. A value with a run of more than about 990 characters without a
// space cannot be folded and is an error rather than a line servers reject.
func (h *headerWriter) add(name, value string) {
	if h.err != nil {
		return
	}
	field := name + ":"
	if value != "" {
		field += " " + value
	}
	// A line of only white space is not allowed (RFC 5322 section 3.2.2):
	// never fold between the colon and the value, nor within trailing
	// white space.
	from, end := len(name)+1, len(strings.TrimRight(field, " "))
	lineStart := 0
	for len(field)-lineStart > foldWidth {
		i := foldPoint(field, lineStart, from, end)
		if i < 0 {
			break
		}
		h.writeLine(name, field[lineStart:i])
		lineStart, from = i, i
	}
	h.writeLine(name, field[lineStart:])
}

func (h *headerWriter) writeLine(name, line string) {
	if h.err != nil {
		return
	}
	if len(line) > maxLineOctets {
		h.err = fmt.Errorf("header %s: a word is too long to fit in a line of %d octets", name, maxLineOctets)
		return
	}
	h.buf.WriteString(line)
	h.buf.WriteString("\r\n")
}

// foldPoint returns the index of the space before which the line starting
// at lineStart is best folded: the last one that keeps the line within
// foldWidth, else the first one after; -1 if there is none. The break must
// come after a character other than white space at or after from, and
// before end.
func foldPoint(field string, lineStart, from, end int) int {
	for from < end && field[from] == ' ' {
		from++
	}
	best := -1
	for i := from + 1; i < end; i++ {
		if i-lineStart > foldWidth && best >= 0 {
			break
		}
		if field[i] == ' ' {
			best = i
			if i-lineStart > foldWidth {
				break
			}
		}
	}
	return best
}

// checkWireFormat verifies what Build promises: only 7-bit bytes other than
// NUL, CR and LF only as CRLF, lines of at most 998 octets, a final CRLF.
func checkWireFormat(b []byte) error {
	lineStart := 0
	for i, c := range b {
		switch {
		case c == 0 || c >= 0x80:
			return fmt.Errorf("byte 0x%02x at offset %d", c, i)
		case c == '\r' && (i+1 == len(b) || b[i+1] != '\n'):
			return fmt.Errorf("bare CR at offset %d", i)
		case c == '\n':
			if i == 0 || b[i-1] != '\r' {
				return fmt.Errorf("bare LF at offset %d", i)
			}
			if n := i - 1 - lineStart; n > maxLineOctets {
				return fmt.Errorf("line of %d octets at offset %d", n, lineStart)
			}
			lineStart = i + 1
		}
	}
	if lineStart != len(b) {
		return errors.New("last line does not end with CRLF")
	}
	return nil
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
