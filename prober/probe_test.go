package prober

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/smtp-exporter/smtp_exporter/config"
	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

func TestProbeTLSModes(t *testing.T) {
	t.Parallel()
	caFile := smtptest.Certs().WriteCAFile(t)
	for _, tc := range []struct {
		name       string
		serverTLS  smtptest.TLSMode
		moduleTLS  string
		plaintext  bool
		wantPhases []Phase
	}{
		{"none", smtptest.NoTLS, "none", true,
			[]Phase{PhaseConnect, PhaseBanner, PhaseEHLO, PhaseAuth, PhaseQuit}},
		{"starttls", smtptest.StartTLS, "starttls", false,
			[]Phase{PhaseConnect, PhaseBanner, PhaseEHLO, PhaseStartTLS, PhaseEHLOTLS, PhaseAuth, PhaseQuit}},
		{"implicit", smtptest.ImplicitTLS, "implicit", false,
			[]Phase{PhaseConnect, PhaseTLS, PhaseBanner, PhaseEHLO, PhaseAuth, PhaseQuit}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := smtptest.NewServer(t, smtptest.Options{
				TLS: tc.serverTLS, Username: testUser, Password: testPassword, Size: 10240000,
			})
			m := loadModule(t, moduleSpec{TLS: tc.moduleTLS, CAFile: caFile, Mechanism: "auto", AllowPlaintext: tc.plaintext})
			r, log := runProbe(t, target(srv), m)
			requireSuccess(t, r, log)

			var got []Phase
			for _, p := range r.Phases {
				got = append(got, p.Phase)
			}
			if !slices.Equal(got, tc.wantPhases) {
				t.Errorf("phases %v, want %v", got, tc.wantPhases)
			}
			wantCodes := map[Phase]int{PhaseBanner: 220, PhaseEHLO: 250, PhaseStartTLS: 220, PhaseEHLOTLS: 250, PhaseAuth: 235, PhaseQuit: 221}
			for _, p := range r.Phases {
				if want, ok := wantCodes[p.Phase]; ok && p.Code != want {
					t.Errorf("phase %s code %d, want %d", p.Phase, p.Code, want)
				}
				if p.Duration <= 0 {
					t.Errorf("phase %s has no duration", p.Phase)
				}
			}
			if auth := phaseOf(t, r, PhaseAuth); auth.Enhanced != "2.7.0" {
				t.Errorf("auth enhanced code %q, want 2.7.0", auth.Enhanced)
			}
			if (r.TLS != nil) != (tc.moduleTLS != "none") {
				t.Errorf("TLS state %v for mode %s", r.TLS != nil, tc.moduleTLS)
			}
			if r.TLS != nil && (len(r.Certificates) == 0 || !r.TLS.Verified) {
				t.Errorf("TLS without certificates or verified chains")
			}
			// The chain is the leaf and the CA; it expires with the leaf.
			if leaf := smtptest.Certs().Server.Leaf; r.TLS != nil && !r.TLS.LastChainExpiry.Equal(leaf.NotAfter) {
				t.Errorf("last chain expiry %v, want the leaf's %v", r.TLS.LastChainExpiry, leaf.NotAfter)
			}
			if !r.AuthAttempted || !r.AuthSuccess || r.AuthMechanism != "CRAM-MD5" {
				t.Errorf("auth attempted=%v success=%v mechanism=%q, want CRAM-MD5 chosen by auto",
					r.AuthAttempted, r.AuthSuccess, r.AuthMechanism)
			}
			if r.SizeLimit != 10240000 {
				t.Errorf("SizeLimit %d, want 10240000", r.SizeLimit)
			}
			if r.IP.String() != "127.0.0.1" || r.Port != srv.Port() || r.Host != "127.0.0.1" {
				t.Errorf("target recorded as %s %s:%d", r.Host, r.IP, r.Port)
			}
			if r.Duration <= 0 {
				t.Error("no total duration")
			}
			// The session AUTH ran on is the last EHLO: after STARTTLS the
			// extensions are recorded under ehlo_tls, and STARTTLS is no
			// longer offered there.
			last := PhaseEHLO
			if tc.moduleTLS == "starttls" {
				last = PhaseEHLOTLS
				if !slices.Contains(r.Extensions[PhaseEHLO], "STARTTLS") || slices.Contains(r.Extensions[PhaseEHLOTLS], "STARTTLS") {
					t.Errorf("extensions before/after TLS: %v / %v", r.Extensions[PhaseEHLO], r.Extensions[PhaseEHLOTLS])
				}
			}
			for _, ext := range []string{"AUTH", "SIZE", "PIPELINING", "8BITMIME"} {
				if !slices.Contains(r.Extensions[last], ext) {
					t.Errorf("extensions %v lack %s", r.Extensions[last], ext)
				}
			}
			if !slices.Equal(r.AuthMechanisms, []string{"PLAIN", "LOGIN", "CRAM-MD5"}) {
				t.Errorf("AuthMechanisms %v", r.AuthMechanisms)
			}
			srv.Close()
			auths := srv.Auths()
			if len(auths) != 1 || !auths[0].Success || auths[0].TLS != (tc.moduleTLS != "none") {
				t.Errorf("server saw AUTH %+v", auths)
			}
		})
	}
}

