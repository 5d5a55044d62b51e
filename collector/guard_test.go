package collector

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
	"github.com/smtp-exporter/smtp_exporter/prober"
)

// fakeClock is a settable clock for the guard.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newTestGuard(limit int) (*guard, *fakeClock) {
	clock := &fakeClock{now: time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)}
	g := newGuard(limit)
	g.now = clock.Now
	return g, clock
}

// runner counts its calls and returns entries started at the clock's time.
type runner struct {
	clock *fakeClock
	calls atomic.Int32
	// result is the outcome of the next probe.
	success bool
	phase   prober.Phase
	reason  prober.Reason
}

func (r *runner) run() *Entry {
	n := r.calls.Add(1)
	e := &Entry{ID: uint64(n), ProbeID: "p-" + strconv.Itoa(int(n)), Time: r.clock.Now(), Success: r.success,
		Result: &prober.Result{Success: r.success, Transcript: []prober.TranscriptLine{{Text: "kept in the history only"}}}}
	if !r.success {
		e.FailurePhase, e.FailureReason = r.phase, r.reason
	}
	return e
}

func policyFor(minInterval, backoff time.Duration, credentials string) guardPolicy {
	p := guardPolicy{minInterval: minInterval, backoff: backoff}
	p.fingerprint[0] = 1
	if credentials != "" {
		copy(p.credentials[:], credentials)
		p.hasCredentials = true
	}
	return p
}

func TestGuardSharesConcurrentProbes(t *testing.T) {
	g, clock := newTestGuard(0)
	release := make(chan struct{})
	var calls atomic.Int32
	run := func() *Entry {
		calls.Add(1)
		<-release
		return &Entry{ProbeID: "shared", Time: clock.Now(), Success: true}
	}
	const requests = 5
	results := make(chan guardResult, requests)
	for range requests {
		go func() {
			results <- g.do(context.Background(), farDeadline, guardKey("m", "Mail.Example.NET"), policyFor(0, 0, ""), run)
		}()
	}
	// Let every request reach the guard before the probe ends.
	deadline := time.Now().Add(5 * time.Second)
	for g.waiting() < requests-1 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	close(release)
	outcomes := map[guardOutcome]int{}
	for range requests {
		res := <-results
		outcomes[res.outcome]++
		if res.entry == nil || res.entry.ProbeID != "shared" {
			t.Errorf("request got %+v, want the shared entry", res.entry)
		}
	}
	if calls.Load() != 1 || outcomes[outcomeFresh] != 1 || outcomes[outcomeShared] != requests-1 {
		t.Errorf("%d probes, outcomes %v; want 1 probe, 1 fresh and %d shared", calls.Load(), outcomes, requests-1)
	}
	// Nothing is kept for a module that reuses nothing.
	if g.size() != 0 || len(g.inflight) != 0 {
		t.Errorf("guard keeps %d results and %d flights", g.size(), len(g.inflight))
	}
	// The key ignores the case of the host name, not the module.
	if guardKey("m", "MAIL.example.net") != guardKey("m", "mail.example.net") || guardKey("a", "x") == guardKey("b", "x") {
		t.Error("guard keys")
	}
}

// farDeadline is a request deadline that never matters.
var farDeadline = time.Now().Add(time.Hour)

func TestGuardWaitersAndDeadlines(t *testing.T) {
	g, clock := newTestGuard(0)
	release := make(chan struct{})
	started := make(chan struct{})
	// The probe's own request must answer in 20ms; the probe overruns it.
	leaderDeadline := time.Now().Add(20 * time.Millisecond)
	go g.do(context.Background(), leaderDeadline, "k", policyFor(0, 0, ""), func() *Entry {
		close(started)
		<-release
		return &Entry{ProbeID: "late", Time: clock.Now()}
	})
	<-started
	notRun := func() *Entry { t.Error("second probe ran"); return nil }

	// A request that must answer before the probe's deadline gives up at
	// its own.
	early := time.Now().Add(10 * time.Millisecond)
	if res := g.do(context.Background(), early, "k", policyFor(0, 0, ""), notRun); res.outcome != outcomeAbandoned || res.entry != nil {
		t.Errorf("waiter past its deadline got %+v", res)
	}
	// A request whose client went away stops waiting.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if res := g.do(ctx, farDeadline, "k", policyFor(0, 0, ""), notRun); res.outcome != outcomeAbandoned {
		t.Errorf("waiter without a client got %+v", res)
	}
	// A request with a later deadline than the probe's waits for its
	// result, even past its own deadline: the probe ends by the deadline
	// of the request that started it, so the wait is bounded, and
	// answering a moment late beats a result of nothing (a thousand
	// requests arriving together would otherwise race the probe's end).
	later := make(chan guardResult)
	go func() {
		later <- g.do(context.Background(), leaderDeadline.Add(time.Millisecond), "k", policyFor(0, 0, ""), notRun)
	}()
	time.Sleep(50 * time.Millisecond)
	close(release)
	if res := <-later; res.outcome != outcomeShared || res.entry.ProbeID != "late" {
		t.Errorf("waiter with a later deadline got %+v", res)
	}
}

