package collector

import (
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

// TestRealProbe runs the handler with the real prober against an in-process
// STARTTLS server with AUTH, and checks what reaches the response, the debug
// output and the main log: the metrics of a real session. That no form of
// the password reaches any output is TestSecretsNeverShown's job.
func TestRealProbe(t *testing.T) {
	const (
		username = "probe@example.net"
		password = "c0rrect-Horse-battery"
	)
	srv := smtptest.NewServer(t, smtptest.Options{
		TLS:             smtptest.StartTLS,
		Username:        username,
		Password:        password,
		AuthRequiresTLS: true,
		Size:            10 << 20,
	})
	caFile := smtptest.Certs().WriteCAFile(t)
	module := func(mech string) string {
		// One account in three modules: without auth_failure_backoff 0s
		// the first refusal would hold the other modules' logins.
		return `
    timeout: 5s
    auth_failure_backoff: 0s
    smtp:
      tls: starttls
      preferred_ip_protocol: ip4
      tls_config:
        ca_file: ` + caFile + `
      auth:
        mechanism: ` + mech + `
        username: ` + username + `
        password: "` + password + `"
      allowed_targets: ["127.0.0.1"]
`
	}
	cfg := newTestConfig(t, "modules:\n  plain:"+module("PLAIN")+"  login:"+module("LOGIN")+"  crammd5:"+module("CRAM-MD5"))
	env := newTestEnv(t, HandlerOpts{Config: cfg}) // Probe nil: the real prober
	target := url.QueryEscape(srv.Addr())

	for _, mech := range []string{"PLAIN", "LOGIN", "CRAM-MD5"} {
		moduleName := strings.ToLower(strings.ReplaceAll(mech, "-", ""))
		t.Run(mech+" accepted", func(t *testing.T) {
			srv.SetPassword(password)
			rec := env.get(t, env.handler, "module="+moduleName+"&target="+target, nil)
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			body := rec.Body.String()
			for _, want := range []string{
				"probe_success 1\n",
				"probe_smtp_tls 1\n",
				"probe_smtp_auth_success 1\n",
				"probe_ip_protocol 4\n",
				`probe_smtp_auth_mechanism_used_info{mechanism="` + mech + `"} 1`,
				`probe_smtp_status_code{phase="auth"} 235`,
				`probe_smtp_status_code{phase="starttls"} 220`,
				`probe_smtp_extension_info{extension="STARTTLS",phase="ehlo"} 1`,
				`probe_smtp_extension_info{extension="AUTH",phase="ehlo_tls"} 1`,
				"probe_smtp_size_limit_bytes 1.048576e+07\n",
				"probe_ssl_earliest_cert_expiry ",
				"probe_ssl_last_chain_expiry_timestamp_seconds ",
				"probe_tls_version_info{version=",
			} {
				if !strings.Contains(body, want) {
					t.Errorf("response lacks %q:\n%s", want, body)
				}
			}
		})

		t.Run(mech+" rejected", func(t *testing.T) {
			// The server now expects another password, so the configured
			// one goes over the wire and is refused.
			srv.SetPassword("something-else-entirely")
			rec := env.get(t, env.handler, "module="+moduleName+"&target="+target+"&debug=true", nil)
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			out := rec.Body.String()
			for _, want := range []string{
				"probe_success 0\n",
				`probe_smtp_failure_info{phase="auth",reason="auth_rejected"} 1`,
				`probe_smtp_status_code{phase="auth"} 535`,
				"Logs for the probe:", "Metrics that would have been returned:", "Module configuration:",
				"password: <secret>",
				"C: AUTH " + mech,
			} {
				if !strings.Contains(out, want) {
					t.Errorf("debug output lacks %q:\n%s", want, out)
				}
			}
		})
	}
	if !strings.Contains(env.mainLog.String(), "reason=auth_rejected") {
		t.Errorf("main log lacks the failures:\n%s", env.mainLog)
	}
}

// TestRealProbeExpiredCertificate checks, end to end, that a server with an
// expired certificate fails the probe in starttls and still reports the
// certificate's expiry, in the past.
func TestRealProbeExpiredCertificate(t *testing.T) {
	certs := smtptest.Certs()
	srv := smtptest.NewServer(t, smtptest.Options{TLS: smtptest.StartTLS, Cert: &certs.Expired})
	cfg := newTestConfig(t, `
modules:
  starttls:
    timeout: 5s
    smtp:
      tls: starttls
      preferred_ip_protocol: ip4
      tls_config:
        ca_file: `+certs.WriteCAFile(t)+`
`)
	env := newTestEnv(t, HandlerOpts{Config: cfg})
	rec := env.get(t, env.handler, "module=starttls&target="+url.QueryEscape(srv.Addr()), nil)
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	body := rec.Body.String()
	for _, want := range []string{
		"probe_success 0\n",
		"probe_smtp_tls 0\n",
		`probe_smtp_failure_info{phase="starttls",reason="certificate"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("response lacks %q:\n%s", want, body)
		}
	}
	m := regexp.MustCompile(`(?m)^probe_ssl_earliest_cert_expiry (\S+)$`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no probe_ssl_earliest_cert_expiry:\n%s", body)
	}
	expiry, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	if want := float64(certs.Expired.Leaf.NotAfter.Unix()); expiry != want {
		t.Errorf("earliest expiry %v, want the expired certificate's %v", expiry, want)
	}
	if expiry >= float64(time.Now().Unix()) {
		t.Errorf("expiry %v is not in the past", expiry)
	}
}
