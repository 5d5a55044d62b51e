package collector

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
)

// DefaultProbeLogLimit bounds the log kept for one probe. A probe logs a few
// dozen lines; the bound only matters for a server that makes the prober
// talk a lot, and keeps the history's memory bounded.
const DefaultProbeLogLimit = 64 << 10

// boundedBuffer keeps the beginning and the end of what is written to it, up
// to limit bytes in all, and counts what it leaves out in between: the start
// says what the probe set out to do, the end why it stopped.
type boundedBuffer struct {
	mu      sync.Mutex
	limit   int
	head    []byte
	tail    []byte
	omitted int
}

// probeLogStart is the buffer a probe's log starts with: enough for a
// probe that waits on a silent server (a thousand of them must stay
// cheap), and a few doublings short of an ordinary probe's 5 KB.
const probeLogStart = 1 << 10

func newBoundedBuffer(limit int) *boundedBuffer {
	return &boundedBuffer{limit: limit, head: make([]byte, 0, min(limit/2, probeLogStart))}
}

// Write never fails, so that a long probe log cannot make logging fail.
func (b *boundedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	written := len(p)
	headLimit, tailLimit := b.limit/2, b.limit-b.limit/2
	if room := headLimit - len(b.head); room > 0 {
		n := min(room, len(p))
		b.head = append(b.head, p[:n]...)
		if n == len(p) {
			return written, nil
		}
		p = p[n:]
	}
	b.tail = append(b.tail, p...)
	// Let the tail grow to twice its size before cutting it back, so that
	// the copy happens once per tailLimit bytes rather than at every write.
	if excess := len(b.tail) - tailLimit; excess > tailLimit {
		b.omitted += excess
		b.tail = append(b.tail[:0:0], b.tail[excess:]...)
	}
	return written, nil
}

// String returns what was kept, with a note where bytes were left out.
func (b *boundedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	tailLimit := b.limit - b.limit/2
	tail, omitted := b.tail, b.omitted
	if excess := len(tail) - tailLimit; excess > 0 {
		tail, omitted = tail[excess:], omitted+excess
	}
	if omitted == 0 {
		return string(b.head) + string(tail)
	}
	// Resume at a line start so that the note is not glued to half a line.
	for i, c := range tail {
		if c == '\n' {
			omitted += i + 1
			tail = tail[i+1:]
			break
		}
	}
	return fmt.Sprintf("%s\n[... probe log truncated: %d bytes left out ...]\n%s", b.head, omitted, tail)
}

// teeHandler sends every record of a probe to the probe's own log, whatever
// its level, and to the process's logger at one fixed level (debug by
// default), so that probes do not flood the normal log yet can be followed
// live with --log.level=debug.
type teeHandler struct {
	capture slog.Handler
	main    slog.Handler
	level   slog.Level
}

func (h *teeHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *teeHandler) Handle(ctx context.Context, r slog.Record) error {
	err := h.capture.Handle(ctx, r)
	if h.main.Enabled(ctx, h.level) {
		forwarded := r.Clone()
		forwarded.Level = h.level
		_ = h.main.Handle(ctx, forwarded) // the probe's own log is what matters here
	}
	return err
}

func (h *teeHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &teeHandler{capture: h.capture.WithAttrs(attrs), main: h.main.WithAttrs(attrs), level: h.level}
}

func (h *teeHandler) WithGroup(name string) slog.Handler {
	return &teeHandler{capture: h.capture.WithGroup(name), main: h.main.WithGroup(name), level: h.level}
}

// probeLog is the logging of one probe.
type probeLog struct {
	buffer *boundedBuffer
	// probe goes to the buffer and, at the forwarding level, to the main
	// logger; it is what the prober gets.
	probe *slog.Logger
	// captureOnly writes to the buffer alone, for lines that the main log
	// gets in another form or not at all.
	captureOnly *slog.Logger
	// main is the process's logger with the probe's identity attached. The
	// buffer's lines go without it: they are all about the one probe, and its
	// first line says which.
	main *slog.Logger
}

func newProbeLog(main *slog.Logger, forwardLevel slog.Level, limit int, attrs ...any) *probeLog {
	buf := newBoundedBuffer(limit)
	capture := slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})
	main = main.With(attrs...)
	tee := &teeHandler{capture: capture, main: main.Handler(), level: forwardLevel}
	return &probeLog{
		buffer:      buf,
		probe:       slog.New(tee),
		captureOnly: slog.New(capture),
		main:        main,
	}
}
