// Package delivery confirms that canaries reach their mailbox. The scrape
// never waits for it: the collector tells the Tracker which canary a module
// sent and when the server accepted it, and a watcher per configured
// mailbox, logged in over IMAP, finds each canary by its probe id header,
// in the mailbox and in the account's Junk folder, measures how long it
// took, and deletes it. It deletes only messages that carry the header
// with an id this process sent, and never touches any other message.
package delivery

import (
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/smtp-exporter/smtp_exporter/config"
)

// Bounds of what the Tracker keeps.
const (
	// MaxRecent is how many recent canaries each module keeps for the
	// pages.
	MaxRecent = 20
	// MaxPending is how many canaries a module may have pending: beyond
	// it, the oldest counts as lost.
	MaxPending = 1000
	// maxFinished is how many ids of canaries already seen or lost are
	// remembered, per module, so that a copy found later is still ours to
	// delete.
	maxFinished = 1000
)

// Canary states.
const (
	StatePending   = "pending"
	StateDelivered = "delivered"
	StateLost      = "lost"
	// StateLostSeen is a canary that arrived after lost_after: it stays
	// counted as lost, and is deleted.
	StateLostSeen = "lost, seen later"
)

// Canary is one canary as the pages show it.
type Canary struct {
	ProbeID string
	// Sent is when the server accepted it (the 250 to DATA).
	Sent time.Time
	// Seen is when the watcher found it; zero while pending or lost.
	Seen time.Time
	// Latency is Seen - Sent; ServerLatency the server's INTERNALDATE -
	// Sent, which has a resolution of one second.
	Latency, ServerLatency time.Duration
	// Folder is the mailbox it was found in; Junk is set when that is the
	// account's Junk folder.
	Folder string
	Junk   bool
	State  string
}

// Status is a module's delivery state, for its metrics and pages.
type Status struct {
	Pending, Late             int
	Delivered, Lost, JunkSeen uint64
	// LastLatency and LastServerLatency are those of the most recent
	// delivered canary; HasLast is false before the first.
	LastLatency, LastServerLatency time.Duration
	HasLast                        bool
	WatcherUp                      bool
	// Recent lists the latest canaries, newest first.
	Recent []Canary
}

// Options configures a Tracker.
type Options struct {
	Logger *slog.Logger
	// Now is the clock; nil is time.Now.
	Now func() time.Time
	// OnLogin is called after every IMAP login with the module it counts
	// for and its outcome: accepted, refused, throttled or failed (the
	// outcomes of smtp_exporter_logins_total).
	OnLogin func(module, outcome string)
	// Timing of the watchers; zero values take the defaults.
	Timing Timing
}

// Tracker keeps the canaries each module sent and what became of them, and
// runs the watchers. One per process; safe for concurrent use.
type Tracker struct {
	logger  *slog.Logger
	now     func() time.Time
	onLogin func(module, outcome string)
	timing  Timing
	latency *prometheus.HistogramVec

	mu       sync.Mutex
	modules  map[string]*moduleState
	watchers map[string]*watcher
	stopped  bool
}

// moduleState is what the Tracker knows of one module with a delivery
// block.
type moduleState struct {
	late, lost time.Duration
	key        string // its watcher's

	pending  map[string]*Canary
	finished map[string]*Canary // seen or lost, kept to delete copies
	order    []string           // finished ids, oldest first
	recent   []*Canary          // newest last

	delivered, lostTotal, junk uint64
	last                       *Canary
}

// NewTracker returns a Tracker without watchers; Apply starts them.
func NewTracker(opts Options) *Tracker {
	t := &Tracker{
		logger:  opts.Logger,
		now:     opts.Now,
		onLogin: opts.OnLogin,
		timing:  opts.Timing.withDefaults(),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "smtp_exporter",
			Name:      "delivery_latency_seconds",
			Help:      "Time from the server's 250 to the end of DATA to the moment the canary was found in its mailbox (or Junk folder), by module.",
			Buckets:   []float64{1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800},
		}, []string{"module"}),
		modules:  map[string]*moduleState{},
		watchers: map[string]*watcher{},
	}
	if t.logger == nil {
		t.logger = slog.New(slog.DiscardHandler)
	}
	if t.now == nil {
		t.now = time.Now
	}
	if t.onLogin == nil {
		t.onLogin = func(string, string) {}
	}
	return t
}

