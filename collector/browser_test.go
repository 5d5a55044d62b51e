package collector

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/exporter-toolkit/web"

	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

// chromiumPath is where Debian's chromium package puts the browser.
const chromiumPath = "/usr/bin/chromium"

// screenshotDirEnv names a directory that receives the test's screenshots,
// for CI artifacts and for docs/probe-page.png.
const screenshotDirEnv = "SMTP_EXPORTER_SCREENSHOT_DIR"

// Basic auth of the exporter's web config in the browser test; the hash is
// bcrypt (cost 4, the minimum, to keep the test fast) of webPassword.
const (
	webUser         = "oncall"
	webPassword     = "night-shift"
	webPasswordHash = "$2a$04$CSaEXht9a400HMw8Q12a0eJh1mFJGJXBfV.MBRUCHHyCC1GIgZqe6"
)

// routePrefix is where the browser test mounts the exporter, as with
// --web.route-prefix=/smtp, so that a link that is not relative breaks.
const routePrefix = "/smtp"

// requireChromium skips the test when the browser is missing, except in CI,
// where a missing browser must not pass silently.
func requireChromium(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true but %s is missing (%v): install the chromium package", chromiumPath, err)
		}
		t.Skipf("%s not found: install Debian's chromium package to run the browser test (it is required when CI=true)", chromiumPath)
	}
}

// newBrowser starts a headless Chromium of its own, with a fresh profile,
// that reaches nothing but loopback, and returns a tab's context.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromiumPath),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.UserDataDir(t.TempDir()),
		// Every name resolves to nothing: the pages are served from
		// 127.0.0.1, and the browser has no business anywhere else.
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"),
		// The exporter's certificate comes from the test CA, which Chromium
		// cannot be told to trust without a system store.
		chromedp.IgnoreCertErrors,
		chromedp.WindowSize(1000, 800),
	)
	ctx, cancelTab := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc()
	})
	// The first action starts the browser, bound to the context that has no
	// deadline; each step later gets its own.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting %s: %v", chromiumPath, err)
	}
	return ctx
}

// serveExporter serves the exporter's pages as main.go mounts them, under
// routePrefix, through the exporter-toolkit with TLS and basic auth. It
// returns the landing page's URL.
func serveExporter(t *testing.T, exp *Exporter) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle(routePrefix+"/probe", exp.ProbeHandler())
	mux.Handle(routePrefix+"/logs", exp.LogsHandler())
	mux.Handle(routePrefix+"/config", exp.ConfigHandler())
	mux.Handle(routePrefix+"/{$}", exp.LandingHandler())

	dir := t.TempDir()
	cert := smtptest.Certs().Server
	key, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "cert.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}))
	writeFile(t, filepath.Join(dir, "key.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}))
	webConfig := filepath.Join(dir, "web.yml")
	writeFile(t, webConfig, []byte("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n"+
		"basic_auth_users:\n  "+webUser+": "+webPasswordHash+"\n"))

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	systemd := false
	served := make(chan error, 1)
	go func() {
		served <- web.Serve(ln, server, &web.FlagConfig{
			WebListenAddresses: &[]string{ln.Addr().String()},
			WebSystemdSocket:   &systemd,
			WebConfigFile:      &webConfig,
		}, slog.New(slog.DiscardHandler))
	}()
	t.Cleanup(func() {
		server.Close()
		if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serving: %v", err)
		}
	})
	base := "https://" + ln.Addr().String() + routePrefix + "/"

	// The server really asks for TLS with the test CA and for credentials,
	// so the browser getting through proves the pages work behind both.
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: smtptest.Certs().Pool},
	}}
	for _, withAuth := range []bool{false, true} {
		req, _ := http.NewRequest(http.MethodGet, base, nil)
		want := http.StatusUnauthorized
		if withAuth {
			req.SetBasicAuth(webUser, webPassword)
			want = http.StatusOK
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s over TLS: %v", base, err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("GET %s (basic auth %v): status %d, want %d", base, withAuth, resp.StatusCode, want)
		}
	}
	return base
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// step runs browser actions with a deadline of their own, failing the test
// with what was being done.
func step(t *testing.T, ctx context.Context, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// get runs one browser action that returns a value.
func get[T any](t *testing.T, ctx context.Context, what string, action chromedp.Action[T]) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, action)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}

