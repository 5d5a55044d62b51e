package main

import (
	"fmt"
	"os"
	"runtime"
	"slices"
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
	p("CPU is user + system of the prober's process only (the floor's own child process; the exporter's PID, HTTP serving included); the server's is not counted. ")
	p("\"× floor\" divides by the floor's CPU per probe at the same server, concurrency and AUTH. Runs marked \"sat\" had more than %.0f%% of all CPUs busy.\n\n", saturated*100)
	p("| server | prober | conc. | probes/s | p50 | p99 | CPU ms / probe | × floor | peak RSS | CPUs busy |\n")
	p("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, c := range r.cells {
		ratio := "-"
		if f := r.floorFor(c); f != nil && f.cpuPer1000() > 0 && c.arm != armFloor && c.arm != armFloorAuth {
			ratio = fmt.Sprintf("%.2f", c.cpuPer1000()/f.cpuPer1000())
		}
		busy := fmt.Sprintf("%.0f%%", 100*c.busy)
		if c.busy > saturated {
			busy += " sat"
		}
		failures := ""
		if c.failures > 0 {
			failures = fmt.Sprintf(" (%d failed)", c.failures)
		}
		p("| %s | %s | %d | %.0f%s | %s | %s | %.3f | %s | %.1f MiB | %s |\n",
			c.server, c.arm, c.concurrency, c.rate(), failures, fmtDur(c.p50()), fmtDur(c.p99()),
			c.cpuPer1000(), ratio, float64(c.peakRSSK)/1024, busy)
	}

}

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
	p("A fresh process of each exporter; %d concurrent probes (each of its own module, so that smtp_exporter does not share them) of a server that accepts and stays silent, measured once all have connected (RSS as it is, heap and stacks after two garbage collections, so that they count what the held probes keep alive); again 3 s after the server let go and the scraper closed its idle connections; and again once the process has run two garbage collections since (driven by requests for /metrics; the second frees what the sync.Pools of net/http kept through the first) and %s more for its scavenger.\n\n", r.o.hung, r.o.settle)
	p("| exporter | held | RSS before | RSS held (peak) | per probe: RSS / live heap / stacks | goroutines before / held / 3 s after | heap in use before / after GC | RSS after GC |\n")
	p("|---|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, hr := range r.hung {
		after := fmt.Sprintf("%.1f / %.1f MiB", hr.before.heapInuse/(1<<20), hr.collected.heapInuse/(1<<20))
		if !hr.gcSeen {
			after += " (GC not seen)"
		}
		p("| %s | %d | %.1f MiB | %.1f MiB (%.1f) | %.1f / %.1f / %.1f KiB | %.0f / %.0f / %.0f | %s | %.1f MiB |\n",
			strings.TrimSuffix(hr.name, "-hung"), hr.held, mib(hr.before.rssK), mib(hr.during.rssK), mib(hr.peakK),
			hr.perProbeRSSK(), hr.perProbeHeapK(), hr.perProbeStackK(),
			hr.before.goroutines, hr.during.goroutines, hr.ended.goroutines, after, mib(hr.collected.rssK))
	}
}

// summary states the ratios the targets are about, over all runs.
func (r *report) summary(p func(string, ...any)) {
	ratios := map[string][]float64{}
	for _, c := range r.cells {
		if f := r.floorFor(c); f != nil && f.cpuPer1000() > 0 && c.arm != armFloor && c.arm != armFloorAuth {
			ratios[c.arm] = append(ratios[c.arm], c.cpuPer1000()/f.cpuPer1000())
		}
	}
	if len(ratios) > 0 {
		p("Summary. CPU per probe as a multiple of the floor's, lowest to highest over servers and concurrencies:")
		for _, arm := range []string{armExporter, armExporterAuth, armBlackbox} {
			if rs := ratios[arm]; len(rs) > 0 {
				p(" %s %.2f to %.2f;", arm, slices.Min(rs), slices.Max(rs))
			}
		}
		p("\n")
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
	for _, hr := range r.hung {
		p("%d probes held by a silent server: %s takes %.1f KiB of RSS per probe; goroutines %.0f before, %.0f 3 s after.\n",
			hr.held, strings.TrimSuffix(hr.name, "-hung"), hr.perProbeRSSK(), hr.before.goroutines, hr.ended.goroutines)
	}
	p("\n")
}

// floorFor is the floor run an arm is compared with.
func (r *report) floorFor(c cell) *cell {
	want := armFloor
	if c.arm == armExporterAuth || c.arm == armFloorAuth {
		want = armFloorAuth
	}
	for i := range r.cells {
		f := &r.cells[i]
		if f.server == c.server && f.concurrency == c.concurrency && f.arm == want {
			return f
		}
	}
	return nil
}

func pair(a, b time.Duration) string { return fmtDur(a) + " / " + fmtDur(b) }

func mib(k int64) float64 { return float64(k) / 1024 }