func TestGuardMinInterval(t *testing.T) {
	g, clock := newTestGuard(0)
	r := &runner{clock: clock, success: true}
	policy := policyFor(30*time.Second, 0, "")

	if res := g.do(context.Background(), farDeadline, "k", policy, r.run); res.outcome != outcomeFresh || res.age != 0 {
		t.Fatalf("first request: %+v", res)
	}
	clock.Advance(20 * time.Second)
	res := g.do(context.Background(), farDeadline, "k", policy, r.run)
	if res.outcome != outcomeReused || res.age != 20*time.Second || res.entry.ProbeID != "p-1" {
		t.Errorf("within min_interval: outcome %v age %v entry %s, want reused, 20s, p-1", res.outcome, res.age, res.entry.ProbeID)
	}
	if res.entry.Result.Transcript != nil {
		t.Error("the stored result keeps its transcript")
	}
	// Another target, and the same module after a reload, probe afresh.
	if res := g.do(context.Background(), farDeadline, "other", policy, r.run); res.outcome != outcomeFresh {
		t.Errorf("other key: %v", res.outcome)
	}
	changed := policy
	changed.fingerprint[0] = 2
	if res := g.do(context.Background(), farDeadline, "k", changed, r.run); res.outcome != outcomeFresh {
		t.Errorf("changed module: %v", res.outcome)
	}
	clock.Advance(30 * time.Second)
	if res := g.do(context.Background(), farDeadline, "k", changed, r.run); res.outcome != outcomeFresh {
		t.Errorf("after min_interval: %v", res.outcome)
	}
	if n := r.calls.Load(); n != 4 {
		t.Errorf("%d probes, want 4", n)
	}
}

func TestGuardHoldsLoginsAfterRejection(t *testing.T) {
	g, clock := newTestGuard(0)
	r := &runner{clock: clock, phase: prober.PhaseAuth, reason: prober.ReasonAuthRejected}
	wrong := policyFor(0, 5*time.Minute, "hash-of-wrong-password")

	if res := g.do(context.Background(), farDeadline, "k", wrong, r.run); res.outcome != outcomeFresh {
		t.Fatalf("first: %v", res.outcome)
	}
	for range 3 {
		clock.Advance(time.Minute)
		res := g.do(context.Background(), farDeadline, "k", wrong, r.run)
		if res.outcome != outcomeHeld || res.entry.ProbeID != "p-1" || res.entry.FailureReason != prober.ReasonAuthRejected {
			t.Fatalf("during the backoff: %+v", res)
		}
	}
	if n := r.calls.Load(); n != 1 {
		t.Fatalf("%d logins during the backoff, want 1", n)
	}
	// Unreadable credentials: the probe fails in setup without a login and
	// does not end the hold.
	unreadable := policyFor(0, 5*time.Minute, "")
	r.phase, r.reason = prober.PhaseSetup, prober.ReasonCredentials
	if res := g.do(context.Background(), farDeadline, "k", unreadable, r.run); res.outcome != outcomeFresh {
		t.Errorf("unreadable credentials: %v", res.outcome)
	}
	if res := g.do(context.Background(), farDeadline, "k", wrong, r.run); res.outcome != outcomeHeld {
		t.Errorf("a setup failure ended the hold: %v", res.outcome)
	}
	// A new password is tried at once.
	r.phase, r.reason, r.success = "", "", true
	fixed := policyFor(0, 5*time.Minute, "hash-of-new-password")
	res := g.do(context.Background(), farDeadline, "k", fixed, r.run)
	if res.outcome != outcomeFresh || res.released != "the credentials changed" {
		t.Errorf("new credentials: %+v", res)
	}
	if res := g.do(context.Background(), farDeadline, "k", fixed, r.run); res.outcome != outcomeFresh {
		t.Errorf("after a success: %v, want a fresh probe", res.outcome)
	}

	// A changed module ends a hold too, and so does the end of the backoff.
	r.success, r.phase, r.reason = false, prober.PhaseAuth, prober.ReasonTokenRejected
	g.do(context.Background(), farDeadline, "t", wrong, r.run)
	reloaded := wrong
	reloaded.fingerprint[0] = 9
	if res := g.do(context.Background(), farDeadline, "t", reloaded, r.run); res.outcome != outcomeFresh || res.released != "the module's configuration changed" {
		t.Errorf("after a reload: %+v", res)
	}
	if res := g.do(context.Background(), farDeadline, "t", reloaded, r.run); res.outcome != outcomeHeld {
		t.Errorf("token_rejected does not hold: %v", res.outcome)
	}
	clock.Advance(5 * time.Minute)
	if res := g.do(context.Background(), farDeadline, "t", reloaded, r.run); res.outcome != outcomeFresh {
		t.Errorf("after the backoff: %v", res.outcome)
	}
	// Without a backoff (expect_auth_rejected, or 0) nothing is held.
	none := policyFor(0, 0, "hash-of-wrong-password")
	g.do(context.Background(), farDeadline, "u", none, r.run)
	if res := g.do(context.Background(), farDeadline, "u", none, r.run); res.outcome != outcomeFresh {
		t.Errorf("held without a backoff: %v", res.outcome)
	}
}

