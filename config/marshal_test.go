package config

import (
	"strings"
	"testing"
)

// token_url is shown without the values of its query, wherever the
// configuration is marshalled: keys sometimes live there.
func TestMarshalHidesTokenURLQuery(t *testing.T) {
	cfg, err := Load([]byte(`
modules:
  oauth:
    smtp:
      auth:
        username: probe@example.net
        oauth2:
          client_id: smtp-probe
          client_secret: inline-s3cret
          token_url: https://login.example.net/token?api-key=k3y-in-query&tenant=t3nant#frag-s3cret
      allowed_targets: ["*"]
`))
	if err != nil {
		t.Fatal(err)
	}
	whole, err := cfg.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	module, err := MarshalModule(cfg.Modules["oauth"])
	if err != nil {
		t.Fatal(err)
	}
	for name, out := range map[string]string{"Marshal": string(whole), "MarshalModule": string(module)} {
		for _, secret := range []string{"inline-s3cret", "k3y-in-query", "t3nant", "frag-s3cret"} {
			if strings.Contains(out, secret) {
				t.Errorf("%s shows %q:\n%s", name, secret, out)
			}
		}
		if !strings.Contains(out, "token_url: https://login.example.net/token?api-key=<secret>&tenant=<secret>#<secret>") {
			t.Errorf("%s does not show token_url with its query hidden:\n%s", name, out)
		}
	}
	// The configuration itself keeps the URL to use.
	if got := cfg.Modules["oauth"].SMTP.Auth.OAuth2.TokenURL; !strings.Contains(got, "k3y-in-query") {
		t.Errorf("TokenURL changed to %q", got)
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"https://login.example.net/token":              "https://login.example.net/token",
		"https://login.example.net/token?":             "https://login.example.net/token?",
		"https://login.example.net/token?key=v":        "https://login.example.net/token?key=<secret>",
		"https://login.example.net/token?bare&k=v&k=w": "https://login.example.net/token?<secret>&k=<secret>&k=<secret>",
		"https://login.example.net/token#fragment":     "https://login.example.net/token#<secret>",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}
