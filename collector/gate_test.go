package collector

import (
	"context"
	"crypto/sha256"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/smtp-exporter/smtp_exporter/config"
	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
	"github.com/smtp-exporter/smtp_exporter/prober"
)

func newTestGate(limit, maxConcurrent int) (*gate, *smtptest.Clock) {
	clock := smtptest.NewClock(time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC))
	g := newGate(limit, maxConcurrent)
	g.now = clock.Now
	return g, clock
}

// runner counts its calls and returns entries started at the clock's time
// with the outcome set in its fields.
type runner struct {
	clock *smtptest.Clock
	calls atomic.Int32

	mu      sync.Mutex
	login   bool // AUTH was sent
	success bool
	phase   prober.Phase
	reason  prober.Reason
}

func (r *runner) set(login, success bool, phase prober.Phase, reason prober.Reason) {
	r.mu.Lock()
	r.login, r.success, r.phase, r.reason = login, success, phase, reason
	r.mu.Unlock()
}

func (r *runner) run() *Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.calls.Add(1)
	res := &prober.Result{Success: r.success, AuthAttempted: r.login, AuthSuccess: r.login && r.success,
		Transcript: []prober.TranscriptLine{{Text: "kept in the history only"}}}
	e := &Entry{ID: uint64(n), ProbeID: "p-" + strconv.Itoa(int(n)), Time: r.clock.Now(), Success: r.success, Result: res}
	if !r.success {
		e.FailurePhase, e.FailureReason = r.phase, r.reason
		res.Failure = &prober.Failure{Phase: r.phase, Reason: r.reason}
		res.Phases = []prober.PhaseResult{{Phase: prober.PhaseAuth, Ran: true, Code: 535, Enhanced: "5.7.8"}}
	}
	return e
}

// request builds a gate request for module and address, logging in as
// account ("" for none).
func request(module, address, account string, minInterval, backoff time.Duration) gateRequest {
	req := gateRequest{key: resultKey{module: module, address: address}, minInterval: minInterval, backoff: backoff,
		deadline: farDeadline}
	if account != "" {
		// "user:secret", or "user" with the secret "s".
		user, secret, found := strings.Cut(account, ":")
		if !found {
			secret = "s"
		}
		req.account = config.Account{ID: sha256.Sum256([]byte(user)), Secret: sha256.Sum256([]byte(secret))}
		req.hasAccount = true
	}
	return req
}

// farDeadline is a request deadline that never matters.
var farDeadline = time.Now().Add(time.Hour)

func decide(t *testing.T, g *gate, req gateRequest, run func() *Entry) Answer {
	t.Helper()
	ans, err := g.decide(context.Background(), req, run)
	if err != nil {
		t.Fatalf("decide: %v", err)
	}
	return ans
}

func TestGateSharesConcurrentProbes(t *testing.T) {
	g, clock := newTestGate(0, 0)
	release := make(chan struct{})
	var waiting sync.WaitGroup
	const requests = 5
	waiting.Add(requests - 1)
	g.waited = waiting.Done
	var calls atomic.Int32
	run := func() *Entry {
		calls.Add(1)
		<-release
		return &Entry{ProbeID: "shared", Time: clock.Now(), Success: true, Result: &prober.Result{Success: true}}
	}
	answers := make(chan Answer, requests)
	for range requests {
		go func() {
			ans, _ := g.decide(context.Background(), request("m", "192.0.2.1:587", "", 0, 0), run)
			answers <- ans
		}()
	}
	waiting.Wait()
	close(release)
	provenance := map[Provenance]int{}
	for range requests {
		ans := <-answers
		provenance[ans.Provenance]++
		if ans.Entry == nil || ans.Entry.ProbeID != "shared" {
			t.Errorf("request got %+v, want the shared entry", ans.Entry)
		}
	}
	if calls.Load() != 1 || provenance[Fresh] != 1 || provenance[Shared] != requests-1 {
		t.Errorf("%d probes, provenance %v; want 1 probe, 1 fresh and %d shared", calls.Load(), provenance, requests-1)
	}
	// Nothing is kept for a module that reuses nothing.
	if g.size() != 0 || len(g.flights) != 0 {
		t.Errorf("gate keeps %d results and %d flights", g.size(), len(g.flights))
	}
}

