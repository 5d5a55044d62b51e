// Command smtp_exporter probes SMTP servers on behalf of Prometheus: each
// scrape of /probe runs one real SMTP session (connect, greeting, EHLO,
// STARTTLS or implicit TLS, AUTH, optionally a canary message, QUIT) and
// reports what happened as metrics.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/client_golang/prometheus"
	versioncollector "github.com/prometheus/client_golang/prometheus/collectors/version"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/promslog"
	promslogflag "github.com/prometheus/common/promslog/flag"
	"github.com/prometheus/common/version"
	"github.com/prometheus/exporter-toolkit/web"
	"github.com/prometheus/exporter-toolkit/web/kingpinflag"

	"github.com/smtp-exporter/smtp_exporter/collector"
	"github.com/smtp-exporter/smtp_exporter/config"
	"github.com/smtp-exporter/smtp_exporter/delivery"
)

const exporterName = "smtp_exporter"

func main() {
	os.Exit(run(os.Args[1:], make(chan os.Signal, 1)))
}

// run is main without os.Exit, so that deferred cleanups run and tests can
// call it. It returns the process exit code.
func run(args []string, signals chan os.Signal) int {
	fillVersion()
	app := kingpin.New(exporterName, "Prometheus exporter that probes SMTP servers: connection, TLS, authentication and delivery.")
	var (
		configFile    = app.Flag("config.file", "smtp_exporter configuration file.").Default("smtp_exporter.yml").String()
		configCheck   = app.Flag("config.check", "Validate the configuration file, print the error with its line if it is invalid, and exit.").Default("false").Bool()
		timeoutOffset = app.Flag("timeout-offset", "Seconds to subtract from the scrape timeout given by Prometheus, to leave time for the response.").Default("0.5").Float64()
		historyLimit  = app.Flag("history.limit", "Number of recent probes kept for the landing page and /logs (failures are kept as many again).").Default("100").Uint()
		maxConcurrent = app.Flag("probe.max-concurrent", "Probes allowed to run at once; /probe answers 503 beyond it. 0 means no limit.").Default("500").Uint()
		logProber     = app.Flag("log.prober", "Level at which each probe's own log lines are also written to the exporter log (debug, info, warn, error).").Default("debug").Enum("debug", "info", "warn", "error")
		externalURL   = app.Flag("web.external-url", "The URL under which the exporter is reached from outside (for example behind a reverse proxy). Used for links on the landing page.").PlaceHolder("<url>").String()
		routePrefix   = app.Flag("web.route-prefix", "Prefix for the internal routes of web endpoints. Defaults to the path of --web.external-url.").PlaceHolder("<path>").String()
		webConfig     = kingpinflag.AddFlags(app, ":9465")
	)
	logConfig := &promslog.Config{}
	promslogflag.AddFlags(app, logConfig)
	// Not app.Version: kingpin would also write its multi-line text into
	// the .TH line of --help-man and break the man page's header.
	printVersion := app.Flag("version", "Show application version.").Bool()
	app.HelpFlag.Short('h')
	// The server is the default command, so that the flags alone start it.
	app.Command("serve", "Serve /probe, /metrics and the pages (the default).").Default()
	probe := addProbeCommand(app)
	command, err := app.Parse(args)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", exporterName, err)
		return 2
	}
	if *printVersion {
		fmt.Fprintln(os.Stdout, version.Print(exporterName))
		return 0
	}
	if command == probe.clause.FullCommand() {
		return probe.run(*configFile, os.Stdout, os.Stderr)
	}
	if *timeoutOffset < 0 || math.IsNaN(*timeoutOffset) || math.IsInf(*timeoutOffset, 0) {
		// A negative offset would let probes run past Prometheus' scrape timeout.
		fmt.Fprintf(os.Stderr, "%s: --timeout-offset must be a non-negative number of seconds, got %v\n", exporterName, *timeoutOffset)
		return 2
	}
	logger := promslog.New(logConfig)

	if *configCheck {
		if _, err := config.LoadFile(*configFile); err != nil {
			fmt.Fprintf(os.Stderr, "%s: invalid configuration: %v\n", exporterName, err)
			return 1
		}
		fmt.Fprintf(os.Stdout, "%s: configuration %s is valid\n", exporterName, *configFile)
		return 0
	}

	if os.Getenv("GOGC") == "" { // as the runtime reads it
		debug.SetGCPercent(defaultGCPercent)
	}
	logger.Info("Starting smtp_exporter", "version", version.Info())
	logger.Info("Build context", "build_context", version.BuildContext())

	registry := prometheus.NewRegistry()
	registry.MustRegister(
		versioncollector.NewCollector(exporterName),
		prometheus.NewGoCollector(),
		prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}),
	)

	safeConfig := config.NewSafeConfig(registry)
	if err := safeConfig.Reload(*configFile); err != nil {
		logger.Error("Error loading config", "err", err)
		return 1
	}
	logger.Info("Loaded config file", "file", *configFile)

	prefix, err := resolveRoutePrefix(*externalURL, *routePrefix)
	if err != nil {
		logger.Error("Invalid web flags", "err", err)
		return 2
	}

	// The delivery watchers count their IMAP logins with the probes'.
	var exporter *collector.Exporter
	tracker := delivery.NewTracker(delivery.Options{
		Logger:  logger,
		OnLogin: func(module, outcome string) { exporter.CountLogin(module, outcome) },
	})
	registry.MustRegister(tracker.Collector())
	exporter = collector.NewExporter(collector.Options{
		Config:        safeConfig,
		Logger:        logger,
		ProberLevel:   parseLevel(*logProber),
		TimeoutOffset: time.Duration(*timeoutOffset * float64(time.Second)),
		HistoryLimit:  int(*historyLimit),
		MaxConcurrent: int(*maxConcurrent),
		Registerer:    registry,
		Delivery:      tracker,
	})
	tracker.Apply(safeConfig.Get())
	defer tracker.Stop()

	reloads := make(chan chan error)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	signal.Notify(signals, syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM)
	go reloadLoop(ctx, reloads, safeConfig, *configFile, logger, tracker.Apply)

	mux := http.NewServeMux()
	route := func(p string, h http.Handler) { mux.Handle(path.Join(prefix, p), h) }
	route("/probe", exporter.ProbeHandler())
	route("/metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{Registry: registry, ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelError)}))
	route("/logs", exporter.LogsHandler())
	route("/config", exporter.ConfigHandler())
	route("/-/healthy", okHandler("Healthy"))
	route("/-/ready", okHandler("Ready"))
	route("/-/reload", reloadProtection().Handler(reloadHandler(reloads)))
	if prefix != "/" {
		// The bare prefix without its trailing slash leads to the landing page.
		mux.Handle(prefix, http.RedirectHandler(prefix+"/", http.StatusFound))
	}
	mux.Handle(strings.TrimSuffix(prefix, "/")+"/{$}", exporter.LandingHandler())

	server := &http.Server{
		Handler:           nosniff(mux),
		ReadHeaderTimeout: 10 * time.Second,
		// Idle keep-alive connections are closed after a while so that
		// clients which never hang up cannot use up file descriptors.
		IdleTimeout: 5 * time.Minute,
	}
	serveErr := make(chan error, 1)
	go func() {
		serveErr <- web.ListenAndServe(server, webConfig, logger)
	}()

	for {
		select {
		case sig := <-signals:
			if sig == syscall.SIGHUP {
				errc := make(chan error)
				reloads <- errc
				if err := <-errc; err != nil {
					logger.Error("Error reloading config", "err", err)
				}
				continue
			}
			logger.Info("Received signal, exiting gracefully", "signal", sig.String())
			shutdown, done := context.WithTimeout(context.Background(), 5*time.Second)
			defer done()
			if err := server.Shutdown(shutdown); err != nil {
				logger.Error("Error shutting down HTTP server", "err", err)
			}
			return 0
		case err := <-serveErr:
			if errors.Is(err, http.ErrServerClosed) {
				return 0
			}
			logger.Error("Error starting HTTP server", "err", err)
			return 1
		}
	}
}