func TestProbeMechanisms(t *testing.T) {
	t.Parallel()
	caFile := smtptest.Certs().WriteCAFile(t)
	for _, tc := range []struct {
		configured, offered []string
		want                string
	}{
		{[]string{"PLAIN"}, nil, "PLAIN"},
		{[]string{"LOGIN"}, nil, "LOGIN"},
		{[]string{"CRAM-MD5"}, nil, "CRAM-MD5"},
		{[]string{"auto"}, []string{"LOGIN", "PLAIN"}, "PLAIN"},
		{[]string{"auto"}, []string{"LOGIN"}, "LOGIN"},
		{[]string{"auto"}, []string{"DIGEST-MD5", "LOGIN", "CRAM-MD5"}, "CRAM-MD5"},
	} {
		t.Run(tc.configured[0]+"-"+strings.Join(tc.offered, "+"), func(t *testing.T) {
			t.Parallel()
			srv := smtptest.NewServer(t, smtptest.Options{
				TLS: smtptest.StartTLS, Username: testUser, Password: testPassword, Mechanisms: tc.offered,
			})
			m := loadModule(t, moduleSpec{TLS: "starttls", CAFile: caFile, Mechanism: tc.configured[0]})
			r, log := runProbe(t, target(srv), m)
			requireSuccess(t, r, log)
			if r.AuthMechanism != tc.want {
				t.Errorf("used %s, want %s", r.AuthMechanism, tc.want)
			}
			srv.Close()
			if a := srv.Auths(); len(a) != 1 || a[0].Mechanism != tc.want || !a[0].Success || a[0].Username != testUser {
				t.Errorf("server saw %+v", a)
			}
		})
	}
}

