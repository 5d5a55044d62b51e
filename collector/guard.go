package collector

import (
	"container/list"
	"context"
	"crypto/sha256"
	"strings"
	"sync"
	"time"

	"github.com/smtp-exporter/smtp_exporter/prober"
)

// DefaultGuardLimit bounds the results the guard keeps for reuse, so that
// probes of arbitrary targets cannot grow memory without bound.
const DefaultGuardLimit = 10000

// guardOutcome says where a request's result came from.
type guardOutcome int

const (
	// outcomeFresh: a probe ran for this request.
	outcomeFresh guardOutcome = iota
	// outcomeShared: a probe of the same module and target was already
	// running; this request waited for its result.
	outcomeShared
	// outcomeReused: the module's min_interval had not passed since the
	// last probe; its result is returned again.
	outcomeReused
	// outcomeHeld: the last login was refused and auth_failure_backoff
	// holds further logins; the refusal is returned again.
	outcomeHeld
	// outcomeAbandoned: the request's own deadline passed while it waited
	// for a shared probe.
	outcomeAbandoned
)

// guardPolicy is what the guard needs to know about the module of a request.
type guardPolicy struct {
	// fingerprint identifies the module's configuration: a result of a
	// module since changed by a reload is never reused.
	fingerprint [sha256.Size]byte
	// credentials is a SHA-256 of the secrets as read for this request;
	// a hold only applies while they are unchanged. hasCredentials is false
	// when they could not be read (the probe will fail in setup without
	// logging in).
	credentials    [sha256.Size]byte
	hasCredentials bool
	minInterval    time.Duration
	// backoff is the module's auth_failure_backoff, 0 when it does not
	// apply (no auth, or expect_auth_rejected).
	backoff time.Duration
}

// guard keeps the exporter from logging in more often than it must: probes
// of one module and target that run at the same time share one session (a
// keyed single flight), a result younger than the module's min_interval is
// returned again, and an authentication rejection holds further logins for
// auth_failure_backoff, so that two Prometheus replicas scraping every 15
// seconds with a wrong password cannot lock the account.
//
// Stored results are bounded: at most limit of them, least recently used
// dropped first, expired ones dropped when found. Passwords are never kept,
// only the SHA-256 in guardPolicy. It is safe for concurrent use.
type guard struct {
	limit int
	now   func() time.Time

	mu       sync.Mutex
	inflight map[flightKey]*flight
	// stored maps a key to its element in lru, whose value is *storedResult;
	// the front of lru is the most recently used.
	stored map[string]*list.Element
	lru    *list.List
	// lastSweep is when sweep last looked for expired results.
	lastSweep time.Time
}

// sweepEvery is the shortest time between two walks of a full guard for
// expired results.
const sweepEvery = time.Second

type flightKey struct {
	key         string
	fingerprint [sha256.Size]byte
}

// flight is a probe running for one or more requests.
type flight struct {
	done  chan struct{}
	entry *Entry // set before done is closed
	// deadline is when the request that started the probe must answer;
	// the probe ends by then.
	deadline time.Time
	// waiters counts the requests waiting for it, under the guard's mu.
	waiters int
}

// storedResult is the last result of a key that may be reused.
type storedResult struct {
	key         string
	fingerprint [sha256.Size]byte
	entry       *Entry
	// reuseUntil ends min_interval; holdUntil ends the hold after a
	// rejection (zero for none). Both count from the probe's start.
	reuseUntil time.Time
	holdUntil  time.Time
	// credentials is the hash of the credentials that were refused.
	credentials    [sha256.Size]byte
	hasCredentials bool
}

func (s *storedResult) expiry() time.Time {
	if s.holdUntil.After(s.reuseUntil) {
		return s.holdUntil
	}
	return s.reuseUntil
}

func newGuard(limit int) *guard {
	if limit <= 0 {
		limit = DefaultGuardLimit
	}
	return &guard{
		limit:    limit,
		now:      time.Now,
		inflight: map[flightKey]*flight{},
		stored:   map[string]*list.Element{},
		lru:      list.New(),
	}
}

// guardKey names a module and target. Host names are case-insensitive.
func guardKey(module, target string) string {
	return module + "\x00" + strings.ToLower(target)
}

// guardResult is what do returns.
type guardResult struct {
	entry   *Entry
	outcome guardOutcome
	// age is how long ago the reused or held probe started; 0 otherwise.
	age time.Duration
	// released is set when a hold ended because the credentials or the
	// module changed: worth a log line.
	released string
}

// do returns the result for key: a stored one when the policy allows it,
// the result of a probe of key already running, or that of run, which it
// calls at most once per key at a time. deadline is when this request must
// answer: a request that must answer before a running probe ends gives up
// then, any other waits for the result, which comes as soon after its own
// deadline as it would had it run the probe itself. ctx (the request's)
// ends any wait.
func (g *guard) do(ctx context.Context, deadline time.Time, key string, policy guardPolicy, run func() *Entry) guardResult {
	now := g.now()
	g.mu.Lock()
	res, ok, released := g.lookup(key, policy, now)
	if ok {
		g.mu.Unlock()
		return res
	}
	fk := flightKey{key: key, fingerprint: policy.fingerprint}
	if f, running := g.inflight[fk]; running {
		f.waiters++
		g.mu.Unlock()
		if deadline.Before(f.deadline) {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, deadline)
			defer cancel()
		}
		select {
		case <-f.done:
			return guardResult{entry: f.entry, outcome: outcomeShared, released: released}
		case <-ctx.Done():
			return guardResult{outcome: outcomeAbandoned, released: released}
		}
	}
	f := &flight{done: make(chan struct{}), deadline: deadline}
	g.inflight[fk] = f
	g.mu.Unlock()

	defer func() {
		g.mu.Lock()
		delete(g.inflight, fk)
		if f.entry != nil {
			g.store(key, policy, f.entry)
		}
		g.mu.Unlock()
		close(f.done)
	}()
	f.entry = run()
	return guardResult{entry: f.entry, outcome: outcomeFresh, released: released}
}

