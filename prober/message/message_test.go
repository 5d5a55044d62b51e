package message

import (
	"bytes"
	"encoding/base64"
	"errors"
	"io"
	"io/fs"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/smtp-exporter/smtp_exporter/config"
)

// The texts exercise what transfer encodings get wrong: lines that start
// with a dot (SMTP's end of data), lines longer than 76 and 998 octets,
// trailing white space, "=" (quoted-printable's escape), a "From " line,
// non-ASCII, a tab and a text without a final line break.
var (
	awkwardText = ".\n" +
		".. two dots\n" +
		"From the start of a line\n" +
		strings.Repeat("long line ", 120) + "\n" +
		strings.Repeat("x", 1200) + "\n" +
		"trailing space   \n" +
		"tab\there, equals = sign, =3D literal\n" +
		"Grüße aus Köln — 日本語 ✓\n" +
		"\n" +
		"last line without newline"
	awkwardHTML = "<html><body>\n<p>Grüße &amp; hello</p>\n.<p>dot first</p>\n" +
		"<p>" + strings.Repeat("wide ", 300) + "</p>\n</body></html>\n"
)

func baseMail() *config.Mail {
	return &config.Mail{
		From: "canary@example.net",
		To:   []string{"inbox@example.org", "second@example.org"},
		Cc:   []string{"copy@example.com"},
		Bcc:  []string{"hidden-bcc-recipient@example.com"},
		Data: true,
		Message: config.Message{
			Subject: "smtp_exporter canary",
			Body:    "hello\n",
		},
	}
}

// build builds m and checks the wire format every caller relies on.
func build(t testing.TB, m *config.Mail, opts Options) *Message {
	t.Helper()
	msg, err := Build(m, opts)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	assertWireFormat(t, msg.Bytes)
	return msg
}

// assertWireFormat checks, independently of the package's own guard, that
// b is 7-bit, uses CRLF only and keeps every line within 998 octets.
func assertWireFormat(t testing.TB, b []byte) {
	t.Helper()
	if !bytes.HasSuffix(b, []byte("\r\n")) {
		t.Fatalf("message does not end with CRLF: %q", tail(b))
	}
	for i, line := range strings.Split(strings.TrimSuffix(string(b), "\r\n"), "\r\n") {
		if strings.ContainsAny(line, "\r\n") {
			t.Fatalf("line %d has a bare CR or LF: %q", i+1, line)
		}
		if len(line) > 998 {
			t.Fatalf("line %d is %d octets long", i+1, len(line))
		}
		for _, c := range []byte(line) {
			if c >= 0x80 || c == 0 {
				t.Fatalf("line %d has byte 0x%02x: %q", i+1, c, line)
			}
		}
	}
}

func tail(b []byte) []byte { return b[max(0, len(b)-40):] }

func parse(t testing.TB, b []byte) *mail.Message {
	t.Helper()
	r, err := mail.ReadMessage(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("mail.ReadMessage: %v\n%s", err, b)
	}
	return r
}

// canonicalText is what a text part must decode to: the configured text
// with CRLF line breaks and a final line break.
func canonicalText(s string) string {
	s = strings.ReplaceAll(s, "\r\n", "\n")
	s = strings.ReplaceAll(s, "\r", "\n")
	if s != "" && !strings.HasSuffix(s, "\n") {
		s += "\n"
	}
	return strings.ReplaceAll(s, "\n", "\r\n")
}

func decodeHeader(t testing.TB, v string) string {
	t.Helper()
	var d mime.WordDecoder
	s, err := d.DecodeHeader(v)
	if err != nil {
		t.Fatalf("decoding %q: %v", v, err)
	}
	return s
}

