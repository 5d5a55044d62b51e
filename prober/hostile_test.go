package prober

import (
	"bytes"
	"cmp"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/md5"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"math/big"
	mathrand "math/rand/v2"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

// The hostile suite: servers that are correct except for one fault each.
// Whatever the server does, a probe must end with the expected phase and
// reason, within its timeout plus hostileMargin, without buffering what the
// server floods it with, and without leaving a goroutine or a file
// descriptor behind.

const (
	// hostileMargin is how late after its timeout a probe may end. It is
	// wide for a loaded machine (a race build on two busy cores has
	// delayed a probe's end by 0.5 s) and still narrow against what it
	// guards: a deadline not enforced holds a probe until the server lets
	// go, which these servers do after smtptest.IdleTimeout (10 s) or never.
	hostileMargin = 2 * time.Second
	// hostileAllocLimit bounds everything one probe allocates, TLS
	// handshakes included, while servers push up to floodBytes at it.
	hostileAllocLimit = 2 << 20
	// hostileRetainLimit bounds what is still live after the probe and a GC:
	// the Result and the probe's log.
	hostileRetainLimit = 1 << 20
	// floodBytes is what a flooding server tries to send.
	floodBytes = 64 << 20
)

// act is one move of a hostile server, in answer to the line the client
// sent ("" for the greeting). It returns false to end the connection.
type act func(c *smtptest.Conn, line string) bool

// say writes raw bytes, line endings included.
func say(raw string) act {
	return func(c *smtptest.Conn, _ string) bool { return c.Write(raw) == nil }
}

// then runs acts in order while they keep the connection.
func then(acts ...act) act {
	return func(c *smtptest.Conn, line string) bool {
		for _, a := range acts {
			if !a(c, line) {
				return false
			}
		}
		return true
	}
}

// hangup closes the connection with a FIN.
func hangup(*smtptest.Conn, string) bool { return false }

// reset aborts the connection with a RST.
func reset(c *smtptest.Conn, _ string) bool {
	c.Reset()
	return false
}

// silence says nothing until the client leaves.
func silence(c *smtptest.Conn, _ string) bool {
	c.WaitClosed()
	return false
}

// nextLine reads one more line from the client (an AUTH response, a line of
// the message) before a runs.
func nextLine(a act) act {
	return func(c *smtptest.Conn, _ string) bool {
		line, err := c.ReadLine()
		return err == nil && a(c, line)
	}
}

// after waits d, then runs a: a tarpit.
func after(d time.Duration, a act) act {
	return func(c *smtptest.Conn, line string) bool {
		time.Sleep(d)
		return a(c, line)
	}
}

// trickle writes raw one byte at a time, every d.
func trickle(d time.Duration, raw string) act {
	return func(c *smtptest.Conn, _ string) bool {
		for i := range len(raw) {
			if c.Write(raw[i:i+1]) != nil {
				return false
			}
			time.Sleep(d)
		}
		return true
	}
}

// dribble writes one byte every d, for ever.
func dribble(d time.Duration) act {
	return func(c *smtptest.Conn, _ string) bool {
		for c.Write("x") == nil {
			time.Sleep(d)
		}
		return false
	}
}

// flood writes unit over and over until floodBytes are sent or the client
// goes away. The buffer is made once, before any probe runs, so the server
// allocates nothing per write and the probe's allocations can be measured.
func flood(unit string) act {
	buf := bytes.Repeat([]byte(unit), max(1, (64<<10)/len(unit)))
	return func(c *smtptest.Conn, _ string) bool {
		nc := c.NetConn()
		for sent := 0; sent < floodBytes; sent += len(buf) {
			if nc.SetWriteDeadline(time.Now().Add(smtptest.IdleTimeout)) != nil {
				return false
			}
			if _, err := nc.Write(buf); err != nil {
				return false
			}
		}
		return false
	}
}

// garbage is n bytes of deterministic binary noise, CR and LF included.
func garbage(n int) string {
	rng := mathrand.New(mathrand.NewPCG(5321, 4954))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return string(b)
}

// startTLS answers 220 and runs the server side of the handshake with cert.
func startTLS(cert tls.Certificate) act {
	return func(c *smtptest.Conn, _ string) bool {
		return c.Write("220 2.0.0 Ready to start TLS\r\n") == nil && c.StartTLS(cert) == nil
	}
}

// notTLS answers 220 to STARTTLS, waits for the ClientHello and sends an
// HTTP error instead of a ServerHello.
func notTLS(c *smtptest.Conn, _ string) bool {
	if c.Write("220 2.0.0 Ready to start TLS\r\n") != nil {
		return false
	}
	buf := make([]byte, 1024)
	nc := c.NetConn()
	if nc.SetReadDeadline(time.Now().Add(smtptest.IdleTimeout)) != nil {
		return false
	}
	if _, err := nc.Read(buf); err != nil {
		return false
	}
	c.Write("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
	return false
}

const (
	hostileGreeting = "220 mx.hostile.invalid ESMTP\r\n"
	hostileEHLO     = "250-mx.hostile.invalid\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-STARTTLS\r\n" +
		"250-AUTH PLAIN LOGIN CRAM-MD5\r\n250 8BITMIME\r\n"
	// The prompts LOGIN servers send: "Username:" and "Password:".
	loginUserPrompt = "334 VXNlcm5hbWU6\r\n"
	loginPassPrompt = "334 UGFzc3dvcmQ6\r\n"
)

// acceptAnyAuth runs any mechanism's exchange to a 235, whatever the
// credentials: the probe cannot tell such a server from a correct one.
func acceptAnyAuth(c *smtptest.Conn, line string) bool {
	f := strings.Fields(line)
	var prompts []string
	switch {
	case len(f) < 2:
		return c.Write("501 5.5.4 Syntax: AUTH mechanism\r\n") == nil
	case strings.EqualFold(f[1], "LOGIN"):
		prompts = []string{loginUserPrompt, loginPassPrompt}
	case strings.EqualFold(f[1], "CRAM-MD5"):
		prompts = []string{"334 " + base64.StdEncoding.EncodeToString([]byte(cramChallenge)) + "\r\n"}
	case len(f) == 2:
		prompts = []string{"334 \r\n"}
	}
	for _, p := range prompts {
		if c.Write(p) != nil {
			return false
		}
		if _, err := c.ReadLine(); err != nil {
			return false
		}
	}
	return c.Write("235 2.7.0 Authentication successful\r\n") == nil
}

// echoCredentials runs the exchange like acceptAnyAuth, then refuses the
// credentials with a reply that quotes everything the client sent: as sent,
// decoded, field by field and re-encoded in every base64 alphabet. A server
// may do this by mistake or to get the secrets into the probe's output.
func echoCredentials(c *smtptest.Conn, line string) bool {
	f := strings.Fields(line)
	sent := f[2:]
	var prompts []string
	switch strings.ToUpper(f[1]) {
	case "LOGIN":
		prompts = []string{loginUserPrompt, loginPassPrompt}
	case "CRAM-MD5":
		prompts = []string{"334 " + base64.StdEncoding.EncodeToString([]byte(cramChallenge)) + "\r\n"}
	}
	for _, p := range prompts {
		if c.Write(p) != nil {
			return false
		}
		l, err := c.ReadLine()
		if err != nil {
			return false
		}
		sent = append(sent, l)
	}
	var echo []string
	for _, s := range sent {
		echo = append(echo, s)
		decoded, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			continue
		}
		for _, field := range strings.FieldsFunc(string(decoded), func(r rune) bool { return r == 0 || r == ' ' }) {
			echo = append(echo, field)
			for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
				echo = append(echo, enc.EncodeToString([]byte(field)))
			}
		}
	}
	return c.Write("535 5.7.8 Authentication failed for "+strings.Join(echo, " ")+"\r\n") == nil
}

