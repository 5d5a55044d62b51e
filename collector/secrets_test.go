package collector

import (
	"crypto/hmac"
	"crypto/md5"
	"crypto/pbkdf2"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

// The secrets table: for every mechanism, against a server that accepts the
// credentials, one that refuses them and one that quotes back everything the
// client sent in its refusal, no output of the exporter may show the
// password or the token, any base64 form of them, the PLAIN blob, the
// CRAM-MD5 response or its digest, the SCRAM proof, or any other response
// the client sent during AUTH.

const (
	secretUser = "probe@example.net"
	// secretPassword and secretToken differ in every base64 alphabet,
	// padded or not.
	secretPassword = "Ech0-me?>if-you-dare"
	secretToken    = "ya29.T0ken?>never-shown"
	// secretChallenge is the servers' CRAM-MD5 challenge.
	secretChallenge = "<4711.1700000000@mx.secrets.invalid>"
	secretSalt      = "secrets-test-salt"
)

var (
	base64Forms = []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding}
	// secretMechanisms are all the mechanisms the prober speaks.
	secretMechanisms = []string{"PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256", "XOAUTH2", "OAUTHBEARER"}
)

// secretServer speaks every mechanism and ends each AUTH as verdict says:
// "accepted" with 235 (after a valid SCRAM server signature), "refused"
// with 535 (after the JSON error of a refused bearer token), "quoted" with
// a 535 that quotes everything the client sent, as sent and decoded.
func secretServer(verdict string) smtptest.Handler {
	return smtptest.AuthSession{
		Host:       "mx.secrets.invalid",
		Extensions: []string{"AUTH " + strings.Join(secretMechanisms, " ")},
		Auth:       func(c *smtptest.Conn, arg string) bool { return secretAuth(c, verdict, arg) },
		Other:      "250 ok",
	}.Handle
}

func secretAuth(c *smtptest.Conn, verdict, arg string) bool {
	mech, ir, _ := strings.Cut(arg, " ")
	var sent []string
	if ir != "" {
		sent = append(sent, ir)
	}
	ask := func(prompt string) (string, bool) {
		if c.Reply(334, base64.StdEncoding.EncodeToString([]byte(prompt))) != nil {
			return "", false
		}
		answer, err := c.ReadLine()
		sent = append(sent, answer)
		return answer, err == nil
	}
	ok := true
	switch mech {
	case "LOGIN":
		_, ok = ask("Username:")
		if ok {
			_, ok = ask("Password:")
		}
	case "CRAM-MD5":
		_, ok = ask(secretChallenge)
	case "SCRAM-SHA-1", "SCRAM-SHA-256":
		newHash := sha1.New
		if mech == "SCRAM-SHA-256" {
			newHash = sha256.New
		}
		first, _ := base64.StdEncoding.DecodeString(ir)
		bare := strings.TrimPrefix(string(first), "n,,")
		_, nonce, _ := strings.Cut(bare, ",r=")
		serverFirst := "r=" + nonce + "server,s=" + base64.StdEncoding.EncodeToString([]byte(secretSalt)) + ",i=4096"
		var line string
		if line, ok = ask(serverFirst); ok && verdict == "accepted" {
			final, _ := base64.StdEncoding.DecodeString(line)
			withoutProof, _, _ := strings.Cut(string(final), ",p=")
			salted, _ := pbkdf2.Key(newHash, secretPassword, []byte(secretSalt), 4096, newHash().Size())
			mac := func(key []byte, data string) []byte {
				m := hmac.New(newHash, key)
				m.Write([]byte(data))
				return m.Sum(nil)
			}
			signature := mac(mac(salted, "Server Key"), bare+","+serverFirst+","+withoutProof)
			_, ok = ask("v=" + base64.StdEncoding.EncodeToString(signature))
		}
	case "XOAUTH2", "OAUTHBEARER":
		if verdict == "refused" {
			_, ok = ask(`{"status":"401","schemes":"bearer","scope":"https://mail.example.net/"}`)
		}
	}
	if !ok {
		return false
	}
	switch verdict {
	case "accepted":
		return c.Reply(235, "2.7.0 Authentication successful") == nil
	case "refused":
		return c.Reply(535, "5.7.8 Authentication credentials invalid") == nil
	}
	// Quote, one per line so that no line is cut short in the transcript,
	// every response as sent, and each of its parts (split at control
	// characters, spaces and commas, and after a SCRAM "p=") as is and in
	// every base64 alphabet.
	quote := []string{"5.7.8 Authentication failed for what you sent:"}
	add := func(s string) {
		if !slices.Contains(quote, s) {
			quote = append(quote, s)
		}
	}
	for _, s := range sent {
		add(s)
		decoded, _ := base64.StdEncoding.DecodeString(s)
		for _, part := range strings.FieldsFunc(string(decoded), func(r rune) bool { return r < 0x20 || r == ' ' || r == ',' }) {
			for _, p := range []string{part, strings.TrimPrefix(part, "p=")} {
				add(p)
				for _, enc := range base64Forms {
					add(enc.EncodeToString([]byte(p)))
				}
			}
		}
	}
	return c.Reply(535, quote...) == nil
}

