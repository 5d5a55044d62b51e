package prober

import (
	"bytes"
	"context"
	"log/slog"
	"regexp"
	"testing"

	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

// Every record of a probe names the line of code that logged it, those of
// the phases and of the conversation (logged through a callSite) too.
func TestProbeRecordsNameTheirSource(t *testing.T) {
	srv := smtptest.NewServer(t, smtptest.Options{NoAuth: true})
	m := loadModule(t, moduleSpec{TLS: "none"})
	var out bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug, AddSource: true}))
	for range 2 { // the second probe uses the call sites looked up by the first
		out.Reset()
		if r := Probe(context.Background(), srv.Addr(), &m, "source", logger); !r.Success {
			t.Fatalf("probe failed: %+v", r.Failure)
		}
		want := map[string]*regexp.Regexp{
			`msg="Phase started"`: regexp.MustCompile(`source=\S+/prober/probe\.go:\d+ `),
			`msg="Phase done"`:    regexp.MustCompile(`source=\S+/prober/probe\.go:\d+ `),
			`msg="SMTP S"`:        regexp.MustCompile(`source=\S+/prober/transcript\.go:\d+ `),
			`msg="SMTP C"`:        regexp.MustCompile(`source=\S+/prober/transcript\.go:\d+ `),
		}
		seen := map[string]int{}
		for _, line := range bytes.Split(out.Bytes(), []byte("\n")) {
			if len(line) == 0 {
				continue
			}
			if !regexp.MustCompile(`source=\S+\.go:[1-9]\d* `).Match(line) {
				t.Errorf("record without its source: %s", line)
			}
			for msg, re := range want {
				if bytes.Contains(line, []byte(msg)) {
					seen[msg]++
					if !re.Match(line) {
						t.Errorf("%s: source is not %s: %s", msg, re, line)
					}
				}
			}
		}
		for msg := range want {
			if seen[msg] == 0 {
				t.Errorf("no record %s in:\n%s", msg, out.String())
			}
		}
	}
}

// BenchmarkDebugRecord makes one "Phase done" record as slog.Logger.Debug
// does, looking up its call site, and as a callSite does, once.
func BenchmarkDebugRecord(b *testing.B) {
	logger := slog.New(keepHandler{})
	var site callSite
	b.Run("slog.Logger.Debug", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			logger.Debug("Phase done", "phase", PhaseEHLO, "duration_seconds", 0.0012, "code", 250, "enhanced", "2.0.0")
		}
	})
	b.Run("callSite.debug", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			site.debug(logger, "Phase done", "phase", PhaseEHLO, "duration_seconds", 0.0012, "code", 250, "enhanced", "2.0.0")
		}
	})
}

// keepHandler takes every record and keeps none, as a probe's capture
// would at the least.
type keepHandler struct{}

func (keepHandler) Enabled(context.Context, slog.Level) bool  { return true }
func (keepHandler) Handle(context.Context, slog.Record) error { return nil }
func (h keepHandler) WithAttrs([]slog.Attr) slog.Handler      { return h }
func (h keepHandler) WithGroup(string) slog.Handler           { return h }
