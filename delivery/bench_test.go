package delivery

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
)

// BenchmarkDelivery measures one canary's round trip through a watcher on
// the in-process server: Sent, the message appended, IDLE wakes the
// watcher, it finds, claims and deletes the message. It also reports the
// heap one idle watcher holds.
func BenchmarkDelivery(b *testing.B) {
	lab := newIMAPLab(b, imap.CapIdle, imap.CapUIDPlus)
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	tr := NewTracker(Options{Timing: Timing{Poll: 10 * time.Second, Idle: time.Minute}})
	defer tr.Stop()
	tr.Apply(loadConfig(b, lab.moduleYAML("canary", testPassword, "5m")))
	for s, _ := tr.Status("canary"); !s.WatcherUp; s, _ = tr.Status("canary") {
		time.Sleep(time.Millisecond)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	heap := float64(after.HeapInuse) - float64(before.HeapInuse)
	b.ResetTimer()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		id := fmt.Sprintf("bench-%d", i)
		sent := time.Now()
		tr.Sent("canary", id, sent)
		lab.deliver("INBOX", id, "canary")
		for s, _ := tr.Status("canary"); s.Delivered != uint64(i+1); s, _ = tr.Status("canary") {
			time.Sleep(100 * time.Microsecond)
		}
		total += time.Since(sent)
	}
	b.ReportMetric(total.Seconds()/float64(b.N)*1000, "ms/canary")
	b.ReportMetric(heap, "watcher-heap-bytes")
}

// BenchmarkStatusWithoutDelivery is what every probe of a module without a
// delivery block pays to learn it has none, from many scrapes at once,
// while the tracker watches another module.
func BenchmarkStatusWithoutDelivery(b *testing.B) {
	tr := NewTracker(Options{Timing: Timing{MinBackoff: time.Hour, MaxBackoff: time.Hour}})
	defer tr.Stop()
	tr.Apply(loadConfig(b, `
  canary:
    smtp:
      mail:
        from: probe@example.net
        to: [canary@example.net]
        delivery:
          imap:
            address: 127.0.0.1:1
            username: canary@example.net
            password: secret
`))
	for i := range 500 {
		tr.Sent("canary", fmt.Sprintf("pending-%d", i), time.Now())
	}
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, ok := tr.Status("plain"); ok {
				b.Fatal("plain has delivery state")
			}
			tr.Sent("plain", "id", time.Now())
		}
	})
}
