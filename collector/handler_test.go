package collector

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/smtp-exporter/smtp_exporter/config"
	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
	"github.com/smtp-exporter/smtp_exporter/prober"
)

// testPassword must never appear in any output.
const testPassword = "hunter2-Sup3r-s3cret"

const testConfigYAML = `
modules:
  submission:
    timeout: 8s
    # Most tests probe one target again and again with a canned result:
    # the hold after a rejection has tests of its own.
    auth_failure_backoff: 0s
    smtp:
      tls: starttls
      auth:
        username: probe@example.net
        password: "` + testPassword + `"
      allowed_targets: ["*"]
  relay:
    timeout: 5s
    smtp:
      tls: none
`

func newTestConfig(t *testing.T, yaml string) *config.SafeConfig {
	t.Helper()
	path := filepath.Join(t.TempDir(), "smtp_exporter.yml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	sc := config.NewSafeConfig(nil)
	if err := sc.Reload(path); err != nil {
		t.Fatal(err)
	}
	return sc
}

// probeCall is what a fake prober was called with.
type probeCall struct {
	target   string
	module   config.Module
	probeID  string
	deadline time.Time
	calledAt time.Time
}

// fakeProber returns a canned Result and records its calls.
type fakeProber struct {
	mu     sync.Mutex
	calls  []probeCall
	result func() *prober.Result
}

func (f *fakeProber) probe(ctx context.Context, target prober.Target, module *config.Module, probeID string, logger *slog.Logger) *prober.Result {
	deadline, _ := ctx.Deadline()
	f.mu.Lock()
	f.calls = append(f.calls, probeCall{target: target.Address(), module: *module, probeID: probeID, deadline: deadline, calledAt: time.Now()})
	f.mu.Unlock()
	logger.Debug("Dialing", "addr", "127.0.0.1:587")
	return f.result()
}

func (f *fakeProber) lastCall(t *testing.T) probeCall {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.calls) == 0 {
		t.Fatal("the prober was not called")
	}
	return f.calls[len(f.calls)-1]
}

// resolveNames stands in for prober.Resolve where the prober is a fake:
// IP addresses are resolved as the exporter does, host names stand for
// themselves, so that these tests send no DNS queries.
func resolveNames(ctx context.Context, target string, s *config.SMTPProbe) prober.Target {
	host, port := target, s.EffectivePort()
	if h, p, err := net.SplitHostPort(target); err == nil {
		n, err := strconv.Atoi(p)
		if err != nil {
			return prober.Resolve(ctx, target, s)
		}
		host, port = h, n
	}
	if _, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return prober.Resolve(ctx, target, s)
	}
	return prober.Target{Host: host, Port: port}
}

type testEnv struct {
	handler *Handler
	pages   *Pages
	history *History
	reg     *prometheus.Registry
	mainLog *smtptest.LogBuffer
}

func newTestEnv(t *testing.T, opts HandlerOpts) *testEnv {
	t.Helper()
	env := &testEnv{reg: prometheus.NewPedanticRegistry(), mainLog: &smtptest.LogBuffer{}}
	if opts.Config == nil {
		opts.Config = newTestConfig(t, testConfigYAML)
	}
	if opts.History == nil {
		opts.History = NewHistory(10)
	}
	if opts.Probe != nil && opts.Resolve == nil {
		opts.Resolve = resolveNames
	}
	opts.Logger = slog.New(slog.NewTextHandler(env.mainLog, &slog.HandlerOptions{Level: slog.LevelInfo}))
	opts.Registerer = env.reg
	env.history = opts.History
	env.handler = NewHandler(opts)
	env.pages = NewPages(opts.Config, opts.History, opts.Logger)
	return env
}