// drawnRow is one waterfall row as the browser laid it out.
type drawnRow struct {
	Phase      string  `json:"phase"`
	Ran        bool    `json:"ran"`
	Failed     bool    `json:"failed"`
	DurationNs float64 `json:"durationNs"`
	TrackLeft  float64 `json:"trackLeft"`
	TrackWidth float64 `json:"trackWidth"`
	HasBar     bool    `json:"hasBar"`
	BarLeft    float64 `json:"barLeft"`
	BarWidth   float64 `json:"barWidth"`
	Reason     string  `json:"reason"`
}

type drawnWaterfall struct {
	ScaleNs float64    `json:"scaleNs"`
	Rows    []drawnRow `json:"rows"`
	// Metrics is the exposition shown on the page.
	Metrics string `json:"metrics"`
}

// readWaterfall measures the rendered waterfall: the pixel boxes of every
// track and bar, next to the durations the page states for them.
const readWaterfall = `(() => {
  const wf = document.getElementById('waterfall');
  return {
    scaleNs: Number(wf.dataset.scaleNs),
    metrics: document.getElementById('metrics').textContent,
    rows: [...wf.querySelectorAll('.wf-row[data-phase]')].map(row => {
      const track = row.querySelector('.wf-track');
      const t = track.getBoundingClientRect();
      const bar = row.querySelector('.wf-bar');
      const b = bar ? bar.getBoundingClientRect() : {left: 0, width: 0};
      const reason = row.querySelector('.wf-reason');
      return {
        phase: row.dataset.phase, ran: row.dataset.ran === 'true', failed: row.classList.contains('failed'),
        durationNs: Number(row.dataset.durationNs),
        trackLeft: t.left + track.clientLeft, trackWidth: track.clientWidth,
        hasBar: !!bar, barLeft: b.left, barWidth: b.width,
        reason: reason ? reason.textContent : '',
      };
    }),
  };
})()`

func measureWaterfall(t *testing.T, ctx context.Context) drawnWaterfall {
	t.Helper()
	raw := get(t, ctx, "measuring the waterfall", chromedp.Evaluate[[]byte](readWaterfall))
	var w drawnWaterfall
	if err := json.Unmarshal(raw, &w); err != nil {
		t.Fatalf("decoding the measurement %s: %v", raw, err)
	}
	return w
}

// checkDrawnToScale checks that each bar starts where the phases before it
// end and is as wide as its share of the probe's time, in pixels. A bar is
// at least 2px wide so that a fast phase stays visible; the tolerance allows
// that and rounding.
func checkDrawnToScale(t *testing.T, w drawnWaterfall, wantPhases []string) {
	t.Helper()
	if w.ScaleNs <= 0 {
		t.Fatalf("waterfall scale %v", w.ScaleNs)
	}
	var ran []string
	var elapsed float64
	for _, r := range w.Rows {
		if !r.Ran {
			if r.HasBar {
				t.Errorf("%s did not run but has a bar", r.Phase)
			}
			continue
		}
		ran = append(ran, r.Phase)
		if !r.HasBar || r.TrackWidth < 300 {
			t.Errorf("%s: bar %v in a track %vpx wide", r.Phase, r.HasBar, r.TrackWidth)
			continue
		}
		tolerance := 2.5 / r.TrackWidth
		wantLeft, wantWidth := elapsed/w.ScaleNs, r.DurationNs/w.ScaleNs
		gotLeft, gotWidth := (r.BarLeft-r.TrackLeft)/r.TrackWidth, r.BarWidth/r.TrackWidth
		if math.Abs(gotLeft-wantLeft) > tolerance || math.Abs(gotWidth-max(wantWidth, 2/r.TrackWidth)) > tolerance {
			t.Errorf("%s (%vns of %vns) drawn at %.4f+%.4f of the track, want %.4f+%.4f",
				r.Phase, r.DurationNs, w.ScaleNs, gotLeft, gotWidth, wantLeft, wantWidth)
		}
		elapsed += r.DurationNs
	}
	if math.Abs(elapsed-w.ScaleNs) > 1 {
		t.Errorf("the bars cover %vns of a %vns axis", elapsed, w.ScaleNs)
	}
	if strings.Join(ran, ",") != strings.Join(wantPhases, ",") {
		t.Errorf("phases drawn %v, want %v", ran, wantPhases)
	}
	// The durations on the page are the ones the probe reported as metrics.
	for _, r := range w.Rows {
		if !r.Ran || r.Phase == phaseSetup {
			continue
		}
		m := regexp.MustCompile(`(?m)^probe_smtp_duration_seconds\{phase="` + r.Phase + `"\} (\S+)$`).FindStringSubmatch(w.Metrics)
		if m == nil {
			t.Errorf("no duration metric for %s on the page", r.Phase)
			continue
		}
		seconds, _ := strconv.ParseFloat(m[1], 64)
		if math.Abs(seconds*1e9-r.DurationNs) > 1000 {
			t.Errorf("%s: page says %vns, metric %vs", r.Phase, r.DurationNs, seconds)
		}
	}
}

