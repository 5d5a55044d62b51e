package examples

import (
	"encoding/json"
	"slices"
	"sync"
	"testing"

	"github.com/smtp-exporter/smtp_exporter/config"
)

// TestPrometheusShardsByAccount has Prometheus' own relabeling run over
// every probe job and checks where each target is scraped: every target of
// one account at the same replica, whatever its module, each replica one of
// those the smtp_exporter job scrapes, and every module logging in with one
// username labelled with one account.
func TestPrometheusShardsByAccount(t *testing.T) {
	promtool := tool(t, "promtool", "prometheus")
	cfg, err := config.LoadFile(shippedConfig)
	if err != nil {
		t.Fatal(err)
	}
	scrapes := scrapeConfigs(t)
	var replicas []string
	for _, sc := range scrapes {
		if len(sc.Params["module"]) == 0 {
			for _, s := range sc.StaticConfigs {
				replicas = append(replicas, s.Targets...)
			}
		}
	}
	if len(replicas) < 2 {
		t.Fatalf("the exporter's own job scrapes %v; the example runs two replicas", replicas)
	}

	type routed struct{ job, module, target, account, replica string }
	var (
		mu  sync.Mutex
		all []routed
	)
	t.Run("discover", func(t *testing.T) {
		for _, sc := range scrapes {
			if len(sc.Params["module"]) != 1 {
				continue
			}
			t.Run(sc.JobName, func(t *testing.T) {
				t.Parallel()
				out := runTool(t, promtool, "check", "service-discovery", "--timeout=1s", prometheusConfig, sc.JobName)
				var targets []struct {
					Labels map[string]string `json:"labels"`
				}
				if err := json.Unmarshal([]byte(out), &targets); err != nil {
					t.Fatalf("promtool check service-discovery: %v\n%s", err, out)
				}
				mu.Lock()
				defer mu.Unlock()
				for _, target := range targets {
					l := target.Labels
					all = append(all, routed{sc.JobName, sc.Params["module"][0], l["instance"], l["account"], l["__address__"]})
				}
			})
		}
	})

	replicaOf := map[string]routed{}
	accountOf := map[string]routed{}
	for _, r := range all {
		if !slices.Contains(replicas, r.replica) {
			t.Errorf("job %s sends %s to %q, which is not a replica the smtp_exporter job scrapes (%v)", r.job, r.target, r.replica, replicas)
		}
		key := "module " + r.module
		if r.account != "" {
			key = "account " + r.account
		}
		if prev, ok := replicaOf[key]; ok && prev.replica != r.replica {
			t.Errorf("%s: job %s sends %s to %s, job %s sends %s to %s; one account, one replica",
				key, prev.job, prev.target, prev.replica, r.job, r.target, r.replica)
		}
		replicaOf[key] = r
		if auth := cfg.Modules[r.module].SMTP.Auth; auth != nil {
			if r.account == "" {
				t.Errorf("job %s: module %s logs in as %s, but its targets carry no account label to shard by", r.job, r.module, auth.Username)
			}
			if prev, ok := accountOf[auth.Username]; ok && prev.account != r.account {
				t.Errorf("modules %s and %s log in as %s but label their targets account=%q and %q", prev.module, r.module, auth.Username, prev.account, r.account)
			}
			accountOf[auth.Username] = r
		}
	}
	for key, r := range replicaOf {
		t.Logf("%s -> %s", key, r.replica)
	}
}
