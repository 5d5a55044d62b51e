package integration

import (
	"bytes"
	"crypto/hmac"
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

type redactionCase struct {
	module, mechanism string
	wrongPassword     bool
}

var redactionCases = []redactionCase{
	{"redact_plain", "PLAIN", false},
	{"redact_login", "LOGIN", false},
	{"redact_cram_md5", "CRAM-MD5", false},
	{"redact_scram_sha_1", "SCRAM-SHA-1", false},
	{"redact_scram_sha_256", "SCRAM-SHA-256", false},
	{"redact_wrong_plain", "PLAIN", true},
	{"redact_wrong_login", "LOGIN", true},
	{"redact_wrong_cram_md5", "CRAM-MD5", true},
	{"redact_wrong_scram_sha_256", "SCRAM-SHA-256", true},
}

func redactionModules(l *Lab, _ string) (map[string]moduleSpec, error) {
	mods := map[string]moduleSpec{}
	for _, c := range redactionCases {
		spec := moduleSpec{TLS: "starttls", Port: l.PortSubmission, Mechanism: c.mechanism}
		if c.wrongPassword {
			spec.Password = "not-" + l.Password
			// Every probe must log in and be redacted, also when the
			// tests run more than once (-count).
			spec.AuthFailureBackoff = "0s"
		}
		mods[c.module] = spec
	}
	return mods, nil
}

// debug=true against the real server shows the whole conversation with
// every line of the AUTH exchange replaced, and no form of the password
// anywhere: not in the debug output, the exporter's log or /config.
func TestDebugOutputRedactsCredentials(t *testing.T) {
	t.Parallel()
	l, e := sharedExporter(t)
	for _, c := range redactionCases {
		t.Run(c.module, func(t *testing.T) {
			t.Parallel()
			password := l.Password
			if c.wrongPassword {
				password = "not-" + l.Password
			}
			r := e.probeRaw(t, c.module, l.Target(l.PortSubmission), url.Values{"debug": {"true"}})
			if r.Status != http.StatusOK {
				t.Fatalf("debug probe: status %d:\n%s", r.Status, r.Body)
			}
			transcript := debugTranscript(t, r.Body)

			// The AUTH command, the client's answers to each 334, the
			// server's verdict.
			i := 0
			for i < len(transcript) && !(transcript[i].Dir == "C" && strings.HasPrefix(transcript[i].Text, "AUTH ")) {
				i++
			}
			if i == len(transcript) {
				t.Fatalf("no AUTH in the transcript:\n%s", r.Body)
			}
			wantCommand := "AUTH " + c.mechanism
			if c.mechanism == "PLAIN" || strings.HasPrefix(c.mechanism, "SCRAM-") {
				wantCommand += " <redacted>" // the initial response
			}
			if transcript[i].Text != wantCommand {
				t.Errorf("AUTH line %q, want %q", transcript[i].Text, wantCommand)
			}
			var challenges []string
			answers := 0
			verdict := ""
			for _, line := range transcript[i+1:] {
				if line.Dir == "S" {
					if challenge, ok := strings.CutPrefix(line.Text, "334 "); ok {
						challenges = append(challenges, challenge)
						continue
					}
					verdict = line.Text
					break
				}
				if line.Dir == "C" {
					answers++
					if line.Text != "<redacted>" {
						t.Errorf("client line %q in the AUTH exchange, want <redacted>", line.Text)
					}
				}
			}
			// SCRAM answers the server-first message with its proof and the
			// server-final message with an empty line; Dovecot refuses a
			// wrong proof with 535 at once, without a server-final message.
			wantAnswers := map[string]int{"PLAIN": 0, "LOGIN": 2, "CRAM-MD5": 1, "SCRAM-SHA-1": 2, "SCRAM-SHA-256": 2}[c.mechanism]
			if c.wrongPassword && strings.HasPrefix(c.mechanism, "SCRAM-") {
				wantAnswers = 1
			}
			if answers != wantAnswers || len(challenges) != wantAnswers {
				t.Errorf("%d challenges and %d answers, want %d of each", len(challenges), answers, wantAnswers)
			}
			wantVerdict := "235 2.7.0 "
			if c.wrongPassword {
				wantVerdict = "535 5.7.8 "
			}
			if !strings.HasPrefix(verdict, wantVerdict) {
				t.Errorf("server's verdict %q, want %s...", verdict, wantVerdict)
			}

			secrets := passwordForms(l.User, password)
			if c.mechanism == "CRAM-MD5" && len(challenges) == 1 {
				secrets = append(secrets, cramMD5Forms(t, l.User, password, challenges[0])...)
			}
			e.CompleteTranscript(t, c.module) // the log is all there
			log := strings.Join(e.ModuleLog(c.module), "\n")
			for _, secret := range secrets {
				if strings.Contains(r.Body, secret) {
					t.Errorf("debug output contains the secret %q", redactForReport(secret, l.Password))
				}
				if strings.Contains(log, secret) {
					t.Errorf("exporter log contains the secret %q", redactForReport(secret, l.Password))
				}
			}
			if c.wrongPassword && !strings.Contains(r.Body, "password: <secret>") {
				t.Errorf("the module configuration in the debug output does not hide the inline password:\n%s", r.Body)
			}
		})
	}
	t.Run("/config", func(t *testing.T) {
		t.Parallel()
		page := httpGet(t, e.URL+"/config")
		if strings.Contains(page, l.Password) || !strings.Contains(page, "<secret>") {
			t.Errorf("/config shows an inline password instead of <secret>")
		}
	})
}

// cramMD5Forms returns the CRAM-MD5 response to challenge (base64 as the
// server sent it), alone and as sent.
func cramMD5Forms(t *testing.T, user, password, challenge string) []string {
	t.Helper()
	decoded, err := base64.StdEncoding.DecodeString(challenge)
	if err != nil {
		t.Fatalf("CRAM-MD5 challenge %q: %v", challenge, err)
	}
	mac := hmac.New(md5.New, []byte(password))
	mac.Write(decoded)
	digest := hex.EncodeToString(mac.Sum(nil))
	response := user + " " + digest
	return []string{
		digest, response,
		base64.StdEncoding.EncodeToString([]byte(response)),
		base64.RawStdEncoding.EncodeToString([]byte(response)),
	}
}

// redactForReport names a leaked secret in a failure message without
// printing the password itself.
func redactForReport(secret, password string) string {
	if strings.Contains(secret, password) {
		return strings.ReplaceAll(secret, password, "<the lab password>")
	}
	if len(secret) > 8 {
		return secret[:4] + "…" + secret[len(secret)-4:]
	}
	return "…"
}

func httpGet(t *testing.T, u string) string {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status %s:\n%s", u, resp.Status, body)
	}
	return string(body)
}

