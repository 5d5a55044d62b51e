package e2e

import (
	"crypto/md5"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

const (
	// replicasInterval is the scrape interval (and timeout) of both
	// Prometheus servers, replicasMinInterval the min_interval of every
	// module: just below it, as in the shipped smtp_exporter.yml.
	replicasInterval    = 2 * time.Second
	replicasMinInterval = 1500 * time.Millisecond
	// replicasScrapes is how many scrapes of every target each Prometheus
	// server makes while logins are counted: at least three intervals.
	replicasScrapes = 4
	// replicasBudget bounds the scenario from the first process started
	// (it takes about 20 s).
	replicasBudget = 90 * time.Second
	replicasStep   = 30 * time.Second
)

// replicasAccount is one account of the scenario: the server knows its
// password; the exporter's modules log in with password.
type replicasAccount struct {
	label    string // the account label of its targets in Prometheus
	username string
	password string // what the exporter sends
	modules  map[string]string
}

// TestOneLoginPerAccountAcrossReplicas runs the deployment the examples
// describe, shrunk to loopback: two smtp_exporter processes (the replicas)
// and two Prometheus servers (an HA pair with one configuration, scraping at
// offsets of their own), whose probe jobs carry the relabelling of
// examples/prometheus/prometheus.yml with only the replicas' addresses
// substituted. The SMTP server counts every AUTH:
//
//   - an account with the right password, probed through one module and two
//     spellings of the server's address by both Prometheus servers, logs in
//     at most once per min_interval, and still at least once every few
//     intervals (results are reused per module and address, so an account
//     in several modules logs in once per module and interval);
//   - an account with a wrong password and auth_failure_backoff 1h, probed
//     through two modules (PLAIN and LOGIN) and both spellings: exactly one
//     refused AUTH over the whole run, while every scrape reports the
//     failure.
//
// The relabelling must route every target of an account to one replica, the
// same one from both Prometheus servers; the test checks that in their
// targets, and that the two accounts land on different replicas.
func TestOneLoginPerAccountAcrossReplicas(t *testing.T) {
	promBin := requirePrometheus(t)
	exporterBin := buildExporter(t)
	began := time.Now()
	h := newHarness(t, replicasBudget)

	good := replicasAccount{label: "good", username: "good@example.net", password: "right-password",
		modules: map[string]string{"good_plain": "PLAIN"}}
	wrong := replicasAccount{username: "wrong@example.net", password: "wrong-password",
		modules: map[string]string{"wrong_plain": "PLAIN", "wrong_login": "LOGIN"}}
	// Put the two accounts on different replicas, so that both run.
	for i := 0; wrong.label == ""; i++ {
		if label := fmt.Sprintf("wrong-%d", i); hashmod(label, 2) != hashmod(good.label, 2) {
			wrong.label = label
		}
	}
	accounts := []replicasAccount{good, wrong}
	srv := newLoginServer(t, map[string]string{good.username: good.password, wrong.username: "the-real-password"})
	targets := []string{
		net.JoinHostPort("127.0.0.1", strconv.Itoa(srv.server.Port())),
		net.JoinHostPort("localhost", strconv.Itoa(srv.server.Port())),
	}

	exporters := []string{h.freeAddr(), h.freeAddr()}
	configFile := writeConfig(t, h.dir, "smtp_exporter.yml", replicasExporterConfig(accounts))
	for i, addr := range exporters {
		name := fmt.Sprintf("smtp_exporter-%d", i)
		logFile := filepath.Join(h.dir, name+".log")
		t.Cleanup(func() {
			if data, _ := os.ReadFile(logFile); strings.Contains(string(data), "WARNING: DATA RACE") {
				t.Errorf("the race detector reported a data race in %s (see its log)", name)
			}
		})
		h.start(name, exporterBin, "--config.file="+configFile, "--web.listen-address="+addr, "--log.level=debug")
	}
	for i, addr := range exporters {
		h.waitReady(fmt.Sprintf("smtp_exporter-%d", i), "http://"+addr+"/-/healthy")
	}

	var apis []prometheusAPI
	for _, replica := range []string{"a", "b"} {
		addr := h.freeAddr()
		cfg := writeConfig(t, h.dir, fmt.Sprintf("prometheus-%s.yml", replica), replicasPrometheusConfig(t, replica, exporters, accounts, targets))
		name := "prometheus-" + replica
		h.start(name, promBin,
			"--config.file="+cfg,
			"--storage.tsdb.path="+filepath.Join(h.dir, name+"-data"),
			"--web.listen-address="+addr,
		)
		h.waitReady(name, "http://"+addr+"/-/ready")
		apis = append(apis, prometheusAPI{h: h, url: "http://" + addr})
	}
	t.Logf("set up in %v: exporters %v, SMTP server %s", time.Since(began).Round(time.Millisecond), exporters, srv.server.Addr())

	// Every probe target is scraped successfully (the exporter answered)
	// by both Prometheus servers, at the replica of its account.
	probeTargets := len(targets) * (len(good.modules) + len(wrong.modules))
	h.waitFor("every target scraped by both Prometheus servers", replicasStep, func() (bool, error) {
		for _, api := range apis {
			if done, err := replicasTargetsUp(api, len(exporters)+probeTargets); !done {
				return false, err
			}
		}
		return true, nil
	})
	want := map[string]string{}
	for _, a := range accounts {
		want[a.label] = exporters[hashmod(a.label, len(exporters))]
	}
	for i, api := range apis {
		got, err := replicasRouting(api)
		if err != nil {
			t.Fatal(err)
		}
		for account, replicas := range got {
			if len(replicas) != 1 || replicas[0] != want[account] {
				t.Errorf("Prometheus %d scrapes the targets of account %s at %v, want all at %s", i, account, replicas, want[account])
			}
		}
	}
	if want[good.label] == want[wrong.label] {
		t.Errorf("accounts %s and %s share replica %s; the test means to run both", good.label, wrong.label, want[good.label])
	}
	if t.Failed() {
		t.FailNow()
	}

	// Count logins over at least three intervals: until each Prometheus
	// server has scraped every probe target replicasScrapes more times.
	t0 := time.Now()
	jobs := `job=~"smtp_(good|wrong)_.*"`
	since := func() string { return strconv.FormatInt(time.Since(t0).Milliseconds(), 10) + "ms" }
	h.waitFor(fmt.Sprintf("%d scrapes of every target by both Prometheus servers", replicasScrapes), replicasStep, func() (bool, error) {
		for _, api := range apis {
			n, err := api.scalar(fmt.Sprintf(`count(count_over_time(up{%s}[%s]) >= %d)`, jobs, since(), replicasScrapes))
			if err != nil || n < float64(probeTargets) {
				return false, fmt.Errorf("%s: %v targets scraped %d times (%v)", api.url, n, replicasScrapes, err)
			}
		}
		return true, nil
	})
	t1 := time.Now()
	window := t1.Sub(t0)
	logins := srv.logins()

	// What both Prometheus servers saw meanwhile: how many scrapes, and
	// that each reported what the server answered (the good account's
	// scrapes all succeed, reused results included; none of the wrong one's).
	var scrapes float64
	for _, api := range apis {
		n, err := api.scalar(fmt.Sprintf(`sum(count_over_time(up{%s}[%s]))`, jobs, since()))
		if err != nil {
			t.Fatal(err)
		}
		scrapes += n
		for _, c := range []struct{ query, what string }{
			{fmt.Sprintf(`min(min_over_time(probe_success{job=~"smtp_good_.*"}[%s]))`, since()), "1"},
			{fmt.Sprintf(`max(max_over_time(probe_success{job=~"smtp_wrong_.*"}[%s]))`, since()), "0"},
		} {
			v, err := api.scalar(c.query)
			if err != nil {
				t.Fatal(err)
			}
			if strconv.FormatFloat(v, 'f', -1, 64) != c.what {
				t.Errorf("%s: %s = %v, want %s", api.url, c.query, v, c.what)
			}
		}
	}
	t.Logf("%d probe scrapes by the two Prometheus servers in %v (%.1f scrape intervals)", int(scrapes), window.Round(time.Millisecond), window.Seconds()/replicasInterval.Seconds())

	// The right password: at most one login per module per min_interval.
	// Two logins of one module start at least min_interval apart; their AUTH
	// reaches the server after the connection, greeting and EHLO, which may
	// take up to half of it on a busy machine.
	slack := replicasMinInterval / 2
	maxLogins := int((window+slack)/replicasMinInterval) + 1
	for module, mechanism := range good.modules {
		var at []time.Time
		for _, l := range logins {
			if l.username == good.username && l.mechanism == mechanism && !l.at.Before(t0) && !l.at.After(t1) {
				at = append(at, l.at)
			}
		}
		t.Logf("module %s (%s): %d logins in %v, at most %d allowed: %s", module, mechanism, len(at), window.Round(time.Millisecond), maxLogins, offsets(at, t0))
		if len(at) > maxLogins {
			t.Errorf("module %s of account %s logged in %d times in %v, more than once per min_interval (%v) allows (%d)",
				module, good.label, len(at), window.Round(time.Millisecond), replicasMinInterval, maxLogins)
		}
		for i := 1; i < len(at); i++ {
			if gap := at[i].Sub(at[i-1]); gap < replicasMinInterval-slack {
				t.Errorf("module %s of account %s logged in twice within %v (min_interval %v)", module, good.label, gap.Round(time.Millisecond), replicasMinInterval)
			}
		}
		// min_interval just below the scrape interval lets each interval
		// log in afresh: over three or more intervals, two logins at least.
		if len(at) < 2 {
			t.Errorf("module %s of account %s logged in %d times in %v; min_interval below the scrape interval should allow one login per interval",
				module, good.label, len(at), window.Round(time.Millisecond))
		}
	}

	// The wrong password: one refused login in the whole run, whatever the
	// module and spelling, auth_failure_backoff (1h) holding the rest.
	var refused []login
	for _, l := range logins {
		if l.username == wrong.username {
			refused = append(refused, l)
		}
	}
	if len(refused) != 1 {
		t.Errorf("account %s (wrong password, auth_failure_backoff 1h): %d refused AUTH commands reached the server, want exactly 1: %v",
			wrong.label, len(refused), refused)
	}
	for _, l := range logins {
		if l.username == good.username && !l.ok {
			t.Errorf("the right password was refused: %v", l)
		}
	}

	// The exporters' own account: only the replica of an account made
	// logins for its modules (smtp_exporter_logins_total, scraped from
	// every replica by the smtp_exporter job).
	for _, a := range accounts {
		modules := strings.Join(sortedKeys(a.modules), "|")
		samples, err := apis[0].query(fmt.Sprintf(`sum by (instance) (smtp_exporter_logins_total{module=~%q}) > 0`, modules))
		if err != nil {
			t.Fatal(err)
		}
		var instances []string
		for _, s := range samples {
			instances = append(instances, s.Metric["instance"])
		}
		if len(instances) != 1 || instances[0] != want[a.label] {
			t.Errorf("account %s: smtp_exporter_logins_total counts logins of modules %s at %v, want only at its replica %s",
				a.label, modules, instances, want[a.label])
		}
	}
	if text, err := apis[0].vector(`sum by (instance, module, outcome) (smtp_exporter_logins_total) > 0`); err == nil {
		t.Logf("smtp_exporter_logins_total: %s", text)
	}
	if text, err := apis[0].vector(`sum by (instance, module, reason) (smtp_exporter_logins_held_total) > 0`); err == nil {
		t.Logf("smtp_exporter_logins_held_total: %s", text)
	}
	t.Logf("scenario done in %v", time.Since(began).Round(time.Millisecond))
}

// requirePrometheus finds Debian's prometheus. Outside CI a missing one
// skips the test; in CI (CI=true) it fails.
func requirePrometheus(t *testing.T) string {
	t.Helper()
	if path, err := exec.LookPath("prometheus"); err == nil {
		return path
	}
	msg := "prometheus not found (Debian package prometheus; bash test/install-tools.sh installs it)"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + "; CI=true, so this is a failure")
	}
	t.Skip(msg)
	return ""
}

