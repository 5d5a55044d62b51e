package collector

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/expfmt"

	"github.com/smtp-exporter/smtp_exporter/config"
	"github.com/smtp-exporter/smtp_exporter/prober"
)

// ProbeFunc runs one probe. prober.Probe is the real one; tests pass fakes.
type ProbeFunc func(ctx context.Context, target string, module config.Module, probeID string, logger *slog.Logger) *prober.Result

// scrapeTimeoutHeader is where Prometheus says how long it will wait.
const scrapeTimeoutHeader = "X-Prometheus-Scrape-Timeout-Seconds"

// maxTargetLen bounds the target parameter: a host name is at most 253
// bytes, and the target is kept in the history and shown on the pages.
const maxTargetLen = 1024

// HandlerOpts configures the /probe handler.
type HandlerOpts struct {
	// Config is the live configuration; each probe takes a snapshot of its
	// module, so a reload never changes a probe under way.
	Config *config.SafeConfig
	// Logger is the process's logger; nil discards.
	Logger *slog.Logger
	// ProbeLogLevel is the level at which a probe's own log lines reach
	// Logger (they are always kept in full for debug output). nil means
	// debug, so that normal logs get one line per failed probe only.
	ProbeLogLevel slog.Leveler
	// TimeoutOffset is subtracted from the scrape timeout Prometheus
	// announces, to leave time for the response (--timeout-offset).
	TimeoutOffset time.Duration
	// History receives every finished probe and numbers them; nil keeps no
	// history.
	History *History
	// MaxConcurrent limits the probes running at once; 0 means no limit.
	// A probe over the limit gets 503 at once rather than waiting, since
	// Prometheus would time it out anyway.
	MaxConcurrent int
	// Probe runs a probe; nil means prober.Probe.
	Probe ProbeFunc
	// Registerer receives the exporter's own metrics about probing (for
	// /metrics, never in a /probe response); nil registers them nowhere.
	Registerer prometheus.Registerer
	// GuardLimit bounds the results kept for min_interval and
	// auth_failure_backoff; 0 means DefaultGuardLimit.
	GuardLimit int
}

// Handler serves /probe: it checks the parameters, takes the module from the
// live configuration, works out the timeout, runs the probe and returns its
// metrics from a registry made for that probe. A failed probe is a 200 with
// probe_success 0; 4xx answers only a bad request.
type Handler struct {
	config        *config.SafeConfig
	logger        *slog.Logger
	probeLogLevel slog.Level
	timeoutOffset time.Duration
	history       *History
	probe         ProbeFunc
	// guard shares concurrent probes of one module and target and keeps
	// results for min_interval and auth_failure_backoff.
	guard *guard
	// modules caches each module's YAML and fingerprint.
	modules moduleTexts
	// slots is a semaphore of MaxConcurrent tokens, nil when unlimited.
	// promhttp's MaxRequestsInFlight cannot do this: its handler is made
	// per request here.
	slots chan struct{}

	moduleUnknown prometheus.Counter
	inFlight      prometheus.Gauge
	rejected      prometheus.Counter
}

// NewHandler returns the /probe handler and registers its metrics.
func NewHandler(opts HandlerOpts) *Handler {
	h := &Handler{
		config:        opts.Config,
		logger:        opts.Logger,
		probeLogLevel: slog.LevelDebug,
		timeoutOffset: opts.TimeoutOffset,
		history:       opts.History,
		probe:         opts.Probe,
		guard:         newGuard(opts.GuardLimit),
		moduleUnknown: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "smtp_exporter",
			Name:      "module_unknown_total",
			Help:      "Probe requests that named a module not in the configuration.",
		}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "smtp_exporter",
			Name:      "probes_in_flight",
			Help:      "Probes running now.",
		}),
		rejected: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "smtp_exporter",
			Name:      "probes_rejected_total",
			Help:      "Probe requests answered 503 because --probe.max-concurrent probes were already running.",
		}),
	}
	if h.logger == nil {
		h.logger = slog.New(slog.DiscardHandler)
	}
	if opts.ProbeLogLevel != nil {
		h.probeLogLevel = opts.ProbeLogLevel.Level()
	}
	if h.history == nil {
		h.history = NewHistory(0)
	}
	if h.probe == nil {
		h.probe = defaultProbe
	}
	if opts.MaxConcurrent > 0 {
		h.slots = make(chan struct{}, opts.MaxConcurrent)
	}
	if opts.Registerer != nil {
		opts.Registerer.MustRegister(h.moduleUnknown, h.inFlight, h.rejected)
	}
	return h
}

