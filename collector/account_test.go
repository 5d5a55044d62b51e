package collector

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/smtp-exporter/smtp_exporter/config"
	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
	"github.com/smtp-exporter/smtp_exporter/prober"
)

// With the real prober: one wrong password, tried through two modules and
// every spelling of the server's address, reaches the server once; the
// other requests are held and say so. A new password is tried at once.
func TestOneLoginPerAccount(t *testing.T) {
	const username = "probe@example.net"
	srv := smtptest.NewServer(t, smtptest.Options{Username: username, Password: "the-right-password"})
	passFile := filepath.Join(t.TempDir(), "probe.pass")
	if err := os.WriteFile(passFile, []byte("a-wrong-password-canary\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	module := func(mechanism, extra string) string {
		return fmt.Sprintf(`
    timeout: 5s
    auth_failure_backoff: 1h
    smtp:
      tls: none
      preferred_ip_protocol: ip4
      allow_plaintext_auth: true
      auth: {username: %s, password_file: %q, mechanism: %s}
      allowed_targets: ["127.0.0.1"]
%s`, username, passFile, mechanism, extra)
	}
	cfg := newTestConfig(t, "modules:\n  submission:"+module("PLAIN", "")+"  login:"+module("LOGIN", "")+
		"  disabled:"+module("PLAIN", "      expect_auth_rejected: true\n"))
	env := newTestEnv(t, HandlerOpts{Config: cfg})
	// Every outcome of every module that logs in has a series from the
	// start, so that the first login counts in increase().
	if n := testutil.CollectAndCount(loginCounters{env.handler.gate.m.logins, cfg}, "smtp_exporter_logins_total"); n != 3*len(loginOutcomes) {
		t.Errorf("%d logins_total series before any probe, want %d", n, 3*len(loginOutcomes))
	}
	port := srv.Port()
	spellings := []string{
		fmt.Sprintf("127.0.0.1:%d", port),
		fmt.Sprintf("localhost:%d", port),
		fmt.Sprintf("LocalHost.:%d", port),
		fmt.Sprintf("[::ffff:127.0.0.1]:%d", port),
		fmt.Sprintf("127.0.0.1:%d:", port), // invalid: no login, no hold
	}
	held := 0
	for _, moduleName := range []string{"submission", "login"} {
		for _, target := range spellings {
			body := env.get(t, env.handler, "module="+moduleName+"&target="+url.QueryEscape(target)+"&debug=true", nil).Body.String()
			if strings.Contains(body, "a-wrong-password-canary") {
				t.Errorf("%s %s: the password is in the answer", moduleName, target)
			}
			if strings.HasSuffix(target, ":") {
				if !strings.Contains(body, `probe_smtp_failure_info{phase="setup",reason="target_invalid"} 1`) {
					t.Errorf("%s %s:\n%s", moduleName, target, body)
				}
				continue
			}
			if !strings.Contains(body, `probe_smtp_failure_info{phase="auth",reason="auth_rejected"} 1`) ||
				!strings.Contains(body, `probe_smtp_status_code{phase="auth"} 535`) {
				t.Errorf("%s %s does not report the refusal:\n%s", moduleName, target, body)
			}
			if strings.HasPrefix(body, "Login held: probe ") {
				held++
			}
		}
	}
	if n := len(srv.Auths()); n != 1 {
		t.Fatalf("server saw %d logins, want 1", n)
	}
	if held != 7 {
		t.Errorf("%d answers begin with the hold notice, want 7", held)
	}
	if got := testutil.ToFloat64(env.handler.gate.m.logins.WithLabelValues("submission", "refused")); got != 1 {
		t.Errorf("logins_total{submission,refused} = %v, want 1", got)
	}
	if got := testutil.ToFloat64(env.handler.gate.m.held.WithLabelValues("submission", "auth_rejected")) +
		testutil.ToFloat64(env.handler.gate.m.held.WithLabelValues("login", "auth_rejected")); got != 7 {
		t.Errorf("logins_held_total = %v, want 7", got)
	}
	if log := env.mainLog.String(); strings.Count(log, `msg="Login held"`) != 7 || strings.Contains(log, "a-wrong-password-canary") {
		t.Errorf("main log:\n%s", log)
	}

	// The page of a held result says so at the top.
	rec := env.get(t, env.handler, "module=login&target="+url.QueryEscape(spellings[1])+"&view=html", nil)
	if page := rec.Body.String(); !strings.Contains(page, `data-provenance="held"`) || !strings.Contains(page, "auth_failure_backoff holds every login of this account") {
		t.Errorf("result page of a held request lacks the notice:\n%s", page)
	}

	// The right password in the file is another credential: tried at once.
	if err := os.WriteFile(passFile, []byte("the-right-password\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	body := env.get(t, env.handler, "module=login&target="+url.QueryEscape(spellings[2]), nil).Body.String()
	if !strings.Contains(body, "probe_success 1\n") || len(srv.Auths()) != 2 {
		t.Errorf("after the password changed: %d logins\n%s", len(srv.Auths()), body)
	}

	// A disabled account that must stay disabled is never held: every
	// probe logs in and succeeds on the refusal.
	srv.SetPassword("another-password")
	for range 2 {
		body := env.get(t, env.handler, "module=disabled&target="+url.QueryEscape(spellings[0]), nil).Body.String()
		if !strings.Contains(body, "probe_success 1\n") || !strings.Contains(body, "probe_smtp_auth_success 0\n") {
			t.Errorf("expected rejection:\n%s", body)
		}
	}
	if n := len(srv.Auths()); n != 4 {
		t.Errorf("server saw %d logins, want 4: expect_auth_rejected must not hold", n)
	}
}

// A changed inline password ends the reuse of a result at once: the module's
// fingerprint covers its secrets although its YAML shows <secret>.
func TestInlinePasswordChangeEndsReuse(t *testing.T) {
	const username = "probe@example.net"
	srv := smtptest.NewServer(t, smtptest.Options{Username: username, Password: "first-password"})
	dir := t.TempDir()
	path := filepath.Join(dir, "smtp_exporter.yml")
	write := func(password string) {
		t.Helper()
		yaml := fmt.Sprintf(`modules:
  submission:
    min_interval: 1h
    smtp:
      tls: none
      preferred_ip_protocol: ip4
      allow_plaintext_auth: true
      auth: {username: %s, password: %q}
      allowed_targets: ["127.0.0.1"]
`, username, password)
		if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("first-password")
	cfg := config.NewSafeConfig(nil)
	if err := cfg.Reload(path); err != nil {
		t.Fatal(err)
	}
	env := newTestEnv(t, HandlerOpts{Config: cfg})
	query := "module=submission&target=" + url.QueryEscape(srv.Addr())
	for range 2 {
		if body := env.get(t, env.handler, query, nil).Body.String(); !strings.Contains(body, "probe_success 1\n") {
			t.Fatalf("first password:\n%s", body)
		}
	}
	if n := len(srv.Auths()); n != 1 {
		t.Fatalf("%d logins within min_interval, want 1", n)
	}
	srv.SetPassword("second-password")
	write("second-password")
	if err := cfg.Reload(path); err != nil {
		t.Fatal(err)
	}
	if body := env.get(t, env.handler, query, nil).Body.String(); !strings.Contains(body, "probe_success 1\n") {
		t.Errorf("after the password changed in the file and a reload, the old result is served:\n%s", body)
	}
	if n := len(srv.Auths()); n != 2 {
		t.Errorf("%d logins, want 2", n)
	}
}

// The gate's account and the login take the password from one reading of
// its file: the file rewritten after the request read it, while the probe
// runs, does not change the password that probe logs in with (before, the
// prober read the file again, and a hold could be keyed on a secret other
// than the one refused); the next request reads the new one.
func TestOneReadingOfTheSecretsPerRequest(t *testing.T) {
	env, srv, query, write := passwordFileEnv(t, "another-password")
	write("the-password")
	if body := env.get(t, env.handler, query, nil).Body.String(); !strings.Contains(body, "probe_success 1\n") {
		t.Fatalf("the login did not use the password the request read:\n%s", body)
	}
	if body := env.get(t, env.handler, query, nil).Body.String(); !strings.Contains(body, `reason="auth_rejected"`) {
		t.Errorf("the next request did not read the file afresh:\n%s", body)
	}
	if n := len(srv.Auths()); n != 2 {
		t.Errorf("%d logins, want 2", n)
	}
}

// A password file that the request could not read fails the probe in
// setup, naming the file, even when it appears while the probe runs: the
// prober reports the request's reading instead of reading again, and the
// next request reads it afresh.
func TestUnreadableSecretReadOncePerRequest(t *testing.T) {
	env, srv, query, _ := passwordFileEnv(t, "the-password")
	body := env.get(t, env.handler, query+"&debug=true", nil).Body.String()
	if !strings.Contains(body, `reason="credentials_unavailable"`) || !strings.Contains(body, "password_file") {
		t.Fatalf("the probe did not fail on the file the request could not read:\n%s", body)
	}
	if n := len(srv.Auths()); n != 0 {
		t.Errorf("%d logins with a password the request never read", n)
	}
	if body := env.get(t, env.handler, query, nil).Body.String(); !strings.Contains(body, "probe_success 1\n") {
		t.Errorf("the next request did not read the file afresh:\n%s", body)
	}
}

// passwordFileEnv serves a module that logs in to a server taking
// "the-password" with a password file, which every probe rewrites to
// during after the request read it and before the login. It returns the
// query that probes the server and the function that writes the file.
func passwordFileEnv(t *testing.T, during string) (*testEnv, *smtptest.Server, string, func(string)) {
	t.Helper()
	const username = "probe@example.net"
	srv := smtptest.NewServer(t, smtptest.Options{Username: username, Password: "the-password"})
	passFile := filepath.Join(t.TempDir(), "probe.pass")
	write := func(password string) {
		if err := os.WriteFile(passFile, []byte(password+"\n"), 0o600); err != nil {
			t.Error(err)
		}
	}
	cfg := newTestConfig(t, fmt.Sprintf(`modules:
  submission:
    timeout: 5s
    smtp:
      tls: none
      preferred_ip_protocol: ip4
      allow_plaintext_auth: true
      auth: {username: %s, password_file: %q}
      allowed_targets: ["127.0.0.1"]
`, username, passFile))
	probe := func(ctx context.Context, target prober.Target, module *config.Module, probeID string, logger *slog.Logger) *prober.Result {
		write(during)
		return prober.ProbeTarget(ctx, target, module, probeID, logger)
	}
	env := newTestEnv(t, HandlerOpts{Config: cfg, Probe: probe, Resolve: prober.Resolve})
	return env, srv, "module=submission&target=" + url.QueryEscape(srv.Addr()), write
}