func (env *testEnv) get(t *testing.T, h http.Handler, rawQuery string, header http.Header) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, "/probe?"+rawQuery, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func TestProbeBadRequests(t *testing.T) {
	fake := &fakeProber{result: func() *prober.Result { return successResult(nil) }}
	env := newTestEnv(t, HandlerOpts{Probe: fake.probe})
	for _, tc := range []struct {
		name, query, body string
	}{
		{"missing target", "module=submission", "target parameter is missing"},
		{"empty target", "target=&module=submission", "target parameter is missing"},
		{"repeated target", "target=a.example&target=b.example&module=submission", "target parameter is given 2 times"},
		{"missing module", "target=a.example", "module parameter is missing"},
		{"repeated module", "target=a.example&module=relay&module=submission", "module parameter is given 2 times"},
		{"unknown module", "target=a.example&module=nope", `unknown module "nope"`},
		{"over-long target", "module=relay&target=" + strings.Repeat("a", maxTargetLen+1), "longer than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := env.get(t, env.handler, tc.query, nil)
			if rec.Code != http.StatusBadRequest {
				t.Errorf("status %d, want 400", rec.Code)
			}
			if !strings.Contains(rec.Body.String(), tc.body) {
				t.Errorf("body %q does not say %q", rec.Body.String(), tc.body)
			}
			if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
				t.Errorf("content type %q", ct)
			}
		})
	}
	if n := len(fake.calls); n != 0 {
		t.Errorf("prober called %d times for bad requests", n)
	}
	if v := testutil.ToFloat64(env.handler.moduleUnknown); v != 1 {
		t.Errorf("module_unknown_total = %v, want 1", v)
	}
	// The counter is on the exporter's registry, under its documented name.
	if err := testutil.GatherAndCompare(env.reg, strings.NewReader(`
# HELP smtp_exporter_module_unknown_total Probe requests that named a module not in the configuration.
# TYPE smtp_exporter_module_unknown_total counter
smtp_exporter_module_unknown_total 1
`), "smtp_exporter_module_unknown_total"); err != nil {
		t.Error(err)
	}
}

func TestProbeSuccess(t *testing.T) {
	fake := &fakeProber{result: func() *prober.Result { return successResult(nil) }}
	env := newTestEnv(t, HandlerOpts{Probe: fake.probe})
	rec := env.get(t, env.handler, "target=mail.example.net:587&module=submission", nil)
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	body := rec.Body.String()
	for _, want := range []string{"probe_success 1", "probe_timeout_seconds 8", `probe_smtp_status_code{phase="auth"} 235`} {
		if !strings.Contains(body, want) {
			t.Errorf("response lacks %q", want)
		}
	}
	// Exporter-level metrics never leak into a probe response.
	if strings.Contains(body, "smtp_exporter_") {
		t.Error("probe response contains exporter metrics")
	}
	call := fake.lastCall(t)
	if call.target != "mail.example.net:587" {
		t.Errorf("prober got target %q", call.target)
	}
	if call.module.SMTP.Auth == nil || call.module.SMTP.Auth.Username != "probe@example.net" {
		t.Errorf("prober did not get the submission module: %+v", call.module.SMTP)
	}
	if !regexp.MustCompile(`^[0-9a-f]{8}-1$`).MatchString(call.probeID) {
		t.Errorf("probe ID %q is not <process token>-<number>", call.probeID)
	}
	e, ok := env.history.Get(1)
	if !ok || e.ProbeID != call.probeID || !e.Success || e.Target != call.target {
		t.Errorf("history entry %+v does not match the probe", e)
	}
}