func TestProbeAuthFailures(t *testing.T) {
	t.Parallel()
	caFile := smtptest.Certs().WriteCAFile(t)
	for _, tc := range []struct {
		name         string
		opts         smtptest.Options
		mechanism    string
		password     string
		reason       Reason
		code         int
		enhanced     string
		sawAuth      bool
		authAttempts bool
	}{
		{name: "wrong password PLAIN", mechanism: "PLAIN", password: "not-the-password",
			reason: ReasonAuthRejected, code: 535, enhanced: "5.7.8", sawAuth: true, authAttempts: true},
		{name: "wrong password LOGIN", mechanism: "LOGIN", password: "not-the-password",
			reason: ReasonAuthRejected, code: 535, enhanced: "5.7.8", sawAuth: true, authAttempts: true},
		{name: "wrong password CRAM-MD5", mechanism: "CRAM-MD5", password: "not-the-password",
			reason: ReasonAuthRejected, code: 535, enhanced: "5.7.8", sawAuth: true, authAttempts: true},
		{name: "temporary failure", mechanism: "auto",
			opts:   smtptest.Options{AuthReply: "454 4.7.0 Temporary authentication failure"},
			reason: ReasonAuthTemporaryFailure, code: 454, enhanced: "4.7.0", sawAuth: true, authAttempts: true},
		{name: "mechanism not offered", mechanism: "CRAM-MD5",
			opts:   smtptest.Options{Mechanisms: []string{"PLAIN", "LOGIN"}},
			reason: ReasonMechanismUnavailable},
		{name: "no supported mechanism", mechanism: "auto",
			opts:   smtptest.Options{Mechanisms: []string{"DIGEST-MD5", "XOAUTH2"}},
			reason: ReasonMechanismUnavailable},
		{name: "no AUTH", mechanism: "auto", opts: smtptest.Options{NoAuth: true},
			reason: ReasonAuthUnavailable},
		{name: "504 mechanism refused after being offered", mechanism: "PLAIN",
			opts:   smtptest.Options{AuthReply: "504 5.5.4 Unrecognized authentication type"},
			reason: ReasonMechanismUnavailable, code: 504, enhanced: "5.5.4", sawAuth: true, authAttempts: true},
		{name: "503 is unexpected", mechanism: "PLAIN",
			opts:   smtptest.Options{AuthReply: "503 5.5.1 Error: already authenticated"},
			reason: ReasonUnexpectedReply, code: 503, enhanced: "5.5.1", sawAuth: true, authAttempts: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.opts.TLS = smtptest.StartTLS
			tc.opts.Username, tc.opts.Password = testUser, testPassword
			srv := smtptest.NewServer(t, tc.opts)
			m := loadModule(t, moduleSpec{TLS: "starttls", CAFile: caFile, Mechanism: tc.mechanism, Password: tc.password})
			r, log := runProbe(t, target(srv), m)
			requireFailure(t, r, PhaseAuth, tc.reason)
			auth := phaseOf(t, r, PhaseAuth)
			if !auth.Ran || auth.Code != tc.code || auth.Enhanced != tc.enhanced {
				t.Errorf("auth phase %+v, want code %d enhanced %q", auth, tc.code, tc.enhanced)
			}
			var re *ReplyError
			if tc.code != 0 && (!errors.As(r.Failure.Err, &re) || re.Code != tc.code || re.Enhanced != tc.enhanced || re.Command != "AUTH") {
				t.Errorf("failure error %v does not carry the reply", r.Failure.Err)
			}
			if r.AuthSuccess || r.AuthAttempted != tc.authAttempts {
				t.Errorf("AuthSuccess %v AuthAttempted %v", r.AuthSuccess, r.AuthAttempted)
			}
			// The session was still in order: the probe says goodbye.
			if q := phaseOf(t, r, PhaseQuit); !q.Ran || q.Code != 221 {
				t.Errorf("quit after failed auth: %+v", q)
			}
			for _, s := range []string{testPassword, tc.password} {
				if s != "" && (strings.Contains(r.Failure.Err.Error(), s) || strings.Contains(log, s) || strings.Contains(transcriptText(r), s)) {
					t.Errorf("password %q leaked", s)
				}
			}
			srv.Close()
			if srv.SawCommand("AUTH") != tc.sawAuth {
				t.Errorf("server saw AUTH: %v, want %v", srv.SawCommand("AUTH"), tc.sawAuth)
			}
		})
	}
}

func TestProbeLegacyDialogue(t *testing.T) {
	t.Parallel()
	for _, mech := range []string{"auto", "LOGIN", "PLAIN"} {
		t.Run(mech, func(t *testing.T) {
			t.Parallel()
			srv := smtptest.NewServer(t, smtptest.Options{
				Legacy: true, Username: testUser, Password: testPassword,
				Mechanisms: []string{"LOGIN", "PLAIN"}, Size: 5242880,
			})
			m := loadModule(t, moduleSpec{TLS: "none", AllowPlaintext: true, Mechanism: mech})
			r, log := runProbe(t, target(srv), m)
			requireSuccess(t, r, log)
			if !slices.Equal(r.AuthMechanisms, []string{"LOGIN", "PLAIN"}) {
				t.Errorf("AuthMechanisms %v, want [LOGIN PLAIN] from lower-case and AUTH= lines", r.AuthMechanisms)
			}
			if r.SizeLimit != 5242880 {
				t.Errorf("SizeLimit %d from \"Size 5242880\"", r.SizeLimit)
			}
			want := []string{"PIPELINING", "SIZE", "AUTH", "8BITMIME"}
			if !slices.Equal(r.Extensions[PhaseEHLO], want) {
				t.Errorf("extensions %v, want %v", r.Extensions[PhaseEHLO], want)
			}
			if a := phaseOf(t, r, PhaseAuth); a.Code != 235 || a.Enhanced != "" {
				t.Errorf("auth phase %+v", a)
			}
		})
	}
}

