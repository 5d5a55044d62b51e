package collector

import (
	"container/list"
	"context"
	"crypto/sha256"
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/smtp-exporter/smtp_exporter/config"
	"github.com/smtp-exporter/smtp_exporter/prober"
)

// DefaultGateLimit bounds the results the gate keeps for reuse and the
// accounts it remembers, so that probes of arbitrary targets cannot grow
// memory without bound.
const DefaultGateLimit = 10000

// Provenance says where the result answering a request came from.
type Provenance int

const (
	// Fresh: a probe ran for this request.
	Fresh Provenance = iota
	// Shared: a probe of the same module and address was running; this
	// request waited for its result.
	Shared
	// Reused: the module's min_interval had not passed since the last
	// probe of the address; its result is returned again.
	Reused
	// Held: the account's last login was refused or throttled, and
	// auth_failure_backoff holds further logins of that account.
	Held
)

func (p Provenance) String() string {
	switch p {
	case Shared:
		return "shared"
	case Reused:
		return "reused"
	case Held:
		return "held"
	}
	return "fresh"
}

// errBusy is returned when a probe would have to run and
// --probe.max-concurrent probes already do.
var errBusy = errors.New("too many probes in flight")

// gateRequest is what the gate needs to know about one request.
type gateRequest struct {
	// key names the results that may stand in for each other: one module,
	// as configured now, and one dialled address.
	key resultKey
	// account identifies the credentials; hasAccount is false for a module
	// that takes no part in holds (no auth, auth_failure_backoff 0,
	// expect_auth_rejected) or whose credentials cannot be read now (it
	// fails in setup without logging in).
	account    config.Account
	hasAccount bool
	// minInterval is the module's min_interval, backoff its
	// auth_failure_backoff; 0 is off.
	minInterval time.Duration
	backoff     time.Duration
	// deadline is when this request must answer.
	deadline time.Time
	// direct is set for a target that cannot be dialled (invalid,
	// unresolvable, not allowed): its probe fails in setup without a login,
	// so it runs without sharing, holds or reuse, which are keyed by an
	// address it does not have.
	direct bool
}

type resultKey struct {
	module      string
	fingerprint [sha256.Size]byte
	address     string
}

// Answer is the gate's decision for one request.
type Answer struct {
	// Entry is the probe whose result answers the request. It is nil for a
	// held request of a module or address other than the one refused, and
	// for a request whose deadline passed while it waited.
	Entry      *Entry
	Provenance Provenance
	// Hold describes the hold of a Held answer.
	Hold *Hold
	// NextLogin is the earliest time a login may run for this request
	// again; zero for no limit.
	NextLogin time.Time
	// Released is set when a hold of the account ended because its
	// credentials changed.
	Released bool
	// AwaitedLogin is set, with no Entry, when the request's deadline
	// passed while it waited for another login of its account.
	AwaitedLogin bool
}

// Hold is a pause of an account's logins after a refusal or throttling.
type Hold struct {
	Reason prober.Reason
	// Since is when the probe that was refused started; Until when the
	// next login may run.
	Since, Until time.Time
	// Module, Target and ProbeID name that probe.
	Module, Target, ProbeID string
	// Code and Enhanced are the reply to its AUTH.
	Code     int
	Enhanced string
	// Deciding is set when the hold has passed and another request's login
	// is running: this request waits for that login's verdict.
	Deciding bool
}

