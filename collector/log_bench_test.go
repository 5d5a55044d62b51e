package collector

import (
	"errors"
	"log/slog"
	"testing"
)

// BenchmarkProbeLog logs what a STARTTLS + AUTH probe logs (about 40
// lines, phases and transcript) to a probe's log with the main logger
// off: "formatted at once" writes them through a text handler to a
// boundedBuffer, as the probe log did before; "kept" keeps the records,
// as it does now; "kept, then read" also formats them, as debug=true and
// /logs do.
func BenchmarkProbeLog(b *testing.B) {
	main := slog.New(slog.DiscardHandler)
	probe := func(logger *slog.Logger) {
		logger.Info("Beginning probe", "probe_id", "3f2a-17", "module", "submission", "target", "127.0.0.1:587", "timeout_seconds", 9.5)
		for _, phase := range []string{"resolve", "connect", "banner", "ehlo", "starttls", "ehlo_tls", "auth", "quit"} {
			logger.Debug("Phase started", "phase", phase)
			logger.Debug("SMTP C", "line", "EHLO probe.example.net")
			logger.Debug("SMTP S", "line", "250-mx.example.net")
			logger.Debug("SMTP S", "line", "250 8BITMIME")
			logger.Debug("Phase done", "phase", phase, "duration_seconds", 0.00123, "code", 250, "enhanced", "2.0.0")
		}
		logger.Error("Probe failed", "phase", "auth", "reason", "auth_rejected", "err", errors.New("535 5.7.8 rejected"), "duration_seconds", 0.0123)
	}
	b.Run("formatted at once", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			buf := newBoundedBuffer(DefaultProbeLogLimit)
			capture := slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})
			m := main.With("probe_id", "3f2a-17")
			probe(slog.New(&teeHandler{capture: capture, main: m.Handler(), level: slog.LevelDebug}))
		}
	})
	b.Run("kept", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			probe(newProbeLog(main, slog.LevelDebug, DefaultProbeLogLimit, "probe_id", "3f2a-17").probe)
		}
	})
	b.Run("kept, then read", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			plog := newProbeLog(main, slog.LevelDebug, DefaultProbeLogLimit, "probe_id", "3f2a-17")
			probe(plog.probe)
			if len(plog.records.String()) == 0 {
				b.Fatal("empty log")
			}
		}
	})
}
