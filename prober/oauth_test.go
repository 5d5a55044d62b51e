package prober

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smtp-exporter/smtp_exporter/config"
	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

// Secrets of the OAuth tests, distinctive so that a leak is found by a
// substring search.
const (
	testClientID     = "smtp-probe-client"
	testClientSecret = "cl1ent-s3cret-leak-canary"
	testRefreshToken = "refresh-t0ken-leak-canary"
)

// loadAuthModule loads a plain-text module that may send credentials to
// 127.0.0.1, with the given lines (indented for "smtp:") added.
func loadAuthModule(t testing.TB, smtpLines string) config.Module {
	t.Helper()
	var b strings.Builder
	b.WriteString("modules:\n  test:\n    timeout: 5s\n    smtp:\n      tls: none\n      preferred_ip_protocol: ip4\n")
	b.WriteString("      allow_plaintext_auth: true\n      allowed_targets: [\"127.0.0.1\"]\n")
	for _, line := range strings.Split(strings.Trim(smtpLines, "\n"), "\n") {
		b.WriteString("      " + line + "\n")
	}
	cfg, err := config.Load([]byte(b.String()))
	if err != nil {
		t.Fatalf("loading module: %v\n%s", err, b.String())
	}
	return cfg.Modules["test"]
}

func writeFile(t testing.TB, dir, name, content string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// bearerServer is an SMTP server that accepts XOAUTH2 and OAUTHBEARER with
// the tokens it is told are valid, and refuses others the way Gmail does:
// a 334 with a JSON error, then 535 after the client's dummy answer.
type bearerServer struct {
	user       string
	mechanisms string // default "XOAUTH2 OAUTHBEARER"
	// refuseAtOnce answers a bad token with 535 without the JSON error, as
	// Microsoft 365 does.
	refuseAtOnce bool
	// errorJSON is the JSON error sent for a bad token; default Google's
	// {"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}.
	errorJSON string
	// finalReply ends a refused exchange; default "535 5.7.8 Username and
	// Password not accepted".
	finalReply string

	mu      sync.Mutex
	valid   map[string]bool
	seen    []string // tokens presented, in order
	dummies []string // the client's answers to the JSON error
	bad     []string // malformed initial responses
}

func newBearerServer(t *testing.T, b *bearerServer, valid ...string) *smtptest.Server {
	b.valid = map[string]bool{}
	for _, v := range valid {
		b.valid[v] = true
	}
	return smtptest.NewScripted(t, b.handle)
}

func (b *bearerServer) setValid(tokens ...string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.valid = map[string]bool{}
	for _, v := range tokens {
		b.valid[v] = true
	}
}

func (b *bearerServer) tokens() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.seen...)
}

func (b *bearerServer) handle(c *smtptest.Conn) {
	mechs := b.mechanisms
	if mechs == "" {
		mechs = "XOAUTH2 OAUTHBEARER"
	}
	smtptest.AuthSession{Host: "bearer.test", Extensions: []string{"AUTH " + mechs, "ENHANCEDSTATUSCODES"}, Auth: b.auth}.Handle(c)
}

