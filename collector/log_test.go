package collector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// logBoth sends the same lines, through the same With and WithGroup
// calls, to a probe log and to a text handler writing to a boundedBuffer,
// which is what the probe log must read like.
func logBoth(t *testing.T, limit int, write func(*slog.Logger)) (got, want string) {
	t.Helper()
	plog := newProbeLog(slog.New(slog.DiscardHandler), slog.LevelDebug, limit)
	reference := newBoundedBuffer(limit)
	for _, logger := range []*slog.Logger{
		plog.probe,
		slog.New(slog.NewTextHandler(reference, &slog.HandlerOptions{Level: slog.LevelDebug})),
	} {
		write(logger)
	}
	return plog.records.String(), reference.String()
}

func TestProbeLogReadsLikeTextHandler(t *testing.T) {
	at := time.Date(2001, 2, 3, 4, 5, 6, 7_000_000, time.UTC)
	record := func(logger *slog.Logger, level slog.Level, msg string, args ...any) {
		r := slog.NewRecord(at, level, msg, 0)
		r.Add(args...)
		_ = logger.Handler().Handle(context.Background(), r)
	}
	for _, tc := range []struct {
		name  string
		limit int
		lines int
		text  string
	}{
		{"short", DefaultProbeLogLimit, 40, "250-PIPELINING"},
		{"just under the limit", 4096, 30, "250 ok"},
		{"head and tail", 4096, 400, "250 ok"},
		{"long lines", 4096, 100, strings.Repeat("x", 900)},
		{"as many lines as it holds", DefaultProbeLogLimit, maxHeldRecords - 2, ""},
		{"tiny limit", 100, 50, "a line in the middle"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, want := logBoth(t, tc.limit, func(logger *slog.Logger) {
				record(logger, slog.LevelInfo, "Beginning probe", "probe_id", "ab-1", "timeout_seconds", 9.5)
				phase := logger.With("phase", "ehlo").WithGroup("smtp")
				for i := range tc.lines {
					record(phase, slog.LevelDebug, "SMTP S", "line", fmt.Sprintf("%d %s", i, tc.text), "quoted", "a \"b\"",
						slog.Group("g", "k", "v"), slog.Attr{}, slog.Group("empty"))
				}
				record(logger, slog.LevelError, "Probe failed", "err", errors.New("connection reset"), "duration_seconds", 1.25)
			})
			if got != want {
				t.Errorf("probe log differs from the text handler's:\n got %d bytes, ending %q\nwant %d bytes, ending %q",
					len(got), got[max(0, len(got)-300):], len(want), want[max(0, len(want)-300):])
			}
			if !strings.Contains(got, "time=2001-02-03T04:05:06.007Z") {
				t.Errorf("records not stamped with their own time:\n%s", got)
			}
			if len(got) > tc.limit+100 {
				t.Errorf("kept %d bytes for a limit of %d", len(got), tc.limit)
			}
		})
	}
}

// A log with more records than it holds keeps a bounded number of them,
// its first and its last, and counts exactly the bytes it left out.
func TestProbeLogBoundsRecords(t *testing.T) {
	plog := newProbeLog(slog.New(slog.DiscardHandler), slog.LevelDebug, DefaultProbeLogLimit)
	var total counter
	reference := slog.New(slog.NewTextHandler(&total, nil))
	for _, logger := range []*slog.Logger{plog.probe, reference} {
		logger.Info("first")
		for i := range 10 * maxHeldRecords {
			logger.Info("x", "i", i)
		}
		logger.Info("last")
	}
	if held := plog.records.headCount + len(plog.records.tail); held > 2*maxHeldRecords {
		t.Errorf("holding %d records, at most %d expected", held, 2*maxHeldRecords)
	}
	out := plog.records.String()
	m := regexp.MustCompile(`\n\[\.\.\. probe log truncated: (\d+) bytes left out \.\.\.\]\n`).FindStringSubmatchIndex(out)
	if m == nil {
		t.Fatalf("no truncation note in %d bytes", len(out))
	}
	omitted, _ := strconv.Atoi(out[m[2]:m[3]])
	if kept := len(out) - (m[1] - m[0]); kept+omitted != int(total) {
		t.Errorf("kept %d bytes and left out %d, of %d", kept, omitted, total)
	}
	if !strings.Contains(out[:m[0]], "msg=first\n") || !strings.HasSuffix(out, "level=INFO msg=last\n") {
		t.Errorf("first or last line missing: %q ... %q", out[:200], out[len(out)-200:])
	}
}

// The text is formatted once, when first read, and a later line does not
// change what was read.
func TestLazyLogFormatsOnce(t *testing.T) {
	calls := 0
	l := lazyLog(func() string { calls++; return "text\n" })
	if l.String() != "text\n" || l.String() != "text\n" || calls != 1 {
		t.Errorf("formatted %d times", calls)
	}
	var e Entry
	if e.Log() != "" {
		t.Errorf("entry without a log reads %q", e.Log())
	}
}

// The records kept are bounded by a lower bound of their text's size; were
// it more than the text, the log would drop records that the text bound
// would have kept.
func TestRecordSizeIsALowerBound(t *testing.T) {
	root := &captureHandler{records: &probeRecords{limit: DefaultProbeLogLimit}}
	grouped := root.WithAttrs([]slog.Attr{slog.String("phase", "auth")}).WithGroup("smtp").(*captureHandler)
	for _, r := range []slog.Record{
		slog.NewRecord(time.Now(), slog.LevelInfo, "", 0),
		slog.NewRecord(time.Time{}, slog.LevelWarn, "no time", 0),
		slog.NewRecord(time.Now().In(time.FixedZone("x", 3600)), slog.LevelDebug, "zone", 0),
	} {
		r.Add("", "empty key", "n", 42, slog.Group("g", "k", "v", slog.Group("h", "", 1)), slog.Attr{}, slog.Group("empty"), "s", "")
		for _, h := range []*captureHandler{root, grouped} {
			c := captureRecord(h, r)
			var text counter
			h.records.mu.Lock()
			h.records.format(&text, c)
			h.records.mu.Unlock()
			if c.size > int(text) || text == 0 {
				t.Errorf("size bound %d above the text's %d bytes for %q", c.size, text, r.Message)
			}
		}
	}
	// A line with nothing to quote is exactly as long as the bound.
	plain := slog.NewRecord(time.Now().UTC(), slog.LevelInfo, "x", 0)
	plain.Add("k", "v")
	c := captureRecord(root, plain)
	var text counter
	root.records.mu.Lock()
	root.records.format(&text, c)
	root.records.mu.Unlock()
	if c.size != int(text) {
		t.Errorf("size bound %d for a plain line of %d bytes", c.size, text)
	}
}