// gate decides whether a login may happen now. It stands between the
// /probe handler and the prober, keyed by what a login costs rather than by
// how the request spells it:
//
//   - Probes of one module and dialled address that run at the same time
//     share one session. A request never receives a timeout produced under
//     a shorter deadline than its own: it runs its own probe instead.
//   - A result younger than the module's min_interval answers again, unless
//     it is a timeout.
//   - A login refused or throttled (prober.Reason.HoldsLogins) holds every
//     login of that account, whatever the module and target, for the
//     refused module's auth_failure_backoff. After the hold, one login
//     decides: other requests of the account are held until it ends.
//   - Until a login of an account with its secret was accepted, one login
//     of it runs at a time: a request of another module or address of the
//     account waits for the running one's verdict, so that a wrong
//     password is refused once, not once per module scraped in the same
//     instant. Once the server accepted the secret, logins run side by side
//     again, until one is not accepted.
//
// Only a probe that runs takes a --probe.max-concurrent slot. Stored results
// are bounded and slim; no secret is kept, only the account's SHA-256. It is
// safe for concurrent use.
type gate struct {
	limit int
	now   func() time.Time
	// slots is a semaphore of --probe.max-concurrent tokens, nil when
	// unlimited. promhttp's MaxRequestsInFlight cannot do this: the
	// handler is made per request.
	slots chan struct{}
	m     gateMetrics
	// waited, when set, is called as a request starts waiting for a
	// running probe (tests synchronise on it).
	waited func()

	mu      sync.Mutex
	flights map[resultKey]*flight
	// logins maps an account (by its ID: lockouts count a user's
	// failures whatever the password) to the flight logging in as it,
	// until the server accepted the login or the flight ended.
	logins map[[sha256.Size]byte]*flight
	// accepted maps an account's ID to the secret the server accepted at
	// its last login, whose logins need not wait for one another.
	accepted map[[sha256.Size]byte][sha256.Size]byte
	// stored maps a key to its element in lru, whose value is *storedResult;
	// the front of lru is the most recently used.
	stored map[resultKey]*list.Element
	lru    *list.List
	// accounts holds the accounts whose last login was refused or
	// throttled, each with the secret refused: another secret of the
	// account is not held by it.
	accounts map[config.Account]*account
	// lastSweep is when sweep last looked for expired results.
	lastSweep time.Time
}

// gateMetrics are the exporter's own metrics about logins, for /metrics.
type gateMetrics struct {
	inFlight prometheus.Gauge
	logins   *prometheus.CounterVec
	held     *prometheus.CounterVec
}

func newGateMetrics() gateMetrics {
	return gateMetrics{
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "smtp_exporter",
			Name:      "probes_in_flight",
			Help:      "Probes running now; requests waiting for another request's probe are not counted.",
		}),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "smtp_exporter",
			Name:      "logins_total",
			Help:      "Logins (AUTH commands) made by probes, by module and outcome: accepted, refused (credentials refused), throttled, failed (anything else).",
		}, []string{"module", "outcome"}),
		held: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "smtp_exporter",
			Name:      "logins_held_total",
			Help:      "Probe requests answered without a login because the account's logins were held, by module and the reason that started the hold.",
		}, []string{"module", "reason"}),
	}
}

func (m gateMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.inFlight, m.logins, m.held}
}

// The outcome label values of smtp_exporter_logins_total.
const (
	loginAccepted  = "accepted"
	loginRefused   = "refused"   // the credentials were refused
	loginThrottled = "throttled" // a reply that holds logins without refusing them
	loginFailed    = "failed"    // anything else: timeout, policy refusal, ...
)

var loginOutcomes = []string{loginAccepted, loginRefused, loginThrottled, loginFailed}

// withModules returns collectors for /metrics whose logins_total has a
// series, 0 until the first login, for every outcome of every module of the
// live configuration that logs in: a counter that appears only at its
// first increment loses that increment to rate() and increase().
func (m gateMetrics) withModules(sc *config.SafeConfig) []prometheus.Collector {
	return []prometheus.Collector{m.inFlight, m.held, loginCounters{m.logins, sc}}
}

type loginCounters struct {
	*prometheus.CounterVec
	config *config.SafeConfig
}

func (c loginCounters) Collect(ch chan<- prometheus.Metric) {
	if cfg := c.config.Get(); cfg != nil {
		for name, module := range cfg.Modules {
			if module.SMTP.Auth != nil || (module.SMTP.Mail != nil && module.SMTP.Mail.Delivery != nil) {
				for _, outcome := range loginOutcomes {
					c.WithLabelValues(name, outcome)
				}
			}
		}
	}
	c.CounterVec.Collect(ch)
}

// flight is a probe running for one or more requests.
type flight struct {
	done  chan struct{}
	entry *Entry // set before done is closed
	// verdict is closed when the flight stops being its account's login
	// (see gate.logins): its login was accepted, or the flight ended.
	verdict chan struct{}
	// deadline is when the request that started the probe must answer;
	// the probe ends by then.
	deadline time.Time
}

// storedResult is the last result of a key, kept for min_interval.
type storedResult struct {
	key        resultKey
	entry      *Entry
	reuseUntil time.Time
}

