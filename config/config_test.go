package config

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Each file in testdata holds one mistake; the error must name its line
// and field and say what is wrong, exactly.
func TestLoadRejectsInvalidFiles(t *testing.T) {
	cases := []struct{ file, want string }{
		{"auth-bad-mechanism.yml", "line 5: modules.submission.smtp.auth.mechanism: unsupported mechanism \"NTLM\" (supported: auto, SCRAM-SHA-256, SCRAM-SHA-1, CRAM-MD5, PLAIN, LOGIN, OAUTHBEARER, XOAUTH2)"},
		{"auth-both-passwords.yml", "line 4: modules.submission.smtp.auth: set only one of password and password_file"},
		{"auth-no-password.yml", "line 4: modules.submission.smtp.auth: one of password, password_file, token_file and oauth2 must be set"},
		{"auth-password-and-token.yml", "line 4: modules.submission.smtp.auth: set either a password (password, password_file) or a token (token_file, oauth2), not both"},
		{"auth-password-mechanism-with-token.yml", "line 5: modules.submission.smtp.auth.mechanism: SCRAM-SHA-256 logs in with a password, but the module has a token (token_file or oauth2)"},
		{"auth-token-file-and-oauth2.yml", "line 4: modules.submission.smtp.auth: set only one of token_file and oauth2"},
		{"auth-token-mechanism-with-password.yml", "line 5: modules.submission.smtp.auth.mechanism: XOAUTH2 logs in with a token: set token_file or oauth2 instead of a password"},
		{"auth-username-crlf.yml", "line 5: modules.submission.smtp.auth.username: must not contain CR, LF or other control characters"},
		{"auth-without-allowed-targets.yml", "line 4: modules.submission.smtp.auth: a module with credentials must list the targets they may be sent to in allowed_targets (use \"*\" to allow any)"},
		{"bad-allowed-target-any-port.yml", "line 4: modules.smtp_banner.smtp.allowed_targets.0: \"*:smtp\": invalid port \"smtp\""},
		{"bad-allowed-target-port.yml", "line 4: modules.submission.smtp.allowed_targets.0: \"smtp.example.net:0\": invalid port \"0\""},
		{"bad-allowed-target.yml", "line 6: modules.submission.smtp.allowed_targets.1: \"smtp example net\" is not a host name, host:port, IP address or CIDR prefix"},
		{"bad-ehlo.yml", "line 4: modules.submission.smtp.ehlo: \"probe.example.net\\r\\nMAIL FROM:<x@y>\" is not a host name or address literal"},
		{"bad-ip-protocol.yml", "line 4: modules.submission.smtp.preferred_ip_protocol: must be ip4 or ip6, got \"ipv4\""},
		{"bad-port.yml", "line 4: modules.submission.smtp.port: must be between 1 and 65535, got 70000"},
		{"bad-source-ip.yml", "line 4: modules.submission.smtp.source_ip_address: \"10.0.0.300\" is not an IP address"},
		{"bad-tls-config.yml", "at most one of ca, ca_file & ca_ref must be configured"},
		{"bad-tls-mode.yml", "line 4: modules.submission.smtp.tls: must be one of none, starttls, implicit; got \"ssl\""},
		{"bad-yaml-type.yml", "yaml: unmarshal errors:\n  line 4: cannot unmarshal !!str `submission` into int"},
		{"delivery-bad-address.yml", "line 9: modules.canary.smtp.mail.delivery.imap.address: \"imap.example.net\" is not host:port"},
		{"delivery-bad-mailbox.yml", "line 12: modules.canary.smtp.mail.delivery.imap.mailbox: must be a mailbox name of at most 255 bytes without control characters"},
		{"delivery-bad-mechanism.yml", "line 10: modules.canary.smtp.mail.delivery.imap.mechanism: unsupported mechanism \"SCRAM-SHA-256\" for IMAP (supported: auto, LOGIN, PLAIN, OAUTHBEARER, XOAUTH2)"},
		{"delivery-lost-before-late.yml", "line 13: modules.canary.smtp.mail.delivery.lost_after: must be greater than late_after (10m)"},
		{"delivery-no-password.yml", "line 8: modules.canary.smtp.mail.delivery.imap: one of password, password_file, token_file and oauth2 must be set"},
		{"delivery-plaintext.yml", "line 10: modules.canary.smtp.mail.delivery.imap.tls: must be implicit or starttls (the login must not travel in clear); got \"none\""},
		{"delivery-unknown-field.yml", "yaml: unmarshal errors:\n  line 12: field folder not found"},
		{"delivery-without-data.yml", "line 8: modules.canary.smtp.mail.delivery: needs data: true: only a canary that is sent can be delivered"},
		{"delivery-zero-late.yml", "line 12: modules.canary.smtp.mail.delivery.late_after: must be greater than 0"},
		{"expect-rejected-with-mail.yml", "line 8: modules.disabled_account.smtp.expect_auth_rejected: cannot be combined with mail: no mail can be sent after a refused login"},
		{"expect-rejected-without-auth.yml", "line 4: modules.disabled_account.smtp.expect_auth_rejected: needs an auth block: the credentials that must be refused"},
		{"mail-bad-from.yml", "line 5: modules.canary.smtp.mail.from: \"Probe <probe@example.net>\" must be a bare address such as probe@example.net"},
		{"mail-bad-priority.yml", "line 8: modules.canary.smtp.mail.message.priority: must be between 1 (highest) and 5 (lowest), got 9"},
		{"mail-bad-recipient.yml", "line 8: modules.canary.smtp.mail.to.1: must not contain CR, LF or other control characters"},
		{"mail-header-injection.yml", "line 8: modules.canary.smtp.mail.message.subject: must not contain CR, LF or other control characters"},
		{"mail-no-recipients.yml", "line 4: modules.canary.smtp.mail: at least one recipient in to, cc or bcc is required"},
		{"mail-reserved-header.yml", "line 9: modules.canary.smtp.mail.message.headers.Message-ID: header Message-ID is set by the exporter and cannot be overridden"},
		{"no-modules.yml", "no modules defined"},
		{"oauth2-bad-scope.yml", "line 12: modules.submission.smtp.auth.oauth2.scopes.1: \"offline_access openid\" is not a scope (no spaces, quotes or control characters)"},
		{"oauth2-both-client-secrets.yml", "line 6: modules.submission.smtp.auth.oauth2: set only one of client_secret and client_secret_file"},
		{"oauth2-http-token-url.yml", "line 9: modules.submission.smtp.auth.oauth2.token_url: \"http://login.example.net/oauth2/token\": the token endpoint must use https (http only on a loopback address)"},
		{"oauth2-no-client-id.yml", "line 6: modules.submission.smtp.auth.oauth2.client_id: must be set"},
		{"oauth2-no-client-secret.yml", "line 6: modules.submission.smtp.auth.oauth2: the client credentials grant needs client_secret or client_secret_file (or set refresh_token_file for the refresh token grant)"},
		{"posture-bad-mechanism-name.yml", "line 5: modules.mx.smtp.fail_if_mechanisms_offered.1: \"LOGIN PLAIN\" is not a SASL mechanism name"},
		{"posture-implicit-auth-offered.yml", "line 5: modules.submissions.smtp.fail_if_auth_offered_without_tls: has no effect with tls: implicit, where EHLO is always encrypted"},
		{"unknown-field.yml", "yaml: unmarshal errors:\n  line 5: field ehlo_name not found"},
		{"zero-timeout.yml", "line 3: modules.submission.timeout: must be greater than 0"},
	}
	files, err := filepath.Glob("testdata/*.yml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(cases) {
		t.Errorf("testdata has %d files but %d cases: every file needs a case", len(files), len(cases))
	}
	for _, tc := range cases {
		t.Run(tc.file, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("testdata", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			_, err = Load(data)
			if err == nil {
				t.Fatal("invalid configuration accepted")
			}
			if err.Error() != tc.want {
				t.Errorf("error:\n got: %s\nwant: %s", err, tc.want)
			}
		})
	}
}