// wireSecrets lists every form of the credentials: the password and the
// token in every base64 alphabet, the PLAIN blob, the CRAM-MD5 digest and
// the SCRAM proof, and each AUTH response the server received, as sent and
// decoded, but for LOGIN's username.
func wireSecrets(t *testing.T, lines []string) []string {
	t.Helper()
	blob := "\x00" + secretUser + "\x00" + secretPassword
	forms := []string{secretPassword, secretToken, blob}
	for _, enc := range base64Forms {
		for _, s := range []string{secretPassword, secretToken, blob} {
			forms = append(forms, enc.EncodeToString([]byte(s)))
		}
	}
	mac := hmac.New(md5.New, []byte(secretPassword))
	mac.Write([]byte(secretChallenge))
	forms = append(forms, hex.EncodeToString(mac.Sum(nil)))

	inAuth, sawAuth := false, false
	for _, l := range lines {
		verb, rest, _ := strings.Cut(l, " ")
		switch strings.ToUpper(verb) {
		case "AUTH":
			inAuth, sawAuth = true, true
			_, l, _ = strings.Cut(rest, " ")
		case "EHLO", "HELO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "STARTTLS":
			inAuth = false
		}
		if !inAuth || len(l) < 4 {
			continue
		}
		decoded, err := base64.StdEncoding.DecodeString(l)
		if err != nil {
			t.Fatalf("AUTH response %q is not base64", l)
		}
		if string(decoded) == secretUser {
			continue
		}
		forms = append(forms, l, string(decoded))
		if _, proof, found := strings.Cut(string(decoded), ",p="); found {
			forms = append(forms, proof)
		}
	}
	if !sawAuth {
		t.Fatalf("the server saw no AUTH: %q", lines)
	}
	return forms
}

func TestSecretsNeverShown(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(secretToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, mech := range secretMechanisms {
		for _, verdict := range []string{"accepted", "refused", "quoted"} {
			t.Run(mech+"/"+verdict, func(t *testing.T) {
				srv := smtptest.NewScripted(t, secretServer(verdict))
				credential := `password: "` + secretPassword + `"`
				if mech == "XOAUTH2" || mech == "OAUTHBEARER" {
					credential = "token_file: " + tokenFile
				}
				// auth_failure_backoff 0: every request logs in again,
				// so that each output comes from a real exchange.
				cfg := newTestConfig(t, `
modules:
  login:
    timeout: 5s
    auth_failure_backoff: 0s
    smtp:
      tls: none
      preferred_ip_protocol: ip4
      allow_plaintext_auth: true
      auth:
        mechanism: `+mech+`
        username: `+secretUser+`
        `+credential+`
      allowed_targets: ["127.0.0.1"]
`)
				var mainLog smtptest.LogBuffer
				reg := prometheus.NewPedanticRegistry()
				history := NewHistory(10)
				logger := slog.New(slog.NewTextHandler(&mainLog, &slog.HandlerOptions{Level: slog.LevelDebug}))
				handler := NewHandler(HandlerOpts{Config: cfg, Logger: logger, History: history, Registerer: reg})
				pages := NewPages(cfg, history, logger)
				get := func(h http.Handler, target string, header http.Header) string {
					req := httptest.NewRequest(http.MethodGet, target, nil)
					for k, v := range header {
						req.Header[k] = v
					}
					rec := httptest.NewRecorder()
					h.ServeHTTP(rec, req)
					if rec.Code != http.StatusOK {
						t.Fatalf("GET %s: status %d: %s", target, rec.Code, rec.Body)
					}
					return rec.Body.String()
				}

				query := "/probe?module=login&target=" + url.QueryEscape(srv.Addr())
				outputs := map[string]string{
					"/probe":            get(handler, query, nil),
					"/probe debug=true": get(handler, query+"&debug=true", nil),
					"/probe view=html":  get(handler, query+"&view=html", nil),
				}
				wantSuccess := verdict == "accepted"
				if got := strings.Contains(outputs["/probe"], "\nprobe_success 1\n"); got != wantSuccess {
					t.Fatalf("probe_success %v, want %v:\n%s", got, wantSuccess, outputs["/probe debug=true"])
				}
				if !strings.Contains(outputs["/probe debug=true"], "C: AUTH "+mech) {
					t.Fatalf("debug output shows no AUTH exchange:\n%s", outputs["/probe debug=true"])
				}
				html := http.Header{"Accept": {"text/html"}}
				for _, e := range history.List() {
					id := strconv.FormatUint(e.ID, 10)
					outputs["/logs?id="+id] = get(http.HandlerFunc(pages.Logs), "/logs?id="+id, nil)
					outputs["/logs?id="+id+" as HTML"] = get(http.HandlerFunc(pages.Logs), "/logs?id="+id, html)
					outputs["/logs?id="+e.ProbeID] = get(http.HandlerFunc(pages.Logs), "/logs?id="+e.ProbeID, nil)
					if e.Result != nil && e.Result.Failure != nil && e.Result.Failure.Err != nil {
						outputs["error of probe "+id] = e.Result.Failure.Err.Error()
					}
				}
				outputs["/"] = get(http.HandlerFunc(pages.Landing), "/", nil)
				outputs["/config"] = get(http.HandlerFunc(pages.Config), "/config", nil)
				outputs["/metrics"] = get(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), "/metrics", nil)
				outputs["main log at debug level"] = mainLog.String()

				srv.Close()
				forms := wireSecrets(t, srv.Lines())
				for where, out := range outputs {
					if out == "" {
						t.Errorf("%s is empty: nothing proven", where)
					}
					for _, secret := range forms {
						if strings.Contains(out, secret) {
							t.Errorf("%s shows the secret %q", where, secret)
						}
					}
				}
				if verdict != "accepted" && !strings.Contains(outputs["/probe"], `probe_smtp_status_code{phase="auth"} 535`) {
					t.Errorf("the refusal was not read:\n%s", outputs["/probe debug=true"])
				}
				if verdict == "quoted" && !strings.Contains(outputs["/probe debug=true"], "S: 535-<redacted>") {
					t.Errorf("the quoting server's reply was not redacted:\n%s", outputs["/probe debug=true"])
				}
			})
		}
	}
}