// Collector returns the latency histogram, for /metrics.
func (t *Tracker) Collector() prometheus.Collector { return t.latency }

// Sent records a canary of module, accepted by the server at acceptedAt.
// A module without a delivery block is ignored.
func (t *Tracker) Sent(module, probeID string, acceptedAt time.Time) {
	if probeID == "" || len(probeID) > maxIDLen {
		return
	}
	t.mu.Lock()
	m := t.modules[module]
	if m == nil {
		t.mu.Unlock()
		return
	}
	c := &Canary{ProbeID: probeID, Sent: acceptedAt, State: StatePending}
	m.pending[probeID] = c
	m.remember(c)
	if len(m.pending) > MaxPending {
		oldest := m.oldestPending()
		m.lose(oldest)
	}
	w := t.watchers[m.key]
	t.mu.Unlock()
	if w != nil {
		w.kick()
	}
}

// Status returns a module's state; false for a module without a delivery
// block, and from a nil Tracker.
func (t *Tracker) Status(module string) (Status, bool) {
	if t == nil {
		return Status{}, false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	m := t.modules[module]
	if m == nil {
		return Status{}, false
	}
	now := t.now()
	t.sweepModuleLocked(module, m, now)
	s := Status{
		Pending:   len(m.pending),
		Delivered: m.delivered,
		Lost:      m.lostTotal,
		JunkSeen:  m.junk,
	}
	for _, c := range m.pending {
		if now.Sub(c.Sent) >= m.late {
			s.Late++
		}
	}
	if m.last != nil {
		s.HasLast = true
		s.LastLatency, s.LastServerLatency = m.last.Latency, m.last.ServerLatency
	}
	if w := t.watchers[m.key]; w != nil {
		s.WatcherUp = w.up.Load()
	}
	for i := len(m.recent) - 1; i >= 0; i-- {
		s.Recent = append(s.Recent, *m.recent[i])
	}
	return s, true
}

// Transcript returns the redacted IMAP transcript of the watcher of a
// module, oldest line first; nil when it has none, and from a nil Tracker.
func (t *Tracker) Transcript(module string) []string {
	if t == nil {
		return nil
	}
	t.mu.Lock()
	m := t.modules[module]
	var w *watcher
	if m != nil {
		w = t.watchers[m.key]
	}
	t.mu.Unlock()
	if w == nil {
		return nil
	}
	return w.tr.lines()
}

// claim is called by a watcher for each message carrying the header: it
// reports whether id is a canary this process sent to a module of that
// watcher, recording it as delivered if it was pending.
func (t *Tracker) claim(key, id, folder string, junk bool, internalDate time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	for name, m := range t.modules {
		if m.key != key {
			continue
		}
		if c := m.pending[id]; c != nil {
			delete(m.pending, id)
			c.Seen, c.Folder, c.Junk, c.State = now, folder, junk, StateDelivered
			c.Latency = max(now.Sub(c.Sent), 0)
			if !internalDate.IsZero() {
				// INTERNALDATE has whole seconds: never below 0.
				c.ServerLatency = max(internalDate.Sub(c.Sent), 0)
			}
			m.delivered++
			if junk {
				m.junk++
			}
			m.last = c
			m.finish(c)
			t.latency.WithLabelValues(name).Observe(c.Latency.Seconds())
			t.logger.Debug("Canary delivered", "module", name, "probe_id", id, "folder", folder,
				"latency_seconds", c.Latency.Seconds(), "server_latency_seconds", c.ServerLatency.Seconds())
			return true
		}
		if c := m.finished[id]; c != nil {
			if c.State == StateLost {
				c.Seen, c.Folder, c.Junk, c.State = now, folder, junk, StateLostSeen
				c.Latency = max(now.Sub(c.Sent), 0)
				t.logger.Info("Canary found after lost_after: still counted lost, deleted", "module", name, "probe_id", id, "folder", folder)
			}
			return true
		}
	}
	return false
}

// sweep counts canaries pending longer than lost_after as lost.
func (t *Tracker) sweep() {
	t.mu.Lock()
	t.sweepLocked(t.now())
	t.mu.Unlock()
}

func (t *Tracker) sweepLocked(now time.Time) {
	for name, m := range t.modules {
		t.sweepModuleLocked(name, m, now)
	}
}

func (t *Tracker) sweepModuleLocked(name string, m *moduleState, now time.Time) {
	for _, c := range m.pending {
		if now.Sub(c.Sent) >= m.lost {
			m.lose(c)
			t.logger.Warn("Canary lost: not found within lost_after", "module", name, "probe_id", c.ProbeID,
				"lost_after", m.lost.String())
		}
	}
}

// pendingFor reports whether any module of a watcher has canaries pending,
// so that it looks more often.
func (t *Tracker) pendingFor(key string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, m := range t.modules {
		if m.key == key && len(m.pending) > 0 {
			return true
		}
	}
	return false
}

func (m *moduleState) lose(c *Canary) {
	delete(m.pending, c.ProbeID)
	c.State = StateLost
	m.lostTotal++
	m.finish(c)
}

func (m *moduleState) finish(c *Canary) {
	m.finished[c.ProbeID] = c
	m.order = append(m.order, c.ProbeID)
	for len(m.order) > maxFinished {
		delete(m.finished, m.order[0])
		m.order = m.order[1:]
	}
}

func (m *moduleState) remember(c *Canary) {
	m.recent = append(m.recent, c)
	if len(m.recent) > MaxRecent {
		m.recent = slices.Delete(m.recent, 0, len(m.recent)-MaxRecent)
	}
}

func (m *moduleState) oldestPending() *Canary {
	var oldest *Canary
	for _, c := range m.pending {
		if oldest == nil || c.Sent.Before(oldest.Sent) {
			oldest = c
		}
	}
	return oldest
}

// watchSpec is what a watcher is started with: modules with the same spec
// share it.
type watchSpec struct {
	key     string
	imap    config.IMAP
	backoff time.Duration
	// module is the one its logins count for: the first by name.
	module string
}

// Apply makes the watchers match cfg: a watcher whose mailbox, account and
// settings stay is kept, with its session; one no module uses any more is
// stopped; new ones are started. Counters of modules that keep a delivery
// block stay; those of modules without one are forgotten. It waits for
// stopped watchers to end.
func (t *Tracker) Apply(cfg *config.Config) {
	specs := map[string]watchSpec{}
	type modCfg struct {
		d   *config.Delivery
		key string
	}
	mods := map[string]modCfg{}
	for _, name := range cfg.ModuleNames() {
		m := cfg.Modules[name]
		if m.SMTP.Mail == nil || m.SMTP.Mail.Delivery == nil {
			continue
		}
		d := m.SMTP.Mail.Delivery
		backoff := time.Duration(m.AuthFailureBackoff)
		key := specKey(d.IMAP, backoff)
		if _, ok := specs[key]; !ok {
			specs[key] = watchSpec{key: key, imap: d.IMAP, backoff: backoff, module: name}
		}
		mods[name] = modCfg{d: d, key: key}
	}

	t.mu.Lock()
	if t.stopped {
		t.mu.Unlock()
		return
	}
	for name := range t.modules {
		if _, ok := mods[name]; !ok {
			delete(t.modules, name)
		}
	}
	for name, mc := range mods {
		m := t.modules[name]
		if m == nil {
			m = &moduleState{pending: map[string]*Canary{}, finished: map[string]*Canary{}}
			t.modules[name] = m
		}
		m.late, m.lost = time.Duration(mc.d.LateAfter), time.Duration(mc.d.LostAfter)
		m.key = mc.key
	}
	var stop []*watcher
	for key, w := range t.watchers {
		if spec, ok := specs[key]; !ok {
			stop = append(stop, w)
			delete(t.watchers, key)
		} else {
			w.setModule(spec.module)
		}
	}
	var start []*watcher
	for key, spec := range specs {
		if _, ok := t.watchers[key]; !ok {
			w := newWatcher(t, spec)
			t.watchers[key] = w
			start = append(start, w)
		}
	}
	t.mu.Unlock()
	for _, w := range stop {
		w.stop()
	}
	for _, w := range start {
		go w.run()
	}
}

// Stop ends every watcher and waits for them; the Tracker starts no more.
func (t *Tracker) Stop() {
	t.mu.Lock()
	t.stopped = true
	ws := make([]*watcher, 0, len(t.watchers))
	for _, w := range t.watchers {
		ws = append(ws, w)
	}
	clear(t.watchers)
	t.mu.Unlock()
	for _, w := range ws {
		w.stop()
	}
}

// watcherKeys is for tests.
func (t *Tracker) watcherKeys() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	keys := make([]string, 0, len(t.watchers))
	for k := range t.watchers {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