func TestExampleModulesAreValid(t *testing.T) {
	cfg, err := LoadFile("../examples/more_modules.yml")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"submission_oauth", "disabled_account"} {
		if _, ok := cfg.Modules[name]; !ok {
			t.Errorf("examples/more_modules.yml lacks module %s, which the README names", name)
		}
	}
}

func TestShippedConfigIsValid(t *testing.T) {
	cfg, err := LoadFile("../smtp_exporter.yml")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Modules) < 3 {
		t.Errorf("shipped config has %d modules, want at least 3", len(cfg.Modules))
	}
}

func TestDefaults(t *testing.T) {
	cfg, err := Load([]byte(`
modules:
  plain:
    smtp:
      tls: none
  submission:
    smtp:
      auth:
        mechanism: plain
        username: probe@example.net
        password: hunter2
      allowed_targets: ["*"]
  implicit:
    smtp:
      tls: implicit
      ehlo: "[IPv6:2001:db8::1]"
`))
	if err != nil {
		t.Fatal(err)
	}
	plain := cfg.Modules["plain"]
	if plain.Timeout != DefaultModule.Timeout {
		t.Errorf("timeout = %v, want default %v", plain.Timeout, DefaultModule.Timeout)
	}
	if got := plain.SMTP.EffectivePort(); got != 25 {
		t.Errorf("tls none port = %d, want 25", got)
	}
	if plain.SMTP.EHLO == "" {
		t.Error("EHLO name not defaulted")
	}
	if plain.SMTP.PreferredIPProtocol != "ip6" || !plain.SMTP.IPProtocolFallback {
		t.Errorf("IP protocol defaults = %q/%v, want ip6/true", plain.SMTP.PreferredIPProtocol, plain.SMTP.IPProtocolFallback)
	}
	sub := cfg.Modules["submission"]
	if sub.SMTP.TLS != TLSStartTLS || sub.SMTP.EffectivePort() != 587 {
		t.Errorf("default TLS = %q port %d, want starttls 587", sub.SMTP.TLS, sub.SMTP.EffectivePort())
	}
	if sub.SMTP.Auth.Mechanism != MechanismPlain {
		t.Errorf("mechanism = %q, want it upper-cased to PLAIN", sub.SMTP.Auth.Mechanism)
	}
	implicit := cfg.Modules["implicit"]
	if got := implicit.SMTP.EffectivePort(); got != 465 {
		t.Errorf("implicit port = %d, want 465", got)
	}
}

