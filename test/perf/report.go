package main

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"
)

// saturated marks runs during which the machine's CPUs were nearly all
// busy: their latencies and rates say more about the machine than about the
// prober, and their CPU times include contention.
const saturated = 0.90

type report struct {
	o         options
	started   time.Time
	loadStart float64
	loadEnd   float64
	cells     []cell
	phases    []phaseRow
	hung      []hungRow
	bench     []string
}

func newReport(o options) *report {
	return &report{o: o, started: time.Now(), loadStart: loadAverage()}
}

func (r *report) String() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	host, _ := os.Hostname()
	p("## smtp_exporter performance run, %s\n\n", r.started.UTC().Format("2006-01-02 15:04 MST"))
	p("Machine: %s, %d CPUs, Linux %s, %s (host %s). Load average %.2f at the start, %.2f at the end.\n",
		cpuModel(), runtime.NumCPU(), kernelRelease(), goVersion(), host, r.loadStart, r.loadEnd)
	p("Command: `go run ./test/perf %s`\n\n", strings.Join(os.Args[1:], " "))

	r.summary(p)

	if len(r.cells) > 0 {
		r.throughputTable(p)
	}
	if len(r.phases) > 0 {
		r.phaseTables(p)
	}
	if len(r.hung) > 0 {
		r.hungTable(p)
	}
	if len(r.bench) > 0 {
		p("\n### Benchmarks\n\n```\n%s\n```\n", strings.Join(r.bench, "\n"))
	}
	return b.String()
}

func (r *report) throughputTable(p func(string, ...any)) {
	p("### Throughput and cost\n\n")
	p("Conversation: banner, EHLO, STARTTLS, EHLO, [AUTH PLAIN], QUIT and its 221, certificates verified, closed loop at each concurrency for %s. ", r.o.duration)
	if r.o.repeat > 1 {
		p("Each cell was run %d times, the arms in alternating order (as listed, then reversed); the run shown is the one with the median CPU per probe. ", r.o.repeat)
	}
	p("The limit is the floor's conversation held inside a minimal Go HTTP server, one per /probe request, answering as many bytes as smtp_exporter does, to the same client over keep-alive loopback connections. ")
	p("CPU is user + system of the prober's process only (the floor's own child process; the limit's and the exporters' PID, HTTP serving included); the server's and the load client's are not counted. ")
	p("\"× floor\" and \"× limit\" divide by their CPU per probe at the same server, concurrency and AUTH. Runs marked \"sat\" had more than %.0f%% of all CPUs busy.\n\n", saturated*100)
	p("| server | prober | conc. | probes/s | p50 | p99 | CPU ms / probe | × floor | × limit | peak RSS | CPUs busy |\n")
	p("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, c := range r.cells {
		ratio := func(ref *cell) string {
			if ref == nil || ref.cpuPer1000() <= 0 {
				return "-"
			}
			return fmt.Sprintf("%.2f", c.cpuPer1000()/ref.cpuPer1000())
		}
		floor, limit := "-", "-"
		if !isFloor(c.arm) {
			floor = ratio(r.find(c, armFloor, armFloorAuth))
			if !isLimit(c.arm) {
				limit = ratio(r.find(c, armLimit, armLimitAuth))
			}
		}
		busy := fmt.Sprintf("%.0f%%", 100*c.busy)
		if c.busy > saturated {
			busy += " sat"
		}
		failures := ""
		if c.failures > 0 {
			failures = fmt.Sprintf(" (%d failed)", c.failures)
		}
		p("| %s | %s | %d | %.0f%s | %s | %s | %.3f | %s | %s | %.1f MiB | %s |\n",
			c.server, c.arm, c.concurrency, c.rate(), failures, fmtDur(c.p50()), fmtDur(c.p99()),
			c.cpuPer1000(), floor, limit, float64(c.peakRSSK)/1024, busy)
	}
}

func isFloor(arm string) bool { return arm == armFloor || arm == armFloorAuth }
func isLimit(arm string) bool { return arm == armLimit || arm == armLimitAuth }

