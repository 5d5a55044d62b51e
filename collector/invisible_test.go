package collector

import (
	"crypto/tls"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/smtp-exporter/smtp_exporter/internal/printable"
	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

// invisible are characters that change how text reads without being seen:
// bidirectional overrides, embeddings and isolates, zero-width characters,
// the byte order mark, line separators, the soft hyphen and a tag
// character. Each is shown by its escape.
var invisible = map[rune]string{
	'\u202E':     `\u202e`,
	'\u202A':     `\u202a`,
	'\u2066':     `\u2066`,
	'\u2067':     `\u2067`,
	'\u2068':     `\u2068`,
	'\u2069':     `\u2069`,
	'\u200B':     `\u200b`,
	'\u200C':     `\u200c`,
	'\u200D':     `\u200d`,
	'\u200E':     `\u200e`,
	'\u200F':     `\u200f`,
	'\uFEFF':     `\ufeff`,
	'\u2028':     `\u2028`,
	'\u2029':     `\u2029`,
	'\u061C':     `\u061c`,
	'\u00AD':     `\u00ad`,
	'\U000E0041': `\U000e0041`,
}

func invisibleText() string {
	var b strings.Builder
	for r := range invisible {
		b.WriteString("x")
		b.WriteRune(r)
	}
	return b.String()
}

// assertShownEscaped fails when out holds any character that is shown as
// an escape, or lacks the escape of any character of invisible.
func assertShownEscaped(t *testing.T, name, out string) {
	t.Helper()
	assertNoInvisible(t, name, out)
	for r, escaped := range invisible {
		if !strings.Contains(out, escaped) {
			t.Errorf("%s lacks %s, the escape of %U", name, escaped, r)
		}
	}
}

// assertNoInvisible fails when out holds any character that is shown as an
// escape.
func assertNoInvisible(t *testing.T, name, out string) {
	t.Helper()
	if i := strings.IndexFunc(out, func(r rune) bool {
		return printable.Unsafe(r) && r != '\n' && r != '\r' && r != '\t'
	}); i >= 0 {
		lo, hi := max(0, i-60), min(len(out), i+60)
		t.Errorf("%s shows an invisible character raw: %q", name, out[lo:hi])
	}
}

// TestInvisibleCharactersShownEscaped runs real probes of a server whose
// banner, EHLO reply and certificate are full of invisible characters, and
// of a target parameter full of them, and reads every output a person
// reads: the result page, the debug text, the landing page and /logs.
func TestInvisibleCharactersShownEscaped(t *testing.T) {
	hostile := invisibleText()
	tc := newTestCert(t, "mx"+hostile+".example.net", 7, time.Now().Add(90*24*time.Hour), []string{"mx.example.net"}, nil)
	cert := tls.Certificate{Certificate: [][]byte{tc.cert.Raw}, PrivateKey: tc.key}
	srv := smtptest.NewServer(t, smtptest.Options{
		Hostname:   "mx" + hostile + ".example.net",
		TLS:        smtptest.StartTLS,
		Cert:       &cert,
		Greeting:   []string{"mx.example.net ESMTP " + hostile},
		Extensions: []string{"X-NOTE " + hostile},
		NoAuth:     true,
	})
	cfg := newTestConfig(t, `
modules:
  banner:
    timeout: 5s
    smtp:
      tls: starttls
      preferred_ip_protocol: ip4
      tls_config:
        insecure_skip_verify: true
      allowed_targets: ["127.0.0.1"]
`)
	env := newTestEnv(t, HandlerOpts{Config: cfg})
	get := func(t *testing.T, h http.Handler, query string) string {
		t.Helper()
		rec := env.get(t, h, query, nil)
		if rec.Code != http.StatusOK {
			t.Fatalf("%s: status %d: %s", query, rec.Code, rec.Body)
		}
		return rec.Body.String()
	}
	lastID := func(t *testing.T) string {
		t.Helper()
		entries := env.history.List()
		if len(entries) == 0 {
			t.Fatal("the history is empty")
		}
		newest := entries[0]
		for _, e := range entries {
			if e.ID > newest.ID {
				newest = e
			}
		}
		return strconv.FormatUint(newest.ID, 10)
	}

	for _, tc := range []struct {
		name, target string
		success      bool
	}{
		{"server", srv.Addr(), true},
		{"target", "mx" + hostile + ".example.net:25", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			query := "module=banner&target=" + url.QueryEscape(tc.target)
			page := get(t, env.handler, query+"&view=html")
			if got := strings.Contains(page, `id="status" data-phase`); got == tc.success {
				t.Fatalf("probe success %v, want %v:\n%s", !got, tc.success, page)
			}
			assertShownEscaped(t, "result page", page)
			debug := get(t, env.handler, query+"&debug=true")
			assertShownEscaped(t, "debug output", debug)
			id := lastID(t)
			assertShownEscaped(t, "/logs text", get(t, http.HandlerFunc(env.pages.Logs), "view=text&id="+id))
			assertShownEscaped(t, "/logs page", get(t, http.HandlerFunc(env.pages.Logs), "view=html&id="+id))
			landing := get(t, http.HandlerFunc(env.pages.Landing), "")
			if tc.success {
				assertNoInvisible(t, "landing page", landing)
			} else {
				assertShownEscaped(t, "landing page", landing)
			}
			if tc.success {
				// The escapes stand where the server's text was. The text is
				// built from a map, so its first character may be the tag
				// character, escaped with \U.
				for name, out := range map[string]string{"result page": page, "debug output": debug} {
					if !strings.Contains(out, `ESMTP x\`) || !strings.Contains(out, `CN=mx`) {
						t.Errorf("%s does not show the banner and the certificate:\n%s", name, out)
					}
				}
			}
		})
	}
	if srv.Connections() == 0 {
		t.Fatal("the server was never probed")
	}
}
