//go:build unix

package collector

import (
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

// A module whose secret or CA file is a named pipe answers /probe at once
// with a failure in setup, and gives its slot back: with one slot, a module
// with good files is probed next. The request reads the secrets once,
// before the gate (for the account and its hold) and the prober, which
// take what it read or the error: that read may not hang.
func TestNamedPipeFilesDoNotHoldProbes(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skipf("cannot make a named pipe: %v", err)
	}
	srv := smtptest.NewServer(t, smtptest.Options{})
	cfg := newTestConfig(t, strings.ReplaceAll(`
modules:
  password_file:
    timeout: 5s
    smtp:
      tls: none
      preferred_ip_protocol: ip4
      allow_plaintext_auth: true
      auth: {username: probe@example.net, password_file: FIFO}
      allowed_targets: ["127.0.0.1"]
  token_file:
    timeout: 5s
    smtp:
      tls: none
      preferred_ip_protocol: ip4
      allow_plaintext_auth: true
      auth: {username: probe@example.net, token_file: FIFO}
      allowed_targets: ["127.0.0.1"]
  client_secret_file:
    timeout: 5s
    smtp:
      tls: none
      preferred_ip_protocol: ip4
      allow_plaintext_auth: true
      auth:
        username: probe@example.net
        oauth2: {client_id: c, client_secret_file: FIFO, token_url: "http://127.0.0.1:1/token"}
      allowed_targets: ["127.0.0.1"]
  ca_file:
    timeout: 5s
    smtp:
      tls: starttls
      preferred_ip_protocol: ip4
      tls_config: {ca_file: FIFO}
  banner:
    timeout: 5s
    smtp:
      tls: none
      preferred_ip_protocol: ip4
`, "FIFO", fifo))
	env := newTestEnv(t, HandlerOpts{Config: cfg, MaxConcurrent: 1})
	target := url.QueryEscape(srv.Addr())

	for module, reason := range map[string]string{
		"password_file":      "credentials_unavailable",
		"token_file":         "token_unavailable",
		"client_secret_file": "token_unavailable",
		"ca_file":            "certificate",
	} {
		done := make(chan string, 1)
		start := time.Now()
		go func() {
			rec := env.get(t, env.handler, "module="+module+"&target="+target, nil)
			done <- strings.Join([]string{http.StatusText(rec.Code), rec.Body.String()}, "\n")
		}()
		var body string
		select {
		case body = <-done:
		case <-time.After(10 * time.Second):
			// Let the stuck reader go, and leave a regular file for the
			// reads that follow, so that the test ends.
			w, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0)
			os.Remove(fifo)
			os.WriteFile(fifo, nil, 0o600)
			if err == nil {
				w.Close()
			}
			<-done
			t.Fatalf("%s: /probe did not answer within 10s", module)
		}
		if d := time.Since(start); d >= 5*time.Second {
			t.Errorf("%s: /probe took %v, the module's timeout is 5s", module, d)
		}
		if !strings.HasPrefix(body, "OK\n") || !strings.Contains(body, "probe_success 0\n") ||
			!strings.Contains(body, `probe_smtp_failure_info{phase="setup",reason="`+reason+`"} 1`) {
			t.Errorf("%s: want a failure in setup with reason %s, got:\n%s", module, reason, body)
		}
	}
	log := env.mainLog.String()
	if n := strings.Count(log, "not a regular file (a named pipe)"); n < 4 {
		t.Errorf("%d log lines say the file is a named pipe, want at least one per probe:\n%s", n, log)
	}

	rec := env.get(t, env.handler, "module=banner&target="+target, nil)
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "probe_success 1\n") {
		t.Errorf("banner after the named pipes: status %d\n%s", rec.Code, rec.Body)
	}
}
