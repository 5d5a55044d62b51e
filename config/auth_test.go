package config

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
)

func TestSafetyAndPostureDefaults(t *testing.T) {
	cfg, err := Load([]byte(`
modules:
  plain:
    smtp: {}
  tuned:
    min_interval: 30s
    auth_failure_backoff: 0s
    smtp:
      tls: starttls
      fail_if_auth_offered_without_tls: true
      fail_if_mechanisms_offered: [plain, Login]
`))
	if err != nil {
		t.Fatal(err)
	}
	plain := cfg.Modules["plain"]
	if plain.MinInterval != 0 || plain.AuthFailureBackoff != model.Duration(5*time.Minute) {
		t.Errorf("defaults min_interval %v auth_failure_backoff %v, want 0 and 5m", plain.MinInterval, plain.AuthFailureBackoff)
	}
	if plain.SMTP.FailIfAuthOfferedWithoutTLS || plain.SMTP.FailIfMechanismsOffered != nil || plain.SMTP.ExpectAuthRejected {
		t.Errorf("posture checks on by default: %+v", plain.SMTP)
	}
	tuned := cfg.Modules["tuned"]
	if tuned.MinInterval != model.Duration(30*time.Second) || tuned.AuthFailureBackoff != 0 {
		t.Errorf("min_interval %v auth_failure_backoff %v, want 30s and an explicit 0", tuned.MinInterval, tuned.AuthFailureBackoff)
	}
	if got := tuned.SMTP.FailIfMechanismsOffered; !slices.Equal(got, []string{"PLAIN", "LOGIN"}) {
		t.Errorf("fail_if_mechanisms_offered = %v, want upper-cased [PLAIN LOGIN]", got)
	}
}

func TestTokenAuth(t *testing.T) {
	cfg, err := Load([]byte(`
modules:
  token_file:
    smtp:
      auth:
        username: probe@example.net
        token_file: /run/secrets/token
      allowed_targets: ["*"]
  client_credentials:
    smtp:
      auth:
        mechanism: oauthbearer
        username: probe@example.net
        oauth2:
          client_id: smtp-probe
          client_secret: client-s3cret-never-shown
          token_url: https://login.example.net/oauth2/token
          scopes: [https://outlook.office365.com/.default]
      allowed_targets: ["*"]
  refresh_token:
    smtp:
      auth:
        mechanism: XOAUTH2
        username: probe@example.net
        oauth2:
          client_id: smtp-probe
          token_url: http://127.0.0.1:8080/token
          refresh_token_file: /run/secrets/refresh
      allowed_targets: ["*"]
  password:
    smtp:
      auth:
        username: probe@example.net
        password: pw
      allowed_targets: ["*"]
`))
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string][]string{
		"token_file":         {"OAUTHBEARER", "XOAUTH2"},
		"client_credentials": {"OAUTHBEARER", "XOAUTH2"},
		"refresh_token":      {"OAUTHBEARER", "XOAUTH2"},
		"password":           {"SCRAM-SHA-256", "SCRAM-SHA-1", "CRAM-MD5", "PLAIN", "LOGIN"},
	} {
		if got := cfg.Modules[name].SMTP.Auth.AutoMechanisms(); !slices.Equal(got, want) {
			t.Errorf("%s: auto chooses among %v, want %v", name, got, want)
		}
	}
	if got := cfg.Modules["client_credentials"].SMTP.Auth.Mechanism; got != MechanismOAUTHBEARER {
		t.Errorf("mechanism %q, want it upper-cased", got)
	}
	out, err := cfg.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "client-s3cret") || !strings.Contains(string(out), "client_secret: <secret>") {
		t.Errorf("client secret not hidden:\n%s", out)
	}
}

// The account's ID is the same for every module that logs in as one user and
// its Secret changes when any secret it logs in with changes, so that a
// hold after a rejection spans the account's modules and ends with a new
// password; neither is the secret itself.
func TestAccount(t *testing.T) {
	write := fileWriter(t)
	passFile := write("pass", "first-password\n")
	tokenFile := write("token", "token-1")
	secretFile := write("secret", "client-secret-1")
	refreshFile := write("refresh", "refresh-1")

	account := func(a *Auth) Account { t.Helper(); return mustAccount(t, a) }
	hash := func(a *Auth) [32]byte { return account(a).Secret }
	id := func(a *Auth) [32]byte { return account(a).ID }
	for _, tc := range []struct {
		name   string
		auth   *Auth
		change func()
	}{
		{"password_file", &Auth{PasswordFile: passFile}, func() { write("pass", "second-password\n") }},
		{"token_file", &Auth{TokenFile: tokenFile}, func() { write("token", "token-2") }},
		{"client secret", &Auth{OAuth2: &OAuth2{ClientSecretFile: secretFile, RefreshTokenFile: refreshFile}}, func() { write("secret", "client-secret-2") }},
		{"refresh token", &Auth{OAuth2: &OAuth2{ClientSecretFile: secretFile, RefreshTokenFile: refreshFile}}, func() { write("refresh", "refresh-2") }},
	} {
		before := hash(tc.auth)
		if again := hash(tc.auth); again != before {
			t.Errorf("%s: hash not stable", tc.name)
		}
		if strings.Contains(string(before[:]), "password") || strings.Contains(string(before[:]), "token") {
			t.Errorf("%s: hash holds the secret", tc.name)
		}
		idBefore := id(tc.auth)
		tc.change()
		if after := hash(tc.auth); after == before {
			t.Errorf("%s: hash unchanged after the secret changed", tc.name)
		}
		if id(tc.auth) != idBefore {
			t.Errorf("%s: the account's ID changed with its secret", tc.name)
		}
	}
	// The same text as a password and as a token are different credentials.
	if hash(&Auth{Password: "x"}) == hash(&Auth{TokenFile: write("x", "x")}) {
		t.Error("a password and a token with the same text hash alike")
	}
	if id(&Auth{Username: "a", Password: "x"}) == id(&Auth{Username: "b", Password: "x"}) {
		t.Error("two usernames with one password are one account")
	}
	if account(&Auth{Username: "a", Password: "x", Mechanism: "PLAIN"}) != account(&Auth{Username: "a", PasswordFile: write("a", "x\n"), Mechanism: "LOGIN"}) {
		t.Error("one username and password, inline and from a file, with two mechanisms, are two accounts")
	}
	if id(&Auth{Username: "a", OAuth2: &OAuth2{ClientID: "c1", ClientSecret: "s"}}) == id(&Auth{Username: "a", OAuth2: &OAuth2{ClientID: "c2", ClientSecret: "s"}}) {
		t.Error("two OAuth clients are one account")
	}
	if _, err := (&Auth{PasswordFile: filepath.Join(t.TempDir(), "missing")}).Account(); err == nil {
		t.Error("missing password file hashed without error")
	}
}