// ServeHTTP handles one probe request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	params := r.URL.Query()
	target, err := singleParam(params, "target")
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if len(target) > maxTargetLen {
		http.Error(w, fmt.Sprintf("target parameter is longer than %d bytes", maxTargetLen), http.StatusBadRequest)
		return
	}
	moduleName, err := singleParam(params, "module")
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	module, text, ok := h.modules.lookup(h.config, moduleName)
	if !ok {
		h.moduleUnknown.Inc()
		h.logger.Debug("Unknown module", "module", moduleName, "target", target)
		http.Error(w, fmt.Sprintf("unknown module %q", moduleName), http.StatusBadRequest)
		return
	}
	timeout, err := probeTimeout(r.Header.Get(scrapeTimeoutHeader), h.timeoutOffset, time.Duration(module.Timeout))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	// view=html is what the landing page's form sends: the probe runs and
	// is recorded exactly as for Prometheus, and the person gets its result
	// page instead of the exposition. Rendering here rather than redirecting
	// to logs?id=N works with the history disabled too.
	view := params.Get("view")
	if view != "" && view != "html" {
		http.Error(w, fmt.Sprintf("view parameter %q is not html", view), http.StatusBadRequest)
		return
	}

	if !h.acquire() {
		h.rejected.Inc()
		http.Error(w, fmt.Sprintf("too many probes in flight (limit %d), try again later", cap(h.slots)), http.StatusServiceUnavailable)
		return
	}
	res := func() guardResult {
		defer h.release()
		// A probe runs on its own deadline and is not cancelled when the
		// request that started it goes away, since others may be waiting
		// for it.
		deadline := time.Now().Add(timeout)
		return h.guard.do(r.Context(), deadline, guardKey(moduleName, target), h.guardPolicy(module, text), func() *Entry {
			entry := h.run(context.WithoutCancel(r.Context()), target, moduleName, module, text, timeout)
			h.history.Add(entry)
			return entry
		})
	}()
	entry := h.respond(res, target, moduleName, module, text, timeout)

	if view == "html" {
		writeProbePage(w, h.logger, entry)
		return
	}
	if params.Get("debug") == "true" {
		writeDebugText(w, h.logger, entry)
		return
	}
	if writeExposition(w, r, params, entry.Metrics) {
		return
	}
	// Another format, or a name[] filter: built from the same result, age
	// included (0 for a probe run or shared now).
	registry := h.registryFor(entry.Result, entry.Timeout, module, res.age)
	promhttp.HandlerFor(registry, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}).ServeHTTP(w, r)
}

// writeExposition answers a scraper that takes the text format with the
// exposition already rendered for the history, which is that of the very
// registry the request would otherwise be served from: collecting and
// encoding it a second time was a tenth of the exporter's work per probe.
// The text goes uncompressed, which Accept-Encoding always allows: a few
// kilobytes are not worth the CPU of gzip. It returns false, for promhttp
// to answer, when the scraper wants another format, filters by name, or
// there is no exposition.
func writeExposition(w http.ResponseWriter, r *http.Request, params url.Values, text string) bool {
	if text == "" || params.Has("name[]") {
		return false
	}
	format := expfmt.NegotiateAccept(r.Header, expfmt.DefaultAcceptedFormats()...)
	if format.FormatType() != expfmt.TypeTextPlain {
		return false
	}
	w.Header().Add("Vary", "Accept")
	w.Header().Set("Content-Type", string(format))
	io.WriteString(w, text)
	return true
}

func (h *Handler) acquire() bool {
	if h.slots != nil {
		select {
		case h.slots <- struct{}{}:
		default:
			return false
		}
	}
	h.inFlight.Inc()
	return true
}

func (h *Handler) release() {
	h.inFlight.Dec()
	if h.slots != nil {
		<-h.slots
	}
}

// reusable reports whether a module's results can be returned again, and
// so whether its responses carry probe_smtp_result_age_seconds: always the
// same for a module, so that the series does not come and go.
func reusable(module config.Module) bool {
	return module.MinInterval > 0 || authBackoff(module) > 0
}

// authBackoff is how long a rejection holds further logins of the module;
// 0 when it does not apply: without auth, or when a refusal is what the
// module expects.
func authBackoff(module config.Module) time.Duration {
	if module.SMTP.Auth == nil || module.SMTP.ExpectAuthRejected {
		return 0
	}
	return time.Duration(module.AuthFailureBackoff)
}

// guardPolicy describes the module to the guard. The credentials are read
// afresh, so that a changed password file ends a hold.
func (h *Handler) guardPolicy(module config.Module, text moduleText) guardPolicy {
	p := guardPolicy{minInterval: time.Duration(module.MinInterval), backoff: authBackoff(module), fingerprint: text.fingerprint}
	if p.backoff > 0 {
		if sum, err := module.SMTP.Auth.CredentialHash(); err == nil {
			p.credentials, p.hasCredentials = sum, true
		}
	}
	return p
}