func (r *report) phaseTables(p func(string, ...any)) {
	p("\n### Phase timings at concurrency 1\n\n")
	p("%d probes in a row per server and TLS mode, no AUTH. The floor is the same minimal client with TCP_QUICKACK set before each reply (the best it can do) and without it (what a plain Go client gets). ", r.o.phaseProbes)
	p("smtp_exporter's probe time is its probe_duration_seconds; \"via HTTP\" is the whole /probe request as the scraper sees it.\n\n")
	p("| server | TLS | floor p50 / p99 | floor without TCP_QUICKACK | smtp_exporter probe p50 / p99 | probe p50 ÷ floor p50 | smtp_exporter via HTTP | blackbox_exporter via HTTP |\n")
	p("|---|---|--:|--:|--:|--:|--:|--:|\n")
	for _, row := range r.phases {
		ratio := "-"
		if f := row.floor.p50(); f > 0 {
			ratio = fmt.Sprintf("%.2f", float64(percentile(row.probeDuration, 0.5))/float64(f))
		}
		bb := "-"
		if row.blackbox != nil {
			bb = pair(row.blackbox.p50(), row.blackbox.p99())
		}
		p("| %s | %s | %s | %s | %s | %s | %s | %s |\n", row.server, row.mode,
			pair(row.floor.p50(), row.floor.p99()), pair(row.naive.p50(), row.naive.p99()),
			pair(percentile(row.probeDuration, 0.5), percentile(row.probeDuration, 0.99)), ratio,
			pair(row.exporter.p50(), row.exporter.p99()), bb)
	}
	p("\nsmtp_exporter's phases (probe_smtp_duration_seconds), p50 / p99 / max:\n\n")
	p("| server | TLS | phases |\n|---|---|---|\n")
	for _, row := range r.phases {
		var parts []string
		for _, ph := range row.phaseOrder {
			ds := row.phases[ph]
			parts = append(parts, fmt.Sprintf("%s %s / %s / %s", ph, fmtDur(percentile(ds, 0.5)), fmtDur(percentile(ds, 0.99)), fmtDur(percentile(ds, 1))))
		}
		p("| %s | %s | %s |\n", row.server, row.mode, strings.Join(parts, "; "))
	}

}

func (r *report) hungTable(p func(string, ...any)) {
	p("\n### Probes held by a server that never answers\n\n")
	p("A fresh process of each exporter and of the limit (the floor's conversation in a minimal Go HTTP server, as in the throughput runs); %d concurrent probes (each of its own module, so that smtp_exporter does not share them) of a server that accepts and stays silent, measured once all have connected (RSS as it is, heap and stacks after two garbage collections, so that they count what the held probes keep alive); again 3 s after the server let go and the scraper closed its idle connections; and again once the process has run two garbage collections since (driven by requests for /metrics; the second frees what the sync.Pools of net/http kept through the first) and %s more for its scavenger.\n\n", r.o.hung, r.o.settle)
	p("| exporter | held | RSS before | RSS held (peak) | per probe: RSS / live heap / stacks | goroutines before / held / 3 s after | heap in use before / after GC | RSS after GC |\n")
	p("|---|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, hr := range r.hung {
		after := fmt.Sprintf("%.1f / %.1f MiB", hr.before.heapInuse/(1<<20), hr.collected.heapInuse/(1<<20))
		if !hr.gcSeen {
			after += " (GC not seen)"
		}
		held := fmt.Sprintf("%.1f / %.1f / %.1f KiB", hr.perProbeRSSK(), hr.perProbeHeapK(), hr.perProbeStackK())
		if !hr.heldGCSeen {
			held += " (GC not seen)"
		}
		p("| %s | %d | %.1f MiB | %.1f MiB (%.1f) | %s | %.0f / %.0f / %.0f | %s | %.1f MiB |\n",
			strings.TrimSuffix(hr.name, "-hung"), hr.held, mib(hr.before.rssK), mib(hr.during.rssK), mib(hr.peakK),
			held,
			hr.before.goroutines, hr.during.goroutines, hr.ended.goroutines, after, mib(hr.collected.rssK))
	}
}

// Targets: smtp_exporter within these multiples of the limit, and
// blackbox_exporter at least this multiple of smtp_exporter's CPU.
const (
	targetOverLimit    = 1.3
	targetBlackboxOver = 1.5
	targetHungRSSKiB   = 32
)

