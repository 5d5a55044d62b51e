// Package prober runs one SMTP session against a target and reports what
// happened, phase by phase, as a Result. It is a thin client of its own over
// a bounded line reader: every read is limited in size, the socket deadline
// is set once from the context, and the connection is closed when the
// context ends, so no server can hold a probe past its timeout.
package prober

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/smtp-exporter/smtp_exporter/config"
	"github.com/smtp-exporter/smtp_exporter/prober/message"
)

// PlannedPhases returns the phases a module runs, in conversation order.
// PhaseSetup is not among them: it only ever names a failure.
func PlannedPhases(m *config.Module) []Phase {
	s := m.SMTP
	phases := []Phase{PhaseConnect}
	if s.TLS == config.TLSImplicit {
		phases = append(phases, PhaseTLS)
	}
	phases = append(phases, PhaseBanner, PhaseEHLO)
	if s.TLS == config.TLSStartTLS {
		phases = append(phases, PhaseStartTLS, PhaseEHLOTLS)
	}
	if s.Auth != nil {
		phases = append(phases, PhaseAuth)
	}
	if s.Mail != nil {
		phases = append(phases, PhaseMail, PhaseRcpt)
		if s.Mail.Data {
			phases = append(phases, PhaseData)
		} else {
			phases = append(phases, PhaseRset)
		}
	}
	return append(phases, PhaseQuit)
}

// Probe runs one SMTP session against target as module describes and
// returns what it found. It never returns nil and never panics on what a
// server sends. The module's timeout caps ctx.
//
// After a failure that leaves the session in order (a refused recipient, a
// wrong password) the probe still says QUIT, so servers do not log a lost
// connection; that QUIT is recorded in the quit phase but cannot turn the
// probe into a success. After a timeout, a broken reply or a TLS failure
// the connection is just closed.
func Probe(ctx context.Context, target string, module *config.Module, probeID string, logger *slog.Logger) *Result {
	if module.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(module.Timeout))
		defer cancel()
	}
	return ProbeTarget(ctx, Resolve(ctx, target, &module.SMTP), module, probeID, logger)
}

// ProbeTarget is Probe for a target Resolve already resolved: the caller
// can decide, from the address, whether the session should run at all.
// The lookup counts in the probe's duration and in the module's timeout.
// Neither changes module.
func ProbeTarget(ctx context.Context, target Target, module *config.Module, probeID string, logger *slog.Logger) *Result {
	start := time.Now().Add(-target.DNSLookupTime)
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if module.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, start.Add(time.Duration(module.Timeout)))
		defer cancel()
	}
	r := &Result{SizeLimit: -1, Extensions: map[Phase][]string{}}
	for _, ph := range PlannedPhases(module) {
		r.Phases = append(r.Phases, PhaseResult{Phase: ph})
	}
	// From here on every log record of the probe goes through the
	// transcript's redactor.
	tr := newTranscript(start, logger)
	logger = tr.logger
	p := &probe{
		ctx:     ctx,
		target:  target,
		smtp:    &module.SMTP,
		probeID: probeID,
		logger:  logger,
		r:       r,
		tr:      tr,
	}
	p.run()

	r.Duration = time.Since(start)
	r.Transcript = p.tr.lines
	p.tr.red.redactResult(r)
	r.Success = r.Failure == nil
	if f := r.Failure; f != nil {
		logger.Error("Probe failed", "phase", f.Phase, "reason", f.Reason, "err", f.Err, "duration_seconds", r.Duration.Seconds())
	} else {
		logger.Info("Probe succeeded", "duration_seconds", r.Duration.Seconds())
	}
	return r
}

// probe is the state of one session.
type probe struct {
	ctx     context.Context
	target  Target
	smtp    *config.SMTPProbe
	probeID string
	logger  *slog.Logger
	r       *Result
	tr      *transcript

	password string
	// token is the bearer token for XOAUTH2 and OAUTHBEARER; oauth is the
	// client that obtained it, nil for token_file.
	token     string
	oauth     *oauthClient
	msg       *message.Message
	tlsConfig *tls.Config

	raw net.Conn
	c   *smtpConn
	// ext is what the latest EHLO advertised.
	ext extensions
	// broken is set once the session cannot go on in order (timeout,
	// broken reply, TLS failure, 421): no QUIT is sent then.
	broken bool
}