// A caller that asks for a tiny timeout cannot hand its timeout to a
// request with more time: that request runs its own probe, and the timeout
// is never kept for min_interval.
func TestGateSharedTimeoutUnderShorterDeadline(t *testing.T) {
	g, clock := newTestGate(0, 0)
	r := &runner{clock: clock}
	release := make(chan struct{})
	joined := make(chan struct{})
	g.waited = func() { close(joined) }
	short := request("m", "192.0.2.1:587", "", time.Hour, 0)
	short.deadline = time.Now().Add(time.Minute)
	shortDone := make(chan Answer, 1)
	shortStarted := make(chan struct{})
	go func() {
		ans, _ := g.decide(context.Background(), short, func() *Entry {
			close(shortStarted)
			<-release
			r.set(false, false, prober.PhaseBanner, prober.ReasonTimeout)
			return r.run()
		})
		shortDone <- ans
	}()
	<-shortStarted
	long := request("m", "192.0.2.1:587", "", time.Hour, 0)
	long.deadline = time.Now().Add(2 * time.Minute)
	longDone := make(chan Answer, 1)
	go func() {
		ans, _ := g.decide(context.Background(), long, func() *Entry {
			r.set(false, true, "", "")
			return r.run()
		})
		longDone <- ans
	}()
	<-joined
	close(release)
	if ans := <-shortDone; ans.Provenance != Fresh || ans.Entry.FailureReason != prober.ReasonTimeout {
		t.Errorf("short request: %v %+v", ans.Provenance, ans.Entry)
	}
	if ans := <-longDone; ans.Provenance != Fresh || !ans.Entry.Success {
		t.Errorf("long request: %v %+v, want a probe of its own that succeeds", ans.Provenance, ans.Entry)
	}
	if n := r.calls.Load(); n != 2 {
		t.Errorf("%d probes, want 2", n)
	}
	// A timeout is not reused; the success is.
	if ans := decide(t, g, request("m", "192.0.2.1:587", "", time.Hour, 0), r.run); ans.Provenance != Reused || !ans.Entry.Success {
		t.Errorf("after: %v %+v, want the success reused", ans.Provenance, ans.Entry)
	}
	only := &runner{clock: clock}
	only.set(false, false, prober.PhaseBanner, prober.ReasonTimeout)
	decide(t, g, request("m", "192.0.2.2:587", "", time.Hour, 0), only.run)
	if ans := decide(t, g, request("m", "192.0.2.2:587", "", time.Hour, 0), only.run); ans.Provenance != Fresh {
		t.Errorf("a timeout was reused: %v", ans.Provenance)
	}
}

