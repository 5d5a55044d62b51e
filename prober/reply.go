package prober

import (
	"fmt"
	"strconv"
	"strings"
)

// Reply is one SMTP reply, possibly multi-line.
type Reply struct {
	Code int
	// Enhanced is the RFC 3463 status code from the first line ("5.7.8"),
	// kept as text so that 5.1.10 and 5.2.0 stay apart; "" when absent.
	Enhanced string
	// Lines holds the text of each line after the code and separator.
	Lines []string
}

// Text returns the text of the first line without the enhanced code, for
// error messages.
func (r *Reply) Text() string {
	if r == nil || len(r.Lines) == 0 {
		return ""
	}
	return strings.TrimSpace(strings.TrimPrefix(r.Lines[0], r.Enhanced))
}

// ReplyError is a reply other than the one a command expected.
type ReplyError struct {
	// Command is the SMTP verb that got the reply ("RCPT"), never its
	// arguments, which may carry credentials.
	Command  string
	Code     int
	Enhanced string
	// Message is the server's text, shortened.
	Message string
}

func (e *ReplyError) Error() string {
	var b strings.Builder
	if e.Command != "" {
		b.WriteString(e.Command + ": ")
	}
	b.WriteString("server replied " + strconv.Itoa(e.Code))
	if e.Enhanced != "" {
		b.WriteString(" " + e.Enhanced)
	}
	if e.Message != "" {
		b.WriteString(" " + e.Message)
	}
	return b.String()
}

// Temporary reports a 4xx reply.
func (e *ReplyError) Temporary() bool { return e.Code >= 400 && e.Code < 500 }

// Permanent reports a 5xx reply.
func (e *ReplyError) Permanent() bool { return e.Code >= 500 && e.Code < 600 }

// ProtocolError is a reply that breaks the protocol: a malformed or
// mismatched code, an over-long line or reply, binary garbage.
type ProtocolError struct {
	Detail string
}

func (e *ProtocolError) Error() string { return "protocol error: " + e.Detail }

func protocolErrorf(format string, args ...any) error {
	return &ProtocolError{Detail: fmt.Sprintf(format, args...)}
}

// replyLine is one parsed line of a reply.
type replyLine struct {
	code  int
	final bool
	text  string
}

// parseReplyLine checks one line: three digits, the first 2 to 5 and the
// second 0 to 5 (RFC 5321 4.2), then a space, a hyphen or nothing; no
// control characters but tab. An error quotes the start of the line as red
// lets it be shown.
func parseReplyLine(line string, red *redactor) (replyLine, error) {
	if len(line) < 3 {
		return replyLine{}, protocolErrorf("reply line too short: %s", red.quote(line, 40))
	}
	for i := range 3 {
		if line[i] < '0' || line[i] > '9' {
			return replyLine{}, protocolErrorf("malformed reply code in %s", red.quote(line, 40))
		}
	}
	if line[0] < '2' || line[0] > '5' || line[1] > '5' {
		return replyLine{}, protocolErrorf("reply code %s out of range", line[:3])
	}
	code, _ := strconv.Atoi(line[:3])
	for i := 0; i < len(line); i++ {
		if c := line[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return replyLine{}, protocolErrorf("control character 0x%02x in reply", c)
		}
	}
	switch {
	case len(line) == 3:
		return replyLine{code: code, final: true}, nil
	case line[3] == ' ':
		return replyLine{code: code, final: true, text: line[4:]}, nil
	case line[3] == '-':
		return replyLine{code: code, text: line[4:]}, nil
	}
	return replyLine{}, protocolErrorf("malformed reply separator in %s", red.quote(line, 40))
}

// parseEnhanced returns the RFC 3463 code at the start of text, or "".
func parseEnhanced(text string) string {
	candidate, _, _ := strings.Cut(text, " ")
	if !IsEnhancedCode(candidate) {
		return ""
	}
	return candidate
}

// IsEnhancedCode reports whether s is an RFC 3463 code, class.subject.detail:
// a class of 2, 4 or 5, a subject and a detail of one to three digits.
func IsEnhancedCode(s string) bool {
	class, rest, _ := strings.Cut(s, ".")
	subject, detail, ok := strings.Cut(rest, ".")
	return ok && (class == "2" || class == "4" || class == "5") && isCodeNumber(subject) && isCodeNumber(detail)
}

// isCodeNumber accepts one to three digits.
func isCodeNumber(s string) bool { return len(s) >= 1 && len(s) <= 3 && isDigits(s) }

// codeMatches follows net/textproto: expect 2 accepts any 2xx, 25 any 25x,
// 250 only 250.
func codeMatches(code, expect int) bool {
	switch {
	case expect < 10:
		return code/100 == expect
	case expect < 100:
		return code/10 == expect
	default:
		return code == expect
	}
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
