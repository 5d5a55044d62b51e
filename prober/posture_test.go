package prober

import (
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/smtp-exporter/smtp_exporter/config"
	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

func TestPostureAuthOfferedWithoutTLS(t *testing.T) {
	t.Parallel()
	caFile := smtptest.Certs().WriteCAFile(t)
	for _, tc := range []struct {
		name        string
		opts        smtptest.Options
		tls         string
		fail        bool
		noAuthBlock bool
	}{
		{name: "AUTH before STARTTLS", opts: smtptest.Options{TLS: smtptest.StartTLS}, tls: "starttls", fail: true},
		{name: "AUTH only after STARTTLS", opts: smtptest.Options{TLS: smtptest.StartTLS, AuthRequiresTLS: true}, tls: "starttls"},
		{name: "plain-text server offering AUTH", opts: smtptest.Options{}, tls: "none", fail: true, noAuthBlock: true},
		{name: "plain-text server without AUTH", opts: smtptest.Options{NoAuth: true}, tls: "none", noAuthBlock: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.opts.Username, tc.opts.Password = testUser, testPassword
			srv := smtptest.NewServer(t, tc.opts)
			yaml := fmt.Sprintf("modules:\n  m:\n    smtp:\n      tls: %s\n      preferred_ip_protocol: ip4\n      tls_config: {ca_file: %q}\n      fail_if_auth_offered_without_tls: true\n", tc.tls, caFile)
			if !tc.noAuthBlock {
				yaml += fmt.Sprintf("      auth: {username: %s, password: %s}\n      allowed_targets: [127.0.0.1]\n", testUser, testPassword)
			}
			m := mustModule(t, yaml)
			r, log := runProbe(t, srv.Addr(), m)
			if !tc.fail {
				requireSuccess(t, r, log)
				return
			}
			requireFailure(t, r, PhaseEHLO, ReasonAuthOfferedWithoutTLS)
			if r.AuthAttempted || srv.SawCommand("AUTH") || srv.SawCommand("STARTTLS") {
				t.Error("the probe went on after the posture check failed")
			}
			if q := phaseOf(t, r, PhaseQuit); q.Code != 221 {
				t.Errorf("no QUIT: %+v", q)
			}
			if !strings.Contains(r.Failure.Err.Error(), "PLAIN LOGIN CRAM-MD5") {
				t.Errorf("failure %q does not name the mechanisms offered", r.Failure.Err)
			}
		})
	}
}

func TestPostureInsecureMechanisms(t *testing.T) {
	t.Parallel()
	caFile := smtptest.Certs().WriteCAFile(t)
	for _, tc := range []struct {
		name   string
		opts   smtptest.Options
		tls    string
		reason Reason // "" for success
		text   string
	}{
		{name: "PLAIN and LOGIN in clear", opts: smtptest.Options{Mechanisms: []string{"CRAM-MD5", "LOGIN", "PLAIN"}}, tls: "none",
			reason: ReasonInsecureMechanism, text: "PLAIN LOGIN"},
		{name: "only CRAM-MD5 in clear", opts: smtptest.Options{Mechanisms: []string{"CRAM-MD5"}}, tls: "none"},
		{name: "PLAIN only after STARTTLS", opts: smtptest.Options{TLS: smtptest.StartTLS, AuthRequiresTLS: true}, tls: "starttls"},
		{name: "PLAIN before STARTTLS", opts: smtptest.Options{TLS: smtptest.StartTLS, Mechanisms: []string{"PLAIN"}}, tls: "starttls",
			reason: ReasonInsecureMechanism, text: "PLAIN"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := smtptest.NewServer(t, tc.opts)
			m := mustModule(t, fmt.Sprintf("modules:\n  m:\n    smtp:\n      tls: %s\n      preferred_ip_protocol: ip4\n      tls_config: {ca_file: %q}\n      fail_if_mechanisms_offered: [plain, LOGIN]\n", tc.tls, caFile))
			r, log := runProbe(t, srv.Addr(), m)
			if tc.reason == "" {
				requireSuccess(t, r, log)
				return
			}
			requireFailure(t, r, PhaseEHLO, tc.reason)
			if !strings.Contains(r.Failure.Err.Error(), "advertises "+tc.text+" on an unencrypted session") {
				t.Errorf("failure %q, want it to name %s", r.Failure.Err, tc.text)
			}
		})
	}
}