func TestProbeHELOFallback(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t, smtptest.Options{RejectEHLO: true})
	m := loadModule(t, moduleSpec{TLS: "none", EHLO: "prober.example.net"})
	r, log := runProbe(t, target(srv), m)
	requireSuccess(t, r, log)
	if !r.HELOFallback {
		t.Error("HELOFallback not set")
	}
	if e := phaseOf(t, r, PhaseEHLO); e.Code != 250 {
		t.Errorf("ehlo phase code %d, want the HELO's 250", e.Code)
	}
	if len(r.Extensions[PhaseEHLO]) != 0 || r.SizeLimit != -1 {
		t.Errorf("extensions %v size %d after HELO", r.Extensions[PhaseEHLO], r.SizeLimit)
	}
	srv.Close()
	lines := srv.Lines()
	if len(lines) < 2 || lines[0] != "EHLO prober.example.net" || lines[1] != "HELO prober.example.net" {
		t.Errorf("server saw %q", lines)
	}
}

func TestProbeStartTLSNotAdvertised(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t, smtptest.Options{TLS: smtptest.NoTLS, Username: testUser, Password: testPassword})
	m := loadModule(t, moduleSpec{TLS: "starttls", Mechanism: "PLAIN"})
	r, _ := runProbe(t, target(srv), m)
	requireFailure(t, r, PhaseStartTLS, ReasonStartTLSUnavailable)
	if r.TLS != nil || r.AuthAttempted {
		t.Error("no TLS and no AUTH expected")
	}
	srv.Close()
	if srv.SawCommand("STARTTLS") || srv.SawCommand("AUTH") {
		t.Errorf("server saw %q", srv.Lines())
	}
}

func TestProbeCertificateErrors(t *testing.T) {
	t.Parallel()
	certs := smtptest.Certs()
	caFile := certs.WriteCAFile(t)
	for _, tc := range []struct {
		name       string
		pick       func(*smtptest.CertSet) *tls.Certificate
		host       string
		serverName string
	}{
		{name: "expired", pick: func(c *smtptest.CertSet) *tls.Certificate { return &c.Expired }},
		{name: "wrong name", pick: func(c *smtptest.CertSet) *tls.Certificate { return &c.WrongName }},
		{name: "untrusted CA", pick: func(c *smtptest.CertSet) *tls.Certificate { return &c.Untrusted }},
		{name: "server_name mismatch", pick: func(c *smtptest.CertSet) *tls.Certificate { return &c.Server }, host: "localhost", serverName: "mx.other.invalid"},
	} {
		for _, mode := range []string{"starttls", "implicit"} {
			t.Run(tc.name+"/"+mode, func(t *testing.T) {
				t.Parallel()
				serverMode, phase := smtptest.StartTLS, PhaseStartTLS
				if mode == "implicit" {
					serverMode, phase = smtptest.ImplicitTLS, PhaseTLS
				}
				cert := tc.pick(certs)
				srv := smtptest.NewServer(t, smtptest.Options{TLS: serverMode, Cert: cert, Username: testUser, Password: testPassword})
				m := loadModule(t, moduleSpec{TLS: mode, CAFile: caFile, ServerName: tc.serverName, Mechanism: "PLAIN"})
				host := []string{}
				if tc.host != "" {
					host = append(host, tc.host)
				}
				r, _ := runProbe(t, target(srv, host...), m)
				requireFailure(t, r, phase, ReasonCertificate)
				if r.TLS != nil {
					t.Error("TLS state recorded for a failed handshake")
				}
				if len(r.Certificates) == 0 || r.Certificates[0].Fingerprint != sha256.Sum256(cert.Leaf.Raw) {
					t.Fatalf("certificates not kept from the failed verification: %d", len(r.Certificates))
				}
				if tc.name == "expired" && !r.Certificates[0].NotAfter.Before(time.Now()) {
					t.Error("expired certificate's NotAfter not in the past")
				}
				if q := phaseOf(t, r, PhaseQuit); q.Ran {
					t.Error("QUIT sent after a failed handshake")
				}
				srv.Close()
				if srv.SawCommand("AUTH") {
					t.Error("credentials sent despite the certificate error")
				}
			})
		}
	}
}

