package prober

import (
	"cmp"
	"encoding/base64"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"
)

// Transcript bounds: a hostile server must not make a Result grow without
// limit.
const (
	maxTranscriptLines   = 500
	maxTranscriptLineLen = 512
	// minSecretLen keeps scrubbing from mangling a transcript over a
	// one-letter password; such a secret is still never sent in a stored
	// client line, which is redacted as a whole.
	minSecretLen = 4
)

// Redacted replaces credentials in the transcript and the log.
const Redacted = "<redacted>"

// transcript records the conversation and mirrors it to the debug log.
//
// Redaction is a small state machine over the AUTH exchange, not a pattern
// on "AUTH PLAIN": a client "AUTH <mech> <initial-response>" line keeps only
// the verb and mechanism, and from then on every client line is replaced by
// Redacted until the server ends the exchange with a reply other than 334.
// LOGIN's username and password lines, PLAIN's answer to an empty 334 and
// CRAM-MD5's digest are all covered the same way. As a second guard, every
// secret registered with addSecret is scrubbed from every line, server
// lines and error texts included.
type transcript struct {
	start  time.Time
	logger *slog.Logger

	lines     []TranscriptLine
	truncated bool

	inAuth  bool
	secrets []string
}

func newTranscript(start time.Time, logger *slog.Logger) *transcript {
	return &transcript{start: start, logger: logger}
}

// client records a line the client sends.
func (t *transcript) client(line string) {
	t.add(Client, t.redactClient(line))
}

func (t *transcript) redactClient(line string) string {
	if t.inAuth {
		return Redacted
	}
	verb, rest, _ := strings.Cut(line, " ")
	if !strings.EqualFold(verb, "AUTH") {
		return line
	}
	t.inAuth = true
	mech, initial, _ := strings.Cut(rest, " ")
	if initial != "" {
		return verb + " " + mech + " " + Redacted
	}
	return line
}

// server records one line of a reply.
func (t *transcript) server(line string) {
	t.add(Server, line)
}

// replyDone tells the redactor a whole reply was read: anything but a 334
// challenge ends an AUTH exchange.
func (t *transcript) replyDone(code int) {
	if t.inAuth && code != 334 {
		t.inAuth = false
	}
}

// note records a remark of ours, such as the TLS handshake outcome.
func (t *transcript) note(format string, args ...any) {
	t.add(Note, fmt.Sprintf(format, args...))
}

// base64Encodings are the alphabets a secret is also scrubbed in: a server
// that quotes what it was sent, decoded or re-encoded, must not get the
// secret into the transcript that way.
var base64Encodings = []*base64.Encoding{
	base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding,
}

// addSecret registers a string never to be shown, with its base64 forms.
func (t *transcript) addSecret(s string) {
	if len(s) < minSecretLen {
		return
	}
	forms := []string{s}
	for _, enc := range base64Encodings {
		forms = append(forms, enc.EncodeToString([]byte(s)))
	}
	for _, f := range forms {
		if !slices.Contains(t.secrets, f) {
			t.secrets = append(t.secrets, f)
		}
	}
	// Longest first, so that a secret inside another (the password inside
	// the PLAIN blob) does not leave the rest of the longer one readable.
	slices.SortStableFunc(t.secrets, func(a, b string) int { return cmp.Compare(len(b), len(a)) })
}

// addResponse registers a SASL response and each of its parts but the
// username: the digest of CRAM-MD5's "username digest", the password of
// PLAIN's NUL-separated blob.
func (t *transcript) addResponse(resp []byte, username string) {
	if string(resp) == username {
		return
	}
	t.addSecret(string(resp))
	for _, part := range strings.FieldsFunc(string(resp), func(r rune) bool { return r == 0 || r == ' ' }) {
		if part != username {
			t.addSecret(part)
		}
	}
}

// scrub replaces every registered secret in s.
func (t *transcript) scrub(s string) string {
	for _, secret := range t.secrets {
		if strings.Contains(s, secret) {
			s = strings.ReplaceAll(s, secret, Redacted)
		}
	}
	return s
}

func (t *transcript) add(dir Direction, text string) {
	text = printable(t.scrub(text), maxTranscriptLineLen)
	t.logger.Debug("SMTP "+string(dir), "line", text)
	switch {
	case len(t.lines) < maxTranscriptLines-1:
		t.lines = append(t.lines, TranscriptLine{At: time.Since(t.start), Dir: dir, Text: text})
	case !t.truncated:
		t.truncated = true
		t.lines = append(t.lines, TranscriptLine{At: time.Since(t.start), Dir: Note, Text: "transcript truncated"})
	}
}
