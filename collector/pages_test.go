package collector

import (
	"encoding/base64"
	"encoding/xml"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"html"
	"io"
	"math"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/smtp-exporter/smtp_exporter/config"
	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
	"github.com/smtp-exporter/smtp_exporter/prober"
)

// browserAccept is what Chromium and Firefox send for a page.
const browserAccept = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"

// renderProbePage renders the result page of e as of now.
func renderProbePage(t *testing.T, e *Entry, now time.Time) string {
	t.Helper()
	var b strings.Builder
	if err := probeTemplate.Execute(&b, newProbePage(e, now)); err != nil {
		t.Fatalf("rendering the probe page: %v", err)
	}
	return b.String()
}

// entryFor wraps a hand-made Result in a history entry.
func entryFor(r *prober.Result) *Entry {
	e := &Entry{
		ID:           7,
		ProbeID:      "0badcafe-7",
		Time:         time.Date(2026, 3, 4, 3, 12, 0, 0, time.UTC),
		Module:       "submission",
		Target:       "mail.example.net:587",
		Timeout:      8 * time.Second,
		Success:      r.Success,
		Duration:     r.Duration,
		Result:       r,
		Metrics:      "probe_success 0\n",
		ModuleConfig: "smtp:\n  auth:\n    password: <secret>\n",
	}
	if f := r.Failure; f != nil && !r.Success {
		e.FailurePhase, e.FailureReason = f.Phase, f.Reason
	}
	return e
}

// barPlacement is where the waterfall puts one row, in percent.
type barPlacement struct {
	phase         string
	ran           bool
	offset, width float64
}

func placements(w waterfall) []barPlacement {
	var out []barPlacement
	for _, b := range w.Bars {
		out = append(out, barPlacement{b.Phase, b.Ran, b.Offset, b.Width})
	}
	return out
}

func TestWaterfallProportional(t *testing.T) {
	// successResult runs 245ms of phases in 250ms: setup is the 5ms left.
	r := successResult(nil)
	got := placements(newWaterfall(r))
	want := []barPlacement{
		{"setup", true, 0, 2},      // 5ms
		{"connect", true, 2, 4},    // 10ms
		{"banner", true, 6, 8},     // 20ms
		{"ehlo", true, 14, 6},      // 15ms
		{"starttls", true, 20, 32}, // 80ms
		{"ehlo_tls", true, 52, 6},  // 15ms
		{"auth", true, 58, 40},     // 100ms
		{"quit", true, 98, 2},      // 5ms
	}
	assertPlacements(t, got, want)

	// The same numbers reach the style attributes.
	page := renderProbePage(t, entryFor(r), time.Now())
	for _, w := range want {
		row := regexp.MustCompile(`data-phase="` + w.phase + `"[^>]*>\s*<div class="wf-name">[^<]*</div>\s*<div class="wf-track"><div class="wf-bar" style="left: ([0-9.]+)%; width: ([0-9.]+)%"`).FindStringSubmatch(page)
		if row == nil {
			t.Errorf("no bar for %s in the page", w.phase)
			continue
		}
		left, _ := strconv.ParseFloat(row[1], 64)
		width, _ := strconv.ParseFloat(row[2], 64)
		if math.Abs(left-w.offset) > 0.001 || math.Abs(width-w.width) > 0.001 {
			t.Errorf("%s rendered at left %v%% width %v%%, want %v%% %v%%", w.phase, left, width, w.offset, w.width)
		}
	}
	if !strings.Contains(page, `data-scale-ns="250000000"`) {
		t.Error("the waterfall does not say its scale")
	}

	t.Run("phases not reached", func(t *testing.T) {
		// A DNS failure spends the whole probe in setup; no phase has a bar.
		got := placements(newWaterfall(dnsFailedResult()))
		want := []barPlacement{{"setup", true, 0, 100}}
		for _, p := range []string{"connect", "banner", "ehlo", "starttls", "ehlo_tls", "auth", "quit"} {
			want = append(want, barPlacement{p, false, 100, 0})
		}
		assertPlacements(t, got, want)
	})

	t.Run("phases longer than the probe", func(t *testing.T) {
		// Durations that add up to more than the total (a clock step) must
		// not overflow the axis: it stretches to the sum.
		r := &prober.Result{Duration: ms(10), Phases: []prober.PhaseResult{
			{Phase: prober.PhaseConnect, Ran: true, Duration: ms(30)},
			{Phase: prober.PhaseBanner, Ran: true, Duration: ms(10)},
		}}
		w := newWaterfall(r)
		if w.Scale != ms(40) {
			t.Errorf("scale %v, want 40ms", w.Scale)
		}
		assertPlacements(t, placements(w), []barPlacement{
			{"setup", true, 0, 0}, {"connect", true, 0, 75}, {"banner", true, 75, 25},
		})
	})

	t.Run("nothing measured", func(t *testing.T) {
		w := newWaterfall(&prober.Result{Phases: []prober.PhaseResult{{Phase: prober.PhaseConnect}}})
		for _, b := range w.Bars {
			if math.IsNaN(b.Offset) || math.IsNaN(b.Width) || b.Width != 0 {
				t.Errorf("%s placed at %v/%v with nothing measured", b.Phase, b.Offset, b.Width)
			}
		}
		if len(w.Ticks) != 0 {
			t.Errorf("a time axis for zero time: %+v", w.Ticks)
		}
	})
}

func assertPlacements(t *testing.T, got, want []barPlacement) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("rows %+v, want %+v", got, want)
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.phase != w.phase || g.ran != w.ran || math.Abs(g.offset-w.offset) > 1e-9 || math.Abs(g.width-w.width) > 1e-9 {
			t.Errorf("row %d: %+v, want %+v", i, g, w)
		}
	}
}