// scramIterations answers a SCRAM client-first, after a wait, with a valid
// server-first asking for the given PBKDF2 iteration count, then waits for
// the client to go.
func scramIterations(wait time.Duration, iterations int) act {
	return func(c *smtptest.Conn, line string) bool {
		f := strings.Fields(line)
		first, err := base64.StdEncoding.DecodeString(f[len(f)-1])
		_, nonce, found := strings.Cut(string(first), ",r=")
		if err != nil || !found {
			return c.Write("501 5.5.2 bad client-first\r\n") == nil
		}
		time.Sleep(wait)
		serverFirst := "r=" + nonce + "hostile,s=" + base64.StdEncoding.EncodeToString([]byte("salt")) + ",i=" + strconv.Itoa(iterations)
		if c.Write("334 "+base64.StdEncoding.EncodeToString([]byte(serverFirst))+"\r\n") != nil {
			return false
		}
		return silence(c, line)
	}
}

// cramChallenge is the CRAM-MD5 challenge of the hostile servers.
const cramChallenge = "<1896.697170952@mx.hostile.invalid>"

// hostile is a server that speaks correct SMTP, DATA included, except where
// replies says otherwise.
type hostile struct {
	greeting act
	// replies by command verb; "." answers the message after DATA's 354.
	replies map[string]act
}

