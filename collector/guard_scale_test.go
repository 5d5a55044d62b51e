package collector

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkGuardStoreFull stores results of modules with min_interval
// into a guard already holding limit unexpired ones, as with thousands of
// targets: the cost of a probe's bookkeeping must not grow with them.
func BenchmarkGuardStoreFull(b *testing.B) {
	for _, limit := range []int{100, 10000} {
		b.Run(fmt.Sprintf("%d targets", limit), func(b *testing.B) {
			g := newGuard(limit)
			policy := guardPolicy{minInterval: time.Hour}
			entry := &Entry{Time: time.Now(), Success: true}
			run := func() *Entry { return entry }
			for i := range limit {
				g.do(context.Background(), time.Now().Add(time.Minute), fmt.Sprintf("m\x00target-%d", i), policy, run)
			}
			i := limit
			b.ReportAllocs()
			for b.Loop() {
				i++
				g.do(context.Background(), time.Now().Add(time.Minute), fmt.Sprintf("m\x00target-%d", i), policy, run)
			}
			if g.size() != limit {
				b.Fatalf("guard holds %d results, limit %d", g.size(), limit)
			}
		})
	}
}

// A full guard still drops expired results before recent ones, once its
// walk for them is due.
func TestFullGuardDropsExpiredFirst(t *testing.T) {
	g, clock := newTestGuard(100)
	r := &runner{clock: clock, success: true}
	short, long := policyFor(time.Minute, 0, ""), policyFor(time.Hour, 0, "")
	for i := range 50 {
		g.do(context.Background(), farDeadline, fmt.Sprintf("long-%d", i), long, r.run)
	}
	for i := range 50 {
		g.do(context.Background(), farDeadline, fmt.Sprintf("short-%d", i), short, r.run)
	}
	clock.Advance(2 * time.Minute) // the short ones expired, the long ones not
	for i := range 10 {
		g.do(context.Background(), farDeadline, fmt.Sprintf("new-%d", i), long, r.run)
	}
	if n := g.size(); n != 60 {
		t.Errorf("guard holds %d results, want the 50 unexpired and 10 new ones", n)
	}
	// The least recently used unexpired results survived.
	if res := g.do(context.Background(), farDeadline, "long-0", long, r.run); res.outcome != outcomeReused {
		t.Errorf("an unexpired result was dropped while expired ones were kept: %v", res.outcome)
	}
}