// account is what the gate remembers of an account whose last login was
// refused or throttled.
type account struct {
	hold Hold
	// key and entry are the refused probe's, returned again to requests of
	// the same key during the hold.
	key   resultKey
	entry *Entry
	// deciding is set while a login runs after the hold ended.
	deciding bool
}

func newGate(limit, maxConcurrent int) *gate {
	if limit <= 0 {
		limit = DefaultGateLimit
	}
	g := &gate{
		limit:    limit,
		now:      time.Now,
		m:        newGateMetrics(),
		flights:  map[resultKey]*flight{},
		logins:   map[[sha256.Size]byte]*flight{},
		accepted: map[[sha256.Size]byte][sha256.Size]byte{},
		stored:   map[resultKey]*list.Element{},
		lru:      list.New(),
		accounts: map[config.Account]*account{},
	}
	if maxConcurrent > 0 {
		g.slots = make(chan struct{}, maxConcurrent)
	}
	return g
}

// decide answers a request: with a hold, a stored result, the result of a
// running probe of the same key, or that of run, which it calls when a login
// may happen now. run must end by req.deadline. ctx (the request's) ends
// any wait; errBusy says that a probe would have had to run and no slot was
// free; ctx's error, that the request went away.
func (g *gate) decide(ctx context.Context, req gateRequest, run func() *Entry) (Answer, error) {
	// shorter is set once a probe that had less time than this request
	// timed out: this request then runs its own rather than join another
	// such probe.
	shorter := false
	released := false
	if req.direct {
		if !g.acquire() {
			return Answer{}, errBusy
		}
		return Answer{Entry: g.fly(req, nil, nil, run), Provenance: Fresh}, nil
	}
	for {
		g.mu.Lock()
		now := g.now()
		g.sweep(now)
		ans, ok := g.lookup(req, now)
		released = released || ans.Released
		if ok {
			g.mu.Unlock()
			if ans.Provenance == Held {
				g.m.held.WithLabelValues(req.key.module, string(ans.Hold.Reason)).Inc()
			}
			return ans, nil
		}
		if f, running := g.flights[req.key]; running && !(shorter && f.deadline.Before(req.deadline)) {
			g.mu.Unlock()
			ans, retry, err := g.wait(ctx, req, f)
			if !retry {
				ans.Released = released
				return ans, err
			}
			shorter = true
			continue
		}
		if login := g.logins[req.account.ID]; req.hasAccount && login != nil {
			g.mu.Unlock()
			if decided, err := g.await(ctx, login.verdict, req.deadline); !decided {
				return Answer{Provenance: Shared, AwaitedLogin: true, Released: released}, err
			}
			continue // a refusal holds this request; an acceptance lets it log in
		}
		if !g.acquire() {
			g.mu.Unlock()
			return Answer{}, errBusy
		}
		f := &flight{done: make(chan struct{}), deadline: req.deadline}
		g.flights[req.key] = f
		var decider *account
		if req.hasAccount {
			if !g.trusted(req) {
				f.verdict = make(chan struct{})
				g.logins[req.account.ID] = f
			}
			if a := g.accounts[req.account]; a != nil {
				a.deciding, decider = true, a
			}
		}
		g.mu.Unlock()
		return Answer{Entry: g.fly(req, f, decider, run), Provenance: Fresh, Released: released}, nil
	}
}

// acquire takes a slot for a probe, if one is free.
func (g *gate) acquire() bool {
	if g.slots == nil {
		return true
	}
	select {
	case g.slots <- struct{}{}:
		return true
	default:
		return false
	}
}

