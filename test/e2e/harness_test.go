package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// tools are the programs the test runs, by absolute path.
type tools struct {
	prometheus   string
	alertmanager string
	postfix      string
}

// requireTools finds the programs the scenario runs and checks that it may
// start a private lab (root). Outside CI anything missing skips the test
// with what to install; in CI (CI=true) it fails, so that a broken CI image
// cannot pass by skipping.
func requireTools(t *testing.T) tools {
	t.Helper()
	var missing []string
	find := func(name, debianPackage string) string {
		path, err := exec.LookPath(name)
		if err != nil {
			// /usr/sbin is not on every user's PATH.
			if _, serr := os.Stat("/usr/sbin/" + name); serr == nil {
				return "/usr/sbin/" + name
			}
			missing = append(missing, fmt.Sprintf("%s (Debian package %s)", name, debianPackage))
		}
		return path
	}
	found := tools{
		prometheus:   find("prometheus", "prometheus"),
		alertmanager: find("prometheus-alertmanager", "prometheus-alertmanager"),
		postfix:      find("postfix", "postfix"),
	}
	// What test/lab/start.sh needs besides Postfix.
	find("postconf", "postfix")
	find("dovecot", "dovecot-core")
	find("openssl", "openssl")
	find("swaks", "swaks")
	find("sievec", "dovecot-sieve")

	var problems []string
	if len(missing) > 0 {
		problems = append(problems, "missing "+strings.Join(missing, ", ")+
			" (bash test/install-tools.sh and bash test/lab/install.sh install them)")
	}
	if os.Geteuid() != 0 {
		problems = append(problems, "not root: the private Postfix lab needs root")
	}
	if len(problems) > 0 {
		msg := "end-to-end alerting test: " + strings.Join(problems, "; ")
		if os.Getenv("CI") == "true" {
			t.Fatal(msg + "; CI=true, so this is a failure")
		}
		t.Skip(msg)
	}
	return found
}

// harness owns everything one run of the scenario starts, and stops it when
// the test ends, failed or not.
type harness struct {
	t   *testing.T
	ctx context.Context // ends at the scenario's deadline
	dir string          // configuration, data and logs of every process

	mu    sync.Mutex
	logs  []string // files whose tails are printed if the test fails
	procs []*process
	ports map[int]bool // ports handed out, so that two picks never collide
}

func newHarness(t *testing.T, budget time.Duration) *harness {
	h := &harness{t: t, dir: t.TempDir(), ports: map[int]bool{}}
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	// Cleanups run last-registered first: processes (registered later)
	// are stopped before the logs are printed and the directory removed.
	t.Cleanup(cancel)
	t.Cleanup(func() {
		if t.Failed() {
			h.printLogs(h.logs...)
		}
	})
	h.ctx = ctx
	return h
}

// deadline bounds one wait by the step's own timeout and by the scenario's.
func (h *harness) deadline(timeout time.Duration) time.Time {
	d := time.Now().Add(timeout)
	if hd, ok := h.ctx.Deadline(); ok && hd.Before(d) {
		return hd
	}
	return d
}

// printLogs logs the last lines of each file, for a failed test.
func (h *harness) printLogs(files ...string) {
	const lines = 40
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			h.t.Logf("----- %s: %v", f, err)
			continue
		}
		all := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(all) > lines {
			all = all[len(all)-lines:]
		}
		h.t.Logf("----- %s (last %d lines)\n%s", f, len(all), strings.Join(all, "\n"))
	}
}

// freePort returns a loopback TCP port that nobody listens on. It is chosen
// just below the kernel's ephemeral range, where port-0 listeners (every
// other test) and outgoing connections never land, so that nothing else is
// likely to take it between the check here and the moment Postfix or
// Prometheus binds it.
func (h *harness) freePort() int {
	h.t.Helper()
	low, high := 28768, 32768
	if data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(data)); len(f) == 2 {
			if ephemeral, err := strconv.Atoi(f[0]); err == nil && ephemeral > 14000 {
				low, high = ephemeral-4000, ephemeral
			}
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for range 200 {
		port := low + rand.IntN(high-low)
		if h.ports[port] {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		l.Close()
		h.ports[port] = true
		return port
	}
	h.t.Fatalf("no free loopback port in %d-%d", low, high)
	return 0
}

func (h *harness) freeAddr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(h.freePort()))
}

// process is a program started by the harness.
type process struct {
	name    string
	cmd     *exec.Cmd
	log     string
	done    chan struct{}
	waitErr error
}

