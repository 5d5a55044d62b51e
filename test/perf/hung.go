package main

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// memSnapshot is what an exporter holds at one moment.
type memSnapshot struct {
	rssK       int64
	goroutines float64
	heapInuse  float64 // bytes
	stackInuse float64 // bytes
}

func snapshot(p *process) (memSnapshot, error) {
	var s memSnapshot
	var err error
	if s.rssK, err = memKiB(p.pid(), "VmRSS"); err != nil {
		return s, err
	}
	if s.goroutines, err = p.metric("go_goroutines"); err != nil {
		return s, err
	}
	if s.heapInuse, err = p.metric("go_memstats_heap_inuse_bytes"); err != nil {
		return s, err
	}
	s.stackInuse, err = p.metric("go_memstats_stack_inuse_bytes")
	return s, err
}

// hungRow is the memory of one exporter with n probes held open.
type hungRow struct {
	name   string
	n      int
	held   int
	before memSnapshot
	during memSnapshot
	// ended is 3 s after the server let go; collected is once the process
	// has run two garbage collections after that (the second frees what
	// the sync.Pools of net/http and promhttp kept through the first) and
	// its scavenger has had time to return memory.
	ended, collected memSnapshot
	gcSeen           bool
	// heldGCSeen says whether the held probes' heap and stacks were
	// measured after two collections, as meant.
	heldGCSeen bool
	peakK      int64
	process    *process
}

func (r hungRow) perProbeRSSK() float64 {
	return float64(r.during.rssK-r.before.rssK) / float64(r.n)
}

func (r hungRow) perProbeHeapK() float64 {
	return (r.during.heapInuse - r.before.heapInuse) / 1024 / float64(r.n)
}

func (r hungRow) perProbeStackK() float64 {
	return (r.during.stackInuse - r.before.stackInuse) / 1024 / float64(r.n)
}

// collectGarbage makes the process run two garbage collections by asking
// for /metrics, whose responses are garbage once sent, until its GC count
// has gone up by two: at most 20,000 requests or 60 s (with 1,000 probes
// held and smtp_exporter's GOGC of 200, a collection comes some 5,000
// requests after the last). It reports whether it got there.
func (h *harness) collectGarbage(p *process) bool {
	start, err := p.metric("go_gc_duration_seconds_count")
	if err != nil {
		return false
	}
	deadline := time.Now().Add(60 * time.Second)
	for i := 0; i < 20000 && time.Now().Before(deadline) && h.ctx.Err() == nil; i++ {
		count, err := p.metric("go_gc_duration_seconds_count")
		if err != nil {
			return false
		}
		if count >= start+2 {
			return true
		}
	}
	return false
}

// hungProbes holds n probes open against a server that accepts and never
// answers, in a freshly started exporter (memory a warm process already has
// resident would hide what the probes take), and measures it before, while
// they are held and after they ended. The exporters are kept running until
// each has collected garbage after its probes ended, so that "after" shows
// what stays, not what awaits collection.
func (h *harness) hungProbes() error {
	// Each start gets the address of the silent server.
	starts := []func(string) (*process, error){func(string) (*process, error) {
		exporter, _, err := h.startExportersOnly(true, false)
		return exporter, err
	}}
	if h.hasBlackbox {
		starts = append(starts, func(string) (*process, error) {
			_, blackbox, err := h.startExportersOnly(false, true)
			return blackbox, err
		})
	}
	starts = append(starts, h.startHungLimit)
	var rows []*hungRow
	defer func() {
		for _, row := range rows {
			if row.process != nil {
				row.process.stop()
			}
		}
	}()
	for _, start := range starts {
		if h.ctx.Err() != nil {
			return h.ctx.Err()
		}
		row, err := h.holdProbes(start)
		if row != nil {
			rows = append(rows, row)
		}
		if err != nil {
			return err
		}
	}
	for _, row := range rows {
		row.gcSeen = h.collectGarbage(row.process)
	}
	if h.o.settle > 0 {
		time.Sleep(h.o.settle) // the scavenger returns freed memory gradually
	}
	for _, row := range rows {
		var err error
		if row.collected, err = snapshot(row.process); err != nil {
			return err
		}
		if h.pprofAddr != "" && strings.HasPrefix(row.name, "smtp_exporter") {
			file := filepath.Join(h.o.pprofDir, "smtp_exporter-after-hung-heap.pprof")
			if err := <-profileURL("http://"+h.pprofAddr+"/debug/pprof/heap?gc=1", file, 30*time.Second); err != nil {
				h.logf("heap profile: %v", err)
			}
		}
		h.logf("%s after the hung probes: goroutines %.0f (%.0f before), heap in use %.1f MiB (%.1f before), RSS %.1f MiB (%.1f before); collected: %t",
			row.name, row.collected.goroutines, row.before.goroutines, row.collected.heapInuse/(1<<20), row.before.heapInuse/(1<<20),
			mib(row.collected.rssK), mib(row.before.rssK), row.gcSeen)
		h.report.hung = append(h.report.hung, *row)
	}
	return nil
}

