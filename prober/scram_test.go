package prober

import (
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smtp-exporter/smtp_exporter/config"
	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

// The exchanges published in RFC 5802 (SCRAM-SHA-1) and RFC 7677
// (SCRAM-SHA-256), with the client nonce fixed to the RFC's.
func TestSCRAMVectors(t *testing.T) {
	t.Parallel()
	for _, v := range []struct {
		mech, nonce, serverFirst, clientFinal, serverFinal string
	}{
		{
			config.MechanismSCRAMSHA1, "fyko+d2lbbFgONRv9qkxdawL",
			"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
			"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
			"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
		},
		{
			config.MechanismSCRAMSHA256, "rOprNGfwEbeRWgbNEkqO",
			"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
			"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
			"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
		},
	} {
		t.Run(v.mech, func(t *testing.T) {
			var secrets []string
			a := newSCRAM(v.mech, "user", "pencil", func(s string) { secrets = append(secrets, s) })
			name, first, err := a.Start()
			if err != nil || name != v.mech || !strings.HasPrefix(string(first), "n,,n=user,r=") {
				t.Fatalf("Start = %q %q %v", name, first, err)
			}
			a.clientNonce = v.nonce
			a.clientFirstBare = "n=user,r=" + v.nonce
			final, err := a.Next([]byte(v.serverFirst))
			if err != nil || string(final) != v.clientFinal {
				t.Fatalf("client-final = %q, %v\nwant %q", final, err, v.clientFinal)
			}
			proof := v.clientFinal[strings.Index(v.clientFinal, "p=")+2:]
			if len(secrets) != 2 || secrets[0] != proof || secrets[1] != v.clientFinal {
				t.Errorf("registered secrets %q, want the proof and the client-final message", secrets)
			}
			if err := a.complete(); err == nil {
				t.Error("complete before the server signature")
			}
			resp, err := a.Next([]byte(v.serverFinal))
			if err != nil || len(resp) != 0 {
				t.Fatalf("answer to server-final = %q, %v", resp, err)
			}
			if err := a.complete(); err != nil {
				t.Errorf("complete after a good server signature: %v", err)
			}
		})
	}
}

// Server messages the client must refuse, each with its reason.
func TestSCRAMRefusesBadServerMessages(t *testing.T) {
	t.Parallel()
	const nonce = "clientnonce"
	salt := base64.StdEncoding.EncodeToString([]byte("salt"))
	for _, tc := range []struct {
		name, serverFirst string
		reason            Reason // "" for a protocol error
		wantText          string
	}{
		{"nonce not extended", "r=othernonce123,s=" + salt + ",i=4096", "", "nonce"},
		{"nonce only echoed", "r=" + nonce + ",s=" + salt + ",i=4096", "", "nonce"},
		{"zero iterations", "r=" + nonce + "x,s=" + salt + ",i=0", "", "iteration count"},
		{"absurd iterations", "r=" + nonce + "x,s=" + salt + ",i=1000001", "", "exceeds the limit of 1000000"},
		{"iterations not a number", "r=" + nonce + "x,s=" + salt + ",i=4k", "", "iteration count"},
		{"salt not base64", "r=" + nonce + "x,s=***,i=4096", "", "salt"},
		{"no salt", "r=" + nonce + "x,i=4096", "", "salt"},
		{"mandatory extension", "m=ext,r=" + nonce + "x,s=" + salt + ",i=4096", "", "extension"},
		{"repeated attribute", "r=" + nonce + "x,r=" + nonce + "y,s=" + salt + ",i=4096", "", "repeated"},
		{"garbage", "hello world", "", "malformed"},
		{"server error", "e=unknown-user", ReasonAuthRejected, "unknown-user"},
		{"server error, not about the credentials", "e=other-error", ReasonAuthRefused, "other-error"},
		{"server error, no resources", "e=no-resources", ReasonAuthTemporaryFailure, "no-resources"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newSCRAM(config.MechanismSCRAMSHA256, "user", "pencil", func(string) {})
			a.Start()
			a.clientNonce, a.clientFirstBare = nonce, "n=user,r="+nonce
			_, err := a.Next([]byte(tc.serverFirst))
			var pe *ProtocolError
			var sf *saslFailure
			switch {
			case err == nil:
				t.Fatal("accepted")
			case tc.reason == "" && !errors.As(err, &pe):
				t.Errorf("error %v is not a protocol error", err)
			case tc.reason != "" && (!errors.As(err, &sf) || sf.reason != tc.reason):
				t.Errorf("error %v, want reason %s", err, tc.reason)
			}
			if !strings.Contains(err.Error(), tc.wantText) {
				t.Errorf("error %q does not mention %q", err, tc.wantText)
			}
		})
	}
	a := newSCRAM(config.MechanismSCRAMSHA256, "user", "pencil", func(string) {})
	a.Start()
	if _, err := a.Next([]byte("r=" + a.clientNonce + "srv,s=" + salt + ",i=4096")); err != nil {
		t.Fatal(err)
	}
	var sf *saslFailure
	if _, err := a.Next([]byte("v=" + base64.StdEncoding.EncodeToString(make([]byte, 32)))); !errors.As(err, &sf) || sf.reason != ReasonServerSignature {
		t.Errorf("wrong server signature: %v, want server_signature", err)
	}
	if err := a.complete(); err == nil {
		t.Error("complete after a wrong server signature")
	}
}

