package main

import (
	"cmp"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"time"
)

// Arms of the throughput table.
const (
	armFloor        = "floor"
	armFloorAuth    = "floor + AUTH"
	armLimit        = "limit"
	armLimitAuth    = "limit + AUTH"
	armExporter     = "smtp_exporter"
	armExporterAuth = "smtp_exporter + AUTH"
	armBlackbox     = "blackbox_exporter"
)

// throughput runs every arm at every concurrency against every server, for
// -duration each, arms interleaved so that a drift of the machine's speed
// spreads over all of them.
func (h *harness) throughput(exporter, blackbox *process) error {
	for _, s := range h.servers {
		limit, limitAuth, err := h.startLimits(exporter, s)
		if err != nil {
			return err
		}
		err = h.throughputOf(s, exporter, blackbox, limit, limitAuth)
		limit.stop()
		limitAuth.stop()
		if err != nil {
			return err
		}
	}
	return nil
}

// startLimits starts the limit of server s without and with AUTH, each
// answering as many bytes as the exporter's answer for that server.
func (h *harness) startLimits(exporter *process, s server) (limit, limitAuth *process, err error) {
	sized := h.exporterCellBodies(exporter, s.name, "starttls", s.starttls, 1, 10*time.Second, 1, true)
	if len(sized.bodies) != 1 || sized.failures > 0 {
		return nil, nil, fmt.Errorf("%s: sizing the limit's answer: %s", s.name, sized.firstErr)
	}
	self, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	start := func(auth bool) (*process, error) {
		spec := floorSpec{Addr: s.starttls, CAFile: s.caFile, Auth: auth, User: s.user, QuickACK: true, BodyBytes: len(sized.bodies[0])}
		name := "limit-" + s.name
		if auth {
			name += "-auth"
		}
		p, err := startProcess(name, self, h.dir, []string{floorPasswordEnv + "=" + s.password}, spec.args()...)
		if err == nil {
			h.processes = append(h.processes, p)
		}
		return p, err
	}
	if limit, err = start(false); err != nil {
		return nil, nil, err
	}
	if limitAuth, err = start(true); err != nil {
		limit.stop()
		return nil, nil, err
	}
	h.logf("%s: the limit answers %d bytes, as smtp_exporter does", s.name, len(sized.bodies[0]))
	return limit, limitAuth, nil
}

// throughputOf runs every arm against server s at each concurrency,
// -repeat times: in the listed order, then in the reverse order, and so
// on, so that a machine getting busier during the runs weighs on every arm
// alike. Of an arm's runs, the one with the median CPU per probe is
// reported.
func (h *harness) throughputOf(s server, exporter, blackbox, limit, limitAuth *process) error {
	arms := []string{armFloor, armLimit, armExporter, armBlackbox, armFloorAuth, armLimitAuth, armExporterAuth}
	if blackbox == nil {
		arms = slices.DeleteFunc(arms, func(a string) bool { return a == armBlackbox })
	}
	for _, c := range h.o.concurrency {
		// Unmeasured: Postfix starts an smtpd process per concurrent
		// session when the concurrency rises, which would be charged
		// to whichever arm came first.
		h.floorCell(s, c, false, true, s.starttls, false, min(time.Second, h.o.duration), 1000000, "")
		runs := map[string][]cell{}
		for rep := range h.o.repeat {
			order := slices.Clone(arms)
			if rep%2 == 1 {
				slices.Reverse(order)
			}
			for _, arm := range order {
				if h.ctx.Err() != nil {
					return h.ctx.Err()
				}
				r := h.throughputCell(s, arm, c, exporter, blackbox, limit, limitAuth)
				h.logf("%-8s %-22s c=%-3d %7.1f probes/s  p50 %-9s p99 %-9s cpu/1000 %.3fs  busy %3.0f%%  failures %d",
					s.name, arm, c, r.rate(), fmtDur(r.p50()), fmtDur(r.p99()), r.cpuPer1000(), 100*r.busy, r.failures)
				if r.probes == 0 || r.failures > 0 {
					h.fail("%s %s c=%d: %d of %d probes failed: %s", s.name, arm, c, r.failures, r.probes, r.firstErr)
				}
				runs[arm] = append(runs[arm], r)
			}
		}
		for _, arm := range arms {
			h.report.cells = append(h.report.cells, medianCell(runs[arm]))
		}
	}
	return nil
}