func TestHeaders(t *testing.T) {
	m := baseMail()
	m.Message.FromName = "Canary Prüfer"
	m.Message.ReplyTo = "Mail Ops <ops@example.net>"
	m.Message.Subject = "Kanarienvogel: Zustellung geprüft ✓ " + strings.Repeat("lang ", 30)
	m.Message.Priority = 2
	m.Message.Headers = map[string]string{
		"X-Team":      "mail-ops",
		"X-Note":      "grüße",
		"X-Aardvark":  "first",
		"List-Id":     "canary <canary.example.net>",
		"X-Long-Text": strings.Repeat("word ", 100),
	}
	now := time.Date(2025, 3, 4, 5, 6, 7, 0, time.FixedZone("", 3600))
	msg := build(t, m, Options{ProbeID: "probe-1234", Now: now})
	r := parse(t, msg.Bytes)
	h := r.Header

	from, err := mail.ParseAddress(h.Get("From"))
	if err != nil {
		t.Fatalf("From %q: %v", h.Get("From"), err)
	}
	if from.Name != m.Message.FromName || from.Address != m.From {
		t.Errorf("From = %q <%s>, want %q <%s>", from.Name, from.Address, m.Message.FromName, m.From)
	}
	if !strings.Contains(h.Get("From"), "=?utf-8?") {
		t.Errorf("non-ASCII display name not RFC 2047-encoded: %q", h.Get("From"))
	}
	for _, tc := range []struct {
		name string
		want []string
	}{{"To", m.To}, {"Cc", m.Cc}} {
		list, err := h.AddressList(tc.name)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		var got []string
		for _, a := range list {
			got = append(got, a.Address)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s = %v, want %v", tc.name, got, tc.want)
		}
	}
	if v := h.Get("Bcc"); v != "" {
		t.Errorf("Bcc header present: %q", v)
	}
	if bytes.Contains(bytes.ToLower(msg.Bytes), []byte("bcc")) || bytes.Contains(msg.Bytes, []byte(m.Bcc[0])) {
		t.Errorf("message reveals the Bcc recipient:\n%s", msg.Bytes)
	}
	replyTo, err := mail.ParseAddress(h.Get("Reply-To"))
	if err != nil || replyTo.Name != "Mail Ops" || replyTo.Address != "ops@example.net" {
		t.Errorf("Reply-To = %q (%v), want Mail Ops <ops@example.net>", h.Get("Reply-To"), err)
	}
	if got := decodeHeader(t, h.Get("Subject")); got != m.Message.Subject {
		t.Errorf("Subject decodes to %q, want %q", got, m.Message.Subject)
	}
	date, err := h.Date()
	if err != nil || !date.Equal(now) {
		t.Errorf("Date = %q (%v), want %v", h.Get("Date"), err, now)
	}
	if got := h.Get("Message-ID"); got != msg.MessageID {
		t.Errorf("Message-ID header %q, Message.MessageID %q", got, msg.MessageID)
	}
	if !strings.HasPrefix(msg.MessageID, "<") || !strings.HasSuffix(msg.MessageID, ".probe-1234@example.net>") {
		t.Errorf("Message-ID = %q, want <random.probe-1234@example.net>", msg.MessageID)
	}
	for name, want := range map[string]string{
		"MIME-Version":   "1.0",
		"Auto-Submitted": "auto-generated",
		ProbeIDHeader:    "probe-1234",
		"X-Priority":     "2",
		"X-Team":         "mail-ops",
		"X-Aardvark":     "first",
		"List-Id":        "canary <canary.example.net>",
		"X-Long-Text":    strings.TrimSpace(m.Message.Headers["X-Long-Text"]),
		"X-Note":         "grüße",
	} {
		if got := decodeHeader(t, h.Get(name)); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	// Configured headers come after the generated ones, in sorted order.
	headerEnd := bytes.Index(msg.Bytes, []byte("\r\n\r\n"))
	var positions []int
	for _, name := range []string{ProbeIDHeader, "List-Id", "X-Aardvark", "X-Long-Text", "X-Note", "X-Team"} {
		positions = append(positions, bytes.Index(msg.Bytes[:headerEnd], []byte("\r\n"+name+":")))
	}
	if !slices.IsSorted(positions) || positions[0] < 0 {
		t.Errorf("header positions %v are not in the expected order", positions)
	}
}

func TestOptionalHeadersOmitted(t *testing.T) {
	m := baseMail()
	m.To = nil
	msg := build(t, m, Options{})
	h := parse(t, msg.Bytes).Header
	for _, name := range []string{"To", "Reply-To", "X-Priority", "Bcc"} {
		if _, ok := h[name]; ok {
			t.Errorf("%s present: %q", name, h.Get(name))
		}
	}
	if list, err := h.AddressList("Cc"); err != nil || len(list) != 1 {
		t.Errorf("Cc = %q (%v), want the one configured address", h.Get("Cc"), err)
	}
	from, err := mail.ParseAddress(h.Get("From"))
	if err != nil || from.Name != "" || from.Address != m.From {
		t.Errorf("From without display name = %q (%v)", h.Get("From"), err)
	}
}

func TestMessageID(t *testing.T) {
	m := baseMail()
	first := build(t, m, Options{ProbeID: "p1", Hostname: "prober.example.com"})
	second := build(t, m, Options{ProbeID: "p1", Hostname: "prober.example.com"})
	if first.MessageID == second.MessageID {
		t.Errorf("two builds share the Message-ID %s", first.MessageID)
	}
	for _, msg := range []*Message{first, second} {
		if !strings.HasSuffix(msg.MessageID, ".p1@prober.example.com>") {
			t.Errorf("Message-ID %q does not use the probe id and hostname", msg.MessageID)
		}
		// net/mail accepts exactly one msg-id in a Message-ID field.
		ids, err := parse(t, msg.Bytes).Header.AddressList("Message-ID")
		if err != nil || len(ids) != 1 {
			t.Errorf("Message-ID %q does not parse as one id: %v", msg.MessageID, err)
		}
	}

	// A probe id with characters a msg-id cannot hold keeps the rest.
	odd := build(t, m, Options{ProbeID: "a b@c<d>\"e", Hostname: "[192.0.2.1]"})
	if !strings.HasSuffix(odd.MessageID, ".abcde@[192.0.2.1]>") {
		t.Errorf("Message-ID = %q, want the probe id's safe characters and the literal", odd.MessageID)
	}
	if got := parse(t, odd.Bytes).Header.Get(ProbeIDHeader); got != "a b@c<d>\"e" {
		t.Errorf("%s = %q, want the probe id unchanged", ProbeIDHeader, got)
	}

	if _, err := Build(m, Options{Hostname: "bad host"}); err == nil || !strings.Contains(err.Error(), "bad host") {
		t.Errorf("Build with an invalid hostname: err = %v, want one naming it", err)
	}
}

func TestDateDefaultsToNow(t *testing.T) {
	before := time.Now().Truncate(time.Second)
	msg := build(t, baseMail(), Options{})
	after := time.Now()
	date, err := parse(t, msg.Bytes).Header.Date()
	if err != nil {
		t.Fatalf("Date: %v", err)
	}
	if date.Before(before) || date.After(after) {
		t.Errorf("Date %v is not between %v and %v", date, before, after)
	}
}

// leaf is a non-multipart MIME part after decoding.
type leaf struct {
	mediaType string
	filename  string
	content   string
}

// leaves walks a parsed entity depth-first and decodes every leaf part. It
// also returns the media types of the multipart containers, outermost first.
func leaves(t *testing.T, contentType, encoding string, body io.Reader) (containers []string, parts []leaf) {
	t.Helper()
	mediaType, params, err := mime.ParseMediaType(contentType)
	if err != nil {
		t.Fatalf("Content-Type %q: %v", contentType, err)
	}
	if strings.HasPrefix(mediaType, "multipart/") {
		containers = append(containers, mediaType)
		mr := multipart.NewReader(body, params["boundary"])
		for {
			p, err := mr.NextRawPart()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("next part of %s: %v", mediaType, err)
			}
			c, l := leaves(t, p.Header.Get("Content-Type"), p.Header.Get("Content-Transfer-Encoding"), p)
			containers = append(containers, c...)
			if len(l) == 1 && l[0].filename == "" {
				if _, dp, err := mime.ParseMediaType(p.Header.Get("Content-Disposition")); err == nil {
					l[0].filename = dp["filename"]
				}
			}
			parts = append(parts, l...)
		}
		return containers, parts
	}
	switch strings.ToLower(encoding) {
	case "quoted-printable":
		body = quotedprintable.NewReader(body)
	case "base64":
		body = base64.NewDecoder(base64.StdEncoding, body)
	default:
		t.Fatalf("part %s has transfer encoding %q", mediaType, encoding)
	}
	content, err := io.ReadAll(body)
	if err != nil {
		t.Fatalf("decoding %s part: %v", mediaType, err)
	}
	if (mediaType == "text/plain" || mediaType == "text/html") && params["charset"] != "utf-8" {
		t.Errorf("%s part has charset %q, want utf-8", mediaType, params["charset"])
	}
	return nil, []leaf{{mediaType: mediaType, content: string(content)}}
}

