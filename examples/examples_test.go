package examples

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/smtp-exporter/smtp_exporter/config"
)

const (
	prometheusConfig = "prometheus/prometheus.yml"
	rulesFile        = "prometheus/smtp_exporter.rules.yml"
	rulesTestFile    = "prometheus/smtp_exporter.rules.test.yml"
	alertmanagerFile = "alertmanager/alertmanager.yml"
	dashboardFile    = "grafana/smtp_exporter.json"
	shippedConfig    = "../smtp_exporter.yml"
	kubernetesConfig = "kubernetes/base/smtp_exporter.yml"
)

// tool returns the path of an external program the test needs. Outside CI
// a missing tool skips the test with the package to install; in CI
// (CI=true) it fails, so that a broken CI image cannot pass by skipping.
func tool(t *testing.T, name, debianPackage string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not found, and CI=true: install the Debian package %s", name, debianPackage)
	}
	t.Skipf("%s not found: install the Debian package %s to run this test", name, debianPackage)
	return ""
}

// runTool runs a program to completion and returns its standard output; a
// non-zero exit fails the test with everything it printed.
func runTool(t *testing.T, path string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s%s", filepath.Base(path), strings.Join(args, " "), err, stdout.Bytes(), stderr.Bytes())
	}
	return stdout.String()
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestPromtoolCheckConfig(t *testing.T) {
	promtool := tool(t, "promtool", "prometheus")
	// Checks the rule files the configuration names as well.
	out := runTool(t, promtool, "check", "config", prometheusConfig)
	if !strings.Contains(out, "SUCCESS") {
		t.Errorf("promtool check config did not report success:\n%s", out)
	}
}

func TestPromtoolCheckRules(t *testing.T) {
	promtool := tool(t, "promtool", "prometheus")
	runTool(t, promtool, "check", "rules", rulesFile)
}

func TestPromtoolTestRules(t *testing.T) {
	promtool := tool(t, "promtool", "prometheus")
	out := runTool(t, promtool, "test", "rules", rulesTestFile)
	if !strings.Contains(out, "SUCCESS") {
		t.Errorf("promtool test rules did not report success:\n%s", out)
	}
}

// forLine is the form every `for:` of the rules file takes, one per line, so
// that an end-to-end test can shorten the waits with a regexp and leave the
// expressions alone.
var forLine = regexp.MustCompile(`(?m)^(\s+)for: (\S+)$`)

func TestRulesStillValidWithShortenedFor(t *testing.T) {
	promtool := tool(t, "promtool", "prometheus")
	rules := readFile(t, rulesFile)
	if n := len(forLine.FindAll(rules, -1)); n != len(loadRules(t)) {
		t.Fatalf("%d `for:` lines for %d alerts; every alert needs one on a line of its own", n, len(loadRules(t)))
	}
	shortened := forLine.ReplaceAll(rules, []byte("${1}for: 5s"))
	path := filepath.Join(t.TempDir(), "rules.yml")
	if err := os.WriteFile(path, shortened, 0o644); err != nil {
		t.Fatal(err)
	}
	runTool(t, promtool, "check", "rules", path)
}

func TestAlertmanagerConfig(t *testing.T) {
	amtool := tool(t, "amtool", "prometheus-alertmanager")
	runTool(t, amtool, "check-config", alertmanagerFile)
	for _, tc := range []struct {
		labels   []string
		receiver string
	}{
		{[]string{"alertname=SMTPAuthenticationFailing", "severity=critical", "job=smtp_submission"}, "mail-team-pager"},
		{[]string{"alertname=SMTPCertificateExpiringSoon", "severity=warning", "job=smtp_starttls"}, "mail-team-tickets"},
	} {
		args := append([]string{"config", "routes", "test", "--config.file=" + alertmanagerFile}, tc.labels...)
		if got := strings.TrimSpace(runTool(t, amtool, args...)); got != tc.receiver {
			t.Errorf("%v is routed to %q, want %q", tc.labels, got, tc.receiver)
		}
	}
}