func TestGuardIsBounded(t *testing.T) {
	g, clock := newTestGuard(100)
	r := &runner{clock: clock, success: true}
	policy := policyFor(time.Minute, 0, "")
	for i := range 1000 {
		g.do(context.Background(), farDeadline, fmt.Sprintf("target-%d", i), policy, r.run)
		if i == 500 {
			clock.Advance(2 * time.Minute) // everything so far has expired
		}
	}
	if n := g.size(); n != 100 {
		t.Errorf("guard holds %d results, want its limit of 100", n)
	}
	// The most recent are kept.
	if res := g.do(context.Background(), farDeadline, "target-999", policy, r.run); res.outcome != outcomeReused {
		t.Errorf("most recent result dropped: %v", res.outcome)
	}
	if res := g.do(context.Background(), farDeadline, "target-0", policy, r.run); res.outcome != outcomeFresh {
		t.Errorf("oldest result kept: %v", res.outcome)
	}
}

// Two Prometheus replicas scraping at once cause one login; both get the
// result, the history records one probe.
func TestHandlerSharesConcurrentProbes(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 10)
	fake := &fakeProber{result: func() *prober.Result {
		started <- struct{}{}
		<-release
		return successResult(nil)
	}}
	env := newTestEnv(t, HandlerOpts{Probe: fake.probe})
	bodies := make([]string, 2)
	var wg sync.WaitGroup
	for i := range bodies {
		wg.Go(func() {
			rec := env.get(t, env.handler, "target=mail.example.net:587&module=submission", nil)
			if rec.Code != http.StatusOK {
				t.Errorf("status %d", rec.Code)
			}
			bodies[i] = rec.Body.String()
		})
	}
	<-started
	deadline := time.Now().Add(5 * time.Second)
	for env.handler.guard.waiting() < 1 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	if n := len(fake.calls); n != 1 {
		t.Errorf("%d probes for two concurrent requests, want 1", n)
	}
	for i, body := range bodies {
		if !strings.Contains(body, "probe_success 1\n") {
			t.Errorf("response %d lacks the result:\n%s", i, body)
		}
	}
	if n := len(env.history.List()); n != 1 {
		t.Errorf("history holds %d probes, want 1", n)
	}
}

func ageOf(t *testing.T, body string) (float64, bool) {
	t.Helper()
	m := regexp.MustCompile(`(?m)^probe_smtp_result_age_seconds (\S+)$`).FindStringSubmatch(body)
	if m == nil {
		return 0, false
	}
	age, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return age, true
}

func TestHandlerMinInterval(t *testing.T) {
	fake := &fakeProber{result: func() *prober.Result { return successResult(nil) }}
	cfg := newTestConfig(t, `
modules:
  banner:
    min_interval: 1h
    smtp: {tls: none}
  plain:
    smtp: {tls: none}
`)
	env := newTestEnv(t, HandlerOpts{Config: cfg, Probe: fake.probe})
	first := env.get(t, env.handler, "target=mx.example.net&module=banner", nil).Body.String()
	time.Sleep(20 * time.Millisecond)
	second := env.get(t, env.handler, "target=mx.example.net&module=banner&debug=true", nil).Body.String()
	if n := len(fake.calls); n != 1 {
		t.Fatalf("%d probes within min_interval, want 1", n)
	}
	if age, ok := ageOf(t, first); !ok || age != 0 {
		t.Errorf("fresh result: age %v (present %v), want 0\n%s", age, ok, first)
	}
	if age, ok := ageOf(t, second); !ok || age < 0.02 {
		t.Errorf("reused result: age %v (present %v), want at least 0.02s\n%s", age, ok, second)
	}
	for _, want := range []string{"probe_success 1\n", "reused: the module's min_interval (1h) has not passed", "min_interval: 1h"} {
		if !strings.Contains(second, want) {
			t.Errorf("debug output of the reused result lacks %q:\n%s", want, second)
		}
	}
	if n := len(env.history.List()); n != 1 {
		t.Errorf("history holds %d probes, want 1", n)
	}
	// A module without min_interval and without auth reuses nothing and has
	// no age metric.
	for range 2 {
		body := env.get(t, env.handler, "target=mx.example.net&module=plain", nil).Body.String()
		if _, ok := ageOf(t, body); ok {
			t.Errorf("age metric for a module that reuses nothing:\n%s", body)
		}
	}
	if n := len(fake.calls); n != 3 {
		t.Errorf("%d probes, want 3", n)
	}
}