// lookup finds an answer that needs no probe: a hold, or a result within
// min_interval. When the account is held with another secret, the answer
// that is not ok says that this one is tried. g.mu must be held.
func (g *gate) lookup(req gateRequest, now time.Time) (Answer, bool) {
	if req.hasAccount {
		a := g.accounts[req.account]
		if a == nil && g.heldWithAnotherSecret(req.account, now) {
			return Answer{Released: true}, false
		}
		if a != nil {
			switch {
			case now.Before(a.hold.Until):
				hold := a.hold
				ans := Answer{Provenance: Held, Hold: &hold, NextLogin: hold.Until}
				if a.key == req.key {
					ans.Entry = a.entry
				}
				return ans, true
			case a.deciding && g.flights[req.key] == nil:
				// The deciding login is another key's: wait for its verdict
				// held. (A request of its own key shares it.)
				hold := a.hold
				hold.Deciding = true
				return Answer{Provenance: Held, Hold: &hold}, true
			}
		}
	}
	el, found := g.stored[req.key]
	if !found {
		return Answer{}, false
	}
	s := el.Value.(*storedResult)
	if !now.Before(s.reuseUntil) {
		g.remove(el)
		return Answer{}, false
	}
	g.lru.MoveToFront(el)
	return Answer{Entry: s.entry, Provenance: Reused, NextLogin: s.reuseUntil}, true
}

// heldWithAnotherSecret reports whether the account's logins are held
// after a refusal of a secret other than acc's. g.mu must be held.
func (g *gate) heldWithAnotherSecret(acc config.Account, now time.Time) bool {
	for other, a := range g.accounts {
		if other.ID == acc.ID && now.Before(a.hold.Until) {
			return true
		}
	}
	return false
}

// wait waits for a running probe. retry is set when its result is a
// timeout produced under a shorter deadline than this request's, which
// then has time to run its own.
func (g *gate) wait(ctx context.Context, req gateRequest, f *flight) (ans Answer, retry bool, err error) {
	// The probe ends by its own deadline; only an earlier one of this
	// request's needs watching.
	var until time.Time
	if req.deadline.Before(f.deadline) {
		until = req.deadline
	}
	if ended, err := g.await(ctx, f.done, until); !ended {
		return Answer{Provenance: Shared}, false, err
	}
	if f.entry.FailureReason == prober.ReasonTimeout && f.deadline.Before(req.deadline) && time.Now().Before(req.deadline) {
		return Answer{}, true, nil
	}
	return Answer{Entry: f.entry, Provenance: Shared}, false, nil
}

// await waits for done to be closed and reports whether it was. It gives up
// when ctx ends, with ctx's error (the caller went away), or when until
// passes, unless until is zero, with none (the request's deadline passed
// first).
func (g *gate) await(ctx context.Context, done <-chan struct{}, until time.Time) (bool, error) {
	if g.waited != nil {
		g.waited()
	}
	waitCtx := ctx
	if !until.IsZero() {
		var cancel context.CancelFunc
		waitCtx, cancel = context.WithDeadline(ctx, until)
		defer cancel()
	}
	select {
	case <-done:
		return true, nil
	case <-waitCtx.Done():
		return false, ctx.Err()
	}
}

// fly runs the probe of flight f (nil for a direct request) and records
// what it says about the account and the key.
func (g *gate) fly(req gateRequest, f *flight, decider *account, run func() *Entry) *Entry {
	g.m.inFlight.Inc()
	defer g.m.inFlight.Dec()
	if g.slots != nil {
		defer func() { <-g.slots }()
	}
	if f == nil {
		return run()
	}
	defer func() {
		g.mu.Lock()
		if g.flights[req.key] == f {
			delete(g.flights, req.key)
		}
		if decider != nil {
			decider.deciding = false
		}
		if f.entry != nil {
			g.record(req, f.entry)
		}
		// After record: a request that waited for the verdict sees the
		// hold a refusal set.
		g.endLogin(req, f)
		g.mu.Unlock()
		close(f.done)
	}()
	f.entry = run()
	return f.entry
}

// loginAccepted records that the server accepted req's secret, and lets
// the requests waiting for the verdict on the login of req's flight run
// their own. The prober calls it (prober.WithLoginAccepted).
func (g *gate) loginAccepted(req gateRequest) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.accepted[req.account.ID] = req.account.Secret
	if f := g.flights[req.key]; f != nil {
		g.endLogin(req, f)
	}
}

// trusted reports whether the server accepted req's secret at the
// account's last login. g.mu must be held.
func (g *gate) trusted(req gateRequest) bool {
	secret, ok := g.accepted[req.account.ID]
	return ok && secret == req.account.Secret
}

// endLogin ends f's turn as its account's login, if it has it. g.mu must be
// held.
func (g *gate) endLogin(req gateRequest, f *flight) {
	if req.hasAccount && g.logins[req.account.ID] == f {
		delete(g.logins, req.account.ID)
		close(f.verdict)
	}
}

