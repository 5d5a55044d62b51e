package collector

import (
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/smtp-exporter/smtp_exporter/config"
	"github.com/smtp-exporter/smtp_exporter/delivery"
)

// Options is everything the process knows that probing needs: the flags,
// the logger, the live configuration and the registry for /metrics.
type Options struct {
	Config *config.SafeConfig
	Logger *slog.Logger
	// ProberLevel is the level at which each probe's own log lines also go
	// to Logger (--log.prober). The zero value is info.
	ProberLevel   slog.Level
	TimeoutOffset time.Duration
	// HistoryLimit is the number of recent probes kept (--history.limit);
	// as many older failures are kept besides.
	HistoryLimit  int
	MaxConcurrent int
	// Registerer receives the exporter's own probing metrics.
	Registerer prometheus.Registerer
	// Probe runs a probe; nil means prober.ProbeTarget.
	Probe ProbeFunc
	// Delivery tracks the canaries of modules with a delivery block; nil
	// reports no delivery.
	Delivery *delivery.Tracker
}

// Exporter ties the /probe handler and the pages to one shared history, so
// that the process wires a single value to its routes.
type Exporter struct {
	history *History
	probe   *Handler
	pages   *Pages
}

// NewExporter builds the handlers and registers the probing metrics.
func NewExporter(opts Options) *Exporter {
	history := NewHistory(opts.HistoryLimit)
	return &Exporter{
		history: history,
		probe: NewHandler(HandlerOpts{
			Config:        opts.Config,
			Logger:        opts.Logger,
			ProbeLogLevel: opts.ProberLevel,
			TimeoutOffset: opts.TimeoutOffset,
			History:       history,
			MaxConcurrent: opts.MaxConcurrent,
			Probe:         opts.Probe,
			Registerer:    opts.Registerer,
			Delivery:      opts.Delivery,
		}),
		pages: NewPages(opts.Config, history, opts.Logger),
	}
}

// ProbeHandler serves /probe.
func (e *Exporter) ProbeHandler() http.Handler { return e.probe }

// LandingHandler serves the landing page; mount it on the root only.
func (e *Exporter) LandingHandler() http.Handler { return http.HandlerFunc(e.pages.Landing) }

// LogsHandler serves /logs?id=N.
func (e *Exporter) LogsHandler() http.Handler { return http.HandlerFunc(e.pages.Logs) }

// ConfigHandler serves /config.
func (e *Exporter) ConfigHandler() http.Handler { return http.HandlerFunc(e.pages.Config) }

// CountLogin counts a login of a delivery block's IMAP session in
// smtp_exporter_logins_total.
func (e *Exporter) CountLogin(module, outcome string) { e.probe.CountLogin(module, outcome) }

// History returns the probe history the handlers share.
func (e *Exporter) History() *History { return e.history }