func (b *bearerServer) auth(c *smtptest.Conn, arg string) bool {
	mech, ir, _ := strings.Cut(arg, " ")
	raw, err := base64.StdEncoding.DecodeString(ir)
	if err != nil {
		return c.WriteLine("501 5.5.2 bad initial response") == nil
	}
	msg := string(raw)
	var user, kvs string
	switch mech {
	case "XOAUTH2":
		rest, ok := strings.CutPrefix(msg, "user=")
		user, kvs, _ = strings.Cut(rest, "\x01")
		if !ok {
			user = ""
		}
	case "OAUTHBEARER":
		gs2, rest, ok := strings.Cut(msg, ",\x01")
		if ok && strings.HasPrefix(gs2, "n,a=") {
			user, kvs = strings.TrimPrefix(gs2, "n,a="), rest
		}
		if !strings.Contains(kvs, "host=127.0.0.1\x01") || !strings.Contains(kvs, "port=") {
			user = ""
		}
	default:
		return c.WriteLine("504 5.5.4 Unsupported authentication mechanism") == nil
	}
	token, ok := strings.CutPrefix(strings.TrimSuffix(kvs[strings.Index(kvs, "auth=")+len("auth="):], "\x01\x01"), "Bearer ")
	if user != b.user || !strings.HasSuffix(msg, "\x01\x01") || !ok || !strings.Contains(kvs, "auth=") {
		b.mu.Lock()
		b.bad = append(b.bad, msg)
		b.mu.Unlock()
		return c.WriteLine("501 5.5.2 malformed "+mech) == nil
	}
	b.mu.Lock()
	b.seen = append(b.seen, token)
	valid := b.valid[token]
	b.mu.Unlock()
	if valid {
		return c.WriteLine("235 2.7.0 Accepted") == nil
	}
	if !b.refuseAtOnce {
		detail, _ := json.Marshal(map[string]string{"status": "401", "schemes": "bearer", "scope": "https://mail.google.com/"})
		if b.errorJSON != "" {
			detail = []byte(b.errorJSON)
		}
		if c.WriteLine("334 "+base64.StdEncoding.EncodeToString(detail)) != nil {
			return false
		}
		dummy, err := c.ReadLine()
		if err != nil {
			return false
		}
		b.mu.Lock()
		b.dummies = append(b.dummies, dummy)
		b.mu.Unlock()
	}
	if b.finalReply != "" {
		return c.WriteLine(b.finalReply) == nil
	}
	return c.WriteLine("535 5.7.8 Username and Password not accepted") == nil
}

// tokenEndpoint is an OAuth 2.0 token endpoint on 127.0.0.1 that checks
// the client's credentials and issues numbered tokens.
type tokenEndpoint struct {
	clientSecret string
	refreshToken string        // the refresh token it accepts; rotated at each use when rotate
	rotate       bool          // issue a new refresh token at every refresh
	expiresIn    int           // seconds; 0 leaves expires_in out
	delay        time.Duration // before answering

	mu       sync.Mutex
	requests int
	grants   []string
}

func (e *tokenEndpoint) start(t *testing.T) string {
	srv := httptest.NewServer(http.HandlerFunc(e.serve))
	t.Cleanup(srv.Close)
	return srv.URL + "/oauth2/token"
}

func (e *tokenEndpoint) count() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.requests
}

