package prober

import (
	"context"
	"crypto/tls"
	"log/slog"

	promconfig "github.com/prometheus/common/config"

	"github.com/smtp-exporter/smtp_exporter/config"
)

// Scrubber gives other sessions of the exporter that log in with a
// module's credentials (the IMAP watcher of a delivery block) the probe's
// redactor: the secrets registered with it, in every form the redactor
// knows, never leave in a text it scrubbed. It is safe for concurrent use.
type Scrubber struct {
	red *redactor
}

// NewScrubber returns a Scrubber with no secret registered.
func NewScrubber() *Scrubber { return &Scrubber{red: newRedactor()} }

// AddPassword registers a password and the PLAIN blob it goes into.
func (s *Scrubber) AddPassword(username, password string) {
	s.red.add(password)
	if password != "" {
		blob := (&plainAuth{username: username, password: password}).blob()
		s.red.addComposite(string(blob), len(blob)-len(password))
	}
}

// AddToken registers a bearer token and the "auth=Bearer" field it goes
// into in XOAUTH2 and OAUTHBEARER.
func (s *Scrubber) AddToken(token string) {
	s.red.add(token)
	if token != "" {
		s.red.addComposite("auth=Bearer "+token, len("auth=Bearer "))
	}
}

// AddSecret registers any other secret.
func (s *Scrubber) AddSecret(secret string) { s.red.add(secret) }

// Scrub returns text with every registered secret redacted.
func (s *Scrubber) Scrub(text string) string { return s.red.redact(text) }

// BearerToken returns the access token of credentials that log in with one:
// token_file read afresh, or a token from the oauth2 client, cached as for
// probes. Every secret involved is registered with s first.
func BearerToken(ctx context.Context, a *config.Auth, s *Scrubber, logger *slog.Logger) (string, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if a.TokenFile != "" {
		token, err := readBearerToken(a)
		if err != nil {
			return "", err
		}
		s.AddToken(token)
		return token, nil
	}
	client, err := newOAuthClient(a.OAuth2)
	if err != nil {
		return "", err
	}
	client.red = s.red
	s.AddSecret(client.clientSecret)
	s.AddSecret(client.refreshToken)
	token, err := client.token(ctx, oauthTokens, logger)
	if err != nil {
		return "", s.red.redactError(err)
	}
	s.AddToken(token)
	return token, nil
}

// TLSConfig returns the crypto/tls configuration of a tls_config, its files
// read as probes read them (regular files, bounded in size).
func TLSConfig(tc *promconfig.TLSConfig) (*tls.Config, error) {
	return tlsConfigs.get(tc)
}

// loginAcceptedKey is the context key of WithLoginAccepted's function.
type loginAcceptedKey struct{}

// WithLoginAccepted returns a context under which a probe calls accepted as
// soon as the server accepts its login, before the rest of the session
// (MAIL, DATA, a delivery check) runs: whoever waits for the verdict on the
// credentials need not wait for the whole probe.
func WithLoginAccepted(ctx context.Context, accepted func()) context.Context {
	return context.WithValue(ctx, loginAcceptedKey{}, accepted)
}