func (h hostile) reply(verb string) act {
	if a, ok := h.replies[verb]; ok {
		return a
	}
	switch verb {
	case "EHLO":
		return say(hostileEHLO)
	case "HELO":
		return say("250 mx.hostile.invalid\r\n")
	case "STARTTLS":
		return startTLS(smtptest.Certs().Server)
	case "AUTH":
		return acceptAnyAuth
	case "MAIL", "RCPT", "RSET", "NOOP":
		return say("250 2.1.0 Ok\r\n")
	case "DATA":
		return func(c *smtptest.Conn, line string) bool {
			if c.Write("354 End data with <CR><LF>.<CR><LF>\r\n") != nil {
				return false
			}
			if _, err := c.ReadData(); err != nil {
				return false
			}
			return h.reply(".")(c, line)
		}
	case ".":
		return say("250 2.0.0 Ok: queued as HOSTILE1\r\n")
	case "QUIT":
		return then(say("221 2.0.0 Bye\r\n"), hangup)
	}
	return say("500 5.5.2 Error: command not recognized\r\n")
}

func (h hostile) start(t *testing.T) *smtptest.Server {
	t.Helper()
	return smtptest.NewScripted(t, func(c *smtptest.Conn) {
		greet := h.greeting
		if greet == nil {
			greet = say(hostileGreeting)
		}
		if !greet(c, "") {
			return
		}
		for {
			line, err := c.ReadLine()
			if err != nil {
				return
			}
			verb, _, _ := strings.Cut(line, " ")
			if !h.reply(strings.ToUpper(verb))(c, line) {
				return
			}
		}
	})
}

// replies builds a reply map from verb/act pairs.
func replies(pairs ...any) map[string]act {
	m := map[string]act{}
	for i := 0; i+1 < len(pairs); i += 2 {
		switch a := pairs[i+1].(type) {
		case act:
			m[pairs[i].(string)] = a
		case func(*smtptest.Conn, string) bool:
			m[pairs[i].(string)] = a
		default:
			panic("replies: not an act")
		}
	}
	return m
}