// With the real prober: a wrong password is tried once, then held until the
// password file changes; expect_auth_rejected is never held.
func TestHandlerHoldsLoginsAfterRejection(t *testing.T) {
	const username = "probe@example.net"
	srv := smtptest.NewServer(t, smtptest.Options{Username: username, Password: "the-right-password"})
	passFile := filepath.Join(t.TempDir(), "probe.pass")
	if err := os.WriteFile(passFile, []byte("a-wrong-password-canary\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	module := func(extra string) string {
		return fmt.Sprintf(`
    timeout: 5s
    smtp:
      tls: none
      preferred_ip_protocol: ip4
      allow_plaintext_auth: true
      auth: {username: %s, password_file: %q}
      allowed_targets: ["127.0.0.1"]
%s`, username, passFile, extra)
	}
	cfg := newTestConfig(t, "modules:\n  submission:"+module("")+"  disabled:"+module("      expect_auth_rejected: true\n"))
	env := newTestEnv(t, HandlerOpts{Config: cfg})
	target := url.QueryEscape(srv.Addr())

	var bodies []string
	for range 3 {
		rec := env.get(t, env.handler, "module=submission&target="+target, nil)
		bodies = append(bodies, rec.Body.String())
	}
	if n := len(srv.Auths()); n != 1 {
		t.Fatalf("server saw %d logins, want 1: the rejection must hold the others", n)
	}
	for i, body := range bodies {
		if !strings.Contains(body, `probe_smtp_failure_info{phase="auth",reason="auth_rejected"} 1`) {
			t.Errorf("response %d does not report the rejection:\n%s", i, body)
		}
		age, ok := ageOf(t, body)
		if !ok || (i == 0) != (age == 0) {
			t.Errorf("response %d: age %v (present %v)", i, age, ok)
		}
	}
	if log := env.mainLog.String(); strings.Count(log, "Login held after an authentication rejection") != 2 ||
		strings.Contains(log, "a-wrong-password-canary") {
		t.Errorf("main log:\n%s", log)
	}
	debug := env.get(t, env.handler, "module=submission&target="+target+"&debug=true", nil).Body.String()
	if !strings.Contains(debug, "Login held: probe ") || strings.Contains(debug, "a-wrong-password-canary") {
		t.Errorf("debug output of a held result:\n%s", debug)
	}

	// The right password in the file ends the hold at once.
	if err := os.WriteFile(passFile, []byte("the-right-password\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	body := env.get(t, env.handler, "module=submission&target="+target, nil).Body.String()
	if !strings.Contains(body, "probe_success 1\n") || len(srv.Auths()) != 2 {
		t.Errorf("after the password changed: %d logins\n%s", len(srv.Auths()), body)
	}
	if !strings.Contains(env.mainLog.String(), "why=\"the credentials changed\"") {
		t.Errorf("the release is not logged:\n%s", env.mainLog)
	}

	// A disabled account that must stay disabled: every probe logs in and
	// succeeds on the refusal.
	srv.SetPassword("another-password")
	for range 2 {
		body := env.get(t, env.handler, "module=disabled&target="+target, nil).Body.String()
		if !strings.Contains(body, "probe_success 1\n") || !strings.Contains(body, "probe_smtp_auth_success 0\n") {
			t.Errorf("expected rejection:\n%s", body)
		}
		if _, ok := ageOf(t, body); ok {
			t.Errorf("age metric on a module that is never held:\n%s", body)
		}
	}
	if n := len(srv.Auths()); n != 4 {
		t.Errorf("server saw %d logins, want 4: expect_auth_rejected must not hold", n)
	}
}

func TestResultAgeMetric(t *testing.T) {
	r := successResult(nil)
	if problems, err := testutil.CollectAndLint(NewWithAge(r, 5*time.Second, 42*time.Second)); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
	const want = `
# HELP probe_smtp_result_age_seconds Seconds since the probe whose result this is started: 0 for a probe run for this scrape, more for a result reused within min_interval or held after an authentication rejection. Present only for modules whose results can be reused.
# TYPE probe_smtp_result_age_seconds gauge
probe_smtp_result_age_seconds 42
`
	if err := testutil.CollectAndCompare(NewWithAge(r, 5*time.Second, 42*time.Second), strings.NewReader(want), "probe_smtp_result_age_seconds"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(New(r, 5*time.Second), "probe_smtp_result_age_seconds"); n != 0 {
		t.Errorf("New emits %d age series, want none", n)
	}
}