// selfMetrics returns the exporter's own metrics from /metrics.
func (e *Exporter) selfMetrics(t *testing.T) Metrics {
	t.Helper()
	body := httpGet(t, e.URL+"/metrics")
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader([]byte(body)))
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return Metrics{families: families, text: body}
}

// The password file is read at every probe: rotating it while the exporter
// runs takes effect at the next probe, without a reload, in both
// directions.
func TestPasswordFileRotation(t *testing.T) {
	t.Parallel()
	l := requireLab(t)
	dir := t.TempDir()
	passwordFile := filepath.Join(dir, "password")
	original, err := os.ReadFile(l.PasswordFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(passwordFile, original, 0o600); err != nil {
		t.Fatal(err)
	}
	const module = "rotating"
	e := startExporter(t, l.modulesYAML(map[string]moduleSpec{
		module: {TLS: "starttls", Port: l.PortSubmission, Mechanism: "PLAIN", PasswordFile: passwordFile},
	}))
	target := l.Target(l.PortSubmission)
	reloadedAt := e.selfMetrics(t).MustValue(t, "smtp_exporter_config_last_reload_success_timestamp_seconds", nil)

	loginWorks := func(step string) {
		t.Helper()
		m := e.probe(t, module, target)
		if m.MustValue(t, "probe_success", nil) != 1 || m.MustValue(t, "probe_smtp_status_code", lbl("phase", "auth")) != 235 {
			t.Fatalf("%s: login failed:\n%s", step, m)
		}
	}
	loginWorks("with the lab's password")

	if err := os.WriteFile(passwordFile, []byte("not-"+l.Password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	m := e.probe(t, module, target)
	m.Expect(t, "probe_success", nil, 0)
	m.Expect(t, "probe_smtp_status_code", lbl("phase", "auth"), 535)
	m.Expect(t, "probe_smtp_failure_info", lbl("phase", "auth", "reason", "auth_rejected"), 1)
	m.Expect(t, "probe_smtp_result_age_seconds", nil, 0)

	// While the password stays wrong, auth_failure_backoff (5m by
	// default) answers with the rejection again instead of logging in.
	m = e.probe(t, module, target)
	m.Expect(t, "probe_success", nil, 0)
	m.Expect(t, "probe_smtp_failure_info", lbl("phase", "auth", "reason", "auth_rejected"), 1)
	if age := m.MustValue(t, "probe_smtp_result_age_seconds", nil); age <= 0 {
		t.Errorf("probe_smtp_result_age_seconds %v for a held login, want the age of the rejection", age)
	}
	if held := waitLogLines(e, "Login held", 1); held != 1 {
		t.Errorf("%d warnings about a held login, want 1", held)
	}
	if sessions := waitLogLines(e, "Beginning probe", 2); sessions != 2 {
		t.Errorf("%d probes ran, want 2: the login after the rejection must be held", sessions)
	}

	// Back the way a Kubernetes Secret changes: a new file renamed over.
	next := filepath.Join(dir, "password.new")
	if err := os.WriteFile(next, original, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(next, passwordFile); err != nil {
		t.Fatal(err)
	}
	loginWorks("with the lab's password restored")
	if released := waitLogLines(e, "Releasing the hold on the account's logins: its credentials changed", 1); released != 1 {
		t.Errorf("%d log lines about releasing the hold, want 1", released)
	}

	if err := os.Remove(passwordFile); err != nil {
		t.Fatal(err)
	}
	m = e.probe(t, module, target)
	m.Expect(t, "probe_success", nil, 0)
	m.Expect(t, "probe_smtp_failure_info", lbl("phase", "setup", "reason", "credentials_unavailable"), 1)
	m.Expect(t, "probe_smtp_status_code", lbl("phase", "connect"), 0)
	m.Expect(t, "probe_smtp_duration_seconds", lbl("phase", "connect"), 0)

	self := e.selfMetrics(t)
	self.Expect(t, "smtp_exporter_config_last_reload_success_timestamp_seconds", nil, reloadedAt)
	self.Expect(t, "smtp_exporter_config_last_reload_successful", nil, 1)
}

// waitLogLines counts the exporter's log lines with message msg, waiting
// a little for want of them: the log comes through a pipe.
func waitLogLines(e *Exporter, msg string, want int) int {
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := 0
		for line := range strings.Lines(e.Output()) {
			if m, _ := logAttr(line, "msg"); m == msg {
				n++
			}
		}
		if n >= want || time.Now().After(deadline) {
			return n
		}
		time.Sleep(20 * time.Millisecond)
	}
}
