package collector

import (
	"cmp"
	"crypto/rand"
	"encoding/hex"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/smtp-exporter/smtp_exporter/prober"
)

// DefaultHistoryLimit is the default of --history.limit.
const DefaultHistoryLimit = 100

// Entry is one finished probe as the pages show it. It is immutable once
// added to the History.
type Entry struct {
	// ID numbers the probes of this process: /logs?id=ID.
	ID uint64
	// ProbeID is the ID with the process token, unique across restarts; the
	// prober puts it in the canary message.
	ProbeID string
	Time    time.Time // when the probe started
	Module  string
	Target  string
	Timeout time.Duration

	Success  bool
	Duration time.Duration
	// FailurePhase and FailureReason are empty on success.
	FailurePhase  prober.Phase
	FailureReason prober.Reason

	// log is the probe's captured log, formatted when first read.
	log *logText
	// Metrics is the exposition the probe returned, in the text format.
	Metrics string
	// ModuleConfig is the module as the probe ran it, secrets as <secret>:
	// a later reload must not change what the history says about the past.
	ModuleConfig string
	// Result is the prober's finding, its transcript bounded; nil if the
	// prober returned none.
	Result *prober.Result

	// Notice says, for a result that answers a request other than the one
	// that ran its probe, where it came from (shared, reused, held), when
	// the login last ran and when the next may run; "" for a probe run for
	// the request. age is how long before the answer the probe started.
	Provenance Provenance
	Notice     string
	age        time.Duration
}

// Log returns the probe's log as text.
func (e *Entry) Log() string { return e.log.String() }

// History keeps the most recent probes and, for longer, the most recent
// failures, so that the reason a target went down stays visible after many
// successful probes of other targets. It also hands out probe IDs. It is
// safe for concurrent use.
type History struct {
	limit int
	token string

	mu     sync.Mutex
	nextID uint64
	recent []*Entry
	// failed holds failures that have left recent, oldest first.
	failed []*Entry
}

// NewHistory keeps up to limit recent probes, and up to limit older
// failures. A limit of 0 keeps nothing but still numbers the probes.
func NewHistory(limit int) *History {
	return &History{limit: max(limit, 0), token: newProcessToken(), nextID: 1}
}

// newProcessToken returns a random token that tells this process's probe
// IDs from those of earlier runs, whose counters started at 1 too.
func newProcessToken() string {
	var b [4]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	return hex.EncodeToString(b[:])
}

// Limit returns the number of recent probes kept.
func (h *History) Limit() int { return h.limit }

// newID returns the next probe number and the probe ID built from it.
func (h *History) newID() (uint64, string) {
	h.mu.Lock()
	id := h.nextID
	h.nextID++
	h.mu.Unlock()
	return id, h.token + "-" + strconv.FormatUint(id, 10)
}

// parseID accepts the number shown on the pages ("17") and the full probe
// ID found in a canary message's header ("3f9a1c2e-17", only this
// process's). ok is false for anything else.
func (h *History) parseID(s string) (uint64, bool) {
	if token, num, found := strings.Cut(s, "-"); found {
		if token != h.token {
			return 0, false
		}
		s = num
	}
	id, err := strconv.ParseUint(s, 10, 64)
	return id, err == nil
}

// Add records a finished probe.
func (h *History) Add(e *Entry) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.limit == 0 {
		return
	}
	h.recent = append(h.recent, e)
	if len(h.recent) <= h.limit {
		return
	}
	oldest := h.recent[0]
	h.recent = dropFirst(h.recent)
	if !oldest.Success {
		h.failed = append(h.failed, oldest)
		if len(h.failed) > h.limit {
			h.failed = dropFirst(h.failed)
		}
	}
}

// dropFirst removes s[0] in place, clearing the freed slot so that the
// entry can be collected.
func dropFirst(s []*Entry) []*Entry {
	copy(s, s[1:])
	s[len(s)-1] = nil
	return s[:len(s)-1]
}

// List returns the probes kept, newest first.
func (h *History) List() []*Entry {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*Entry, 0, len(h.recent)+len(h.failed))
	for i := len(h.recent) - 1; i >= 0; i-- {
		out = append(out, h.recent[i])
	}
	// Every preserved failure is older than every recent probe.
	for i := len(h.failed) - 1; i >= 0; i-- {
		out = append(out, h.failed[i])
	}
	return out
}

// Get returns the probe with the given number, if it is still kept.
func (h *History) Get(id uint64) (*Entry, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, list := range [][]*Entry{h.recent, h.failed} {
		for _, e := range list {
			if e.ID == id {
				return e, true
			}
		}
	}
	return nil, false
}

// TargetState is what the history knows of one module and target: its
// latest probe and, while it fails, since when.
type TargetState struct {
	Module string
	Target string
	// Last is the latest probe.
	Last *Entry
	// FailingSince is the first failure of the run of failures that Last
	// ends, as far as the history reaches back; nil when Last succeeded.
	FailingSince *Entry
	// Failures is the number of probes in that run that the history holds.
	Failures int
	// LastSuccess is the success just before the run. It is nil when the
	// history does not reach back to it: the target has then failed at
	// least since FailingSince.
	LastSuccess *Entry
	// SinceStart, for a run with no success before it, says that the history
	// still holds every probe of this process: no probe of the target has
	// succeeded since the exporter started.
	SinceStart bool
	// LastFailure is the latest failure kept, Last itself while it fails;
	// nil if none is kept.
	LastFailure *Entry
}

// Failing reports whether the latest probe failed.
func (s *TargetState) Failing() bool { return !s.Last.Success }

// States returns the current state of each module and target among the
// recent probes: failing ones first, the longest failing first, then the
// others by target and module.
//
// Only the recent probes are a complete record: a success that leaves them
// is dropped, so a run of failures is followed no further back than they
// reach. The older failures kept still tell a target's latest failure.
func (h *History) States() []TargetState {
	h.mu.Lock()
	defer h.mu.Unlock()
	type key struct{ module, target string }
	index := make(map[key]int)
	var states []TargetState
	// Newest first, so that a key's first probe is its latest.
	for i := len(h.recent) - 1; i >= 0; i-- {
		e := h.recent[i]
		k := key{e.Module, e.Target}
		j, seen := index[k]
		if !seen {
			j = len(states)
			index[k] = j
			states = append(states, TargetState{Module: e.Module, Target: e.Target, Last: e})
		}
		s := &states[j]
		if !e.Success && s.LastFailure == nil {
			s.LastFailure = e
		}
		if s.Last.Success || s.LastSuccess != nil {
			continue // not failing, or the run's start already found
		}
		if e.Success {
			s.LastSuccess = e
			continue
		}
		s.FailingSince = e
		s.Failures++
	}
	for i := len(h.failed) - 1; i >= 0; i-- {
		e := h.failed[i]
		if j, ok := index[key{e.Module, e.Target}]; ok && states[j].LastFailure == nil {
			states[j].LastFailure = e
		}
	}
	// Until recent is full, nothing has left it.
	complete := len(h.recent) < h.limit
	for i := range states {
		s := &states[i]
		s.SinceStart = complete && s.FailingSince != nil && s.LastSuccess == nil
	}
	slices.SortFunc(states, func(a, b TargetState) int {
		if a.Failing() != b.Failing() {
			if a.Failing() {
				return -1
			}
			return 1
		}
		if a.Failing() {
			if c := a.FailingSince.Time.Compare(b.FailingSince.Time); c != 0 {
				return c
			}
		}
		return cmp.Or(strings.Compare(a.Target, b.Target), strings.Compare(a.Module, b.Module))
	})
	return states
}