// startHungLimit starts the limit for the held probes: the floor's
// conversation inside the minimal HTTP server, with the silent server at
// addr, answering 5,000 bytes once it lets go (about what smtp_exporter
// answers for a failed probe): what holding a probe costs any exporter
// that runs it in its HTTP handler.
func (h *harness) startHungLimit(addr string) (*process, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	spec := floorSpec{Addr: addr, CAFile: h.hungCA, QuickACK: true, BodyBytes: 5000, Timeout: 90 * time.Second}
	p, err := startProcess("limit-hung", self, h.dir, nil, spec.args()...)
	if err == nil {
		h.processes = append(h.processes, p)
	}
	return p, err
}

func (h *harness) holdProbes(start func(addr string) (*process, error)) (*hungRow, error) {
	n := h.o.hung
	hs, err := startHungServer()
	if err != nil {
		return nil, err
	}
	defer hs.close()
	p, err := start(hs.addr())
	if err != nil {
		return nil, err
	}
	row := &hungRow{name: p.name, n: n, process: p}

	h.collectGarbage(p) // of the start-up: the baseline is what stays
	if row.before, err = snapshot(p); err != nil {
		return row, err
	}
	resetPeakRSS(p.pid())

	transport := &http.Transport{MaxIdleConnsPerHost: n, DisableCompression: true}
	client := &http.Client{Transport: transport, Timeout: 90 * time.Second}
	var wg sync.WaitGroup
	var mu sync.Mutex
	unfinished := 0
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			target := probeURL(p.base, moduleName("hung", "starttls", i), hs.addr())
			var buf bytes.Buffer
			if err := get(h.ctx, client, target, "60", &buf); err != nil {
				mu.Lock()
				unfinished++
				mu.Unlock()
			}
		}()
	}
	waitErr := hs.waitAccepted(int64(n), 60*time.Second)
	row.held = int(hs.accepted.Load())
	time.Sleep(time.Second)
	row.during, err = snapshot(p)
	row.peakK, _ = memKiB(p.pid(), "VmHWM")
	if err == nil {
		// What the held probes keep alive, without the garbage of setting
		// them up.
		row.heldGCSeen = h.collectGarbage(p)
		var live memSnapshot
		if live, err = snapshot(p); err == nil {
			row.during.heapInuse, row.during.stackInuse = live.heapInuse, live.stackInuse
		}
	}
	if h.pprofAddr != "" && strings.HasPrefix(p.name, "smtp_exporter") {
		file := filepath.Join(h.o.pprofDir, "smtp_exporter-hung-heap.pprof")
		if err := <-profileURL("http://"+h.pprofAddr+"/debug/pprof/heap?gc=1", file, 30*time.Second); err != nil {
			h.logf("heap profile: %v", err)
		}
	}
	hs.release()
	wg.Wait()
	transport.CloseIdleConnections()
	if err != nil {
		return row, err
	}
	if waitErr != nil {
		h.fail("%s: only %d of %d probes reached the hung server", p.name, row.held, n)
	}
	// Idle HTTP connections and probe goroutines end within milliseconds.
	time.Sleep(3 * time.Second)
	if row.ended, err = snapshot(p); err != nil {
		return row, err
	}
	h.logf("%s: %d probes held: RSS %d -> %d KiB (%.1f KiB per probe; heap %.1f, stacks %.1f), goroutines %.0f -> %.0f -> %.0f",
		p.name, row.held, row.before.rssK, row.during.rssK, row.perProbeRSSK(), row.perProbeHeapK(), row.perProbeStackK(),
		row.before.goroutines, row.during.goroutines, row.ended.goroutines)
	if strings.HasPrefix(p.name, "smtp_exporter") && row.ended.goroutines > row.before.goroutines+2 {
		h.fail("%s: %.0f goroutines after the hung probes ended, %.0f before", p.name, row.ended.goroutines, row.before.goroutines)
	}
	if unfinished > 0 {
		h.fail("%s: %d of %d held probes got no HTTP answer after the server let go", p.name, unfinished, n)
	}
	return row, nil
}