// selfSignedCert is a certificate for the loopback names that signs itself.
func selfSignedCert(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(25),
		Subject:               pkix.Name{CommonName: "localhost"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// openFDs counts this process's open file descriptors, -1 where /proc is
// not available.
func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(entries)
}

type hostileCase struct {
	name   string
	module moduleSpec
	server hostile
	// phase and reason of the expected failure; reason "" expects success.
	phase  Phase
	reason Reason
	// code is the reply code the failing phase records.
	code int
	// check makes further assertions once the server is closed.
	check func(t *testing.T, r *Result, srv *smtptest.Server)
}

func TestHostileServers(t *testing.T) {
	// Not parallel: goroutines, descriptors and allocations are counted
	// per probe, so nothing else may run meanwhile. The package's parallel
	// tests wait until the sequential ones are done.
	ignoreExisting := goleak.IgnoreCurrent()
	caFile := smtptest.Certs().WriteCAFile(t)
	selfSigned := selfSignedCert(t)

	plain := moduleSpec{TLS: "none"}
	auth := moduleSpec{TLS: "none", Mechanism: "PLAIN", AllowPlaintext: true}
	login := moduleSpec{TLS: "none", Mechanism: "LOGIN", AllowPlaintext: true}
	cram := moduleSpec{TLS: "none", Mechanism: "CRAM-MD5", AllowPlaintext: true}
	scram := moduleSpec{TLS: "none", Mechanism: "SCRAM-SHA-256", AllowPlaintext: true}
	canary := moduleSpec{TLS: "none", Mechanism: "PLAIN", AllowPlaintext: true,
		Mail: "from: probe@example.net\nto: [sink@example.net]\n"}
	canaryRset := canary
	canaryRset.Mail += "data: false\n"
	starttls := moduleSpec{TLS: "starttls", CAFile: caFile, Mechanism: "PLAIN"}
	short := func(m moduleSpec, timeout string) moduleSpec { m.Timeout = timeout; return m }

	plainBlob := base64.StdEncoding.EncodeToString([]byte("\x00" + testUser + "\x00" + testPassword))
	// echoPassword differs in each base64 alphabet, padded or not.
	const echoPassword = "Ech0-me?>if-you-dare"
	echo := func(m moduleSpec) moduleSpec { m.Password = echoPassword; return m }
	credentialsSentOnce := func(t *testing.T, _ *Result, srv *smtptest.Server) {
		n := 0
		for _, l := range srv.Lines() {
			if strings.Contains(l, plainBlob) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("credentials sent %d times, want once: %q", n, srv.Lines())
		}
	}

	// noCredentialForms checks the transcript and the failure for the
	// password in every encoding, the PLAIN blob and the CRAM-MD5 digest.
	noCredentialForms := func(t *testing.T, r *Result, _ *smtptest.Server) {
		mac := hmac.New(md5.New, []byte(echoPassword))
		mac.Write([]byte(cramChallenge))
		blob := "\x00" + testUser + "\x00" + echoPassword
		forms := []string{echoPassword, blob, base64.StdEncoding.EncodeToString([]byte(blob)), hex.EncodeToString(mac.Sum(nil))}
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
			forms = append(forms, enc.EncodeToString([]byte(echoPassword)))
		}
		text := transcriptText(r) + r.Failure.Err.Error()
		for _, f := range forms {
			if strings.Contains(text, f) {
				t.Errorf("%q shown:\n%s", f, text)
			}
		}
		if !strings.Contains(text, Redacted) {
			t.Errorf("nothing redacted: the server echoed nothing?\n%s", text)
		}
	}

	cases := []hostileCase{
		// The greeting.
		{name: "no greeting", module: short(plain, "1s"), server: hostile{greeting: silence},
			phase: PhaseBanner, reason: ReasonTimeout},
		{name: "greeting one byte at a time", module: plain,
			server: hostile{greeting: trickle(15*time.Millisecond, "220-mx.hostile.invalid ESMTP\r\n220 slowly\r\n")}},
		{name: "greeting trickles for ever", module: short(plain, "1s"),
			server: hostile{greeting: then(say("220 "), dribble(10*time.Millisecond))},
			phase:  PhaseBanner, reason: ReasonTimeout},
		{name: "64 MiB greeting without CRLF", module: plain,
			server: hostile{greeting: then(say("220 "), flood("x"))},
			phase:  PhaseBanner, reason: ReasonProtocolError},
		{name: "greeting that never ends", module: plain,
			server: hostile{greeting: flood("220-still greeting you\r\n")},
			phase:  PhaseBanner, reason: ReasonProtocolError},
		{name: "binary garbage greeting", module: plain, server: hostile{greeting: say(garbage(8192))},
			phase: PhaseBanner, reason: ReasonProtocolError},
		{name: "letter in the code", module: plain, server: hostile{greeting: say("22O mx ready\r\n")},
			phase: PhaseBanner, reason: ReasonProtocolError},
		{name: "greeting of empty lines", module: plain, server: hostile{greeting: say("\r\n\r\n")},
			phase: PhaseBanner, reason: ReasonProtocolError},

		// EHLO.
		{name: "EHLO that never ends", module: plain, server: hostile{replies: replies("EHLO", flood("250-PIPELINING\r\n"))},
			phase: PhaseEHLO, reason: ReasonProtocolError},
		{name: "EHLO line without end", module: plain, server: hostile{replies: replies("EHLO", then(say("250-mx\r\n250 "), flood("SIZE ")))},
			phase: PhaseEHLO, reason: ReasonProtocolError},
		{name: "EHLO four-digit code", module: plain, server: hostile{replies: replies("EHLO", say("2500 mx\r\n"))},
			phase: PhaseEHLO, reason: ReasonProtocolError},
		{name: "EHLO mismatched codes", module: plain, server: hostile{replies: replies("EHLO", say("250-mx\r\n220 PIPELINING\r\n"))},
			phase: PhaseEHLO, reason: ReasonProtocolError},
		{name: "EHLO binary garbage", module: plain, server: hostile{replies: replies("EHLO", say("250-mx\r\n"+garbage(512)))},
			phase: PhaseEHLO, reason: ReasonProtocolError},

		// Bare LF line endings: a lenient client accepts them, as
		// Postfix and most clients do.
		{name: "bare LF line endings", module: auth, server: hostile{
			greeting: say("220 mx.hostile.invalid ESMTP\n"),
			replies: replies("EHLO", say("250-mx.hostile.invalid\n250 AUTH PLAIN\n"),
				"AUTH", say("235 2.7.0 ok\n"), "QUIT", then(say("221 bye\n"), hangup))}},

		// 421 in every phase: the server is going away, nothing more is
		// said.
		{name: "421 greeting", module: plain, server: hostile{greeting: say("421 4.3.2 Shutting down\r\n")},
			phase: PhaseBanner, reason: ReasonServiceUnavailable, code: 421},
		{name: "421 to EHLO", module: plain, server: hostile{replies: replies("EHLO", say("421 4.7.0 Too busy\r\n"))},
			phase: PhaseEHLO, reason: ReasonServiceUnavailable, code: 421},
		{name: "421 to HELO", module: plain, server: hostile{replies: replies("EHLO", say("502 5.5.2 no\r\n"), "HELO", say("421 4.7.0 Too busy\r\n"))},
			phase: PhaseEHLO, reason: ReasonServiceUnavailable, code: 421},
		{name: "421 to STARTTLS", module: starttls, server: hostile{replies: replies("STARTTLS", say("421 4.7.0 TLS broken\r\n"))},
			phase: PhaseStartTLS, reason: ReasonServiceUnavailable, code: 421},
		{name: "421 to EHLO after STARTTLS", module: starttls, server: hostile{replies: replies("EHLO", func(c *smtptest.Conn, line string) bool {
			if c.TLS() {
				return c.Write("421 4.7.0 Too busy\r\n") == nil
			}
			return c.Write(hostileEHLO) == nil
		})},
			phase: PhaseEHLOTLS, reason: ReasonServiceUnavailable, code: 421},
		{name: "421 to AUTH", module: auth, server: hostile{replies: replies("AUTH", say("421 4.7.0 Too busy\r\n"))},
			phase: PhaseAuth, reason: ReasonServiceUnavailable, code: 421},
		{name: "421 in the middle of AUTH", module: login, server: hostile{replies: replies("AUTH", then(say(loginUserPrompt), nextLine(say("421 4.7.0 Too busy\r\n"))))},
			phase: PhaseAuth, reason: ReasonServiceUnavailable, code: 421},
		{name: "421 to MAIL", module: canary, server: hostile{replies: replies("MAIL", say("421 4.7.0 Too busy\r\n"))},
			phase: PhaseMail, reason: ReasonServiceUnavailable, code: 421},
		{name: "421 to RCPT", module: canary, server: hostile{replies: replies("RCPT", say("421 4.7.0 Too busy\r\n"))},
			phase: PhaseRcpt, reason: ReasonServiceUnavailable, code: 421},
		{name: "421 to DATA", module: canary, server: hostile{replies: replies("DATA", say("421 4.7.0 Too busy\r\n"))},
			phase: PhaseData, reason: ReasonServiceUnavailable, code: 421},
		{name: "421 after the message", module: canary, server: hostile{replies: replies(".", say("421 4.3.0 Queue full\r\n"))},
			phase: PhaseData, reason: ReasonServiceUnavailable, code: 421},
		{name: "421 to RSET", module: canaryRset, server: hostile{replies: replies("RSET", say("421 4.7.0 Too busy\r\n"))},
			phase: PhaseRset, reason: ReasonServiceUnavailable, code: 421},
		{name: "421 to QUIT", module: plain, server: hostile{replies: replies("QUIT", say("421 4.3.2 Shutting down\r\n"))},
			phase: PhaseQuit, reason: ReasonServiceUnavailable, code: 421},

		// Connections closed (FIN) or reset (RST) half-way.
		{name: "reset after EHLO", module: auth, server: hostile{replies: replies("EHLO", then(say(hostileEHLO), reset))},
			phase: PhaseAuth, reason: ReasonConnectionClosed},
		{name: "closed after EHLO", module: auth, server: hostile{replies: replies("EHLO", then(say(hostileEHLO), hangup))},
			phase: PhaseAuth, reason: ReasonConnectionClosed},
		{name: "reset in the middle of AUTH", module: login, server: hostile{replies: replies("AUTH", then(say(loginUserPrompt), nextLine(reset)))},
			phase: PhaseAuth, reason: ReasonConnectionClosed},
		{name: "closed in the middle of AUTH", module: login, server: hostile{replies: replies("AUTH", then(say(loginUserPrompt), nextLine(hangup)))},
			phase: PhaseAuth, reason: ReasonConnectionClosed},
		{name: "reset in the middle of DATA", module: canary, server: hostile{replies: replies("DATA", then(say("354 go ahead\r\n"), nextLine(reset)))},
			phase: PhaseData, reason: ReasonConnectionClosed},
		{name: "closed in the middle of DATA", module: canary, server: hostile{replies: replies("DATA", then(say("354 go ahead\r\n"), nextLine(hangup)))},
			phase: PhaseData, reason: ReasonConnectionClosed},
		{name: "reset instead of the message reply", module: canary, server: hostile{replies: replies(".", reset)},
			phase: PhaseData, reason: ReasonConnectionClosed},

		// STARTTLS.
		{name: "STARTTLS answered with HTTP", module: starttls, server: hostile{replies: replies("STARTTLS", notTLS)},
			phase: PhaseStartTLS, reason: ReasonTLSHandshake, code: 220},
		{name: "STARTTLS answered with silence", module: short(starttls, "1s"), server: hostile{replies: replies("STARTTLS", then(say("220 go ahead\r\n"), silence))},
			phase: PhaseStartTLS, reason: ReasonTimeout, code: 220},
		{name: "self-signed certificate", module: starttls, server: hostile{replies: replies("STARTTLS", startTLS(selfSigned))},
			phase: PhaseStartTLS, reason: ReasonCertificate, code: 220,
			check: func(t *testing.T, r *Result, srv *smtptest.Server) {
				if srv.SawCommand("AUTH") {
					t.Error("credentials sent to a self-signed server")
				}
				if len(r.Certificates) != 1 || r.Certificates[0].Fingerprint != sha256.Sum256(selfSigned.Certificate[0]) {
					t.Error("self-signed certificate not kept for the metrics")
				}
			}},
		{name: "flood after TLS", module: starttls, server: hostile{replies: replies("EHLO", func(c *smtptest.Conn, line string) bool {
			if c.TLS() {
				return flood("250-X\r\n")(c, line)
			}
			return c.Write(hostileEHLO) == nil
		})},
			phase: PhaseEHLOTLS, reason: ReasonProtocolError},

		// AUTH challenges.
		{name: "CRAM-MD5 challenge not base64", module: cram, server: hostile{replies: replies("AUTH", say("334 <1896.697170952@mx>\r\n"))},
			phase: PhaseAuth, reason: ReasonProtocolError, code: 334},
		{name: "CRAM-MD5 empty challenge", module: cram, server: hostile{replies: replies("AUTH", say("334 \r\n"))},
			phase: PhaseAuth, reason: ReasonProtocolError, code: 334},
		{name: "LOGIN challenge of 3 KiB", module: login, server: hostile{replies: replies("AUTH", say("334 "+strings.Repeat("VXNl", 768)+"\r\n"))},
			phase: PhaseAuth, reason: ReasonProtocolError, code: 334},
		{name: "LOGIN challenge of 64 MiB", module: login, server: hostile{replies: replies("AUTH", then(say("334 "), flood("VXNl")))},
			phase: PhaseAuth, reason: ReasonProtocolError},
		{name: "multi-line challenge", module: cram, server: hostile{replies: replies("AUTH", say("334-PDE4OTY+\r\n334 PDE4OTY+\r\n"))},
			phase: PhaseAuth, reason: ReasonProtocolError, code: 334},
		{name: "AUTH reply with mismatched codes", module: auth, server: hostile{replies: replies("AUTH", say("235-ok\r\n535 no\r\n"))},
			phase: PhaseAuth, reason: ReasonProtocolError},

		// Lenient: a server that takes any password looks like one that
		// took the right one.
		{name: "any password accepted", module: auth, server: hostile{},
			check: func(t *testing.T, r *Result, _ *smtptest.Server) {
				if !r.AuthSuccess {
					t.Error("AuthSuccess not set")
				}
			}},
		// Echoed credentials are scrubbed in every form the server could
		// quote them.
		{name: "PLAIN credentials echoed", module: echo(auth), server: hostile{replies: replies("AUTH", echoCredentials)},
			phase: PhaseAuth, reason: ReasonAuthRejected, code: 535, check: noCredentialForms},
		{name: "LOGIN credentials echoed", module: echo(login), server: hostile{replies: replies("AUTH", echoCredentials)},
			phase: PhaseAuth, reason: ReasonAuthRejected, code: 535, check: noCredentialForms},
		{name: "CRAM-MD5 response echoed", module: echo(cram), server: hostile{replies: replies("AUTH", echoCredentials)},
			phase: PhaseAuth, reason: ReasonAuthRejected, code: 535, check: noCredentialForms},
		// A server that wants AUTH again after its 235 fails the probe in
		// the next phase; the credentials are not sent twice.
		{name: "334 to MAIL after 235", module: canary, server: hostile{replies: replies("MAIL", say("334 \r\n"))},
			phase: PhaseMail, reason: ReasonUnexpectedReply, code: 334, check: credentialsSentOnce},
		{name: "530 to MAIL after 235", module: canary, server: hostile{replies: replies("MAIL", say("530 5.7.0 Authentication required\r\n"))},
			phase: PhaseMail, reason: ReasonSenderRejected, code: 530, check: credentialsSentOnce},

		// PBKDF2 cannot be interrupted; a server asking for the most
		// iterations allowed just before the deadline must not hold the
		// probe past it.
		{name: "SCRAM iterations at the deadline", module: short(scram, "800ms"),
			server: hostile{replies: replies("EHLO", say("250-mx\r\n250 AUTH SCRAM-SHA-256\r\n"), "AUTH", scramIterations(750*time.Millisecond, 1_000_000))},
			phase:  PhaseAuth, reason: ReasonTimeout, code: 334},

		// Tarpits: every reply comes just inside any per-command timeout,
		// but the probe's deadline is one for the whole session.
		{name: "tarpit", module: short(auth, "1200ms"), server: hostile{greeting: after(450*time.Millisecond, say(hostileGreeting)),
			replies: replies("EHLO", after(450*time.Millisecond, say(hostileEHLO)), "AUTH", after(450*time.Millisecond, say("235 2.7.0 ok\r\n")))},
			phase: PhaseAuth, reason: ReasonTimeout},
		{name: "tarpit trickling every reply", module: short(plain, "1s"),
			server: hostile{greeting: trickle(20*time.Millisecond, hostileGreeting), replies: replies("EHLO", trickle(20*time.Millisecond, hostileEHLO))},
			phase:  PhaseEHLO, reason: ReasonTimeout},
	}

	// A first probe opens what the runtime keeps for good (the network
	// poller), so that it is not counted against the first case.
	warm := hostile{}.start(t)
	if r, log := runProbe(t, target(warm), loadModule(t, auth)); !r.Success {
		t.Fatalf("warm-up probe failed: %+v\n%s", r.Failure, log)
	}
	warm.Close()

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.module.Timeout == "" {
				tc.module.Timeout = "2s"
			}
			m := loadModule(t, tc.module)
			timeout := time.Duration(m.Timeout)
			fds := openFDs(t)
			srv := tc.server.start(t)

			var before, during, retained runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			start := time.Now()
			r, log := runProbe(t, target(srv), m)
			elapsed := time.Since(start)
			runtime.ReadMemStats(&during)
			srv.Close()

			if tc.reason == "" {
				requireSuccess(t, r, log)
			} else {
				requireFailure(t, r, tc.phase, tc.reason)
				if got := phaseOf(t, r, tc.phase); !got.Ran || got.Code != tc.code {
					t.Errorf("phase %s ran %v with code %d, want %d", tc.phase, got.Ran, got.Code, tc.code)
				}
			}
			if elapsed > timeout+hostileMargin {
				t.Errorf("probe took %v with a %v timeout", elapsed, timeout)
			}
			// A timeout is the module's deadline, not some shorter
			// per-command one.
			if tc.reason == ReasonTimeout && elapsed < timeout-50*time.Millisecond {
				t.Errorf("timed out after %v, before the %v deadline", elapsed, timeout)
			}
			if n := during.TotalAlloc - before.TotalAlloc; n > hostileAllocLimit {
				t.Errorf("probe allocated %d KiB, over %d KiB", n>>10, hostileAllocLimit>>10)
			}
			if len(r.Transcript) > maxTranscriptLines {
				t.Errorf("transcript of %d lines", len(r.Transcript))
			}
			if tc.module.Mechanism != "" {
				password := cmp.Or(tc.module.Password, testPassword)
				assertNoSecrets(t, r, log, password, base64.StdEncoding.EncodeToString([]byte(password)))
			}
			if tc.check != nil {
				tc.check(t, r, srv)
			}

			goleak.VerifyNone(t, ignoreExisting)
			if fds >= 0 {
				if got := openFDs(t); got != fds {
					t.Errorf("%d file descriptors open after the probe, %d before", got, fds)
				}
			}
			runtime.GC()
			runtime.ReadMemStats(&retained)
			if grown := int64(retained.HeapAlloc) - int64(before.HeapAlloc); grown > hostileRetainLimit {
				t.Errorf("heap grew by %d KiB", grown>>10)
			}
			runtime.KeepAlive(r)
		})
	}
}