func (p *probe) run() {
	if !p.setup() || !p.connect() {
		return
	}
	defer p.raw.Close()

	steps := []func() bool{}
	if p.smtp.TLS == config.TLSImplicit {
		steps = append(steps, func() bool { return p.handshake(PhaseTLS) })
	}
	steps = append(steps, p.banner, func() bool { return p.ehlo(PhaseEHLO) })
	if p.smtp.TLS == config.TLSStartTLS {
		steps = append(steps, p.startTLS, func() bool { return p.ehlo(PhaseEHLOTLS) })
	}
	if p.smtp.Auth != nil {
		steps = append(steps, p.auth)
	}
	if p.smtp.Mail != nil {
		steps = append(steps, p.mailFrom, p.rcptTo)
		if p.smtp.Mail.Data {
			steps = append(steps, p.data)
		} else {
			steps = append(steps, p.rset)
		}
	}
	for _, step := range steps {
		if !step() {
			if !p.broken {
				p.quit()
			}
			return
		}
	}
	p.quit()
}

// phase returns the entry of a planned phase.
func (p *probe) phase(ph Phase) *PhaseResult {
	for i := range p.r.Phases {
		if p.r.Phases[i].Phase == ph {
			return &p.r.Phases[i]
		}
	}
	// Unreachable: every phase the probe runs is planned.
	p.r.Phases = append(p.r.Phases, PhaseResult{Phase: ph})
	return &p.r.Phases[len(p.r.Phases)-1]
}

func (p *probe) begin(ph Phase) time.Time {
	phaseStarted.debug(p.logger, "Phase started", "phase", ph)
	return time.Now()
}

// finish records that a phase ran, its duration and the reply that ended
// it (nil for none).
func (p *probe) finish(ph Phase, start time.Time, rep *Reply) {
	pr := p.phase(ph)
	pr.Ran = true
	pr.Duration = time.Since(start)
	if rep != nil {
		pr.Code, pr.Enhanced = rep.Code, rep.Enhanced
	}
	phaseDone.debug(p.logger, "Phase done", "phase", ph, "duration_seconds", pr.Duration.Seconds(), "code", pr.Code, "enhanced", pr.Enhanced)
}

// fail records the first failure; later ones (during the closing QUIT) are
// only logged. It returns false so that steps can `return p.fail(...)`.
func (p *probe) fail(ph Phase, reason Reason, err error) bool {
	// A server closes the session after a 421, whatever reason the reply
	// is counted under (auth_throttled too): no QUIT. Looked at before the
	// redaction, which may replace the typed error.
	if re, ok := errors.AsType[*ReplyError](err); ok && re.Code == 421 {
		p.broken = true
	}
	// Each part of the text that came from elsewhere was redacted before
	// it was quoted or cut; this redacts the whole once more, and keeps the
	// typed error for errors.As only while its text shows no secret.
	err = p.tr.red.redactError(err)
	switch reason {
	case ReasonTimeout, ReasonConnectionClosed, ReasonProtocolError, ReasonTLSHandshake,
		ReasonCertificate, ReasonServiceUnavailable, ReasonConnectionFailed, ReasonConnectionRefused:
		p.broken = true
	}
	if p.r.Failure != nil {
		p.logger.Debug("Error after the probe failed", "phase", ph, "reason", reason, "err", err)
		return false
	}
	p.r.Failure = &Failure{Phase: ph, Reason: reason, Err: err}
	p.logger.Debug("Phase failed", "phase", ph, "reason", reason, "err", err)
	return false
}

// failErr classifies an error that is not a reply: timeouts, closed
// connections, broken replies.
func (p *probe) failErr(ph Phase, err error) bool {
	return p.fail(ph, p.ioReason(err), err)
}

func (p *probe) ioReason(err error) Reason {
	var pe *ProtocolError
	var ne net.Error
	switch {
	case p.ctx.Err() != nil, errors.Is(err, os.ErrDeadlineExceeded):
		return ReasonTimeout
	case errors.As(err, &ne) && ne.Timeout():
		return ReasonTimeout
	case errors.As(err, &pe), errors.Is(err, errArgument):
		return ReasonProtocolError
	}
	return ReasonConnectionClosed
}

