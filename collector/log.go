package collector

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"
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
	// cut is set once bytes were cut from the tail, which then may start
	// in the middle of a line.
	cut bool
	// headClosed is set by skip: the head ends where records were left out.
	headClosed bool
}

// probeLogStart is the buffer a probe's log is formatted into at first:
// enough for a probe that waited on a silent server, and a few doublings
// short of an ordinary probe's 5 KB.
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
	if room := headLimit - len(b.head); room > 0 && !b.headClosed {
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
		b.cut = true
		b.tail = append(b.tail[:0:0], b.tail[excess:]...)
	}
	return written, nil
}

// skip counts n bytes, whole lines, as written and left out: the text of
// records dropped before they were formatted. What follows goes to the
// tail, after the note.
func (b *boundedBuffer) skip(n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.omitted += n
	b.headClosed = true
}

// String returns what was kept, with a note where bytes were left out.
func (b *boundedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	tailLimit := b.limit - b.limit/2
	tail, omitted, cut := b.tail, b.omitted, b.cut
	if excess := len(tail) - tailLimit; excess > 0 {
		tail, omitted, cut = tail[excess:], omitted+excess, true
	}
	if omitted == 0 {
		return string(b.head) + string(tail)
	}
	// Resume at a line start so that the note is not glued to half a line.
	if cut {
		for i, c := range tail {
			if c == '\n' {
				omitted += i + 1
				tail = tail[i+1:]
				break
			}
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
	records *probeRecords
	// probe goes to the records and, at the forwarding level, to the main
	// logger; it is what the prober gets.
	probe *slog.Logger
	// captureOnly goes to the records alone, for lines that the main log
	// gets in another form or not at all.
	captureOnly *slog.Logger
	// main is the process's logger with the probe's identity attached. The
	// probe's own lines go without it: they are all about the one probe, and
	// its first line says which.
	main *slog.Logger
}

func newProbeLog(main *slog.Logger, forwardLevel slog.Level, limit int, attrs ...any) *probeLog {
	records := &probeRecords{limit: limit}
	capture := &captureHandler{records: records}
	main = main.With(attrs...)
	tee := &teeHandler{capture: capture, main: main.Handler(), level: forwardLevel}
	return &probeLog{
		records:     records,
		probe:       slog.New(tee),
		captureOnly: slog.New(capture),
		main:        main,
	}
}

// maxHeldRecords bounds the records kept at each end of a probe's log,
// whatever their size, so that a server that makes the prober log many
// short lines cannot make one probe hold much more memory than its text.
const maxHeldRecords = 256

// recordChunk is the number of records in a chunk of a log's head.
const recordChunk = 16

// probeRecords keeps the records of one probe's log and formats them as
// text only when the log is read: most probes are never looked at, and
// formatting forty-odd lines for each of them is wasted work. The text is what a text handler writing to
// a boundedBuffer of limit bytes would have kept, time stamps included:
// a record keeps its time. Values are formatted when read, so a probe's
// loggers must be given values that do not change afterwards, as the
// prober does (strings, numbers, errors, addresses).
//
// Records are kept like the buffer keeps bytes: the first ones until
// they make half the limit, then the last ones while dropping any that
// the buffer would certainly have cut, counting their text exactly.
type probeRecords struct {
	mu    sync.Mutex
	limit int
	// head is kept in chunks of recordChunk records, so that it grows
	// without copying what it holds: a probe logs some 50 records, and
	// a slice grown by append allocated more than twice their size.
	head      [][]capturedRecord
	headCount int
	tail      []capturedRecord
	// headSize and tailSize are lower bounds of the text of head and tail.
	headSize, tailSize int
	// omitted is the text size of the records dropped between head and
	// tail; dropped says whether there were any.
	omitted int
	dropped bool
	// sink is where every formatter of this log writes, pointed at the
	// buffer being filled.
	sink redirect
}

// capturedRecord is what the text of a record is made from. A slog.Record
// holds room for five attributes in 288 bytes; this holds the record's own.
type capturedRecord struct {
	handler *captureHandler
	time    time.Time
	level   slog.Level
	message string
	attrs   []slog.Attr
	// size is a lower bound of the record's text.
	size int
}

func captureRecord(h *captureHandler, r slog.Record) capturedRecord {
	c := capturedRecord{handler: h, time: r.Time, level: r.Level, message: r.Message}
	c.size = len("level=INFO msg=\n") + len(r.Message)
	if !r.Time.IsZero() {
		c.size += len("time=2006-01-02T15:04:05.000Z ")
	}
	if n := r.NumAttrs(); n > 0 {
		c.attrs = make([]slog.Attr, 0, n)
		r.Attrs(func(a slog.Attr) bool {
			c.attrs = append(c.attrs, a)
			c.size += attrSize(a)
			return true
		})
	}
	return c
}

func (p *probeRecords) add(c capturedRecord) {
	p.mu.Lock()
	defer p.mu.Unlock()
	headLimit, tailLimit := p.limit/2, p.limit-p.limit/2
	if p.headSize < headLimit && len(p.tail) == 0 && p.headCount < maxHeldRecords {
		if n := len(p.head); n == 0 || len(p.head[n-1]) == recordChunk {
			p.head = append(p.head, make([]capturedRecord, 0, recordChunk))
		}
		last := &p.head[len(p.head)-1]
		*last = append(*last, c)
		p.headCount++
		p.headSize += c.size
		return
	}
	p.tail = append(p.tail, c)
	p.tailSize += c.size
	// The oldest record of the tail goes when the rest fills the tail's
	// share anyway: the buffer would have cut it.
	for len(p.tail) > 1 && (p.tailSize-p.tail[0].size >= tailLimit || len(p.tail) > maxHeldRecords) {
		var count counter
		p.format(&count, p.tail[0])
		p.omitted += int(count)
		p.dropped = true
		p.tailSize -= p.tail[0].size
		p.tail[0] = capturedRecord{}
		p.tail = p.tail[1:]
	}
}

// format writes the text of one record to w. The caller holds p.mu.
func (p *probeRecords) format(w io.Writer, c capturedRecord) {
	p.sink.w = w
	r := slog.NewRecord(c.time, c.level, c.message, 0)
	r.AddAttrs(c.attrs...)
	_ = c.handler.formatter().Handle(context.Background(), r) // writes to memory
	p.sink.w = nil
}

// String formats the log.
func (p *probeRecords) String() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	buf := newBoundedBuffer(p.limit)
	for _, chunk := range p.head {
		for _, c := range chunk {
			p.format(buf, c)
		}
	}
	if p.dropped {
		buf.skip(p.omitted)
	}
	for _, c := range p.tail {
		p.format(buf, c)
	}
	return buf.String()
}

// attrSize is a lower bound of the size of a's text: the text handler
// writes at least " key=" and the string value, quoting only adds to them,
// and a group's key is only a prefix of its members' keys.
func attrSize(a slog.Attr) int {
	switch a.Value.Kind() {
	case slog.KindGroup:
		n := 0
		for _, g := range a.Value.Group() {
			n += attrSize(g)
		}
		return n
	case slog.KindString:
		return len(" =") + len(a.Key) + len(a.Value.String())
	}
	if a.Equal(slog.Attr{}) {
		return 0 // the text handler leaves it out
	}
	return len(" =") + len(a.Key)
}

// captureHandler keeps records for their probe's log. It remembers the
// attributes and groups it was given the way the text handler would have
// applied them, and builds that text handler only when a record of it is
// formatted.
type captureHandler struct {
	records *probeRecords
	parent  *captureHandler
	attrs   []slog.Attr
	group   string
	// text formats this handler's records; built under records.mu.
	text slog.Handler
}

func (h *captureHandler) Enabled(_ context.Context, level slog.Level) bool {
	return level >= slog.LevelDebug
}

func (h *captureHandler) Handle(_ context.Context, r slog.Record) error {
	h.records.add(captureRecord(h, r))
	return nil
}

func (h *captureHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	if len(attrs) == 0 {
		return h
	}
	return &captureHandler{records: h.records, parent: h, attrs: attrs}
}

func (h *captureHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return &captureHandler{records: h.records, parent: h, group: name}
}

// formatter returns the text handler of h. The caller holds records.mu.
func (h *captureHandler) formatter() slog.Handler {
	if h.text == nil {
		switch {
		case h.parent == nil:
			h.text = slog.NewTextHandler(&h.records.sink, &slog.HandlerOptions{Level: slog.LevelDebug})
		case h.group != "":
			h.text = h.parent.formatter().WithGroup(h.group)
		default:
			h.text = h.parent.formatter().WithAttrs(h.attrs)
		}
	}
	return h.text
}

// redirect writes to w, which the formatting of a probe's log points at
// the buffer of the moment.
type redirect struct{ w io.Writer }

func (r *redirect) Write(p []byte) (int, error) { return r.w.Write(p) }

// counter counts the bytes written to it.
type counter int

func (c *counter) Write(p []byte) (int, error) {
	*c += counter(len(p))
	return len(p), nil
}

// logText is a probe's log as text, formatted when first read.
type logText struct {
	once   sync.Once
	format func() string
	text   string
}

// fixedLog is a log whose text is known already.
func fixedLog(text string) *logText { return &logText{text: text} }

// lazyLog is a log formatted by format when first read.
func lazyLog(format func() string) *logText { return &logText{format: format} }

// String returns the text, formatting it on the first call.
func (l *logText) String() string {
	if l == nil {
		return ""
	}
	l.once.Do(func() {
		if l.format != nil {
			l.text, l.format = l.format(), nil // the records are no longer needed
		}
	})
	return l.text
}
