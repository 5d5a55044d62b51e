package collector

import (
	"bytes"
	"embed"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/smtp-exporter/smtp_exporter/config"
	"github.com/smtp-exporter/smtp_exporter/internal/printable"
)

//go:embed templates/*.html
var templateFiles embed.FS

// Each page is parsed with the shared layout, which holds the head and
// the one stylesheet.
var (
	landingTemplate = template.Must(template.New("landing.html").Funcs(pageFuncs).
			ParseFS(templateFiles, "templates/layout.html", "templates/landing.html"))
	probeTemplate = template.Must(template.New("probe.html").Funcs(pageFuncs).
			ParseFS(templateFiles, "templates/layout.html", "templates/probe.html"))
)

// pageSecurityPolicy is sent with every HTML page. The pages need no script
// and load nothing from anywhere: should a server's reply ever get past the
// escaping, the browser still runs none of it. Inline styles are allowed
// because the waterfall's bars are placed by style attributes computed on
// the server.
const pageSecurityPolicy = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; " +
	"form-action 'self'; base-uri 'none'; frame-ancestors 'none'"

// writeHTML renders a page to a buffer first, so that a template error is a
// clean 500 rather than half a page.
func writeHTML(w http.ResponseWriter, logger *slog.Logger, t *template.Template, data any) {
	var buf bytes.Buffer
	if err := t.Execute(&buf, data); err != nil {
		logger.Error("Rendering a page failed", "page", t.Name(), "err", err)
		http.Error(w, "rendering the page failed", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", pageSecurityPolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	// The pages show targets and replies of the moment; a cached copy
	// would tell an old story.
	h.Set("Cache-Control", "no-store")
	_, _ = w.Write(buf.Bytes())
}

// writeProbePage serves the result page of one probe. The /probe handler
// uses it for view=html, /logs for a browser.
func writeProbePage(w http.ResponseWriter, logger *slog.Logger, e *Entry) {
	writeHTML(w, logger, probeTemplate, newProbePage(e, time.Now()))
}

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
	Modules []string
	Probes  []probeRow
	// Failures counts the failed probes among Probes.
	Failures     int
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
		Target:   printable.String(e.Target),
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
		if !e.Success {
			data.Failures++
		}
	}
	writeHTML(w, p.logger, landingTemplate, data)
}

// Logs serves one probe of the history: /logs?id=N, where N is the number on
// the landing page or the full probe ID found in a canary message. A browser
// (Accept: text/html) gets the result page, anything else the plain-text
// debug output, as /probe?debug=true gives it; view=html or view=text
// chooses explicitly.
func (p *Pages) Logs(w http.ResponseWriter, r *http.Request) {
	var html bool
	switch view := r.URL.Query().Get("view"); view {
	case "html":
		html = true
	case "text":
	case "":
		html = acceptsHTML(r.Header.Values("Accept"))
	default:
		http.Error(w, "view parameter "+strconv.Quote(view)+" is neither html nor text", http.StatusBadRequest)
		return
	}
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
	// Whichever form it takes, the answer depends on Accept.
	w.Header().Add("Vary", "Accept")
	if html {
		writeProbePage(w, p.logger, e)
		return
	}
	writeDebugText(w, p.logger, e)
}

// writeDebugText answers with the plain-text debug output of a probe, as
// debug=true and /logs do for curl and scripts.
func writeDebugText(w http.ResponseWriter, logger *slog.Logger, e *Entry) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err := e.WriteDebug(w); err != nil {
		logger.Debug("Writing debug output failed", "err", err)
	}
}

// acceptsHTML reports whether an Accept header asks for HTML: a browser
// sends "text/html,application/xhtml+xml,...;q=0.9,*/*;q=0.8", curl "*/*"
// and Prometheus the exposition formats. Only an explicit text/html (or
// XHTML) with a non-zero quality counts, so scripts keep the plain text.
func acceptsHTML(accept []string) bool {
	for _, header := range accept {
		for _, item := range strings.Split(header, ",") {
			mediaType, params, _ := strings.Cut(item, ";")
			mediaType = strings.ToLower(strings.TrimSpace(mediaType))
			if mediaType != "text/html" && mediaType != "application/xhtml+xml" {
				continue
			}
			if !zeroQuality(params) {
				return true
			}
		}
	}
	return false
}

// zeroQuality reports whether media type parameters say q=0, "not
// acceptable".
func zeroQuality(params string) bool {
	for _, param := range strings.Split(params, ";") {
		name, value, _ := strings.Cut(param, "=")
		if strings.EqualFold(strings.TrimSpace(name), "q") {
			q, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
			return err == nil && q == 0
		}
	}
	return false
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
