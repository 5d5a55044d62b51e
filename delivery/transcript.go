package delivery

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/smtp-exporter/smtp_exporter/internal/printable"
	"github.com/smtp-exporter/smtp_exporter/prober"
)

// Bounds of the transcript kept for the pages.
const (
	maxTranscriptLines = 200
	maxTranscriptLine  = 300
)

// transcript keeps the last lines of a watcher's IMAP sessions, redacted,
// for the pages. It is the client's debug writer: it sees both directions
// and tells them apart by the shape of the line. During a login it records
// nothing but a note; every line also goes through the probe's redactor,
// which knows the password, the token and their forms.
type transcript struct {
	scrub *prober.Scrubber
	now   func() time.Time

	mu      sync.Mutex
	partial []byte
	muted   bool
	ring    []string
	next    int
}

func newTranscript(s *prober.Scrubber, now func() time.Time) *transcript {
	return &transcript{scrub: s, now: now}
}

// Write takes raw IMAP bytes.
func (t *transcript) Write(p []byte) (int, error) {
	n := len(p)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.muted {
		return n, nil
	}
	for len(p) > 0 {
		i := strings.IndexByte(string(p), '\n')
		if i < 0 {
			room := maxTranscriptLine + 1 - len(t.partial)
			t.partial = append(t.partial, p[:max(0, min(len(p), room))]...)
			break
		}
		room := maxTranscriptLine + 1 - len(t.partial)
		t.partial = append(t.partial, p[:max(0, min(i, room))]...)
		t.addLocked(wireLine(string(t.partial)))
		t.partial = t.partial[:0]
		p = p[i+1:]
	}
	return n, nil
}

// mute keeps the login exchange out of the transcript.
func (t *transcript) mute(on bool) {
	t.mu.Lock()
	t.muted = on
	t.partial = t.partial[:0]
	t.mu.Unlock()
}

// note adds a line of ours.
func (t *transcript) note(format string, args ...any) {
	t.mu.Lock()
	t.addLocked("* " + fmt.Sprintf(format, args...))
	t.mu.Unlock()
}

func (t *transcript) scrubErr(err error) error {
	if err == nil {
		return nil
	}
	return errors.New(t.scrub.Scrub(err.Error()))
}

// wireLine labels a line S: or C: by its shape: the server's start with
// "* ", "+" or a tag and a status.
func wireLine(line string) string {
	line = strings.TrimSuffix(line, "\r")
	dir := "C: "
	if strings.HasPrefix(line, "* ") || strings.HasPrefix(line, "+") {
		dir = "S: "
	} else if _, rest, ok := strings.Cut(line, " "); ok {
		for _, st := range []string{"OK", "NO", "BAD", "BYE"} {
			if strings.HasPrefix(rest, st+" ") || rest == st {
				dir = "S: "
			}
		}
	}
	return dir + line
}

func (t *transcript) addLocked(line string) {
	line = printable.Bounded(t.scrub.Scrub(line), maxTranscriptLine)
	line = t.now().UTC().Format("15:04:05.000 ") + line
	if len(t.ring) < maxTranscriptLines {
		t.ring = append(t.ring, line)
		return
	}
	t.ring[t.next] = line
	t.next = (t.next + 1) % maxTranscriptLines
}

// lines returns the kept lines, oldest first.
func (t *transcript) lines() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]string, 0, len(t.ring))
	out = append(out, t.ring[t.next:]...)
	return append(out, t.ring[:t.next]...)
}
