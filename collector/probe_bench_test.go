package collector

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/smtp-exporter/smtp_exporter/config"
	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
	"github.com/smtp-exporter/smtp_exporter/prober"
)

// benchResult is a successful STARTTLS + AUTH probe as the prober returns
// it: the phases, two EHLO replies, a verified chain and a transcript.
func benchResult(b *testing.B) *prober.Result {
	b.Helper()
	certs := smtptest.Certs()
	leaf, err := x509.ParseCertificate(certs.Server.Certificate[0])
	if err != nil {
		b.Fatal(err)
	}
	r := successResult(&tlsFixture{
		session: &prober.TLSSession{
			Version:         tls.VersionTLS13,
			CipherSuite:     tls.TLS_AES_128_GCM_SHA256,
			Verified:        true,
			LastChainExpiry: leaf.NotAfter,
		},
		certs: []prober.Certificate{certificateSummary(leaf)},
	})
	for i, line := range []string{
		"220 mx.example.net ESMTP", "EHLO localhost", "250-mx.example.net", "250-PIPELINING", "250-SIZE 10240000",
		"250-STARTTLS", "250 8BITMIME", "STARTTLS", "220 2.0.0 Ready to start TLS", "EHLO localhost",
		"250-mx.example.net", "250-PIPELINING", "250-SIZE 10240000", "250-AUTH PLAIN LOGIN", "250 8BITMIME",
		"AUTH PLAIN " + prober.Redacted, "235 2.7.0 Authentication successful", "QUIT", "221 2.0.0 Bye",
	} {
		dir := prober.Server
		if !strings.HasPrefix(line, "2") {
			dir = prober.Client
		}
		r.Transcript = append(r.Transcript, prober.TranscriptLine{At: time.Duration(i) * time.Millisecond, Dir: dir, Text: line})
	}
	return r
}

func benchConfig(b *testing.B, modules string) *config.SafeConfig {
	b.Helper()
	path := filepath.Join(b.TempDir(), "smtp_exporter.yml")
	if err := os.WriteFile(path, []byte("modules:\n"+modules), 0o600); err != nil {
		b.Fatal(err)
	}
	sc := config.NewSafeConfig(nil)
	if err := sc.Reload(path); err != nil {
		b.Fatal(err)
	}
	return sc
}

// BenchmarkRenderMetrics writes the text exposition of a Result: "direct"
// as the handler does it, "registry" through a registry made for it, the
// way it was done before and is still done for protobuf.
func BenchmarkRenderMetrics(b *testing.B) {
	r := benchResult(b)
	b.Run("direct", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := renderText(newProbeCollector(r, 10*time.Second, nil)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("registry", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			registry := prometheus.NewRegistry()
			registry.MustRegister(New(r, 10*time.Second))
			if _, err := exposition(registry); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkProbeHandler serves /probe requests. "canned result" measures
// everything the exporter does around a probe (parameters, gate, probe
// log, history entry, metrics for the history and for the response) with a
// prober that returns at once; "1000 modules" does the same with a thousand
// modules configured, which must cost the same; "session" runs the real
// prober against an in-process STARTTLS server with AUTH PLAIN, "session
// without auth" the same module without its auth block, "session,
// password_file" with the password in a file.
func BenchmarkProbeHandler(b *testing.B) {
	module := func(name, yaml string) string { return "  " + name + ":\n" + yaml }
	canned := `    timeout: 10s
    smtp:
      tls: starttls
      auth: {mechanism: PLAIN, username: probe@example.net, password: bench-password}
      allowed_targets: ["127.0.0.1"]
`
	serve := func(b *testing.B, h *Handler, query string) {
		b.Helper()
		req := httptest.NewRequest(http.MethodGet, "/probe?"+query, nil)
		req.Header.Set("X-Prometheus-Scrape-Timeout-Seconds", "10")
		b.ReportAllocs()
		for b.Loop() {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "\nprobe_success 1\n") {
				b.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
		}
	}
	result := benchResult(b)
	fake := func(ctx context.Context, target prober.Target, module *config.Module, probeID string, logger *slog.Logger) *prober.Result {
		logger.Debug("Phase done", "phase", "connect")
		return result
	}
	query := "module=submission&target=127.0.0.1:587"
	b.Run("canned result", func(b *testing.B) {
		h := NewHandler(HandlerOpts{Config: benchConfig(b, module("submission", canned)), Probe: fake, History: NewHistory(100)})
		serve(b, h, query)
	})
	b.Run("canned result, 1000 modules", func(b *testing.B) {
		var modules strings.Builder
		for i := range 999 {
			modules.WriteString(module(fmt.Sprintf("other_%d", i), canned))
		}
		modules.WriteString(module("submission", canned))
		h := NewHandler(HandlerOpts{Config: benchConfig(b, modules.String()), Probe: fake, History: NewHistory(100)})
		serve(b, h, query)
	})
	for _, tc := range []struct{ name, auth string }{
		{"session without auth", ""},
		{"session", "password: %q"},
		{"session, password_file", "password_file: %q"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			const user, password = "probe@example.net", "bench-password"
			srv := smtptest.NewServer(b, smtptest.Options{TLS: smtptest.StartTLS, Username: user, Password: password, AuthRequiresTLS: true})
			yaml := fmt.Sprintf(`    timeout: 10s
    smtp:
      tls: starttls
      preferred_ip_protocol: ip4
      tls_config: {ca_file: %q}
`, smtptest.Certs().WriteCAFile(b))
			if tc.auth != "" {
				secret := password
				if strings.HasPrefix(tc.auth, "password_file") {
					secret = filepath.Join(b.TempDir(), "password")
					if err := os.WriteFile(secret, []byte(password+"\n"), 0o600); err != nil {
						b.Fatal(err)
					}
				}
				yaml += fmt.Sprintf(`      auth: {mechanism: PLAIN, username: %q, `+tc.auth+`}
      allowed_targets: ["127.0.0.1"]
`, user, secret)
			}
			h := NewHandler(HandlerOpts{Config: benchConfig(b, module("submission", yaml)), History: NewHistory(100)})
			serve(b, h, "module=submission&target="+url.QueryEscape(srv.Addr()))
		})
	}
}