func TestFailedProbeIsStill200(t *testing.T) {
	fake := &fakeProber{result: dnsFailedResult}
	env := newTestEnv(t, HandlerOpts{Probe: fake.probe})
	rec := env.get(t, env.handler, "target=nonexistent.example.net&module=submission", nil)
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d, want 200 for a failed probe", rec.Code)
	}
	body := rec.Body.String()
	if !strings.Contains(body, "probe_success 0") || !strings.Contains(body, `probe_smtp_failure_info{phase="setup",reason="dns_failure"} 1`) {
		t.Errorf("failure not reported:\n%s", body)
	}
	// One line in the main log says which target failed and why; the
	// prober's debug lines stay out of an info-level log.
	log := env.mainLog.String()
	if !regexp.MustCompile(`level=WARN msg="Probe failed" module=submission target=nonexistent.example.net probe_id=\S+ duration_seconds=0.03 phase=setup reason=dns_failure err=`).MatchString(log) {
		t.Errorf("main log lacks the failure line:\n%s", log)
	}
	if strings.Contains(log, "Dialing") {
		t.Errorf("probe debug lines reached the info-level main log:\n%s", log)
	}
}

// TestProbeLogLevel checks that the prober's lines reach the main log at the
// configured level.
func TestProbeLogLevel(t *testing.T) {
	fake := &fakeProber{result: func() *prober.Result { return successResult(nil) }}
	env := newTestEnv(t, HandlerOpts{Probe: fake.probe, ProbeLogLevel: slog.LevelInfo})
	env.get(t, env.handler, "target=mail.example.net&module=submission", nil)
	if !regexp.MustCompile(`level=INFO msg=Dialing module=submission target=mail.example.net probe_id=\S+ addr=127.0.0.1:587`).MatchString(env.mainLog.String()) {
		t.Errorf("prober line not forwarded at info:\n%s", env.mainLog)
	}
}

func TestProbeTimeoutFunc(t *testing.T) {
	for _, tc := range []struct {
		name   string
		header string
		offset time.Duration
		module time.Duration
		want   time.Duration
	}{
		{"no header: module timeout", "", 500 * time.Millisecond, 8 * time.Second, 8 * time.Second},
		{"header less offset", "5", 500 * time.Millisecond, 8 * time.Second, 4500 * time.Millisecond},
		{"fractional header", "2.5", 0, 8 * time.Second, 2500 * time.Millisecond},
		{"module caps the header", "30", 500 * time.Millisecond, 8 * time.Second, 8 * time.Second},
		{"module caps exactly", "8.5", 500 * time.Millisecond, 8 * time.Second, 8 * time.Second},
		{"offset eats everything: header alone", "0.5", time.Second, 8 * time.Second, 500 * time.Millisecond},
		{"offset equal to header: header alone", "1", time.Second, 8 * time.Second, time.Second},
		{"huge header does not overflow", "1e300", 500 * time.Millisecond, 8 * time.Second, 8 * time.Second},
		{"no module timeout: default", "", 0, 0, time.Duration(config.DefaultModule.Timeout)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := probeTimeout(tc.header, tc.offset, tc.module)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("timeout %v, want %v", got, tc.want)
			}
		})
	}
	for _, bad := range []string{"abc", "-1", "0", "NaN", "Inf", "5s"} {
		if _, err := probeTimeout(bad, 0, time.Second); err == nil {
			t.Errorf("header %q accepted", bad)
		}
	}
}

// TestProbeDeadline checks the deadline the prober actually gets, and the
// timeout the response reports.
func TestProbeDeadline(t *testing.T) {
	fake := &fakeProber{result: func() *prober.Result { return successResult(nil) }}
	env := newTestEnv(t, HandlerOpts{Probe: fake.probe, TimeoutOffset: 500 * time.Millisecond})
	for _, tc := range []struct {
		header, module string
		want           time.Duration
		reported       string
	}{
		{"", "relay", 5 * time.Second, "probe_timeout_seconds 5\n"},
		{"3", "relay", 2500 * time.Millisecond, "probe_timeout_seconds 2.5\n"},
		{"60", "submission", 8 * time.Second, "probe_timeout_seconds 8\n"},
	} {
		h := http.Header{}
		if tc.header != "" {
			h.Set(scrapeTimeoutHeader, tc.header)
		}
		rec := env.get(t, env.handler, "target=a.example&module="+tc.module, h)
		if rec.Code != http.StatusOK {
			t.Fatalf("status %d", rec.Code)
		}
		call := fake.lastCall(t)
		if got := call.deadline.Sub(call.calledAt); got > tc.want || got < tc.want-time.Second {
			t.Errorf("header %q module %s: deadline %v after the call, want %v", tc.header, tc.module, got, tc.want)
		}
		if !strings.Contains(rec.Body.String(), tc.reported) {
			t.Errorf("response does not report %q", tc.reported)
		}
	}
	h := http.Header{}
	h.Set(scrapeTimeoutHeader, "soon")
	if rec := env.get(t, env.handler, "target=a.example&module=relay", h); rec.Code != http.StatusBadRequest {
		t.Errorf("unparsable header: status %d, want 400", rec.Code)
	}
}