// proberConstants returns the values of the constants of the given type
// declared in prober/result.go, so that a phase or reason added there
// without a place on the page fails this test.
func proberConstants(t *testing.T, typeName string) []string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "../prober/result.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var values []string
	for _, decl := range f.Decls {
		gd, ok := decl.(*ast.GenDecl)
		if !ok || gd.Tok != token.CONST {
			continue
		}
		for _, spec := range gd.Specs {
			vs := spec.(*ast.ValueSpec)
			if id, ok := vs.Type.(*ast.Ident); !ok || id.Name != typeName {
				continue
			}
			for _, v := range vs.Values {
				lit, ok := v.(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					t.Fatalf("%s constant that is not a string literal", typeName)
				}
				s, _ := strconv.Unquote(lit.Value)
				values = append(values, s)
			}
		}
	}
	if len(values) < 10 {
		t.Fatalf("found only %d %s constants in prober/result.go: %v", len(values), typeName, values)
	}
	return values
}

func TestProbePageEveryPhase(t *testing.T) {
	r := &prober.Result{Success: true, SizeLimit: -1}
	var total time.Duration
	for i, p := range proberConstants(t, "Phase") {
		if p == phaseSetup {
			continue // the page's own first row, not a planned phase
		}
		d := ms(i + 1)
		total += d
		r.Phases = append(r.Phases, prober.PhaseResult{Phase: prober.Phase(p), Ran: true, Duration: d, Code: 200 + i})
	}
	r.Duration = total
	page := renderProbePage(t, entryFor(r), time.Now())
	for _, pr := range r.Phases {
		row := regexp.MustCompile(`data-phase="` + string(pr.Phase) + `" data-ran="true" data-duration-ns="` + strconv.FormatInt(int64(pr.Duration), 10) + `">\s*<div class="wf-name">` + string(pr.Phase) + `</div>\s*<div class="wf-track"><div class="wf-bar"[^>]*>.*\n.*<span class="dur">` + formatDuration(pr.Duration) + `</span><code class="code">` + strconv.Itoa(pr.Code) + `</code>`)
		if !row.MatchString(page) {
			t.Errorf("phase %s is not drawn with its duration and code", pr.Phase)
		}
	}
	if !strings.Contains(page, `class="status success"`) || strings.Contains(page, "wf-row failed") {
		t.Error("a successful probe is not shown as one")
	}
}

func TestProbePageEveryReason(t *testing.T) {
	reasons := proberConstants(t, "Reason")
	for _, reason := range reasons {
		t.Run(reason, func(t *testing.T) {
			r := authFailedResult(nil)
			r.Failure = &prober.Failure{Phase: prober.PhaseAuth, Reason: prober.Reason(reason), Err: errors.New("detail of " + reason)}
			page := renderProbePage(t, entryFor(r), time.Now())
			meaning := reasonMeaning[prober.Reason(reason)]
			if meaning == "" {
				t.Fatalf("no meaning written for %s", reason)
			}
			for _, want := range []string{
				`<section class="status failure" id="status" data-phase="auth" data-reason="` + reason + `">`,
				"Failed in auth: " + reason,
				html.EscapeString(meaning),
				"<code>detail of " + reason + "</code>",
				`<div class="wf-reason">✗ ` + reason + `</div>`,
			} {
				if !strings.Contains(page, want) {
					t.Errorf("page lacks %q", want)
				}
			}
			if n := strings.Count(page, "wf-row failed"); n != 1 {
				t.Errorf("%d rows marked failed, want the auth row alone", n)
			}
		})
	}

	t.Run("setup", func(t *testing.T) {
		page := renderProbePage(t, entryFor(dnsFailedResult()), time.Now())
		if !regexp.MustCompile(`<div class="wf-row setup failed" data-phase="setup"`).MatchString(page) {
			t.Error("a failure in setup is not marked on the setup row")
		}
		if n := strings.Count(page, "not reached"); n != 7 {
			t.Errorf("%d phases shown as not reached, want the 7 planned", n)
		}
	})

	t.Run("no result", func(t *testing.T) {
		e := &Entry{ID: 1, Target: "a.example", Module: "m", Duration: ms(3)}
		page := renderProbePage(t, e, time.Now())
		if !strings.Contains(page, "Failed in : unknown") || !strings.Contains(page, "The prober gave no reason") {
			t.Error("a probe without a result does not say so")
		}
	})
}

// Markup a hostile server or a careless caller might send.
const (
	hostileScript = `<script>alert(1)</script>`
	hostileImg    = `"><img src=x onerror=alert(2)>`
	hostileStyle  = `</style><style>body{display:none}</style>`
)