func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestStructure(t *testing.T) {
	binary := make([]byte, 1000)
	for i := range binary {
		binary[i] = byte(i * 7)
	}
	pngPath := writeFile(t, "canary.png", binary)
	csvPath := writeFile(t, "data.bin", []byte("a,b\r\n1,2\r\n"))
	emptyPath := writeFile(t, "empty.unknownext", nil)

	for _, tc := range []struct {
		name        string
		body, html  string
		attachments []config.Attachment
		containers  []string
		want        []leaf
	}{{
		name:       "text only",
		body:       awkwardText,
		containers: nil,
		want:       []leaf{{"text/plain", "", canonicalText(awkwardText)}},
	}, {
		name: "html only",
		html: awkwardHTML,
		want: []leaf{{"text/html", "", canonicalText(awkwardHTML)}},
	}, {
		name:       "white space body counts as absent",
		body:       " \n",
		html:       awkwardHTML,
		containers: nil,
		want:       []leaf{{"text/html", "", canonicalText(awkwardHTML)}},
	}, {
		name:       "text and html",
		body:       awkwardText,
		html:       awkwardHTML,
		containers: []string{"multipart/alternative"},
		want: []leaf{
			{"text/plain", "", canonicalText(awkwardText)},
			{"text/html", "", canonicalText(awkwardHTML)},
		},
	}, {
		name: "text and attachments",
		body: "see attached\r\n",
		attachments: []config.Attachment{
			{Path: pngPath},
			{Path: csvPath, ContentType: "text/csv", Filename: "report.csv"},
			{Path: emptyPath},
		},
		containers: []string{"multipart/mixed"},
		want: []leaf{
			{"text/plain", "", "see attached\r\n"},
			{"image/png", "canary.png", string(binary)},
			{"text/csv", "report.csv", "a,b\r\n1,2\r\n"},
			{"application/octet-stream", "empty.unknownext", ""},
		},
	}, {
		name:        "text, html and an attachment",
		body:        awkwardText,
		html:        awkwardHTML,
		attachments: []config.Attachment{{Path: pngPath, Filename: "Prüfbericht 2025.png"}},
		containers:  []string{"multipart/mixed", "multipart/alternative"},
		want: []leaf{
			{"text/plain", "", canonicalText(awkwardText)},
			{"text/html", "", canonicalText(awkwardHTML)},
			{"image/png", "Prüfbericht 2025.png", string(binary)},
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			m := baseMail()
			m.Message.Body = tc.body
			m.Message.HTMLBody = tc.html
			m.Message.Attachments = tc.attachments
			msg := build(t, m, Options{ProbeID: "p"})
			r := parse(t, msg.Bytes)
			containers, got := leaves(t, r.Header.Get("Content-Type"), r.Header.Get("Content-Transfer-Encoding"), r.Body)
			if !slices.Equal(containers, tc.containers) {
				t.Errorf("multipart containers = %v, want %v", containers, tc.containers)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %d parts %+v, want %d", len(got), got, len(tc.want))
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Errorf("part %d = {%s %q %d bytes}, want {%s %q %d bytes}", i,
						got[i].mediaType, got[i].filename, len(got[i].content),
						tc.want[i].mediaType, tc.want[i].filename, len(tc.want[i].content))
					if got[i].content != tc.want[i].content {
						t.Errorf("part %d content:\n got %q\nwant %q", i, got[i].content, tc.want[i].content)
					}
				}
			}
		})
	}
}

