package collector

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/smtp-exporter/smtp_exporter/config"
	"github.com/smtp-exporter/smtp_exporter/prober"
)

// What Prometheus 2.x and 3.x send, and what a client asking for protobuf
// sends.
const (
	acceptPrometheus2 = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
	acceptProtobuf    = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3"
)

// promhttpBody is what promhttp serves for a registry holding the metrics
// of result: the reference the handler's own text response must match.
func promhttpBody(t *testing.T, r *prober.Result, accept string) (string, string) {
	t.Helper()
	registry := prometheus.NewRegistry()
	registry.MustRegister(New(r, 8e9))
	req, err := http.NewRequest(http.MethodGet, "/probe", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", accept)
	rec := &recorder{header: http.Header{}}
	promhttp.HandlerFor(registry, promhttp.HandlerOpts{DisableCompression: true}).ServeHTTP(rec, req)
	return rec.body.String(), rec.header.Get("Content-Type")
}

type recorder struct {
	header http.Header
	body   bytes.Buffer
	code   int
}

func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) Write(b []byte) (int, error) { return r.body.Write(b) }
func (r *recorder) WriteHeader(code int)        { r.code = code }

func TestTextResponseIsWhatPromhttpServes(t *testing.T) {
	for _, tc := range []struct {
		name   string
		result func() *prober.Result
	}{
		{"success", func() *prober.Result { return successResult(newTLSFixture(t)) }},
		{"auth failed", func() *prober.Result { return authFailedResult(newTLSFixture(t)) }},
		{"dns failed", dnsFailedResult},
		{"canary", canaryResult},
	} {
		t.Run(tc.name, func(t *testing.T) {
			result := tc.result()
			fake := &fakeProber{result: func() *prober.Result { return result }}
			env := newTestEnv(t, HandlerOpts{Probe: fake.probe})
			for _, accept := range []string{acceptPrometheus2, "", "text/plain"} {
				rec := env.get(t, env.handler, "module=submission&target=mail.example.net", http.Header{"Accept": {accept}})
				want, wantType := promhttpBody(t, result, accept)
				if got := rec.Body.String(); got != want {
					t.Errorf("Accept %q: body differs from promhttp's:\n%s\nwant:\n%s", accept, got, want)
				}
				if got := rec.Header().Get("Content-Type"); got != wantType {
					t.Errorf("Accept %q: Content-Type %q, promhttp says %q", accept, got, wantType)
				}
				if entries := env.history.List(); len(entries) == 0 || entries[0].Metrics != rec.Body.String() {
					t.Errorf("Accept %q: the response is not the exposition the history keeps", accept)
				}
			}
		})
	}
}

func TestProtobufResponseStillServed(t *testing.T) {
	result := successResult(newTLSFixture(t))
	fake := &fakeProber{result: func() *prober.Result { return result }}
	env := newTestEnv(t, HandlerOpts{Probe: fake.probe})
	rec := env.get(t, env.handler, "module=submission&target=mail.example.net", http.Header{"Accept": {acceptProtobuf}})
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/vnd.google.protobuf") {
		t.Fatalf("Content-Type %q, want protobuf", ct)
	}
	want, _ := promhttpBody(t, result, acceptProtobuf)
	if rec.Body.String() != want {
		t.Errorf("protobuf body differs from promhttp's (%d bytes, want %d)", rec.Body.Len(), len(want))
	}
}

func TestModuleTextFollowsReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "smtp_exporter.yml")
	write := func(timeout string) {
		yaml := "modules:\n  m:\n    timeout: " + timeout + "\n    smtp: {tls: none}\n  other:\n    smtp: {tls: starttls}\n"
		if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("7s")
	sc := config.NewSafeConfig(nil)
	if err := sc.Reload(path); err != nil {
		t.Fatal(err)
	}
	var cache moduleTexts
	module, first, ok := cache.lookup(sc, "m")
	if !ok || module.Timeout.String() != "7s" || !strings.Contains(first.yaml, "timeout: 7s") {
		t.Fatalf("lookup: %v %+v %q", ok, module, first.yaml)
	}
	if _, again, _ := cache.lookup(sc, "m"); again != first {
		t.Error("a second lookup of an unchanged configuration gave another text")
	}
	if _, otherText, _ := cache.lookup(sc, "other"); otherText.fingerprint == first.fingerprint {
		t.Error("two different modules share a fingerprint")
	}
	if _, _, ok := cache.lookup(sc, "missing"); ok {
		t.Error("lookup found a module that is not configured")
	}

	write("9s")
	if err := sc.Reload(path); err != nil {
		t.Fatal(err)
	}
	_, reloaded, _ := cache.lookup(sc, "m")
	if reloaded.fingerprint == first.fingerprint || !strings.Contains(reloaded.yaml, "timeout: 9s") {
		t.Errorf("after a reload that changed the module, the text is still the old one:\n%s", reloaded.yaml)
	}
	if len(cache.modules) > 2 {
		t.Errorf("the cache keeps %d texts for a configuration of 2 modules", len(cache.modules))
	}
}

// A scraper that filters by metric name gets promhttp's filtered answer.
func TestNameFilterStillServed(t *testing.T) {
	result := successResult(newTLSFixture(t))
	fake := &fakeProber{result: func() *prober.Result { return result }}
	env := newTestEnv(t, HandlerOpts{Probe: fake.probe})
	rec := env.get(t, env.handler, "module=submission&target=mail.example.net&name[]=probe_success", http.Header{"Accept": {acceptPrometheus2}})
	body := rec.Body.String()
	if !strings.Contains(body, "\nprobe_success 1\n") || strings.Contains(body, "probe_smtp_") {
		t.Errorf("name[]=probe_success answered with:\n%s", body)
	}
}