func TestSCRAMEscapesUsername(t *testing.T) {
	t.Parallel()
	a := newSCRAM(config.MechanismSCRAMSHA1, "a=b,c", "p", func(string) {})
	_, first, _ := a.Start()
	if !strings.HasPrefix(string(first), "n,,n=a=3Db=2Cc,r=") {
		t.Errorf("client-first %q does not escape = and ,", first)
	}
}

// scramServer is the server side of SCRAM for a scripted test server, with
// switches for the ways a server can misbehave.
type scramServer struct {
	user, password string
	iterations     string // default 4096
	// invalidProof says how a wrong proof is refused: "e" sends a
	// server-error and then 535 (RFC 5802), "" answers 535 at once (as
	// Dovecot does).
	invalidProof string
	// serverError is the e= value sent for a wrong proof with invalidProof
	// "e"; default "invalid-proof".
	serverError string
	// finalReply ends a refused exchange; default "535 5.7.8 Error:
	// authentication failed".
	finalReply   string
	badSignature bool // send a server-final that does not verify
	skipFinal    bool // answer 235 without a server-final message
	mechanisms   string

	mu      sync.Mutex
	outcome []string // "ok", "bad-proof"
	proofs  []string // the base64 ClientProofs received
	finals  []string // the client-final messages received, decoded
	extra   []string // lines received after the server-final
}

func (s *scramServer) handle(c *smtptest.Conn) {
	mechs := s.mechanisms
	if mechs == "" {
		mechs = "PLAIN LOGIN SCRAM-SHA-1 SCRAM-SHA-256"
	}
	smtptest.AuthSession{Host: "scram.test", Extensions: []string{"AUTH " + mechs, "ENHANCEDSTATUSCODES"}, Auth: s.auth}.Handle(c)
}