// hashmod is Prometheus' hashmod relabel action on one value: the last 8
// bytes of its MD5, big-endian, modulo n.
func hashmod(value string, n int) int {
	sum := md5.Sum([]byte(value))
	return int(binary.BigEndian.Uint64(sum[8:]) % uint64(n))
}

// replicasExporterConfig gives each account one module per mechanism, all
// with min_interval just below the scrape interval and a one-hour
// auth_failure_backoff, on the plain-text test server.
func replicasExporterConfig(accounts []replicasAccount) []byte {
	var b strings.Builder
	b.WriteString("modules:\n")
	for _, a := range accounts {
		for _, module := range sortedKeys(a.modules) {
			fmt.Fprintf(&b, `  %s:
    timeout: 5s
    min_interval: %s
    auth_failure_backoff: 1h
    smtp:
      tls: none
      preferred_ip_protocol: ip4
      allow_plaintext_auth: true
      auth:
        mechanism: %s
        username: %q
        password: %q
      allowed_targets: ["127.0.0.1", "localhost"]
`, module, promDuration(replicasMinInterval), a.modules[module], a.username, a.password)
		}
	}
	return []byte(b.String())
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// replicasPrometheusConfig is one server of the HA pair: the shipped
// exporter job scraping every replica, and one probe job per module with
// the shipped probe relabelling, routed to the replicas (routeToExporters).
// The external label tells the two servers apart, as in a real pair; it
// also gives each its own scrape offsets.
func replicasPrometheusConfig(t *testing.T, replica string, exporters []string, accounts []replicasAccount, targets []string) []byte {
	t.Helper()
	shipped := shippedJobs(t)
	own := shipped[exporterJob]
	own["static_configs"] = []any{map[string]any{"targets": toAny(exporters)}}
	jobs := []any{own}
	relabel := routeToExporters(t, shipped[probeJob]["relabel_configs"], exporters)
	for _, a := range accounts {
		for _, module := range sortedKeys(a.modules) {
			jobs = append(jobs, map[string]any{
				"job_name":     "smtp_" + module,
				"metrics_path": shipped[probeJob]["metrics_path"],
				"params":       map[string]any{"module": []any{module}},
				"static_configs": []any{map[string]any{
					"targets": toAny(targets),
					"labels":  map[string]any{"account": a.label},
				}},
				"relabel_configs": relabel,
			})
		}
	}
	return marshalYAML(t, map[string]any{
		"global": map[string]any{
			"scrape_interval": promDuration(replicasInterval),
			"scrape_timeout":  promDuration(replicasInterval),
			"external_labels": map[string]any{"replica": replica},
		},
		"scrape_configs": jobs,
	})
}

func toAny(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

// replicasTargetsUp reports whether Prometheus has every one of want
// targets scraped successfully at least once.
func replicasTargetsUp(api prometheusAPI, want int) (bool, error) {
	targets, err := api.targets()
	if err != nil {
		return false, err
	}
	up := 0
	var problems []string
	for _, tg := range targets {
		if tg.Health == "up" {
			up++
		} else {
			problems = append(problems, fmt.Sprintf("%s %s: %s %s", tg.Labels["job"], tg.Labels["instance"], tg.Health, tg.LastError))
		}
	}
	if len(targets) != want || up != want {
		return false, fmt.Errorf("%s: %d of %d targets up, want %d: %v", api.url, up, len(targets), want, problems)
	}
	return true, nil
}

// replicasRouting maps each account label to the exporters its targets are
// scraped at.
func replicasRouting(api prometheusAPI) (map[string][]string, error) {
	targets, err := api.targets()
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	for _, tg := range targets {
		account := tg.Labels["account"]
		if account == "" {
			continue
		}
		u, err := url.Parse(tg.ScrapeURL)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(out[account], u.Host) {
			out[account] = append(out[account], u.Host)
		}
	}
	return out, nil
}

// promTarget is an active target from /api/v1/targets.
type promTarget struct {
	Labels    map[string]string `json:"labels"`
	ScrapeURL string            `json:"scrapeUrl"`
	Health    string            `json:"health"`
	LastError string            `json:"lastError"`
}

func (p prometheusAPI) targets() ([]promTarget, error) {
	var data struct {
		ActiveTargets []promTarget `json:"activeTargets"`
	}
	err := p.get("/api/v1/targets", url.Values{"state": {"active"}}, &data)
	return data.ActiveTargets, err
}

// promSample is one series of an instant vector.
type promSample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

func (s promSample) float() (float64, error) {
	text, ok := s.Value[1].(string)
	if !ok {
		return 0, fmt.Errorf("sample value %v is not a string", s.Value[1])
	}
	return strconv.ParseFloat(text, 64)
}

func (p prometheusAPI) query(query string) ([]promSample, error) {
	var data struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := p.get("/api/v1/query", url.Values{"query": {query}}, &data); err != nil {
		return nil, err
	}
	if data.ResultType != "vector" {
		return nil, fmt.Errorf("%s: result type %s, want vector", query, data.ResultType)
	}
	var samples []promSample
	err := json.Unmarshal(data.Result, &samples)
	return samples, err
}

// scalar runs a query that must return one series and returns its value.
func (p prometheusAPI) scalar(query string) (float64, error) {
	samples, err := p.query(query)
	if err != nil {
		return 0, err
	}
	if len(samples) != 1 {
		return 0, fmt.Errorf("%s: %d series, want 1", query, len(samples))
	}
	return samples[0].float()
}

// vector runs a query and formats its series, for the log.
func (p prometheusAPI) vector(query string) (string, error) {
	samples, err := p.query(query)
	if err != nil {
		return "", err
	}
	var lines []string
	for _, s := range samples {
		v, _ := s.float()
		lines = append(lines, fmt.Sprintf("%v %v", s.Metric, v))
	}
	slices.Sort(lines)
	return strings.Join(lines, "; "), nil
}

// login is one AUTH exchange the test server ran to its end.
type login struct {
	at        time.Time
	username  string
	mechanism string
	ok        bool
}

func (l login) String() string {
	return fmt.Sprintf("%s %s %s ok=%v", l.at.Format("15:04:05.000"), l.mechanism, l.username, l.ok)
}

// offsets formats times as seconds after t0, for the log.
func offsets(at []time.Time, t0 time.Time) string {
	var s []string
	for _, a := range at {
		s = append(s, fmt.Sprintf("+%.2fs", a.Sub(t0).Seconds()))
	}
	return "[" + strings.Join(s, " ") + "]"
}

// loginServer is an SMTP server on 127.0.0.1 that checks PLAIN and LOGIN
// against a few accounts and records every AUTH exchange.
type loginServer struct {
	server    *smtptest.Server
	passwords map[string]string // username -> password, read-only

	mu   sync.Mutex
	seen []login
}

func newLoginServer(t *testing.T, passwords map[string]string) *loginServer {
	s := &loginServer{passwords: passwords}
	s.server = smtptest.NewScripted(t, smtptest.AuthSession{
		Host:       "mx.e2e.test",
		Extensions: []string{"AUTH PLAIN LOGIN", "ENHANCEDSTATUSCODES"},
		Auth:       s.auth,
	}.Handle)
	return s
}

func (s *loginServer) logins() []login {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.seen)
}

// auth runs one exchange: "PLAIN [initial response]" or "LOGIN [username]".
func (s *loginServer) auth(c *smtptest.Conn, arg string) bool {
	mechanism, initial, _ := strings.Cut(arg, " ")
	mechanism = strings.ToUpper(mechanism)
	// next returns the client's decoded answer to a 334 challenge, or the
	// initial response when there is one.
	next := func(prompt string, initial *string) ([]byte, bool) {
		line := *initial
		*initial = ""
		if line == "" {
			if c.WriteLine("334 "+base64.StdEncoding.EncodeToString([]byte(prompt))) != nil {
				return nil, false
			}
			var err error
			if line, err = c.ReadLine(); err != nil {
				return nil, false
			}
		}
		if line == "*" {
			c.WriteLine("501 5.7.0 Authentication aborted")
			return nil, false
		}
		if line == "=" {
			return []byte{}, true
		}
		data, err := base64.StdEncoding.DecodeString(line)
		if err != nil {
			c.WriteLine("501 5.5.2 Cannot decode response")
			return nil, false
		}
		return data, true
	}
	var username, password string
	switch mechanism {
	case "PLAIN":
		blob, ok := next("", &initial)
		if !ok {
			return true
		}
		parts := strings.Split(string(blob), "\x00")
		if len(parts) != 3 {
			return c.WriteLine("501 5.5.2 Malformed PLAIN response") == nil
		}
		username, password = parts[1], parts[2]
	case "LOGIN":
		user, ok := next("Username:", &initial)
		if !ok {
			return true
		}
		pass, ok := next("Password:", &initial)
		if !ok {
			return true
		}
		username, password = string(user), string(pass)
	default:
		return c.WriteLine("504 5.5.4 Unsupported authentication mechanism") == nil
	}
	want, known := s.passwords[username]
	ok := known && password == want
	s.mu.Lock()
	s.seen = append(s.seen, login{at: time.Now(), username: username, mechanism: mechanism, ok: ok})
	s.mu.Unlock()
	if ok {
		return c.WriteLine("235 2.7.0 Authentication successful") == nil
	}
	return c.WriteLine("535 5.7.8 Error: authentication failed") == nil
}