// lookup finds a stored result that may stand in for a probe. It drops
// what has expired or no longer applies. g.mu must be held.
func (g *guard) lookup(key string, policy guardPolicy, now time.Time) (res guardResult, ok bool, released string) {
	el, found := g.stored[key]
	if !found {
		return guardResult{}, false, ""
	}
	s := el.Value.(*storedResult)
	held := !s.holdUntil.IsZero() && now.Before(s.holdUntil)
	switch {
	case s.fingerprint != policy.fingerprint:
		g.remove(el)
		if held {
			released = "the module's configuration changed"
		}
		return guardResult{}, false, released
	case held && policy.backoff > 0 && policy.hasCredentials && s.hasCredentials && s.credentials == policy.credentials:
		g.lru.MoveToFront(el)
		return guardResult{entry: s.entry, outcome: outcomeHeld, age: now.Sub(s.entry.Time)}, true, ""
	case held && policy.hasCredentials:
		// New credentials: try them. The hold stays stored until the
		// probe's result replaces it.
		return guardResult{}, false, "the credentials changed"
	case held:
		// The credentials cannot be read now: the probe fails in setup
		// without a login, and the hold stays.
		return guardResult{}, false, ""
	case policy.minInterval > 0 && now.Before(s.reuseUntil):
		g.lru.MoveToFront(el)
		return guardResult{entry: s.entry, outcome: outcomeReused, age: now.Sub(s.entry.Time)}, true, ""
	case !now.Before(s.expiry()):
		g.remove(el)
	}
	return guardResult{}, false, ""
}

// store keeps entry when the policy may reuse it: for min_interval, or as
// a hold after an authentication rejection. g.mu must be held.
func (g *guard) store(key string, policy guardPolicy, entry *Entry) {
	s := &storedResult{
		key:            key,
		fingerprint:    policy.fingerprint,
		entry:          slimEntry(entry),
		credentials:    policy.credentials,
		hasCredentials: policy.hasCredentials,
	}
	if policy.minInterval > 0 {
		s.reuseUntil = entry.Time.Add(policy.minInterval)
	}
	if policy.backoff > 0 && isAuthRejection(entry) {
		s.holdUntil = entry.Time.Add(policy.backoff)
	}
	if el, found := g.stored[key]; found {
		old := el.Value.(*storedResult)
		// A probe that stopped before logging in says nothing about the
		// credentials: it must not end a hold.
		if !old.holdUntil.IsZero() && s.holdUntil.IsZero() && entry.FailurePhase == prober.PhaseSetup &&
			old.fingerprint == s.fingerprint && g.now().Before(old.holdUntil) {
			return
		}
		g.remove(el)
	}
	if s.reuseUntil.IsZero() && s.holdUntil.IsZero() {
		return
	}
	g.sweep()
	g.stored[key] = g.lru.PushFront(s)
}

// sweep makes room for one more result: expired results go first, then the
// least recently used. g.mu must be held.
func (g *guard) sweep() {
	if g.lru.Len() < g.limit {
		return
	}
	// The walk for expired results visits them all, under the lock every
	// probe takes: done on every store of a full guard it made each probe
	// cost in proportion to the number of targets (90 µs at 10,000). At
	// most once per sweepEvery, the least recently used result makes room
	// in between.
	if now := g.now(); now.Sub(g.lastSweep) >= sweepEvery {
		g.lastSweep = now
		for el := g.lru.Back(); el != nil; {
			prev := el.Prev()
			if !now.Before(el.Value.(*storedResult).expiry()) {
				g.remove(el)
			}
			el = prev
		}
	}
	for g.lru.Len() >= g.limit {
		g.remove(g.lru.Back())
	}
}

func (g *guard) remove(el *list.Element) {
	delete(g.stored, el.Value.(*storedResult).key)
	g.lru.Remove(el)
}

// waiting returns how many requests wait for a running probe.
func (g *guard) waiting() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for _, f := range g.inflight {
		n += f.waiters
	}
	return n
}

// size returns the number of stored results.
func (g *guard) size() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.lru.Len()
}

// isAuthRejection reports a probe that failed because the server refused
// the credentials with a 5xx: the failure that, repeated, locks accounts.
func isAuthRejection(e *Entry) bool {
	return !e.Success && e.FailurePhase == prober.PhaseAuth &&
		(e.FailureReason == prober.ReasonAuthRejected || e.FailureReason == prober.ReasonTokenRejected)
}

// slimEntry is what a stored result keeps of an entry: enough to render its
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