func (e *tokenEndpoint) serve(w http.ResponseWriter, r *http.Request) {
	// Reading the body first lets the server notice a client that gives up.
	if err := r.ParseForm(); err != nil || r.Method != http.MethodPost {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	if e.delay > 0 {
		select {
		case <-time.After(e.delay):
		case <-r.Context().Done():
			return
		}
	}
	id, secret, ok := r.BasicAuth()
	if !ok {
		id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.requests++
	grant := r.PostForm.Get("grant_type")
	e.grants = append(e.grants, grant)
	fail := func(code, description string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": description})
	}
	if id != testClientID || secret != e.clientSecret {
		// Echo what was presented, as careless endpoints do: the exporter
		// must not show it.
		fail("invalid_client", "client secret "+secret+" is not valid")
		return
	}
	resp := map[string]any{"access_token": fmt.Sprintf("access-token-%d-%s", e.requests, strings.Repeat("x", 20)), "token_type": "Bearer"}
	switch grant {
	case "client_credentials":
	case "refresh_token":
		if r.PostForm.Get("refresh_token") != e.refreshToken {
			fail("invalid_grant", "refresh token "+r.PostForm.Get("refresh_token")+" expired")
			return
		}
		if e.rotate {
			e.refreshToken = fmt.Sprintf("rotated-refresh-%d", e.requests)
			resp["refresh_token"] = e.refreshToken
		}
	default:
		fail("unsupported_grant_type", grant)
		return
	}
	if e.expiresIn > 0 {
		resp["expires_in"] = e.expiresIn
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(resp)
}

func TestProbeBearerTokenFile(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		mechanism, offered, want string
	}{
		{"XOAUTH2", "", "XOAUTH2"},
		{"OAUTHBEARER", "", "OAUTHBEARER"},
		{"auto", "PLAIN LOGIN XOAUTH2 OAUTHBEARER", "OAUTHBEARER"},
		{"auto", "LOGIN XOAUTH2", "XOAUTH2"},
	} {
		t.Run(tc.mechanism+"/"+tc.offered, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			tokenFile := writeFile(t, dir, "token", "ya29.first-token-leak-canary\n")
			b := &bearerServer{user: testUser, mechanisms: tc.offered}
			srv := newBearerServer(t, b, "ya29.first-token-leak-canary", "ya29.second-token-leak-canary")
			m := loadAuthModule(t, fmt.Sprintf("auth:\n  mechanism: %s\n  username: %s\n  token_file: %q", tc.mechanism, testUser, tokenFile))

			r, log := runProbe(t, srv.Addr(), m)
			requireSuccess(t, r, log)
			if r.AuthMechanism != tc.want {
				t.Errorf("mechanism %s, want %s", r.AuthMechanism, tc.want)
			}
			// The file is read at every probe.
			writeFile(t, dir, "token", "ya29.second-token-leak-canary")
			r2, log2 := runProbe(t, srv.Addr(), m)
			requireSuccess(t, r2, log2)
			if got := b.tokens(); len(got) != 2 || got[0] != "ya29.first-token-leak-canary" || got[1] != "ya29.second-token-leak-canary" {
				t.Errorf("server saw tokens %q", got)
			}
			for _, res := range []struct {
				r   *Result
				log string
			}{{r, log}, {r2, log2}} {
				assertNoSecrets(t, res.r, res.log, "first-token-leak-canary", "second-token-leak-canary")
				if !strings.Contains(transcriptText(res.r), "C: AUTH "+tc.want+" "+Redacted+"\n") {
					t.Errorf("AUTH line not redacted:\n%s", transcriptText(res.r))
				}
			}
		})
	}
}

func TestProbeBearerTokenRejected(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		mechanism    string
		refuseAtOnce bool
		dummy        string // the client's answer to the JSON error, "-" for none
	}{
		{"XOAUTH2", false, ""},
		{"OAUTHBEARER", false, "AQ=="}, // base64 of %x01
		{"XOAUTH2", true, "-"},
	} {
		t.Run(fmt.Sprintf("%s/at-once=%v", tc.mechanism, tc.refuseAtOnce), func(t *testing.T) {
			t.Parallel()
			tokenFile := writeFile(t, t.TempDir(), "token", "expired-token-leak-canary")
			b := &bearerServer{user: testUser, refuseAtOnce: tc.refuseAtOnce}
			srv := newBearerServer(t, b)
			m := loadAuthModule(t, fmt.Sprintf("auth:\n  mechanism: %s\n  username: %s\n  token_file: %q", tc.mechanism, testUser, tokenFile))
			r, log := runProbe(t, srv.Addr(), m)
			requireFailure(t, r, PhaseAuth, ReasonTokenRejected)
			if auth := phaseOf(t, r, PhaseAuth); auth.Code != 535 || auth.Enhanced != "5.7.8" {
				t.Errorf("auth phase %+v, want the final 535 5.7.8", auth)
			}
			if q := phaseOf(t, r, PhaseQuit); q.Code != 221 {
				t.Errorf("no QUIT after the refusal: %+v", q)
			}
			srv.Close()
			b.mu.Lock()
			dummies := b.dummies
			b.mu.Unlock()
			got := "-"
			if len(dummies) > 0 {
				got = dummies[0]
			}
			if got != tc.dummy {
				t.Errorf("client answered the JSON error with %q, want %q", got, tc.dummy)
			}
			if !tc.refuseAtOnce && (!strings.Contains(log, "Server refused the bearer token") ||
				!strings.Contains(log, "status=401") || !strings.Contains(log, "scope=https://mail.google.com/")) {
				t.Errorf("the decoded JSON error is not logged:\n%s", log)
			}
			assertNoSecrets(t, r, log, "expired-token-leak-canary")
		})
	}
}

