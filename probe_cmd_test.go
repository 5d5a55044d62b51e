package main

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/smtp-exporter/smtp_exporter/collector"
	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
	"github.com/smtp-exporter/smtp_exporter/prober"
)

const (
	probeUser     = "probe@example.net"
	probePassword = "c0rrect-Horse-battery"
)

// runCaptured runs the program with args as main does, and returns its exit
// code and what it wrote to stdout and stderr.
func runCaptured(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	capture := func(f **os.File) func() string {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		saved := *f
		*f = w
		done := make(chan string)
		go func() {
			b, _ := io.ReadAll(r)
			r.Close()
			done <- string(b)
		}()
		return func() string {
			*f = saved
			w.Close()
			return <-done
		}
	}
	restoreOut, restoreErr := capture(&os.Stdout), capture(&os.Stderr)
	code = run(args, make(chan os.Signal, 1))
	return code, restoreOut(), restoreErr()
}

// probeConfig writes a configuration with a STARTTLS submission module that
// logs in as probeUser, and returns its path.
func probeConfig(t *testing.T, mechanism, allowed string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "smtp_exporter.yml")
	writeFile(t, path, `modules:
  submission:
    timeout: 5s
    smtp:
      tls: starttls
      preferred_ip_protocol: ip4
      tls_config:
        ca_file: `+smtptest.Certs().WriteCAFile(t)+`
      auth:
        mechanism: `+mechanism+`
        username: `+probeUser+`
        password: "`+probePassword+`"
      allowed_targets: ["`+allowed+`"]
`)
	return path
}

func submissionServer(t *testing.T, opts smtptest.Options) *smtptest.Server {
	t.Helper()
	opts.TLS = smtptest.StartTLS
	opts.Username, opts.Password = probeUser, probePassword
	opts.AuthRequiresTLS = true
	opts.Size = 10 << 20
	return smtptest.NewServer(t, opts)
}

func decodeReport(t *testing.T, stdout string) (probeReport, map[string]json.RawMessage) {
	t.Helper()
	var rep probeReport
	var fields map[string]json.RawMessage
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, stdout)
	}
	if err := json.Unmarshal([]byte(stdout), &fields); err != nil {
		t.Fatal(err)
	}
	return rep, fields
}

func phaseOf(rep probeReport, phase prober.Phase) reportPhase {
	for _, p := range rep.Phases {
		if p.Phase == string(phase) {
			return p
		}
	}
	return reportPhase{}
}

// textRows returns the rows of the text output, each split into its
// columns.
func textRows(stdout string) [][]string {
	var rows [][]string
	for _, line := range strings.Split(stdout, "\n") {
		cols := strings.Split(strings.TrimSpace(line), "  ")
		var kept []string
		for _, c := range cols {
			if c = strings.TrimSpace(c); c != "" {
				kept = append(kept, c)
			}
		}
		if len(kept) > 0 {
			rows = append(rows, kept)
		}
	}
	return rows
}

// row returns the first row whose first column is name.
func row(rows [][]string, name string) []string {
	for _, r := range rows {
		if r[0] == name {
			return r
		}
	}
	return nil
}