// respond turns what the guard returned into the entry to show. Only a probe run for
// this request is in the history; the others say in their log where their
// result came from.
func (h *Handler) respond(res guardResult, target, moduleName string, module config.Module, text moduleText, timeout time.Duration) *Entry {
	log := h.logger.With("module", moduleName, "target", target)
	if res.released != "" {
		log.Info("Releasing the hold on logins after an authentication rejection", "why", res.released)
	}
	entry := res.entry
	var note string
	switch res.outcome {
	case outcomeFresh:
		return entry
	case outcomeShared:
		log.Debug("Returning the result of a concurrent probe of the same module and target", "probe_id", entry.ProbeID)
		shared := *entry
		shared.log = lazyLog(func() string {
			return fmt.Sprintf("This request shared probe %s, which another request had started.\n%s", entry.ProbeID, entry.Log())
		})
		return &shared
	case outcomeReused:
		log.Debug("Returning the last result: min_interval has not passed", "probe_id", entry.ProbeID,
			"age_seconds", res.age.Seconds(), "min_interval_seconds", time.Duration(module.MinInterval).Seconds())
		note = fmt.Sprintf("Result of probe %s, %.1fs old, reused: the module's min_interval (%s) has not passed since it started.",
			entry.ProbeID, res.age.Seconds(), module.MinInterval)
	case outcomeHeld:
		held := time.Duration(module.AuthFailureBackoff) - res.age
		log.Warn("Login held after an authentication rejection; returning the rejection again",
			"probe_id", entry.ProbeID, "age_seconds", res.age.Seconds(), "held_for_seconds", held.Seconds(),
			"reason", string(entry.FailureReason))
		note = fmt.Sprintf("Login held: probe %s, %.1fs ago, was refused (%s), and auth_failure_backoff (%s) holds further logins "+
			"of this module to this target until it passes, the credentials change or the module's configuration changes. "+
			"Its result is returned again.", entry.ProbeID, res.age.Seconds(), entry.FailureReason, module.AuthFailureBackoff)
	case outcomeAbandoned:
		return h.abandoned(target, moduleName, module, text, timeout)
	}
	reused := *entry
	reused.log = fixedLog(note + "\nThe probe's own log is on /logs?id=" + strconv.FormatUint(entry.ID, 10) + " while the history keeps it.\n")
	reused.Metrics = h.exposition(h.collectorFor(entry.Result, entry.Timeout, module, res.age), log)
	reused.ModuleConfig = text.yaml
	return &reused
}

// abandoned is the result for a request whose deadline passed while it
// waited for another request's probe.
func (h *Handler) abandoned(target, moduleName string, module config.Module, text moduleText, timeout time.Duration) *Entry {
	result := &prober.Result{
		Duration:  timeout,
		SizeLimit: -1,
		Failure: &prober.Failure{Phase: prober.PhaseSetup, Reason: prober.ReasonTimeout,
			Err: errors.New("timed out waiting for a concurrent probe of the same module and target")},
	}
	for _, ph := range prober.PlannedPhases(module) {
		result.Phases = append(result.Phases, prober.PhaseResult{Phase: ph})
	}
	entry := &Entry{
		Time: time.Now().Add(-timeout), Module: moduleName, Target: target, Timeout: timeout,
		Duration: timeout, FailurePhase: prober.PhaseSetup, FailureReason: prober.ReasonTimeout, Result: result,
		log:          fixedLog("Timed out waiting for a concurrent probe of the same module and target.\n"),
		ModuleConfig: text.yaml,
	}
	entry.Metrics = h.exposition(h.collectorFor(result, timeout, module, 0), h.logger)
	return entry
}

// collectorFor returns the collector of the metrics of result.
func (h *Handler) collectorFor(result *prober.Result, timeout time.Duration, module config.Module, age time.Duration) prometheus.Collector {
	if reusable(module) {
		return NewWithAge(result, timeout, age)
	}
	return New(result, timeout)
}

// registryFor returns a registry with the metrics of result.
func (h *Handler) registryFor(result *prober.Result, timeout time.Duration, module config.Module, age time.Duration) *prometheus.Registry {
	registry := prometheus.NewRegistry()
	registry.MustRegister(h.collectorFor(result, timeout, module, age))
	return registry
}

// exposition renders the metrics of c in the text format, for the history
// and for a scraper that takes text.
func (h *Handler) exposition(c prometheus.Collector, log *slog.Logger) string {
	metrics, err := renderText(c)
	if err != nil {
		log.Error("Gathering the probe's metrics failed", "err", err)
	}
	return metrics
}

