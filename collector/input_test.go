package collector

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

// Whoever reaches the HTTP port chooses the target and the module. Every
// value they can send is either refused with a 400 or ends in a clean
// failed probe, never a 500 or a panic, and an invalid target never opens a
// connection.

// answerAll is a loopback server that accepts everything: for the targets
// that should get through.
var answerAll = smtptest.AuthSession{
	Host:       "mx.input.invalid",
	Extensions: []string{"AUTH PLAIN"},
	Auth:       func(c *smtptest.Conn, _ string) bool { return c.Reply(235, "2.7.0 ok") == nil },
	Other:      "250 ok",
}.Handle

// probeOutcome reads probe_success and the failure's phase and reason from
// an exposition.
func probeOutcome(body string) (success bool, phase, reason string) {
	success = strings.Contains(body, "\nprobe_success 1\n")
	for _, line := range strings.Split(body, "\n") {
		if rest, ok := strings.CutPrefix(line, "probe_smtp_failure_info{"); ok {
			labels, _, _ := strings.Cut(rest, "}")
			for _, l := range strings.Split(labels, ",") {
				k, v, _ := strings.Cut(l, "=")
				v, _ = strconv.Unquote(v)
				switch k {
				case "phase":
					phase = v
				case "reason":
					reason = v
				}
			}
		}
	}
	return success, phase, reason
}