// TestBrowserProbePages drives a real Chromium through the exporter's
// pages, as the person on call would: open the landing page, probe a target
// from the form, read the result page, probe again with a password the
// server now refuses, and find the failure on the landing page and its own
// page. The exporter is served by the exporter-toolkit with TLS and basic
// auth under a route prefix; the SMTP server is in-process, with STARTTLS and
// AUTH.
func TestBrowserProbePages(t *testing.T) {
	requireChromium(t)
	start := time.Now()

	const username, password = "probe@example.net", "Correct-h0rse-Battery"
	srv := smtptest.NewServer(t, smtptest.Options{
		TLS: smtptest.StartTLS, Username: username, Password: password,
		AuthRequiresTLS: true, Size: 10 << 20,
	})
	cfg := newTestConfig(t, `
modules:
  banner:
    timeout: 5s
    smtp:
      tls: none
  submission:
    timeout: 5s
    smtp:
      tls: starttls
      preferred_ip_protocol: ip4
      tls_config:
        ca_file: `+smtptest.Certs().WriteCAFile(t)+`
      auth:
        username: `+username+`
        password: "`+password+`"
      allowed_targets: ["127.0.0.1"]
`)
	exp := NewExporter(Options{Config: cfg, HistoryLimit: 10, Registerer: prometheus.NewRegistry()})
	base := serveExporter(t, exp)

	ctx := newBrowser(t)
	// Every request of the tab carries the basic auth credentials, as a
	// browser does after the first prompt.
	credentials := base64.StdEncoding.EncodeToString([]byte(webUser + ":" + webPassword))
	step(t, ctx, "sending basic auth",
		command(network.Enable, network.EnableParams{}),
		command(network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{
			Headers: network.Headers{"Authorization": "Basic " + credentials},
		}),
		chromedp.EmulateViewport(1000, 800),
	)
	var consoleMu sync.Mutex
	var console []string
	go func() {
		for m, err := range chromedp.Console(ctx) {
			if err != nil {
				return
			}
			consoleMu.Lock()
			console = append(console, string(m.Type)+": "+m.Text)
			consoleMu.Unlock()
		}
	}()

	secrets := secretForms(username, password)
	assertNoSecretInDOM := func(page string) {
		t.Helper()
		dom := get(t, ctx, "reading the DOM of "+page, chromedp.OuterHTML(chromedp.CSS("html")))
		if !strings.Contains(dom, "</body>") {
			t.Fatalf("%s: no document", page)
		}
		for _, s := range secrets {
			if strings.Contains(dom, s) {
				t.Errorf("%s: the DOM contains the password (as %q)", page, s)
			}
		}
	}
	probeWith := func(what, module string) {
		t.Helper()
		step(t, ctx, what,
			chromedp.WaitVisible(chromedp.ID("target")),
			chromedp.SendKeys(chromedp.ID("target"), srv.Addr()),
			chromedp.SetValue(chromedp.ID("module"), module),
			chromedp.Click(chromedp.ID("probe")),
			chromedp.WaitVisible(chromedp.ID("waterfall")),
		)
	}
	// Not the first module in the list, so the choice is real.
	probeFromForm := func(what string) { t.Helper(); probeWith(what, "submission") }
	plannedPhases := []string{"setup", "connect", "banner", "ehlo", "starttls", "ehlo_tls", "auth", "quit"}

	// 1. The landing page, under the prefix, and its form.
	step(t, ctx, "opening the landing page", chromedp.Navigate(base))
	assertNoSecretInDOM("landing page")
	probeFromForm("probing from the form")

	loc := get(t, ctx, "reading the location", chromedp.Location())
	u, err := url.Parse(loc)
	if err != nil || u.Path != routePrefix+"/probe" || u.Query().Get("view") != "html" ||
		u.Query().Get("target") != srv.Addr() || u.Query().Get("module") != "submission" {
		t.Errorf("the form led to %s, want %s/probe with the target, the module and view=html", loc, routePrefix)
	}
	status := get(t, ctx, "reading the status", chromedp.Text(chromedp.CSS("#status .headline")))
	if !strings.HasPrefix(status, "Succeeded in ") {
		t.Fatalf("first probe: status %q, want a success", status)
	}
	ok := measureWaterfall(t, ctx)
	checkDrawnToScale(t, ok, plannedPhases)
	for _, want := range []string{"TLS 1.3", "CN=smtptest CA", "STARTTLS", "PLAIN"} {
		if text := get(t, ctx, "reading the page", chromedp.Text(chromedp.CSS("body"))); !strings.Contains(text, want) {
			t.Errorf("result page does not show %q", want)
		}
	}
	assertNoSecretInDOM("result page of the successful probe")

	// 2. The server changes the password: the probe fails in auth.
	srv.SetPassword("rotated-" + password)
	step(t, ctx, "going back to the landing page", chromedp.Click(chromedp.CSS(`nav a[href="./"]`)), chromedp.WaitVisible(chromedp.ID("probes")))
	probeFromForm("probing with the refused password")
	failed := measureWaterfall(t, ctx)
	checkDrawnToScale(t, failed, plannedPhases)
	for _, r := range failed.Rows {
		if r.Failed != (r.Phase == "auth") {
			t.Errorf("row %s failed=%v; only auth failed", r.Phase, r.Failed)
		}
		if r.Phase == "auth" && !strings.Contains(r.Reason, "auth_rejected") {
			t.Errorf("auth row reason %q", r.Reason)
		}
	}
	attrs := get(t, ctx, "reading the status", chromedp.Attributes(chromedp.ID("status")))
	if attrs["data-phase"] != "auth" || attrs["data-reason"] != "auth_rejected" {
		t.Errorf("status says phase %q reason %q, want auth, auth_rejected", attrs["data-phase"], attrs["data-reason"])
	}
	headline := get(t, ctx, "reading the status", chromedp.Text(chromedp.CSS("#status")))
	for _, want := range []string{"Failed in auth: auth_rejected", "wrong username or password", "535"} {
		if !strings.Contains(headline, want) {
			t.Errorf("failure status %q lacks %q", headline, want)
		}
	}
	if code := get(t, ctx, "reading the auth reply", chromedp.Text(chromedp.CSS(`.wf-row[data-phase="auth"] .code`))); code != "535 5.7.8" {
		t.Errorf("auth reply shown as %q", code)
	}
	assertNoSecretInDOM("result page of the failed probe")
	screenshot(t, ctx, "probe-page.png")

	// The same page in a dark theme, and on a phone: nothing is wider than
	// the screen.
	step(t, ctx, "switching to a dark theme", command(emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
		Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: "dark"}},
	}))
	if bg := get(t, ctx, "reading the background", chromedp.Evaluate[string](`getComputedStyle(document.body).backgroundColor`)); brightness(t, bg) > 60 {
		t.Errorf("dark theme background %s is not dark", bg)
	}
	screenshot(t, ctx, "probe-page-dark.png")
	step(t, ctx, "emulating a phone", chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2), chromedp.EmulateMobile))
	overflow := get(t, ctx, "measuring the width", chromedp.Evaluate[[]float64](`[document.documentElement.scrollWidth, window.innerWidth]`))
	if len(overflow) != 2 || overflow[0] > overflow[1] {
		t.Errorf("on a phone the page is %v px wide for a %v px screen", overflow[0], overflow[1])
	}
	phone := measureWaterfall(t, ctx)
	checkDrawnToScale(t, phone, plannedPhases)
	screenshot(t, ctx, "probe-page-phone.png")
	step(t, ctx, "back to a desktop in a light theme",
		chromedp.EmulateViewport(1000, 800),
		command(emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{}))

	// 3. The landing page lists both, the failure marked, and its link
	// opens /logs?id=N as a page, since a browser asks for HTML.
	step(t, ctx, "going back to the landing page", chromedp.Click(chromedp.CSS(`nav a[href="./"]`)), chromedp.WaitVisible(chromedp.ID("probes")))
	rows := get(t, ctx, "reading the recent probes", chromedp.AttributesAll(chromedp.CSSAll("#probes tbody tr")))
	if len(rows) != 2 || rows[0]["class"] != "failed" || rows[1]["class"] != "" {
		t.Fatalf("recent probes %v, want the failure first and marked, then the success", rows)
	}
	assertNoSecretInDOM("landing page with history")
	screenshot(t, ctx, "landing-page.png")
	step(t, ctx, "opening the failed probe's page",
		chromedp.Click(chromedp.CSS(`#probes tbody tr.failed a`)),
		chromedp.WaitVisible(chromedp.ID("waterfall")))
	loc = get(t, ctx, "reading the location", chromedp.Location())
	if u, err := url.Parse(loc); err != nil || u.Path != routePrefix+"/logs" || u.Query().Get("id") != rows[0]["data-id"] {
		t.Errorf("the failure's link led to %s", loc)
	}
	attrs = get(t, ctx, "reading the status", chromedp.Attributes(chromedp.ID("status")))
	if attrs["data-reason"] != "auth_rejected" {
		t.Errorf("/logs page shows reason %q", attrs["data-reason"])
	}
	assertNoSecretInDOM("logs page")

	// 4. Another module of the same server succeeds; the current state
	// leads the landing page, the failing pair first although its module
	// sorts after.
	step(t, ctx, "going back to the landing page", chromedp.Click(chromedp.CSS(`nav a[href="./"]`)), chromedp.WaitVisible(chromedp.ID("states")))
	probeWith("probing with the banner module", "banner")
	step(t, ctx, "going back to the landing page", chromedp.Click(chromedp.CSS(`nav a[href="./"]`)), chromedp.WaitVisible(chromedp.ID("states")))
	states := get(t, ctx, "reading the current state", chromedp.AttributesAll(chromedp.CSSAll("#states tbody tr")))
	if len(states) != 2 ||
		states[0]["data-module"] != "submission" || states[0]["data-result"] != "failure" || states[0]["class"] != "failed" ||
		states[0]["data-target"] != srv.Addr() || states[0]["data-id"] != rows[0]["data-id"] ||
		states[0]["data-since-id"] != rows[0]["data-id"] || states[0]["data-at-least"] != "false" ||
		states[1]["data-module"] != "banner" || states[1]["data-result"] != "success" {
		t.Errorf("current state %v, want submission failing since its latest probe after a success, then banner succeeding", states)
	}
	above := get(t, ctx, "placing the tables", chromedp.Evaluate[bool](
		`document.getElementById('states').getBoundingClientRect().bottom < document.getElementById('probes').getBoundingClientRect().top`))
	if !above {
		t.Error("the current state is not above the recent probes")
	}
	screenshot(t, ctx, "landing-page-state.png")

	consoleMu.Lock()
	for _, m := range console {
		// The pages run no script, so any message is a blocked resource or
		// a Content-Security-Policy violation.
		t.Errorf("browser console: %s", m)
	}
	consoleMu.Unlock()
	t.Logf("browser test took %v", time.Since(start).Round(time.Millisecond))
}