func TestProbeVerifiesHostName(t *testing.T) {
	t.Parallel()
	caFile := smtptest.Certs().WriteCAFile(t)
	srv := smtptest.NewServer(t, smtptest.Options{TLS: smtptest.ImplicitTLS})
	m := loadModule(t, moduleSpec{TLS: "implicit", CAFile: caFile})
	r, log := runProbe(t, target(srv, "localhost"), m)
	requireSuccess(t, r, log)
	if r.Host != "localhost" || r.IP.String() != "127.0.0.1" {
		t.Errorf("host %s ip %s", r.Host, r.IP)
	}
	if r.TLS.ServerName != "localhost" {
		t.Errorf("verified against %q", r.TLS.ServerName)
	}
}

func TestProbeSilentServerTimesOut(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewScripted(t, func(c *smtptest.Conn) { c.WaitClosed() })
	m := loadModule(t, moduleSpec{TLS: "none", Timeout: "800ms"})
	start := time.Now()
	r, _ := runProbe(t, target(srv), m)
	elapsed := time.Since(start)
	requireFailure(t, r, PhaseBanner, ReasonTimeout)
	if elapsed > 800*time.Millisecond+hostileMargin {
		t.Errorf("probe took %v with an 800ms timeout", elapsed)
	}
	if elapsed < 700*time.Millisecond {
		t.Errorf("probe gave up after %v, before its timeout", elapsed)
	}
}

