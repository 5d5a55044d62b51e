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
	"github.com/smtp-exporter/smtp_exporter/delivery"
	"github.com/smtp-exporter/smtp_exporter/prober"
)

// ProbeFunc runs one probe of a resolved target. prober.ProbeTarget is the
// real one; tests pass fakes. module is the request's own copy: a ProbeFunc
// reads it and does not keep it past its return.
type ProbeFunc func(ctx context.Context, target prober.Target, module *config.Module, probeID string, logger *slog.Logger) *prober.Result

// ResolveFunc parses, resolves and checks a target. prober.Resolve is the
// real one; tests that must not look names up pass their own.
type ResolveFunc func(ctx context.Context, target string, smtp *config.SMTPProbe) prober.Target

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
	// Probe runs a probe; nil means prober.ProbeTarget.
	Probe ProbeFunc
	// Resolve resolves targets; nil means prober.Resolve.
	Resolve ResolveFunc
	// Registerer receives the exporter's own metrics about probing (for
	// /metrics, never in a /probe response); nil registers them nowhere.
	Registerer prometheus.Registerer
	// GateLimit bounds the results kept for min_interval; 0 means
	// DefaultGateLimit.
	GateLimit int
	// Delivery is told of every canary a module with a delivery block
	// sends, and gives its delivery state to the probe's answer; nil
	// reports no delivery.
	Delivery *delivery.Tracker
}

// Handler serves /probe. A request flows one way: check the parameters,
// snapshot the module, work out the timeout, resolve the target, ask the
// gate for a result (a probe run now, or one that stands in for it), turn
// it into the entry to show, answer. A failed probe is a 200 with
// probe_success 0; 4xx answers only a bad request.
type Handler struct {
	config        *config.SafeConfig
	logger        *slog.Logger
	probeLogLevel slog.Level
	timeoutOffset time.Duration
	history       *History
	probe         ProbeFunc
	resolve       ResolveFunc
	// gate decides whether a probe may log in now.
	gate *gate
	// modules caches each module's YAML and fingerprint.
	modules  moduleTexts
	delivery *delivery.Tracker

	moduleUnknown prometheus.Counter
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
		resolve:       opts.Resolve,
		gate:          newGate(opts.GateLimit, opts.MaxConcurrent),
		delivery:      opts.Delivery,
		moduleUnknown: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "smtp_exporter",
			Name:      "module_unknown_total",
			Help:      "Probe requests that named a module not in the configuration.",
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
		h.probe = prober.ProbeTarget
	}
	if h.resolve == nil {
		h.resolve = prober.Resolve
	}
	if opts.Registerer != nil {
		opts.Registerer.MustRegister(h.moduleUnknown, h.rejected)
		opts.Registerer.MustRegister(h.gate.m.withModules(h.config)...)
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

	entry, err := h.answer(r.Context(), target, moduleName, module, text, timeout)
	switch {
	case errors.Is(err, errBusy):
		h.rejected.Inc()
		http.Error(w, fmt.Sprintf("too many probes in flight (limit %d), try again later", cap(h.gate.slots)), http.StatusServiceUnavailable)
		return
	case err != nil:
		return // the request went away
	}

	if view == "html" {
		writeProbePage(w, h.logger, entry, newDeliveryStateView(h.delivery, moduleName, entry.ProbeID))
		return
	}
	if params.Get("debug") == "true" {
		writeDebugText(w, h.logger, entry)
		writeDeliveryText(w, h.delivery, moduleName, params.Get("delivery_transcript") == "true")
		return
	}
	if writeExposition(w, r, params, entry.Metrics) {
		return
	}
	// Another format, or a name[] filter: built from the same result, age
	// included (0 for a probe run or shared now).
	registry := prometheus.NewRegistry()
	registry.MustRegister(withDelivery(h.collectorFor(entry.Result, entry.Timeout, module, entry.age), h.delivery, moduleName))
	promhttp.HandlerFor(registry, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}).ServeHTTP(w, r)
}

