package prober

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	"github.com/smtp-exporter/smtp_exporter/config"
)

// Transcript bounds: a hostile server must not make a Result grow without
// limit.
const (
	maxTranscriptLines   = 500
	maxTranscriptLineLen = 512
)

// transcriptLinesStart is the room made for a transcript's lines at its
// first line: a STARTTLS probe with AUTH and QUIT records some twenty.
const transcriptLinesStart = 24

// transcript records the conversation and mirrors it to the debug log.
//
// Redaction is a small state machine over the AUTH exchange, not a pattern
// on "AUTH PLAIN": a client "AUTH <mech> <initial-response>" line keeps only
// the verb and mechanism, and from then on every client line is replaced by
// Redacted until the server ends the exchange with a reply other than 334.
// LOGIN's username and password lines, PLAIN's answer to an empty 334 and
// CRAM-MD5's digest are all covered the same way. As a second guard, the
// redactor takes every registered secret out of every line, server lines
// included, and out of the log and the errors of the probe: logger is the
// probe's logger with every record redacted.
//
// The lines of a server's reply are recorded together once the reply is
// read, so that a secret split across them is found.
type transcript struct {
	start time.Time
	// logger redacts every record; lineLogger is the logger it wraps, for
	// the transcript's lines, which are redacted when recorded.
	logger, lineLogger *slog.Logger
	red                *redactor

	lines     []TranscriptLine
	truncated bool
	// reply holds the lines of the reply being read.
	reply []pendingLine

	inAuth bool
}

type pendingLine struct {
	at   time.Duration
	text string
}

func newTranscript(start time.Time, logger *slog.Logger) *transcript {
	red := newRedactor()
	return &transcript{start: start, red: red, lineLogger: logger,
		logger: slog.New(&redactingHandler{inner: logger.Handler(), red: red})}
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

// server takes one line of a reply; it is recorded with the rest of the
// reply by endReply or replyDone.
func (t *transcript) server(line string) {
	t.reply = append(t.reply, pendingLine{at: time.Since(t.start), text: line})
}

// endReply records the lines of the reply read so far, whole or broken off.
func (t *transcript) endReply() {
	if len(t.reply) == 0 {
		return
	}
	texts := make([]string, len(t.reply))
	for i, l := range t.reply {
		texts[i] = l.text
	}
	// The lines are redacted together without their codes, so that a
	// secret split across them is found, then each whole, so that one
	// reaching into a line's code is found too.
	for i, text := range t.red.redactLines(texts, replyLineHead) {
		t.record(t.reply[i].at, Server, t.red.show(text, maxTranscriptLineLen))
	}
	t.reply = t.reply[:0]
}

// replyDone tells the redactor a whole reply was read: anything but a 334
// challenge ends an AUTH exchange.
func (t *transcript) replyDone(code int) {
	t.endReply()
	if t.inAuth && code != 334 {
		t.inAuth = false
	}
}

// replyText is Reply.Text as an error may show it: the reply is redacted
// as a whole, then its first line is cut to max bytes.
func (t *transcript) replyText(rep *Reply, max int) string {
	if rep == nil || len(rep.Lines) == 0 {
		return ""
	}
	red := Reply{Enhanced: rep.Enhanced, Lines: t.red.redactLines(rep.Lines, enhancedHead)}
	return t.red.show(red.Text(), max)
}

// note records a remark of ours, such as the TLS handshake outcome.
func (t *transcript) note(format string, args ...any) {
	t.add(Note, fmt.Sprintf(format, args...))
}

// addSecret registers a string never to be shown, with its derived forms
// (redactor). A text that ends in its start is redacted too.
func (t *transcript) addSecret(s string) {
	t.red.add(s)
}

// addPassword registers, before the first packet, the password and what
// the mechanisms send of it: the PLAIN blob. LOGIN sends the password in
// base64 alone, which is one of its registered forms.
func (t *transcript) addPassword(username, password string) {
	t.red.add(password)
	if password != "" {
		blob := (&plainAuth{username: username, password: password}).blob()
		t.red.addComposite(string(blob), len(blob)-len(password))
	}
}

// addToken registers, before the first packet, a bearer token and the
// XOAUTH2 and OAUTHBEARER blobs it goes into for this target.
func (t *transcript) addToken(username, token, host string, port int) {
	t.red.add(token)
	if token == "" {
		return
	}
	t.red.addComposite("auth=Bearer "+token, len("auth=Bearer "))
	for _, name := range []string{config.MechanismXOAUTH2, config.MechanismOAUTHBEARER} {
		blob := string((&oauthAuth{name: name, username: username, token: token, host: host, port: port}).blob())
		t.red.addComposite(blob, strings.LastIndex(blob, token))
	}
}

// addResponse registers a SASL response and each of its parts but the
// username: the digest of CRAM-MD5's "username digest", the password of
// PLAIN's NUL-separated blob. A response starts with the username, so only
// whole forms of it count.
func (t *transcript) addResponse(resp []byte, username string) {
	if string(resp) == username {
		return
	}
	t.red.addExact(string(resp))
	for _, part := range strings.FieldsFunc(string(resp), func(r rune) bool { return r == 0 || r == ' ' }) {
		if part != username {
			t.red.addExact(part)
		}
	}
}

// scrub redacts every registered secret in s.
func (t *transcript) scrub(s string) string {
	return t.red.redact(s)
}

func (t *transcript) add(dir Direction, text string) {
	t.endReply()
	t.record(time.Since(t.start), dir, t.red.show(text, maxTranscriptLineLen))
}

// record stores a line already redacted and bounded, and logs it.
func (t *transcript) record(at time.Duration, dir Direction, text string) {
	transcriptLine.debug(t.lineLogger, lineMessage(dir), "line", text)
	if t.lines == nil {
		t.lines = make([]TranscriptLine, 0, transcriptLinesStart)
	}
	switch {
	case len(t.lines) < maxTranscriptLines-1:
		t.lines = append(t.lines, TranscriptLine{At: at, Dir: dir, Text: text})
	case !t.truncated:
		t.truncated = true
		t.lines = append(t.lines, TranscriptLine{At: at, Dir: Note, Text: "transcript truncated"})
	}
}

// lineMessage is the log message of a transcript line.
func lineMessage(dir Direction) string {
	switch dir {
	case Client:
		return "SMTP C"
	case Server:
		return "SMTP S"
	case Note:
		return "SMTP *"
	}
	return "SMTP " + string(dir)
}

// callSite logs the records of one place in the code at debug level, as
// slog.Logger.Debug does, with that place as their source, looked up once:
// slog.Logger looks it up with runtime.Callers for every record, which was
// more than half of what a probe's logging cost. For the places that log
// on every phase and every line of the conversation.
type callSite struct{ pc atomic.Uintptr }

// The call sites that log on every phase and every line.
var phaseStarted, phaseDone, transcriptLine callSite

func (c *callSite) debug(logger *slog.Logger, msg string, args ...any) {
	ctx := context.Background()
	if !logger.Enabled(ctx, slog.LevelDebug) {
		return
	}
	pc := c.pc.Load()
	if pc == 0 {
		var pcs [1]uintptr
		runtime.Callers(2, pcs[:]) // the caller of debug
		pc = pcs[0]
		c.pc.Store(pc)
	}
	r := slog.NewRecord(time.Now(), slog.LevelDebug, msg, pc)
	r.Add(args...)
	_ = logger.Handler().Handle(ctx, r)
}
