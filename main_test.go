package main

import (
	"cmp"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

func TestConfigCheck(t *testing.T) {
	if code := run([]string{"--config.file=smtp_exporter.yml", "--config.check"}, make(chan os.Signal, 1)); code != 0 {
		t.Errorf("shipped config: exit code %d, want 0", code)
	}
	if code := run([]string{"--config.file=config/testdata/bad-tls-mode.yml", "--config.check"}, make(chan os.Signal, 1)); code != 1 {
		t.Errorf("invalid config: exit code %d, want 1", code)
	}
	if code := run([]string{"--config.file=does-not-exist.yml", "--config.check"}, make(chan os.Signal, 1)); code != 1 {
		t.Errorf("missing config: exit code %d, want 1", code)
	}
}

func TestRefusesABadTimeoutOffset(t *testing.T) {
	for _, offset := range []string{"-1", "NaN", "+Inf"} {
		if code := run([]string{"--config.file=smtp_exporter.yml", "--timeout-offset=" + offset, "--config.check"}, make(chan os.Signal, 1)); code != 2 {
			t.Errorf("--timeout-offset=%s: exit code %d, want 2", offset, code)
		}
	}
}

func TestRefusesToStartWithInvalidConfig(t *testing.T) {
	if code := run([]string{"--config.file=config/testdata/bad-port.yml", "--web.listen-address=127.0.0.1:0"}, make(chan os.Signal, 1)); code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
}

// freeLoopbackAddr is a 127.0.0.1 address with a port that was free a
// moment ago, for an exporter to listen on.
func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startExporter starts run() on a free loopback port with the given config
// file and returns its address and the signal channel that stops it; the
// test's cleanup stops it and checks its exit code.
func startExporter(t *testing.T, configFile string, extraArgs ...string) (string, chan os.Signal) {
	t.Helper()
	addr := freeLoopbackAddr(t)
	signals := make(chan os.Signal, 1)
	done := make(chan int, 1)
	args := append([]string{"--config.file=" + configFile, "--web.listen-address=" + addr, "--log.level=error"}, extraArgs...)
	go func() { done <- run(args, signals) }()
	t.Cleanup(func() {
		signals <- syscall.SIGTERM
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("exporter exited with %d", code)
			}
		case <-time.After(10 * time.Second):
			t.Error("exporter did not stop within 10s of SIGTERM")
		}
	})
	return addr, signals
}