// TestAlertmanagerGroupsAnAccount has amtool route alerts through the
// shipped tree and checks how the route they reach groups them: the
// SMTPAuthenticationFailing alerts of every job and port of one account
// share one group (one notification), other alerts and targets without an
// account are grouped per job and server.
func TestAlertmanagerGroupsAnAccount(t *testing.T) {
	amtool := tool(t, "amtool", "prometheus-alertmanager")
	var file struct {
		Route amRoute `yaml:"route"`
	}
	if err := yaml.Unmarshal(readFile(t, alertmanagerFile), &file); err != nil {
		t.Fatalf("%s: %v", alertmanagerFile, err)
	}
	byAccount := []string{"alertname", "account"}
	perServer := []string{"alertname", "job", "instance"}
	for _, tc := range []struct {
		labels   []string
		receiver string
		groupBy  []string
	}{
		{[]string{"alertname=SMTPAuthenticationFailing", "severity=critical", "account=probe", "job=smtp_submission", "instance=smtp.example.net:587", "module=submission"}, "mail-team-pager", byAccount},
		{[]string{"alertname=SMTPAuthenticationFailing", "severity=critical", "account=probe", "job=smtp_submissions", "instance=smtp.example.net:465", "module=submissions"}, "mail-team-pager", byAccount},
		{[]string{"alertname=SMTPAuthenticationFailing", "severity=critical", "account=probe", "job=smtp_submission_canary", "instance=smtp.example.net:587", "module=submission_canary"}, "mail-team-pager", byAccount},
		// A target without an account label is not grouped with others.
		{[]string{"alertname=SMTPAuthenticationFailing", "severity=critical", "job=smtp_submission", "instance=smtp.example.net:587"}, "mail-team-pager", perServer},
		// A port that is down is news of its own.
		{[]string{"alertname=SMTPServerUnreachable", "severity=critical", "account=probe", "job=smtp_submissions", "instance=smtp.example.net:465"}, "mail-team-pager", perServer},
		{[]string{"alertname=SMTPAuthMechanismMissing", "severity=warning", "account=probe", "job=smtp_submission", "instance=smtp.example.net:587"}, "mail-team-tickets", perServer},
	} {
		args := append([]string{"config", "routes", "test", "--tree", "--config.file=" + alertmanagerFile}, tc.labels...)
		out := runTool(t, amtool, args...)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if got := strings.TrimSpace(lines[len(lines)-1]); got != tc.receiver {
			t.Errorf("%v is routed to %q, want %q", tc.labels, got, tc.receiver)
		}
		// The tree amtool prints has one line per route on the path, each
		// with the route's matchers; the route that matched is the last.
		var path []string
		for _, line := range lines {
			if m := amtoolTreeMatchers.FindStringSubmatch(line); m != nil {
				path = append(path, normalizeMatchers(strings.Split(m[1], ",")))
			}
		}
		groupBy, ok := file.Route.groupByAlong(path)
		if !ok {
			t.Errorf("%v: the route %v amtool matched is not in %s", tc.labels, path, alertmanagerFile)
			continue
		}
		if !slices.Equal(groupBy, tc.groupBy) {
			t.Errorf("%v reaches route %v, which groups by %v, want %v", tc.labels, path, groupBy, tc.groupBy)
		}
	}
}

// amRoute is a route of an Alertmanager routing tree.
type amRoute struct {
	Matchers []string  `yaml:"matchers"`
	GroupBy  []string  `yaml:"group_by"`
	Routes   []amRoute `yaml:"routes"`
}

var amtoolTreeMatchers = regexp.MustCompile(`── \{(.*)\}`)

// normalizeMatchers spells a route's matchers as amtool prints them:
// sorted, without spaces.
func normalizeMatchers(matchers []string) string {
	var out []string
	for _, m := range matchers {
		out = append(out, strings.ReplaceAll(strings.TrimSpace(m), " ", ""))
	}
	slices.Sort(out)
	return strings.Join(out, ",")
}

// groupByAlong follows the routes whose matchers are path, from the root,
// and returns the group_by of the last, inherited where a route sets none.
func (r amRoute) groupByAlong(path []string) ([]string, bool) {
	groupBy := r.GroupBy
	current := r
	for _, step := range path {
		found := false
		for _, child := range current.Routes {
			if normalizeMatchers(child.Matchers) == step {
				current, found = child, true
				break
			}
		}
		if !found {
			return nil, false
		}
		if current.GroupBy != nil {
			groupBy = current.GroupBy
		}
	}
	return groupBy, true
}