// A request whose own deadline passes while it waits gets a timeout of its
// own; a request that goes away gets its context's error.
func TestGateWaiterDeadline(t *testing.T) {
	g, clock := newTestGate(0, 0)
	release := make(chan struct{})
	started := make(chan struct{})
	go g.decide(context.Background(), request("m", "a:25", "", 0, 0), func() *Entry {
		close(started)
		<-release
		return &Entry{Time: clock.Now(), Success: true, Result: &prober.Result{Success: true}}
	})
	<-started
	defer close(release)
	req := request("m", "a:25", "", 0, 0)
	req.deadline = time.Now()
	ans := decide(t, g, req, nil)
	if ans.Provenance != Shared || ans.Entry != nil {
		t.Errorf("waiter past its deadline: %+v", ans)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := g.decide(ctx, request("m", "a:25", "", 0, 0), nil); !errors.Is(err, context.Canceled) {
		t.Errorf("request gone: %v", err)
	}
}

func TestGateMinInterval(t *testing.T) {
	g, clock := newTestGate(0, 0)
	r := &runner{clock: clock}
	r.set(false, true, "", "")
	req := request("m", "192.0.2.1:25", "", time.Minute, 0)
	if ans := decide(t, g, req, r.run); ans.Provenance != Fresh {
		t.Fatalf("first: %v", ans.Provenance)
	}
	clock.Advance(59 * time.Second)
	ans := decide(t, g, req, r.run)
	if ans.Provenance != Reused || ans.Entry.ProbeID != "p-1" || !ans.NextLogin.Equal(ans.Entry.Time.Add(time.Minute)) {
		t.Errorf("within min_interval: %+v", ans)
	}
	if ans.Entry.Result.Transcript != nil || ans.Entry.Log() != "" {
		t.Error("a stored result keeps its transcript or log")
	}
	// Another module or address is another key.
	if ans := decide(t, g, request("n", "192.0.2.1:25", "", time.Minute, 0), r.run); ans.Provenance != Fresh {
		t.Errorf("other module: %v", ans.Provenance)
	}
	clock.Advance(time.Second)
	if ans := decide(t, g, req, r.run); ans.Provenance != Fresh {
		t.Errorf("after min_interval: %v", ans.Provenance)
	}
}

// A refused login holds every login of the account, whatever the module and
// address, for the refused module's backoff; then one login decides.
func TestGateHoldsTheAccount(t *testing.T) {
	g, clock := newTestGate(0, 0)
	reg := newPedanticRegistry(t, g.m.collectors()...)
	r := &runner{clock: clock}
	r.set(true, false, prober.PhaseAuth, prober.ReasonAuthRejected)
	backoff := 5 * time.Minute
	first := request("submission", "192.0.2.1:587", "alice", 0, backoff)
	if ans := decide(t, g, first, r.run); ans.Provenance != Fresh {
		t.Fatalf("first: %v", ans.Provenance)
	}
	clock.Advance(time.Minute)
	// The same key: the refusal itself.
	ans := decide(t, g, first, r.run)
	if ans.Provenance != Held || ans.Entry == nil || ans.Entry.ProbeID != "p-1" ||
		ans.Hold.Reason != prober.ReasonAuthRejected || ans.Hold.Code != 535 || ans.Hold.Enhanced != "5.7.8" ||
		!ans.Hold.Until.Equal(ans.Entry.Time.Add(backoff)) || !ans.NextLogin.Equal(ans.Hold.Until) {
		t.Errorf("same key: %+v %+v", ans, ans.Hold)
	}
	// Another module and address of the same account: held, without an entry.
	ans = decide(t, g, request("implicit", "192.0.2.2:465", "alice", 0, time.Hour), r.run)
	if ans.Provenance != Held || ans.Entry != nil || ans.Hold.ProbeID != "p-1" {
		t.Errorf("other module: %+v", ans)
	}
	// Another account is not held.
	r.set(true, true, "", "")
	if ans := decide(t, g, request("submission", "192.0.2.1:587", "bob", 0, backoff), r.run); ans.Provenance != Fresh {
		t.Errorf("other account: %v", ans.Provenance)
	}
	if n := r.calls.Load(); n != 2 {
		t.Fatalf("%d logins, want 2", n)
	}

	// The hold passes: one login decides, the account's other requests are
	// held meanwhile.
	clock.Advance(4 * time.Minute)
	release := make(chan struct{})
	deciding := make(chan struct{})
	decided := make(chan Answer, 1)
	go func() {
		ans, _ := g.decide(context.Background(), first, func() *Entry {
			close(deciding)
			<-release
			return r.run() // accepted now
		})
		decided <- ans
	}()
	<-deciding
	ans = decide(t, g, request("implicit", "192.0.2.2:465", "alice", 0, backoff), r.run)
	if ans.Provenance != Held || ans.Hold == nil || !ans.Hold.Deciding {
		t.Errorf("while the deciding login runs: %+v", ans)
	}
	// A request of the deciding login's own key shares it.
	shared := make(chan Answer, 1)
	waited := make(chan struct{})
	g.waited = func() { close(waited) }
	go func() {
		ans, _ := g.decide(context.Background(), first, r.run)
		shared <- ans
	}()
	<-waited
	close(release)
	if ans := <-decided; ans.Provenance != Fresh || !ans.Entry.Success {
		t.Errorf("deciding login: %+v", ans)
	}
	if ans := <-shared; ans.Provenance != Shared || !ans.Entry.Success {
		t.Errorf("same key as the deciding login: %+v", ans)
	}
	g.waited = nil
	// Accepted: the account is free.
	if ans := decide(t, g, request("implicit", "192.0.2.2:465", "alice", 0, backoff), r.run); ans.Provenance != Fresh {
		t.Errorf("after an accepted login: %v", ans.Provenance)
	}
	if n := r.calls.Load(); n != 4 {
		t.Errorf("%d logins, want 4", n)
	}
	want := map[string]float64{"submission/refused": 1, "submission/accepted": 2, "implicit/accepted": 1}
	for k, v := range want {
		module, outcome, _ := cut(k)
		if got := testutil.ToFloat64(g.m.logins.WithLabelValues(module, outcome)); got != v {
			t.Errorf("logins_total{%s} = %v, want %v", k, got, v)
		}
	}
	if got := testutil.ToFloat64(g.m.held.WithLabelValues("implicit", "auth_rejected")); got != 2 {
		t.Errorf("logins_held_total{implicit,auth_rejected} = %v, want 2", got)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

func newPedanticRegistry(t *testing.T, cs ...prometheus.Collector) *prometheus.Registry {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(cs...)
	return reg
}

func cut(s string) (string, string, bool) {
	for i := range s {
		if s[i] == '/' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// A new secret is tried at once, and says that the hold of the old one no
// longer applies; the old secret stays held (a module still configured with
// it gains no login).
func TestGateNewSecretEndsTheHold(t *testing.T) {
	g, clock := newTestGate(0, 0)
	r := &runner{clock: clock}
	r.set(true, false, prober.PhaseAuth, prober.ReasonAuthRejected)
	old := request("submission", "192.0.2.1:587", "alice:old", 0, time.Hour)
	renewed := request("implicit", "192.0.2.2:465", "alice:new", 0, time.Hour)
	decide(t, g, old, r.run)
	if ans := decide(t, g, old, r.run); ans.Provenance != Held {
		t.Fatalf("old secret: %v", ans.Provenance)
	}
	if ans := decide(t, g, renewed, r.run); ans.Provenance != Fresh || !ans.Released {
		t.Errorf("new secret: %+v, want a fresh login and the release", ans)
	}
	if ans := decide(t, g, renewed, r.run); ans.Provenance != Held || ans.Hold.ProbeID != "p-2" || ans.Released {
		t.Errorf("new secret refused: %+v, want held by p-2", ans)
	}
	if ans := decide(t, g, old, r.run); ans.Provenance != Held || ans.Hold.ProbeID != "p-1" {
		t.Errorf("old secret again: %+v, want still held by p-1", ans)
	}
	if n := r.calls.Load(); n != 2 {
		t.Errorf("%d logins, want 2", n)
	}
}

// Throttling holds logins like a refusal; a refusal that says nothing of the
// credentials does not, and neither does a module with backoff 0.
func TestGateHoldReasons(t *testing.T) {
	for _, tc := range []struct {
		reason  prober.Reason
		backoff time.Duration
		holds   bool
	}{
		{prober.ReasonAuthRejected, time.Minute, true},
		{prober.ReasonTokenRejected, time.Minute, true},
		{prober.ReasonAuthThrottled, time.Minute, true},
		{prober.ReasonAuthTemporaryFailure, time.Minute, true},
		{prober.ReasonAuthEncryptionRequired, time.Minute, false},
		{prober.ReasonAuthMechanismTooWeak, time.Minute, false},
		{prober.ReasonAuthBasicDisabled, time.Minute, false},
		{prober.ReasonAuthRefused, time.Minute, false},
		{prober.ReasonAuthRejected, 0, false},
	} {
		g, clock := newTestGate(0, 0)
		r := &runner{clock: clock}
		r.set(true, false, prober.PhaseAuth, tc.reason)
		req := request("m", "192.0.2.1:587", "alice", 0, tc.backoff)
		if tc.backoff == 0 {
			req.hasAccount = false // as the handler sends it
		}
		decide(t, g, req, r.run)
		if held := decide(t, g, req, r.run).Provenance == Held; held != tc.holds {
			t.Errorf("%s, backoff %v: held %v, want %v", tc.reason, tc.backoff, held, tc.holds)
		}
	}
}

// Results go when their min_interval passes, not when the store is full;
// and it never holds more than its limit.
func TestGateForgets(t *testing.T) {
	g, clock := newTestGate(3, 0)
	r := &runner{clock: clock}
	r.set(false, true, "", "")
	for i := range 3 {
		decide(t, g, request("m", "192.0.2."+strconv.Itoa(i)+":25", "", time.Minute, 0), r.run)
	}
	if n := g.size(); n != 3 {
		t.Fatalf("%d stored, want 3", n)
	}
	clock.Advance(time.Minute)
	decide(t, g, request("other", "192.0.2.9:25", "", 0, 0), r.run)
	if n := g.size(); n != 0 {
		t.Errorf("%d stored after min_interval passed, want 0", n)
	}
	for i := range 5 {
		decide(t, g, request("m", "192.0.2."+strconv.Itoa(i)+":25", "", time.Hour, 0), r.run)
	}
	if n := g.size(); n != 3 {
		t.Errorf("%d stored, want the limit 3", n)
	}
	// The least recently used went first.
	if ans := decide(t, g, request("m", "192.0.2.0:25", "", time.Hour, 0), r.run); ans.Provenance != Fresh {
		t.Errorf("oldest result kept: %v", ans.Provenance)
	}
	// An account whose hold passed long ago is forgotten.
	r.set(true, false, prober.PhaseAuth, prober.ReasonAuthRejected)
	decide(t, g, request("m", "192.0.2.7:587", "alice", 0, time.Minute), r.run)
	clock.Advance(3 * time.Minute)
	decide(t, g, request("other", "192.0.2.9:25", "", 0, 0), r.run)
	if n := len(g.accounts); n != 0 {
		t.Errorf("%d accounts remembered, want 0", n)
	}
}

// A probe that has to run gets 503 when every slot is taken; requests
// answered without a probe need none.
func TestGateSlots(t *testing.T) {
	g, clock := newTestGate(0, 1)
	r := &runner{clock: clock}
	r.set(false, true, "", "")
	release := make(chan struct{})
	started := make(chan struct{})
	go g.decide(context.Background(), request("m", "a:25", "", 0, 0), func() *Entry {
		close(started)
		<-release
		return r.run()
	})
	<-started
	if _, err := g.decide(context.Background(), request("m", "b:25", "", 0, 0), r.run); !errors.Is(err, errBusy) {
		t.Errorf("second probe: %v, want errBusy", err)
	}
	close(release)
}

// Through the handler: a request whose own deadline passes while it waits
// for another request's probe of the same module and address answers with
// a timeout of its own, says why, and adds nothing to the history.
func TestHandlerWaiterPastItsDeadline(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	blocking := func(ctx context.Context, _ prober.Target, _ *config.Module, _ string, _ *slog.Logger) *prober.Result {
		close(entered)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return successResult(nil)
	}
	env := newTestEnv(t, HandlerOpts{Probe: blocking})
	first := make(chan string, 1)
	go func() { first <- env.get(t, env.handler, "target=a.example&module=relay", nil).Body.String() }()
	<-entered

	short := http.Header{}
	short.Set(scrapeTimeoutHeader, "0.2")
	body := env.get(t, env.handler, "target=a.example&module=relay&debug=true", short).Body.String()
	for _, want := range []string{
		"Timed out waiting for a concurrent probe of the same module and address",
		`probe_smtp_failure_info{phase="setup",reason="timeout"} 1`,
		"probe_success 0\n",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the waiter's answer lacks %q:\n%s", want, body)
		}
	}
	close(release)
	if body := <-first; !strings.Contains(body, "probe_success 1\n") {
		t.Errorf("the probe's own request:\n%s", body)
	}
	if n := len(env.history.List()); n != 1 {
		t.Errorf("history holds %d probes, want the 1 that ran", n)
	}
}

// One login of an account runs at a time: a request of another module and
// address of the account waits for the verdict on the running login. A
// refusal holds it; a probe that ended without one, or a login the server
// accepted, lets it log in itself (after an acceptance, while the rest of
// the other probe still runs). A request whose deadline passes meanwhile
// says what it waited for.
func TestGateOneLoginPerAccountAtATime(t *testing.T) {
	for _, tc := range []struct {
		name        string
		login, ok   bool
		phase       prober.Phase
		reason      prober.Reason
		want        Provenance
		logins      int32
		acceptEarly bool
	}{
		{name: "refused", login: true, phase: prober.PhaseAuth, reason: prober.ReasonAuthRejected, want: Held, logins: 1},
		{name: "no login", phase: prober.PhaseConnect, reason: prober.ReasonConnectionRefused, want: Fresh, logins: 2},
		{name: "accepted", login: true, ok: true, want: Fresh, logins: 2, acceptEarly: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, clock := newTestGate(0, 0)
			r := &runner{clock: clock}
			r.set(tc.login, tc.ok, tc.phase, tc.reason)
			first := request("submission", "192.0.2.1:587", "alice", 0, time.Hour)
			second := request("implicit", "192.0.2.2:465", "alice", 0, time.Hour)
			loggingIn, release := make(chan struct{}), make(chan struct{})
			var firstEnded atomic.Bool
			firstAnswer := make(chan Answer, 1)
			go func() {
				ans, _ := g.decide(context.Background(), first, func() *Entry {
					close(loggingIn)
					<-release
					defer firstEnded.Store(true)
					if tc.acceptEarly {
						// The server accepted the login; the rest of the
						// session goes on until the second request's
						// login has run.
						g.loginAccepted(first)
						<-release
					}
					return r.run()
				})
				firstAnswer <- ans
			}()
			<-loggingIn

			waiting := make(chan struct{})
			g.waited = func() { close(waiting) }
			secondAnswer := make(chan Answer, 1)
			go func() {
				ans, _ := g.decide(context.Background(), second, func() *Entry {
					if ended := firstEnded.Load(); ended == tc.acceptEarly {
						t.Errorf("the second login ran with the first one ended %v", ended)
					}
					defer func() {
						if tc.acceptEarly {
							release <- struct{}{}
						}
					}()
					return r.run()
				})
				secondAnswer <- ans
			}()
			<-waiting
			release <- struct{}{}
			if ans := <-firstAnswer; ans.Provenance != Fresh {
				t.Errorf("first: %v", ans.Provenance)
			}
			if ans := <-secondAnswer; ans.Provenance != tc.want {
				t.Errorf("second: %v, want %v", ans.Provenance, tc.want)
			}
			if n := r.calls.Load(); n != tc.logins {
				t.Errorf("%d probes ran, want %d", n, tc.logins)
			}
		})
	}

	t.Run("deadline", func(t *testing.T) {
		g, r, end := loginRunning(t)
		late := request("implicit", "192.0.2.2:465", "alice", 0, time.Hour)
		late.deadline = time.Now() // passed already: it cannot wait
		ans := decide(t, g, late, r.run)
		end()
		if ans.Provenance != Shared || ans.Entry != nil || !ans.AwaitedLogin {
			t.Errorf("past its deadline: %+v", ans)
		}
		if got, want := notice(ans, &Entry{}, &config.Module{}, r.clock.Now()), "Timed out waiting for another module's login of the same account"; !strings.HasPrefix(got, want) {
			t.Errorf("notice %q, want it to begin %q", got, want)
		}
		if n := r.calls.Load(); n != 1 {
			t.Errorf("%d logins, want 1", n)
		}
	})

	t.Run("caller gone", func(t *testing.T) {
		g, r, end := loginRunning(t)
		ctx, cancel := context.WithCancel(context.Background())
		g.waited = cancel // the caller goes away as soon as it waits
		_, err := g.decide(ctx, request("implicit", "192.0.2.2:465", "alice", 0, time.Hour), r.run)
		end()
		if !errors.Is(err, context.Canceled) {
			t.Errorf("a caller gone while waiting for the login: error %v, want %v", err, context.Canceled)
		}
		if n := r.calls.Load(); n != 1 {
			t.Errorf("%d logins, want 1", n)
		}
	})
}

// Once the server accepted an account's secret, its logins run side by
// side; logins with another secret, or any after one that was not
// accepted, wait for one another again.
func TestGateAcceptedAccountLogsInSideBySide(t *testing.T) {
	g, clock := newTestGate(0, 0)
	r := &runner{clock: clock}
	r.set(true, true, "", "")
	accept := func(req gateRequest) func() *Entry {
		return func() *Entry {
			g.loginAccepted(req)
			return r.run()
		}
	}
	first := request("submission", "192.0.2.1:587", "alice", 0, time.Hour)
	decide(t, g, first, accept(first))

	// waits reports whether a request of module for account waits while
	// another login as account runs.
	waits := func(module, account string) bool {
		t.Helper()
		running, release := make(chan struct{}), make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			g.decide(context.Background(), request("long", "192.0.2.9:587", account, 0, time.Hour), func() *Entry {
				close(running)
				<-release
				return r.run()
			})
		}()
		<-running
		waiting := make(chan struct{})
		g.waited = func() { close(waiting) }
		ran, secondDone := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(secondDone)
			g.decide(context.Background(), request(module, "192.0.2.2:465", account, 0, time.Hour), func() *Entry {
				close(ran)
				return r.run()
			})
		}()
		waited := false
		select {
		case <-ran:
		case <-waiting:
			waited = true
		}
		// Both logins end before the next call.
		close(release)
		<-done
		<-secondDone
		g.waited = nil
		return waited
	}
	if waits("implicit", "alice") {
		t.Error("after an accepted login, a login of the account waited for another")
	}
	if !waits("implicit", "alice:another-secret") {
		t.Error("logins with another secret than the accepted one ran side by side")
	}
	r.set(true, false, prober.PhaseAuth, prober.ReasonTimeout) // AUTH sent, no verdict
	decide(t, g, request("slow", "192.0.2.3:587", "alice", 0, time.Hour), r.run)
	r.set(true, true, "", "")
	if !waits("other", "alice") {
		t.Error("after a login that was not accepted, a login of the account did not wait")
	}
}

// loginRunning starts a login of alice's that the server will accept, and
// returns once it is running; end lets it finish and waits for it.
func loginRunning(t *testing.T) (g *gate, r *runner, end func()) {
	t.Helper()
	g, clock := newTestGate(0, 0)
	r = &runner{clock: clock}
	r.set(true, true, "", "")
	loggingIn, release, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		g.decide(context.Background(), request("submission", "192.0.2.1:587", "alice", 0, time.Hour), func() *Entry {
			close(loggingIn)
			<-release
			return r.run()
		})
	}()
	<-loggingIn
	return g, r, func() {
		close(release)
		<-done
	}
}
