package collector

import (
	"bytes"
	"embed"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/smtp-exporter/smtp_exporter/config"
	"github.com/smtp-exporter/smtp_exporter/internal/printable"
	"github.com/smtp-exporter/smtp_exporter/prober"
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
// uses it for view=html, with the module's delivery state (nil for none),
// /logs for a browser.
func writeProbePage(w http.ResponseWriter, logger *slog.Logger, e *Entry, state *deliveryStateView) {
	p := newProbePage(e, time.Now())
	p.DeliveryState = state
	writeHTML(w, logger, probeTemplate, p)
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
	Modules []moduleOption
	// Placeholder asks for a choice: every module sends a message, and
	// none is chosen for the person.
	Placeholder bool
	States      []stateRow
	// Failing counts the failing rows among States.
	Failing int
	// GateNote says that some modules answer scrapes without a new probe
	// (min_interval, auth_failure_backoff), which the history does not
	// record.
	GateNote bool
	Probes   []probeRow
	// Failures counts the failed probes among Probes.
	Failures     int
	HistoryLimit int
}

// moduleOption is one module in the probe form's select.
type moduleOption struct {
	Name string
	// SendsMail: the module's probe submits a canary message.
	SendsMail bool
	Selected  bool
}

// sendsMail reports whether a probe with module submits a message: it
// plans a DATA phase (smtp.mail with data: true), where data: false stops
// at RSET after RCPT.
func sendsMail(module *config.Module) bool {
	return slices.Contains(prober.PlannedPhases(module), prober.PhaseData)
}

// moduleOptions lists the modules of cfg by name, the first that sends no
// message chosen; none is chosen if all send one.
func moduleOptions(cfg *config.Config) []moduleOption {
	if cfg == nil {
		return nil
	}
	options := make([]moduleOption, 0, len(cfg.Modules))
	chosen := false
	for _, name := range cfg.ModuleNames() {
		module := cfg.Modules[name]
		o := moduleOption{Name: name, SendsMail: sendsMail(&module)}
		if !o.SendsMail && !chosen {
			o.Selected, chosen = true, true
		}
		options = append(options, o)
	}
	return options
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

// stateRow is one module and target in the table of current states,
// already formatted.
type stateRow struct {
	Module string
	Target string
	// ID is the latest probe's number, for its page.
	ID      uint64
	Success bool
	Phase   string
	Reason  string
	// Time and Ago say when the latest probe started.
	Time string
	Ago  string

	// The run of failures, for a failing row: its first failure, how many
	// failed probes the history holds, and whether it reaches back to a
	// success (AtLeast false) or not.
	SinceID    uint64
	Since      string
	SinceAgo   string
	Failures   int
	AtLeast    bool
	SinceStart bool
	// LastSuccess is when the success before the run started, if known.
	LastSuccess string

	// The latest failure of a succeeding row, if one is kept.
	LastFailureID     uint64
	LastFailure       string
	LastFailurePhase  string
	LastFailureReason string
}

func newStateRow(s TargetState, now time.Time) stateRow {
	row := stateRow{
		Module:  s.Module,
		Target:  printable.String(s.Target),
		ID:      s.Last.ID,
		Success: s.Last.Success,
		Phase:   string(s.Last.FailurePhase),
		Reason:  string(s.Last.FailureReason),
		Time:    clock(s.Last.Time),
		Ago:     agoText(now.Sub(s.Last.Time)),
	}
	if f := s.FailingSince; f != nil {
		row.SinceID, row.Since, row.SinceAgo = f.ID, clock(f.Time), agoText(now.Sub(f.Time))
		row.Failures = s.Failures
		row.AtLeast, row.SinceStart = s.LastSuccess == nil, s.SinceStart
		if s.LastSuccess != nil {
			row.LastSuccess = clock(s.LastSuccess.Time)
		}
	}
	if f := s.LastFailure; f != nil && s.Last.Success {
		row.LastFailureID, row.LastFailure = f.ID, clock(f.Time)
		row.LastFailurePhase, row.LastFailureReason = string(f.FailurePhase), string(f.FailureReason)
	}
	return row
}

// agoText says how long ago something was, to the second within the hour
// and to the minute after: "42s", "12m5s", "12m", "3h7m".
func agoText(d time.Duration) string {
	if d < time.Hour {
		d = max(d, 0).Round(time.Second)
	} else {
		d = d.Round(time.Minute)
	}
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	return s
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
	writeHTML(w, p.logger, landingTemplate, newLandingData(p.config.Get(), p.history, time.Now()))
}

// newLandingData gathers what the landing page shows as of now.
func newLandingData(cfg *config.Config, history *History, now time.Time) landingData {
	entries := history.List()
	states := history.States()
	data := landingData{
		Modules:      moduleOptions(cfg),
		States:       make([]stateRow, 0, len(states)),
		Probes:       make([]probeRow, 0, len(entries)),
		HistoryLimit: history.Limit(),
	}
	data.Placeholder = !slices.ContainsFunc(data.Modules, func(o moduleOption) bool { return o.Selected })
	if cfg != nil {
		for _, m := range cfg.Modules {
			data.GateNote = data.GateNote || reusable(&m)
		}
	}
	for _, s := range states {
		data.States = append(data.States, newStateRow(s, now))
		if s.Failing() {
			data.Failing++
		}
	}
	for _, e := range entries {
		data.Probes = append(data.Probes, newProbeRow(e))
		if !e.Success {
			data.Failures++
		}
	}
	return data
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
		writeProbePage(w, p.logger, e, nil)
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
