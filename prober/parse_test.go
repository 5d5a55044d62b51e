package prober

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/smtp-exporter/smtp_exporter/config"
	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

func TestParseTarget(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		host string
		port int
	}{
		{"mail.example.net", "mail.example.net", 587},
		{"mail.example.net.", "mail.example.net", 587},
		{"mail.example.net:25", "mail.example.net", 25},
		{"127.0.0.1", "127.0.0.1", 587},
		{"127.0.0.1:2525", "127.0.0.1", 2525},
		{"::1", "::1", 587},
		{"2001:db8::1", "2001:db8::1", 587},
		{"[::1]", "::1", 587},
		{"[2001:db8::1]:465", "2001:db8::1", 465},
		{"localhost:65535", "localhost", 65535},
		{"under_score.example.net", "under_score.example.net", 587},
	} {
		host, port, err := parseTarget(tc.in, 587)
		if err != nil || host != tc.host || port != tc.port {
			t.Errorf("parseTarget(%q) = %q, %d, %v; want %q, %d", tc.in, host, port, err, tc.host, tc.port)
		}
	}
	for _, bad := range []string{
		"", "smtp://mail.example.net", "mail.example.net/path", "user@mail.example.net",
		"user:pass@mail.example.net:25", "mail.example.net:0", "mail.example.net:65536",
		"mail.example.net:smtp", "mail.example.net:", "mail.example.net:+25", "mail.example.net:025",
		"mail.example.net\r\nRCPT", "mail .example.net", "2001:db8::1:25:x", "[127.0.0.1]:25",
		"[mail.example.net]:25", "[::1", "-bad.example.net", "a..b", "mail.example.net?x=1",
		strings.Repeat("a", 256), strings.Repeat("a.", 127) + "aa",
	} {
		if host, port, err := parseTarget(bad, 587); err == nil {
			t.Errorf("parseTarget(%q) = %q, %d; want an error", bad, host, port)
		}
	}
}

func TestParseReplyLine(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in    string
		code  int
		final bool
		text  string
	}{
		{"250 ok", 250, true, "ok"},
		{"250-first", 250, false, "first"},
		{"250", 250, true, ""},
		{"220 ", 220, true, ""},
		{"334 VXNlcm5hbWU6", 334, true, "VXNlcm5hbWU6"},
		{"554\ttab allowed? no: separator", 0, false, ""},
	} {
		rl, err := parseReplyLine(tc.in, nil)
		if tc.code == 0 {
			if err == nil {
				t.Errorf("parseReplyLine(%q) accepted", tc.in)
			}
			continue
		}
		if err != nil || rl.code != tc.code || rl.final != tc.final || rl.text != tc.text {
			t.Errorf("parseReplyLine(%q) = %+v, %v", tc.in, rl, err)
		}
	}
	for _, bad := range []string{"", "25", "2x0 ok", "099 no", "600 no", "190 no", "260 no", "250_ok", "250 a\x00b", "250 esc\x1b"} {
		var pe *ProtocolError
		if _, err := parseReplyLine(bad, nil); !errors.As(err, &pe) {
			t.Errorf("parseReplyLine(%q) error %v, want a *ProtocolError", bad, err)
		}
	}
}