// command is an action that sends one protocol command whose result is
// empty.
func command[P any](cmd cdp.Command[P, cdp.Empty], params P) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, tgt *chromedp.Target) error {
		_, err := cdp.Call(ctx, tgt, cmd, params)
		return err
	})
}

// brightness returns the mean of the channels of a CSS rgb() colour.
func brightness(t *testing.T, color string) float64 {
	t.Helper()
	m := regexp.MustCompile(`^rgba?\((\d+), (\d+), (\d+)`).FindStringSubmatch(color)
	if m == nil {
		t.Fatalf("colour %q", color)
	}
	var sum float64
	for _, c := range m[1:] {
		v, _ := strconv.Atoi(c)
		sum += float64(v)
	}
	return sum / 3
}

// screenshot saves the whole page as a PNG in the test's directory and, if
// set, in $SMTP_EXPORTER_SCREENSHOT_DIR.
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	png := get(t, ctx, "taking a screenshot", chromedp.FullScreenshot(100))
	if len(png) < 8 || string(png[1:4]) != "PNG" {
		t.Fatalf("screenshot %s is not a PNG", name)
	}
	dirs := []string{t.TempDir()}
	if dir := os.Getenv(screenshotDirEnv); dir != "" {
		dirs = append(dirs, dir)
	}
	for _, dir := range dirs {
		writeFile(t, filepath.Join(dir, name), png)
	}
	t.Logf("screenshot %s: %d bytes in %v", name, len(png), dirs)
}