// answer is the part of a request that every caller shares, once the
// parameters are checked: resolve the target, ask the gate for a result (a
// probe run now, or one that stands in for it), turn it into the entry to
// show. The error is errBusy, or ctx's when the caller went away while
// waiting for another request's probe.
func (h *Handler) answer(ctx context.Context, target, moduleName string, module *config.Module, text moduleText, timeout time.Duration) (*Entry, error) {
	// The gate's account and the probe's login take the secrets from one
	// reading of their files, kept in the request's own copy of the module
	// (lookup's); a file that cannot be read is a failed read for both,
	// which the prober reports.
	if a := module.SMTP.Auth; a != nil {
		module.SMTP.Auth = a.WithSecretsRead()
	}
	deadline := time.Now().Add(timeout)
	// A probe runs to its own deadline and is not cancelled when the
	// request that started it goes away, since others may be waiting for
	// it.
	probeCtx, cancel := context.WithDeadline(context.WithoutCancel(ctx), deadline)
	defer cancel()
	dest := h.resolve(probeCtx, target, &module.SMTP)
	req := h.gateRequest(module, moduleName, text, dest, deadline)
	ans, err := h.gate.decide(ctx, req, func() *Entry {
		runCtx := probeCtx
		if req.hasAccount {
			runCtx = prober.WithLoginAccepted(probeCtx, func() { h.gate.loginAccepted(req) })
		}
		entry := h.run(runCtx, dest, target, moduleName, module, text, timeout)
		h.history.Add(entry)
		return entry
	})
	if err != nil {
		return nil, err
	}
	return h.present(ans, target, moduleName, module, text, timeout), nil
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

// reusable reports whether a module's results can be returned again, and
// so whether its responses carry probe_smtp_result_age_seconds: always the
// same for a module, so that the series does not come and go.
func reusable(module *config.Module) bool {
	return module.MinInterval > 0 || authBackoff(module) > 0
}

// authBackoff is how long a rejection holds further logins of the module;
// 0 when it does not apply: without auth, or when a refusal is what the
// module expects.
func authBackoff(module *config.Module) time.Duration {
	if module.SMTP.Auth == nil || module.SMTP.ExpectAuthRejected {
		return 0
	}
	return time.Duration(module.AuthFailureBackoff)
}

// gateRequest describes a request to the gate. The credentials are those
// the request read, afresh, so that a changed password file ends a hold at
// once.
func (h *Handler) gateRequest(module *config.Module, moduleName string, text moduleText, dest prober.Target, deadline time.Time) gateRequest {
	req := gateRequest{
		key:         resultKey{module: moduleName, fingerprint: text.fingerprint, address: dest.Address()},
		minInterval: time.Duration(module.MinInterval),
		backoff:     authBackoff(module),
		deadline:    deadline,
		direct:      dest.Failure != nil,
	}
	if req.backoff > 0 {
		if account, err := module.SMTP.Auth.Account(); err == nil {
			req.account, req.hasAccount = account, true
		}
	}
	return req
}

// present turns the gate's answer into the entry to show. Only a probe run
// for this request is in the history; an answer that stands in for one
// says so at the top of its log, and in its age.
func (h *Handler) present(ans Answer, target, moduleName string, module *config.Module, text moduleText, timeout time.Duration) *Entry {
	if ans.Released {
		h.logger.Info("Releasing the hold on the account's logins: its credentials changed", "module", moduleName, "target", target)
	}
	if ans.Provenance == Fresh {
		return ans.Entry
	}
	// Only answers that stand in for a probe log here; a fresh probe has
	// logged its own lines.
	log := h.logger.With("module", moduleName, "target", target)
	now := time.Now()
	var entry Entry
	switch {
	case ans.Entry != nil:
		entry = *ans.Entry
	case ans.Provenance == Held:
		entry = heldEntry(ans.Hold, moduleName, target, module, timeout)
	default:
		entry = abandonedEntry(ans, moduleName, target, module, timeout, now)
		log.Warn("Timed out " + awaited(ans))
	}
	entry.age = now.Sub(entry.Time)
	entry.Provenance = ans.Provenance
	entry.Notice = notice(ans, &entry, module, now)
	switch ans.Provenance {
	case Held:
		log.Warn("Login held", "reason", string(ans.Hold.Reason), "refused_probe_id", ans.Hold.ProbeID,
			"held_until", ans.Hold.Until.Format(time.RFC3339))
	case Reused, Shared:
		log.Debug("Answering with the result of another request's probe", "provenance", ans.Provenance.String(), "probe_id", entry.ProbeID)
	}
	if ans.Provenance == Shared && ans.Entry != nil {
		// The same probe: the same log, metrics and configuration.
		entry.age = 0
		return &entry
	}
	entry.log = fixedLog(entry.Notice + "\n")
	if entry.ID != 0 {
		entry.log = fixedLog(entry.Notice + "\nThe probe's own log is on /logs?id=" + strconv.FormatUint(entry.ID, 10) + " while the history keeps it.\n")
	}
	entry.Metrics = h.exposition(withDelivery(h.collectorFor(entry.Result, entry.Timeout, module, entry.age), h.delivery, moduleName), log)
	entry.ModuleConfig = text.yaml
	return &entry
}

// collectorFor returns the collector of the metrics of result.
func (h *Handler) collectorFor(result *prober.Result, timeout time.Duration, module *config.Module, age time.Duration) sampler {
	if reusable(module) {
		return newProbeCollector(result, timeout, &age)
	}
	return newProbeCollector(result, timeout, nil)
}

// exposition renders the metrics of c in the text format, for the history
// and for a scraper that takes text.
func (h *Handler) exposition(c sampler, log *slog.Logger) string {
	metrics, err := renderText(c)
	if err != nil {
		log.Error("Gathering the probe's metrics failed", "err", err)
	}
	return metrics
}

// run probes target and returns the history entry.
func (h *Handler) run(ctx context.Context, dest prober.Target, target, moduleName string, module *config.Module, text moduleText, timeout time.Duration) *Entry {
	id, probeID := h.history.newID()
	plog := newProbeLog(h.logger, h.probeLogLevel, DefaultProbeLogLimit,
		"module", moduleName, "target", target, "probe_id", probeID)
	// The main log has the probe's identity on every line already.
	plog.captureOnly.Info("Beginning probe", "probe_id", probeID, "module", moduleName, "target", target,
		"timeout_seconds", timeout.Seconds())
	plog.main.Log(ctx, h.probeLogLevel, "Beginning probe", "timeout_seconds", timeout.Seconds())

	start := time.Now().Add(-dest.DNSLookupTime)
	result := h.runProbe(ctx, dest, module, probeID, plog)
	elapsed := time.Since(start)
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
	if h.delivery != nil && result.MessageAccepted {
		h.delivery.Sent(moduleName, probeID, result.AcceptedAt)
	}

	entry.Metrics = h.exposition(withDelivery(h.collectorFor(result, timeout, module, 0), h.delivery, moduleName), plog.probe)
	entry.log = lazyLog(plog.records.String)
	entry.ModuleConfig = text.yaml
	return entry
}

// runProbe calls the prober, turning a panic into a failed probe so that
// one bad reply cannot leave a semaphore slot taken or kill the scrape
// without a trace.
func (h *Handler) runProbe(ctx context.Context, target prober.Target, module *config.Module, probeID string, plog *probeLog) (result *prober.Result) {
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

// CountLogin counts a login made outside a probe (the IMAP session of a
// delivery block) in smtp_exporter_logins_total.
func (h *Handler) CountLogin(module, outcome string) {
	h.gate.m.logins.WithLabelValues(module, outcome).Inc()
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
