package collector

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/smtp-exporter/smtp_exporter/prober"
)

// ErrUnknownModule is returned by Probe for a module the configuration does
// not have.
var ErrUnknownModule = errors.New("unknown module")

// Probe runs one probe of target with the named module, by the steps of a
// /probe request once its parameters are checked: the module's snapshot,
// the gate, allowed_targets, redaction and the probe's timeout all work as
// they do there. timeout 0 means the module's timeout; a longer one is cut
// to it, as a scrape timeout is. The error says what was wrong with the
// request; a probe that ran and failed is an Entry with Success false.
func (h *Handler) Probe(ctx context.Context, moduleName, target string, timeout time.Duration) (*Entry, error) {
	switch {
	case target == "":
		return nil, errors.New("target is missing")
	case len(target) > maxTargetLen:
		return nil, fmt.Errorf("target is longer than %d bytes", maxTargetLen)
	case timeout < 0:
		return nil, fmt.Errorf("timeout %v is negative", timeout)
	}
	module, text, ok := h.modules.lookup(h.config, moduleName)
	if !ok {
		h.moduleUnknown.Inc()
		return nil, fmt.Errorf("%w %q", ErrUnknownModule, moduleName)
	}
	limit, _ := probeTimeout("", 0, time.Duration(module.Timeout))
	if timeout == 0 || timeout > limit {
		timeout = limit
	}
	return h.answer(ctx, target, moduleName, module, text, timeout)
}

// ReasonMeaning explains a failure reason in a sentence, the one the result
// page shows; "" for a reason it does not know.
func ReasonMeaning(reason prober.Reason) string {
	return reasonMeaning[reason]
}

// TranscriptText renders a transcript as the debug output does, one line
// per line ("[   0.012s] S: 220 ready"), every text made printable.
func TranscriptText(lines []prober.TranscriptLine) string {
	var b strings.Builder
	writeTranscript(&b, lines)
	return b.String()
}

// FormatDuration writes a duration as the pages do: two decimals of
// milliseconds below 10ms, then rounded.
func FormatDuration(d time.Duration) string { return formatDuration(d) }

// FormatBytes writes a SIZE limit as the result page does.
func FormatBytes(n int64) string { return formatBytes(n) }

// PrintableAll makes every text of list printable, as the pages do.
func PrintableAll(list []string) []string { return printableAll(list) }