// reloadLoop is the one goroutine that reloads the configuration, so that
// SIGHUP and /-/reload never race each other.
func reloadLoop(ctx context.Context, requests <-chan chan error, sc *config.SafeConfig, file string, logger *slog.Logger, applied func(*config.Config)) {
	for {
		select {
		case <-ctx.Done():
			return
		case errc := <-requests:
			err := sc.Reload(file)
			if err == nil {
				logger.Info("Reloaded config file", "file", file)
				// The delivery watchers follow the new configuration.
				applied(sc.Get())
			}
			errc <- err
		}
	}
}

func reloadHandler(requests chan<- chan error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			http.Error(w, "This endpoint requires a POST request.", http.StatusMethodNotAllowed)
			return
		}
		errc := make(chan error)
		select {
		case requests <- errc:
		case <-r.Context().Done():
			return
		}
		if err := <-errc; err != nil {
			http.Error(w, fmt.Sprintf("failed to reload config: %s", err), http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "Config reloaded.")
	})
}

// reloadProtection refuses a POST /-/reload that a browser sends for a page
// of another site, such as a hidden form: 403 when Sec-Fetch-Site says
// cross-site or same-site, or, from older browsers, when Origin names
// another host than the request's. Requests with neither header (curl,
// Prometheus tooling, a sidecar watching the file) and same-origin ones,
// such as a browser on the exporter's own pages, pass.
func reloadProtection() *http.CrossOriginProtection {
	return http.NewCrossOriginProtection()
}

// nosniff marks every response, whatever its route and status, as the
// content type it says it is: a browser must never guess that the plain
// text of a debug output or an error, which holds a server's words, is a
// page or a script.
func nosniff(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		h.ServeHTTP(w, r)
	})
}

func okHandler(text string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "%s\n", text)
	})
}

// resolveRoutePrefix derives the route prefix as blackbox_exporter does: the
// explicit flag, else the path of the external URL, else "/".
func resolveRoutePrefix(externalURL, routePrefix string) (string, error) {
	if routePrefix == "" && externalURL != "" {
		u, err := url.Parse(externalURL)
		if err != nil {
			return "", fmt.Errorf("--web.external-url %q: %w", externalURL, err)
		}
		routePrefix = u.Path
	}
	routePrefix = "/" + strings.Trim(routePrefix, "/")
	return routePrefix, nil
}

func parseLevel(s string) slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return slog.LevelDebug
	}
	return l
}

// defaultGCPercent is the garbage collector's target (GOGC) unless the
// environment sets one. The exporter keeps a few MiB alive (its
// configuration, the history) while every probe makes some 100 KB of
// garbage, most of it the TLS handshake's; at Go's 100 a collection came
// every twenty-odd probes and marked all that stays alive each time. 200
// halves the collections for a heap goal a few MiB higher
// (BenchmarkGCPercent).
const defaultGCPercent = 200