func TestMailDefaults(t *testing.T) {
	cfg, err := Load([]byte(`
modules:
  canary:
    smtp:
      mail:
        from: probe@example.net
        to: [canary@example.net]
        bcc: [audit@example.net]
`))
	if err != nil {
		t.Fatal(err)
	}
	m := cfg.Modules["canary"].SMTP.Mail
	if !m.Data {
		t.Error("data should default to true")
	}
	if m.Message.Subject == "" || m.Message.Body == "" {
		t.Error("message subject and body should have defaults")
	}
	if got := strings.Join(m.Recipients(), ","); got != "canary@example.net,audit@example.net" {
		t.Errorf("recipients = %s", got)
	}
}

func TestMarshalHidesSecrets(t *testing.T) {
	cfg, err := Load([]byte(`
modules:
  submission:
    smtp:
      auth:
        username: probe@example.net
        password: hunter2-very-secret
      allowed_targets: ["*"]
`))
	if err != nil {
		t.Fatal(err)
	}
	for name, render := range map[string]func() ([]byte, error){
		"config": cfg.Marshal,
		"module": func() ([]byte, error) { return MarshalModule(cfg.Modules["submission"]) },
	} {
		out, err := render()
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(out), "hunter2") {
			t.Errorf("%s: marshalled output shows the password:\n%s", name, out)
		}
		if !strings.Contains(string(out), "<secret>") {
			t.Errorf("%s: marshalled output lacks <secret>:\n%s", name, out)
		}
	}
}

