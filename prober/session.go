package prober

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"time"
)

const (
	// maxAuthSteps bounds the 334 challenges of one AUTH exchange; the
	// mechanisms we speak need at most two.
	maxAuthSteps = 4
	// maxChallengeLen bounds one base64 challenge.
	maxChallengeLen = 1024
)

// auth logs in. Nothing is sent on an unencrypted session unless the module
// says allow_plaintext_auth, nor when the server offers no mechanism we can
// use. With expect_auth_rejected the outcome is turned around: a refusal of
// the credentials (Reason.RefusesCredentials) is the success; any other
// refusal fails the probe with its own reason, since it proves nothing
// about the credentials.
func (p *probe) auth() bool {
	a := p.smtp.Auth
	start := p.begin(PhaseAuth)
	refuse := func(reason Reason, err error) bool {
		p.finish(PhaseAuth, start, nil)
		return p.fail(PhaseAuth, reason, err)
	}
	if !p.tlsActive() && !p.smtp.AllowPlaintextAuth {
		return refuse(ReasonPlaintextAuthRefused,
			errors.New("refusing to send credentials over an unencrypted connection (set allow_plaintext_auth to allow it)"))
	}
	if !p.ext.has("AUTH") || len(p.ext.auth) == 0 {
		return refuse(ReasonAuthUnavailable, errors.New("server does not advertise AUTH"))
	}
	name, ok := chooseMechanism(a.Mechanism, p.ext.auth, a.AutoMechanisms())
	if !ok {
		return refuse(ReasonMechanismUnavailable, fmt.Errorf("mechanism %s not offered (server offers %s)",
			a.Mechanism, strings.Join(p.ext.auth, " ")))
	}
	mech := p.newMechanism(name)

	p.r.AuthAttempted = true
	p.r.AuthMechanism = name
	p.logger.Debug("Authenticating", "mechanism", name)
	rep, err := p.saslExchange(mech, a.Username)
	p.finish(PhaseAuth, start, rep)
	if err != nil {
		reason := p.authFailureReason(err, rep)
		var oe *oauthError
		if errors.As(err, &oe) {
			p.logger.Warn("Server refused the bearer token", "status", oe.Status, "scope", oe.Scope, "schemes", oe.Schemes)
		}
		if reason == ReasonTokenRejected && p.oauth != nil {
			oauthTokens.forget(p.ctx, p.oauth.key, p.token)
		}
		if p.smtp.ExpectAuthRejected && reason.RefusesCredentials() {
			p.tr.note("AUTH refused, as expect_auth_rejected requires")
			p.logger.Info("Authentication refused, as expected", "reason", reason, "err", p.tr.red.redactError(err))
			return true
		}
		return p.fail(PhaseAuth, reason, err)
	}
	p.r.AuthSuccess = true
	if accepted, ok := p.ctx.Value(loginAcceptedKey{}).(func()); ok {
		accepted()
	}
	if p.smtp.ExpectAuthRejected {
		return p.fail(PhaseAuth, ReasonAuthUnexpectedlyAccepted,
			errors.New("the server accepted credentials that expect_auth_rejected says must be refused"))
	}
	return true
}