// Only an invalid token is token_rejected: the JSON error's status decides
// over the final 5xx (Google ends every refusal with 535 5.7.8), a
// throttling or 4xx final reply over the status, and without a status the
// final reply decides. expect_auth_rejected accepts only token_rejected.
func TestProbeBearerRefusalReasons(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		mechanism  string
		errorJSON  string // "" for Google's 401; "-" for none (refused at once)
		finalReply string // "" for 535 5.7.8
		reason     Reason
		code       int
		enhanced   string
	}{
		{name: "Google 401", mechanism: "XOAUTH2",
			reason: ReasonTokenRejected, code: 535, enhanced: "5.7.8"},
		{name: "status as a number", mechanism: "XOAUTH2", errorJSON: `{"status":401,"schemes":"bearer"}`,
			reason: ReasonTokenRejected, code: 535, enhanced: "5.7.8"},
		{name: "RFC 7628 invalid_token", mechanism: "OAUTHBEARER", errorJSON: `{"status":"invalid_token","scope":"mail"}`,
			reason: ReasonTokenRejected, code: 535, enhanced: "5.7.8"},
		{name: "Google 400", mechanism: "XOAUTH2", errorJSON: `{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}`,
			reason: ReasonAuthRefused, code: 535, enhanced: "5.7.8"},
		{name: "insufficient scope", mechanism: "OAUTHBEARER", errorJSON: `{"status":"insufficient_scope","scope":"https://outlook.office.com/SMTP.Send"}`,
			reason: ReasonAuthRefused, code: 535, enhanced: "5.7.8"},
		{name: "no status", mechanism: "XOAUTH2", errorJSON: `{"schemes":"bearer"}`,
			reason: ReasonTokenRejected, code: 535, enhanced: "5.7.8"},
		{name: "not JSON", mechanism: "XOAUTH2", errorJSON: `token expired`,
			reason: ReasonTokenRejected, code: 535, enhanced: "5.7.8"},
		{name: "401, then too many attempts", mechanism: "XOAUTH2", finalReply: "454 4.7.0 Too many login attempts, please try again later",
			reason: ReasonAuthThrottled, code: 454, enhanced: "4.7.0"},
		{name: "401, then 454", mechanism: "OAUTHBEARER", finalReply: "454 4.7.0 Temporary authentication failure",
			reason: ReasonAuthTemporaryFailure, code: 454, enhanced: "4.7.0"},
		{name: "Microsoft 365 refused at once", mechanism: "XOAUTH2", errorJSON: "-", finalReply: "535 5.7.3 Authentication unsuccessful",
			reason: ReasonTokenRejected, code: 535, enhanced: "5.7.3"},
		{name: "Microsoft 365 SMTP AUTH off", mechanism: "XOAUTH2", errorJSON: "-",
			finalReply: "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
			reason:     ReasonAuthDisabled, code: 535, enhanced: "5.7.139"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tokenFile := writeFile(t, t.TempDir(), "token", "refused-token-leak-canary")
			b := &bearerServer{user: testUser, errorJSON: tc.errorJSON, finalReply: tc.finalReply, refuseAtOnce: tc.errorJSON == "-"}
			srv := newBearerServer(t, b)
			auth := fmt.Sprintf("auth:\n  mechanism: %s\n  username: %s\n  token_file: %q", tc.mechanism, testUser, tokenFile)
			for _, expectRejected := range []bool{false, true} {
				lines := auth
				if expectRejected {
					lines += "\nexpect_auth_rejected: true"
				}
				r, log := runProbe(t, srv.Addr(), loadAuthModule(t, lines))
				if expectRejected && tc.reason == ReasonTokenRejected {
					requireSuccess(t, r, log)
				} else {
					requireFailure(t, r, PhaseAuth, tc.reason)
				}
				if a := phaseOf(t, r, PhaseAuth); a.Code != tc.code || a.Enhanced != tc.enhanced {
					t.Errorf("expect_auth_rejected %v: auth phase %+v, want code %d enhanced %q", expectRejected, a, tc.code, tc.enhanced)
				}
				if q := phaseOf(t, r, PhaseQuit); q.Code != 221 {
					t.Errorf("no QUIT after the refusal: %+v", q)
				}
				assertNoSecrets(t, r, log, "refused-token-leak-canary")
			}
			if n := len(b.tokens()); n != 2 {
				t.Errorf("server saw %d tokens, want 2", n)
			}
		})
	}
}