func TestProbePageEscapesHostileText(t *testing.T) {
	cert := newTestCert(t, hostileImg, 9, time.Now().Add(24*time.Hour), []string{"mx." + hostileScript}, nil)
	r := authFailedResult(nil)
	r.Certificates = append(r.Certificates, cert.summary())
	r.Extensions[prober.PhaseEHLO] = append(r.Extensions[prober.PhaseEHLO], hostileScript)
	r.AuthMechanisms = append(r.AuthMechanisms, hostileImg)
	r.Failure.Err = errors.New("535 " + hostileImg)
	r.Transcript = []prober.TranscriptLine{
		{At: ms(1), Dir: prober.Server, Text: "220 " + hostileScript},
		{At: ms(2), Dir: prober.Client, Text: "EHLO probe.example.net"},
		{At: ms(3), Dir: prober.Server, Text: "250-" + hostileImg},
		{At: ms(4), Dir: prober.Server, Text: "250 " + hostileStyle},
		{At: ms(5), Dir: prober.Note, Text: "TLS " + hostileScript},
	}
	e := entryFor(r)
	e.Target = hostileImg + hostileScript
	e.log = fixedLog(`msg="banner" text=` + hostileScript + "\n")
	e.Metrics = hostileStyle
	page := renderProbePage(t, e, time.Now())

	for _, raw := range []string{"<script", "<img", "</style><style>", "alert(2)>"} {
		if strings.Contains(page, raw) {
			t.Errorf("page contains raw %q:\n%s", raw, page)
		}
	}
	for _, want := range []string{
		`<span class="text">220 &lt;script&gt;alert(1)&lt;/script&gt;</span>`,
		`<span class="text">250-&#34;&gt;&lt;img src=x onerror=alert(2)&gt;</span>`,
		`<li>&lt;script&gt;alert(1)&lt;/script&gt;</li>`,
		// The target is text in the heading and a query value in the link.
		`<h1>&#34;&gt;&lt;img src=x onerror=alert(2)&gt;&lt;script&gt;`,
		`href="probe?target=%22%3e%3cimg%20src%3dx%20onerror%3dalert%282%29%3e%3cscript%3ealert%281%29%3c%2fscript%3e&amp;module=submission&amp;view=html"`,
		// A distinguished name escapes its own specials with a backslash.
		`CN=\&#34;\&gt;\&lt;img src=x onerror=alert(2)\&gt;,O=Test`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks the escaped %q", want)
		}
	}
	// The page shows exactly the stylesheet of the layout.
	if n := strings.Count(page, "<style>"); n != 1 {
		t.Errorf("%d style elements", n)
	}

	// Through the handler too: a hostile target on the landing page and a
	// hostile banner on the result page.
	fake := &fakeProber{result: func() *prober.Result { return e.Result }}
	env := newTestEnv(t, HandlerOpts{Probe: fake.probe})
	rec := env.get(t, env.handler, "module=submission&view=html&target="+url.QueryEscape(hostileImg+hostileScript), nil)
	landing := env.get(t, http.HandlerFunc(env.pages.Landing), "", nil)
	for name, out := range map[string]string{"result page": rec.Body.String(), "landing page": landing.Body.String()} {
		for _, raw := range []string{"<script", "<img"} {
			if strings.Contains(out, raw) {
				t.Errorf("%s contains raw %q", name, raw)
			}
		}
		if !strings.Contains(out, "&lt;script&gt;alert(1)&lt;/script&gt;") {
			t.Errorf("%s does not show the hostile text escaped", name)
		}
	}
}

func TestProbePageTLS(t *testing.T) {
	f := newTLSFixture(t)
	now := time.Date(2030, 4, 2, 0, 0, 0, 0, time.UTC) // 60 days before the leaf expires
	page := renderProbePage(t, entryFor(successResult(f)), now)
	for _, want := range []string{
		"<dt>Version</dt><dd>TLS 1.3</dd>",
		`<dt>Cipher</dt><dd class="mono">TLS_AES_128_GCM_SHA256</dd>`,
		`<span class="ok">verified</span>`,
		`<dt>Certificate</dt><dd class="mono">CN=mail.example.net,O=Test</dd>`,
		`<dt>Issuer</dt><dd class="mono">CN=Test Intermediate A,O=Test</dd>`,
		`<dt>Names</dt><dd class="mono">mail.example.net, smtp.example.net</dd>`,
		"2030-06-01T00:00:00Z",
		`<dd class="ok">in 60 days</dd>`,
		`<dt>Serial</dt><dd class="mono">0abc</dd>`,
		// The intermediate ran out on 2029-01-15.
		`<dt>Chain #1</dt><dd class="mono">CN=Test Intermediate A,O=Test</dd>`,
		`<dd class="fail">expired 441 days ago</dd>`,
		`<li class="used" title="used">PLAIN</li>`,
		"10485760 bytes (10.0 MiB)",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}

	// A failed verification leaves no session but the certificates.
	r := authFailedResult(nil)
	r.Failure = &prober.Failure{Phase: prober.PhaseStartTLS, Reason: prober.ReasonCertificate}
	r.Certificates = f.certs
	page = renderProbePage(t, entryFor(r), now)
	for _, want := range []string{"No TLS session was established.", "CN=mail.example.net,O=Test"} {
		if !strings.Contains(page, want) {
			t.Errorf("failed verification: page lacks %q", want)
		}
	}

	page = renderProbePage(t, entryFor(canaryResult()), now)
	for _, want := range []string{"The module does not use TLS.", `<dt>Recipients accepted</dt><dd>1</dd>`, `<span class="fail">not accepted</span>`} {
		if !strings.Contains(page, want) {
			t.Errorf("relay probe: page lacks %q", want)
		}
	}

	// Without DATA the probe resets after RCPT; the page says no message
	// was sent rather than that it was refused.
	r = canaryResult()
	r.Phases[5] = prober.PhaseResult{Phase: prober.PhaseRset, Ran: true, Duration: ms(1), Code: 250}
	page = renderProbePage(t, entryFor(r), now)
	if !strings.Contains(page, "not sent (RSET after RCPT)") || strings.Contains(page, "not accepted") {
		t.Error("a probe without DATA is shown as a refused message")
	}
}

// secretForms are the ways a client could leak password for username.
func secretForms(username, password string) []string {
	return []string{
		password,
		base64.StdEncoding.EncodeToString([]byte(password)),
		base64.StdEncoding.EncodeToString([]byte("\x00" + username + "\x00" + password)),
	}
}