func TestBase64LineLength(t *testing.T) {
	data := bytes.Repeat([]byte{0xff, 0x00, 0x42}, 1000)
	m := baseMail()
	m.Message.Attachments = []config.Attachment{{Path: writeFile(t, "blob.bin", data)}}
	msg := build(t, m, Options{})
	encoded := base64.StdEncoding.EncodeToString(data)
	start := bytes.Index(msg.Bytes, []byte(encoded[:76]))
	if start < 0 {
		t.Fatalf("attachment's base64 not found in the message")
	}
	lines := strings.Split(string(msg.Bytes[start:]), "\r\n")
	var joined strings.Builder
	for _, line := range lines {
		if line == "" {
			break
		}
		if len(line) > 76 {
			t.Fatalf("base64 line of %d characters", len(line))
		}
		joined.WriteString(line)
	}
	if joined.String() != encoded {
		t.Errorf("base64 lines do not join to the encoded attachment")
	}
}

func TestAttachmentContentTypeByExtension(t *testing.T) {
	for _, tc := range []struct {
		path, filename, contentType, want string
	}{
		{path: "canary.png", want: "image/png"},
		{path: "canary.pdf", want: "application/pdf"},
		{path: "canary.unknownext", want: "application/octet-stream"},
		{path: "noextension", want: "application/octet-stream"},
		// The recipient sees the filename, so its extension decides.
		{path: "upload.tmp", filename: "report.pdf", want: "application/pdf"},
		{path: "canary.png", contentType: "Text/Plain; Charset=\"utf-8\"", want: "text/plain"},
	} {
		t.Run(tc.path+tc.filename, func(t *testing.T) {
			m := baseMail()
			m.Message.Attachments = []config.Attachment{{
				Path: writeFile(t, tc.path, []byte("content")), Filename: tc.filename, ContentType: tc.contentType,
			}}
			msg := build(t, m, Options{})
			r := parse(t, msg.Bytes)
			_, parts := leaves(t, r.Header.Get("Content-Type"), "", r.Body)
			if len(parts) != 2 {
				t.Fatalf("got %d parts, want text and attachment", len(parts))
			}
			if parts[1].mediaType != tc.want || parts[1].content != "content" {
				t.Errorf("attachment = %s %q, want %s \"content\"", parts[1].mediaType, parts[1].content, tc.want)
			}
		})
	}
}