// A tarpit that trickles a never-ending multi-line greeting must not be
// able to extend the probe: the deadline is set once, not per read.
func TestProbeTarpitCannotExtendDeadline(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewScripted(t, func(c *smtptest.Conn) {
		// 12 s of trickling: a deadline set per read would hold the probe
		// that long.
		for i := 0; i < 240; i++ {
			if c.Write("220-slow\r\n") != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	m := loadModule(t, moduleSpec{TLS: "none", Timeout: "10s"})
	ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
	defer cancel()
	start := time.Now()
	r, _ := runProbeCtx(t, ctx, target(srv), m)
	elapsed := time.Since(start)
	requireFailure(t, r, PhaseBanner, ReasonTimeout)
	if elapsed > 600*time.Millisecond+hostileMargin {
		t.Errorf("tarpit held the probe for %v with a 600ms context", elapsed)
	}
}

func TestProbeConnectionRefused(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	m := loadModule(t, moduleSpec{TLS: "none"})
	r, _ := runProbe(t, addr, m)
	requireFailure(t, r, PhaseConnect, ReasonConnectionRefused)
	if c := phaseOf(t, r, PhaseConnect); !c.Ran {
		t.Error("connect phase not marked as run")
	}
	if b := phaseOf(t, r, PhaseBanner); b.Ran {
		t.Error("banner phase marked as run")
	}
	if !r.IP.IsValid() {
		t.Error("dialled address not recorded")
	}
}

func TestProbeTargetNotAllowed(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t, smtptest.Options{Username: testUser, Password: testPassword})
	for _, tc := range []struct {
		name    string
		allowed []string
		host    string
		ok      bool
	}{
		{name: "other address", allowed: []string{"192.0.2.1"}, host: "127.0.0.1"},
		{name: "other prefix", allowed: []string{"10.0.0.0/8"}, host: "localhost"},
		{name: "other name", allowed: []string{"mail.example.net"}, host: "localhost"},
		{name: "other port", allowed: []string{"127.0.0.1:1"}, host: "127.0.0.1"},
		{name: "name resolving into an allowed prefix", allowed: []string{"127.0.0.0/8"}, host: "localhost", ok: true},
		{name: "allowed name", allowed: []string{"LOCALHOST"}, host: "localhost", ok: true},
	} {
		m := loadModule(t, moduleSpec{TLS: "none", AllowPlaintext: true, Mechanism: "PLAIN", Allowed: tc.allowed})
		before := srv.Connections()
		r, log := runProbe(t, target(srv, tc.host), m)
		if tc.ok {
			requireSuccess(t, r, log)
			continue
		}
		requireFailure(t, r, PhaseSetup, ReasonTargetNotAllowed)
		if got := srv.Connections(); got != before {
			t.Errorf("%s: server saw a connection", tc.name)
		}
		for _, p := range r.Phases {
			if p.Ran {
				t.Errorf("%s: phase %s ran", tc.name, p.Phase)
			}
		}
	}
}

func TestProbePasswordRotation(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "password")
	write := func(p string) {
		if err := os.WriteFile(file, []byte(p+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("first-Secret-1")
	srv := smtptest.NewServer(t, smtptest.Options{TLS: smtptest.StartTLS, Username: testUser, Password: "first-Secret-1"})
	m := loadModule(t, moduleSpec{TLS: "starttls", CAFile: smtptest.Certs().WriteCAFile(t), Mechanism: "PLAIN", PasswordFile: file})

	r, log := runProbe(t, target(srv), m)
	requireSuccess(t, r, log)

	// The file changes before the server does: the next probe must send
	// the new password, not a cached one.
	write("second-Secret-2")
	r, _ = runProbe(t, target(srv), m)
	requireFailure(t, r, PhaseAuth, ReasonAuthRejected)

	srv.SetPassword("second-Secret-2")
	r, log = runProbe(t, target(srv), m)
	requireSuccess(t, r, log)

	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	before := srv.Connections()
	r, log = runProbe(t, target(srv), m)
	requireFailure(t, r, PhaseSetup, ReasonCredentials)
	if !strings.Contains(log, "Cannot read the password") || !strings.Contains(log, file) {
		t.Errorf("log does not say which password file failed:\n%s", log)
	}
	if srv.Connections() != before {
		t.Error("connected without credentials")
	}
}

func TestProbePlaintextAuthRefused(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t, smtptest.Options{Username: testUser, Password: testPassword})
	m := loadModule(t, moduleSpec{TLS: "none", Mechanism: "PLAIN"})
	r, _ := runProbe(t, target(srv), m)
	requireFailure(t, r, PhaseAuth, ReasonPlaintextAuthRefused)
	if r.AuthAttempted {
		t.Error("AuthAttempted set")
	}
	srv.Close()
	if srv.SawCommand("AUTH") {
		t.Errorf("server saw AUTH: %q", srv.Lines())
	}
	if !srv.SawCommand("QUIT") {
		t.Error("session not closed with QUIT")
	}
}

func TestProbeQuitAnsweredByClose(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t, smtptest.Options{QuitClose: true})
	m := loadModule(t, moduleSpec{TLS: "none"})
	r, log := runProbe(t, target(srv), m)
	requireSuccess(t, r, log)
	if q := phaseOf(t, r, PhaseQuit); q.Code != 0 {
		t.Errorf("quit code %d, want 0", q.Code)
	}
	if !strings.Contains(transcriptText(r), "closed the connection instead of answering QUIT") {
		t.Errorf("transcript does not note the close:\n%s", transcriptText(r))
	}
}

func TestProbeMultiLineGreeting(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t, smtptest.Options{Greeting: []string{
		"mx.smtptest.invalid ESMTP", "Unauthorised use prohibited.", "All sessions are logged.",
	}})
	m := loadModule(t, moduleSpec{TLS: "none"})
	r, log := runProbe(t, target(srv), m)
	requireSuccess(t, r, log)
	// The client waited for the last greeting line before its EHLO.
	var sawLast bool
	for _, l := range r.Transcript {
		if l.Dir == Server && l.Text == "220 All sessions are logged." {
			sawLast = true
		}
		if l.Dir == Client && strings.HasPrefix(l.Text, "EHLO") && !sawLast {
			t.Fatal("EHLO sent before the greeting ended")
		}
	}
	if !sawLast {
		t.Error("last greeting line not in transcript")
	}
}

func TestProbeSetupFailures(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t, smtptest.Options{})
	m := loadModule(t, moduleSpec{TLS: "none", Mail: "from: probe@example.net\nto: [sink@example.net]\nmessage:\n  attachments:\n    - path: /nonexistent/attachment.bin\n"})
	r, _ := runProbe(t, target(srv), m)
	requireFailure(t, r, PhaseSetup, ReasonMessageUnavailable)

	r, _ = runProbe(t, "smtp://"+srv.Addr(), loadModule(t, moduleSpec{TLS: "none"}))
	requireFailure(t, r, PhaseSetup, ReasonTargetInvalid)

	r, _ = runProbe(t, "no-such-host.invalid:25", loadModule(t, moduleSpec{TLS: "none"}))
	requireFailure(t, r, PhaseSetup, ReasonDNS)

	srv.Close()
	if srv.Connections() != 0 {
		t.Errorf("server saw %d connections from failed setups", srv.Connections())
	}
}

