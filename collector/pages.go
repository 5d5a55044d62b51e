package collector

import (
	"bytes"
	"embed"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/smtp-exporter/smtp_exporter/config"
)

//go:embed templates/*.html
var templateFiles embed.FS

var landingTemplate = template.Must(template.ParseFS(templateFiles, "templates/landing.html"))

// Pages serves the human-facing pages: the landing page with a probe form
// and the recent probes, a probe's debug output, and the live
// configuration. All links are relative, so the pages work under a route
// prefix as long as they are mounted side by side with /probe and /metrics.
type Pages struct {
	config  *config.SafeConfig
	history *History
	logger  *slog.Logger
}

// NewPages returns the pages for cfg and history; a nil logger discards.
func NewPages(cfg *config.SafeConfig, history *History, logger *slog.Logger) *Pages {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if history == nil {
		history = NewHistory(0)
	}
	return &Pages{config: cfg, history: history, logger: logger}
}

// landingData is what the landing template shows.
type landingData struct {
	Modules      []string
	Probes       []probeRow
	HistoryLimit int
}

// probeRow is one probe in the table of recent probes, already formatted.
type probeRow struct {
	ID       uint64
	Time     string
	Module   string
	Target   string
	Success  bool
	Phase    string
	Reason   string
	Duration string
}

func newProbeRow(e *Entry) probeRow {
	return probeRow{
		ID:       e.ID,
		Time:     e.Time.UTC().Format("2006-01-02 15:04:05Z"),
		Module:   e.Module,
		Target:   e.Target,
		Success:  e.Success,
		Phase:    string(e.FailurePhase),
		Reason:   string(e.FailureReason),
		Duration: formatDuration(e.Duration),
	}
}

// formatDuration keeps two significant figures or so: a refused connection
// takes a fraction of a millisecond, and "0s" would hide that it ran.
func formatDuration(d time.Duration) string {
	switch {
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	default:
		return d.Round(10 * time.Millisecond).String()
	}
}

// Landing serves the landing page.
func (p *Pages) Landing(w http.ResponseWriter, r *http.Request) {
	entries := p.history.List()
	data := landingData{
		Modules:      p.config.ModuleNames(),
		Probes:       make([]probeRow, 0, len(entries)),
		HistoryLimit: p.history.Limit(),
	}
	for _, e := range entries {
		data.Probes = append(data.Probes, newProbeRow(e))
	}
	// Render to a buffer first, so that a template error is a clean 500
	// rather than half a page.
	var buf bytes.Buffer
	if err := landingTemplate.Execute(&buf, data); err != nil {
		p.logger.Error("Rendering the landing page failed", "err", err)
		http.Error(w, "rendering the page failed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write(buf.Bytes())
}

// Logs serves the debug output of one probe of the history: /logs?id=N,
// where N is the number on the landing page or the full probe ID found in a
// canary message.
func (p *Pages) Logs(w http.ResponseWriter, r *http.Request) {
	raw := r.URL.Query().Get("id")
	if raw == "" {
		http.Error(w, "id parameter is missing", http.StatusBadRequest)
		return
	}
	id, ok := p.history.parseID(raw)
	if !ok {
		http.Error(w, "id parameter "+strconv.Quote(raw)+" is not a probe id of this process", http.StatusBadRequest)
		return
	}
	e, ok := p.history.Get(id)
	if !ok {
		http.Error(w, "probe "+strconv.FormatUint(id, 10)+" is not in the history (any more)", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err := e.WriteDebug(w); err != nil {
		p.logger.Debug("Writing debug output failed", "err", err)
	}
}

// Config serves the configuration in use as YAML, secrets as <secret>.
func (p *Pages) Config(w http.ResponseWriter, r *http.Request) {
	cfg := p.config.Get()
	if cfg == nil {
		http.Error(w, "no configuration loaded", http.StatusServiceUnavailable)
		return
	}
	data, err := cfg.Marshal()
	if err != nil {
		p.logger.Error("Rendering the configuration failed", "err", err)
		http.Error(w, "rendering the configuration failed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write(data)
}