// record counts a login and keeps what entry says for later requests: a
// hold of the account after a refusal, its end after an accepted login,
// the result for min_interval. g.mu must be held.
func (g *gate) record(req gateRequest, entry *Entry) {
	r := entry.Result
	if r != nil && r.AuthAttempted {
		g.m.logins.WithLabelValues(req.key.module, loginOutcome(r)).Inc()
		if req.hasAccount {
			if !r.AuthSuccess { // (loginAccepted records an acceptance)
				delete(g.accepted, req.account.ID)
			}
			switch {
			case r.AuthSuccess:
				delete(g.accounts, req.account)
			case entry.FailurePhase == prober.PhaseAuth && entry.FailureReason.HoldsLogins() && req.backoff > 0:
				g.hold(req, entry)
			}
		}
	}
	if req.minInterval > 0 && entry.FailureReason != prober.ReasonTimeout {
		g.store(req.key, entry, entry.Time.Add(req.minInterval))
	}
}

// loginOutcome is the outcome label of smtp_exporter_logins_total.
func loginOutcome(r *prober.Result) string {
	switch {
	case r.AuthSuccess:
		return loginAccepted
	case r.Failure == nil:
		return loginFailed
	case r.Failure.Reason.RefusesCredentials():
		return loginRefused
	case r.Failure.Reason.HoldsLogins():
		return loginThrottled
	}
	return loginFailed
}

// hold starts a hold of the request's account after entry's refusal.
// g.mu must be held.
func (g *gate) hold(req gateRequest, entry *Entry) {
	a := &account{key: req.key, entry: slimEntry(entry), hold: Hold{
		Reason: entry.FailureReason, Since: entry.Time, Until: entry.Time.Add(req.backoff),
		Module: entry.Module, Target: entry.Target, ProbeID: entry.ProbeID,
	}}
	if pr, ok := entry.Result.Phase(prober.PhaseAuth); ok {
		a.hold.Code, a.hold.Enhanced = pr.Code, pr.Enhanced
	}
	g.accounts[req.account] = a
}

// store keeps entry for reuse until reuseUntil. g.mu must be held.
func (g *gate) store(key resultKey, entry *Entry, reuseUntil time.Time) {
	if el, found := g.stored[key]; found {
		g.remove(el)
	}
	for g.lru.Len() >= g.limit {
		g.remove(g.lru.Back())
	}
	g.stored[key] = g.lru.PushFront(&storedResult{key: key, entry: slimEntry(entry), reuseUntil: reuseUntil})
}

// sweepEvery is the shortest time between two walks of the gate for
// expired results and forgotten accounts.
const sweepEvery = time.Second

// sweep drops, at most once per sweepEvery, the results whose min_interval
// has passed and the accounts whose hold passed longer ago than it lasted,
// so that memory follows the probes of the last minutes, not the most ever
// seen. The walk visits every result under the lock every probe takes: done
// on every request it made each probe cost in proportion to the number of
// targets (90 µs at 10,000). g.mu must be held.
func (g *gate) sweep(now time.Time) {
	if now.Sub(g.lastSweep) < sweepEvery {
		return
	}
	g.lastSweep = now
	for el := g.lru.Back(); el != nil; {
		prev := el.Prev()
		if !now.Before(el.Value.(*storedResult).reuseUntil) {
			g.remove(el)
		}
		el = prev
	}
	for k, a := range g.accounts {
		if !a.deciding && now.Sub(a.hold.Until) > a.hold.Until.Sub(a.hold.Since) {
			delete(g.accounts, k)
		}
	}
}

func (g *gate) remove(el *list.Element) {
	delete(g.stored, el.Value.(*storedResult).key)
	g.lru.Remove(el)
}

// size returns the number of stored results.
func (g *gate) size() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.lru.Len()
}

// slimEntry is what the gate keeps of an entry: enough to render its
// metrics again, not its log or transcript, which the history holds while
// it keeps the probe.
func slimEntry(e *Entry) *Entry {
	slim := *e
	slim.log, slim.Metrics, slim.ModuleConfig = nil, "", ""
	if e.Result != nil {
		r := *e.Result
		r.Transcript = nil
		slim.Result = &r
	}
	return &slim
}
