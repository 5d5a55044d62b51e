package examples

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// TestAlertmanagerInhibitions runs Alertmanager with the shipped routing
// and inhibit rules (the receivers replaced by a webhook of the test, which
// nothing reaches within its group_wait anyway), posts alerts as Prometheus
// would, and reads back which ones are inhibited: while an account's
// SMTPAuthenticationFailing fires, its other login alerts in every job are,
// those of another account and of targets without an account are not, and
// neither are its own other SMTPAuthenticationFailing alerts (one
// notification for them is the grouping's work).
func TestAlertmanagerInhibitions(t *testing.T) {
	binary := tool(t, "prometheus-alertmanager", "prometheus-alertmanager")
	var shipped map[string]any
	if err := yaml.Unmarshal(readFile(t, alertmanagerFile), &shipped); err != nil {
		t.Fatalf("%s: %v", alertmanagerFile, err)
	}
	hook := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer hook.Close()
	receivers, _ := shipped["receivers"].([]any)
	for _, r := range receivers {
		rm := r.(map[string]any)
		delete(rm, "webhook_configs")
		rm["webhook_configs"] = []any{map[string]any{"url": hook.URL + "/" + rm["name"].(string)}}
	}
	cfg, err := yaml.Marshal(shipped)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "alertmanager.yml")
	if err := os.WriteFile(cfgFile, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, binary,
		"--config.file="+cfgFile,
		"--storage.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr,
		"--cluster.listen-address=",
	)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("alertmanager output:\n%s", out.Bytes())
		}
	}()
	base := "http://" + addr
	waitUntil(t, "alertmanager ready", func() error {
		resp, err := http.Get(base + "/-/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s", resp.Status)
		}
		return nil
	})

	type alert map[string]string
	alerts := []struct {
		labels    alert
		inhibited bool
	}{
		{alert{"alertname": "SMTPAuthenticationFailing", "severity": "critical", "account": "probe", "job": "smtp_submission", "instance": "smtp.example.net:587", "phase": "auth", "reason": "auth_rejected"}, false},
		// Its own kind in another job of the account: grouped, not inhibited.
		{alert{"alertname": "SMTPAuthenticationFailing", "severity": "critical", "account": "probe", "job": "smtp_submissions", "instance": "smtp.example.net:465", "phase": "auth", "reason": "auth_rejected"}, false},
		{alert{"alertname": "SMTPAuthMechanismMissing", "severity": "warning", "account": "probe", "job": "smtp_submissions", "instance": "smtp.example.net:465", "mechanism": "CRAM-MD5"}, true},
		{alert{"alertname": "SMTPSlowAuthentication", "severity": "warning", "account": "probe", "job": "smtp_submission_canary", "instance": "smtp.example.net:587", "phase": "auth"}, true},
		// Another account.
		{alert{"alertname": "SMTPSlowAuthentication", "severity": "warning", "account": "other", "job": "smtp_other", "instance": "smtp.example.net:587", "phase": "auth"}, false},
		// Targets without an account: a failing login on one server says
		// nothing of slow logins on another.
		{alert{"alertname": "SMTPAuthenticationFailing", "severity": "critical", "job": "smtp_a", "instance": "a.example.net:587", "phase": "auth", "reason": "auth_rejected"}, false},
		{alert{"alertname": "SMTPSlowAuthentication", "severity": "warning", "job": "smtp_b", "instance": "b.example.net:587", "phase": "auth"}, false},
		// The same target without an account: the job and instance rule.
		{alert{"alertname": "SMTPAuthMechanismMissing", "severity": "warning", "job": "smtp_a", "instance": "a.example.net:587", "mechanism": "LOGIN"}, true},
	}
	var post []any
	for _, a := range alerts {
		post = append(post, map[string]any{"labels": a.labels, "startsAt": time.Now().Add(-time.Minute).Format(time.RFC3339)})
	}
	body, _ := json.Marshal(post)
	resp, err := http.Post(base+"/api/v2/alerts", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	respBody, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("posting alerts: %s: %s", resp.Status, respBody)
	}

	key := func(labels map[string]string) string {
		return labels["alertname"] + " " + labels["account"] + " " + labels["job"] + " " + labels["instance"]
	}
	var got map[string]bool
	// The inhibitor learns of source alerts on its own goroutine: poll until
	// every alert is there and what is inhibited stops changing.
	waitUntil(t, "every alert's inhibition as expected", func() error {
		resp, err := http.Get(base + "/api/v2/alerts?inhibited=true&silenced=true&active=true")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var list []struct {
			Labels map[string]string `json:"labels"`
			Status struct {
				InhibitedBy []string `json:"inhibitedBy"`
			} `json:"status"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
			return err
		}
		got = map[string]bool{}
		for _, a := range list {
			got[key(a.Labels)] = len(a.Status.InhibitedBy) > 0
		}
		var wrong []string
		for _, a := range alerts {
			inhibited, ok := got[key(a.labels)]
			if !ok || inhibited != a.inhibited {
				wrong = append(wrong, fmt.Sprintf("%s: inhibited %v (present %v), want %v", key(a.labels), inhibited, ok, a.inhibited))
			}
		}
		if len(wrong) > 0 {
			return fmt.Errorf("%s", strings.Join(wrong, "; "))
		}
		return nil
	})
}

// waitUntil polls check until it returns nil, for at most 20 seconds.
func waitUntil(t *testing.T, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
