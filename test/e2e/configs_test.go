package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// The shipped files the scenario runs, relative to the repository root.
const (
	shippedPrometheusConfig   = "examples/prometheus/prometheus.yml"
	shippedRules              = "examples/prometheus/smtp_exporter.rules.yml"
	shippedAlertmanagerConfig = "examples/alertmanager/alertmanager.yml"

	// probeJob is the shipped job whose scrape configuration (module
	// parameter and relabeling) the scenario uses for its target, and
	// exporterJob the one that scrapes the exporter's own /metrics.
	probeJob    = "smtp_submission"
	exporterJob = "smtp_exporter"
	// implicitJob is the shipped job of the same account on implicit TLS
	// (submissions, port 465): with probeJob, two jobs and two ports that
	// log in with one account.
	implicitJob = "smtp_submissions"
)

// forLine is the form every `for:` of the rules file takes (its header
// promises one per line), so that the waits can be shortened without
// touching an expression.
var forLine = regexp.MustCompile(`(?m)^(\s+)for: (\S+)$`)

// promDuration spells a duration for Prometheus and Alertmanager.
func promDuration(d time.Duration) string {
	return strconv.FormatInt(d.Milliseconds(), 10) + "ms"
}

func readShipped(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot(t), name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func writeConfig(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func marshalYAML(t *testing.T, v any) []byte {
	t.Helper()
	data, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// shortenedRules returns the shipped rules with every `for:` replaced,
// and how many there were.
func shortenedRules(t *testing.T, alertFor time.Duration) ([]byte, int) {
	t.Helper()
	rules := readShipped(t, shippedRules)
	n := len(forLine.FindAll(rules, -1))
	if n == 0 {
		t.Fatalf("%s: no `for:` line to shorten", shippedRules)
	}
	return forLine.ReplaceAll(rules, []byte("${1}for: "+promDuration(alertFor))), n
}

// exporterConfig has modules like the shipped submission and submissions
// modules, pointed at the private lab: STARTTLS on its submission port and
// implicit TLS on its smtps port, the lab's CA, PLAIN with one password
// file (one account).
func exporterConfig(modules map[string]string, l *lab, implicitPort int, passwordFile string) []byte {
	out := []byte("modules:\n")
	for _, m := range []struct {
		job, tls string
		port     int
	}{{probeJob, "starttls", l.submissionPort}, {implicitJob, "implicit", implicitPort}} {
		out = fmt.Appendf(out, `  %s:
    timeout: 10s
    smtp:
      tls: %s
      port: %d
      tls_config:
        ca_file: %q
        server_name: localhost
      auth:
        mechanism: PLAIN
        username: %q
        password_file: %q
      allowed_targets: ["127.0.0.1"]
`, modules[m.job], m.tls, m.port, l.vars["LAB_CA"], l.vars["LAB_USER"], passwordFile)
	}
	return out
}

// prometheusSetup is the Prometheus configuration of the scenario and what
// the test needs to know about it.
type prometheusSetup struct {
	config  []byte
	module  string            // the module the probe job asks for
	modules map[string]string // the module each probe job asks for, by job
	account string            // the account label of the probe jobs' targets
}

// shippedJobs returns the jobs of the shipped prometheus.yml by name.
func shippedJobs(t *testing.T) map[string]map[string]any {
	t.Helper()
	var shipped map[string]any
	if err := yaml.Unmarshal(readShipped(t, shippedPrometheusConfig), &shipped); err != nil {
		t.Fatalf("%s: %v", shippedPrometheusConfig, err)
	}
	jobs, _ := shipped["scrape_configs"].([]any)
	byName := map[string]map[string]any{}
	for _, j := range jobs {
		if job, ok := j.(map[string]any); ok {
			if name, ok := job["job_name"].(string); ok {
				byName[name] = job
			}
		}
	}
	if byName[probeJob] == nil || byName[exporterJob] == nil {
		t.Fatalf("%s has no job %s or %s", shippedPrometheusConfig, probeJob, exporterJob)
	}
	return byName
}

// routeToExporters takes the shipped probe relabelling and points it at
// these exporters, as README.md tells users without Kubernetes to: the
// hashmod's modulus becomes their number, and the rule that builds the
// replica's address from the shard becomes one rule per exporter. Nothing
// else changes, so the shards are the shipped rules' own.
func routeToExporters(t *testing.T, shipped any, exporters []string) []any {
	t.Helper()
	rules, _ := shipped.([]any)
	var out []any
	hashmods, addresses := 0, 0
	shardLabel := ""
	for _, rc := range rules {
		orig, ok := rc.(map[string]any)
		if !ok {
			t.Fatalf("%s: job %s: relabel config %v is not a map", shippedPrometheusConfig, probeJob, rc)
		}
		c := map[string]any{}
		for k, v := range orig {
			c[k] = v
		}
		switch {
		case c["action"] == "hashmod":
			if _, ok := c["modulus"]; !ok {
				t.Fatalf("%s: job %s: hashmod without a modulus: %v", shippedPrometheusConfig, probeJob, c)
			}
			c["modulus"] = len(exporters)
			shardLabel, _ = c["target_label"].(string)
			hashmods++
		case c["target_label"] == "__address__":
			if _, ok := c["replacement"]; !ok {
				break
			}
			source, _ := c["source_labels"].([]any)
			if len(source) != 1 || source[0] != shardLabel || shardLabel == "" {
				t.Fatalf("%s: job %s: the exporter address is not built from the hashmod's shard label %q: %v",
					shippedPrometheusConfig, probeJob, shardLabel, c)
			}
			addresses++
			for i, addr := range exporters {
				out = append(out, map[string]any{
					"source_labels": source,
					"regex":         strconv.Itoa(i),
					"target_label":  "__address__",
					"replacement":   addr,
				})
			}
			continue
		}
		out = append(out, c)
	}
	if hashmods != 1 || addresses != 1 {
		t.Fatalf("%s: job %s: %d hashmod rules and %d rules setting the exporter address (__address__), want 1 of each",
			shippedPrometheusConfig, probeJob, hashmods, addresses)
	}
	return out
}

// prometheusConfig takes the shipped prometheus.yml and keeps its two
// probe jobs of one account (probeJob and implicitJob) and the exporter's
// own job, with their parameters, target labels and relabeling as shipped;
// only addresses and intervals change: the targets are the lab (targets
// maps each probe job to its own), the relabeling's exporter address is
// the exporter under test (the only replica), and alerts go to the
// Alertmanager under test.
func prometheusConfig(t *testing.T, rulesFile, exporterAddr, amAddr string, targets map[string]string, scrapeInterval, evaluationInterval time.Duration) prometheusSetup {
	t.Helper()
	byName := shippedJobs(t)
	own := byName[exporterJob]
	setup := prometheusSetup{modules: map[string]string{}}
	jobs := []any{own}
	for _, name := range []string{probeJob, implicitJob} {
		probe := byName[name]
		if probe == nil {
			t.Fatalf("%s has no job %s", shippedPrometheusConfig, name)
		}
		if params, ok := probe["params"].(map[string]any); ok {
			if modules, ok := params["module"].([]any); ok && len(modules) == 1 {
				setup.modules[name], _ = modules[0].(string)
			}
		}
		if setup.modules[name] == "" {
			t.Fatalf("%s: job %s has no single module parameter", shippedPrometheusConfig, name)
		}
		// The shipped target labels (the account) stay, on the lab's target.
		labels := map[string]any{}
		statics, _ := probe["static_configs"].([]any)
		for _, sc := range statics {
			if scm, ok := sc.(map[string]any); ok {
				if l, ok := scm["labels"].(map[string]any); ok {
					labels = l
				}
			}
		}
		account, _ := labels["account"].(string)
		if account == "" || (setup.account != "" && account != setup.account) {
			t.Fatalf("%s: jobs %s and %s must label their targets with one account, got %q and %q",
				shippedPrometheusConfig, probeJob, implicitJob, setup.account, account)
		}
		setup.account = account
		probe["static_configs"] = []any{map[string]any{"targets": []any{targets[name]}, "labels": labels}}
		probe["relabel_configs"] = routeToExporters(t, probe["relabel_configs"], []string{exporterAddr})
		jobs = append(jobs, probe)
	}
	setup.module = setup.modules[probeJob]
	// Every job is scraped every scrapeInterval, and a probe may take all
	// of it.
	for _, j := range jobs {
		job := j.(map[string]any)
		delete(job, "scrape_interval")
		job["scrape_timeout"] = promDuration(scrapeInterval)
		delete(job, "file_sd_configs")
	}
	own["static_configs"] = []any{map[string]any{"targets": []any{exporterAddr}}}

	setup.config = marshalYAML(t, map[string]any{
		"global": map[string]any{
			"scrape_interval":     promDuration(scrapeInterval),
			"scrape_timeout":      promDuration(scrapeInterval),
			"evaluation_interval": promDuration(evaluationInterval),
		},
		"rule_files": []any{rulesFile},
		"alerting": map[string]any{
			"alertmanagers": []any{map[string]any{
				"static_configs": []any{map[string]any{"targets": []any{amAddr}}},
			}},
		},
		"scrape_configs": jobs,
	})
	return setup
}

// alertmanagerConfig takes the shipped routing tree and inhibit rules and
// points every receiver at the test's webhook (URL path = receiver name),
// with the grouping waits shortened: group_wait and group_interval to wait,
// except a route's own group_wait (the one that collects every job of an
// account into one notification), which becomes accountWait, scaled to the
// test's intervals as the shipped one is to prometheus.yml's. Nothing is
// repeated within the test (repeat_interval 1h), so that every notification
// the webhook receives is news. Only webhooks to the test server remain: no
// receiver can reach anything else.
func alertmanagerConfig(t *testing.T, webhookURL string, wait, accountWait time.Duration) []byte {
	t.Helper()
	var shipped map[string]any
	if err := yaml.Unmarshal(readShipped(t, shippedAlertmanagerConfig), &shipped); err != nil {
		t.Fatalf("%s: %v", shippedAlertmanagerConfig, err)
	}
	route, ok := shipped["route"].(map[string]any)
	if !ok {
		t.Fatalf("%s has no route", shippedAlertmanagerConfig)
	}
	var shorten func(r map[string]any)
	shorten = func(r map[string]any) {
		if _, ok := r["group_wait"]; ok {
			r["group_wait"] = promDuration(accountWait)
		}
		if _, ok := r["group_interval"]; ok {
			r["group_interval"] = promDuration(wait)
		}
		if _, ok := r["repeat_interval"]; ok {
			r["repeat_interval"] = "1h"
		}
		children, _ := r["routes"].([]any)
		for _, c := range children {
			if child, ok := c.(map[string]any); ok {
				shorten(child)
			}
		}
	}
	shorten(route)
	route["group_wait"] = promDuration(wait)
	route["group_interval"] = promDuration(wait)
	route["repeat_interval"] = "1h"

	shippedReceivers, _ := shipped["receivers"].([]any)
	var receivers []any
	for _, r := range shippedReceivers {
		rm, _ := r.(map[string]any)
		name, _ := rm["name"].(string)
		if name == "" {
			t.Fatalf("%s: receiver without a name: %v", shippedAlertmanagerConfig, r)
		}
		receivers = append(receivers, map[string]any{
			"name": name,
			"webhook_configs": []any{map[string]any{
				"url":           webhookURL + "/" + name,
				"send_resolved": true,
			}},
		})
	}
	if len(receivers) == 0 {
		t.Fatalf("%s has no receivers", shippedAlertmanagerConfig)
	}
	out := map[string]any{"route": route, "receivers": receivers}
	if inhibit, ok := shipped["inhibit_rules"]; ok {
		out["inhibit_rules"] = inhibit
	}
	return marshalYAML(t, out)
}