func TestProbeBearerTokenUnavailable(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	srv := newBearerServer(t, &bearerServer{user: testUser})
	for name, content := range map[string]string{
		"missing": "",
		"empty":   "\n",
		"spaces":  "two words",
		"control": "tok\x01auth=Bearer injected",
	} {
		path := filepath.Join(dir, name)
		if name != "missing" {
			path = writeFile(t, dir, name, content)
		}
		m := loadAuthModule(t, fmt.Sprintf("auth:\n  username: %s\n  token_file: %q", testUser, path))
		r, _ := runProbe(t, srv.Addr(), m)
		requireFailure(t, r, PhaseSetup, ReasonTokenUnavailable)
		if phaseOf(t, r, PhaseConnect).Ran {
			t.Errorf("%s: connected without a token", name)
		}
	}
	if srv.Connections() != 0 {
		t.Errorf("server got %d connections", srv.Connections())
	}
}

// oauthModule is a module with an OAuth 2.0 client for endpoint url.
func oauthModule(t testing.TB, mechanism, url, secretFile, refreshFile string) config.Module {
	t.Helper()
	lines := fmt.Sprintf("auth:\n  mechanism: %s\n  username: %s\n  oauth2:\n    client_id: %s\n    token_url: %s\n    scopes: [https://mail.example.net/.default]",
		mechanism, testUser, testClientID, url)
	if secretFile != "" {
		lines += fmt.Sprintf("\n    client_secret_file: %q", secretFile)
	}
	if refreshFile != "" {
		lines += fmt.Sprintf("\n    refresh_token_file: %q", refreshFile)
	}
	return loadAuthModule(t, lines)
}

func TestProbeOAuthClientCredentials(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	secretFile := writeFile(t, dir, "secret", testClientSecret+"\n")
	endpoint := &tokenEndpoint{clientSecret: testClientSecret, expiresIn: 3600}
	url := endpoint.start(t)
	b := &bearerServer{user: testUser}
	srv := newBearerServer(t, b, "access-token-1-"+strings.Repeat("x", 20), "access-token-2-"+strings.Repeat("x", 20))
	m := oauthModule(t, "XOAUTH2", url, secretFile, "")

	// Concurrent probes of one client make one token request.
	var wg sync.WaitGroup
	results := make([]*Result, 4)
	logs := make([]string, 4)
	for i := range results {
		wg.Go(func() { results[i], logs[i] = runProbe(t, srv.Addr(), m) })
	}
	wg.Wait()
	for i, r := range results {
		requireSuccess(t, r, logs[i])
		assertNoSecrets(t, r, logs[i], testClientSecret, "access-token-1-")
	}
	if n := endpoint.count(); n != 1 {
		t.Errorf("%d token requests for 4 probes, want 1 (cached)", n)
	}
	if got := b.tokens(); len(got) != 4 || got[3] != "access-token-1-"+strings.Repeat("x", 20) {
		t.Errorf("server saw tokens %q", got)
	}

	// A new client secret (a rotated file) is a new client: a fresh token.
	writeFile(t, dir, "secret", "rotated-secret")
	endpoint.mu.Lock()
	endpoint.clientSecret = "rotated-secret"
	endpoint.mu.Unlock()
	r, log := runProbe(t, srv.Addr(), m)
	requireSuccess(t, r, log)
	if n := endpoint.count(); n != 2 {
		t.Errorf("%d token requests after the secret changed, want 2", n)
	}

	// A refused token is dropped from the cache: the next probe asks for
	// another instead of retrying it.
	b.setValid("access-token-3-" + strings.Repeat("x", 20))
	r, log = runProbe(t, srv.Addr(), m)
	requireFailure(t, r, PhaseAuth, ReasonTokenRejected)
	r, log = runProbe(t, srv.Addr(), m)
	requireSuccess(t, r, log)
	if n := endpoint.count(); n != 3 {
		t.Errorf("%d token requests after a refused token, want 3", n)
	}
}

func TestProbeOAuthTokenRefreshedBeforeExpiry(t *testing.T) {
	t.Parallel()
	secretFile := writeFile(t, t.TempDir(), "secret", testClientSecret)
	// A token valid for less than the early-expiry margin is never reused.
	endpoint := &tokenEndpoint{clientSecret: testClientSecret, expiresIn: int(tokenEarlyExpiry/time.Second) - 10}
	url := endpoint.start(t)
	b := &bearerServer{user: testUser}
	srv := newBearerServer(t, b, "access-token-1-"+strings.Repeat("x", 20), "access-token-2-"+strings.Repeat("x", 20))
	m := oauthModule(t, "OAUTHBEARER", url, secretFile, "")
	for range 2 {
		r, log := runProbe(t, srv.Addr(), m)
		requireSuccess(t, r, log)
	}
	if n := endpoint.count(); n != 2 {
		t.Errorf("%d token requests, want 2: a token about to expire must be replaced", n)
	}
}

