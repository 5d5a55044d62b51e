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
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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

	// The IMAP side (Dovecot). A lab started before it existed has none of
	// these; requireIMAP says so.
	PortIMAP           int    // IMAP offering STARTTLS
	PortIMAPS          int    // IMAP over implicit TLS
	CanaryPassword     string // the canary's IMAP (and SASL) password
	CanaryPasswordFile string
	MaildirJunk        string // the canary's Junk folder (Maildir++ .Junk)
	JunkHeader         string // header line the lab's Sieve script files into Junk
	Discard            string // recipient Postfix accepts and discards
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
	// workDir is a directory for the whole run (the binary, the shared
	// exporter's files); removed when the tests end.
	workDir string
)

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

// defaultParallel is how many tests run at once unless -parallel says
// otherwise. The tests mostly wait: on Dovecot, which answers a wrong
// password only at its next 0.5 s tick, and on Postfix's delivery. The
// default of GOMAXPROCS would queue those waits behind each other.
const defaultParallel = 8

func runTests(m *testing.M) int {
	flag.Parse()
	parallelGiven := false
	flag.Visit(func(f *flag.Flag) { parallelGiven = parallelGiven || f.Name == "test.parallel" })
	if !parallelGiven {
		if err := flag.Set("test.parallel", strconv.Itoa(defaultParallel)); err != nil {
			fmt.Fprintln(os.Stderr, "integration:", err)
			return 1
		}
	}
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
		workDir = dir
		exporterBinary, buildErr = buildExporter(dir)
	}
	code := m.Run()
	if err := stopSharedExporter(); err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		code = 1
	}
	return code
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
	// Optional: only the IMAP tests need them.
	opt := func(key string) string { return vars[key] }
	optNum := func(key string) int {
		n, err := strconv.Atoi(vars[key])
		if err != nil && vars[key] != "" {
			bad = append(bad, key)
		}
		return n
	}
	l.PortIMAP = optNum("LAB_PORT_IMAP")
	l.PortIMAPS = optNum("LAB_PORT_IMAPS")
	l.CanaryPassword = opt("LAB_CANARY_PASSWORD")
	l.CanaryPasswordFile = opt("LAB_CANARY_PASSWORD_FILE")
	l.MaildirJunk = opt("LAB_MAILDIR_JUNK")
	l.JunkHeader = opt("LAB_JUNK_HEADER")
	l.Discard = opt("LAB_DISCARD")
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
	exited     chan error // receives the result of cmd.Wait
	output     *outputLog
	// shared is set for the exporter all tests share: its log covers
	// every test, so a failing test shows only its own modules' lines.
	shared bool
}

// startExporter writes configYAML to a file and runs the exporter on a free
// loopback port until the test ends. Its log is shown if the test fails.
func startExporter(t *testing.T, configYAML string, extraArgs ...string) *Exporter {
	t.Helper()
	requireLab(t)
	e, err := launchExporter(t.TempDir(), configYAML, extraArgs...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.stop(); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("smtp_exporter output:\n%s", scrubLabPassword(e.output.String()))
		}
	})
	return e
}

// launchExporter writes configYAML into dir and starts the exporter on a
// free loopback port, returning once it answers /-/healthy. The caller
// stops it with stop.
func launchExporter(dir, configYAML string, extraArgs ...string) (*Exporter, error) {
	configFile := filepath.Join(dir, "smtp_exporter.yml")
	if err := os.WriteFile(configFile, []byte(configYAML), 0o600); err != nil {
		return nil, err
	}
	addr, err := freeLoopbackAddr()
	if err != nil {
		return nil, err
	}
	args := append([]string{
		"--config.file=" + configFile,
		"--web.listen-address=" + addr,
		"--log.level=debug",
	}, extraArgs...)
	e := &Exporter{URL: "http://" + addr, ConfigFile: configFile, output: newOutputLog(), exited: make(chan error, 1)}
	e.cmd = exec.Command(exporterBinary, args...)
	e.cmd.Stdout = e.output.pipe()
	e.cmd.Stderr = e.output.pipe()
	if err := e.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting smtp_exporter: %w", err)
	}
	go func() { e.exited <- e.cmd.Wait() }()
	if err := e.waitHealthy(); err != nil {
		_ = e.stop() // already failed; its output is in err
		return nil, err
	}
	return e, nil
}

// freeLoopbackAddr returns a 127.0.0.1 address with a port free a moment
// ago. Another process could take it before the exporter binds it; the
// exporter then fails to start and the test says so.
func freeLoopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func (e *Exporter) waitHealthy() error {
	deadline := time.Now().Add(10 * time.Second)
	client := &http.Client{Timeout: time.Second}
	for {
		resp, err := client.Get(e.URL + "/-/healthy")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		select {
		case werr := <-e.exited:
			e.exited <- werr // for stop
			return fmt.Errorf("smtp_exporter exited before it was healthy (%v):\n%s", werr, e.output.String())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("smtp_exporter not healthy after 10s: %v\n%s", err, e.output.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop ends the exporter with SIGTERM, then SIGKILL if it hangs, and
// reports a hang or a data race found by the race detector.
func (e *Exporter) stop() error {
	var errs []error
	if err := e.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		errs = append(errs, fmt.Errorf("signalling smtp_exporter: %w", err))
	}
	select {
	case <-e.exited:
	case <-time.After(10 * time.Second):
		errs = append(errs, errors.New("smtp_exporter did not stop within 10s of SIGTERM; killed it"))
		_ = e.cmd.Process.Kill()
		<-e.exited
	}
	if strings.Contains(e.output.String(), "WARNING: DATA RACE") {
		errs = append(errs, errors.New("the race detector reported a data race in smtp_exporter"))
	}
	return errors.Join(errs...)
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
	e.logModuleOnFailure(t, module)
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
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("GET /probe?%s answered %d:\n%s", q.Encode(), r.Status, scrubLabPassword(r.Body))
		}
	})
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

// maildirFiles returns the messages in a Maildir's new/ and cur/, as paths
// relative to the Maildir ("new/NAME", "cur/NAME:2,"). Dovecot delivers into
// new/ and moves a message to cur/ once an IMAP session has seen it, so a
// message may be found under either name.
func maildirFiles(t *testing.T, maildir string) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	for _, sub := range []string{"new", "cur"} {
		entries, err := os.ReadDir(filepath.Join(maildir, sub))
		if err != nil {
			t.Fatalf("reading Maildir: %v", err)
		}
		for _, e := range entries {
			names[sub+"/"+e.Name()] = true
		}
	}
	return names
}

// outputLog collects the exporter's output from its two pipes at once and
// files each complete line that names a module under it, so that tests
// polling for their module's lines do not rescan the whole log.
type outputLog struct {
	mu       sync.Mutex
	buf      bytes.Buffer
	byModule map[string][]string
}

func newOutputLog() *outputLog {
	return &outputLog{byModule: map[string][]string{}}
}

// pipe returns a writer for one of the process's outputs; each keeps its
// own unfinished line.
func (o *outputLog) pipe() io.Writer {
	return &pipeWriter{log: o}
}

type pipeWriter struct {
	log     *outputLog
	partial []byte
}

func (w *pipeWriter) Write(p []byte) (int, error) {
	o := w.log
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf.Write(p)
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		line := string(w.partial[:i])
		w.partial = w.partial[i+1:]
		if module, ok := logAttr(line, "module"); ok {
			o.byModule[module] = append(o.byModule[module], line)
		}
	}
	return len(p), nil
}

func (o *outputLog) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// moduleLines returns the complete lines logged so far with module=NAME.
func (o *outputLog) moduleLines(module string) []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.byModule[module])
}