// exporter starts run() as startExporter does and waits until it is healthy
// over plain HTTP; it returns the base URL and the signal channel.
func exporter(t *testing.T, configFile string, extraArgs ...string) (string, chan os.Signal) {
	t.Helper()
	addr, signals := startExporter(t, configFile, extraArgs...)
	base := "http://" + addr
	health := base + "/-/healthy"
	for _, a := range extraArgs {
		if p, ok := strings.CutPrefix(a, "--web.route-prefix="); ok {
			health = base + p + "/-/healthy"
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := http.Get(health)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return base, signals
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("exporter not healthy after 5s: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func post(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Post(url, "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestEndpointsAndReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "smtp_exporter.yml")
	writeFile(t, path, "modules:\n  first:\n    smtp:\n      tls: none\n")
	base, signals := exporter(t, path)

	for _, p := range []string{"/-/healthy", "/-/ready", "/", "/config", "/metrics"} {
		if code, _ := get(t, base+p); code != http.StatusOK {
			t.Errorf("GET %s: status %d, want 200", p, code)
		}
	}
	if code, _ := get(t, base+"/-/reload"); code != http.StatusMethodNotAllowed {
		t.Errorf("GET /-/reload: status %d, want 405", code)
	}

	// A bad file is refused with its reason and the old config keeps serving.
	writeFile(t, path, "modules:\n  second:\n    smtp:\n      tls: tls\n")
	code, body := post(t, base+"/-/reload")
	if code != http.StatusInternalServerError || !strings.Contains(body, "line 4") {
		t.Errorf("bad reload: status %d body %q, want 500 naming line 4", code, body)
	}
	if _, body := get(t, base+"/config"); !strings.Contains(body, "first:") {
		t.Errorf("old config not served after a failed reload:\n%s", body)
	}
	if _, body := get(t, base+"/metrics"); !strings.Contains(body, "smtp_exporter_config_last_reload_successful 0") {
		t.Error("/metrics does not report the failed reload")
	}

	writeFile(t, path, "modules:\n  second:\n    smtp:\n      tls: none\n")
	if code, body := post(t, base+"/-/reload"); code != http.StatusOK {
		t.Fatalf("good reload: status %d body %q", code, body)
	}
	if _, body := get(t, base+"/config"); !strings.Contains(body, "second:") || strings.Contains(body, "first:") {
		t.Errorf("config after reload:\n%s", body)
	}

	// SIGHUP reloads too.
	writeFile(t, path, "modules:\n  third:\n    smtp:\n      tls: none\n")
	signals <- syscall.SIGHUP
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, body := get(t, base+"/config")
		if strings.Contains(body, "third:") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("SIGHUP did not reload the config:\n%s", body)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Per-target metrics never appear on /metrics; exporter metrics do.
	_, metrics := get(t, base+"/metrics")
	for _, want := range []string{"smtp_exporter_build_info", "smtp_exporter_module_unknown_total", "go_goroutines"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(metrics, "probe_success") {
		t.Error("/metrics carries per-probe metrics")
	}
}

func TestProbeEndpointValidatesParameters(t *testing.T) {
	path := filepath.Join(t.TempDir(), "smtp_exporter.yml")
	writeFile(t, path, "modules:\n  m:\n    smtp:\n      tls: none\n")
	base, _ := exporter(t, path)
	cases := map[string]int{
		"/probe":                              http.StatusBadRequest,
		"/probe?module=m":                     http.StatusBadRequest,
		"/probe?target=127.0.0.1&module=nope": http.StatusBadRequest,
		"/probe?target=127.0.0.1&target=127.0.0.2&module=m": http.StatusBadRequest,
	}
	for query, want := range cases {
		if code, body := get(t, base+query); code != want {
			t.Errorf("GET %s: status %d (%q), want %d", query, code, body, want)
		}
	}
	if _, metrics := get(t, base+"/metrics"); !strings.Contains(metrics, "smtp_exporter_module_unknown_total 1") {
		t.Error("unknown module was not counted")
	}
}

func TestRoutePrefix(t *testing.T) {
	path := filepath.Join(t.TempDir(), "smtp_exporter.yml")
	writeFile(t, path, "modules:\n  m:\n    smtp:\n      tls: none\n")
	base, _ := exporter(t, path, "--web.route-prefix=/smtp")
	for _, p := range []string{"/smtp/", "/smtp/metrics", "/smtp/config"} {
		if code, _ := get(t, base+p); code != http.StatusOK {
			t.Errorf("GET %s: status %d, want 200", p, code)
		}
	}
	if code, _ := get(t, base+"/metrics"); code != http.StatusNotFound {
		t.Errorf("GET /metrics outside the prefix: status %d, want 404", code)
	}
}

func TestResolveRoutePrefix(t *testing.T) {
	cases := []struct{ external, prefix, want string }{
		{"", "", "/"},
		{"https://example.net/smtp/", "", "/smtp"},
		{"https://example.net/smtp", "/other/", "/other"},
	}
	for _, c := range cases {
		got, err := resolveRoutePrefix(c.external, c.prefix)
		if err != nil || got != c.want {
			t.Errorf("resolveRoutePrefix(%q, %q) = %q, %v; want %q", c.external, c.prefix, got, err, c.want)
		}
	}
	if _, err := resolveRoutePrefix("://bad", ""); err == nil {
		t.Error("bad external URL accepted")
	}
}

// TestEveryResponseIsNosniff asks every route of the real server for each
// of its answers, successes and errors, and requires
// X-Content-Type-Options: nosniff on all of them.
func TestEveryResponseIsNosniff(t *testing.T) {
	srv := smtptest.NewServer(t, smtptest.Options{NoAuth: true})
	path := filepath.Join(t.TempDir(), "smtp_exporter.yml")
	writeFile(t, path, "modules:\n  m:\n    timeout: 5s\n    smtp:\n      tls: none\n      allowed_targets: [\"127.0.0.1\"]\n")
	base, _ := exporter(t, path)
	probe := "/probe?module=m&target=" + url.QueryEscape(srv.Addr())

	for _, tc := range []struct {
		method, path string
		header       http.Header
		code         int
	}{
		{"GET", probe, nil, http.StatusOK},
		{"GET", probe, http.Header{"Accept": {"application/openmetrics-text; version=1.0.0"}}, http.StatusOK},
		{"GET", probe, http.Header{"Accept": {"application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited"}}, http.StatusOK},
		{"GET", probe + "&debug=true", nil, http.StatusOK},
		{"GET", probe + "&view=html", nil, http.StatusOK},
		{"GET", "/probe?module=m", nil, http.StatusBadRequest},
		{"GET", "/probe?module=nope&target=127.0.0.1", nil, http.StatusBadRequest},
		{"GET", "/metrics", nil, http.StatusOK},
		{"GET", "/", nil, http.StatusOK},
		{"GET", "/logs?id=1", nil, http.StatusOK},
		{"GET", "/logs?id=1", http.Header{"Accept": {"text/html"}}, http.StatusOK},
		{"GET", "/logs?id=999999", nil, http.StatusNotFound},
		{"GET", "/logs?id=x", nil, http.StatusBadRequest},
		{"GET", "/config", nil, http.StatusOK},
		{"GET", "/-/healthy", nil, http.StatusOK},
		{"GET", "/-/ready", nil, http.StatusOK},
		{"GET", "/-/reload", nil, http.StatusMethodNotAllowed},
		{"POST", "/-/reload", nil, http.StatusOK},
		{"POST", "/-/reload", http.Header{"Sec-Fetch-Site": {"cross-site"}}, http.StatusForbidden},
		{"GET", "/no-such-page", nil, http.StatusNotFound},
	} {
		req, err := http.NewRequest(tc.method, base+tc.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header = tc.header
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		name := tc.method + " " + tc.path
		if resp.StatusCode != tc.code {
			t.Errorf("%s %v: status %d, want %d: %s", name, tc.header, resp.StatusCode, tc.code, body)
		}
		if got := resp.Header.Values("X-Content-Type-Options"); len(got) != 1 || got[0] != "nosniff" {
			t.Errorf("%s %v: X-Content-Type-Options %q, want nosniff", name, tc.header, got)
		}
	}
	if srv.Connections() == 0 {
		t.Error("no probe reached the server")
	}
}

// TestReloadRefusesCrossSiteRequests sends the requests a form or a script
// on another site makes a browser send, and the requests of curl, tooling
// and the exporter's own pages: only the latter reload.
func TestReloadRefusesCrossSiteRequests(t *testing.T) {
	path := filepath.Join(t.TempDir(), "smtp_exporter.yml")
	writeFile(t, path, "modules:\n  first:\n    smtp:\n      tls: none\n")
	base, _ := exporter(t, path)
	host := strings.TrimPrefix(base, "http://")

	for i, tc := range []struct {
		name   string
		header http.Header
		reload bool
	}{
		{"cross-site form", http.Header{"Sec-Fetch-Site": {"cross-site"}, "Origin": {"https://attacker.example"}}, false},
		{"same-site page", http.Header{"Sec-Fetch-Site": {"same-site"}, "Origin": {"http://other.localhost"}}, false},
		{"old browser, other origin", http.Header{"Origin": {"https://attacker.example"}}, false},
		{"old browser, null origin", http.Header{"Origin": {"null"}}, false},
		{"curl", nil, true},
		{"same origin", http.Header{"Sec-Fetch-Site": {"same-origin"}, "Origin": {base}}, true},
		{"typed by the user", http.Header{"Sec-Fetch-Site": {"none"}}, true},
		{"old browser, same origin", http.Header{"Origin": {"http://" + host}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			module := fmt.Sprintf("module%d", i)
			writeFile(t, path, "modules:\n  "+module+":\n    smtp:\n      tls: none\n")
			req, err := http.NewRequest(http.MethodPost, base+"/-/reload", strings.NewReader("x=1"))
			if err != nil {
				t.Fatal(err)
			}
			req.Header = tc.header.Clone()
			if req.Header == nil {
				req.Header = http.Header{}
			}
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			_, cfg := get(t, base+"/config")
			reloaded := strings.Contains(cfg, module+":")
			switch {
			case tc.reload && (resp.StatusCode != http.StatusOK || !reloaded):
				t.Errorf("status %d (%s), reloaded %v; want 200 and a reload", resp.StatusCode, body, reloaded)
			case !tc.reload && (resp.StatusCode != http.StatusForbidden || reloaded):
				t.Errorf("status %d (%s), reloaded %v; want 403 and no reload", resp.StatusCode, body, reloaded)
			}
		})
	}
}

// TestGCPercent checks the garbage collector's target the exporter runs
// with: its own default, unless GOGC sets one.
func TestGCPercent(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	path := filepath.Join(t.TempDir(), "smtp_exporter.yml")
	writeFile(t, path, "modules:\n  first:\n    smtp:\n      tls: none\n")
	for _, tc := range []struct {
		env  string
		want int
	}{
		{"", defaultGCPercent},
		{"50", 50},
	} {
		t.Setenv("GOGC", tc.env)
		// What the runtime did with the variable when the process started.
		debug.SetGCPercent(cmp.Or(atoi(t, tc.env), 100))
		base, _ := exporter(t, path)
		_, metrics := get(t, base+"/metrics")
		if want := fmt.Sprintf("\ngo_gc_gogc_percent %d\n", tc.want); !strings.Contains(metrics, want) {
			t.Errorf("GOGC=%q: /metrics lacks %q", tc.env, strings.TrimSpace(want))
		}
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	if s == "" {
		return 0
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
