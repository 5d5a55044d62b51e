package examples

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// jobScope is the matcher that keeps every rule to this exporter's jobs:
// the probe jobs and the exporter's own are all named smtp_*, and
// blackbox_exporter's jobs, which export probe_success and
// probe_ssl_earliest_cert_expiry too, are not.
const jobScope = `job=~"smtp_.*"`

// metricSelectors returns, for every place an expression selects a metric,
// the metric's name and its label matchers ("" without braces).
func metricSelectors(expr string) [][2]string {
	var out [][2]string
	for _, name := range metricNames(expr) {
		occurrence := regexp.MustCompile(`(?:^|[^A-Za-z0-9_:"])` + regexp.QuoteMeta(name) + `\s*(\{[^{}]*\})?`)
		for _, m := range occurrence.FindAllStringSubmatch(expr, -1) {
			out = append(out, [2]string{name, m[1]})
		}
	}
	return out
}

func TestMetricSelectors(t *testing.T) {
	got := metricSelectors(`sum by (job) (rate(foo{job=~"smtp_.*", a="b"}[5m])) and on (instance) bar unless foo{x="y"}`)
	want := [][2]string{{"bar", ""}, {"foo", `{job=~"smtp_.*", a="b"}`}, {"foo", `{x="y"}`}}
	if len(got) != len(want) {
		t.Fatalf("metricSelectors = %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("metricSelectors[%d] = %q, want %q", i, got[i], want[i])
		}
	}
}

// TestRulesSelectOnlySMTPJobs checks that every selector of every alert
// expression has the job matcher, and that the queries in annotations are
// narrowed to the alert's own job.
func TestRulesSelectOnlySMTPJobs(t *testing.T) {
	for _, r := range loadRules(t) {
		selectors := metricSelectors(r.Expr)
		if len(selectors) == 0 {
			t.Errorf("%s: no selector found in %q", r.Alert, r.Expr)
		}
		for _, s := range selectors {
			if !strings.Contains(s[1], jobScope) {
				t.Errorf("%s selects %s%s without %s: it would match other exporters' jobs", r.Alert, s[0], s[1], jobScope)
			}
		}
		for name, text := range r.Annotations {
			for _, q := range templateQueries(text) {
				if !strings.Contains(q, "job=%q") {
					t.Errorf("%s %s queries %s without job=%%q (the alert's own job)", r.Alert, name, q)
				}
			}
		}
	}
}

// TestBlackboxJobsFireNothing checks that the promtool tests feed a
// blackbox_exporter job (an expired certificate, certificates about to
// expire, a failing probe) and assert, for every alert, that nothing fires
// for it.
func TestBlackboxJobsFireNothing(t *testing.T) {
	var file struct {
		Tests []struct {
			Name        string `yaml:"name"`
			InputSeries []struct {
				Series string `yaml:"series"`
				Values string `yaml:"values"`
			} `yaml:"input_series"`
			AlertRuleTests []struct {
				Alertname string `yaml:"alertname"`
				ExpAlerts []struct {
					ExpLabels map[string]string `yaml:"exp_labels"`
				} `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(readFile(t, rulesTestFile), &file); err != nil {
		t.Fatalf("%s: %v", rulesTestFile, err)
	}
	found := false
	for _, tc := range file.Tests {
		fed := map[string]bool{}
		for _, s := range tc.InputSeries {
			if strings.Contains(s.Series, `job="blackbox_`) {
				fed[s.Series[:strings.Index(s.Series, "{")]] = true
			}
		}
		if !fed["probe_ssl_earliest_cert_expiry"] || !fed["probe_success"] {
			continue
		}
		found = true
		asserted := map[string]bool{}
		for _, at := range tc.AlertRuleTests {
			asserted[at.Alertname] = true
			for _, exp := range at.ExpAlerts {
				if !strings.HasPrefix(exp.ExpLabels["job"], "smtp_") {
					t.Errorf("test %q expects %s to fire for job %q", tc.Name, at.Alertname, exp.ExpLabels["job"])
				}
			}
		}
		for _, r := range loadRules(t) {
			if !asserted[r.Alert] {
				t.Errorf("test %q does not assert that %s stays quiet for the blackbox job", tc.Name, r.Alert)
			}
		}
	}
	if !found {
		t.Errorf("%s has no test that feeds a blackbox_* job with probe_success and probe_ssl_earliest_cert_expiry", rulesTestFile)
	}
}

// moduleJoin narrows a selection to the modules of the series on the
// right: "and on (module) group by (module) (x{job=~"$job", ...})".
var moduleJoin = regexp.MustCompile(`and\s+on\s*\(\s*module\s*\)\s*group\s+by\s*\(\s*module\s*\)\s*\(\s*[a-z_]+\{job=~"\$job", instance=~"\$instance"\}\s*\)`)

// TestDashboardSelectsOnlySMTPJobs checks that the dashboard cannot show
// other exporters' jobs: its variables list only smtp_* jobs, "All" means
// smtp_.*, and every selector of every panel is narrowed by the variables.
func TestDashboardSelectsOnlySMTPJobs(t *testing.T) {
	d := loadDashboard(t)
	var raw struct {
		Templating struct {
			List []struct {
				Name       string `json:"name"`
				Definition string `json:"definition"`
				AllValue   string `json:"allValue"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(readFile(t, dashboardFile), &raw); err != nil {
		t.Fatal(err)
	}
	for _, v := range raw.Templating.List {
		switch v.Name {
		case "job":
			if !strings.Contains(v.Definition, jobScope) {
				t.Errorf("variable job: %q lists jobs without %s", v.Definition, jobScope)
			}
			if v.AllValue != "smtp_.*" {
				t.Errorf("variable job: All means %q, want smtp_.*", v.AllValue)
			}
		case "instance":
			if !strings.Contains(v.Definition, `job=~"$job"`) {
				t.Errorf("variable instance: %q is not narrowed by the job variable", v.Definition)
			}
		}
	}
	for _, p := range d.allPanels() {
		for _, target := range p.Targets {
			for _, s := range metricSelectors(target.Expr) {
				// The exporter's own metrics are scraped by its own job
				// (smtp_exporter), which the job variable does not list:
				// they are selected within the smtp jobs and narrowed by
				// the module of the selected jobs and targets.
				if strings.HasPrefix(s[0], "smtp_exporter_") && strings.Contains(s[1], jobScope) && moduleJoin.MatchString(target.Expr) {
					continue
				}
				if !strings.Contains(s[1], `job=~"$job"`) {
					t.Errorf("panel %q target %s selects %s%s without job=~\"$job\"", p.Title, target.RefID, s[0], s[1])
				}
			}
		}
	}
}
