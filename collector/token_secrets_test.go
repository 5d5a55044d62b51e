package collector

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

// An OAuth 2.0 module end to end: the client secret and the access token
// reach the token endpoint and the SMTP server, and nothing else: not the
// response, the debug output, the history, the main log or /config.
func TestOAuthSecretsStayHidden(t *testing.T) {
	const (
		clientSecret = "oauth-cl1ent-secret-canary"
		inlineSecret = "inline-cl1ent-secret-canary"
		accessToken  = "ya29.access-t0ken-canary"
	)
	endpoint := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, secret, _ := r.BasicAuth(); secret != clientSecret {
			http.Error(w, `{"error":"invalid_client"}`, http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"access_token": accessToken, "token_type": "Bearer", "expires_in": 3600})
	}))
	t.Cleanup(endpoint.Close)
	// The server accepts any XOAUTH2 response; what matters is that the
	// token went over the wire.
	srv := smtptest.NewReplyServer(t, "220 oauth.test ESMTP\r\n", map[string]string{
		"EHLO": "250-oauth.test\r\n250 AUTH XOAUTH2 OAUTHBEARER\r\n",
		"AUTH": "235 2.7.0 Accepted\r\n",
	})
	secretFile := filepath.Join(t.TempDir(), "client.secret")
	if err := os.WriteFile(secretFile, []byte(clientSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := newTestConfig(t, `
modules:
  oauth:
    smtp:
      tls: none
      preferred_ip_protocol: ip4
      allow_plaintext_auth: true
      auth:
        mechanism: XOAUTH2
        username: probe@example.net
        oauth2:
          client_id: smtp-probe
          client_secret_file: `+secretFile+`
          token_url: `+endpoint.URL+`/token
      allowed_targets: ["127.0.0.1"]
  inline:
    smtp:
      auth:
        username: probe@example.net
        oauth2:
          client_id: smtp-probe
          client_secret: `+inlineSecret+`
          token_url: https://login.example.net/token
      allowed_targets: ["*"]
`)
	env := newTestEnv(t, HandlerOpts{Config: cfg})
	target := url.QueryEscape(srv.Addr())

	outputs := map[string]string{}
	rec := env.get(t, env.handler, "module=oauth&target="+target, nil)
	outputs["response"] = rec.Body.String()
	if !strings.Contains(outputs["response"], "probe_success 1\n") ||
		!strings.Contains(outputs["response"], `probe_smtp_auth_mechanism_used_info{mechanism="XOAUTH2"} 1`) {
		t.Fatalf("probe failed:\n%s", outputs["response"])
	}
	outputs["debug"] = env.get(t, env.handler, "module=oauth&target="+target+"&debug=true", nil).Body.String()
	if !strings.Contains(outputs["debug"], "C: AUTH XOAUTH2 <redacted>") {
		t.Errorf("debug output lacks the redacted AUTH line:\n%s", outputs["debug"])
	}
	configPage := httptest.NewRecorder()
	env.pages.Config(configPage, httptest.NewRequest(http.MethodGet, "/config", nil))
	outputs["/config"] = configPage.Body.String()
	if !strings.Contains(outputs["/config"], "client_secret: <secret>") {
		t.Errorf("/config does not show the inline secret as <secret>:\n%s", outputs["/config"])
	}
	outputs["main log"] = env.mainLog.String()
	for _, e := range env.history.List() {
		var b strings.Builder
		if err := e.WriteDebug(&b); err != nil {
			t.Fatal(err)
		}
		outputs["history "+e.ProbeID] = b.String()
	}

	// What the server received, to make sure the secret was really used.
	var wire string
	for _, l := range srv.Lines() {
		if strings.HasPrefix(l, "AUTH XOAUTH2 ") {
			wire = strings.TrimPrefix(l, "AUTH XOAUTH2 ")
		}
	}
	blob, err := base64.StdEncoding.DecodeString(wire)
	if err != nil || !strings.Contains(string(blob), "auth=Bearer "+accessToken+"\x01\x01") {
		t.Fatalf("the server did not receive the token: %q", blob)
	}
	for where, out := range outputs {
		for _, secret := range []string{clientSecret, inlineSecret, accessToken, wire} {
			if strings.Contains(out, secret) {
				t.Errorf("%s shows %q", where, secret)
			}
		}
	}
}
