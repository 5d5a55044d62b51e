package collector

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

// Load figures: how many probes run at once against a server that holds
// every connection silent, and how many run against a fast one.
const (
	loadProbes = 1000
	// loadTimeout is the silent probes' timeout: long enough that however
	// slowly a loaded machine starts them, they are all in flight together;
	// the server ends them when the test has seen that.
	loadTimeout     = time.Minute
	loadFastProbes  = 2000
	loadFastWorkers = 50
	// loadRejected requests are sent over the limit.
	loadRejected = 20
	// loadFDsPerProbe: the HTTP request's two ends and the SMTP
	// connection's two ends all live in this process.
	loadFDsPerProbe = 4
)

var probeDurationPattern = regexp.MustCompile(`(?m)^probe_duration_seconds (\S+)$`)

// raceDetector is set when the race detector is on (race_test.go). It
// slows goroutines five to ten times, so the load test then runs a fifth of
// the probes with five times the latency budgets: what it checks is that
// nothing races, hangs or leaks under concurrency.
var raceDetector = false

// loadScale returns how many probes to run and how much slack to give.
func loadScale() (divide int, slack time.Duration) {
	if raceDetector {
		return 5, 5
	}
	return 1, 1
}

// raiseFDLimit lifts the soft limit on open files as far as needed and
// allowed, and returns how many probes fit under it.
func raiseFDLimit(t *testing.T, probes int) int {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Logf("getrlimit: %v; assuming the limit suffices", err)
		return probes
	}
	need := uint64(probes*loadFDsPerProbe + 256)
	if lim.Cur < need {
		lim.Cur = min(need, lim.Max)
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			t.Logf("setrlimit: %v", err)
			if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
				return probes / 2
			}
		}
	}
	if fit := int((lim.Cur - 256) / loadFDsPerProbe); fit < probes {
		t.Logf("open files limited to %d: running %d probes instead of %d", lim.Cur, fit, probes)
		return fit
	}
	return probes
}