func TestPlannedPhases(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		m    config.Module
		want []Phase
	}{
		{config.Module{SMTP: config.SMTPProbe{TLS: config.TLSNone}},
			[]Phase{PhaseConnect, PhaseBanner, PhaseEHLO, PhaseQuit}},
		{config.Module{SMTP: config.SMTPProbe{TLS: config.TLSImplicit, Auth: &config.Auth{}}},
			[]Phase{PhaseConnect, PhaseTLS, PhaseBanner, PhaseEHLO, PhaseAuth, PhaseQuit}},
		{config.Module{SMTP: config.SMTPProbe{TLS: config.TLSStartTLS, Auth: &config.Auth{}, Mail: &config.Mail{Data: true}}},
			[]Phase{PhaseConnect, PhaseBanner, PhaseEHLO, PhaseStartTLS, PhaseEHLOTLS, PhaseAuth, PhaseMail, PhaseRcpt, PhaseData, PhaseQuit}},
		{config.Module{SMTP: config.SMTPProbe{TLS: config.TLSNone, Mail: &config.Mail{}}},
			[]Phase{PhaseConnect, PhaseBanner, PhaseEHLO, PhaseMail, PhaseRcpt, PhaseRset, PhaseQuit}},
	} {
		if got := PlannedPhases(&tc.m); !slices.Equal(got, tc.want) {
			t.Errorf("PlannedPhases = %v, want %v", got, tc.want)
		}
	}
}

func TestProbeSourceIPAddress(t *testing.T) {
	t.Parallel()
	remote := make(chan string, 1)
	srv := smtptest.NewScripted(t, func(c *smtptest.Conn) {
		host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
		remote <- host
		c.Reply(220, "mx")
		for {
			line, err := c.ReadLine()
			if err != nil {
				return
			}
			if line == "QUIT" {
				c.Reply(221, "bye")
				return
			}
			c.Reply(250, "mx")
		}
	})
	m := loadModule(t, moduleSpec{TLS: "none", SourceIP: "127.0.0.2"})
	r, log := runProbe(t, target(srv), m)
	requireSuccess(t, r, log)
	if got := <-remote; got != "127.0.0.2" {
		t.Errorf("server saw the probe from %s, want 127.0.0.2", got)
	}
}

func TestProbeIPv6Loopback(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewScriptedAt(t, "[::1]:0", func(c *smtptest.Conn) {
		c.Reply(220, "mx")
		for {
			line, err := c.ReadLine()
			if err != nil || line == "QUIT" {
				c.Reply(221, "bye")
				return
			}
			c.Reply(250, "mx")
		}
	})
	m := loadModule(t, moduleSpec{TLS: "none", Allowed: []string{"::1"}})
	r, log := runProbe(t, srv.Addr(), m)
	requireSuccess(t, r, log)
	if !r.IP.Is6() || r.Host != "::1" {
		t.Errorf("probed %s at %s", r.Host, r.IP)
	}
}

// Connect failures other than a refusal: the context ends before the dial,
// and the local address cannot be bound. Neither sends anything anywhere.
func TestConnectFailures(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	target := l.Addr().String()

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r, _ := runProbeCtx(t, ctx, target, mustModule(t, "modules:\n  m:\n    smtp: {tls: none}\n"))
	requireFailure(t, r, PhaseConnect, ReasonTimeout)

	// 192.0.2.1 (TEST-NET-1) is not an address of this machine: binding to
	// it fails locally, before any packet is sent.
	r, _ = runProbe(t, target, mustModule(t, "modules:\n  m:\n    smtp: {tls: none, source_ip_address: 192.0.2.1}\n"))
	requireFailure(t, r, PhaseConnect, ReasonConnectionFailed)
}
