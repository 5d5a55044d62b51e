package integration

import (
	"net/http"
	"os"
	"strings"
	"testing"
)

// A reload with a bad configuration is refused with the reason, and the
// modules loaded before keep logging in to the real server; a good one then
// replaces them.
func TestReloadBadConfigKeepsModules(t *testing.T) {
	t.Parallel()
	l := requireLab(t)
	good := l.LabConfig()
	e := startExporter(t, good)
	target := l.Target(l.PortSubmission)

	loginWorks := func(step string) {
		t.Helper()
		m := e.probe(t, "submission_plain", target)
		if m.MustValue(t, "probe_success", nil) != 1 || m.MustValue(t, "probe_smtp_status_code", lbl("phase", "auth")) != 235 {
			t.Fatalf("%s: submission_plain no longer logs in:\n%s", step, m)
		}
	}
	loginWorks("before any reload")

	for _, bad := range []struct{ name, yaml, reason string }{
		{"not YAML", "modules:\n  broken: [\n", "yaml"},
		{"bad TLS mode", strings.Replace(good, "tls: starttls", "tls: sometimes", 1), "sometimes"},
		{"unknown key", strings.Replace(good, "    timeout: 10s\n", "    timeout: 10s\n    retries: 3\n", 1), "retries"},
	} {
		if err := os.WriteFile(e.ConfigFile, []byte(bad.yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		code, body := e.Reload(t)
		if code != http.StatusInternalServerError || !strings.Contains(body, bad.reason) {
			t.Errorf("%s: reload answered %d %q, want 500 naming %q", bad.name, code, body, bad.reason)
		}
		e.selfMetrics(t).Expect(t, "smtp_exporter_config_last_reload_successful", nil, 0)
		loginWorks("after the refused reload of " + bad.name)
	}

	next := l.modulesYAML(map[string]moduleSpec{
		"after_reload": {TLS: "implicit", Port: l.PortImplicit, Mechanism: "LOGIN"},
	})
	if err := os.WriteFile(e.ConfigFile, []byte(next), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, body := e.Reload(t); code != http.StatusOK {
		t.Fatalf("reload of a good configuration: %d %q", code, body)
	}
	e.selfMetrics(t).Expect(t, "smtp_exporter_config_last_reload_successful", nil, 1)
	m := e.probe(t, "after_reload", l.Target(l.PortImplicit))
	m.Expect(t, "probe_success", nil, 1)
	m.Expect(t, "probe_smtp_status_code", lbl("phase", "auth"), 235)
	if r := e.probeRaw(t, "submission_plain", target, nil); r.Status != http.StatusBadRequest {
		t.Errorf("a module of the replaced configuration answered %d, want 400", r.Status)
	}
}