// saslExchange runs AUTH to its final reply. Every response is registered
// as a secret before it is sent, on top of the transcript's redaction of the
// whole exchange. Errors never carry a response.
func (p *probe) saslExchange(mech saslMechanism, username string) (*Reply, error) {
	send := func(resp []byte) error {
		enc := base64.StdEncoding.EncodeToString(resp)
		p.tr.addResponse(resp, username)
		// An empty response is an empty line (RFC 4954 section 4): "="
		// stands for an empty initial response only.
		return p.c.writeLine(enc)
	}

	name, initial, err := mech.Start()
	if err != nil {
		return nil, err
	}
	line := "AUTH " + name
	if initial != nil {
		enc := base64.StdEncoding.EncodeToString(initial)
		p.tr.addResponse(initial, username)
		if enc == "" {
			enc = "="
		}
		line += " " + enc
	}
	if err := p.c.writeLine(line); err != nil {
		return nil, err
	}
	rep, err := p.c.readReply()
	for steps := 0; err == nil && rep.Code == 334; steps++ {
		if steps == maxAuthSteps {
			return rep, protocolErrorf("more than %d AUTH challenges", maxAuthSteps)
		}
		challenge, decErr := decodeChallenge(rep)
		if decErr != nil {
			return rep, decErr
		}
		resp, mechErr := mech.Next(challenge)
		if mechErr != nil {
			return p.endExchange(name, rep, mechErr, send)
		}
		if err := send(resp); err != nil {
			return nil, err
		}
		rep, err = p.c.readReply()
	}
	if err != nil {
		return nil, err
	}
	if rep.Code != 235 {
		return rep, p.c.replyError("AUTH", rep)
	}
	if c, ok := mech.(completer); ok {
		if err := c.complete(); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// endExchange ends an exchange the mechanism cannot go on with. A
// saslFailure with an answer sends it and reads the server's final reply,
// which is returned wrapped in the failure; anything else cancels the
// exchange (RFC 4954 "*") so the session stays in order.
func (p *probe) endExchange(name string, challenge *Reply, mechErr error, send func([]byte) error) (*Reply, error) {
	var sf *saslFailure
	if errors.As(mechErr, &sf) && sf.answer != nil {
		if err := send(sf.answer); err != nil {
			return nil, err
		}
		final, err := p.c.readReply()
		if err != nil {
			return nil, err
		}
		switch final.Code {
		case 235:
			// A server that reports an error and then accepts is broken.
			return final, protocolErrorf("AUTH %s: server accepted after reporting an error: %v", name, sf.err)
		case 334:
			return final, protocolErrorf("AUTH %s: server sent another challenge after reporting an error", name)
		}
		return final, &saslFailure{reason: sf.reason, err: fmt.Errorf("%w: %w", sf.err, p.c.replyError("AUTH", final))}
	}
	if err := p.c.writeLine("*"); err == nil {
		if _, err := p.c.readReply(); err != nil {
			return challenge, err
		}
	}
	var pe *ProtocolError
	switch {
	case sf != nil:
		return challenge, mechErr
	case errors.As(mechErr, &pe):
		return challenge, protocolErrorf("AUTH %s: %s", name, pe.Detail)
	}
	return challenge, protocolErrorf("AUTH %s: %v", name, mechErr)
}

// decodeChallenge reads the base64 text of a 334 reply; an empty one is an
// empty challenge.
func decodeChallenge(rep *Reply) ([]byte, error) {
	if len(rep.Lines) != 1 {
		return nil, protocolErrorf("multi-line AUTH challenge")
	}
	text := strings.TrimSpace(rep.Lines[0])
	if len(text) > maxChallengeLen {
		return nil, protocolErrorf("AUTH challenge longer than %d bytes", maxChallengeLen)
	}
	b, err := base64.StdEncoding.DecodeString(text)
	if err != nil {
		// Some servers leave out the padding.
		if b, err = base64.RawStdEncoding.DecodeString(text); err != nil {
			return nil, protocolErrorf("AUTH challenge is not base64")
		}
	}
	return b, nil
}

// mailFrom starts the canary transaction. With SIZE advertised the message
// size is declared, and a message over a non-zero limit is not attempted.
func (p *probe) mailFrom() bool {
	mail := p.smtp.Mail
	start := p.begin(PhaseMail)
	params := ""
	if p.msg != nil && p.ext.has("SIZE") {
		size := int64(len(p.msg.Bytes))
		if p.ext.size > 0 && size > p.ext.size {
			p.finish(PhaseMail, start, nil)
			return p.fail(PhaseMail, ReasonMessageTooLarge,
				fmt.Errorf("message is %d bytes, server accepts at most %d", size, p.ext.size))
		}
		params = " SIZE=" + strconv.FormatInt(size, 10)
	}
	rep, err := p.c.cmd(2, "MAIL FROM:<%s>%s", mail.From, params)
	p.finish(PhaseMail, start, rep)
	if err != nil {
		return p.failReply(PhaseMail, err, func(code int) Reason {
			if code >= 500 {
				return ReasonSenderRejected
			}
			return ReasonUnexpectedReply
		})
	}
	return true
}

// rcptTo offers every recipient, even after one is refused, so that
// RecipientsAccepted counts them all. The phase reports the total time and
// the worst reply.
func (p *probe) rcptTo() bool {
	start := p.begin(PhaseRcpt)
	var worst *Reply
	var rejected, deferred, other error
	for _, rcpt := range p.smtp.Mail.Recipients() {
		rep, err := p.c.cmd(2, "RCPT TO:<%s>", rcpt)
		var re *ReplyError
		if err != nil && !errors.As(err, &re) {
			p.finish(PhaseRcpt, start, worst)
			return p.failErr(PhaseRcpt, err)
		}
		if worst == nil || rep.Code > worst.Code {
			worst = rep
		}
		switch {
		case err == nil:
			p.r.RecipientsAccepted++
		case re.Code == 421:
			p.finish(PhaseRcpt, start, rep)
			return p.fail(PhaseRcpt, ReasonServiceUnavailable, err)
		case re.Permanent():
			if rejected == nil {
				rejected = fmt.Errorf("recipient %s: %w", rcpt, err)
			}
		case re.Temporary():
			if deferred == nil {
				deferred = fmt.Errorf("recipient %s: %w", rcpt, err)
			}
		default:
			if other == nil {
				other = fmt.Errorf("recipient %s: %w", rcpt, err)
			}
		}
	}
	p.finish(PhaseRcpt, start, worst)
	switch {
	case rejected != nil:
		return p.fail(PhaseRcpt, ReasonRecipientRejected, rejected)
	case deferred != nil:
		return p.fail(PhaseRcpt, ReasonRecipientDeferred, deferred)
	case other != nil:
		return p.fail(PhaseRcpt, ReasonUnexpectedReply, other)
	}
	return true
}

// messageReason maps a refusal of DATA or of the message.
func messageReason(code int) Reason {
	switch {
	case code >= 500:
		return ReasonMessageRejected
	case code >= 400:
		return ReasonMessageDeferred
	}
	return ReasonUnexpectedReply
}

// data sends the canary. The phase is timed from the 354 to the final reply;
// when DATA itself is refused, it covers that refusal.
func (p *probe) data() bool {
	start := p.begin(PhaseData)
	rep, err := p.c.cmd(354, "DATA")
	if err != nil {
		p.finish(PhaseData, start, rep)
		return p.failReply(PhaseData, err, messageReason)
	}
	start = time.Now()
	p.tr.note("sending message: %d bytes, Message-ID %s", len(p.msg.Bytes), p.msg.MessageID)
	if err := writeDotStuffed(p.c.nc, p.msg.Bytes); err != nil {
		p.finish(PhaseData, start, nil)
		return p.failErr(PhaseData, err)
	}
	p.tr.client(".")
	rep, err = p.c.expect("DATA", 2)
	p.finish(PhaseData, start, rep)
	if err != nil {
		return p.failReply(PhaseData, err, messageReason)
	}
	p.r.MessageAccepted = true
	p.r.AcceptedAt = time.Now()
	p.r.QueueID = queueID(rep)
	p.logger.Info("Canary message accepted", "message_id", p.r.MessageID, "queue_id", p.r.QueueID)
	return true
}

// writeDotStuffed writes msg as DATA content: every line starting with '.'
// gets another '.', line endings become CRLF, and the content ends with
// CRLF.CRLF.
func writeDotStuffed(w io.Writer, msg []byte) error {
	bw := bufio.NewWriterSize(w, 32*1024)
	for len(msg) > 0 {
		line := msg
		rest := []byte(nil)
		if i := bytes.IndexByte(msg, '\n'); i >= 0 {
			line, rest = msg[:i], msg[i+1:]
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) > 0 && line[0] == '.' {
			bw.WriteByte('.')
		}
		bw.Write(line)
		bw.WriteString("\r\n")
		msg = rest
	}
	bw.WriteString(".\r\n")
	return bw.Flush()
}

// queueIDForms are the replies to the end of DATA that name the server's
// id for the message, one form per family of servers; the id is the first
// group. They are tried on each line of the reply, its enhanced status code
// (with OpenSMTPD's colon) left out. The id goes to the log and the pages,
// never to a label.
var queueIDForms = []struct {
	server string
	re     *regexp.Regexp
}{
	// "250 2.0.0 Ok: queued as 4Xyz1234AB"; SendGrid and other relays
	// built on Postfix say the same.
	{"Postfix", queueIDForm(`(?i)\bqueued as:?\s+<?({id})`)},
	// "250 OK id=1rABCd-000Abc-XY".
	{"Exim", queueIDForm(`(?i)\bid=<?({id})`)},
	// "250 2.0.0 x9SH1kQ3012345 Message accepted for delivery", and
	// OpenSMTPD's "250 2.0.0 5b1c0a6e Message accepted for delivery"
	// (older: "250 2.0.0: 5b1c0a6e ...").
	{"sendmail, OpenSMTPD", queueIDForm(`(?i)^<?({id})>?\s+message accepted for delivery`)},
	// "250 2.0.0 OK  1700000000 d9443c01a7336-1d4c1e3esi1234567pla.123 - gsmtp".
	{"Gmail", queueIDForm(`(?i)^ok\s+\d+\s+({id})\s+-\s+gsmtp`)},
	// "250 2.6.0 <message-id> [InternalId=12345678901234, Hostname=...]
	// 4567 bytes in 0.045, 99.1 KB/sec Queued mail for delivery": the
	// InternalId is what message tracking searches by.
	{"Exchange, Microsoft 365", queueIDForm(`\[InternalId=(\d{1,20})\b`)},
	// "250 Ok 0100018c2a3b4c5d-6e7f8a9b-0c1d-2e3f-4a5b-6c7d8e9f0a1b-000000".
	{"Amazon SES", queueIDForm(`(?i)^ok\s+([0-9a-f]{16}-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}-\d{6})\b`)},
	// "250 ok 1700000000 qp 12345": the qp number of qmail-send's log.
	{"qmail", queueIDForm(`(?i)^ok\s+\d+\s+qp\s+(\d{1,20})\b`)},
	// "250 Message Queued (8C2E9F3A-1234-4C5D-9E6F-0123456789AB.1.1)".
	{"Haraka", queueIDForm(`(?i)\bmessage queued \(({id})\)`)},
	// "250 Ok. 004C46A1.4F8E3D6C.00003F21".
	{"Courier", queueIDForm(`(?i)^ok\.\s+([0-9a-f]{1,32}\.[0-9a-f]{1,32}\.[0-9a-f]{1,32})\b`)},
}

// queueIDForm compiles a form, {id} standing for the characters a queue id
// is made of: letters, digits, '.', '_', '@' and '-', at most 64.
func queueIDForm(form string) *regexp.Regexp {
	return regexp.MustCompile(strings.ReplaceAll(form, "{id}", `[A-Za-z0-9][A-Za-z0-9._@-]{0,63}`))
}

// leadingEnhancedCode is an RFC 3463 code at the start of a reply line,
// with the colon OpenSMTPD once wrote after it.
var leadingEnhancedCode = regexp.MustCompile(`^[245]\.\d{1,3}\.\d{1,3}:?\s+`)

// queueID returns the server's id for an accepted message, or "" when the
// reply names none in a form it knows.
func queueID(rep *Reply) string {
	for _, line := range rep.Lines {
		line = leadingEnhancedCode.ReplaceAllString(line, "")
		for _, f := range queueIDForms {
			if m := f.re.FindStringSubmatch(line); m != nil {
				return m[1]
			}
		}
	}
	return ""
}

// rset ends a canary that stops before DATA, so nothing is delivered.
func (p *probe) rset() bool {
	start := p.begin(PhaseRset)
	rep, err := p.c.cmd(2, "RSET")
	p.finish(PhaseRset, start, rep)
	if err != nil {
		return p.failReply(PhaseRset, err, unexpected)
	}
	return true
}

// quitWait bounds the wait for the reply to QUIT: the work is done by then,
// and a server that never answers must not hold the probe to its timeout.
const quitWait = time.Second

// quit ends the session. The reply is awaited for quitWait at most, less
// when the probe's deadline is nearer. A 221 that does not come, because
// the server closes the connection or says nothing in time, does not fail
// the probe: the quit phase records no code, and the transcript and the
// log say what happened. Any other reply, or a broken one, fails it.
func (p *probe) quit() {
	start := p.begin(PhaseQuit)
	wait := start.Add(quitWait)
	if deadline, ok := p.ctx.Deadline(); ok && deadline.Before(wait) {
		wait = deadline
	}
	// Only ever nearer than the deadline set from the context. A
	// connection that cannot take it is closed already, which the read
	// reports.
	_ = p.c.nc.SetReadDeadline(wait)
	rep, err := p.c.cmd(221, "QUIT")
	p.finish(PhaseQuit, start, rep)
	if err == nil {
		return
	}
	var re *ReplyError
	if !errors.As(err, &re) {
		switch p.ioReason(err) {
		case ReasonConnectionClosed:
			p.tr.note("server closed the connection instead of answering QUIT")
			p.logger.Info("Server closed the connection instead of answering QUIT")
			return
		case ReasonTimeout:
			waited := time.Since(start).Round(time.Millisecond)
			p.tr.note("no reply to QUIT after %v: closing the connection without the 221", waited)
			p.logger.Info("Server did not answer QUIT; closing the connection", "waited_seconds", waited.Seconds())
			return
		}
	}
	p.failReply(PhaseQuit, err, unexpected)
}
