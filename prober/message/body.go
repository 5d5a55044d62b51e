package message

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/textproto"
	"path/filepath"
	"strings"

	"github.com/smtp-exporter/smtp_exporter/config"
)

// base64LineLength is the RFC 2045 limit for base64 lines.
const base64LineLength = 76

// entity is one MIME entity: its Content-* fields and its encoded content.
type entity struct {
	header  textproto.MIMEHeader
	content []byte
}

// buildBody returns the MIME body: a text part, text and HTML alternatives,
// and a multipart/mixed around them when there are attachments. A body of
// only white space counts as absent, as it does in the configuration.
func buildBody(msg *config.Message) (entity, error) {
	hasText := strings.TrimSpace(msg.Body) != ""
	hasHTML := strings.TrimSpace(msg.HTMLBody) != ""
	var body entity
	switch {
	case hasText && hasHTML:
		body = multipartEntity("alternative", textEntity("plain", msg.Body), textEntity("html", msg.HTMLBody))
	case hasHTML:
		body = textEntity("html", msg.HTMLBody)
	default:
		body = textEntity("plain", msg.Body)
	}
	if len(msg.Attachments) == 0 {
		return body, nil
	}
	parts := []entity{body}
	for _, a := range msg.Attachments {
		part, err := attachmentEntity(a)
		if err != nil {
			return entity{}, err
		}
		parts = append(parts, part)
	}
	return multipartEntity("mixed", parts...), nil
}

// textEntity encodes s as quoted-printable UTF-8 text. Line breaks become
// CRLF (the canonical form of text, RFC 2046) and a text that does not end
// with one gets one, so that the last line is a whole line.
func textEntity(subtype, s string) entity {
	// Every CR, LF and CRLF becomes LF before quoted-printable sees it: its
	// Writer drops the LF of "\r", a byte it escapes, "\n" (it still thinks
	// the LF ends the CR's line), which would join two lines.
	s = strings.ReplaceAll(s, "\r\n", "\n")
	s = strings.ReplaceAll(s, "\r", "\n")
	if s != "" && !strings.HasSuffix(s, "\n") {
		s += "\n"
	}
	var b bytes.Buffer
	w := quotedprintable.NewWriter(&b)
	// Writes to a bytes.Buffer cannot fail.
	_, _ = io.WriteString(w, s)
	_ = w.Close()
	return entity{
		header: textproto.MIMEHeader{
			"Content-Type":              {"text/" + subtype + "; charset=utf-8"},
			"Content-Transfer-Encoding": {"quoted-printable"},
		},
		content: b.Bytes(),
	}
}

// multipartEntity joins parts under a fresh random boundary.
func multipartEntity(subtype string, parts ...entity) entity {
	var b bytes.Buffer
	w := multipart.NewWriter(&b)
	for _, p := range parts {
		// Writes to a bytes.Buffer cannot fail.
		pw, _ := w.CreatePart(p.header)
		_, _ = pw.Write(p.content)
	}
	_ = w.Close()
	return entity{
		header: textproto.MIMEHeader{
			"Content-Type": {mime.FormatMediaType("multipart/"+subtype, map[string]string{"boundary": w.Boundary()})},
		},
		content: b.Bytes(),
	}
}

// attachmentEntity reads the file now and encodes it as base64.
func attachmentEntity(a config.Attachment) (entity, error) {
	data, err := config.ReadFile("attachment", a.Path, config.MaxAttachmentBytes)
	if err != nil {
		return entity{}, err
	}
	name := a.Filename
	if name == "" {
		name = filepath.Base(a.Path)
	}
	if config.ContainsControl(name) {
		return entity{}, fmt.Errorf("attachment %s: filename must not contain control characters", a.Path)
	}
	contentType, err := attachmentContentType(a.ContentType, name)
	if err != nil {
		return entity{}, fmt.Errorf("attachment %s: %w", a.Path, err)
	}

	disposition := contentDisposition(name)
	// Part fields are written unfolded; keep them within a line.
	if len("Content-Disposition: ")+len(disposition) > maxLineOctets || len("Content-Type: ")+len(contentType) > maxLineOctets {
		return entity{}, fmt.Errorf("attachment %s: filename or content type too long for a header line", a.Path)
	}

	encoded := base64.StdEncoding.EncodeToString(data)
	var b bytes.Buffer
	b.Grow(len(encoded) + len(encoded)/base64LineLength*2 + 2)
	for len(encoded) > 0 {
		n := min(base64LineLength, len(encoded))
		b.WriteString(encoded[:n])
		b.WriteString("\r\n")
		encoded = encoded[n:]
	}
	return entity{
		header: textproto.MIMEHeader{
			"Content-Type":              {contentType},
			"Content-Transfer-Encoding": {"base64"},
			"Content-Disposition":       {disposition},
		},
		content: b.Bytes(),
	}, nil
}

// attachmentContentType normalises the configured type, or guesses one from
// the extension of the name the recipient sees.
func attachmentContentType(configured, name string) (string, error) {
	ct := configured
	if ct == "" {
		ct = mime.TypeByExtension(filepath.Ext(name))
		if ct == "" {
			return "application/octet-stream", nil
		}
	}
	mediaType, params, err := mime.ParseMediaType(ct)
	if err != nil {
		return "", fmt.Errorf("content type %q: %w", ct, err)
	}
	if ct = mime.FormatMediaType(mediaType, params); ct == "" {
		return "", fmt.Errorf("content type %q cannot be written back", configured)
	}
	return ct, nil
}

// contentDisposition quotes a plain ASCII filename, which every client
// reads, and leaves the others to RFC 2231 encoding.
func contentDisposition(name string) string {
	if isASCII(name) && !strings.ContainsAny(name, `"\`) {
		return `attachment; filename="` + name + `"`
	}
	return mime.FormatMediaType("attachment", map[string]string{"filename": name})
}
