package integration

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const (
	moduleCanary       = "canary_full"
	moduleCanaryRSET   = "canary_rset"
	moduleCanaryNextUp = "canary_after_rset"
)

// The canary's configured content. The body has the lines SMTP must
// dot-stuff: a lone dot (which would end DATA), a leading dot and two.
const (
	canaryFromName = "Lab Prüfer"
	canarySubject  = "smtp_exporter lab canary – Prüfung ✓"
	canaryBody     = "First line of the lab canary.\n.\n.leading dot\n..two dots\nLast line, with an ümlaut.\n"
	canaryFilename = "canary-attachment.bin"
)

// canaryAttachment is what the canary module attaches, written by
// canaryModules before the exporter starts.
var canaryAttachment []byte

func canaryModules(l *Lab, dir string) (map[string]moduleSpec, error) {
	// Every byte value, CRLF and dot lines, then random bytes: whatever
	// the encoding, a byte changed on the way shows.
	var content bytes.Buffer
	for i := range 256 {
		content.WriteByte(byte(i))
	}
	content.WriteString("\r\n.\r\n..\r\n")
	random := make([]byte, 3000)
	if _, err := rand.Read(random); err != nil {
		return nil, err
	}
	content.Write(random)
	canaryAttachment = content.Bytes()
	path := filepath.Join(dir, canaryFilename)
	if err := os.WriteFile(path, canaryAttachment, 0o600); err != nil {
		return nil, err
	}
	return map[string]moduleSpec{
		moduleCanary: {
			TLS: "starttls", Port: l.PortSubmission, Mechanism: "PLAIN",
			Mail: &mailSpec{
				// Bcc: a second copy for the canary mailbox, as a
				// monitoring copy would be; Postfix delivers it once.
				To: []string{l.Canary}, Cc: []string{l.User}, Bcc: []string{l.Canary},
				FromName: canaryFromName, Subject: canarySubject, Body: canaryBody,
				Headers:     map[string]string{"X-Lab-Check": "integration"},
				Attachments: []string{path},
			},
		},
		moduleCanaryRSET: {
			TLS: "starttls", Port: l.PortSubmission, Mechanism: "PLAIN",
			Mail: &mailSpec{To: []string{l.Canary}, NoData: true},
		},
		moduleCanaryNextUp: {
			TLS: "starttls", Port: l.PortSubmission, Mechanism: "PLAIN",
			Mail: &mailSpec{To: []string{l.Canary}},
		},
	}, nil
}

// The canary goes all the way: Postfix accepts it, delivers it into the
// Maildirs of the To and Cc recipients, and what arrives is what was
// configured, byte for byte where it matters.
func TestCanaryDelivered(t *testing.T) {
	t.Parallel()
	l, e := sharedExporter(t)
	start := time.Now()
	m := e.probe(t, moduleCanary, l.Target(l.PortSubmission))
	m.Expect(t, "probe_success", nil, 1)
	checkPhases(t, m, []string{"connect", "banner", "ehlo", "starttls", "ehlo_tls", "auth", "mail", "rcpt", "data", "quit"})
	for phase, code := range map[string]float64{"mail": 250, "rcpt": 250, "data": 250, "quit": 221} {
		m.Expect(t, "probe_smtp_status_code", lbl("phase", phase), code)
	}
	for phase, code := range map[string]string{"mail": "2.1.0", "rcpt": "2.1.5", "data": "2.0.0"} {
		m.Expect(t, "probe_smtp_enhanced_status_code_info", lbl("phase", phase, "code", code), 1)
	}
	m.Expect(t, "probe_smtp_recipients_accepted", nil, 3)
	m.Expect(t, "probe_smtp_message_accepted", nil, 1)
	if t.Failed() {
		t.FailNow()
	}

	probeID := e.ProbeID(t, moduleCanary)
	messageID := e.logValue(t, moduleCanary, "Canary message accepted", "message_id")
	queueID := e.logValue(t, moduleCanary, "Canary message accepted", "queue_id")

	d := waitForProbeMessage(t, l.Maildir, probeID)
	h := d.Msg.Header
	if got := h.Get("Message-ID"); got != messageID || !strings.Contains(got, probeID) {
		t.Errorf("Message-ID %q, want %q as logged, which holds the probe id %s", got, messageID, probeID)
	}
	// Postfix's Received header names the queue id it answered with.
	if received := strings.Join(h["Received"], "\n"); queueID == "" || !strings.Contains(received, " id "+queueID) {
		t.Errorf("Received headers do not name queue id %q:\n%s", queueID, received)
	}
	if from, err := h.AddressList("From"); err != nil || len(from) != 1 || from[0].Name != canaryFromName || from[0].Address != l.User {
		t.Errorf("From %q (%v), want %q <%s>", h.Get("From"), err, canaryFromName, l.User)
	}
	for field, want := range map[string]string{"To": l.Canary, "Cc": l.User} {
		if list, err := h.AddressList(field); err != nil || len(list) != 1 || list[0].Address != want || list[0].Name != "" {
			t.Errorf("%s %q (%v), want <%s>", field, h.Get(field), err, want)
		}
	}
	if bcc, ok := h["Bcc"]; ok {
		t.Errorf("Bcc header %q delivered; Bcc recipients belong in the envelope only", bcc)
	}
	if subject, err := new(mime.WordDecoder).DecodeHeader(h.Get("Subject")); err != nil || subject != canarySubject {
		t.Errorf("Subject %q decodes to %q (%v), want %q", h.Get("Subject"), subject, err, canarySubject)
	}
	if date, err := h.Date(); err != nil || date.Before(start.Truncate(time.Second)) || date.After(time.Now()) {
		t.Errorf("Date %q (%v), want the time of the probe, %v", h.Get("Date"), err, start)
	}
	for field, want := range map[string]string{
		"Auto-Submitted": "auto-generated",
		"MIME-Version":   "1.0",
		"X-Lab-Check":    "integration",
	} {
		if got := h.Get(field); got != want {
			t.Errorf("%s %q, want %q", field, got, want)
		}
	}

	text, attachment := canaryParts(t, d)
	if text != canaryBody {
		t.Errorf("text part after quoted-printable decoding:\n%q\nwant\n%q", text, canaryBody)
	}
	if !bytes.Equal(attachment, canaryAttachment) {
		t.Errorf("attachment after base64 decoding: %d bytes, want the %d bytes of the file", len(attachment), len(canaryAttachment))
	}

	// The Cc recipient got the same message.
	cc := waitForProbeMessage(t, l.ProbeMaildir, probeID)
	if got := cc.Msg.Header.Get("Message-ID"); got != messageID {
		t.Errorf("Cc copy has Message-ID %q, want %q", got, messageID)
	}
}

