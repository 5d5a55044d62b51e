package collector

import (
	"fmt"
	"io"
	"strings"

	"github.com/smtp-exporter/smtp_exporter/internal/printable"
	"github.com/smtp-exporter/smtp_exporter/prober"
)

// Bounds on the transcript kept with a probe. The prober bounds what it
// reads; these bound what the history holds per probe.
const (
	maxTranscriptLines = 500
	maxTranscriptBytes = 64 << 10
)

// WriteDebug writes the probe's debug output, the text /probe returns with
// debug=true and /logs shows later: the probe's log and SMTP transcript, the
// metrics it returned and the module configuration it ran with.
func (e *Entry) WriteDebug(w io.Writer) error {
	var b strings.Builder
	if e.Notice != "" {
		b.WriteString(e.Notice)
		b.WriteString("\n\n")
	}
	b.WriteString("Logs for the probe:\n")
	b.WriteString(e.Log())
	if e.Result != nil && len(e.Result.Transcript) > 0 {
		b.WriteString("\nSMTP transcript (credentials replaced):\n")
		writeTranscript(&b, e.Result.Transcript)
	}
	b.WriteString("\n\n\nMetrics that would have been returned:\n")
	b.WriteString(e.Metrics)
	b.WriteString("\n\n\nModule configuration:\n")
	b.WriteString(e.ModuleConfig)
	_, err := io.WriteString(w, b.String())
	return err
}

// writeTranscript renders the transcript one line per line, as
// "[  0.012s] S: 220 ready".
func writeTranscript(b *strings.Builder, lines []prober.TranscriptLine) {
	for _, l := range lines {
		fmt.Fprintf(b, "[%8.3fs] %s: %s\n", l.At.Seconds(), printable.String(string(l.Dir)), printable.String(l.Text))
	}
}

// boundResult returns r with its transcript cut to what the history may
// hold, and a note where it was cut. r itself is not modified.
func boundResult(r *prober.Result) *prober.Result {
	if r == nil {
		return nil
	}
	size, keep := 0, 0
	for _, l := range r.Transcript {
		if keep == maxTranscriptLines || size+len(l.Text) > maxTranscriptBytes {
			break
		}
		size += len(l.Text)
		keep++
	}
	if keep == len(r.Transcript) {
		return r
	}
	bounded := *r
	bounded.Transcript = append(r.Transcript[:keep:keep], prober.TranscriptLine{
		At:   r.Transcript[keep].At,
		Dir:  prober.Note,
		Text: fmt.Sprintf("transcript truncated: %d more lines left out", len(r.Transcript)-keep),
	})
	return &bounded
}