// rule is an alerting rule as the rules file spells it.
type rule struct {
	Group       string            `yaml:"-"`
	Alert       string            `yaml:"alert"`
	Record      string            `yaml:"record"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

func loadRules(t *testing.T) []rule {
	t.Helper()
	var file struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []rule `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(readFile(t, rulesFile), &file); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	var rules []rule
	for _, g := range file.Groups {
		for _, r := range g.Rules {
			r.Group = g.Name
			rules = append(rules, r)
		}
	}
	if len(rules) == 0 {
		t.Fatalf("%s has no rules", rulesFile)
	}
	return rules
}

// The alerts the mail team asked for; others may be added.
var requiredAlerts = []string{
	"SMTPAuthenticationFailing",
	"SMTPServerUnreachable",
	"SMTPProbeFailing",
	"SMTPStartTLSUnavailable",
	"SMTPTLSBroken",
	"SMTPCertificateExpiringSoon",
	"SMTPCertificateExpiringVerySoon",
	"SMTPCertificateExpired",
	"SMTPAuthMechanismMissing",
	"SMTPSlowAuthentication",
	"SMTPCanaryNotAccepted",
	"SMTPExporterConfigReloadFailed",
}

// failureAlerts quote the failure's phase, reason and reply code.
var failureAlerts = []string{
	"SMTPServerUnreachable",
	"SMTPStartTLSUnavailable",
	"SMTPTLSBroken",
	"SMTPAuthenticationFailing",
	"SMTPCanaryNotAccepted",
	"SMTPProbeFailing",
}

func TestRuleConventions(t *testing.T) {
	seen := map[string]bool{}
	for _, r := range loadRules(t) {
		if r.Alert == "" {
			t.Errorf("group %s: recording rule %q: the file holds alerts only", r.Group, r.Record)
			continue
		}
		if seen[r.Alert] {
			t.Errorf("alert %s is defined twice", r.Alert)
		}
		seen[r.Alert] = true
		// A single failed scrape must not page anyone.
		if d, err := time.ParseDuration(r.For); err != nil || d < 5*time.Minute {
			t.Errorf("%s: for: %q, want at least 5m", r.Alert, r.For)
		}
		if sev := r.Labels["severity"]; sev != "warning" && sev != "critical" {
			t.Errorf("%s: severity %q, want warning or critical", r.Alert, sev)
		}
		for _, a := range []string{"summary", "description"} {
			if strings.TrimSpace(r.Annotations[a]) == "" {
				t.Errorf("%s has no %s annotation", r.Alert, a)
			}
		}
		if slices.Contains(failureAlerts, r.Alert) {
			for _, ref := range []string{"$labels.phase", "$labels.reason", "$value"} {
				if !strings.Contains(r.Annotations["description"], ref) {
					t.Errorf("%s: the description does not quote %s", r.Alert, ref)
				}
			}
		}
	}
	for _, name := range requiredAlerts {
		if !seen[name] {
			t.Errorf("alert %s is missing", name)
		}
	}
}