func TestProbeSaturation(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	blocking := func(ctx context.Context, target prober.Target, module *config.Module, probeID string, logger *slog.Logger) *prober.Result {
		entered <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return successResult(nil)
	}
	env := newTestEnv(t, HandlerOpts{Probe: blocking, MaxConcurrent: 1})

	first := make(chan int, 1)
	go func() {
		first <- env.get(t, env.handler, "target=a.example&module=relay", nil).Code
	}()
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("first probe did not start")
	}
	if v := testutil.ToFloat64(env.handler.gate.m.inFlight); v != 1 {
		t.Errorf("in flight = %v, want 1", v)
	}
	// A request for the same module and address waits for that probe: it
	// takes no slot and is not a probe in flight.
	waiting := make(chan struct{})
	env.handler.gate.waited = func() { close(waiting) }
	joined := make(chan string, 1)
	go func() {
		joined <- env.get(t, env.handler, "target=A.example&module=relay", nil).Body.String()
	}()
	<-waiting
	if v := testutil.ToFloat64(env.handler.gate.m.inFlight); v != 1 {
		t.Errorf("in flight with a waiting request = %v, want 1", v)
	}

	start := time.Now()
	rec := env.get(t, env.handler, "target=b.example&module=relay", nil)
	if rec.Code != http.StatusServiceUnavailable {
		t.Errorf("second probe: status %d, want 503", rec.Code)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("rejection took %v; it must not wait for a slot", d)
	}
	if v := testutil.ToFloat64(env.handler.rejected); v != 1 {
		t.Errorf("rejected = %v, want 1", v)
	}

	close(release)
	if code := <-first; code != http.StatusOK {
		t.Errorf("first probe: status %d", code)
	}
	if body := <-joined; !strings.Contains(body, "probe_success 1\n") {
		t.Errorf("the waiting request got:\n%s", body)
	}
	if v := testutil.ToFloat64(env.handler.gate.m.inFlight); v != 0 {
		t.Errorf("in flight after = %v, want 0", v)
	}
	// The slot is free again.
	go func() { <-entered }()
	if rec := env.get(t, env.handler, "target=c.example&module=relay", nil); rec.Code != http.StatusOK {
		t.Errorf("third probe: status %d, want 200", rec.Code)
	}
}

func TestProberPanicReleasesSlot(t *testing.T) {
	calls := 0
	panicking := func(context.Context, prober.Target, *config.Module, string, *slog.Logger) *prober.Result {
		calls++
		panic("bad reply")
	}
	env := newTestEnv(t, HandlerOpts{Probe: panicking, MaxConcurrent: 1})
	for i := range 2 {
		rec := env.get(t, env.handler, "target=a.example&module=relay", nil)
		if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "probe_success 0") {
			t.Errorf("probe %d after a panic: status %d\n%s", i, rec.Code, rec.Body)
		}
	}
	if calls != 2 {
		t.Errorf("prober called %d times, want 2: the slot was not released", calls)
	}
}

