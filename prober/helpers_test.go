package prober

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/smtp-exporter/smtp_exporter/config"
	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

// Credentials the standard test servers accept. The password is distinctive
// so that a leak anywhere is found by a plain substring search.
const (
	testUser     = "probe@example.net"
	testPassword = "Sw0rdf1sh-leak-canary"
)

// moduleSpec describes a test module; it is rendered to YAML and loaded
// through config.Load so that validation (and allowed_targets parsing) runs
// exactly as in production.
type moduleSpec struct {
	Timeout        string // default 5s
	TLS            string // none, starttls, implicit
	CAFile         string
	ServerName     string
	Mechanism      string // "" for no auth block
	Username       string // default testUser
	Password       string // default testPassword unless PasswordFile
	PasswordFile   string
	AllowPlaintext bool
	Allowed        []string // default ["127.0.0.1"] when auth is set
	EHLO           string
	SourceIP       string
	Mail           string // YAML of the mail block, indented for "  mail:"
}

func loadModule(t testing.TB, s moduleSpec) config.Module {
	t.Helper()
	var b strings.Builder
	b.WriteString("modules:\n  test:\n")
	timeout := s.Timeout
	if timeout == "" {
		timeout = "5s"
	}
	fmt.Fprintf(&b, "    timeout: %s\n    smtp:\n", timeout)
	fmt.Fprintf(&b, "      tls: %s\n      preferred_ip_protocol: ip4\n", s.TLS)
	if s.SourceIP != "" {
		fmt.Fprintf(&b, "      source_ip_address: %s\n", s.SourceIP)
	}
	if s.EHLO != "" {
		fmt.Fprintf(&b, "      ehlo: %s\n", s.EHLO)
	}
	if s.CAFile != "" || s.ServerName != "" {
		b.WriteString("      tls_config:\n")
		if s.CAFile != "" {
			fmt.Fprintf(&b, "        ca_file: %q\n", s.CAFile)
		}
		if s.ServerName != "" {
			fmt.Fprintf(&b, "        server_name: %q\n", s.ServerName)
		}
	}
	if s.Mechanism != "" {
		user := s.Username
		if user == "" {
			user = testUser
		}
		fmt.Fprintf(&b, "      auth:\n        mechanism: %s\n        username: %q\n", s.Mechanism, user)
		switch {
		case s.PasswordFile != "":
			fmt.Fprintf(&b, "        password_file: %q\n", s.PasswordFile)
		case s.Password != "":
			fmt.Fprintf(&b, "        password: %q\n", s.Password)
		default:
			fmt.Fprintf(&b, "        password: %q\n", testPassword)
		}
		if s.Allowed == nil {
			s.Allowed = []string{"127.0.0.1"}
		}
	}
	if s.AllowPlaintext {
		b.WriteString("      allow_plaintext_auth: true\n")
	}
	if len(s.Allowed) > 0 {
		b.WriteString("      allowed_targets:\n")
		for _, a := range s.Allowed {
			fmt.Fprintf(&b, "        - %q\n", a)
		}
	}
	if s.Mail != "" {
		b.WriteString("      mail:\n")
		for _, line := range strings.Split(strings.TrimRight(s.Mail, "\n"), "\n") {
			b.WriteString("        " + line + "\n")
		}
	}
	cfg, err := config.Load([]byte(b.String()))
	if err != nil {
		t.Fatalf("loading module: %v\n%s", err, b.String())
	}
	return cfg.Modules["test"]
}

// runProbe runs Probe with a debug-level logger and returns the result and
// the log.
func runProbe(t testing.TB, target string, m config.Module) (*Result, string) {
	t.Helper()
	return runProbeCtx(t, context.Background(), target, m)
}

func runProbeCtx(t testing.TB, ctx context.Context, target string, m config.Module) (*Result, string) {
	t.Helper()
	var logs smtptest.LogBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r := Probe(ctx, target, &m, "test-probe", logger)
	if r == nil {
		t.Fatal("Probe returned nil")
	}
	return r, logs.String()
}

// target is the server's address, or another host name on its port.
func target(s *smtptest.Server, host ...string) string {
	if len(host) > 0 {
		return fmt.Sprintf("%s:%d", host[0], s.Port())
	}
	return s.Addr()
}

func transcriptText(r *Result) string {
	var b strings.Builder
	for _, l := range r.Transcript {
		fmt.Fprintf(&b, "%s: %s\n", l.Dir, l.Text)
	}
	return b.String()
}

func requireSuccess(t testing.TB, r *Result, log string) {
	t.Helper()
	if !r.Success || r.Failure != nil {
		t.Fatalf("probe failed: %+v\ntranscript:\n%s\nlog:\n%s", r.Failure, transcriptText(r), log)
	}
	for _, p := range r.Phases {
		if !p.Ran {
			t.Errorf("phase %s did not run", p.Phase)
		}
	}
}

func requireFailure(t testing.TB, r *Result, phase Phase, reason Reason) {
	t.Helper()
	if r.Success {
		t.Fatalf("probe succeeded, want failure %s/%s\ntranscript:\n%s", phase, reason, transcriptText(r))
	}
	if r.Failure == nil {
		t.Fatalf("Success false but Failure nil")
	}
	if r.Failure.Phase != phase || r.Failure.Reason != reason {
		t.Fatalf("failure %s/%s (%v), want %s/%s\ntranscript:\n%s",
			r.Failure.Phase, r.Failure.Reason, r.Failure.Err, phase, reason, transcriptText(r))
	}
}

func phaseOf(t testing.TB, r *Result, ph Phase) PhaseResult {
	t.Helper()
	pr, ok := r.Phase(ph)
	if !ok {
		t.Fatalf("phase %s not planned; phases: %+v", ph, r.Phases)
	}
	return pr
}

func dialTest(addr string) (net.Conn, error) {
	return net.DialTimeout("tcp", addr, 5*time.Second)
}