// TestWithSecretsRead: the copy answers with the secrets as they were when
// it was made, however the files change after; the original reads them
// afresh; an Auth without secret files is returned as it is; a file that
// could not be read is an error naming it, which the copy keeps giving
// without reading again.
func TestWithSecretsRead(t *testing.T) {
	write := fileWriter(t)
	// secrets is what the Auth's Read methods give, as one string.
	secrets := func(a *Auth) string {
		t.Helper()
		var parts []string
		for _, read := range []func() (string, error){a.ReadPassword, a.ReadToken} {
			if s, err := read(); err == nil {
				parts = append(parts, s)
			}
		}
		if o := a.OAuth2; o != nil {
			for _, read := range []func() (string, error){o.ReadClientSecret, o.ReadRefreshToken} {
				s, err := read()
				if err != nil {
					t.Fatal(err)
				}
				parts = append(parts, s)
			}
		}
		return strings.Join(parts, "|")
	}
	for _, tc := range []struct {
		name   string
		auth   *Auth
		change func()
	}{
		{"password_file", &Auth{Username: "u", PasswordFile: write("pass", "password-1\n")}, func() { write("pass", "password-2\n") }},
		{"token_file", &Auth{Username: "u", TokenFile: write("token", "token-1")}, func() { write("token", "token-2") }},
		{"oauth2", &Auth{Username: "u", OAuth2: &OAuth2{ClientID: "c", ClientSecretFile: write("secret", "secret-1"), RefreshTokenFile: write("refresh", "refresh-1")}},
			func() { write("secret", "secret-2"); write("refresh", "refresh-2") }},
	} {
		read := tc.auth.WithSecretsRead()
		want, wantAccount := secrets(tc.auth), mustAccount(t, tc.auth)
		tc.change()
		if got := secrets(read); got != want {
			t.Errorf("%s: the copy gives %q after the files changed, want %q as read", tc.name, got, want)
		}
		if got := mustAccount(t, read); got != wantAccount {
			t.Errorf("%s: the copy's account changed with the files", tc.name)
		}
		if secrets(tc.auth) == want || mustAccount(t, tc.auth) == wantAccount {
			t.Errorf("%s: the original does not read the files afresh", tc.name)
		}
		if read.PasswordFile != tc.auth.PasswordFile || read.TokenFile != tc.auth.TokenFile {
			t.Errorf("%s: the copy lost the files' names", tc.name)
		}
	}

	inline := &Auth{Username: "u", Password: "inline", OAuth2: nil}
	if read := inline.WithSecretsRead(); read != inline {
		t.Errorf("an Auth without secret files: got %p, want itself", read)
	}
	missingFile := filepath.Join(t.TempDir(), "missing")
	missing := &Auth{Username: "u", PasswordFile: missingFile}
	read := missing.WithSecretsRead()
	if _, err := read.ReadPassword(); err == nil || !strings.Contains(err.Error(), "password_file") {
		t.Errorf("a missing password file: %v, want an error naming password_file", err)
	}
	if err := os.WriteFile(missingFile, []byte("appeared\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := read.Account(); err == nil || !strings.Contains(err.Error(), "password_file") {
		t.Errorf("the copy read the password file again (account error %v), want the error it read", err)
	}
	if p, err := missing.ReadPassword(); err != nil || p != "appeared" {
		t.Errorf("the original gives %q, %v; want the file read afresh", p, err)
	}
}

// fileWriter returns a function that writes a file in a directory of the
// test's and returns its path.
func fileWriter(t *testing.T) func(name, content string) string {
	dir := t.TempDir()
	return func(name, content string) string {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
}

func mustAccount(t *testing.T, a *Auth) Account {
	t.Helper()
	acc, err := a.Account()
	if err != nil {
		t.Fatal(err)
	}
	return acc
}