func TestExpectAuthRejected(t *testing.T) {
	t.Parallel()
	caFile := smtptest.Certs().WriteCAFile(t)
	for _, tc := range []struct {
		name     string
		password string
		opts     smtptest.Options
		reason   Reason // "" for success
	}{
		{name: "refused", password: "disabled-account"},
		{name: "accepted", password: testPassword, reason: ReasonAuthUnexpectedlyAccepted},
		// A refusal that does not judge the credentials proves nothing.
		{name: "temporary failure", password: "disabled-account",
			opts: smtptest.Options{AuthReply: "454 4.7.0 Temporary authentication failure"}, reason: ReasonAuthTemporaryFailure},
		{name: "mechanism missing", password: "disabled-account",
			opts: smtptest.Options{Mechanisms: []string{"DIGEST-MD5"}}, reason: ReasonMechanismUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.opts.TLS, tc.opts.Username, tc.opts.Password = smtptest.StartTLS, testUser, testPassword
			srv := smtptest.NewServer(t, tc.opts)
			m := mustModule(t, fmt.Sprintf("modules:\n  m:\n    smtp:\n      preferred_ip_protocol: ip4\n      tls_config: {ca_file: %q}\n      auth: {username: %s, password: %q}\n      allowed_targets: [127.0.0.1]\n      expect_auth_rejected: true\n",
				caFile, testUser, tc.password))
			r, log := runProbe(t, srv.Addr(), m)
			if tc.reason != "" {
				requireFailure(t, r, PhaseAuth, tc.reason)
				return
			}
			requireSuccess(t, r, log)
			if r.AuthSuccess || !r.AuthAttempted {
				t.Errorf("AuthSuccess %v AuthAttempted %v, want a refused attempt", r.AuthSuccess, r.AuthAttempted)
			}
			if auth := phaseOf(t, r, PhaseAuth); auth.Code != 535 {
				t.Errorf("auth phase code %d, want the refusal's 535", auth.Code)
			}
			if !strings.Contains(transcriptText(r), "as expect_auth_rejected requires") {
				t.Errorf("transcript does not say the refusal was expected:\n%s", transcriptText(r))
			}
		})
	}
}

// versionServer is an implicit-TLS SMTP server limited to some TLS versions.
func versionServer(t *testing.T, minVersion, maxVersion uint16) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	cfg := &tls.Config{Certificates: []tls.Certificate{smtptest.Certs().Server}, MinVersion: minVersion, MaxVersion: maxVersion}
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer nc.Close()
				nc.SetDeadline(time.Now().Add(5 * time.Second))
				tc := tls.Server(nc, cfg)
				if tc.Handshake() != nil {
					return
				}
				buf := make([]byte, 512)
				fmt.Fprint(tc, "220 tls.test ESMTP\r\n")
				for {
					n, err := tc.Read(buf)
					if err != nil {
						return
					}
					switch {
					case strings.HasPrefix(string(buf[:n]), "EHLO"):
						fmt.Fprint(tc, "250-tls.test\r\n250 8BITMIME\r\n")
					default:
						fmt.Fprint(tc, "221 bye\r\n")
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func TestTLSVersionPolicy(t *testing.T) {
	t.Parallel()
	caFile := smtptest.Certs().WriteCAFile(t)
	for _, tc := range []struct {
		name                 string
		serverMin, serverMax uint16
		tlsConfig            string
		reason               Reason // "" for success
	}{
		{"TLS 1.2 server, min_version TLS13", tls.VersionTLS12, tls.VersionTLS12, "min_version: TLS13", ReasonTLSVersion},
		{"TLS 1.2 server, no minimum", tls.VersionTLS12, tls.VersionTLS12, "min_version: TLS12", ""},
		{"TLS 1.3 server, max_version TLS12", tls.VersionTLS13, tls.VersionTLS13, "max_version: TLS12", ReasonTLSVersion},
		{"TLS 1.3 server, min_version TLS13", tls.VersionTLS13, tls.VersionTLS13, "min_version: TLS13", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			addr := versionServer(t, tc.serverMin, tc.serverMax)
			m := mustModule(t, fmt.Sprintf("modules:\n  m:\n    smtp:\n      tls: implicit\n      preferred_ip_protocol: ip4\n      tls_config: {ca_file: %q, %s}\n", caFile, tc.tlsConfig))
			r, log := runProbe(t, addr, m)
			if tc.reason == "" {
				requireSuccess(t, r, log)
				return
			}
			requireFailure(t, r, PhaseTLS, tc.reason)
			if q, _ := r.Phase(PhaseQuit); q.Ran {
				t.Error("QUIT was sent after the TLS handshake failed")
			}
		})
	}
}

func mustModule(t testing.TB, yaml string) config.Module {
	t.Helper()
	cfg, err := config.Load([]byte(yaml))
	if err != nil {
		t.Fatalf("%v\n%s", err, yaml)
	}
	for _, m := range cfg.Modules {
		return m
	}
	t.Fatal("no module")
	return config.Module{}
}