// TestLoad runs loadProbes probes at once against a server that never
// says a word, with --probe.max-concurrent at loadProbes: once all are in
// flight, requests over the limit get 503 at once and /metrics and
// /-/healthy answer within a second; then the server closes every
// connection, every probe reports it, and afterwards goroutines and heap
// return to where they were. Then it measures throughput against a fast
// server. Nothing waits on a clock: the probes end when the server closes
// them, not at a timeout a loaded machine could reach before the last one
// started. The whole test is bounded: every probe has a one-minute timeout
// and every HTTP request one of two minutes.
func TestLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("load test: skipped in -short mode")
	}
	divide, slack := loadScale()
	probes := raiseFDLimit(t, loadProbes/divide)
	fastProbes := loadFastProbes / divide

	// The silent server holds every connection until release is closed.
	release := make(chan struct{})
	silent := smtptest.NewScripted(t, func(c *smtptest.Conn) { <-release })
	var releaseOnce sync.Once
	end := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(end) // before the server's own cleanup, which waits for its handlers
	fast := smtptest.NewServer(t, smtptest.Options{})
	// Requests for one module and target share a single session, so every
	// request gets a module of its own: slow0, slow1, ... for the silent
	// server, over0, ... for the requests over the limit, fast0, ... for
	// the workers against the fast server.
	var yaml strings.Builder
	yaml.WriteString("modules:\n")
	for prefix, n := range map[string]int{"slow": probes, "over": loadRejected, "fast": loadFastWorkers} {
		for i := range n {
			fmt.Fprintf(&yaml, "  %s%d:\n    timeout: %s\n    smtp:\n      tls: none\n", prefix, i, loadTimeout)
		}
	}
	cfg := newTestConfig(t, yaml.String())

	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	goroutinesBefore := runtime.NumGoroutine()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector())
	handler := NewHandler(HandlerOpts{Config: cfg, Registerer: reg, MaxConcurrent: probes, History: NewHistory(10)})
	mux := http.NewServeMux()
	mux.Handle("/probe", handler)
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.Handle("/-/healthy", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "Healthy\n") }))
	ts := httptest.NewServer(mux)
	transport := &http.Transport{MaxIdleConns: probes + 64, MaxIdleConnsPerHost: probes + 64}
	client := &http.Client{Transport: transport, Timeout: 2 * time.Minute}

	type outcome struct {
		status int
		body   string
		took   time.Duration
		err    error
	}
	get := func(path string) outcome {
		start := time.Now()
		resp, err := client.Get(ts.URL + path)
		if err != nil {
			return outcome{err: err, took: time.Since(start)}
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return outcome{status: resp.StatusCode, body: string(body), took: time.Since(start), err: err}
	}

	// The silent load.
	slowQuery := func(prefix string, i int) string {
		return fmt.Sprintf("/probe?module=%s%d&target=%s", prefix, i, url.QueryEscape(silent.Addr()))
	}
	results := make([]outcome, probes)
	var wg sync.WaitGroup
	loadStart := time.Now()
	for i := range probes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = get(slowQuery("slow", i))
		}()
	}
	full := time.Now().Add(loadTimeout / 2)
	for testutil.ToFloat64(handler.gate.m.inFlight) < float64(probes) {
		if time.Now().After(full) {
			t.Fatalf("only %v of %d probes in flight after %v", testutil.ToFloat64(handler.gate.m.inFlight), probes, loadTimeout/2)
		}
		time.Sleep(5 * time.Millisecond)
	}
	startedIn := time.Since(loadStart)
	peakGoroutines := runtime.NumGoroutine()

	// Over the limit: 503 at once.
	var slowestRejection time.Duration
	for i := range loadRejected {
		o := get(slowQuery("over", i))
		if o.err != nil || o.status != http.StatusServiceUnavailable {
			t.Errorf("probe over the limit: status %d, %v; want 503", o.status, o.err)
		}
		slowestRejection = max(slowestRejection, o.took)
	}
	if slowestRejection > slack*time.Second {
		t.Errorf("a rejection took %v; it must not wait", slowestRejection)
	}

	// The exporter's own endpoints stay responsive while the probes wait.
	var slowestMetrics, slowestHealthy time.Duration
	for range 20 {
		for path, slowest := range map[string]*time.Duration{"/metrics": &slowestMetrics, "/-/healthy": &slowestHealthy} {
			o := get(path)
			if o.err != nil || o.status != http.StatusOK {
				t.Fatalf("GET %s during the load: status %d, %v", path, o.status, o.err)
			}
			*slowest = max(*slowest, o.took)
		}
	}
	if n := testutil.ToFloat64(handler.gate.m.inFlight); n != float64(probes) {
		t.Errorf("%v probes in flight while the server holds them all, want %d", n, probes)
	}
	end()
	wg.Wait()
	loadTook := time.Since(loadStart)
	for _, path := range []string{"/metrics", "/-/healthy"} {
		if slowest := map[string]time.Duration{"/metrics": slowestMetrics, "/-/healthy": slowestHealthy}[path]; slowest > slack*time.Second {
			t.Errorf("GET %s took up to %v during the load", path, slowest)
		}
	}
	var slowestProbe, slowestResponse time.Duration
	for i, o := range results {
		if o.err != nil || o.status != http.StatusOK {
			t.Fatalf("probe %d: status %d, %v", i, o.status, o.err)
		}
		if !strings.Contains(o.body, `probe_smtp_failure_info{phase="banner",reason="connection_closed"} 1`) {
			t.Fatalf("probe %d did not end in the banner when the server closed:\n%s", i, o.body)
		}
		m := probeDurationPattern.FindStringSubmatch(o.body)
		if m == nil {
			t.Fatalf("probe %d: no probe_duration_seconds:\n%s", i, o.body)
		}
		took, err := time.ParseDuration(m[1] + "s")
		if err != nil {
			t.Fatal(err)
		}
		slowestProbe = max(slowestProbe, took)
		slowestResponse = max(slowestResponse, o.took)
	}
	results = nil

	// Throughput against a server that answers at once.
	jobs := make(chan struct{})
	var failed sync.Map
	fastStart := time.Now()
	for w := range loadFastWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			query := fmt.Sprintf("/probe?module=fast%d&target=%s", w, url.QueryEscape(fast.Addr()))
			for range jobs {
				if o := get(query); o.err != nil || !strings.Contains(o.body, "\nprobe_success 1\n") {
					failed.Store(o.status, o.err)
				}
			}
		}()
	}
	for range fastProbes {
		jobs <- struct{}{}
	}
	close(jobs)
	wg.Wait()
	fastTook := time.Since(fastStart)
	failed.Range(func(status, err any) bool {
		t.Errorf("fast probe failed: status %v, %v", status, err)
		return true
	})

	// Everything is released afterwards.
	transport.CloseIdleConnections()
	ts.Close()
	silent.Close()
	fast.Close()
	var goroutinesAfter int
	settle := time.Now().Add(10 * time.Second)
	for {
		goroutinesAfter = runtime.NumGoroutine()
		if goroutinesAfter <= goroutinesBefore+5 || time.Now().After(settle) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if goroutinesAfter > goroutinesBefore+5 {
		t.Errorf("%d goroutines after the load, %d before", goroutinesAfter, goroutinesBefore)
	}
	var after runtime.MemStats
	// Twice: the first collection only moves sync.Pool caches (net/http's
	// buffers) aside, the second frees them.
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grown := int64(after.HeapAlloc) - int64(before.HeapAlloc); grown > 8<<20 {
		t.Errorf("heap grew by %d MiB over the load", grown>>20)
	}

	t.Logf("%d silent probes all in flight after %v, ended by the server after %v, peak %d goroutines; slowest: probe %v, response %v, rejection %v, /metrics %v, /-/healthy %v",
		probes, startedIn.Round(time.Millisecond), loadTook.Round(time.Millisecond), peakGoroutines,
		slowestProbe.Round(time.Millisecond), slowestResponse.Round(time.Millisecond), slowestRejection.Round(time.Millisecond),
		slowestMetrics.Round(time.Millisecond), slowestHealthy.Round(time.Millisecond))
	t.Logf("%d fast probes by %d clients in %v: %.0f probes/s", fastProbes, loadFastWorkers,
		fastTook.Round(time.Millisecond), float64(fastProbes)/fastTook.Seconds())
	t.Logf("goroutines %d before, %d after; heap %.1f MiB before, %.1f MiB after GC",
		goroutinesBefore, goroutinesAfter, float64(before.HeapAlloc)/(1<<20), float64(after.HeapAlloc)/(1<<20))
}