// canaryParts returns the decoded text and attachment of a delivered
// canary, checking its MIME structure on the way.
func canaryParts(t *testing.T, d delivered) (string, []byte) {
	t.Helper()
	mediaType, params, err := mime.ParseMediaType(d.Msg.Header.Get("Content-Type"))
	if err != nil || mediaType != "multipart/mixed" || params["boundary"] == "" {
		t.Fatalf("Content-Type %q (%v), want multipart/mixed with a boundary", d.Msg.Header.Get("Content-Type"), err)
	}
	mr := multipart.NewReader(d.Msg.Body, params["boundary"])

	part, err := mr.NextRawPart()
	if err != nil {
		t.Fatalf("first part: %v", err)
	}
	if ct, cte := part.Header.Get("Content-Type"), part.Header.Get("Content-Transfer-Encoding"); ct != "text/plain; charset=utf-8" || cte != "quoted-printable" {
		t.Errorf("first part is %q in %q, want text/plain; charset=utf-8 in quoted-printable", ct, cte)
	}
	decoded, err := io.ReadAll(quotedprintable.NewReader(part))
	if err != nil {
		t.Fatalf("decoding the text part: %v", err)
	}
	// The Maildir stores lines with LF; the message was sent with CRLF.
	text := strings.ReplaceAll(string(decoded), "\r\n", "\n")

	part, err = mr.NextRawPart()
	if err != nil {
		t.Fatalf("second part: %v", err)
	}
	if cte := part.Header.Get("Content-Transfer-Encoding"); cte != "base64" {
		t.Errorf("attachment in %q, want base64", cte)
	}
	disposition, dparams, err := mime.ParseMediaType(part.Header.Get("Content-Disposition"))
	if err != nil || disposition != "attachment" || dparams["filename"] != canaryFilename {
		t.Errorf("Content-Disposition %q (%v), want attachment with filename %s", part.Header.Get("Content-Disposition"), err, canaryFilename)
	}
	attachment, err := io.ReadAll(base64.NewDecoder(base64.StdEncoding, part))
	if err != nil {
		t.Fatalf("decoding the attachment: %v", err)
	}
	if _, err := mr.NextRawPart(); !errors.Is(err, io.EOF) {
		t.Errorf("after the attachment: %v, want the end of the message", err)
	}
	return text, attachment
}

// With data: false the probe ends the transaction with RSET and Postfix
// delivers nothing. A canary sent after it, through the same queue to the
// same mailbox, marks when that RSET message would have arrived.
func TestCanaryRSETDeliversNothing(t *testing.T) {
	t.Parallel()
	l, e := sharedExporter(t)
	before := maildirFiles(t, l.Maildir)

	m := e.probe(t, moduleCanaryRSET, l.Target(l.PortSubmission))
	m.Expect(t, "probe_success", nil, 1)
	checkPhases(t, m, []string{"connect", "banner", "ehlo", "starttls", "ehlo_tls", "auth", "mail", "rcpt", "rset", "quit"})
	m.Expect(t, "probe_smtp_status_code", lbl("phase", "rset"), 250)
	m.Expect(t, "probe_smtp_enhanced_status_code_info", lbl("phase", "rset", "code", "2.0.0"), 1)
	m.Expect(t, "probe_smtp_recipients_accepted", nil, 1)
	m.ExpectAbsent(t, "probe_smtp_message_accepted")
	rsetID := e.ProbeID(t, moduleCanaryRSET)
	if transcript := e.CompleteTranscript(t, moduleCanaryRSET); clientSent(transcript, "DATA") || !clientSent(transcript, "RSET") {
		t.Errorf("want RSET and no DATA in the transcript: %v", transcript)
	}

	next := e.probe(t, moduleCanaryNextUp, l.Target(l.PortSubmission))
	next.Expect(t, "probe_success", nil, 1)
	waitForProbeMessage(t, l.Maildir, e.ProbeID(t, moduleCanaryNextUp))

	if found := messagesWithProbeID(t, l.Maildir, rsetID, before); len(found) > 0 {
		t.Errorf("the probe that sent RSET delivered %s", found[0].Path)
	}
}