// summary states the ratios the targets are about, run by run, and whether
// each target is met.
func (r *report) summary(p func(string, ...any)) {
	var lines []string
	met, missed := 0, 0
	check := func(ok bool, format string, args ...any) {
		mark := "met"
		if ok {
			met++
		} else {
			mark = "NOT met"
			missed++
		}
		lines = append(lines, fmt.Sprintf("- %s: %s", mark, fmt.Sprintf(format, args...)))
	}
	for _, c := range r.cells {
		if c.arm != armExporter && c.arm != armExporterAuth {
			continue
		}
		if l := r.find(c, armLimit, armLimitAuth); l != nil && l.cpuPer1000() > 0 {
			cpu := c.cpuPer1000() / l.cpuPer1000()
			check(cpu <= targetOverLimit, "%s %s c=%d: CPU per probe %.3f ms, %.2f × the limit's %.3f ms (target ≤ %.1f)",
				c.server, c.arm, c.concurrency, c.cpuPer1000(), cpu, l.cpuPer1000(), targetOverLimit)
			if c.concurrency == 1 && l.p50() > 0 {
				lat := float64(c.p50()) / float64(l.p50())
				check(lat <= targetOverLimit, "%s %s c=1: p50 %s, %.2f × the limit's %s (target ≤ %.1f)",
					c.server, c.arm, fmtDur(c.p50()), lat, fmtDur(l.p50()), targetOverLimit)
			}
		}
		if c.arm != armExporter || c.cpuPer1000() <= 0 {
			continue
		}
		if b := r.find(c, armBlackbox, armBlackbox); b != nil {
			bb := b.cpuPer1000() / c.cpuPer1000()
			check(bb >= targetBlackboxOver, "%s c=%d: blackbox_exporter's CPU per probe %.3f ms, %.2f × smtp_exporter's (target ≥ %.1f)",
				c.server, c.concurrency, b.cpuPer1000(), bb, targetBlackboxOver)
		}
	}
	for _, hr := range r.hung {
		if strings.HasPrefix(hr.name, "smtp_exporter") {
			check(hr.perProbeRSSK() <= targetHungRSSKiB, "%d probes held by a silent server: %.1f KiB of RSS per probe (target ≤ %d)%s; goroutines %.0f before, %.0f 3 s after",
				hr.held, hr.perProbeRSSK(), targetHungRSSKiB, r.overHungLimit(hr), hr.before.goroutines, hr.ended.goroutines)
		} else {
			lines = append(lines, fmt.Sprintf("- %d probes held by a silent server: %s takes %.1f KiB of RSS per probe",
				hr.held, strings.TrimSuffix(hr.name, "-hung"), hr.perProbeRSSK()))
		}
	}
	if len(lines) > 0 {
		p("Targets: %d met, %d not met.\n\n%s\n", met, missed, strings.Join(lines, "\n"))
	}
	for _, row := range r.phases {
		if f := row.floor.p50(); f > 0 {
			p("Latency at concurrency 1, %s %s: smtp_exporter's probe p50 is %.2f times the floor's (%s against %s); via HTTP %.2f times.",
				row.server, row.mode, float64(percentile(row.probeDuration, 0.5))/float64(f),
				fmtDur(percentile(row.probeDuration, 0.5)), fmtDur(f), float64(row.exporter.p50())/float64(f))
			if row.blackbox != nil {
				p(" blackbox_exporter via HTTP: %.2f times.", float64(row.blackbox.p50())/float64(f))
			}
			p("\n")
		}
	}
	p("\n")
}

// overHungLimit compares a row of held probes with the limit's.
func (r *report) overHungLimit(hr hungRow) string {
	for _, l := range r.hung {
		if strings.HasPrefix(l.name, "limit") && l.perProbeRSSK() > 0 {
			return fmt.Sprintf(", %.2f × the limit's %.1f KiB", hr.perProbeRSSK()/l.perProbeRSSK(), l.perProbeRSSK())
		}
	}
	return ""
}

// find is the run of arm (armAuth for an AUTH arm) at c's server and
// concurrency.
func (r *report) find(c cell, arm, armAuth string) *cell {
	if c.arm == armExporterAuth || c.arm == armFloorAuth || c.arm == armLimitAuth {
		arm = armAuth
	}
	for i := range r.cells {
		f := &r.cells[i]
		if f.server == c.server && f.concurrency == c.concurrency && f.arm == arm {
			return f
		}
	}
	return nil
}

func pair(a, b time.Duration) string { return fmtDur(a) + " / " + fmtDur(b) }

func mib(k int64) float64 { return float64(k) / 1024 }