// throughputCell runs one arm once.
func (h *harness) throughputCell(s server, arm string, c int, exporter, blackbox, limit, limitAuth *process) cell {
	var r cell
	switch arm {
	case armFloor, armFloorAuth:
		profile := ""
		if h.o.pprofDir != "" {
			profile = filepath.Join(h.o.pprofDir, profileName(s.name, arm, c))
		}
		r = h.floorCell(s, c, arm == armFloorAuth, true, s.starttls, false, h.o.duration, 1000000, profile)
	case armLimit:
		r = h.exporterCell(limit, s.name, "starttls", s.starttls, c, h.o.duration, 1000000)
	case armLimitAuth:
		r = h.exporterCell(limitAuth, s.name, "starttls", s.starttls, c, h.o.duration, 1000000)
	case armExporter, armExporterAuth:
		kind := "starttls"
		if arm == armExporterAuth {
			kind = "starttls_auth"
		}
		var profiled chan error
		if h.pprofAddr != "" {
			profiled = profileDuring(h.pprofAddr, h.o.duration, filepath.Join(h.o.pprofDir, profileName(s.name, arm, c)))
		}
		r = h.exporterCell(exporter, s.name, kind, s.starttls, c, h.o.duration, 1000000)
		if profiled != nil {
			if err := <-profiled; err != nil {
				h.logf("CPU profile: %v", err)
			}
		}
	case armBlackbox:
		r = h.exporterCell(blackbox, s.name, "starttls", s.starttls, c, h.o.duration, 1000000)
	}
	r.server, r.arm, r.concurrency = s.name, arm, c
	return r
}

// medianCell returns the run with the median CPU per probe (the higher of
// the two middle ones for an even count).
func medianCell(runs []cell) cell {
	sorted := slices.Clone(runs)
	slices.SortFunc(sorted, func(a, b cell) int { return cmp.Compare(a.cpuPer1000(), b.cpuPer1000()) })
	return sorted[len(sorted)/2]
}

// cell is one throughput run.
type cell struct {
	server, arm string
	concurrency int
	probes      int
	failures    int
	firstErr    string
	elapsed     time.Duration
	latencies   []time.Duration
	cpu         float64 // seconds, user + system, of the prober process
	peakRSSK    int64
	busy        float64 // fraction of all CPUs busy during the run
}

func (c cell) rate() float64 {
	if c.elapsed <= 0 {
		return 0
	}
	return float64(c.probes) / c.elapsed.Seconds()
}

func (c cell) cpuPer1000() float64 {
	if c.probes == 0 {
		return 0
	}
	return c.cpu / float64(c.probes) * 1000
}

func (c cell) p50() time.Duration { return percentile(c.latencies, 0.50) }
func (c cell) p99() time.Duration { return percentile(c.latencies, 0.99) }

// floorCell runs the floor client in a child process of its own.
func (h *harness) floorCell(s server, concurrency int, auth, quickACK bool, addr string, implicit bool, d time.Duration, maxProbes int, cpuProfile string) cell {
	spec := floorSpec{
		Addr: addr, CAFile: s.caFile, Implicit: implicit, Auth: auth, User: s.user, QuickACK: quickACK,
		Concurrency: concurrency, Duration: d, MaxProbes: maxProbes, CPUProfile: cpuProfile,
	}
	self, err := os.Executable()
	if err != nil {
		return cell{firstErr: err.Error()}
	}
	cmd := exec.CommandContext(h.ctx, self, spec.args()...)
	cmd.Env = append(os.Environ(), floorPasswordEnv+"="+s.password)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	before := readCPUSample()
	out, err := cmd.Output()
	after := readCPUSample()
	if err != nil {
		return cell{firstErr: "floor client: " + err.Error()}
	}
	res, err := decodeFloorResult(out)
	if err != nil {
		return cell{firstErr: err.Error()}
	}
	return cell{
		probes: res.Probes, failures: res.Failures, firstErr: res.FirstErr, elapsed: res.Elapsed,
		latencies: res.Latencies, cpu: res.CPU, peakRSSK: res.PeakRSSK, busy: busyBetween(before, after),
	}
}

func (h *harness) exporterCell(p *process, server, kind, target string, concurrency int, d time.Duration, maxProbes int) cell {
	return h.exporterCellBodies(p, server, kind, target, concurrency, d, maxProbes, false).cell
}

type bodiesCell struct {
	cell
	bodies [][]byte
}

// exporterCellBodies runs concurrency workers against an exporter, worker i
// asking for module server_kind_i of target.
func (h *harness) exporterCellBodies(p *process, server, kind, target string, concurrency int, d time.Duration, maxProbes int, keep bool) bodiesCell {
	urlFor := func(worker int) string { return probeURL(p.base, moduleName(server, kind, worker), target) }
	pid := p.pid()
	if err := resetPeakRSS(pid); err != nil {
		h.logf("cannot reset the peak RSS of %s: %v", p.name, err)
	}
	cpu0, err0 := cpuSeconds(pid)
	before := readCPUSample()
	res := httpLoad(h.ctx, urlFor, concurrency, d, maxProbes, 10*time.Second, keep)
	after := readCPUSample()
	cpu1, err1 := cpuSeconds(pid)
	hwm, _ := memKiB(pid, "VmHWM")
	c := cell{
		probes: res.Probes, failures: res.Failures, firstErr: res.FirstErr, elapsed: res.Elapsed,
		latencies: res.Latencies, cpu: cpu1 - cpu0, peakRSSK: hwm, busy: busyBetween(before, after),
	}
	if err0 != nil || err1 != nil {
		c.firstErr = fmt.Sprintf("reading the CPU time of %s: %v %v", p.name, err0, err1)
		c.failures = max(c.failures, 1)
	}
	return bodiesCell{cell: c, bodies: res.Bodies}
}