func (s *scramServer) auth(c *smtptest.Conn, arg string) bool {
	mech, ir, _ := strings.Cut(arg, " ")
	var newHash func() hash.Hash
	switch mech {
	case "SCRAM-SHA-1":
		newHash = sha1.New
	case "SCRAM-SHA-256":
		newHash = sha256.New
	default:
		return c.WriteLine("504 5.5.4 Unsupported authentication mechanism") == nil
	}
	first, err := base64.StdEncoding.DecodeString(ir)
	if err != nil || !strings.HasPrefix(string(first), "n,,n=") {
		return c.WriteLine("501 5.5.2 bad client-first") == nil
	}
	bare := strings.TrimPrefix(string(first), "n,,")
	user, cnonce, ok := strings.Cut(strings.TrimPrefix(bare, "n="), ",r=")
	if !ok {
		return c.WriteLine("501 5.5.2 bad client-first") == nil
	}
	var b [12]byte
	rand.Read(b[:])
	nonce := cnonce + base64.RawStdEncoding.EncodeToString(b[:])
	salt := []byte("smtptest-salt-0123")
	iterations := s.iterations
	if iterations == "" {
		iterations = "4096"
	}
	serverFirst := "r=" + nonce + ",s=" + base64.StdEncoding.EncodeToString(salt) + ",i=" + iterations
	if c.WriteLine("334 "+base64.StdEncoding.EncodeToString([]byte(serverFirst))) != nil {
		return false
	}
	line, err := c.ReadLine()
	if err != nil {
		return false
	}
	if line == "*" {
		return c.WriteLine("501 5.7.0 Authentication aborted") == nil
	}
	final, _ := base64.StdEncoding.DecodeString(line)
	withoutProof, proof, _ := strings.Cut(string(final), ",p=")
	s.mu.Lock()
	s.proofs = append(s.proofs, proof)
	s.finals = append(s.finals, string(final))
	s.mu.Unlock()

	mac := func(key []byte, data string) []byte {
		m := hmac.New(newHash, key)
		m.Write([]byte(data))
		return m.Sum(nil)
	}
	salted, _ := pbkdf2.Key(newHash, s.password, salt, 4096, newHash().Size())
	clientKey := mac(salted, "Client Key")
	stored := newHash()
	stored.Write(clientKey)
	authMessage := bare + "," + serverFirst + "," + withoutProof
	wantProof := make([]byte, len(clientKey))
	subtle.XORBytes(wantProof, clientKey, mac(stored.Sum(nil), authMessage))
	valid := user == s.user && withoutProof == "c=biws,r="+nonce &&
		proof == base64.StdEncoding.EncodeToString(wantProof)
	s.mu.Lock()
	s.outcome = append(s.outcome, map[bool]string{true: "ok", false: "bad-proof"}[valid])
	s.mu.Unlock()
	if !valid {
		if s.invalidProof == "e" {
			e := s.serverError
			if e == "" {
				e = "invalid-proof"
			}
			if c.WriteLine("334 "+base64.StdEncoding.EncodeToString([]byte("e="+e))) != nil {
				return false
			}
			answer, err := c.ReadLine()
			if err != nil {
				return false
			}
			s.mu.Lock()
			s.extra = append(s.extra, answer)
			s.mu.Unlock()
		}
		if s.finalReply != "" {
			return c.WriteLine(s.finalReply) == nil
		}
		return c.WriteLine("535 5.7.8 Error: authentication failed") == nil
	}
	if s.skipFinal {
		return c.WriteLine("235 2.7.0 Authentication successful") == nil
	}
	signature := mac(mac(salted, "Server Key"), authMessage)
	if s.badSignature {
		signature[0] ^= 0xff
	}
	serverFinal := "v=" + base64.StdEncoding.EncodeToString(signature)
	if c.WriteLine("334 "+base64.StdEncoding.EncodeToString([]byte(serverFinal))) != nil {
		return false
	}
	answer, err := c.ReadLine()
	if err != nil {
		return false
	}
	s.mu.Lock()
	s.extra = append(s.extra, answer)
	s.mu.Unlock()
	if answer == "*" {
		return c.WriteLine("501 5.7.0 Authentication aborted") == nil
	}
	return c.WriteLine("235 2.7.0 Authentication successful") == nil
}

func scramModule(t *testing.T, mechanism, password string) config.Module {
	t.Helper()
	return loadModule(t, moduleSpec{TLS: "none", Mechanism: mechanism, Password: password, AllowPlaintext: true})
}

func TestProbeSCRAM(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		configured, offered, want string
	}{
		{"SCRAM-SHA-256", "", "SCRAM-SHA-256"},
		{"SCRAM-SHA-1", "", "SCRAM-SHA-1"},
		{"auto", "", "SCRAM-SHA-256"},
		{"auto", "PLAIN LOGIN CRAM-MD5 SCRAM-SHA-1", "SCRAM-SHA-1"},
	} {
		t.Run(tc.configured+"/"+tc.offered, func(t *testing.T) {
			t.Parallel()
			s := &scramServer{user: testUser, password: testPassword, mechanisms: tc.offered}
			srv := smtptest.NewScripted(t, s.handle)
			r, log := runProbe(t, srv.Addr(), scramModule(t, tc.configured, ""))
			requireSuccess(t, r, log)
			if r.AuthMechanism != tc.want || !r.AuthSuccess {
				t.Errorf("mechanism %q success %v, want %s", r.AuthMechanism, r.AuthSuccess, tc.want)
			}
			if auth := phaseOf(t, r, PhaseAuth); auth.Code != 235 {
				t.Errorf("auth code %d", auth.Code)
			}
			srv.Close()
			s.mu.Lock()
			defer s.mu.Unlock()
			if len(s.outcome) != 1 || s.outcome[0] != "ok" || len(s.extra) != 1 || s.extra[0] != "" {
				t.Fatalf("server saw outcome %v, then %q (want one good proof, then an empty answer)", s.outcome, s.extra)
			}
			// The proof and the client-final message, which the server
			// received, appear nowhere; nor the password.
			assertNoSecrets(t, r, log, testPassword, s.proofs[0], s.finals[0],
				base64.StdEncoding.EncodeToString([]byte(s.finals[0])))
			if transcript := transcriptText(r); !strings.Contains(transcript, "C: AUTH "+tc.want+" "+Redacted+"\n") ||
				strings.Count(transcript, "C: "+Redacted+"\n") != 2 {
				t.Errorf("SCRAM exchange not redacted as expected:\n%s", transcript)
			}
		})
	}
}

