package prober

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"
)

// The module's timeout counts from before the lookup, as the probe's
// duration does: a caller that resolved the target first does not get the
// lookup's time on top of the timeout.
func TestProbeTargetTimeoutCountsLookup(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			// No banner: the probe waits until its deadline.
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()

	module := loadModule(t, moduleSpec{Timeout: "1s"})
	target := Resolve(context.Background(), ln.Addr().String(), &module.SMTP)
	if target.Failure != nil {
		t.Fatalf("resolve: %+v", target.Failure)
	}
	target.DNSLookupTime = 800 * time.Millisecond

	begin := time.Now()
	r := ProbeTarget(context.Background(), target, &module, "p", nil)
	elapsed := time.Since(begin)
	if r.Failure == nil || r.Failure.Reason != ReasonTimeout {
		t.Fatalf("failure %+v, want timeout", r.Failure)
	}
	if elapsed > 700*time.Millisecond {
		t.Errorf("probe took %v after an 800ms lookup with a 1s timeout", elapsed)
	}
	if r.Duration < time.Second-50*time.Millisecond || r.Duration > 1500*time.Millisecond {
		t.Errorf("duration %v, want about the 1s timeout", r.Duration)
	}
}