// transcriptResult is a failed AUTH with a transcript as the prober
// records it, credentials already replaced.
func transcriptResult() *prober.Result {
	r := authFailedResult(nil)
	r.Transcript = []prober.TranscriptLine{
		{At: ms(20), Dir: prober.Server, Text: "220 mx.example.net ESMTP"},
		{At: ms(21), Dir: prober.Client, Text: "EHLO probe.example.net"},
		{At: ms(35), Dir: prober.Server, Text: "250-mx.example.net"},
		{At: ms(36), Dir: prober.Client, Text: "AUTH PLAIN <redacted>"},
		{At: ms(136), Dir: prober.Server, Text: "535 5.7.8 Error: authentication failed\x1b[2J"},
	}
	return r
}

func TestDebugOutput(t *testing.T) {
	fake := &fakeProber{result: transcriptResult}
	env := newTestEnv(t, HandlerOpts{Probe: fake.probe})
	rec := env.get(t, env.handler, "target=mail.example.net&module=submission&debug=true", nil)
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d", rec.Code)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "text/plain; charset=utf-8" {
		t.Errorf("content type %q", ct)
	}
	out := rec.Body.String()
	sections := []string{"Logs for the probe:\n", "Metrics that would have been returned:\n", "Module configuration:\n"}
	last := -1
	for _, s := range sections {
		i := strings.Index(out, s)
		if i <= last {
			t.Fatalf("section %q missing or out of order:\n%s", s, out)
		}
		last = i
	}
	for _, want := range []string{
		`msg="Beginning probe" probe_id=`,
		`msg=Dialing addr=127.0.0.1:587`,
		"[   0.036s] C: AUTH PLAIN <redacted>\n",
		// The escape sequence the server sent is shown, not passed on.
		`S: 535 5.7.8 Error: authentication failed\x1b[2J`,
		"probe_success 0\n",
		`probe_smtp_failure_info{phase="auth",reason="auth_rejected"} 1`,
		"password: <secret>",
		"username: probe@example.net",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("debug output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, testPassword) {
		t.Error("debug output contains the password")
	}
	if strings.Contains(out, "\x1b") {
		t.Error("debug output passes on a raw escape character")
	}

	// The same text is kept for /logs.
	logs := env.get(t, http.HandlerFunc(env.pages.Logs), "id=1", nil)
	if logs.Code != http.StatusOK || logs.Body.String() != out {
		t.Errorf("/logs?id=1 (status %d) differs from the debug output", logs.Code)
	}
}

func TestNoSecretAnywhere(t *testing.T) {
	fake := &fakeProber{result: transcriptResult}
	env := newTestEnv(t, HandlerOpts{Probe: fake.probe})
	outputs := map[string]string{
		"probe":       env.get(t, env.handler, "target=mail.example.net&module=submission", nil).Body.String(),
		"probe debug": env.get(t, env.handler, "target=mail.example.net&module=submission&debug=true", nil).Body.String(),
		"logs":        env.get(t, http.HandlerFunc(env.pages.Logs), "id=1", nil).Body.String(),
		"landing":     env.get(t, http.HandlerFunc(env.pages.Landing), "", nil).Body.String(),
		"config":      env.get(t, http.HandlerFunc(env.pages.Config), "", nil).Body.String(),
		"main log":    env.mainLog.String(),
	}
	for name, out := range outputs {
		if out == "" {
			t.Errorf("%s: empty output proves nothing", name)
		}
		if strings.Contains(out, testPassword) {
			t.Errorf("%s contains the password", name)
		}
	}
}