func TestParseEnhanced(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"5.7.8 Error: authentication failed": "5.7.8",
		"2.0.0 Ok: queued as 4Xyz":           "2.0.0",
		"5.1.10 Recipient address rejected":  "5.1.10",
		"5.2.0 Mailbox unavailable":          "5.2.0",
		"4.7.0":                              "4.7.0",
		"Authentication Successful":          "",
		"3.0.0 no such class":                "",
		"5.7 too short":                      "",
		"5.7.1234 too long":                  "",
		"5.x.1 letters":                      "",
		"mx.example.net ESMTP":               "",
	} {
		if got := parseEnhanced(in); got != want {
			t.Errorf("parseEnhanced(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestIsEnhancedCode(t *testing.T) {
	t.Parallel()
	for code, want := range map[string]bool{
		"2.0.0": true, "5.7.8": true, "4.7.0": true, "5.1.10": true, "5.999.999": true,
		"": false, "x": false, "3.0.0": false, "5.7": false, "5.7.8.1": false, "5..8": false,
		"5.7.": false, "5.1000.0": false, "5.7.8 ": false, "5.a.8": false, ".5.7.8": false,
	} {
		if got := IsEnhancedCode(code); got != want {
			t.Errorf("IsEnhancedCode(%q) = %t, want %t", code, got, want)
		}
	}
}

func TestCodeMatches(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		code, expect int
		want         bool
	}{
		{250, 2, true}, {251, 2, true}, {354, 2, false}, {250, 25, true}, {221, 25, false},
		{221, 221, true}, {220, 221, false}, {354, 354, true},
	} {
		if got := codeMatches(tc.code, tc.expect); got != tc.want {
			t.Errorf("codeMatches(%d, %d) = %v", tc.code, tc.expect, got)
		}
	}
}

func TestReplyErrorKeepsEnhancedCode(t *testing.T) {
	t.Parallel()
	err := error(&ReplyError{Command: "RCPT", Code: 550, Enhanced: "5.1.10", Message: "no such domain"})
	var re *ReplyError
	if !errors.As(err, &re) || re.Enhanced != "5.1.10" || !re.Permanent() || re.Temporary() {
		t.Fatalf("ReplyError %+v", re)
	}
	if got := err.Error(); got != "RCPT: server replied 550 5.1.10 no such domain" {
		t.Errorf("Error() = %q", got)
	}
}

func TestParseEHLO(t *testing.T) {
	t.Parallel()
	rep := &Reply{Code: 250, Lines: []string{
		"mx.example.net Hello client [127.0.0.1]",
		"pipelining",
		"Size 10240000",
		"auth login PLAIN",
		"AUTH=LOGIN PLAIN XOAUTH2",
		"X-WEIRD!!/Keyword",
		"starttls",
		"enhancedstatuscodes",
		"  8bitmime  ",
		"DSN",
	}}
	ext := parseEHLO(rep)
	want := []string{"PIPELINING", "SIZE", "AUTH", "X-WEIRDKEYWORD", "STARTTLS", "ENHANCEDSTATUSCODES", "8BITMIME", "DSN"}
	if !slices.Equal(ext.keywords, want) {
		t.Errorf("keywords %v, want %v", ext.keywords, want)
	}
	if !slices.Equal(ext.auth, []string{"LOGIN", "PLAIN", "XOAUTH2"}) {
		t.Errorf("auth %v", ext.auth)
	}
	if ext.size != 10240000 || !ext.has("STARTTLS") || ext.has("CHUNKING") {
		t.Errorf("size %d, STARTTLS %v", ext.size, ext.has("STARTTLS"))
	}

	for params, want := range map[string]int64{"": 0, "0": 0, "abc": 0, "-5": 0, "99999999999999999999999": 0, "52428800 extra": 52428800} {
		ext := parseEHLO(&Reply{Code: 250, Lines: []string{"mx", "SIZE " + params}})
		if ext.size != want {
			t.Errorf("SIZE %q parsed as %d, want %d", params, ext.size, want)
		}
	}
	if ext := parseEHLO(&Reply{Code: 250, Lines: []string{"mx only"}}); ext.size != -1 || len(ext.keywords) != 0 {
		t.Errorf("no extensions parsed as %+v", ext)
	}

	// A hostile server gets at most maxExtensions short keywords.
	lines := []string{"mx"}
	for i := range 100 {
		lines = append(lines, strings.Repeat("K", 100)+string(rune('A'+i%26))+strings.Repeat("x", i))
	}
	ext = parseEHLO(&Reply{Code: 250, Lines: lines})
	if len(ext.keywords) > maxExtensions {
		t.Errorf("%d keywords kept", len(ext.keywords))
	}
	for _, k := range ext.keywords {
		if len(k) > maxKeywordLen {
			t.Errorf("keyword of %d bytes kept", len(k))
		}
	}
}

func TestQueueID(t *testing.T) {
	t.Parallel()
	for text, want := range map[string]string{
		"2.0.0 Ok: queued as 4Xyz":                      "4Xyz",
		"ok: queued as ac5291d6406c4":                   "ac5291d6406c4",
		"OK id=1abc-000123-XY":                          "1abc-000123-XY",
		"2.0.0 Ok: queued as <20240101.abc@mx.example>": "20240101.abc@mx.example",
		"2.0.0 Ok":                      "",
		"Message accepted for delivery": "",
	} {
		if got := queueID(&Reply{Code: 250, Lines: []string{text}}); got != want {
			t.Errorf("queueID(%q) = %q, want %q", text, got, want)
		}
	}
}

// RFC 2195's example exchange.
func TestCRAMMD5Vector(t *testing.T) {
	t.Parallel()
	a := &cramMD5Auth{username: "tim", password: "tanstaaftanstaaf"}
	if name, ir, err := a.Start(); name != "CRAM-MD5" || ir != nil || err != nil {
		t.Fatalf("Start() = %q, %q, %v", name, ir, err)
	}
	resp, err := a.Next([]byte("<1896.697170952@postoffice.reston.mci.net>"))
	if err != nil || string(resp) != "tim b913a602c7eda7a495b4e6e7334d3890" {
		t.Errorf("Next() = %q, %v", resp, err)
	}
	if _, err := a.Next([]byte("<again@x>")); err == nil {
		t.Error("second challenge answered")
	}
}

func TestSASLMechanisms(t *testing.T) {
	t.Parallel()
	p := &plainAuth{username: "u", password: "p"}
	if name, ir, _ := p.Start(); name != "PLAIN" || string(ir) != "\x00u\x00p" {
		t.Errorf("PLAIN Start = %q %q", name, ir)
	}
	if resp, err := p.Next(nil); err != nil || string(resp) != "\x00u\x00p" {
		t.Errorf("PLAIN answer to an empty challenge = %q, %v", resp, err)
	}
	if _, err := p.Next(nil); err == nil {
		t.Error("PLAIN answered twice")
	}
	l := &loginAuth{username: "u", password: "p"}
	if name, ir, _ := l.Start(); name != "LOGIN" || ir != nil {
		t.Errorf("LOGIN Start = %q %q", name, ir)
	}
	// Any prompts: the first is answered with the user, the second with
	// the password, a third is an error.
	if r, _ := l.Next([]byte("User Name")); string(r) != "u" {
		t.Errorf("LOGIN first answer %q", r)
	}
	if r, _ := l.Next([]byte("")); string(r) != "p" {
		t.Errorf("LOGIN second answer %q", r)
	}
	if _, err := l.Next([]byte("Password:")); err == nil {
		t.Error("LOGIN answered a third prompt")
	}
	for _, tc := range []struct {
		configured string
		offered    []string
		want       string
		ok         bool
	}{
		{"auto", []string{"LOGIN", "PLAIN", "CRAM-MD5"}, "CRAM-MD5", true},
		{"auto", []string{"LOGIN", "PLAIN"}, "PLAIN", true},
		{"auto", []string{"XOAUTH2"}, "", false},
		{"auto", []string{"PLAIN", "SCRAM-SHA-1", "CRAM-MD5", "SCRAM-SHA-256"}, "SCRAM-SHA-256", true},
		{"auto", []string{"LOGIN", "SCRAM-SHA-1", "CRAM-MD5"}, "SCRAM-SHA-1", true},
		{"LOGIN", []string{"LOGIN", "PLAIN"}, "LOGIN", true},
		{"plain", []string{"PLAIN"}, "PLAIN", true},
		{"CRAM-MD5", []string{"PLAIN"}, "CRAM-MD5", false},
	} {
		got, ok := chooseMechanism(tc.configured, tc.offered, config.PasswordMechanisms)
		if ok != tc.ok || (ok && got != tc.want) {
			t.Errorf("chooseMechanism(%q, %v) = %q, %v", tc.configured, tc.offered, got, ok)
		}
	}
}

func TestResolveIPLiteralsAndFamilies(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, tc := range []struct {
		host      string
		preferred string
		fallback  bool
		want      string
	}{
		{"127.0.0.1", "ip6", false, "127.0.0.1"}, // a literal is used as given
		{"::1", "ip4", false, "::1"},
		{"localhost", "ip4", false, "127.0.0.1"},
		{"localhost", "ip6", true, ""}, // whatever the hosts file says, something
	} {
		addr, _, err := resolve(ctx, tc.host, tc.preferred, tc.fallback)
		if err != nil {
			t.Errorf("resolve(%q, %s, %v): %v", tc.host, tc.preferred, tc.fallback, err)
			continue
		}
		if tc.want != "" && addr != netip.MustParseAddr(tc.want) {
			t.Errorf("resolve(%q, %s) = %s, want %s", tc.host, tc.preferred, addr, tc.want)
		}
		if !addr.IsLoopback() {
			t.Errorf("resolve(%q) = %s, not loopback", tc.host, addr)
		}
	}
	if _, _, err := resolve(ctx, "no-such-host.invalid", "ip4", true); err == nil {
		t.Error("resolved an .invalid name")
	}
}

// A timeout in every phase that reads is reported as timeout in that phase;
// quit is the exception, whose missing reply does not fail a probe
// (quit_test.go).
func TestTimeoutPhases(t *testing.T) {
	t.Parallel()
	silentAfter := func(replies map[string]string, verb string) *smtptest.Server {
		return smtptest.NewScripted(t, func(c *smtptest.Conn) {
			if c.Write("220 mx\r\n") != nil {
				return
			}
			for {
				line, err := c.ReadLine()
				if err != nil {
					return
				}
				v, _, _ := strings.Cut(line, " ")
				if v == verb {
					c.WaitClosed()
					return
				}
				if c.Write(replies[v]) != nil {
					return
				}
			}
		})
	}
	ehlo := "250-mx\r\n250-AUTH PLAIN\r\n250 STARTTLS\r\n"
	for _, tc := range []struct {
		verb  string
		phase Phase
		spec  moduleSpec
	}{
		{"EHLO", PhaseEHLO, moduleSpec{TLS: "none"}},
		{"STARTTLS", PhaseStartTLS, moduleSpec{TLS: "starttls"}},
		{"AUTH", PhaseAuth, moduleSpec{TLS: "none", Mechanism: "PLAIN", AllowPlaintext: true}},
	} {
		t.Run(tc.verb, func(t *testing.T) {
			t.Parallel()
			srv := silentAfter(map[string]string{"EHLO": ehlo}, tc.verb)
			tc.spec.Timeout = "500ms"
			start := time.Now()
			r, _ := runProbe(t, target(srv), loadModule(t, tc.spec))
			requireFailure(t, r, tc.phase, ReasonTimeout)
			if elapsed := time.Since(start); elapsed > 500*time.Millisecond+hostileMargin {
				t.Errorf("took %v with a 500ms timeout", elapsed)
			}
		})
	}
	t.Run("implicit TLS handshake", func(t *testing.T) {
		t.Parallel()
		srv := smtptest.NewScripted(t, func(c *smtptest.Conn) { c.WaitClosed() })
		r, _ := runProbe(t, target(srv), loadModule(t, moduleSpec{TLS: "implicit", Timeout: "500ms"}))
		requireFailure(t, r, PhaseTLS, ReasonTimeout)
	})
	t.Run("cancelled context", func(t *testing.T) {
		t.Parallel()
		srv := smtptest.NewScripted(t, func(c *smtptest.Conn) { c.WaitClosed() })
		ctx, cancel := context.WithCancel(context.Background())
		go func() { time.Sleep(200 * time.Millisecond); cancel() }()
		start := time.Now()
		r, _ := runProbeCtx(t, ctx, target(srv), loadModule(t, moduleSpec{TLS: "none", Timeout: "10s"}))
		requireFailure(t, r, PhaseBanner, ReasonTimeout)
		if elapsed := time.Since(start); elapsed > 200*time.Millisecond+hostileMargin {
			t.Errorf("cancel took %v to stop the probe", elapsed)
		}
	})
}