func TestProbePageNoSecret(t *testing.T) {
	fake := &fakeProber{result: transcriptResult}
	env := newTestEnv(t, HandlerOpts{Probe: fake.probe}) // the submission module has testPassword
	pages := map[string]string{
		"probe view=html": env.get(t, env.handler, "target=mail.example.net&module=submission&view=html", nil).Body.String(),
		"logs as browser": env.get(t, http.HandlerFunc(env.pages.Logs), "id=1", http.Header{"Accept": {browserAccept}}).Body.String(),
		"landing":         env.get(t, http.HandlerFunc(env.pages.Landing), "", nil).Body.String(),
	}
	for name, page := range pages {
		for _, s := range secretForms("probe@example.net", testPassword) {
			if strings.Contains(page, s) {
				t.Errorf("%s contains the password (as %q)", name, s)
			}
		}
	}
	for _, name := range []string{"probe view=html", "logs as browser"} {
		for _, want := range []string{"password: &lt;secret&gt;", "AUTH PLAIN &lt;redacted&gt;", "username: probe@example.net"} {
			if !strings.Contains(pages[name], want) {
				t.Errorf("%s lacks %q", name, want)
			}
		}
	}
}

// TestProbePageRealProbe runs the real prober against an in-process
// STARTTLS server with a password it refuses, and checks the result page:
// the failing phase and reason, TLS facts of a real handshake, the
// advertised extensions, and no form of the password.
func TestProbePageRealProbe(t *testing.T) {
	const username, password = "probe@example.net", "Tr0ub4dor-and-3"
	srv := smtptest.NewServer(t, smtptest.Options{
		TLS: smtptest.StartTLS, Username: username, Password: "another-password",
		AuthRequiresTLS: true, Size: 10 << 20,
	})
	cfg := newTestConfig(t, `
modules:
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
	env := newTestEnv(t, HandlerOpts{Config: cfg})
	rec := env.get(t, env.handler, "module=submission&view=html&target="+url.QueryEscape(srv.Addr()), nil)
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	page := rec.Body.String()
	for _, want := range []string{
		`data-phase="auth" data-reason="auth_rejected"`,
		`<div class="wf-row failed" data-phase="auth" data-ran="true"`,
		`<code class="code">535 5.7.8</code>`,
		"<dt>Version</dt><dd>TLS 1.3</dd>",
		"CN=smtptest CA",
		"<li>STARTTLS</li>",
		`<span class="fail">refused</span>`,
		`<li class="client"><span class="at">`,
		`<span class="dir" title="server">S</span><span class="text">220 mx.smtptest.invalid ESMTP smtptest</span>`,
		"password: &lt;secret&gt;",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("result page lacks %q", want)
		}
	}
	if !srv.SawCommand("AUTH") {
		t.Fatal("the probe never sent AUTH, so the page proves nothing about the password")
	}
	for _, s := range secretForms(username, password) {
		if strings.Contains(page, s) {
			t.Errorf("result page contains the password (as %q)", s)
		}
	}
	// Every phase the page drew ran, the widths add up to the axis.
	var sum float64
	for _, m := range regexp.MustCompile(`class="wf-bar" style="left: [0-9.]+%; width: ([0-9.]+)%"`).FindAllStringSubmatch(page, -1) {
		w, _ := strconv.ParseFloat(m[1], 64)
		sum += w
	}
	if math.Abs(sum-100) > 0.01 {
		t.Errorf("bar widths add up to %v%%, want 100%%", sum)
	}
}

func TestLogsContentNegotiation(t *testing.T) {
	fake := &fakeProber{result: transcriptResult}
	env := newTestEnv(t, HandlerOpts{Probe: fake.probe})
	env.get(t, env.handler, "target=mail.example.net&module=submission", nil)
	logs := http.HandlerFunc(env.pages.Logs)
	for _, tc := range []struct {
		name, query, accept string
		html                bool
	}{
		{"browser", "id=1", browserAccept, true},
		{"xhtml", "id=1", "application/xhtml+xml", true},
		{"curl", "id=1", "*/*", false},
		{"no accept", "id=1", "", false},
		{"html refused", "id=1", "text/html;q=0, text/plain", false},
		{"html refused with spaces", "id=1", "text/plain, text/html ; q=0.0", false},
		{"prometheus", "id=1", "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1", false},
		{"browser asks for text", "id=1&view=text", browserAccept, false},
		{"script asks for html", "id=1&view=html", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var header http.Header
			if tc.accept != "" {
				header = http.Header{"Accept": {tc.accept}}
			}
			rec := env.get(t, logs, tc.query, header)
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			ct, body := rec.Header().Get("Content-Type"), rec.Body.String()
			if tc.html {
				if ct != "text/html; charset=utf-8" || !strings.Contains(body, `id="waterfall"`) {
					t.Errorf("want the HTML page, got %q", ct)
				}
				if csp := rec.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
					t.Errorf("no restrictive Content-Security-Policy: %q", csp)
				}
			} else if ct != "text/plain; charset=utf-8" || !strings.HasPrefix(body, "Logs for the probe:") {
				t.Errorf("want the debug text, got %q", ct)
			}
			if rec.Header().Get("Vary") != "Accept" {
				t.Error("the answer depends on Accept but does not say so")
			}
		})
	}
	if rec := env.get(t, logs, "id=1&view=pdf", nil); rec.Code != http.StatusBadRequest {
		t.Errorf("view=pdf: status %d, want 400", rec.Code)
	}
}

func TestProbeViewParameter(t *testing.T) {
	fake := &fakeProber{result: transcriptResult}
	env := newTestEnv(t, HandlerOpts{Probe: fake.probe})

	plain := env.get(t, env.handler, "target=mail.example.net&module=submission", http.Header{"Accept": {browserAccept}})
	if ct := plain.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("/probe without view answers %q even to a browser, want the exposition", ct)
	}

	rec := env.get(t, env.handler, "target=mail.example.net&module=submission&view=html", nil)
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "text/html; charset=utf-8" {
		t.Fatalf("view=html: status %d, content type %q", rec.Code, rec.Header().Get("Content-Type"))
	}
	page := rec.Body.String()
	for _, want := range []string{`id="waterfall"`, "Failed in auth: auth_rejected", `href="logs?id=2&amp;view=text"`} {
		if !strings.Contains(page, want) {
			t.Errorf("result page lacks %q", want)
		}
	}
	// The probe from the form is recorded like a scrape.
	if e, ok := env.history.Get(2); !ok || e.Target != "mail.example.net" || e.FailureReason != prober.ReasonAuthRejected {
		t.Errorf("the probe from the form is not in the history: %+v", e)
	}

	calls := len(fake.calls)
	if rec := env.get(t, env.handler, "target=mail.example.net&module=submission&view=json", nil); rec.Code != http.StatusBadRequest {
		t.Errorf("view=json: status %d, want 400", rec.Code)
	}
	if len(fake.calls) != calls {
		t.Error("a bad view parameter still ran a probe")
	}
}

func TestPagesLinksAreRelative(t *testing.T) {
	fake := &fakeProber{result: transcriptResult}
	env := newTestEnv(t, HandlerOpts{Probe: fake.probe})
	pages := map[string]string{
		"result":  env.get(t, env.handler, "target=mail.example.net&module=submission&view=html", nil).Body.String(),
		"landing": env.get(t, http.HandlerFunc(env.pages.Landing), "", nil).Body.String(),
	}
	for name, page := range pages {
		links := regexp.MustCompile(`(?:href|action|src)="([^"]*)"`).FindAllStringSubmatch(page, -1)
		if len(links) < 2 {
			t.Errorf("%s: only %d links", name, len(links))
		}
		for _, m := range links {
			if strings.HasPrefix(m[1], "/") || strings.Contains(m[1], "://") || strings.HasPrefix(m[1], "//") {
				t.Errorf("%s: absolute link %q breaks under a route prefix", name, m[1])
			}
		}
	}
}