func TestProbeCommandSuccess(t *testing.T) {
	srv := submissionServer(t, smtptest.Options{})
	cfg := probeConfig(t, "PLAIN", "127.0.0.1")

	t.Run("text", func(t *testing.T) {
		code, stdout, stderr := runCaptured(t, "probe", "--config.file="+cfg, "--module=submission", srv.Addr())
		if code != 0 {
			t.Fatalf("exit code %d, want 0\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
		}
		rows := textRows(stdout)
		if r := row(rows, "Result"); len(r) < 2 || !strings.HasPrefix(r[1], "SUCCESS in ") {
			t.Errorf("Result row %q", r)
		}
		if r := row(rows, "Address"); len(r) < 2 || r[1] != srv.Addr() {
			t.Errorf("Address row %q, want %s", r, srv.Addr())
		}
		for phase, reply := range map[string]string{
			"banner": "220", "ehlo": "250", "starttls": "220 2.0.0", "ehlo_tls": "250", "auth": "235 2.7.0",
		} {
			if r := row(rows, phase); len(r) < 3 || r[2] != reply {
				t.Errorf("phase row %q, want reply %q", r, reply)
			}
		}
		for name, want := range map[string]string{
			"verified":        "yes",
			"subject":         "CN=localhost,O=smtp_exporter tests",
			"names":           "localhost, 127.0.0.1, ::1",
			"auth mechanisms": "PLAIN LOGIN CRAM-MD5 (used PLAIN: accepted)",
			"size limit":      "10485760 bytes (10.0 MiB)",
		} {
			if r := row(rows, name); len(r) < 2 || r[1] != want {
				t.Errorf("%s row %q, want %q", name, r, want)
			}
		}
		if r := row(rows, "version"); len(r) < 2 || !strings.HasPrefix(r[1], "TLS 1.") {
			t.Errorf("version row %q", r)
		}
		if r := row(rows, "ehlo_tls keywords"); len(r) < 2 || !slices.Contains(strings.Fields(r[1]), "AUTH") {
			t.Errorf("ehlo_tls row %q lacks AUTH", r)
		}
		if r := row(rows, "expires"); len(r) < 2 || !strings.HasPrefix(r[1], "in ") {
			t.Errorf("expires row %q", r)
		}
		if strings.Contains(stdout, "Transcript") || strings.Contains(stdout, "Failed") {
			t.Errorf("unexpected section:\n%s", stdout)
		}
		if stderr != "" {
			t.Errorf("stderr: %s", stderr)
		}
	})

	t.Run("json", func(t *testing.T) {
		code, stdout, stderr := runCaptured(t, "probe", "--config.file="+cfg, "--module=submission", "--output=json", srv.Addr())
		if code != 0 {
			t.Fatalf("exit code %d, want 0\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
		}
		rep, fields := decodeReport(t, stdout)
		// The field names are documented: a change is a change of the
		// interface.
		var keys []string
		for k := range fields {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		want := []string{"address", "auth", "capabilities", "certificates", "delivery", "dns_lookup_seconds", "duration_seconds",
			"failure", "module", "phases", "probe_id", "success", "target", "time", "timeout_seconds", "tls", "transcript"}
		if !slices.Equal(keys, want) {
			t.Errorf("fields %q, want %q", keys, want)
		}
		if !rep.Success || rep.Failure != nil || string(fields["failure"]) != "null" {
			t.Errorf("success %v, failure %s", rep.Success, fields["failure"])
		}
		if rep.Module != "submission" || rep.Target != srv.Addr() || rep.Address != srv.Addr() || rep.TimeoutSeconds != 5 {
			t.Errorf("module %q target %q address %q timeout %v", rep.Module, rep.Target, rep.Address, rep.TimeoutSeconds)
		}
		if p := phaseOf(rep, prober.PhaseAuth); !p.Ran || p.Code != 235 || p.EnhancedCode != "2.7.0" || p.Failed {
			t.Errorf("auth phase %+v", p)
		}
		if p := phaseOf(rep, prober.PhaseQuit); !p.Ran || p.Code != 221 {
			t.Errorf("quit phase %+v", p)
		}
		if rep.TLS == nil || !rep.TLS.Verified || !strings.HasPrefix(rep.TLS.Version, "TLS 1.") || rep.TLS.Cipher == "" {
			t.Errorf("tls %+v", rep.TLS)
		}
		if len(rep.Certificates) == 0 || !slices.Equal(rep.Certificates[0].Names, smtptest.LoopbackNames) ||
			rep.Certificates[0].Expired || rep.Certificates[0].Issuer != "CN=smtptest CA,O=smtp_exporter tests" {
			t.Errorf("certificates %+v", rep.Certificates)
		}
		caps := rep.Capabilities
		if !slices.Contains(caps.EHLO, "STARTTLS") || !slices.Contains(caps.EHLOTLS, "AUTH") ||
			!slices.Equal(caps.AuthMechanisms, smtptest.DefaultMechanisms) || caps.SizeLimitBytes == nil || *caps.SizeLimitBytes != 10<<20 {
			t.Errorf("capabilities %+v", caps)
		}
		if rep.Auth != (reportAuth{Attempted: true, Success: true, Mechanism: "PLAIN"}) {
			t.Errorf("auth %+v", rep.Auth)
		}
		if rep.Delivery != nil || rep.Transcript != nil {
			t.Errorf("delivery %+v, transcript %v: want null", rep.Delivery, rep.Transcript)
		}
	})
}

func TestProbeCommandWrongPassword(t *testing.T) {
	srv := submissionServer(t, smtptest.Options{})
	srv.SetPassword("something-else-entirely")
	cfg := probeConfig(t, "PLAIN", "127.0.0.1")
	meaning := collector.ReasonMeaning(prober.ReasonAuthRejected)

	code, stdout, stderr := runCaptured(t, "probe", "--config.file="+cfg, "--module=submission", "--output=json", srv.Addr())
	if code != 1 {
		t.Fatalf("exit code %d, want 1\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	rep, _ := decodeReport(t, stdout)
	if rep.Success || rep.Failure == nil {
		t.Fatalf("success %v, failure %+v", rep.Success, rep.Failure)
	}
	if f := rep.Failure; f.Phase != "auth" || f.Reason != "auth_rejected" || f.Meaning != meaning || f.Detail == "" {
		t.Errorf("failure %+v", f)
	}
	if p := phaseOf(rep, prober.PhaseAuth); !p.Failed || p.Code != 535 || p.EnhancedCode != "5.7.8" {
		t.Errorf("auth phase %+v", p)
	}
	if rep.Auth != (reportAuth{Attempted: true, Success: false, Mechanism: "PLAIN"}) {
		t.Errorf("auth %+v", rep.Auth)
	}

	code, stdout, _ = runCaptured(t, "probe", "--config.file="+cfg, "--module=submission", srv.Addr())
	if code != 1 {
		t.Fatalf("text: exit code %d, want 1", code)
	}
	rows := textRows(stdout)
	if r := row(rows, "Failed"); len(r) < 2 || r[1] != "phase auth, reason auth_rejected" {
		t.Errorf("Failed row %q", r)
	}
	if r := row(rows, "Meaning"); len(r) < 2 || r[1] != meaning {
		t.Errorf("Meaning row %q, want %q", r, meaning)
	}
	if r := row(rows, "auth"); len(r) < 4 || r[2] != "535 5.7.8" || r[3] != "FAILED: auth_rejected" {
		t.Errorf("auth phase row %q", r)
	}
}

// TestProbeCommandTranscript runs LOGIN, which sends the password on a line
// of its own, and requires the transcript in both outputs without any form
// of it.
func TestProbeCommandTranscript(t *testing.T) {
	srv := submissionServer(t, smtptest.Options{})
	cfg := probeConfig(t, "LOGIN", "127.0.0.1")
	secrets := []string{
		probePassword,
		base64.StdEncoding.EncodeToString([]byte(probePassword)),
		base64.StdEncoding.EncodeToString([]byte(probeUser)),
	}
	for _, output := range []string{"text", "json"} {
		code, stdout, stderr := runCaptured(t, "probe", "--config.file="+cfg, "--module=submission", "--transcript", "--output="+output, srv.Addr())
		if code != 0 {
			t.Fatalf("%s: exit code %d, want 0\nstdout:\n%s\nstderr:\n%s", output, code, stdout, stderr)
		}
		for _, s := range secrets {
			if strings.Contains(stdout+stderr, s) {
				t.Errorf("%s output holds a credential %q:\n%s", output, s, stdout)
			}
		}
		var lines []string
		if output == "json" {
			rep, _ := decodeReport(t, stdout)
			for _, l := range rep.Transcript {
				lines = append(lines, l.Dir+": "+l.Text)
			}
		} else {
			_, transcript, found := strings.Cut(stdout, "\nTranscript (credentials replaced)\n")
			if !found {
				t.Fatalf("text output has no transcript:\n%s", stdout)
			}
			for _, l := range strings.Split(strings.TrimSpace(transcript), "\n") {
				_, l, _ = strings.Cut(l, "] ")
				lines = append(lines, l)
			}
		}
		for _, want := range []string{"S: 220 mx.smtptest.invalid ESMTP smtptest", "C: STARTTLS", "C: AUTH LOGIN", "S: 235 2.7.0 Authentication successful", "C: QUIT"} {
			if !slices.Contains(lines, want) {
				t.Errorf("%s transcript lacks %q:\n%s", output, want, strings.Join(lines, "\n"))
			}
		}
	}
}

func TestProbeCommandTargetNotAllowed(t *testing.T) {
	srv := submissionServer(t, smtptest.Options{})
	cfg := probeConfig(t, "PLAIN", "mx.example.net")
	code, stdout, stderr := runCaptured(t, "probe", "--config.file="+cfg, "--module=submission", "--output=json", srv.Addr())
	srv.Close()
	if code != 1 {
		t.Fatalf("exit code %d, want 1\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	rep, _ := decodeReport(t, stdout)
	if f := rep.Failure; f == nil || f.Phase != "setup" || f.Reason != "target_not_allowed" ||
		f.Meaning != collector.ReasonMeaning(prober.ReasonTargetNotAllowed) {
		t.Errorf("failure %+v", f)
	}
	if rep.Address != "" {
		t.Errorf("address %q, want none", rep.Address)
	}
	if n := srv.Connections(); n != 0 {
		t.Errorf("the server saw %d connections, want none", n)
	}
}

// TestProbeCommandEscapesServerText has a server greet with terminal
// control sequences and a bidirectional override, which fails the probe
// (protocol_error): the output shows them as escapes.
func TestProbeCommandEscapesServerText(t *testing.T) {
	srv := submissionServer(t, smtptest.Options{Greeting: []string{"mx \x1b]0;owned\x07 ESMTP \u202eevil"}})
	cfg := probeConfig(t, "PLAIN", "127.0.0.1")
	for _, output := range []string{"text", "json"} {
		code, stdout, _ := runCaptured(t, "probe", "--config.file="+cfg, "--module=submission", "--transcript", "--output="+output, srv.Addr())
		if code != 1 {
			t.Fatalf("%s: exit code %d, want 1:\n%s", output, code, stdout)
		}
		if strings.ContainsAny(stdout, "\x1b\x07\u202e") {
			t.Errorf("%s output holds raw control characters:\n%q", output, stdout)
		}
		if want := `mx \x1b]0;owned\x07 ESMTP \u202eevil`; output == "text" && !strings.Contains(stdout, want) {
			t.Errorf("text output lacks %q:\n%s", want, stdout)
		}
	}
}

func TestProbeCommandBadUsage(t *testing.T) {
	cfg := probeConfig(t, "PLAIN", "127.0.0.1")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown module", []string{"probe", "--config.file=" + cfg, "--module=nope", "127.0.0.1"}, `unknown module "nope"`},
		{"missing target", []string{"probe", "--config.file=" + cfg, "--module=submission"}, "required argument 'target' not provided"},
		{"missing module", []string{"probe", "--config.file=" + cfg, "127.0.0.1"}, "required flag(s) '--module' not provided"},
		{"empty target", []string{"probe", "--config.file=" + cfg, "--module=submission", ""}, "target is missing"},
		{"bad output", []string{"probe", "--config.file=" + cfg, "--module=submission", "--output=yaml", "127.0.0.1"}, "enum value must be one of text,json, got 'yaml'"},
		{"invalid config", []string{"probe", "--config.file=config/testdata/bad-port.yml", "--module=m", "127.0.0.1"}, "bad-port.yml: line "},
		{"unreadable config", []string{"probe", "--config.file=does-not-exist.yml", "--module=m", "127.0.0.1"}, "does-not-exist.yml: no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCaptured(t, tc.args...)
			if code != 2 {
				t.Errorf("exit code %d, want 2", code)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr %q lacks %q", stderr, tc.want)
			}
			if stdout != "" {
				t.Errorf("stdout %q, want nothing", stdout)
			}
		})
	}
}

// TestServerIsTheDefaultCommand starts the exporter with its flags alone,
// as before there were commands, and with the serve command named.
func TestServerIsTheDefaultCommand(t *testing.T) {
	path := filepath.Join(t.TempDir(), "smtp_exporter.yml")
	writeFile(t, path, "modules:\n  m:\n    smtp:\n      tls: none\n")
	for _, args := range [][]string{nil, {"serve"}} {
		base, _ := exporter(t, path, args...)
		if code, _ := get(t, base+"/metrics"); code != 200 {
			t.Errorf("%q: GET /metrics: status %d", args, code)
		}
	}
}

// TestProbeCommandTimeout checks that --timeout shortens the probe and is
// cut to the module's timeout, as a scrape timeout is.
func TestProbeCommandTimeout(t *testing.T) {
	srv := submissionServer(t, smtptest.Options{})
	cfg := probeConfig(t, "PLAIN", "127.0.0.1")
	for flag, want := range map[string]float64{"": 5, "--timeout=2s": 2, "--timeout=1m": 5} {
		args := []string{"probe", "--config.file=" + cfg, "--module=submission", "--output=json", srv.Addr()}
		if flag != "" {
			args = append(args, flag)
		}
		code, stdout, stderr := runCaptured(t, args...)
		if code != 0 {
			t.Fatalf("%q: exit code %d, want 0: %s", flag, code, stderr)
		}
		if rep, _ := decodeReport(t, stdout); rep.TimeoutSeconds != want {
			t.Errorf("%q: timeout_seconds %v, want %v", flag, rep.TimeoutSeconds, want)
		}
	}
	code, _, stderr := runCaptured(t, "probe", "--config.file="+cfg, "--module=submission", "--timeout=-1s", srv.Addr())
	if code != 2 || !strings.Contains(stderr, "--timeout must not be negative") {
		t.Errorf("negative timeout: exit code %d, stderr %q; want 2", code, stderr)
	}
}