func TestAllowedTargets(t *testing.T) {
	cfg, err := Load([]byte(`
modules:
  m:
    smtp:
      allowed_targets:
        - smtp.example.net
        - submit.example.net:587
        - 192.0.2.10
        - "[2001:db8::25]:465"
        - 198.51.100.0/24
`))
	if err != nil {
		t.Fatal(err)
	}
	s := cfg.Modules["m"].SMTP
	hosts := []struct {
		host string
		port int
		want bool
	}{
		{"smtp.example.net", 25, true},
		{"SMTP.Example.NET.", 587, true},
		{"submit.example.net", 587, true},
		{"submit.example.net", 25, false},
		{"evil.example.org", 587, false},
		{"192.0.2.10", 25, true},
		{"198.51.100.7", 25, true},
		{"2001:db8::25", 465, true},
		{"2001:db8::25", 25, false},
	}
	for _, h := range hosts {
		if got := s.AllowsHost(h.host, h.port); got != h.want {
			t.Errorf("AllowsHost(%q, %d) = %v, want %v", h.host, h.port, got, h.want)
		}
	}
	addrs := []struct {
		addr string
		port int
		want bool
	}{
		{"198.51.100.200", 587, true},
		{"198.51.101.1", 587, false},
		{"192.0.2.10", 25, true},
		{"::ffff:192.0.2.10", 25, true},
		{"2001:db8::25", 465, true},
		{"2001:db8::26", 465, false},
	}
	for _, a := range addrs {
		if got := s.AllowsAddr(netip.MustParseAddr(a.addr), a.port); got != a.want {
			t.Errorf("AllowsAddr(%s, %d) = %v, want %v", a.addr, a.port, got, a.want)
		}
	}

	anyTarget, err := Load([]byte("modules:\n  m:\n    smtp:\n      allowed_targets: [\"*\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s := anyTarget.Modules["m"].SMTP; !s.AllowsHost("anything.example", 2525) || !s.AllowsAddr(netip.MustParseAddr("203.0.113.9"), 1) {
		t.Error(`"*" should allow any target`)
	}
	open, err := Load([]byte("modules:\n  m:\n    smtp: {}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s := open.Modules["m"].SMTP; s.TargetRestricted() || !s.AllowsHost("anything.example", 25) {
		t.Error("a module without allowed_targets and without credentials should not restrict targets")
	}
}

func TestReadPasswordRereadsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "probe.pass")
	if err := os.WriteFile(path, []byte("first\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := Auth{PasswordFile: path}
	if got, err := a.ReadPassword(); err != nil || got != "first" {
		t.Fatalf("ReadPassword = %q, %v; want first (trailing newline dropped)", got, err)
	}
	if err := os.WriteFile(path, []byte("second"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := a.ReadPassword(); err != nil || got != "second" {
		t.Fatalf("after rotation ReadPassword = %q, %v; want second", got, err)
	}
	os.Remove(path)
	if _, err := a.ReadPassword(); err == nil {
		t.Fatal("missing password file should be an error")
	}
}

func TestReloadKeepsOldConfigOnError(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "smtp_exporter.yml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	reg := prometheus.NewRegistry()
	sc := NewSafeConfig(reg)
	write("modules:\n  first:\n    smtp: {}\n")
	if err := sc.Reload(path); err != nil {
		t.Fatal(err)
	}
	write("modules:\n  second:\n    smtp:\n      tls: bogus\n")
	err := sc.Reload(path)
	if err == nil || !strings.Contains(err.Error(), "line 4") {
		t.Fatalf("bad reload error = %v, want one naming line 4", err)
	}
	if _, ok := sc.Module("first"); !ok {
		t.Error("old config no longer served after a failed reload")
	}
	if got := testutil.ToFloat64(sc.reloadSuccess); got != 0 {
		t.Errorf("config_last_reload_successful = %v after a failed reload, want 0", got)
	}
	write("modules:\n  second:\n    smtp: {}\n")
	if err := sc.Reload(path); err != nil {
		t.Fatal(err)
	}
	if got := sc.ModuleNames(); len(got) != 1 || got[0] != "second" {
		t.Errorf("modules after good reload = %v, want [second]", got)
	}
	if got := testutil.ToFloat64(sc.reloadSuccess); got != 1 {
		t.Errorf("config_last_reload_successful = %v, want 1", got)
	}
}
