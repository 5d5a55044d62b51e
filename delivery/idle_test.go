package delivery

import (
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
)

// TestIdleWatcherCost measures the CPU an idle watcher and the in-process
// server use together over IDLE_COST_SECONDS (skipped without it).
func TestIdleWatcherCost(t *testing.T) {
	secs := os.Getenv("IDLE_COST_SECONDS")
	if secs == "" {
		t.Skip("set IDLE_COST_SECONDS to measure")
	}
	d, err := time.ParseDuration(secs + "s")
	if err != nil {
		t.Fatal(err)
	}
	lab := newIMAPLab(t, imap.CapIdle, imap.CapUIDPlus)
	tr := NewTracker(Options{})
	defer tr.Stop()
	tr.Apply(loadConfig(t, lab.moduleYAML("canary", testPassword, "5m")))
	eventually(t, "the watcher to log in", func() bool { return status(t, tr, "canary").WatcherUp })
	var before, after syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	time.Sleep(d)
	syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	cpu := time.Duration(after.Utime.Nano()+after.Stime.Nano()-before.Utime.Nano()-before.Stime.Nano()) * time.Nanosecond
	t.Logf("idle watcher + server: %s CPU over %s (%.4f%% of a core)", cpu, d, 100*cpu.Seconds()/d.Seconds())
}