func TestLandingHighlightsFailures(t *testing.T) {
	results := []func() *prober.Result{func() *prober.Result { return successResult(nil) }, transcriptResult}
	n := 0
	fake := &fakeProber{result: func() *prober.Result { n++; return results[(n-1)%2]() }}
	env := newTestEnv(t, HandlerOpts{Probe: fake.probe})
	env.get(t, env.handler, "target=ok.example.net&module=submission", nil)
	env.get(t, env.handler, "target=bad.example.net&module=submission", nil)
	page := env.get(t, http.HandlerFunc(env.pages.Landing), "", nil).Body.String()
	for _, want := range []string{
		`<tr class="failed" data-id="2">`,
		`<tr data-id="1">`,
		"1 of the 2 probes shown failed.",
		`<input type="hidden" name="view" value="html">`,
		`<a href="logs?id=2">details</a>`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("landing page lacks %q", want)
		}
	}
	if i, j := strings.Index(page, "bad.example.net"), strings.Index(page, "ok.example.net"); i < 0 || j < 0 || i > j {
		t.Error("the probes are not listed newest first")
	}
}

func TestAcceptsHTML(t *testing.T) {
	for accept, want := range map[string]bool{
		browserAccept:              true,
		"TEXT/HTML":                true,
		"text/html;level=1;q=0.5":  true,
		"text/html;q=0":            false,
		"text/htmlx":               false,
		"*/*":                      false,
		"text/*":                   false,
		"application/json":         false,
		"text/plain, text/html;q=": true, // an unreadable quality is not a refusal
	} {
		if got := acceptsHTML([]string{accept}); got != want {
			t.Errorf("acceptsHTML(%q) = %v, want %v", accept, got, want)
		}
	}
	if !acceptsHTML([]string{"text/plain", "text/html"}) {
		t.Error("a second Accept header is ignored")
	}
}