func TestAttachmentReadAtEachBuild(t *testing.T) {
	path := writeFile(t, "state.txt", []byte("first"))
	m := baseMail()
	m.Message.Attachments = []config.Attachment{{Path: path}}
	var contents []string
	for _, data := range []string{"first", "second"} {
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		r := parse(t, build(t, m, Options{}).Bytes)
		_, parts := leaves(t, r.Header.Get("Content-Type"), "", r.Body)
		contents = append(contents, parts[len(parts)-1].content)
	}
	if !slices.Equal(contents, []string{"first", "second"}) {
		t.Errorf("attachment contents across builds = %q, want the file as it was each time", contents)
	}
}

func TestAttachmentErrors(t *testing.T) {
	dir := t.TempDir()
	tooBig := filepath.Join(dir, "huge.bin")
	f, err := os.Create(tooBig)
	if err != nil {
		t.Fatal(err)
	}
	// Sparse: takes no disk space.
	if err := f.Truncate(config.MaxAttachmentBytes + 1); err != nil {
		t.Fatal(err)
	}
	f.Close()

	for _, tc := range []struct {
		name, path, wantText string
		wantNotExist         bool
	}{
		{name: "missing", path: filepath.Join(dir, "does-not-exist.pdf"), wantText: "no such file", wantNotExist: true},
		{name: "directory", path: dir, wantText: "not a regular file"},
		{name: "too large", path: tooBig, wantText: "limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := baseMail()
			m.Message.Attachments = []config.Attachment{{Path: tc.path}}
			msg, err := Build(m, Options{})
			if err == nil {
				t.Fatalf("Build succeeded with %d bytes, want an error", len(msg.Bytes))
			}
			if !strings.Contains(err.Error(), tc.path) || !strings.Contains(err.Error(), tc.wantText) {
				t.Errorf("error %q does not name %s and say %q", err, tc.path, tc.wantText)
			}
			if strings.Count(err.Error(), tc.path) != 1 {
				t.Errorf("error %q names the path more than once", err)
			}
			if got := errors.Is(err, fs.ErrNotExist); got != tc.wantNotExist {
				t.Errorf("errors.Is(err, fs.ErrNotExist) = %v, want %v", got, tc.wantNotExist)
			}
		})
	}
}