// start runs a program until the test ends. Its output goes to NAME.log.
// When the test ends it gets SIGTERM, and SIGKILL if it is still running
// 5 s later (exec.Cmd's Cancel and WaitDelay).
func (h *harness) start(name, path string, args ...string) *process {
	h.t.Helper()
	logPath := filepath.Join(h.dir, name+".log")
	out, err := os.Create(logPath)
	if err != nil {
		h.t.Fatal(err)
	}
	defer out.Close() // the child has its own copy of the descriptor
	ctx, cancel := context.WithCancel(h.ctx)
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	h.t.Logf("starting %s: %s %s", name, path, strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		cancel()
		h.t.Fatalf("starting %s: %v", name, err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	h.mu.Lock()
	h.logs = append(h.logs, logPath)
	h.procs = append(h.procs, p)
	h.mu.Unlock()
	h.t.Cleanup(func() {
		cancel()
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			h.t.Errorf("%s (pid %d) did not exit within 15 s of SIGTERM and SIGKILL", name, cmd.Process.Pid)
		}
	})
	return p
}

// exited reports whether the process has ended, and how.
func (p *process) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.waitErr
	default:
		return false, nil
	}
}

// checkAlive fails the test when any process of the harness has died:
// waiting for an alert from a dead Prometheus helps nobody.
func (h *harness) checkAlive() {
	h.t.Helper()
	h.mu.Lock()
	procs := append([]*process(nil), h.procs...)
	h.mu.Unlock()
	if h.ctx.Err() != nil {
		h.t.Fatalf("the scenario ran out of its time budget (%v)", context.Cause(h.ctx))
	}
	for _, p := range procs {
		if done, err := p.exited(); done {
			h.t.Fatalf("%s exited unexpectedly: %v (its log: %s)", p.name, err, p.log)
		}
	}
}

// waitFor polls check until it reports done, fails with what it returns
// as an error, or the timeout passes. Every round also checks that no
// process has died.
func (h *harness) waitFor(what string, timeout time.Duration, check func() (bool, error)) {
	h.t.Helper()
	deadline := h.deadline(timeout)
	var last error
	for {
		h.checkAlive()
		done, err := check()
		if done {
			return
		}
		if err != nil {
			var v violation
			if errors.As(err, &v) {
				h.t.Fatalf("while waiting for %s: %v", what, err)
			}
			last = err
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%s: not within %s (last error: %v)", what, timeout, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// violation is an error of a check that must stop the test at once rather
// than be retried: an alert that must not fire has fired.
type violation struct{ msg string }

func (v violation) Error() string { return v.msg }

func violationf(format string, args ...any) error {
	return violation{fmt.Sprintf(format, args...)}
}

// httpGetOK returns the body of a GET that must answer 200.
func (h *harness) httpGetOK(rawURL string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(h.ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return body, fmt.Errorf("GET %s: %s: %s", rawURL, resp.Status, bytes.TrimSpace(body))
	}
	return body, nil
}

// waitReady waits until GET url answers 200 (Prometheus' and
// Alertmanager's /-/ready, the exporter's /-/healthy).
func (h *harness) waitReady(name, rawURL string) {
	h.t.Helper()
	start := time.Now()
	h.waitFor(name+" ready", 30*time.Second, func() (bool, error) {
		_, err := h.httpGetOK(rawURL)
		return err == nil, err
	})
	h.t.Logf("%s ready after %v", name, time.Since(start).Round(time.Millisecond))
}

// repoRoot is the repository root, two levels above this package.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repository root not found at %s: %v", root, err)
	}
	return root
}

// buildExporter builds the smtp_exporter binary from the working tree, a
// race-detector build when the test runs with -race. A cold build can take
// a while on a busy machine, so it has its own bound, outside the
// scenario's.
func buildExporter(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "smtp_exporter")
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, "go", append(args, ".")...)
	cmd.Dir = repoRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	t.Logf("built smtp_exporter in %v", time.Since(start).Round(time.Millisecond))
	return bin
}

// lab is a private instance of test/lab: its own directory and ports, so
// that stopping its Postfix leaves the developer's and CI's labs alone.
type lab struct {
	dir            string
	vars           map[string]string // the env file start.sh wrote
	submissionPort int
	postfixPID     int
}