// TestCertViewCountsOmittedNames: names the prober left out of a large
// certificate are counted, not silently dropped.
func TestCertViewCountsOmittedNames(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	c := prober.Certificate{
		Subject:      "CN=mx.example.net",
		DNSNames:     []string{"mx.example.net"},
		IPAddresses:  []netip.Addr{netip.MustParseAddr("192.0.2.25")},
		OmittedNames: 52,
		NotBefore:    now.Add(-24 * time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
	}
	if got, want := newCertView(c, now).Names, "mx.example.net, 192.0.2.25, and 52 more names"; got != want {
		t.Errorf("names = %q, want %q", got, want)
	}
	c.OmittedNames = 0
	if got, want := newCertView(c, now).Names, "mx.example.net, 192.0.2.25"; got != want {
		t.Errorf("names = %q, want %q", got, want)
	}
}

// historyOf fills a history of the given limit with probes, one a minute
// from base, each "module target ok" or "module target fail"; failures are
// auth_rejected in auth.
func historyOf(t *testing.T, limit int, base time.Time, probes ...string) *History {
	t.Helper()
	h := NewHistory(limit)
	for i, p := range probes {
		f := strings.Fields(p)
		if len(f) != 3 || (f[2] != "ok" && f[2] != "fail") {
			t.Fatalf("probe %q is not \"module target ok|fail\"", p)
		}
		id, probeID := h.newID()
		e := &Entry{ID: id, ProbeID: probeID, Time: base.Add(time.Duration(i) * time.Minute),
			Module: f[0], Target: f[1], Success: f[2] == "ok"}
		if !e.Success {
			e.FailurePhase, e.FailureReason = prober.PhaseAuth, prober.ReasonAuthRejected
		}
		h.Add(e)
	}
	return h
}

// stateSummary is a TargetState by probe numbers, 0 for none.
type stateSummary struct {
	key                      string // "module target"
	last, since, lastSuccess uint64
	failures                 int
	sinceStart               bool
	lastFailure              uint64
}

func summarize(states []TargetState) []stateSummary {
	id := func(e *Entry) uint64 {
		if e == nil {
			return 0
		}
		return e.ID
	}
	out := make([]stateSummary, 0, len(states))
	for _, s := range states {
		out = append(out, stateSummary{s.Module + " " + s.Target, id(s.Last), id(s.FailingSince), id(s.LastSuccess),
			s.Failures, s.SinceStart, id(s.LastFailure)})
	}
	return out
}

func TestHistoryStates(t *testing.T) {
	base := time.Date(2026, 3, 4, 3, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name   string
		limit  int
		probes []string
		want   []stateSummary
	}{
		{"nothing", 10, nil, nil},
		{"history disabled", 0, []string{"m a fail"}, nil},
		{"one success", 10, []string{"m a ok"}, []stateSummary{{key: "m a", last: 1}}},
		{"failing after a success", 10, []string{"m a fail", "m a ok", "m a fail", "m a fail"},
			[]stateSummary{{key: "m a", last: 4, since: 3, lastSuccess: 2, failures: 2, lastFailure: 4}}},
		{"recovered", 10, []string{"m a ok", "m a fail", "m a ok"},
			[]stateSummary{{key: "m a", last: 3, lastFailure: 2}}},
		{"never succeeded since the start", 10, []string{"m a fail", "m a fail"},
			[]stateSummary{{key: "m a", last: 2, since: 1, failures: 2, sinceStart: true, lastFailure: 2}}},
		{"other targets between", 10, []string{"m a ok", "m b fail", "m a fail", "m b ok", "m a fail"},
			[]stateSummary{
				{key: "m a", last: 5, since: 3, lastSuccess: 1, failures: 2, lastFailure: 5},
				{key: "m b", last: 4, lastFailure: 2},
			}},
		{"modules of one target apart", 10, []string{"auth mx ok", "banner mx fail", "auth mx fail", "banner mx ok"},
			[]stateSummary{
				{key: "auth mx", last: 3, since: 3, lastSuccess: 1, failures: 1, lastFailure: 3},
				{key: "banner mx", last: 4, lastFailure: 2},
			}},
		// Recent keeps 3: the success 2 has been dropped, so the run is
		// followed no further back than recent reaches, although the kept
		// failure 3 might belong to it.
		{"history does not reach the last success", 3, []string{"m a fail", "m a ok", "m a fail", "m b ok", "m b ok", "m a fail"},
			[]stateSummary{
				{key: "m a", last: 6, since: 6, failures: 1, lastFailure: 6},
				{key: "m b", last: 5},
			}},
		// A full history no longer says that nothing succeeded since the
		// start.
		{"full history of failures", 2, []string{"m a ok", "m a fail", "m a fail"},
			[]stateSummary{{key: "m a", last: 3, since: 2, failures: 2, lastFailure: 3}}},
		// A success whose failure has left recent still knows it from the
		// older failures kept.
		{"latest failure among the older ones", 2, []string{"m a fail", "m a ok", "m a ok"},
			[]stateSummary{{key: "m a", last: 3, lastFailure: 1}}},
		// A target whose probes have all left recent is no longer current.
		{"not seen recently", 2, []string{"m old fail", "m a ok", "m a ok"},
			[]stateSummary{{key: "m a", last: 3}}},
		// Failing first, the longest failing first; then by target and module.
		{"order", 10, []string{"z c ok", "m b fail", "a c ok", "m a ok", "n b ok", "m a fail", "a a fail", "m b fail"},
			[]stateSummary{
				{key: "m b", last: 8, since: 2, failures: 2, sinceStart: true, lastFailure: 8},
				{key: "m a", last: 6, since: 6, lastSuccess: 4, failures: 1, lastFailure: 6},
				{key: "a a", last: 7, since: 7, failures: 1, sinceStart: true, lastFailure: 7},
				{key: "n b", last: 5},
				{key: "a c", last: 3},
				{key: "z c", last: 1},
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := summarize(historyOf(t, tc.limit, base, tc.probes...).States())
			if len(got) != len(tc.want) {
				t.Fatalf("states %+v, want %+v", got, tc.want)
			}
			for i := range tc.want {
				if got[i] != tc.want[i] {
					t.Errorf("state %d: %+v, want %+v", i, got[i], tc.want[i])
				}
			}
		})
	}
}

// htmlNode is an element of a page as encoding/xml reads HTML in its
// lenient mode: enough to find elements by id, class and data attributes.
type htmlNode struct {
	tag      string
	attrs    map[string]string
	children []*htmlNode
	text     strings.Builder
}

// parseHTML parses a page rendered by the templates.
func parseHTML(t *testing.T, page string) *htmlNode {
	t.Helper()
	d := xml.NewDecoder(strings.NewReader(page))
	d.Strict, d.AutoClose, d.Entity = false, xml.HTMLAutoClose, xml.HTMLEntity
	root := &htmlNode{attrs: map[string]string{}}
	stack := []*htmlNode{root}
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("parsing the page: %v", err)
		}
		top := stack[len(stack)-1]
		switch tok := tok.(type) {
		case xml.StartElement:
			n := &htmlNode{tag: tok.Name.Local, attrs: map[string]string{}}
			for _, a := range tok.Attr {
				n.attrs[a.Name.Local] = a.Value
			}
			top.children = append(top.children, n)
			stack = append(stack, n)
		case xml.EndElement:
			stack = stack[:len(stack)-1]
		case xml.CharData:
			for _, n := range stack {
				n.text.Write(tok)
			}
		}
	}
	return root
}