// failReply classifies the outcome of a command that did not get the
// expected reply: a *ReplyError is mapped by classify (421 is always
// service_unavailable), anything else by ioReason.
func (p *probe) failReply(ph Phase, err error, classify func(code int) Reason) bool {
	var re *ReplyError
	if !errors.As(err, &re) {
		return p.failErr(ph, err)
	}
	if re.Code == 421 {
		return p.fail(ph, ReasonServiceUnavailable, err)
	}
	return p.fail(ph, classify(re.Code), err)
}

func unexpected(int) Reason { return ReasonUnexpectedReply }

// setup does everything before the first packet once the target resolved:
// read credentials, build the canary and the TLS configuration.
func (p *probe) setup() bool {
	t := p.target
	p.r.Host, p.r.Port, p.r.DNSLookupTime = t.Host, t.Port, t.DNSLookupTime
	if f := t.Failure; f != nil {
		return p.fail(f.Phase, f.Reason, f.Err)
	}
	p.logger.Debug("Resolved target", "host", t.Host, "ip", t.IP, "dns_lookup_seconds", t.DNSLookupTime.Seconds())
	p.r.IP = t.IP

	if a := p.smtp.Auth; a != nil && a.UsesToken() {
		if !p.obtainToken(a) {
			return false
		}
	} else if a != nil {
		password, err := a.ReadPassword()
		if err != nil {
			p.logger.Error("Cannot read the password", "password_file", a.PasswordFile, "err", err)
			return p.fail(PhaseSetup, ReasonCredentials, fmt.Errorf("reading password: %w", err))
		}
		p.password = password
		p.tr.addPassword(a.Username, password)
	}

	if m := p.smtp.Mail; m != nil && m.Data {
		msg, err := message.Build(m, message.Options{ProbeID: p.probeID, Hostname: p.ehloName(), Now: time.Now()})
		if err != nil {
			return p.fail(PhaseSetup, ReasonMessageUnavailable, fmt.Errorf("building the canary message: %w", err))
		}
		p.msg = msg
		p.r.MessageID = msg.MessageID
	}

	if p.smtp.TLS == config.TLSStartTLS || p.smtp.TLS == config.TLSImplicit {
		cfg, err := tlsConfigs.get(&p.smtp.TLSConfig)
		if err != nil {
			return p.fail(PhaseSetup, ReasonCertificate, fmt.Errorf("tls_config: %w", err))
		}
		if cfg.ServerName == "" {
			// For an IP target Go verifies against the certificate's IP
			// SANs; the zone of a link-local address is no part of them.
			name, _, _ := strings.Cut(t.Host, "%")
			cfg.ServerName = name
		}
		p.tlsConfig = cfg
	}
	return true
}

// obtainToken reads token_file or gets a token from the OAuth 2.0 client
// (cached until shortly before it expires). Every secret involved is
// registered for scrubbing before it can reach an error text.
func (p *probe) obtainToken(a *config.Auth) bool {
	if a.TokenFile != "" {
		token, err := readBearerToken(a)
		if err != nil {
			p.logger.Error("Cannot read the token", "token_file", a.TokenFile, "err", err)
			return p.fail(PhaseSetup, ReasonTokenUnavailable, err)
		}
		p.token = token
		p.tr.addToken(a.Username, token, p.r.Host, p.r.Port)
		return true
	}
	client, err := newOAuthClient(a.OAuth2)
	if err != nil {
		p.logger.Error("Cannot read the OAuth 2.0 client's secrets", "err", err)
		return p.fail(PhaseSetup, ReasonTokenUnavailable, err)
	}
	client.red = p.tr.red
	p.tr.addSecret(client.clientSecret)
	p.tr.addSecret(client.refreshToken)
	token, err := client.token(p.ctx, oauthTokens, p.logger)
	if err != nil {
		if p.ctx.Err() != nil {
			return p.fail(PhaseSetup, ReasonTimeout, err)
		}
		return p.fail(PhaseSetup, ReasonTokenUnavailable, err)
	}
	p.oauth = client
	p.token = token
	p.tr.addToken(a.Username, token, p.r.Host, p.r.Port)
	return true
}

func (p *probe) ehloName() string {
	if p.smtp.EHLO != "" {
		return p.smtp.EHLO
	}
	return "localhost"
}