// startLab runs test/lab/start.sh in a new directory on free ports and
// stops the lab with stop.sh when the test ends.
func (h *harness) startLab() *lab {
	h.t.Helper()
	root := repoRoot(h.t)
	// Postfix and Dovecot drop root and must reach their sockets under
	// the lab directory, so it cannot live in t.TempDir(), whose parent is
	// private to root. start.sh recreates the (empty) directory 0755.
	dir, err := os.MkdirTemp("", "smtp-exporter-e2e-lab.")
	if err != nil {
		h.t.Fatal(err)
	}
	ports := map[string]int{
		"LAB_PORT_PLAIN":      h.freePort(),
		"LAB_PORT_SUBMISSION": h.freePort(),
		"LAB_PORT_IMPLICIT":   h.freePort(),
		"LAB_PORT_EXPIRED":    h.freePort(),
		"LAB_PORT_IMAP":       h.freePort(),
		"LAB_PORT_IMAPS":      h.freePort(),
	}
	// A developer's exported lab settings (a fixed password, the
	// production auth penalty) must not change this lab.
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LAB_") {
			env = append(env, kv)
		}
	}
	for k, v := range ports {
		env = append(env, fmt.Sprintf("%s=%d", k, v))
	}

	logPath := filepath.Join(h.dir, "lab-start.log")
	out, err := os.Create(logPath)
	if err != nil {
		h.t.Fatal(err)
	}
	h.mu.Lock()
	h.logs = append(h.logs, logPath)
	h.mu.Unlock()
	l := &lab{dir: dir}
	// Registered before the start so that a half-started lab is stopped too.
	h.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		stop := exec.CommandContext(ctx, "bash", filepath.Join(root, "test/lab/stop.sh"), dir)
		if stopOut, err := stop.CombinedOutput(); err != nil {
			h.t.Errorf("test/lab/stop.sh %s: %v\n%s", dir, err, stopOut)
		}
		if h.t.Failed() {
			h.printLogs(filepath.Join(dir, "log/postfix.log"), filepath.Join(dir, "log/dovecot.log"))
		}
		if err := os.RemoveAll(dir); err != nil {
			h.t.Errorf("removing the lab directory: %v", err)
		}
	})

	start := time.Now()
	cmd := exec.CommandContext(h.ctx, "bash", filepath.Join(root, "test/lab/start.sh"), dir)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = out, out
	err = cmd.Run()
	out.Close()
	if err != nil {
		h.t.Fatalf("test/lab/start.sh %s: %v (output in %s)", dir, err, logPath)
	}
	h.t.Logf("private lab in %s ready in %v, ports %v", dir, time.Since(start).Round(time.Millisecond), ports)

	l.vars, err = readEnvFile(filepath.Join(dir, "env"))
	if err != nil {
		h.t.Fatal(err)
	}
	for _, key := range []string{"LAB_CA", "LAB_USER", "LAB_PASSWORD_FILE", "LAB_PORT_SUBMISSION", "LAB_POSTFIX_PID"} {
		if l.vars[key] == "" {
			h.t.Fatalf("%s/env has no %s", dir, key)
		}
	}
	if l.submissionPort, err = strconv.Atoi(l.vars["LAB_PORT_SUBMISSION"]); err != nil {
		h.t.Fatalf("LAB_PORT_SUBMISSION: %v", err)
	}
	if l.postfixPID, err = strconv.Atoi(l.vars["LAB_POSTFIX_PID"]); err != nil {
		h.t.Fatalf("LAB_POSTFIX_PID: %v", err)
	}
	return l
}

// stopPostfix stops the lab's Postfix the way an operator would and waits
// until its master process is gone and the port refuses connections.
func (h *harness) stopPostfix(l *lab, postfix string) {
	h.t.Helper()
	cmd := exec.CommandContext(h.ctx, postfix, "-c", filepath.Join(l.dir, "postfix"), "stop")
	if out, err := cmd.CombinedOutput(); err != nil {
		h.t.Fatalf("postfix stop: %v\n%s", err, out)
	}
	h.waitFor("Postfix master to exit", 15*time.Second, func() (bool, error) {
		err := syscall.Kill(l.postfixPID, 0)
		return errors.Is(err, syscall.ESRCH), err
	})
	conn, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(l.submissionPort)), 2*time.Second)
	if err == nil {
		conn.Close()
		h.t.Fatalf("port %d still accepts connections after postfix stop", l.submissionPort)
	}
}

// readEnvFile parses the KEY='value' lines start.sh writes.
func readEnvFile(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	vars := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, value, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if !ok {
			continue
		}
		vars[key] = strings.TrimSuffix(strings.TrimPrefix(value, "'"), "'")
	}
	return vars, sc.Err()
}

// writeFileAtomic replaces a file in one step, so that a probe reading the
// password file sees the old or the new password, never an empty file
// (which would be a different failure: credentials_unavailable in setup).
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".new"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// probeSucceeds runs one probe through the exporter's /probe directly and
// reports whether it succeeded, with the exposition for the error.
func (h *harness) probeSucceeds(exporterURL, module, target string) (bool, error) {
	q := url.Values{"module": {module}, "target": {target}}
	body, err := h.httpGetOK(exporterURL + "/probe?" + q.Encode())
	if err != nil {
		return false, err
	}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "probe_success 1" {
			return true, nil
		}
	}
	return false, fmt.Errorf("probe failed:\n%s", body)
}

// webhook is the receiver Alertmanager notifies: it keeps every alert of
// every notification, with the receiver (the URL path) it was sent to.
type webhook struct {
	server *httptest.Server
	mu     sync.Mutex
	alerts []receivedAlert
	errs   []string
}