func TestProbeParametersFromUsers(t *testing.T) {
	v4 := smtptest.NewScripted(t, answerAll)
	v6 := smtptest.NewScriptedAt(t, "[::1]:0", answerAll)
	port, port6 := strconv.Itoa(v4.Port()), strconv.Itoa(v6.Port())
	cfg := newTestConfig(t, fmt.Sprintf(`
modules:
  plain:
    timeout: 3s
    smtp:
      tls: none
      preferred_ip_protocol: ip4
      port: %s
  plain6:
    timeout: 3s
    smtp:
      tls: none
      port: %s
`, port, port6))
	env := newTestEnv(t, HandlerOpts{Config: cfg})
	env.mainLog = &smtptest.LogBuffer{}
	env.handler.logger = slog.New(slog.NewTextHandler(env.mainLog, &slog.HandlerOptions{Level: slog.LevelDebug}))

	const (
		ok      = "success"
		invalid = "target_invalid"
		badReq  = "400"
	)
	for _, tc := range []struct {
		name string
		// query is raw: it may carry escapes that do not decode.
		query string
		want  string
		// server is the one that must (or, for failures, must not) see a
		// connection.
		server *smtptest.Server
	}{
		{"host:port", "module=plain&target=127.0.0.1:" + port, ok, v4},
		{"host, module's port", "module=plain&target=127.0.0.1", ok, v4},
		{"name", "module=plain&target=localhost:" + port, ok, v4},
		{"bracketed IPv6 and port", "module=plain6&target=" + url.QueryEscape("[::1]:"+port6), ok, v6},
		{"bare IPv6", "module=plain6&target=::1", ok, v6},
		{"bracketed IPv6", "module=plain6&target=" + url.QueryEscape("[::1]"), ok, v6},

		{"CR LF", "module=plain&target=" + url.QueryEscape("127.0.0.1:"+port+"\r\nQUIT"), invalid, v4},
		{"LF", "module=plain&target=127.0.0.1%0a", invalid, v4},
		{"NUL", "module=plain&target=127.0.0.1%00", invalid, v4},
		{"only NUL", "module=plain&target=%00", invalid, v4},
		{"path", "module=plain&target=127.0.0.1:" + port + "/x", invalid, v4},
		{"query in target", "module=plain&target=" + url.QueryEscape("127.0.0.1:"+port+"?a=b"), invalid, v4},
		{"userinfo", "module=plain&target=" + url.QueryEscape("user:pw@127.0.0.1:"+port), invalid, v4},
		{"scheme", "module=plain&target=" + url.QueryEscape("smtp://127.0.0.1:"+port), invalid, v4},
		{"space", "module=plain&target=127.0.0.1+" + port, invalid, v4},
		{"port 0", "module=plain&target=127.0.0.1:0", invalid, v4},
		{"port 65536", "module=plain&target=127.0.0.1:65536", invalid, v4},
		{"negative port", "module=plain&target=127.0.0.1:-25", invalid, v4},
		{"named port", "module=plain&target=127.0.0.1:smtp", invalid, v4},
		{"empty port", "module=plain&target=127.0.0.1:", invalid, v4},
		{"two ports", "module=plain&target=127.0.0.1:" + port + ":" + port, invalid, v4},
		{"IPv6 without brackets and port", "module=plain6&target=" + url.QueryEscape("::1:"+port6), invalid, v6},
		{"IPv4 in brackets", "module=plain&target=" + url.QueryEscape("[127.0.0.1]:"+port), invalid, v4},
		{"unclosed bracket", "module=plain6&target=" + url.QueryEscape("[::1:"+port6), invalid, v6},
		{"unicode", "module=plain&target=" + url.QueryEscape("mäil.example.net"), invalid, v4},
		{"right-to-left override", "module=plain&target=" + url.QueryEscape("127.0.0.1\u202e"), invalid, v4},
		{"300 characters", "module=plain&target=" + strings.Repeat("a", 300), invalid, v4},
		{"label of 64", "module=plain&target=" + strings.Repeat("a", 64) + ".example", invalid, v4},

		{"empty", "module=plain&target=", badReq, v4},
		{"absurd length", "module=plain&target=" + strings.Repeat("a", 100_000), badReq, v4},
		{"undecodable escape", "module=plain&target=127.0.0.1%zz", badReq, v4},
		{"unknown module", "module=nope&target=127.0.0.1:" + port, badReq, v4},
		{"module with CR LF", "module=" + url.QueryEscape("plain\r\nX: y") + "&target=127.0.0.1:" + port, badReq, v4},
		{"absurd module", "module=" + strings.Repeat("m", 100_000) + "&target=127.0.0.1:" + port, badReq, v4},
		{"empty module", "module=&target=127.0.0.1:" + port, badReq, v4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := tc.server.Connections()
			for _, debug := range []bool{false, true} {
				query := tc.query
				if debug {
					query += "&debug=true"
				}
				rec := env.get(t, env.handler, query, nil)
				body := rec.Body.String()
				if tc.want == badReq {
					if rec.Code != http.StatusBadRequest {
						t.Fatalf("status %d, want 400: %.200s", rec.Code, body)
					}
					if strings.ContainsAny(strings.TrimSuffix(body, "\n"), "\r\n") {
						t.Errorf("400 body reflects a line break: %q", body)
					}
					continue
				}
				if rec.Code != http.StatusOK {
					t.Fatalf("status %d, want 200: %.300s", rec.Code, body)
				}
				if debug {
					if !strings.Contains(body, "Metrics that would have been returned:") {
						t.Errorf("debug output incomplete:\n%s", body)
					}
					continue
				}
				success, phase, reason := probeOutcome(body)
				switch tc.want {
				case ok:
					if !success {
						t.Errorf("probe failed in %s (%s):\n%s", phase, reason, body)
					}
				default:
					if success || phase != "setup" || reason != tc.want {
						t.Errorf("success %v, failure %s/%s; want setup/%s", success, phase, reason, tc.want)
					}
				}
			}
			got := tc.server.Connections() - before
			if want := map[bool]int{true: 2, false: 0}[tc.want == ok]; got != want {
				t.Errorf("server saw %d connections, want %d", got, want)
			}
		})
	}

	// A target is logged quoted: a line break in it cannot forge a log line.
	for _, line := range strings.Split(env.mainLog.String(), "\n") {
		if strings.HasPrefix(line, "QUIT") || strings.HasPrefix(line, "X: y") {
			t.Errorf("forged log line %q", line)
		}
	}
	// The pages list the odd targets without breaking.
	for name, h := range map[string]http.HandlerFunc{"landing": env.pages.Landing, "config": env.pages.Config} {
		if rec := env.get(t, h, "", nil); rec.Code != http.StatusOK {
			t.Errorf("%s page: status %d", name, rec.Code)
		}
	}
	for _, e := range env.history.List() {
		if rec := env.get(t, http.HandlerFunc(env.pages.Logs), "id="+strconv.FormatUint(e.ID, 10), nil); rec.Code != http.StatusOK {
			t.Errorf("/logs?id=%d: status %d", e.ID, rec.Code)
		}
	}
}

