package main

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"sync"
	"testing"

	"github.com/smtp-exporter/smtp_exporter/collector"
	"github.com/smtp-exporter/smtp_exporter/config"
	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

// BenchmarkGCPercent runs STARTTLS probes that log in with PLAIN through
// /probe over real HTTP, against an in-process server, one at a time and
// eight at once, with the garbage collector at Go's default target (100)
// and at the exporter's (defaultGCPercent). It reports the collections
// and the garbage collector's CPU per probe (runtime/metrics' estimate, the
// in-process server's garbage included) and the heap goal at the end: what
// the target trades.
func BenchmarkGCPercent(b *testing.B) {
	// A module for each of the probes at once: the exporter shares
	// concurrent probes of one module and target.
	const modules = 8
	ca := smtptest.Certs().WriteCAFile(b)
	for _, percent := range []int{100, defaultGCPercent} {
		for _, concurrency := range []int{1, modules} {
			b.Run(fmt.Sprintf("GOGC=%d/c=%d", percent, concurrency), func(b *testing.B) {
				defer debug.SetGCPercent(debug.SetGCPercent(percent))
				probe := gcBenchExporter(b, ca, modules)
				client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: concurrency}}
				defer client.CloseIdleConnections()
				for i := range 100 { // fill the history, as a running exporter's is
					probe(client, i%modules)
				}
				runtime.GC()
				before := gcFigures()
				b.ResetTimer()
				probes := make(chan struct{})
				var wg sync.WaitGroup
				for module := range concurrency {
					wg.Go(func() {
						for range probes {
							probe(client, module)
						}
					})
				}
				for b.Loop() {
					probes <- struct{}{}
				}
				close(probes)
				wg.Wait()
				b.StopTimer()
				after := gcFigures()
				n := float64(b.N)
				b.ReportMetric((after.cycles-before.cycles)/n*1000, "GCs/1k-probes")
				b.ReportMetric((after.cpu-before.cpu)/n*1e6, "GC-µs/probe")
				b.ReportMetric(after.goal/1024, "heap-goal-KiB")
				b.ReportMetric(after.live/1024, "heap-live-KiB")
			})
		}
	}
}

// gcBenchExporter serves /probe over real HTTP with modules submission0 to
// submission(modules-1), each a STARTTLS probe that logs in with PLAIN to
// one in-process server. It is made afresh for each measurement, since the
// test server keeps every line it reads (some 500 bytes a probe).
func gcBenchExporter(b *testing.B, caFile string, modules int) (probe func(client *http.Client, module int)) {
	const user, password = "probe@example.net", "bench-password"
	srv := smtptest.NewServer(b, smtptest.Options{TLS: smtptest.StartTLS, Username: user, Password: password, AuthRequiresTLS: true})
	path := filepath.Join(b.TempDir(), "smtp_exporter.yml")
	yaml := "modules:\n"
	for i := range modules {
		yaml += fmt.Sprintf(`  submission%d:
    timeout: 10s
    smtp:
      tls: starttls
      preferred_ip_protocol: ip4
      tls_config: {ca_file: %q}
      auth: {mechanism: PLAIN, username: %q, password: %q}
      allowed_targets: ["127.0.0.1"]
`, i, caFile, user, password)
	}
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		b.Fatal(err)
	}
	sc := config.NewSafeConfig(nil)
	if err := sc.Reload(path); err != nil {
		b.Fatal(err)
	}
	web := httptest.NewServer(collector.NewHandler(collector.HandlerOpts{Config: sc, History: collector.NewHistory(100)}))
	b.Cleanup(web.Close)
	return func(client *http.Client, module int) {
		resp, err := client.Get(fmt.Sprintf("%s/probe?module=submission%d&target=%s", web.URL, module, url.QueryEscape(srv.Addr())))
		if err != nil {
			b.Error(err)
			return
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || !strings.Contains(string(body), "\nprobe_success 1\n") {
			b.Errorf("probe failed (%v):\n%s", err, body)
		}
	}
}

type gcFigure struct{ cycles, cpu, goal, live float64 }

func gcFigures() gcFigure {
	samples := []metrics.Sample{
		{Name: "/gc/cycles/total:gc-cycles"},
		{Name: "/cpu/classes/gc/total:cpu-seconds"},
		{Name: "/gc/heap/goal:bytes"},
		{Name: "/gc/heap/live:bytes"},
	}
	metrics.Read(samples)
	return gcFigure{
		cycles: float64(samples[0].Value.Uint64()),
		cpu:    samples[1].Value.Float64(),
		goal:   float64(samples[2].Value.Uint64()),
		live:   float64(samples[3].Value.Uint64()),
	}
}