func TestProbeOAuthRefreshToken(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	refreshFile := writeFile(t, dir, "refresh", testRefreshToken+"\n")
	endpoint := &tokenEndpoint{clientSecret: "", refreshToken: testRefreshToken, rotate: true, expiresIn: 1}
	url := endpoint.start(t)
	b := &bearerServer{user: testUser}
	srv := newBearerServer(t, b, "access-token-1-"+strings.Repeat("x", 20), "access-token-2-"+strings.Repeat("x", 20))
	// A public client: no secret, only the refresh token.
	m := oauthModule(t, "XOAUTH2", url, "", refreshFile)
	for i := range 2 {
		r, log := runProbe(t, srv.Addr(), m)
		requireSuccess(t, r, log)
		assertNoSecrets(t, r, log, testRefreshToken, "rotated-refresh-")
		if want := i + 1; endpoint.count() != want {
			t.Fatalf("%d token requests after %d probes", endpoint.count(), want)
		}
	}
	// The second refresh used the rotated refresh token, not the file's,
	// which the endpoint no longer accepts.
	endpoint.mu.Lock()
	defer endpoint.mu.Unlock()
	if len(endpoint.grants) != 2 || endpoint.grants[0] != "refresh_token" || endpoint.grants[1] != "refresh_token" {
		t.Errorf("grants %q", endpoint.grants)
	}
}

func TestProbeOAuthEndpointFailures(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	secretFile := writeFile(t, dir, "secret", testClientSecret)
	b := &bearerServer{user: testUser}
	srv := newBearerServer(t, b)

	// The endpoint refuses the secret and echoes it back.
	refusing := &tokenEndpoint{clientSecret: "another-secret"}
	m := oauthModule(t, "XOAUTH2", refusing.start(t), secretFile, "")
	r, log := runProbe(t, srv.Addr(), m)
	requireFailure(t, r, PhaseSetup, ReasonTokenUnavailable)
	if !strings.Contains(r.Failure.Err.Error(), `error "invalid_client"`) || !strings.Contains(r.Failure.Err.Error(), "401") {
		t.Errorf("failure %q does not say what the endpoint answered", r.Failure.Err)
	}
	assertNoSecrets(t, r, log, testClientSecret)

	// A missing client secret file.
	m = oauthModule(t, "XOAUTH2", refusing.start(t), filepath.Join(dir, "missing"), "")
	r, _ = runProbe(t, srv.Addr(), m)
	requireFailure(t, r, PhaseSetup, ReasonTokenUnavailable)

	// An endpoint that does not answer within the probe's timeout.
	slow := &tokenEndpoint{clientSecret: testClientSecret, delay: 10 * time.Second}
	m = oauthModule(t, "XOAUTH2", slow.start(t), secretFile, "")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	r, _ = runProbeCtx(t, ctx, srv.Addr(), m)
	requireFailure(t, r, PhaseSetup, ReasonTimeout)
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Errorf("probe took %v with a 300ms timeout", elapsed)
	}
	if srv.Connections() != 0 {
		t.Errorf("server got %d connections without a token", srv.Connections())
	}
}

func TestTokenCacheIsBounded(t *testing.T) {
	t.Parallel()
	c := newTokenCache()
	now := time.Now()
	key := func(i int) (k [32]byte) {
		k[0], k[1] = byte(i), byte(i>>8)
		return k
	}
	const n = maxTokenCacheSize + 50
	for i := range n {
		c.entry(key(i), now.Add(time.Duration(i)*time.Second))
	}
	if n := c.size(); n > maxTokenCacheSize {
		t.Errorf("cache holds %d entries, more than %d", n, maxTokenCacheSize)
	}
	// The most recently used survives; the least recently used went first.
	c.mu.Lock()
	_, hasNewest := c.entries[key(n-1)]
	_, hasOldest := c.entries[key(0)]
	c.mu.Unlock()
	if !hasNewest || hasOldest {
		t.Errorf("newest kept %v, oldest kept %v", hasNewest, hasOldest)
	}
}