// allowed_targets is checked against the name given and against the
// address actually dialled, so a name that resolves outside the list does
// not get the credentials.
func TestAllowedTargetsThroughTheHandler(t *testing.T) {
	v4 := smtptest.NewScripted(t, answerAll)
	v6 := smtptest.NewScriptedAt(t, "[::1]:0", answerAll)
	port, port6 := strconv.Itoa(v4.Port()), strconv.Itoa(v6.Port())
	for _, tc := range []struct {
		allowed []string
		target  string
		server  *smtptest.Server
		ok      bool
	}{
		{[]string{"10.0.0.0/8"}, "localhost:" + port, v4, false},
		{[]string{"127.0.0.0/8"}, "localhost:" + port, v4, true},
		{[]string{"127.0.0.1"}, "localhost:" + port, v4, true},
		{[]string{"127.0.0.1:" + port}, "127.0.0.1:" + port, v4, true},
		{[]string{"127.0.0.1:1"}, "127.0.0.1:" + port, v4, false},
		{[]string{"localhost"}, "localhost:" + port, v4, true},
		{[]string{"localhost:" + port}, "LOCALHOST.:" + port, v4, true},
		{[]string{"localhost"}, "127.0.0.1:" + port, v4, false},
		{[]string{"mail.example.net"}, "localhost:" + port, v4, false},
		{[]string{"::1"}, "[::1]:" + port6, v6, true},
		{[]string{"[::1]:" + port6}, "[::1]:" + port6, v6, true},
		{[]string{"::/127"}, "[::1]:" + port6, v6, true},
		{[]string{"2001:db8::/32"}, "[::1]:" + port6, v6, false},
		{[]string{"::1"}, "localhost:" + port, v4, false},
		{[]string{"127.0.0.1"}, "[::ffff:127.0.0.1]:" + port, v4, true},
		{[]string{"10.0.0.0/8"}, "[::ffff:127.0.0.1]:" + port, v4, false},
	} {
		name := strings.Join(tc.allowed, ",") + " " + tc.target
		t.Run(name, func(t *testing.T) {
			var list []string
			for _, a := range tc.allowed {
				list = append(list, strconv.Quote(a))
			}
			cfg := newTestConfig(t, `
modules:
  m:
    timeout: 3s
    smtp:
      tls: none
      preferred_ip_protocol: ip4
      allow_plaintext_auth: true
      auth:
        mechanism: PLAIN
        username: probe@example.net
        password: "`+testPassword+`"
      allowed_targets: [`+strings.Join(list, ", ")+`]
`)
			env := newTestEnv(t, HandlerOpts{Config: cfg})
			before := tc.server.Connections()
			rec := env.get(t, env.handler, "module=m&target="+url.QueryEscape(tc.target), nil)
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			success, phase, reason := probeOutcome(rec.Body.String())
			dialled := tc.server.Connections() - before
			if tc.ok {
				if !success || dialled != 1 {
					t.Errorf("success %v (%s/%s), %d connections; want success", success, phase, reason, dialled)
				}
				return
			}
			if success || phase != "setup" || reason != "target_not_allowed" {
				t.Errorf("success %v, failure %s/%s; want setup/target_not_allowed", success, phase, reason)
			}
			if dialled != 0 {
				t.Errorf("server saw %d connections for a refused target", dialled)
			}
		})
	}
}