func TestHistoryBounded(t *testing.T) {
	h := NewHistory(3)
	add := func(success bool) uint64 {
		id, probeID := h.newID()
		h.Add(&Entry{ID: id, ProbeID: probeID, Success: success})
		return id
	}
	f1 := add(false)
	add(true)
	f3 := add(false)
	for range 10 {
		add(true)
	}
	ids := func() []uint64 {
		var out []uint64
		for _, e := range h.List() {
			out = append(out, e.ID)
		}
		return out
	}
	// The three most recent, newest first, then the two failures that fell
	// out of them.
	if got, want := ids(), []uint64{13, 12, 11, f3, f1}; !equalIDs(got, want) {
		t.Errorf("history %v, want %v", got, want)
	}
	if _, ok := h.Get(2); ok {
		t.Error("an old success is still kept")
	}
	if e, ok := h.Get(f1); !ok || e.Success {
		t.Error("an old failure was dropped")
	}
	// Failures too are bounded.
	for range 10 {
		add(false)
	}
	if n := len(h.List()); n != 6 {
		t.Errorf("history holds %d entries, want 3 recent + 3 failures", n)
	}
	if _, ok := h.Get(f3); ok {
		t.Error("failures are not bounded")
	}
}

func equalIDs(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestHistoryDisabled(t *testing.T) {
	h := NewHistory(0)
	id1, _ := h.newID()
	id2, _ := h.newID()
	h.Add(&Entry{ID: id1})
	if id2 != id1+1 {
		t.Errorf("ids %d, %d are not consecutive", id1, id2)
	}
	if n := len(h.List()); n != 0 {
		t.Errorf("a disabled history holds %d entries", n)
	}
}

func TestLogsPage(t *testing.T) {
	fake := &fakeProber{result: dnsFailedResult}
	env := newTestEnv(t, HandlerOpts{Probe: fake.probe})
	env.get(t, env.handler, "target=a.example&module=relay", nil)
	probeID := fake.lastCall(t).probeID
	logs := http.HandlerFunc(env.pages.Logs)
	for _, tc := range []struct {
		query string
		code  int
	}{
		{"id=1", http.StatusOK},
		{"id=" + url.QueryEscape(probeID), http.StatusOK},
		{"id=2", http.StatusNotFound},
		{"id=", http.StatusBadRequest},
		{"", http.StatusBadRequest},
		{"id=abc", http.StatusBadRequest},
		{"id=-1", http.StatusBadRequest},
		{"id=00000000-1", http.StatusBadRequest}, // another process's probe
	} {
		rec := env.get(t, logs, tc.query, nil)
		if rec.Code != tc.code {
			t.Errorf("/logs?%s: status %d, want %d", tc.query, rec.Code, tc.code)
		}
		if tc.code == http.StatusOK && !strings.Contains(rec.Body.String(), "probe_success 0") {
			t.Errorf("/logs?%s: not the probe's debug output", tc.query)
		}
	}
}

func TestConfigPage(t *testing.T) {
	env := newTestEnv(t, HandlerOpts{})
	rec := env.get(t, http.HandlerFunc(env.pages.Config), "", nil)
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d", rec.Code)
	}
	body := rec.Body.String()
	for _, want := range []string{"submission:", "relay:", "password: <secret>"} {
		if !strings.Contains(body, want) {
			t.Errorf("/config lacks %q:\n%s", want, body)
		}
	}
	if strings.Contains(body, testPassword) {
		t.Error("/config shows the password")
	}

	empty := NewPages(config.NewSafeConfig(nil), nil, nil)
	if rec := env.get(t, http.HandlerFunc(empty.Config), "", nil); rec.Code != http.StatusServiceUnavailable {
		t.Errorf("no configuration: status %d, want 503", rec.Code)
	}
}

func TestLandingPage(t *testing.T) {
	fake := &fakeProber{result: transcriptResult}
	env := newTestEnv(t, HandlerOpts{Probe: fake.probe})
	hostile := `<script>alert("x")</script>`
	env.get(t, env.handler, "module=submission&target="+url.QueryEscape(hostile), nil)

	rec := env.get(t, http.HandlerFunc(env.pages.Landing), "", nil)
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d", rec.Code)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("content type %q", ct)
	}
	page := rec.Body.String()
	if strings.Contains(page, "<script>") {
		t.Errorf("hostile target not escaped:\n%s", page)
	}
	for _, want := range []string{
		"&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;",
		`<option value="relay">relay</option>`,
		`<option value="submission">submission</option>`,
		`<form action="probe" method="get">`,
		`<a href="logs?id=1">`,
		`<a href="metrics">`,
		`<a href="config">`,
		">auth<", ">auth_rejected<", ">250ms<", ">failure<",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("landing page lacks %q", want)
		}
	}
	// Every link is relative, so that a route prefix works.
	for _, m := range regexp.MustCompile(`(?:href|action)="([^"]*)"`).FindAllStringSubmatch(page, -1) {
		if strings.HasPrefix(m[1], "/") || strings.Contains(m[1], "://") {
			t.Errorf("absolute link %q", m[1])
		}
	}
}

