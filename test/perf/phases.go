package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

func decodeFloorResult(out []byte) (floorResult, error) {
	var res floorResult
	if err := json.Unmarshal(bytes.TrimSpace(out), &res); err != nil {
		return res, fmt.Errorf("floor client output: %w", err)
	}
	return res, nil
}

// percentile returns the p-quantile (nearest rank) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s))*p+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// phaseRow is the phase timings of one server and TLS mode at concurrency 1.
type phaseRow struct {
	server, mode  string
	floor, naive  cell
	exporter      cell
	probeDuration []time.Duration
	phases        map[string][]time.Duration
	phaseOrder    []string
	blackbox      *cell
	bbDuration    []time.Duration
}

// stallThreshold is below the 40 ms minimum delayed ACK of Linux and far
// above a loopback reply.
const stallThreshold = 30 * time.Millisecond

// phaseTimings runs probes one after another, for each server and TLS mode:
// the floor with and without TCP_QUICKACK, the exporter (whose responses
// carry the phase durations) and blackbox_exporter.
func (h *harness) phaseTimings(exporter, blackbox *process) error {
	n := h.o.phaseProbes
	const cap = 2 * time.Minute
	for _, s := range h.servers {
		for _, mode := range []string{"starttls", "implicit"} {
			if h.ctx.Err() != nil {
				return h.ctx.Err()
			}
			addr, implicit := s.starttls, mode == "implicit"
			if implicit {
				addr = s.implicit
			}
			row := phaseRow{server: s.name, mode: mode, phases: map[string][]time.Duration{}}
			row.floor = h.floorCell(s, 1, false, true, addr, implicit, cap, n, "")
			row.naive = h.floorCell(s, 1, false, false, addr, implicit, cap, n, "")
			bc := h.exporterCellBodies(exporter, s.name, mode, addr, 1, cap, n, true)
			row.exporter = bc.cell
			for _, body := range bc.bodies {
				parseDurations(body, &row)
			}
			if blackbox != nil {
				bb := h.exporterCellBodies(blackbox, s.name, mode, addr, 1, cap, n, true)
				row.blackbox = &bb.cell
				for _, body := range bb.bodies {
					if d, ok := sample(body, "probe_duration_seconds"); ok {
						row.bbDuration = append(row.bbDuration, d)
					}
				}
				if bb.probes == 0 || bb.failures > 0 {
					h.fail("phase timings %s %s, blackbox: %d of %d failed: %s", s.name, mode, bb.failures, bb.probes, bb.firstErr)
				}
			}
			for name, c := range map[string]cell{"floor": row.floor, "floor without TCP_QUICKACK": row.naive, "smtp_exporter": row.exporter} {
				if c.probes == 0 || c.failures > 0 {
					h.fail("phase timings %s %s, %s: %d of %d failed: %s", s.name, mode, name, c.failures, c.probes, c.firstErr)
				}
			}
			h.logf("%-8s %-9s floor p50 %s, without TCP_QUICKACK %s; smtp_exporter probe %s, via HTTP %s",
				s.name, mode, fmtDur(row.floor.p50()), fmtDur(row.naive.p50()),
				fmtDur(percentile(row.probeDuration, 0.5)), fmtDur(row.exporter.p50()))
			for _, ph := range row.phaseOrder {
				if p50 := percentile(row.phases[ph], 0.5); p50 >= stallThreshold {
					h.fail("phase timings %s %s: phase %s has a median of %s: a stall the server did not spend", s.name, mode, ph, fmtDur(p50))
				}
			}
			h.report.phases = append(h.report.phases, row)
		}
	}
	return nil
}

// parseDurations collects probe_duration_seconds and each
// probe_smtp_duration_seconds{phase} of one response.
func parseDurations(body []byte, row *phaseRow) {
	if d, ok := sample(body, "probe_duration_seconds"); ok {
		row.probeDuration = append(row.probeDuration, d)
	}
	const prefix = `probe_smtp_duration_seconds{phase="`
	for _, line := range strings.Split(string(body), "\n") {
		rest, ok := strings.CutPrefix(line, prefix)
		if !ok {
			continue
		}
		phase, value, ok := strings.Cut(rest, `"} `)
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			continue
		}
		if _, seen := row.phases[phase]; !seen {
			row.phaseOrder = append(row.phaseOrder, phase)
		}
		row.phases[phase] = append(row.phases[phase], time.Duration(v*float64(time.Second)))
	}
}

// sample reads an unlabelled sample from an exposition.
func sample(body []byte, name string) (time.Duration, bool) {
	for _, line := range strings.Split(string(body), "\n") {
		if value, ok := strings.CutPrefix(line, name+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
			return time.Duration(v * float64(time.Second)), err == nil
		}
	}
	return 0, false
}

func fmtDur(d time.Duration) string {
	switch {
	case d <= 0:
		return "-"
	case d < time.Millisecond:
		return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}