func TestProbeSCRAMFailures(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		server   *scramServer
		password string
		reason   Reason
		code     int
		answer   string // the client's answer after the proof, "-" for none
		noQuit   bool   // a protocol error ends the session without QUIT
	}{
		{name: "wrong password, 535 at once", password: "wrong-password",
			reason: ReasonAuthRejected, code: 535, answer: "-"},
		{name: "wrong password, server-error first", server: &scramServer{invalidProof: "e"}, password: "wrong-password",
			reason: ReasonAuthRejected, code: 535, answer: ""},
		// The server-error decides over the final 5xx, which is the same
		// whatever went wrong; a throttling or 4xx final reply decides over
		// the server-error.
		{name: "unknown user", server: &scramServer{invalidProof: "e", serverError: "unknown-user"}, password: "wrong-password",
			reason: ReasonAuthRejected, code: 535, answer: ""},
		{name: "other-error", server: &scramServer{invalidProof: "e", serverError: "other-error"}, password: "wrong-password",
			reason: ReasonAuthRefused, code: 535, answer: ""},
		{name: "channel binding", server: &scramServer{invalidProof: "e", serverError: "channel-bindings-dont-match"}, password: "wrong-password",
			reason: ReasonAuthRefused, code: 535, answer: ""},
		{name: "unknown server-error", server: &scramServer{invalidProof: "e", serverError: "no-such-error"}, password: "wrong-password",
			reason: ReasonAuthRefused, code: 535, answer: ""},
		{name: "no-resources", server: &scramServer{invalidProof: "e", serverError: "no-resources"}, password: "wrong-password",
			reason: ReasonAuthTemporaryFailure, code: 535, answer: ""},
		{name: "invalid-proof, then too many attempts", password: "wrong-password",
			server: &scramServer{invalidProof: "e", finalReply: "454 4.7.0 Too many login attempts, please try again later"},
			reason: ReasonAuthThrottled, code: 454, answer: ""},
		{name: "invalid-proof, then 454", password: "wrong-password",
			server: &scramServer{invalidProof: "e", finalReply: "454 4.7.0 Temporary authentication failure"},
			reason: ReasonAuthTemporaryFailure, code: 454, answer: ""},
		{name: "wrong password, 538 at once", password: "wrong-password",
			server: &scramServer{finalReply: "538 5.7.11 Encryption required for requested authentication mechanism"},
			reason: ReasonAuthEncryptionRequired, code: 538, answer: "-"},
		{name: "server signature wrong", server: &scramServer{badSignature: true},
			reason: ReasonServerSignature, code: 334, answer: "*"},
		{name: "no server signature", server: &scramServer{skipFinal: true},
			reason: ReasonServerSignature, code: 235, answer: "-"},
		{name: "absurd iteration count", server: &scramServer{iterations: "100000000"},
			reason: ReasonProtocolError, code: 334, answer: "-", noQuit: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := tc.server
			if s == nil {
				s = &scramServer{}
			}
			s.user, s.password = testUser, testPassword
			srv := smtptest.NewScripted(t, s.handle)
			start := time.Now()
			r, log := runProbe(t, srv.Addr(), scramModule(t, "SCRAM-SHA-256", tc.password))
			requireFailure(t, r, PhaseAuth, tc.reason)
			if auth := phaseOf(t, r, PhaseAuth); auth.Code != tc.code {
				t.Errorf("auth phase code %d, want %d", auth.Code, tc.code)
			}
			if q := phaseOf(t, r, PhaseQuit); q.Ran == tc.noQuit || (q.Ran && q.Code != 221) {
				t.Errorf("quit %+v, want it to run: %v", q, !tc.noQuit)
			}
			if elapsed := time.Since(start); elapsed > 3*time.Second {
				t.Errorf("probe took %v: the iteration count was not bounded", elapsed)
			}
			srv.Close()
			s.mu.Lock()
			defer s.mu.Unlock()
			got := "-"
			if len(s.extra) > 0 {
				got = s.extra[0]
			}
			if got != tc.answer {
				t.Errorf("client answered %q after the proof, want %q", got, tc.answer)
			}
			secrets := []string{testPassword}
			if tc.password != "" {
				secrets = append(secrets, tc.password)
			}
			for _, p := range s.proofs {
				secrets = append(secrets, p)
			}
			assertNoSecrets(t, r, log, secrets...)
		})
	}
}