// find returns the elements under n, in document order, that match.
func (n *htmlNode) find(match func(*htmlNode) bool) []*htmlNode {
	var out []*htmlNode
	for _, c := range n.children {
		if match(c) {
			out = append(out, c)
		}
		out = append(out, c.find(match)...)
	}
	return out
}

// byID returns the element with the given id, or fails the test.
func (n *htmlNode) byID(t *testing.T, id string) *htmlNode {
	t.Helper()
	found := n.find(func(c *htmlNode) bool { return c.attrs["id"] == id })
	if len(found) != 1 {
		t.Fatalf("%d elements with id %q", len(found), id)
	}
	return found[0]
}

func (n *htmlNode) byTag(tag string) []*htmlNode {
	return n.find(func(c *htmlNode) bool { return c.tag == tag })
}

// Text returns the element's text, spaces collapsed.
func (n *htmlNode) Text() string { return strings.Join(strings.Fields(n.text.String()), " ") }

// renderLanding renders the landing page for cfg and h as of now.
func renderLanding(t *testing.T, cfg *config.Config, h *History, now time.Time) *htmlNode {
	t.Helper()
	var b strings.Builder
	if err := landingTemplate.Execute(&b, newLandingData(cfg, h, now)); err != nil {
		t.Fatalf("rendering the landing page: %v", err)
	}
	return parseHTML(t, b.String())
}

func TestLandingCurrentState(t *testing.T) {
	base := time.Date(2026, 3, 4, 3, 0, 0, 0, time.UTC)
	cfg := newTestConfig(t, testConfigYAML).Get()
	h := historyOf(t, 4, base,
		"relay mx.example.net fail", // 1: leaves recent, kept as an older failure
		"submission mx.example.net ok",
		"submission mx.example.net fail",
		"relay mx.example.net ok",
		"submission mx.example.net fail",
		"relay other.example.net fail",
	)
	// Recent: 3..6, the success 2 and the failure 1 have left it.
	now := base.Add(2 * time.Hour)
	doc := renderLanding(t, cfg, h, now)

	if got := doc.byID(t, "failing").Text(); got != "Failing now: 2 of the 3 module and target pairs probed recently." {
		t.Errorf("summary %q", got)
	}
	rows := doc.byID(t, "states").byTag("tbody")[0].byTag("tr")
	type row struct{ module, target, result, id, sinceID, failures, atLeast, class string }
	var got []row
	for _, r := range rows {
		a := r.attrs
		got = append(got, row{a["data-module"], a["data-target"], a["data-result"], a["data-id"], a["data-since-id"], a["data-failures"], a["data-at-least"], a["class"]})
	}
	want := []row{
		// Failing since probe 3 (02:00 after base), the success 2 has left
		// recent: at least since then.
		{"submission", "mx.example.net", "failure", "5", "3", "2", "true", "failed"},
		{"relay", "other.example.net", "failure", "6", "6", "1", "true", "failed"},
		{"relay", "mx.example.net", "success", "4", "", "", "", ""},
	}
	if len(got) != len(want) {
		t.Fatalf("rows %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("row %d: %+v, want %+v", i, got[i], want[i])
		}
	}

	cells := func(r *htmlNode) []string {
		var out []string
		for _, td := range r.byTag("td") {
			out = append(out, td.Text())
		}
		return out
	}
	failing := cells(rows[0])
	for i, want := range []string{"mx.example.net", "submission", "failure", "auth", "auth_rejected",
		"2026-03-04 03:04:00Z 1h56m ago",
		"at least since 2026-03-04 03:02:00Z 1h58m ago; 2 failed probes in a row, and the history reaches back no further",
		"details"} {
		if i >= len(failing) || failing[i] != want {
			t.Errorf("failing row cell %d: %q, want %q", i, failing, want)
		}
	}
	links := func(r *htmlNode) []string {
		var out []string
		for _, a := range r.byTag("a") {
			out = append(out, a.attrs["href"])
		}
		return out
	}
	if got := strings.Join(links(rows[0]), " "); got != "logs?id=3 logs?id=5" {
		t.Errorf("failing row links %q, want the run's first failure and the latest probe", got)
	}
	// The succeeding pair shows its latest failure, kept although it has
	// left the recent probes.
	if got := cells(rows[2]); len(got) < 4 || got[3] != "last failed at 2026-03-04 03:00:00Z: auth, auth_rejected" {
		t.Errorf("succeeding row %q does not show its last failure", got)
	}
	if got := strings.Join(links(rows[2]), " "); got != "logs?id=1 logs?id=4" {
		t.Errorf("succeeding row links %q", got)
	}

	// The state leads; the chronological list stays below, all of it.
	var order []string
	for _, n := range doc.find(func(n *htmlNode) bool { return n.tag == "h2" || n.tag == "table" }) {
		order = append(order, n.tag+":"+n.Text()+n.attrs["id"])
	}
	if len(order) < 5 || order[0] != "h2:Current state" || order[1] != "table:"+doc.byID(t, "states").Text()+"states" ||
		order[2] != "h2:Probe a target" || order[3] != "h2:Recent probes" {
		t.Errorf("sections %q", order)
	}
	if n := len(doc.byID(t, "probes").byTag("tbody")[0].byTag("tr")); n != 5 {
		t.Errorf("%d recent probes listed, want the 4 recent and the older failure", n)
	}

	t.Run("a probe that never succeeded", func(t *testing.T) {
		doc := renderLanding(t, cfg, historyOf(t, 10, base, "submission mx.example.net fail"), base.Add(30*time.Second))
		tds := doc.byID(t, "states").byTag("td")
		if got := tds[6].Text(); got != "at least since 2026-03-04 03:00:00Z 30s ago; 1 failed probe in a row, none succeeded since the exporter started" {
			t.Errorf("failing since %q", got)
		}
	})
	t.Run("a run after a success", func(t *testing.T) {
		doc := renderLanding(t, cfg, historyOf(t, 10, base, "relay mx ok", "relay mx fail"), base.Add(time.Hour))
		r := doc.byID(t, "states").byTag("tr")[1]
		if r.attrs["data-at-least"] != "false" || r.byTag("td")[6].Text() != "2026-03-04 03:01:00Z 59m ago; 1 failed probe in a row, after a success at 2026-03-04 03:00:00Z" {
			t.Errorf("row %v: %q", r.attrs, r.byTag("td")[6].Text())
		}
	})
	t.Run("all succeed", func(t *testing.T) {
		doc := renderLanding(t, cfg, historyOf(t, 10, base, "relay mx ok"), base)
		if got := doc.byID(t, "failing"); got.attrs["class"] != "ok" || got.Text() != "Failing now: none of the 1 module and target pairs probed recently." {
			t.Errorf("summary %v %q", got.attrs, got.Text())
		}
	})
	t.Run("target escaped", func(t *testing.T) {
		target := "mx.example.net\u202e<b>\x1b[31m"
		doc := renderLanding(t, cfg, historyOf(t, 10, base, "relay "+target+" fail"), base)
		r := doc.byID(t, "states").byTag("tbody")[0].byTag("tr")[0]
		const want = `mx.example.net\u202e<b>\x1b[31m`
		if r.attrs["data-target"] != want || r.byTag("td")[0].Text() != want {
			t.Errorf("target shown as %q and %q, want %q", r.attrs["data-target"], r.byTag("td")[0].Text(), want)
		}
		if len(r.byTag("b")) != 0 {
			t.Error("the target's markup became an element")
		}
	})
	t.Run("no probes", func(t *testing.T) {
		doc := renderLanding(t, cfg, NewHistory(10), base)
		if n := doc.find(func(n *htmlNode) bool { return n.attrs["id"] == "states" }); len(n) != 0 {
			t.Error("a table of states without probes")
		}
	})
}

