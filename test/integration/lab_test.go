// Package integration runs the real smtp_exporter binary against the real
// Postfix + Dovecot of test/lab. The lab is started outside the tests:
//
//	bash test/lab/install.sh && bash test/lab/start.sh
//	SMTP_EXPORTER_LAB=/tmp/smtp-exporter-lab/env go test -race ./test/...
//
// Without SMTP_EXPORTER_LAB the tests skip, except in CI (CI=true), where a
// missing lab is a failure: a green CI run must mean the tests ran.
package integration

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
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

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// labEnvVar names the variable that points at the env file of start.sh.
const labEnvVar = "SMTP_EXPORTER_LAB"

// Lab describes the running lab, as written by test/lab/start.sh.
type Lab struct {
	Dir            string
	Host           string // the address every service listens on
	Hostname       string // Postfix's myhostname
	Banner         string // the greeting text after "220 "
	PortPlain      int    // SMTP in clear, AUTH offered without TLS
	PortSubmission int    // STARTTLS required before AUTH
	PortImplicit   int    // implicit TLS, valid certificate
	PortExpired    int    // implicit TLS, certificate expired on 2020-02-01
	CA             string // PEM file of the CA that signed both server certificates
	Cert           string // PEM file of the valid server certificate
	ExpiredCert    string // PEM file of the expired server certificate
	Domain         string
	User           string
	Password       string
	PasswordFile   string
	Canary         string // canary mailbox address
	Maildir        string // the canary's Maildir
	ProbeMaildir   string // User's Maildir
	SizeLimit      int64  // Postfix message_size_limit, announced as SIZE
	PostfixLog     string
	DovecotLog     string
}

// Target returns the host:port a probe of the given lab port should name.
func (l *Lab) Target(port int) string {
	return net.JoinHostPort(l.Host, strconv.Itoa(port))
}

var (
	// lab is the lab in use, nil when none is configured.
	lab *Lab
	// labErr says why lab is nil, or why the lab cannot be used.
	labErr error
	// exporterBinary is the smtp_exporter built once by TestMain.
	exporterBinary string
	// buildErr is why exporterBinary could not be built.
	buildErr error
)

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	lab, labErr = loadLab()
	if labErr != nil && os.Getenv("CI") == "true" {
		fmt.Fprintf(os.Stderr, "integration: the lab is required in CI: %v\n", labErr)
		return 1
	}
	if lab != nil {
		dir, err := os.MkdirTemp("", "smtp_exporter-integration-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "integration:", err)
			return 1
		}
		defer os.RemoveAll(dir)
		exporterBinary, buildErr = buildExporter(dir)
	}
	return m.Run()
}

// requireLab skips the test when no lab is configured (outside CI) and
// fails it when the exporter could not be built.
func requireLab(t *testing.T) *Lab {
	t.Helper()
	if lab == nil {
		// TestMain has already refused to run without a lab in CI.
		t.Skipf("no SMTP lab (%v); start one with `bash test/lab/start.sh` (as root) and set %s=/tmp/smtp-exporter-lab/env", labErr, labEnvVar)
	}
	if buildErr != nil {
		t.Fatalf("building smtp_exporter: %v", buildErr)
	}
	return lab
}

// loadLab reads the env file named by SMTP_EXPORTER_LAB and checks that the
// lab answers.
func loadLab() (*Lab, error) {
	path := os.Getenv(labEnvVar)
	if path == "" {
		return nil, fmt.Errorf("%s is not set", labEnvVar)
	}
	vars, err := readEnvFile(path)
	if err != nil {
		return nil, err
	}
	l, err := labFromVars(vars)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	// An env file outlives its lab: say so instead of failing every test
	// with "connection refused".
	conn, err := net.DialTimeout("tcp", l.Target(l.PortPlain), 2*time.Second)
	if err != nil {
		return nil, fmt.Errorf("%s: lab not answering (%v); was it stopped?", path, err)
	}
	conn.Close()
	return l, nil
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
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, value, ok := strings.Cut(strings.TrimPrefix(line, "export "), "=")
		if !ok {
			return nil, fmt.Errorf("%s:%d: not KEY=value", path, n)
		}
		if len(value) >= 2 && value[0] == '\'' && value[len(value)-1] == '\'' {
			value = value[1 : len(value)-1]
		}
		vars[key] = value
	}
	return vars, sc.Err()
}