// receivedAlert is one alert of a notification, as Alertmanager's webhook
// (payload version 4) sends it.
type receivedAlert struct {
	Receiver    string            `json:"-"`
	At          time.Time         `json:"-"`
	Status      string            `json:"status"` // firing or resolved
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	StartsAt    time.Time         `json:"startsAt"`
	EndsAt      time.Time         `json:"endsAt"`
}

func (a receivedAlert) String() string {
	return fmt.Sprintf("%s %s to %s at %s, labels %v", a.Status, a.Labels["alertname"], a.Receiver, a.At.Format("15:04:05.000"), a.Labels)
}

// startWebhook serves the webhook on 127.0.0.1 until the test ends; it is
// closed after Alertmanager, which is started (and so stopped) later.
func (h *harness) startWebhook() *webhook {
	w := &webhook{}
	w.server = httptest.NewServer(http.HandlerFunc(w.serve))
	if host, _, _ := net.SplitHostPort(w.server.Listener.Addr().String()); host != "127.0.0.1" {
		w.server.Close()
		h.t.Fatalf("webhook listens on %s, want 127.0.0.1", w.server.Listener.Addr())
	}
	h.t.Cleanup(func() {
		w.server.Close()
		w.mu.Lock()
		defer w.mu.Unlock()
		for _, e := range w.errs {
			h.t.Errorf("webhook: %s", e)
		}
		if h.t.Failed() {
			for _, a := range w.alerts {
				h.t.Logf("webhook received: %s", a)
			}
		}
	})
	return w
}

func (w *webhook) serve(rw http.ResponseWriter, r *http.Request) {
	var payload struct {
		Version string          `json:"version"`
		Status  string          `json:"status"`
		Alerts  []receivedAlert `json:"alerts"`
	}
	err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&payload)
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil || r.Method != http.MethodPost || payload.Version != "4" {
		w.errs = append(w.errs, fmt.Sprintf("%s %s: bad notification (version %q): %v", r.Method, r.URL.Path, payload.Version, err))
		http.Error(rw, "bad notification", http.StatusBadRequest)
		return
	}
	now := time.Now()
	for _, a := range payload.Alerts {
		a.Receiver = strings.TrimPrefix(r.URL.Path, "/")
		a.At = now
		w.alerts = append(w.alerts, a)
	}
}

// received returns the alerts received since a moment.
func (w *webhook) received(since time.Time) []receivedAlert {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []receivedAlert
	for _, a := range w.alerts {
		if !a.At.Before(since) {
			out = append(out, a)
		}
	}
	return out
}

// prometheusAPI reads the HTTP API of the Prometheus under test.
type prometheusAPI struct {
	h   *harness
	url string
}

// promAlert is an active (pending or firing) alert from /api/v1/alerts.
type promAlert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	State       string            `json:"state"`
	Value       string            `json:"value"`
}

func (a promAlert) String() string {
	return fmt.Sprintf("%s %s (value %s) %v", a.State, a.Labels["alertname"], a.Value, a.Labels)
}

// promRule is an alerting rule from /api/v1/rules.
type promRule struct {
	Name           string    `json:"name"`
	Duration       float64   `json:"duration"` // the for:, in seconds
	Health         string    `json:"health"`
	LastError      string    `json:"lastError"`
	LastEvaluation time.Time `json:"lastEvaluation"`
}

func (p prometheusAPI) get(path string, query url.Values, data any) error {
	body, err := p.h.httpGetOK(p.url + path + "?" + query.Encode())
	if err != nil {
		return err
	}
	var envelope struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &envelope); err != nil {
		return fmt.Errorf("%s: %v", path, err)
	}
	if envelope.Status != "success" {
		return fmt.Errorf("%s: %s", path, envelope.Error)
	}
	return json.Unmarshal(envelope.Data, data)
}

func (p prometheusAPI) alerts() ([]promAlert, error) {
	var data struct {
		Alerts []promAlert `json:"alerts"`
	}
	err := p.get("/api/v1/alerts", nil, &data)
	return data.Alerts, err
}

func (p prometheusAPI) rules() ([]promRule, error) {
	var data struct {
		Groups []struct {
			Rules []promRule `json:"rules"`
		} `json:"groups"`
	}
	if err := p.get("/api/v1/rules", url.Values{"type": {"alert"}}, &data); err != nil {
		return nil, err
	}
	var rules []promRule
	for _, g := range data.Groups {
		rules = append(rules, g.Rules...)
	}
	return rules, nil
}

// queryHasResult reports whether an instant query returns any series.
func (p prometheusAPI) queryHasResult(query string) (bool, error) {
	var data struct {
		Result []json.RawMessage `json:"result"`
	}
	if err := p.get("/api/v1/query", url.Values{"query": {query}}, &data); err != nil {
		return false, err
	}
	return len(data.Result) > 0, nil
}
