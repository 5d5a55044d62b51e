package integration

import "testing"

// TestScaffolding checks the harness itself: the exporter binary starts with
// the generated configuration, and a probe of the lab comes back parsed.
func TestScaffolding(t *testing.T) {
	t.Parallel()
	l := requireLab(t)
	e := startExporter(t, l.LabConfig())

	m := e.probe(t, "banner", l.Target(l.PortPlain))
	if got := m.MustValue(t, "probe_success", nil); got != 1 {
		t.Errorf("banner: probe_success = %v, want 1\n%s", got, m)
	}
	if got := m.MustValue(t, "probe_smtp_status_code", map[string]string{"phase": "banner"}); got != 220 {
		t.Errorf("banner: status code %v, want 220", got)
	}

	m = e.probe(t, "submission_plain", l.Target(l.PortSubmission))
	if got := m.MustValue(t, "probe_smtp_auth_success", nil); got != 1 {
		t.Errorf("submission_plain: probe_smtp_auth_success = %v, want 1\n%s", got, m)
	}
}