func TestBoundedBuffer(t *testing.T) {
	b := newBoundedBuffer(100)
	io.WriteString(b, "first line\n")
	for range 50 {
		io.WriteString(b, "a line in the middle\n")
	}
	io.WriteString(b, "last line\n")
	out := b.String()
	if !strings.HasPrefix(out, "first line\n") || !strings.HasSuffix(out, "last line\n") {
		t.Errorf("head or tail lost:\n%s", out)
	}
	if !strings.Contains(out, "probe log truncated") {
		t.Errorf("no truncation note:\n%s", out)
	}
	if len(out) > 100+80 {
		t.Errorf("kept %d bytes for a limit of 100", len(out))
	}
	small := newBoundedBuffer(100)
	io.WriteString(small, "short\n")
	if got := small.String(); got != "short\n" {
		t.Errorf("untruncated log changed: %q", got)
	}
}

func TestBoundResult(t *testing.T) {
	r := successResult(nil)
	for i := range 2 * maxTranscriptLines {
		r.Transcript = append(r.Transcript, prober.TranscriptLine{At: time.Duration(i), Dir: prober.Server, Text: "250 ok"})
	}
	b := boundResult(r)
	if n := len(b.Transcript); n != maxTranscriptLines+1 {
		t.Errorf("kept %d lines, want %d and a note", n, maxTranscriptLines)
	}
	if last := b.Transcript[len(b.Transcript)-1]; last.Dir != prober.Note || !strings.Contains(last.Text, "truncated") {
		t.Errorf("no truncation note: %+v", last)
	}
	if len(r.Transcript) != 2*maxTranscriptLines || r.Transcript[maxTranscriptLines].Dir != prober.Server {
		t.Error("the prober's Result was modified")
	}
}

// TestExporterWiring checks that the handlers NewExporter returns share one
// history and register the probing metrics.
func TestExporterWiring(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	fake := &fakeProber{result: dnsFailedResult}
	exp := NewExporter(Options{
		Config:       newTestConfig(t, testConfigYAML),
		HistoryLimit: 5,
		Registerer:   reg,
		Probe:        fake.probe,
	})
	rec := httptest.NewRecorder()
	exp.ProbeHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/probe?target=a.example&module=relay", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("probe: status %d", rec.Code)
	}
	rec = httptest.NewRecorder()
	exp.LogsHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/logs?id=1", nil))
	if rec.Code != http.StatusOK {
		t.Errorf("logs of the probe just run: status %d", rec.Code)
	}
	rec = httptest.NewRecorder()
	exp.LandingHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	if !strings.Contains(rec.Body.String(), `href="logs?id=1"`) {
		t.Error("landing page does not list the probe")
	}
	n, err := testutil.GatherAndCount(reg, "smtp_exporter_module_unknown_total", "smtp_exporter_probes_in_flight", "smtp_exporter_probes_rejected_total")
	if err != nil || n != 3 {
		t.Errorf("exporter metrics registered: %d (%v), want 3", n, err)
	}
}

func TestFormatDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		183 * time.Microsecond:  "0.18ms",
		250 * time.Millisecond:  "250ms",
		1254 * time.Millisecond: "1.25s",
	} {
		if got := formatDuration(d); got != want {
			t.Errorf("formatDuration(%v) = %q, want %q", d, got, want)
		}
	}
}