// TestEveryAlertIsUnitTested checks that the promtool tests assert, for
// every alert, at least one firing with its labels and both annotations, and
// at least one evaluation where it stays quiet.
func TestEveryAlertIsUnitTested(t *testing.T) {
	var file struct {
		RuleFiles []string `yaml:"rule_files"`
		Tests     []struct {
			AlertRuleTests []struct {
				Alertname string `yaml:"alertname"`
				ExpAlerts []struct {
					ExpLabels      map[string]string `yaml:"exp_labels"`
					ExpAnnotations map[string]string `yaml:"exp_annotations"`
				} `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(readFile(t, rulesTestFile), &file); err != nil {
		t.Fatalf("%s: %v", rulesTestFile, err)
	}
	if !slices.Contains(file.RuleFiles, filepath.Base(rulesFile)) {
		t.Errorf("%s does not test %s (rule_files: %v)", rulesTestFile, rulesFile, file.RuleFiles)
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range file.Tests {
		for _, at := range tc.AlertRuleTests {
			if len(at.ExpAlerts) == 0 {
				quiet[at.Alertname] = true
			}
			for _, exp := range at.ExpAlerts {
				if exp.ExpLabels["severity"] != "" && exp.ExpAnnotations["summary"] != "" && exp.ExpAnnotations["description"] != "" {
					fires[at.Alertname] = true
				}
			}
		}
	}
	for _, r := range loadRules(t) {
		if !fires[r.Alert] {
			t.Errorf("no test asserts that %s fires, with its severity, summary and description", r.Alert)
		}
		if !quiet[r.Alert] {
			t.Errorf("no test asserts that %s stays quiet on a near miss", r.Alert)
		}
	}
}

// scrapeConfig is the part of a Prometheus scrape job these tests check.
type scrapeConfig struct {
	JobName       string              `yaml:"job_name"`
	MetricsPath   string              `yaml:"metrics_path"`
	Params        map[string][]string `yaml:"params"`
	ScrapeTimeout string              `yaml:"scrape_timeout"`
	StaticConfigs []struct {
		Targets []string `yaml:"targets"`
	} `yaml:"static_configs"`
	FileSDConfigs []struct {
		Files []string `yaml:"files"`
	} `yaml:"file_sd_configs"`
	RelabelConfigs []struct {
		SourceLabels []string `yaml:"source_labels"`
		TargetLabel  string   `yaml:"target_label"`
		Replacement  *string  `yaml:"replacement"`
	} `yaml:"relabel_configs"`
}

// scrapeConfigs are the scrape jobs of the example Prometheus configuration.
func scrapeConfigs(t *testing.T) []scrapeConfig {
	t.Helper()
	var prom struct {
		ScrapeConfigs []scrapeConfig `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(readFile(t, prometheusConfig), &prom); err != nil {
		t.Fatalf("%s: %v", prometheusConfig, err)
	}
	return prom.ScrapeConfigs
}

// TestPrometheusJobsMatchTheShippedModules checks each probe job against
// the module it names: every shipped module has one job named smtp_*, the
// relabeling sends the target as a parameter to the exporter, and the
// targets are ones the module's allowed_targets admit.
func TestPrometheusJobsMatchTheShippedModules(t *testing.T) {
	cfg, err := config.LoadFile(shippedConfig)
	if err != nil {
		t.Fatal(err)
	}
	scrapes := scrapeConfigs(t)

	jobsByModule := map[string][]string{}
	for _, sc := range scrapes {
		if !strings.HasPrefix(sc.JobName, "smtp_") {
			t.Errorf("job %s: the rules select jobs named smtp_*", sc.JobName)
		}
		modules := sc.Params["module"]
		if len(modules) == 0 {
			continue // the exporter's own /metrics
		}
		module, ok := cfg.Modules[modules[0]]
		if len(modules) != 1 || !ok {
			t.Errorf("job %s: module %v is not one module of %s", sc.JobName, modules, shippedConfig)
			continue
		}
		jobsByModule[modules[0]] = append(jobsByModule[modules[0]], sc.JobName)

		if sc.MetricsPath != "/probe" {
			t.Errorf("job %s scrapes %q, want /probe", sc.JobName, sc.MetricsPath)
		}
		if timeout, err := time.ParseDuration(sc.ScrapeTimeout); err != nil || timeout < time.Duration(module.Timeout) {
			t.Errorf("job %s: scrape_timeout %q is shorter than module %s's timeout %v", sc.JobName, sc.ScrapeTimeout, modules[0], module.Timeout)
		}
		relabel := map[string]string{}
		for _, rc := range sc.RelabelConfigs {
			switch {
			case rc.Replacement != nil:
				relabel[rc.TargetLabel] = "=" + *rc.Replacement
			case len(rc.SourceLabels) == 1:
				relabel[rc.TargetLabel] = rc.SourceLabels[0]
			}
		}
		if relabel["__param_target"] != "__address__" || relabel["instance"] != "__param_target" ||
			!strings.HasPrefix(relabel["__address__"], "=") {
			t.Errorf("job %s: relabeling %v does not move the target to ?target= and instance and send the scrape to the exporter", sc.JobName, relabel)
		}

		var targets []string
		for _, s := range sc.StaticConfigs {
			targets = append(targets, s.Targets...)
		}
		for _, f := range sc.FileSDConfigs {
			for _, file := range f.Files {
				targets = append(targets, fileSDTargets(t, filepath.Join(filepath.Dir(prometheusConfig), file))...)
			}
		}
		if len(targets) == 0 {
			t.Errorf("job %s has no targets", sc.JobName)
		}
		for _, target := range targets {
			host, portText, err := net.SplitHostPort(target)
			port, perr := strconv.Atoi(portText)
			if err != nil || perr != nil {
				t.Errorf("job %s: target %q is not host:port", sc.JobName, target)
				continue
			}
			if !module.SMTP.AllowsHost(host, port) {
				t.Errorf("job %s: module %s does not allow target %s", sc.JobName, modules[0], target)
			}
		}
	}
	for name := range cfg.Modules {
		if len(jobsByModule[name]) != 1 {
			t.Errorf("module %s is scraped by jobs %v, want exactly one", name, jobsByModule[name])
		}
	}
}

// TestPrometheusRelabeling has Prometheus' own service discovery and
// relabeling run over each probe job, and checks what every target turns
// into: a scrape of the exporter's /probe with the server as ?target= and
// as instance, and the module as ?module= and as the module label.
func TestPrometheusRelabeling(t *testing.T) {
	promtool := tool(t, "promtool", "prometheus")
	scrapes := scrapeConfigs(t)
	for _, sc := range scrapes {
		if len(sc.Params["module"]) == 0 {
			continue
		}
		t.Run(sc.JobName, func(t *testing.T) {
			t.Parallel()
			// Discovery of static and file targets is immediate; the
			// timeout only bounds how long promtool waits for more.
			out := runTool(t, promtool, "check", "service-discovery", "--timeout=1s", prometheusConfig, sc.JobName)
			var targets []struct {
				Discovered map[string]string `json:"discoveredLabels"`
				Labels     map[string]string `json:"labels"`
			}
			if err := json.Unmarshal([]byte(out), &targets); err != nil {
				t.Fatalf("promtool check service-discovery: %v\n%s", err, out)
			}
			if len(targets) == 0 {
				t.Fatal("no targets discovered")
			}
			module := sc.Params["module"][0]
			for _, target := range targets {
				server, l := target.Discovered["__address__"], target.Labels
				want := map[string]string{
					"__param_target":   server,
					"instance":         server,
					"__param_module":   module,
					"module":           module,
					"job":              sc.JobName,
					"__metrics_path__": "/probe",
				}
				for name, value := range want {
					if l[name] != value {
						t.Errorf("target %s: %s = %q, want %q", server, name, l[name], value)
					}
				}
				if exporter := l["__address__"]; exporter == server || exporter == "" {
					t.Errorf("target %s is scraped at %q, not at the exporter", server, exporter)
				}
			}
		})
	}
}

// fileSDTargets reads a file_sd targets file; Prometheus would refuse the
// whole file on an unknown key, and so does this.
func fileSDTargets(t *testing.T, name string) []string {
	t.Helper()
	var groups []struct {
		Targets []string          `yaml:"targets"`
		Labels  map[string]string `yaml:"labels"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(readFile(t, name)))
	dec.KnownFields(true)
	if err := dec.Decode(&groups); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	var targets []string
	for _, g := range groups {
		targets = append(targets, g.Targets...)
	}
	return targets
}

// The Kubernetes ConfigMap is generated from a copy of the shipped
// configuration (kustomize reads no file outside its directory); the copy
// must not drift. examples/kubernetes/validate checks the generated
// ConfigMap itself.
func TestKubernetesConfigIsTheShippedConfig(t *testing.T) {
	if !bytes.Equal(readFile(t, kubernetesConfig), readFile(t, shippedConfig)) {
		t.Errorf("%s differs from smtp_exporter.yml; copy it again:\n  cp smtp_exporter.yml examples/%s",
			kubernetesConfig, kubernetesConfig)
	}
}