func labFromVars(vars map[string]string) (*Lab, error) {
	var missing []string
	str := func(key string) string {
		v, ok := vars[key]
		if !ok || v == "" {
			missing = append(missing, key)
		}
		return v
	}
	var bad []string
	num := func(key string) int64 {
		s := str(key)
		if s == "" {
			return 0
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			bad = append(bad, key)
		}
		return n
	}
	l := &Lab{
		Dir:            str("LAB_DIR"),
		Host:           str("LAB_HOST"),
		Hostname:       str("LAB_HOSTNAME"),
		Banner:         str("LAB_BANNER"),
		PortPlain:      int(num("LAB_PORT_PLAIN")),
		PortSubmission: int(num("LAB_PORT_SUBMISSION")),
		PortImplicit:   int(num("LAB_PORT_IMPLICIT")),
		PortExpired:    int(num("LAB_PORT_EXPIRED")),
		CA:             str("LAB_CA"),
		Cert:           str("LAB_CERT"),
		ExpiredCert:    str("LAB_EXPIRED_CERT"),
		Domain:         str("LAB_DOMAIN"),
		User:           str("LAB_USER"),
		Password:       str("LAB_PASSWORD"),
		PasswordFile:   str("LAB_PASSWORD_FILE"),
		Canary:         str("LAB_CANARY"),
		Maildir:        str("LAB_MAILDIR"),
		ProbeMaildir:   str("LAB_PROBE_MAILDIR"),
		SizeLimit:      num("LAB_SIZE_LIMIT"),
		PostfixLog:     str("LAB_POSTFIX_LOG"),
		DovecotLog:     str("LAB_DOVECOT_LOG"),
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("missing %s", strings.Join(missing, ", "))
	}
	if len(bad) > 0 {
		return nil, fmt.Errorf("not a number: %s", strings.Join(bad, ", "))
	}
	return l, nil
}

// buildExporter builds the exporter from the repository root into dir.
func buildExporter(dir string) (string, error) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		return "", fmt.Errorf("repository root not found at %s: %w", root, err)
	}
	bin := filepath.Join(dir, "smtp_exporter")
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, ".")...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
}

// LabConfig returns a configuration whose modules cover the lab's services,
// for tests that need nothing special. Module names:
//
//	banner           plain port, no TLS, no AUTH
//	plain_auth       plain port, AUTH in clear (allow_plaintext_auth)
//	submission       STARTTLS then AUTH (mechanism auto)
//	submission_plain, submission_login, submission_cram_md5
//	                 the same with one mechanism
//	implicit         implicit TLS then AUTH
//	expired          implicit TLS on the port with the expired certificate
//	wrong_password   submission with a password the lab refuses
//	canary           submission, then a message to the canary mailbox
func (l *Lab) LabConfig() string {
	var b strings.Builder
	b.WriteString("modules:\n")
	tlsConfig := fmt.Sprintf("      tls_config:\n        ca_file: %s\n", quote(l.CA))
	allowed := fmt.Sprintf("      allowed_targets: [%s, %s]\n", quote(l.Host), quote("localhost"))
	auth := func(mechanism string) string {
		return fmt.Sprintf("      auth:\n        mechanism: %s\n        username: %s\n        password_file: %s\n",
			quote(mechanism), quote(l.User), quote(l.PasswordFile))
	}
	module := func(name, tls string, port int, body ...string) {
		fmt.Fprintf(&b, "  %s:\n    timeout: 10s\n    smtp:\n      tls: %s\n      port: %d\n", quote(name), tls, port)
		for _, s := range body {
			b.WriteString(s)
		}
	}
	module("banner", "none", l.PortPlain)
	module("plain_auth", "none", l.PortPlain, auth("auto"), "      allow_plaintext_auth: true\n", allowed)
	module("submission", "starttls", l.PortSubmission, tlsConfig, auth("auto"), allowed)
	for _, mech := range []string{"PLAIN", "LOGIN", "CRAM-MD5"} {
		name := "submission_" + strings.ReplaceAll(strings.ToLower(mech), "-", "_")
		module(name, "starttls", l.PortSubmission, tlsConfig, auth(mech), allowed)
	}
	module("implicit", "implicit", l.PortImplicit, tlsConfig, auth("auto"), allowed)
	module("expired", "implicit", l.PortExpired, tlsConfig, auth("auto"), allowed)
	module("wrong_password", "starttls", l.PortSubmission, tlsConfig,
		fmt.Sprintf("      auth:\n        username: %s\n        password: %s\n", quote(l.User), quote("not-"+l.Password)),
		allowed)
	module("canary", "starttls", l.PortSubmission, tlsConfig, auth("auto"), allowed,
		fmt.Sprintf("      mail:\n        from: %s\n        to: [%s]\n        data: true\n", quote(l.User), quote(l.Canary)))
	return b.String()
}