// connect dials the resolved address. The socket deadline is set once from
// the context, and the connection is closed the moment the context ends, so
// a server that trickles bytes cannot extend the probe.
func (p *probe) connect() bool {
	start := p.begin(PhaseConnect)
	// No TCP keep-alive: the probe's deadline bounds the session, long
	// before a first keep-alive would be sent, and turning it on costs
	// four setsockopt calls per probe.
	dialer := &net.Dialer{KeepAlive: -1}
	if p.smtp.SourceIPAddress != "" {
		if src, err := netip.ParseAddr(p.smtp.SourceIPAddress); err == nil {
			dialer.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
		}
	}
	addr := netip.AddrPortFrom(p.r.IP, uint16(p.r.Port)).String()
	p.logger.Debug("Connecting", "address", addr)
	// Go sets TCP_NODELAY on TCP connections by default. Every command is
	// written in one piece, so it is left as it is.
	nc, err := dialer.DialContext(p.ctx, "tcp", addr)
	p.finish(PhaseConnect, start, nil)
	if err != nil {
		var ne net.Error
		switch {
		case p.ctx.Err() != nil, errors.As(err, &ne) && ne.Timeout():
			return p.fail(PhaseConnect, ReasonTimeout, err)
		case errors.Is(err, syscall.ECONNREFUSED):
			return p.fail(PhaseConnect, ReasonConnectionRefused, err)
		}
		return p.fail(PhaseConnect, ReasonConnectionFailed, err)
	}
	if deadline, ok := p.ctx.Deadline(); ok {
		if err := nc.SetDeadline(deadline); err != nil {
			nc.Close()
			return p.fail(PhaseConnect, ReasonConnectionFailed, err)
		}
	}
	stop := context.AfterFunc(p.ctx, func() { nc.Close() })
	p.raw = &closeStopper{Conn: nc, stop: stop}
	p.c = newSMTPConn(nc, p.tr)
	p.tr.note("connected to %s from %s", addr, nc.LocalAddr())
	return true
}

// closeStopper releases the context hook when the connection is closed.
type closeStopper struct {
	net.Conn
	stop func() bool
}

func (c *closeStopper) Close() error {
	c.stop()
	return c.Conn.Close()
}

// handshake runs the client side of TLS on the connection, as the phase ph
// (tls for implicit TLS, starttls after the command).
func (p *probe) handshake(ph Phase) bool {
	start := time.Now()
	if ph == PhaseTLS {
		start = p.begin(ph)
	}
	tc := tls.Client(p.c.nc, p.tlsConfig)
	err := tc.HandshakeContext(p.ctx)
	if ph == PhaseTLS {
		p.finish(ph, start, nil)
	}
	if err != nil {
		// Whatever the reason, a failed handshake leaves no session to say
		// QUIT on: the connection is just closed.
		p.broken = true
		p.tr.note("TLS handshake failed: %v", err)
		var cve *tls.CertificateVerificationError
		if errors.As(err, &cve) {
			_, p.r.Certificates = summarizeTLS(nil, cve.UnverifiedCertificates)
		}
		if cve != nil || isCertificateError(err) {
			return p.fail(ph, ReasonCertificate, certificateError(boundText(err.Error())))
		}
		if reason := p.ioReason(err); reason == ReasonTimeout {
			return p.fail(ph, reason, err)
		}
		if isVersionMismatch(err) {
			return p.fail(ph, ReasonTLSVersion, err)
		}
		// Everything else, a connection reset or closed by the server
		// during the handshake included, is tls_handshake rather than
		// connection_closed: the session broke in TLS, and the phase and
		// the error say how.
		return p.fail(ph, ReasonTLSHandshake, err)
	}
	state := tc.ConnectionState()
	p.r.TLS, p.r.Certificates = summarizeTLS(&state, state.PeerCertificates)
	p.c.upgrade(tc)
	p.tr.note("TLS handshake complete: %s, %s, server name %q",
		tls.VersionName(state.Version), p.r.TLS.CipherName(), p.tlsConfig.ServerName)
	return true
}