func TestLandingStateNotesAnswersNotRecorded(t *testing.T) {
	h := historyOf(t, 10, time.Now(), "submission mx ok")
	const note = "Only probes that ran are counted"
	for _, tc := range []struct {
		name, yaml string
		want       bool
	}{
		{"no reuse", testConfigYAML, false},
		{"min_interval", "modules:\n  banner:\n    min_interval: 1m\n    smtp:\n      tls: none\n", true},
		// auth_failure_backoff is on by default for a module that logs in.
		{"auth_failure_backoff", "modules:\n  submission:\n    smtp:\n      auth:\n        username: u\n        password: p\n      allowed_targets: ['*']\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := renderLanding(t, newTestConfig(t, tc.yaml).Get(), h, time.Now())
			if got := strings.Contains(doc.Text(), note); got != tc.want {
				t.Errorf("note shown %v, want %v", got, tc.want)
			}
		})
	}
}

func TestLandingFormDoesNotChooseModuleThatSendsMail(t *testing.T) {
	const canary = `
  canary:
    smtp:
      mail:
        from: probe@example.net
        to: [sink@example.net]
`
	const noData = `
  check_rcpt:
    smtp:
      mail:
        from: probe@example.net
        to: [sink@example.net]
        data: false
`
	const banner = `
  zz_banner:
    smtp:
      tls: none
`
	type option struct {
		value, text   string
		sends, chosen bool
	}
	for _, tc := range []struct {
		name    string
		modules string
		want    []option
	}{
		{"the first", banner + noData, []option{
			{"check_rcpt", "check_rcpt", false, true},
			{"zz_banner", "zz_banner", false, false},
		}},
		{"the first that sends nothing", canary + noData + banner, []option{
			{"canary", "canary — sends a message", true, false},
			{"check_rcpt", "check_rcpt", false, true},
			{"zz_banner", "zz_banner", false, false},
		}},
		{"after the senders", canary + banner, []option{
			{"canary", "canary — sends a message", true, false},
			{"zz_banner", "zz_banner", false, true},
		}},
		// Nothing chosen: the placeholder, which cannot be sent, forces a
		// choice.
		{"every module sends", canary, []option{
			{"", "Choose a module", false, true},
			{"canary", "canary — sends a message", true, false},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := renderLanding(t, newTestConfig(t, "modules:"+tc.modules).Get(), NewHistory(10), time.Now())
			sel := doc.byID(t, "module")
			if _, ok := sel.attrs["required"]; !ok {
				t.Error("the module select is not required")
			}
			// A browser chooses the last option marked selected, or else the
			// first.
			var got []option
			chosen := 0
			for i, o := range sel.byTag("option") {
				if _, ok := o.attrs["selected"]; ok {
					chosen = i
				}
				got = append(got, option{o.attrs["value"], o.Text(), o.attrs["data-sends-mail"] == "true", false})
			}
			if len(got) > 0 {
				got[chosen].chosen = true
			}
			if len(got) != len(tc.want) {
				t.Fatalf("options %+v, want %+v", got, tc.want)
			}
			for i := range tc.want {
				if got[i] != tc.want[i] {
					t.Errorf("option %d: %+v, want %+v", i, got[i], tc.want[i])
				}
			}
			if tc.want[0].value == "" {
				if _, ok := sel.byTag("option")[0].attrs["disabled"]; !ok {
					t.Error("the placeholder can be chosen")
				}
			}
		})
	}
}