// quote makes s a YAML double-quoted scalar.
func quote(s string) string {
	return strconv.Quote(s)
}

// Exporter is a running smtp_exporter process.
type Exporter struct {
	URL        string // http://127.0.0.1:port
	ConfigFile string
	cmd        *exec.Cmd
	output     *syncBuffer
}

// startExporter writes configYAML to a file and runs the exporter on a free
// loopback port until the test ends. Its log is shown if the test fails.
func startExporter(t *testing.T, configYAML string, extraArgs ...string) *Exporter {
	t.Helper()
	requireLab(t)
	configFile := filepath.Join(t.TempDir(), "smtp_exporter.yml")
	if err := os.WriteFile(configFile, []byte(configYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeLoopbackAddr(t)
	args := append([]string{
		"--config.file=" + configFile,
		"--web.listen-address=" + addr,
		"--log.level=debug",
	}, extraArgs...)
	e := &Exporter{URL: "http://" + addr, ConfigFile: configFile, output: &syncBuffer{}}
	e.cmd = exec.Command(exporterBinary, args...)
	e.cmd.Stdout = e.output
	e.cmd.Stderr = e.output
	if err := e.cmd.Start(); err != nil {
		t.Fatalf("starting smtp_exporter: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- e.cmd.Wait() }()
	t.Cleanup(func() {
		stopProcess(t, e.cmd, exited)
		if strings.Contains(e.output.String(), "WARNING: DATA RACE") {
			t.Error("the race detector reported a data race in smtp_exporter")
		}
		if t.Failed() {
			t.Logf("smtp_exporter output:\n%s", e.output.String())
		}
	})
	e.waitHealthy(t, exited)
	return e
}

// freeLoopbackAddr returns a 127.0.0.1 address with a port free a moment
// ago. Another process could take it before the exporter binds it; the
// exporter then fails to start and the test says so.
func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func (e *Exporter) waitHealthy(t *testing.T, exited <-chan error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	client := &http.Client{Timeout: time.Second}
	for {
		resp, err := client.Get(e.URL + "/-/healthy")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		select {
		case werr := <-exited:
			t.Fatalf("smtp_exporter exited before it was healthy (%v):\n%s", werr, e.output.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("smtp_exporter not healthy after 10s: %v\n%s", err, e.output.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stopProcess ends the exporter with SIGTERM, then SIGKILL if it hangs.
func stopProcess(t *testing.T, cmd *exec.Cmd, exited <-chan error) {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("signalling smtp_exporter: %v", err)
	}
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Error("smtp_exporter did not stop within 10s of SIGTERM; killing it")
		_ = cmd.Process.Kill()
		<-exited
	}
}

// Output returns what the exporter has logged so far.
func (e *Exporter) Output() string {
	return e.output.String()
}

// Reload asks the exporter to reload its configuration file.
func (e *Exporter) Reload(t *testing.T) (int, string) {
	t.Helper()
	resp, err := http.Post(e.URL+"/-/reload", "", nil)
	if err != nil {
		t.Fatalf("POST /-/reload: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("POST /-/reload: reading body: %v", err)
	}
	return resp.StatusCode, string(body)
}

// ProbeResponse is one /probe answer.
type ProbeResponse struct {
	Status   int
	Body     string
	Families map[string]*dto.MetricFamily // nil unless the body is metrics
	Elapsed  time.Duration
}

// probeRaw calls /probe with the given module and target and returns the
// answer whatever its status.
func (e *Exporter) probeRaw(t *testing.T, module, target string, extra url.Values) ProbeResponse {
	t.Helper()
	q := url.Values{"module": {module}, "target": {target}}
	for k, v := range extra {
		q[k] = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.URL+"/probe?"+q.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET /probe?%s: %v", q.Encode(), err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET /probe?%s: reading body: %v", q.Encode(), err)
	}
	r := ProbeResponse{Status: resp.StatusCode, Body: string(body), Elapsed: time.Since(start)}
	if resp.StatusCode == http.StatusOK && extra.Get("debug") != "true" {
		parser := expfmt.NewTextParser(model.UTF8Validation)
		r.Families, err = parser.TextToMetricFamilies(bytes.NewReader(body))
		if err != nil {
			t.Fatalf("GET /probe?%s: parsing metrics: %v\n%s", q.Encode(), err, body)
		}
	}
	return r
}

// probe runs one probe that must answer 200 with metrics, and returns them.
func (e *Exporter) probe(t *testing.T, module, target string) Metrics {
	t.Helper()
	r := e.probeRaw(t, module, target, nil)
	if r.Status != http.StatusOK {
		t.Fatalf("probe %s %s: status %d, want 200:\n%s", module, target, r.Status, r.Body)
	}
	return Metrics{families: r.Families, text: r.Body}
}

// Metrics is a parsed /probe response.
type Metrics struct {
	families map[string]*dto.MetricFamily
	text     string
}

// String returns the exposition as received, for failure messages.
func (m Metrics) String() string {
	return m.text
}

// Has reports whether a series with exactly these labels exists.
func (m Metrics) Has(name string, labels map[string]string) bool {
	_, ok := m.Value(name, labels)
	return ok
}

// Value returns the value of the series of name whose labels are exactly
// labels (nil for none).
func (m Metrics) Value(name string, labels map[string]string) (float64, bool) {
	mf, ok := m.families[name]
	if !ok {
		return 0, false
	}
	for _, metric := range mf.GetMetric() {
		if !labelsEqual(metric.GetLabel(), labels) {
			continue
		}
		switch {
		case metric.Gauge != nil:
			return metric.GetGauge().GetValue(), true
		case metric.Counter != nil:
			return metric.GetCounter().GetValue(), true
		case metric.Untyped != nil:
			return metric.GetUntyped().GetValue(), true
		}
	}
	return 0, false
}

// Labels returns the label sets of every series of name, to check a closed
// set of values (phases, extensions, mechanisms).
func (m Metrics) Labels(name string) []map[string]string {
	mf, ok := m.families[name]
	if !ok {
		return nil
	}
	var all []map[string]string
	for _, metric := range mf.GetMetric() {
		labels := map[string]string{}
		for _, lp := range metric.GetLabel() {
			labels[lp.GetName()] = lp.GetValue()
		}
		all = append(all, labels)
	}
	return all
}

// MustValue is Value for a series the test requires.
func (m Metrics) MustValue(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	v, ok := m.Value(name, labels)
	if !ok {
		t.Fatalf("no series %s%v in:\n%s", name, labels, m.text)
	}
	return v
}

func labelsEqual(got []*dto.LabelPair, want map[string]string) bool {
	if len(got) != len(want) {
		return false
	}
	for _, lp := range got {
		if v, ok := want[lp.GetName()]; !ok || v != lp.GetValue() {
			return false
		}
	}
	return true
}

// maildirFiles returns the names of the messages in a Maildir's new/.
func maildirFiles(t *testing.T, maildir string) map[string]bool {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(maildir, "new"))
	if err != nil {
		t.Fatalf("reading Maildir: %v", err)
	}
	names := map[string]bool{}
	for _, e := range entries {
		names[e.Name()] = true
	}
	return names
}

// waitForNewMessage waits until a message that was not in before appears in
// the Maildir's new/ and contains want, and returns its content. Delivery
// is asynchronous: the 250 after DATA only means queued.
func waitForNewMessage(t *testing.T, maildir string, before map[string]bool, want string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for name := range maildirFiles(t, maildir) {
			if before[name] {
				continue
			}
			data, err := os.ReadFile(filepath.Join(maildir, "new", name))
			if err != nil {
				t.Fatalf("reading delivered message: %v", err)
			}
			if strings.Contains(string(data), want) {
				return string(data)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new message containing %q in %s after %s", want, maildir, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// syncBuffer collects the exporter's output from two pipes at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