// isVersionMismatch recognises a handshake that failed because client and
// server share no TLS version within tls_config's min_version and
// max_version: the server's protocol_version alert, or our refusal of the
// version it chose. crypto/tls exports neither error, so the text is
// matched.
func isVersionMismatch(err error) bool {
	s := err.Error()
	return strings.Contains(s, "protocol version not supported") ||
		strings.Contains(s, "server selected unsupported protocol version")
}

// isCertificateError recognises verification failures that do not come
// wrapped in a tls.CertificateVerificationError (from a custom verifier).
func isCertificateError(err error) bool {
	var unknown x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var invalid x509.CertificateInvalidError
	return errors.As(err, &unknown) || errors.As(err, &hostname) || errors.As(err, &invalid)
}

// banner reads the whole greeting, multi-line included, before anything is
// sent.
func (p *probe) banner() bool {
	start := p.begin(PhaseBanner)
	rep, err := p.c.expect("", 220)
	p.finish(PhaseBanner, start, rep)
	if err != nil {
		return p.failReply(PhaseBanner, err, func(code int) Reason {
			if code == 554 {
				return ReasonServiceUnavailable
			}
			return ReasonUnexpectedReply
		})
	}
	return true
}

// ehlo greets the server and records its extensions, falling back to HELO
// when EHLO is refused with a 5xx.
func (p *probe) ehlo(ph Phase) bool {
	start := p.begin(ph)
	name := p.ehloName()
	rep, err := p.c.cmd(250, "EHLO %s", name)
	var re *ReplyError
	if err != nil && errors.As(err, &re) && re.Permanent() {
		p.logger.Debug("EHLO refused, falling back to HELO", "code", re.Code)
		p.r.HELOFallback = true
		rep, err = p.c.cmd(250, "HELO %s", name)
		p.ext = extensions{size: -1}
	} else if err == nil {
		p.ext = parseEHLO(rep)
	}
	p.finish(ph, start, rep)
	if err != nil {
		return p.failReply(ph, err, unexpected)
	}
	p.r.Extensions[ph] = p.ext.keywords
	p.r.SizeLimit = p.ext.size
	p.r.AuthMechanisms = p.ext.auth
	if !p.tlsActive() {
		return p.checkCleartextOffer(ph)
	}
	return true
}

// checkCleartextOffer applies the posture checks to what the unencrypted
// session advertises.
func (p *probe) checkCleartextOffer(ph Phase) bool {
	if p.smtp.FailIfAuthOfferedWithoutTLS && p.ext.has("AUTH") {
		return p.fail(ph, ReasonAuthOfferedWithoutTLS,
			fmt.Errorf("server advertises AUTH %s before TLS", strings.Join(p.ext.auth, " ")))
	}
	var insecure []string
	for _, m := range p.smtp.FailIfMechanismsOffered {
		if slices.Contains(p.ext.auth, m) {
			insecure = append(insecure, m)
		}
	}
	if len(insecure) > 0 {
		return p.fail(ph, ReasonInsecureMechanism,
			fmt.Errorf("server advertises %s on an unencrypted session", strings.Join(insecure, " ")))
	}
	return true
}

// startTLS upgrades the session. It never downgrades: a server that does
// not offer STARTTLS fails the probe.
func (p *probe) startTLS() bool {
	start := p.begin(PhaseStartTLS)
	if !p.ext.has("STARTTLS") {
		p.finish(PhaseStartTLS, start, nil)
		return p.fail(PhaseStartTLS, ReasonStartTLSUnavailable, errors.New("server does not advertise STARTTLS"))
	}
	rep, err := p.c.cmd(220, "STARTTLS")
	if err != nil {
		p.finish(PhaseStartTLS, start, rep)
		return p.failReply(PhaseStartTLS, err, unexpected)
	}
	// Bytes already buffered after the 220 were sent before the handshake:
	// accepting them would let a man in the middle inject replies into the
	// encrypted session.
	if p.c.r.Buffered() > 0 {
		p.finish(PhaseStartTLS, start, rep)
		return p.fail(PhaseStartTLS, ReasonProtocolError, protocolErrorf("server sent data after its STARTTLS reply"))
	}
	ok := p.handshake(PhaseStartTLS)
	p.finish(PhaseStartTLS, start, rep)
	return ok
}

// tlsActive reports whether the session is encrypted.
func (p *probe) tlsActive() bool { return p.r.TLS != nil }