// An unvalidated configuration must not be able to inject header lines or
// a Bcc header; Build refuses rather than cleans.
func TestRejectsUnsafeInput(t *testing.T) {
	for _, tc := range []struct {
		name   string
		modify func(*config.Mail)
		want   string
	}{
		{"CRLF in subject", func(m *config.Mail) { m.Message.Subject = "hi\r\nBcc: x@example.com" }, "Subject"},
		{"LF in header value", func(m *config.Mail) { m.Message.Headers = map[string]string{"X-A": "a\nb"} }, "X-A"},
		{"Bcc as custom header", func(m *config.Mail) { m.Message.Headers = map[string]string{"bcc": "x@example.com"} }, "bcc"},
		{"From as custom header", func(m *config.Mail) { m.Message.Headers = map[string]string{"FROM": "x@example.com"} }, "FROM"},
		{"colon in header name", func(m *config.Mail) { m.Message.Headers = map[string]string{"X-A:B": "v"} }, "X-A:B"},
		{"CR in display name", func(m *config.Mail) { m.Message.FromName = "a\rb" }, "from_name"},
		{"bad from", func(m *config.Mail) { m.From = "not an address" }, "from"},
		{"bad cc", func(m *config.Mail) { m.Cc = []string{"ok@example.com", "a@b@c"} }, "cc.1"},
		{"non-ASCII address", func(m *config.Mail) { m.To = []string{"jörg@example.com"} }, "non-ASCII"},
		{"bad reply-to", func(m *config.Mail) { m.Message.ReplyTo = "<<>>" }, "reply_to"},
		{"unsplittable subject", func(m *config.Mail) { m.Message.Subject = strings.Repeat("x", 1000) }, "Subject"},
		{"bad content type", func(m *config.Mail) {
			m.Message.Attachments = []config.Attachment{{Path: writeFile(t, "a.txt", nil), ContentType: "no slash"}}
		}, "content type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := baseMail()
			tc.modify(m)
			msg, err := Build(m, Options{})
			if err == nil {
				t.Fatalf("Build succeeded, want an error:\n%s", msg.Bytes)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
	if _, err := Build(nil, Options{}); err == nil {
		t.Error("Build(nil) succeeded")
	}
}

// Apart from Date, Message-ID and the boundaries, the same input gives the
// same bytes.
func TestDeterministic(t *testing.T) {
	m := baseMail()
	m.Message.Body = awkwardText
	m.Message.HTMLBody = awkwardHTML
	m.Message.Headers = map[string]string{"X-B": "2", "X-A": "1", "X-C": "3"}
	m.Message.Attachments = []config.Attachment{{Path: writeFile(t, "a.png", []byte("png"))}}
	opts := Options{ProbeID: "same", Now: time.Unix(1700000000, 0)}
	normalise := func(msg *Message) string {
		s := strings.ReplaceAll(string(msg.Bytes), msg.MessageID, "<id>")
		r := parse(t, msg.Bytes)
		_, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
		s = strings.ReplaceAll(s, params["boundary"], "OUTER")
		// The inner boundary is the only other 60-hex-digit word.
		i := strings.Index(s, "multipart/alternative; boundary=")
		if i < 0 {
			t.Fatal("no multipart/alternative part")
		}
		inner := s[i+len("multipart/alternative; boundary=") : i+len("multipart/alternative; boundary=")+60]
		return strings.ReplaceAll(s, inner, "INNER")
	}
	first, second := normalise(build(t, m, opts)), normalise(build(t, m, opts))
	if first != second {
		t.Errorf("two builds differ beyond Message-ID and boundaries:\n%s\n---\n%s", first, second)
	}
}

// FuzzBuild feeds arbitrary subjects, display names, header values and
// bodies through Build: whatever it accepts must parse back, stay 7-bit and
// decode to what was configured.
func FuzzBuild(f *testing.F) {
	f.Add("smtp_exporter canary", "Canary", "value", "hello\n")
	f.Add("Grüße ✓ "+strings.Repeat("ä", 200), "Prüfer \"quoted\" (x)", "日本語", awkwardText)
	f.Add(strings.Repeat("word ", 300), strings.Repeat("n ", 100), strings.Repeat("v ", 600), ".\r\n..\r.\n")
	f.Add("  spaced   out  ", " ", "=?utf-8?q?not_encoded?=", "\xff\xfe invalid UTF-8\n")
	f.Add("", "", "", "")
	f.Add("x", `Prüfer \ backslash`, "x", "x")
	f.Fuzz(func(t *testing.T, subject, fromName, headerValue, body string) {
		m := baseMail()
		m.Message.Subject = subject
		m.Message.FromName = fromName
		m.Message.Headers = map[string]string{"X-Fuzz": headerValue}
		m.Message.Body = body
		msg, err := Build(m, Options{ProbeID: "fuzz", Now: time.Unix(0, 0)})
		if err != nil {
			// Only control characters and words too long for any line
			// are refused.
			for _, s := range []string{subject, fromName, headerValue} {
				if config.ContainsControl(s) || hasLongASCIIWord(s) {
					return
				}
			}
			t.Fatalf("Build refused acceptable input: %v", err)
		}
		assertWireFormat(t, msg.Bytes)
		r := parse(t, msg.Bytes)

		for name, want := range map[string]string{"Subject": subject, "X-Fuzz": headerValue} {
			// An ASCII value is sent as written, so a literal encoded-word
			// in it is decoded by the reader; nothing to compare then.
			if strings.Contains(want, "=?") {
				continue
			}
			if got := decodeHeader(t, r.Header.Get(name)); normaliseSpace(got) != normaliseSpace(want) {
				t.Errorf("%s decodes to %q, want %q", name, got, want)
			}
		}
		from, err := mail.ParseAddress(r.Header.Get("From"))
		if err != nil {
			t.Fatalf("From %q does not parse: %v", r.Header.Get("From"), err)
		}
		if !strings.Contains(fromName, "=?") && normaliseSpace(from.Name) != normaliseSpace(fromName) {
			t.Errorf("From name decodes to %q, want %q", from.Name, fromName)
		}
		if _, parts := leaves(t, r.Header.Get("Content-Type"), r.Header.Get("Content-Transfer-Encoding"), r.Body); len(parts) != 1 || parts[0].content != canonicalText(body) {
			t.Errorf("body decodes to %+v, want %q", parts, canonicalText(body))
		}
	})
}

// hasLongASCIIWord reports a run without spaces that no folding can fit in
// a 998-octet line. Non-ASCII values are encoded in short words instead.
func hasLongASCIIWord(s string) bool {
	if !isASCII(s) {
		return false
	}
	for _, w := range strings.Fields(s) {
		// Quoting a display name escapes quotes and backslashes.
		if len(w)+strings.Count(w, `"`)+strings.Count(w, `\`) > 900 {
			return true
		}
	}
	return false
}

// normaliseSpace undoes what unfolding may do to runs of white space and to
// white space at either end, which RFC 5322 does not preserve.
func normaliseSpace(s string) string { return strings.Join(strings.Fields(s), " ") }
