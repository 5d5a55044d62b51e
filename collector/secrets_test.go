package collector

import (
	"context"
	"crypto/hmac"
	"crypto/md5"
	"crypto/pbkdf2"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"html"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/smtp-exporter/smtp_exporter/config"
	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
	"github.com/smtp-exporter/smtp_exporter/prober"
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
				// Every request logs in again (auth_failure_backoff 0),
				// so that each output comes from a real exchange.
				cfg := secretLoginConfig(t, mech, credential)
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

// echoSecret has what quoting changes (a double quote, a backslash) and
// what JSON and HTML escape (< and >); each half is longer than the
// cut-off start that redaction takes for a secret.
const echoSecret = `pw"Quote\Back<12>34`

// echoEncoding is a way a server echoes a value in its text: lines of
// text for a field that the exporter cuts at cutAt bytes.
type echoEncoding struct {
	name  string
	lines func(v string, cutAt int) []string
}

func goQuoted(s string) string { q := strconv.Quote(s); return q[1 : len(q)-1] }

func jsonEscaped(s string, escapeHTML bool) string {
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(escapeHTML)
	if err := enc.Encode(s); err != nil {
		panic(err)
	}
	out := strings.TrimSpace(b.String())
	return out[1 : len(out)-1]
}

var echoEncodings = func() []echoEncoding {
	insert := func(sep string) func(string, int) []string {
		return func(v string, _ int) []string { return []string{"you sent " + v[:len(v)/2] + sep + v[len(v)/2:]} }
	}
	encs := []echoEncoding{
		{"plain", func(v string, _ int) []string { return []string{"you sent " + v} }},
		{"quoted", func(v string, _ int) []string { return []string{`you sent "` + goQuoted(v) + `"`} }},
		{"escaped", func(v string, _ int) []string { return []string{"you sent " + jsonEscaped(v, true)} }},
		{"split", func(v string, _ int) []string {
			return []string{"you sent " + v[:len(v)/2], v[len(v)/2:] + " which is wrong"}
		}},
		{"tab", insert("\t")},
		{"control", insert("\x01")},
		{"zero-width", insert("\u200b")},
		// The secret straddles the point where the exporter cuts the
		// text: what comes before the cut must not show either.
		{"cut", func(v string, cutAt int) []string {
			return []string{"you sent " + strings.Repeat("x", cutAt-len(v)/2-len("you sent ")) + v + " and more"}
		}},
	}
	for _, b := range []struct {
		name string
		enc  *base64.Encoding
	}{{"base64 std", base64.StdEncoding}, {"base64 url", base64.URLEncoding}, {"base64 raw std", base64.RawStdEncoding}, {"base64 raw url", base64.RawURLEncoding}} {
		encs = append(encs, echoEncoding{b.name, func(v string, _ int) []string { return []string{"you sent " + b.enc.EncodeToString([]byte(v))} }})
	}
	return encs
}()

// echoCase is where a server echoes a value: in the banner, in the final
// reply to AUTH, in a malformed reply to AUTH, in a SCRAM server-error, in
// the JSON error of a refused bearer token, or in the error of a token
// endpoint.
type echoCase struct {
	mech, place string
}

func echoCases() []echoCase {
	var cases []echoCase
	for _, mech := range secretMechanisms {
		for _, place := range []string{"banner", "reply", "malformed"} {
			cases = append(cases, echoCase{mech, place})
		}
		switch mech {
		case "SCRAM-SHA-1", "SCRAM-SHA-256":
			cases = append(cases, echoCase{mech, "scram e="})
		case "XOAUTH2", "OAUTHBEARER":
			cases = append(cases, echoCase{mech, "oauth json"})
		}
	}
	return append(cases, echoCase{"OAuth client secret", "token endpoint"})
}

// echoServer speaks every mechanism and echoes enc of the secret at the
// place of c; banner is what it echoes in its banner (the blob a mechanism
// sends, where there is one).
func echoServer(c echoCase, enc echoEncoding, banner string) smtptest.Handler {
	text := func(v string, cutAt int) []string { return enc.lines(v, cutAt) }
	withCode := func(lines []string) []string {
		out := make([]string, len(lines))
		for i, l := range lines {
			out[i] = "5.7.8 " + l
		}
		return out
	}
	return func(conn *smtptest.Conn) {
		greeting := []string{"mx.secrets.invalid ESMTP"}
		if c.place == "banner" {
			// The transcript cuts a line at 512 bytes, "220-" included.
			greeting = append(greeting, text(banner, 512-len("220-"))...)
		}
		if conn.Reply(220, greeting...) != nil {
			return
		}
		ask := func(challenge string) (string, bool) {
			if conn.Reply(334, base64.StdEncoding.EncodeToString([]byte(challenge))) != nil {
				return "", false
			}
			line, err := conn.ReadLine()
			return line, err == nil
		}
		finish := func() bool {
			switch c.place {
			case "reply":
				// A reply error keeps 200 bytes of the first line's text.
				return conn.Reply(535, withCode(text(echoSecret, 200))...) == nil
			case "malformed":
				// A malformed line is quoted up to 40 bytes.
				var b strings.Builder
				for _, l := range text(echoSecret, 40-len("55 ")) {
					b.WriteString("55 " + l + "\r\n")
				}
				return conn.Write(b.String()) == nil
			}
			return conn.Reply(535, "5.7.8 Authentication credentials invalid") == nil
		}
		for {
			line, err := conn.ReadLine()
			if err != nil {
				return
			}
			verb, arg, _ := strings.Cut(line, " ")
			mech, ir, _ := strings.Cut(arg, " ")
			ok := true
			switch strings.ToUpper(verb) {
			case "EHLO":
				ok = conn.Reply(250, "mx.secrets.invalid", "AUTH "+strings.Join(secretMechanisms, " ")) == nil
			case "QUIT":
				conn.Reply(221, "2.0.0 Bye")
				return
			case "AUTH":
				switch mech {
				case "PLAIN":
					if ir == "" {
						_, ok = ask("")
					}
				case "LOGIN":
					if _, ok = ask("Username:"); ok {
						_, ok = ask("Password:")
					}
				case "CRAM-MD5":
					_, ok = ask(secretChallenge)
				case "SCRAM-SHA-1", "SCRAM-SHA-256":
					first, _ := base64.StdEncoding.DecodeString(ir)
					_, nonce, _ := strings.Cut(string(first), ",r=")
					serverFirst := "r=" + nonce + "server,s=" + base64.StdEncoding.EncodeToString([]byte(secretSalt)) + ",i=4096"
					if _, ok = ask(serverFirst); ok && c.place == "scram e=" {
						// The value of e= is cut at 64 bytes.
						_, ok = ask("e=" + strings.Join(text(echoSecret, 64), "\r\n"))
					}
				case "XOAUTH2", "OAUTHBEARER":
					if c.place == "oauth json" {
						// The status is cut at 32 bytes, the scope at 200.
						challenge, _ := json.Marshal(map[string]string{
							"status":  strings.Join(text(echoSecret, 32), "\r\n"),
							"scope":   strings.Join(text(echoSecret, 200), "\r\n"),
							"schemes": "bearer",
						})
						_, ok = ask(string(challenge))
					}
				}
				ok = ok && finish()
			default:
				ok = conn.WriteLine("250 ok") == nil
			}
			if !ok {
				return
			}
		}
	}
}

// echoForms lists the pieces of every form of v that must not show: 8
// bytes of v as it is, quoted once and twice (a quoted error in a quoted
// log value) and JSON-escaped, 11 characters (8 bytes) of it in every
// base64 alphabet at each offset of a group of three bytes. A piece must
// reach into v[from:to], the secret in v.
func echoForms(v string, from, to int) []string {
	var pieces []string
	add := func(text string, piece, from, to int) {
		for i := max(0, from-piece+1); i+piece <= len(text) && i < to; i++ {
			if !slices.Contains(pieces, text[i:i+piece]) {
				pieces = append(pieces, text[i:i+piece])
			}
		}
	}
	for _, f := range []func(string) string{
		func(s string) string { return s },
		goQuoted,
		func(s string) string { return goQuoted(goQuoted(s)) },
		func(s string) string { return jsonEscaped(s, true) },
		func(s string) string { return jsonEscaped(s, false) },
	} {
		add(f(v), 8, len(f(v[:from])), len(f(v[:to])))
	}
	for _, enc := range base64Forms {
		for k := 0; k <= 2; k++ {
			// Character c holds bits 6c to 6c+6 of the bytes encoded.
			shifted := enc.EncodeToString(append(make([]byte, k), v...))
			add(shifted, 11, 8*(k+from)/6, (8*(k+to)+5)/6)
		}
	}
	return pieces
}

// fanout sends each record to every handler that takes its level.
type fanout []slog.Handler

func (f fanout) Enabled(ctx context.Context, l slog.Level) bool {
	return slices.ContainsFunc(f, func(h slog.Handler) bool { return h.Enabled(ctx, l) })
}

func (f fanout) Handle(ctx context.Context, r slog.Record) error {
	for _, h := range f {
		if h.Enabled(ctx, r.Level) {
			if err := h.Handle(ctx, r.Clone()); err != nil {
				return err
			}
		}
	}
	return nil
}

func (f fanout) WithAttrs(attrs []slog.Attr) slog.Handler {
	out := make(fanout, len(f))
	for i, h := range f {
		out[i] = h.WithAttrs(attrs)
	}
	return out
}

func (f fanout) WithGroup(name string) slog.Handler {
	out := make(fanout, len(f))
	for i, h := range f {
		out[i] = h.WithGroup(name)
	}
	return out
}

// The secrets table over encodings: for every mechanism and every place a
// server can echo what it knows (the password, the token, the blob a
// mechanism sends, the OAuth client secret), in every encoding (quoted,
// escaped, split across lines, with a control or invisible character
// inserted, straddling the point where the exporter cuts the text, every
// base64 alphabet), no output shows 8 bytes of the secret in any form:
// not the metrics, the debug output, the result page, /logs as text and as
// HTML, the failure, the transcript, /config, nor the main log at debug
// and at the default level.
func TestSecretsNeverShownHoweverEchoed(t *testing.T) {
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "secret")
	if err := os.WriteFile(secretFile, []byte(echoSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range echoCases() {
		for _, enc := range echoEncodings {
			t.Run(c.mech+"/"+c.place+"/"+enc.name, func(t *testing.T) {
				t.Parallel()
				testSecretEcho(t, c, enc, secretFile)
			})
		}
	}
}

func testSecretEcho(t *testing.T, c echoCase, enc echoEncoding, secretFile string) {
	var srv *smtptest.Server
	var target, credential string
	// What must not show: the secret, and the blob the mechanism sends.
	forms := echoForms(echoSecret, 0, len(echoSecret))
	switch c.mech {
	case "OAuth client secret":
		endpoint := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := json.Marshal(map[string]string{
				// error is cut at 64 bytes, error_description at 200.
				"error":             strings.Join(enc.lines(echoSecret, 64), "\r\n"),
				"error_description": strings.Join(enc.lines(echoSecret, 200), "\r\n"),
			})
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			w.Write(body)
		}))
		t.Cleanup(endpoint.Close)
		// A key in the query of token_url is no more to be shown than
		// the client secret.
		credential = `oauth2:
          client_id: smtp-probe
          client_secret_file: ` + secretFile + `
          token_url: ` + endpoint.URL + `/token?api-key=` + url.QueryEscape(echoSecret)
		target = "127.0.0.1:25"
	default:
		var banner string
		credential = "password_file: " + secretFile
		switch c.mech {
		case "PLAIN":
			banner = "\x00" + secretUser + "\x00" + echoSecret
			forms = append(forms, echoForms(banner, len(banner)-len(echoSecret), len(banner))...)
		case "XOAUTH2", "OAUTHBEARER":
			credential = "token_file: " + secretFile
		default:
			banner = echoSecret
		}
		// The OAUTHBEARER blob names the server's port, known once it
		// listens.
		var echoed atomic.Pointer[string]
		first := banner
		echoed.Store(&first)
		srv = smtptest.NewScripted(t, func(conn *smtptest.Conn) { echoServer(c, enc, *echoed.Load())(conn) })
		target = srv.Addr()
		switch c.mech {
		case "XOAUTH2":
			banner = "user=" + secretUser + "\x01auth=Bearer " + echoSecret + "\x01\x01"
		case "OAUTHBEARER":
			banner = "n,a=" + secretUser + ",\x01host=127.0.0.1\x01port=" + strconv.Itoa(srv.Port()) + "\x01auth=Bearer " + echoSecret + "\x01\x01"
		}
		if c.mech == "XOAUTH2" || c.mech == "OAUTHBEARER" {
			from := strings.Index(banner, echoSecret)
			forms = append(forms, echoForms(banner, from, from+len(echoSecret))...)
			blob := banner
			echoed.Store(&blob)
		}
	}
	mech := c.mech
	if mech == "OAuth client secret" {
		mech = "XOAUTH2"
	}
	cfg := secretLoginConfig(t, mech, credential)
	var debugLog, defaultLog smtptest.LogBuffer
	logger := slog.New(fanout{
		slog.NewTextHandler(&debugLog, &slog.HandlerOptions{Level: slog.LevelDebug}),
		slog.NewTextHandler(&defaultLog, &slog.HandlerOptions{Level: slog.LevelInfo}),
	})
	history := NewHistory(10)
	handler := NewHandler(HandlerOpts{Config: cfg, Logger: logger, History: history, Registerer: prometheus.NewPedanticRegistry()})
	pages := NewPages(cfg, history, logger)
	get := func(h http.Handler, target string, header http.Header) string {
		req := httptest.NewRequest(http.MethodGet, target, nil)
		maps.Copy(req.Header, header)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			t.Fatalf("GET %s: status %d: %s", target, rec.Code, rec.Body)
		}
		return rec.Body.String()
	}
	query := "/probe?module=login&target=" + url.QueryEscape(target)
	outputs := map[string]string{
		"metrics":          get(handler, query, nil),
		"debug=true text":  get(handler, query+"&debug=true", nil),
		"result page":      html.UnescapeString(get(handler, query+"&view=html", nil)),
		"/config":          get(http.HandlerFunc(pages.Config), "/config", nil),
		"landing page":     html.UnescapeString(get(http.HandlerFunc(pages.Landing), "/", nil)),
		"main log (debug)": debugLog.String(),
	}
	if !strings.Contains(outputs["metrics"], "\nprobe_success 0\n") {
		t.Fatalf("the probe did not fail:\n%s", outputs["debug=true text"])
	}
	// The echo was seen, and redacted, in the failure or the transcript.
	seen := ""
	for _, e := range history.List() {
		id := strconv.FormatUint(e.ID, 10)
		outputs["/logs text "+id] = get(http.HandlerFunc(pages.Logs), "/logs?id="+id+"&view=text", nil)
		outputs["/logs HTML "+id] = html.UnescapeString(get(http.HandlerFunc(pages.Logs), "/logs?id="+id+"&view=html", nil))
		if r := e.Result; r != nil {
			if r.Failure != nil && r.Failure.Err != nil {
				outputs["error "+id] = r.Failure.Err.Error()
			}
			var b strings.Builder
			for _, l := range r.Transcript {
				b.WriteString(string(l.Dir) + ": " + l.Text + "\n")
			}
			if c.place != "token endpoint" { // no connection: no transcript
				outputs["transcript "+id] = b.String()
			}
			seen += outputs["error "+id] + outputs["transcript "+id]
		}
	}
	outputs["main log (default level)"] = defaultLog.String()
	if !strings.Contains(outputs["main log (default level)"], "level=WARN") {
		t.Errorf("the main log at the default level has no warning of the failure:\n%s", outputs["main log (default level)"])
	}
	// A blob with control characters, split across the lines of the
	// banner, breaks it before its secret half is read.
	brokenBefore := c.place == "banner" && enc.name == "split" && (c.mech == "PLAIN" || c.mech == "XOAUTH2" || c.mech == "OAUTHBEARER")
	if !brokenBefore && !strings.Contains(seen, prober.Redacted) {
		t.Errorf("nothing was redacted: the echo did not reach the prober\n%s", outputs["debug=true text"])
	}
	for where, out := range outputs {
		if out == "" {
			t.Errorf("%s is empty: nothing proven", where)
		}
		for _, f := range forms {
			if strings.Contains(out, f) {
				t.Errorf("%s shows %q of the secret:\n%s", where, f, out)
				break
			}
		}
	}
}

// secretLoginConfig is a config with one module, login, that logs in to
// 127.0.0.1 in plain text with mech, secretUser and credential (a
// password or token_file line) at every request.
func secretLoginConfig(t *testing.T, mech, credential string) *config.SafeConfig {
	t.Helper()
	return newTestConfig(t, `
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
}