// The client's share of a SCRAM login: the key derivation at the
// iteration counts of Dovecot's default (4096) and of our limit.
func BenchmarkSCRAMClientProof(b *testing.B) {
	for _, iterations := range []int{4096, scramMaxIterations} {
		b.Run(fmt.Sprint(iterations), func(b *testing.B) {
			salt := base64.StdEncoding.EncodeToString([]byte("benchmark-salt"))
			for b.Loop() {
				a := newSCRAM(config.MechanismSCRAMSHA256, "user", "pencil", func(string) {})
				a.Start()
				if _, err := a.Next([]byte(fmt.Sprintf("r=%ssrv,s=%s,i=%d", a.clientNonce, salt, iterations))); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// A derivation waits for a free slot only until the probe's deadline, and
// runs once one is free.
func TestSCRAMWaitsForADerivationSlot(t *testing.T) {
	t.Parallel()
	salt := base64.StdEncoding.EncodeToString([]byte("salt"))
	slots := newDerivationSlots(1)
	slots <- struct{}{} // another derivation is running

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	a := newSCRAM(config.MechanismSCRAMSHA256, "user", "pencil", func(string) {})
	a.ctx, a.slots = ctx, slots
	a.Start()
	start := time.Now()
	_, err := a.Next([]byte("r=" + a.clientNonce + "srv,s=" + salt + ",i=4096"))
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "key derivations running at once") {
		t.Errorf("error %v, want the deadline's while waiting for a slot", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("waited %v for a slot with a 100ms deadline", took)
	}

	slots.release()
	b := newSCRAM(config.MechanismSCRAMSHA256, "user", "pencil", func(string) {})
	b.slots = slots
	b.Start()
	if _, err := b.Next([]byte("r=" + b.clientNonce + "srv,s=" + salt + ",i=4096")); err != nil {
		t.Errorf("with a free slot: %v", err)
	}
	if len(slots) != 0 {
		t.Errorf("%d slots still taken after the derivation", len(slots))
	}
}

// A probe that gets no derivation slot before its deadline fails with
// timeout in auth, at its deadline. Not parallel: it takes every slot of
// the process.
func TestProbeSCRAMNoDerivationSlot(t *testing.T) {
	for range cap(keyDerivations) {
		keyDerivations <- struct{}{}
	}
	defer func() {
		for range cap(keyDerivations) {
			keyDerivations.release()
		}
	}()
	s := &scramServer{user: testUser, password: testPassword}
	srv := smtptest.NewScripted(t, s.handle)
	m := loadModule(t, moduleSpec{TLS: "none", Mechanism: "SCRAM-SHA-256", AllowPlaintext: true, Timeout: "1s"})
	start := time.Now()
	r, log := runProbe(t, srv.Addr(), m)
	took := time.Since(start)
	requireFailure(t, r, PhaseAuth, ReasonTimeout)
	if !strings.Contains(r.Failure.Err.Error(), "key derivations running at once") {
		t.Errorf("error %q does not say the probe waited for a derivation", r.Failure.Err)
	}
	if took > 3*time.Second {
		t.Errorf("probe with a 1s timeout took %v", took)
	}
	assertNoSecrets(t, r, log, testPassword)
}