// run probes target and returns the history entry.
func (h *Handler) run(ctx context.Context, target, moduleName string, module config.Module, text moduleText, timeout time.Duration) *Entry {
	id, probeID := h.history.newID()
	plog := newProbeLog(h.logger, h.probeLogLevel, DefaultProbeLogLimit,
		"module", moduleName, "target", target, "probe_id", probeID)
	// The main log has the probe's identity on every line already.
	plog.captureOnly.Info("Beginning probe", "probe_id", probeID, "module", moduleName, "target", target,
		"timeout_seconds", timeout.Seconds())
	plog.main.Log(ctx, h.probeLogLevel, "Beginning probe", "timeout_seconds", timeout.Seconds())

	ctx, cancel := context.WithTimeout(ctx, timeout)
	start := time.Now()
	result := h.runProbe(ctx, target, module, probeID, plog)
	elapsed := time.Since(start)
	cancel()
	if result == nil {
		plog.probe.Error("Prober returned no result")
		result = &prober.Result{Duration: elapsed, SizeLimit: -1}
	}
	if result.Duration == 0 {
		result.Duration = elapsed
	}

	entry := &Entry{
		ID:       id,
		ProbeID:  probeID,
		Time:     start,
		Module:   moduleName,
		Target:   target,
		Timeout:  timeout,
		Success:  result.Success,
		Duration: result.Duration,
		Result:   boundResult(result),
	}
	if f := result.Failure; f != nil && !result.Success {
		entry.FailurePhase, entry.FailureReason = f.Phase, f.Reason
	}
	h.logOutcome(plog, result)

	entry.Metrics = h.exposition(h.collectorFor(result, timeout, module, 0), plog.probe)
	entry.log = lazyLog(plog.records.String)
	entry.ModuleConfig = text.yaml
	return entry
}

// runProbe calls the prober, turning a panic into a failed probe so that
// one bad reply cannot leave a semaphore slot taken or kill the scrape
// without a trace.
func (h *Handler) runProbe(ctx context.Context, target string, module config.Module, probeID string, plog *probeLog) (result *prober.Result) {
	defer func() {
		if p := recover(); p != nil {
			plog.probe.Error("Prober panicked", "panic", fmt.Sprint(p))
			plog.main.Error("Prober panicked", "panic", fmt.Sprint(p))
			result = nil
		}
	}()
	return h.probe(ctx, target, module, probeID, plog.probe)
}

// logOutcome writes one line to the main log for a failed probe, which
// thereby says which targets fail and why without debug logging. The
// prober logs its own outcome to the probe's log; when its lines already
// reach the main log at warn or above, this line would repeat it.
func (h *Handler) logOutcome(plog *probeLog, r *prober.Result) {
	if r.Success || h.probeLogLevel >= slog.LevelWarn {
		return
	}
	attrs := []any{"duration_seconds", r.Duration.Seconds()}
	if f := r.Failure; f != nil {
		attrs = append(attrs, "phase", string(f.Phase), "reason", string(f.Reason))
		if f.Err != nil {
			attrs = append(attrs, "err", f.Err.Error())
		}
	}
	plog.main.Warn("Probe failed", attrs...)
}

// singleParam returns the one value of a required query parameter.
func singleParam(params url.Values, name string) (string, error) {
	values := params[name]
	switch {
	case len(values) == 0 || values[0] == "":
		return "", fmt.Errorf("%s parameter is missing", name)
	case len(values) > 1:
		return "", fmt.Errorf("%s parameter is given %d times; give it once", name, len(values))
	}
	return values[0], nil
}

// probeTimeout works out how long a probe may take. Without the scrape
// timeout header it is the module's timeout. With it, it is the scrape
// timeout less offset, so that the response reaches Prometheus in time,
// capped by the module's timeout. When the offset would leave no time at
// all, the offset is ignored rather than falling back to the module's
// timeout, which may exceed the scrape timeout (blackbox_exporter does the
// latter). A header that is not a positive number of seconds is a bad
// request.
func probeTimeout(header string, offset, moduleTimeout time.Duration) (time.Duration, error) {
	if moduleTimeout <= 0 {
		moduleTimeout = time.Duration(config.DefaultModule.Timeout)
	}
	if header == "" {
		return moduleTimeout, nil
	}
	seconds, err := strconv.ParseFloat(header, 64)
	if err != nil || math.IsNaN(seconds) || math.IsInf(seconds, 0) || seconds <= 0 {
		return 0, fmt.Errorf("%s header %q is not a positive number of seconds", scrapeTimeoutHeader, header)
	}
	// Compare in seconds: a header like 1e300 would overflow a Duration.
	if seconds >= moduleTimeout.Seconds()+offset.Seconds() {
		return moduleTimeout, nil
	}
	scrape := time.Duration(seconds * float64(time.Second))
	timeout := scrape - offset
	if timeout <= 0 {
		timeout = scrape
	}
	return min(timeout, moduleTimeout), nil
}

// defaultProbe is the real prober; a variable so that the default is
// visible where NewHandler applies it.
var defaultProbe ProbeFunc = prober.Probe
