package delivery

import (
	"strings"
	"testing"
	"time"

	"github.com/smtp-exporter/smtp_exporter/prober"
)

// A server's line reaches the transcript printable and bounded, by the
// rule of the pages.
func TestTranscriptLinesArePrintableAndBounded(t *testing.T) {
	tr := newTranscript(prober.NewScrubber(), func() time.Time { return time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC) })
	tr.Write([]byte("* OK \x1b[31mred\u202e\r\n* " + strings.Repeat("x", 2*maxTranscriptLine) + "\r\n"))
	lines := tr.lines()
	if len(lines) != 2 {
		t.Fatalf("lines %q, want 2", lines)
	}
	if want := `12:00:00.000 S: * OK \x1b[31mred\u202e`; lines[0] != want {
		t.Errorf("line %q, want %q", lines[0], want)
	}
	if !strings.HasSuffix(lines[1], "x...") || len(lines[1]) > len("12:00:00.000 ")+maxTranscriptLine+len("...") {
		t.Errorf("long line not cut: %d bytes, ends %q", len(lines[1]), lines[1][len(lines[1])-8:])
	}
}
