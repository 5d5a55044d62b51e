package prober

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/smtp-exporter/smtp_exporter/config"
)

// Token cache bounds and timing. A token is used until shortly before it
// expires, so that it does not expire between the check and the AUTH
// command; a token without an expiry is used for a few minutes only.
const (
	tokenEarlyExpiry    = time.Minute
	tokenDefaultLife    = 5 * time.Minute
	maxTokenCacheSize   = 256
	tokenCacheIdleAfter = time.Hour
)

// errNotBearerToken is a token that cannot go into a SASL message: bearer
// tokens are printable ASCII without spaces (RFC 6750 b64token), and a
// control character would end the message early.
var errNotBearerToken = errors.New("the token is not a bearer token (printable ASCII without spaces)")

// oauthTokens caches access tokens from token endpoints for all probes of
// the process. It lives in the package because Probe is called afresh for
// every scrape.
var oauthTokens = newTokenCache()

// tokenCache holds one entry per OAuth 2.0 client, keyed by a hash of
// everything that decides which token the endpoint issues: token URL, client
// ID, client secret, scopes and refresh token, as read at the probe. A
// reload or a rotated secret file that changes any of them gets a new entry,
// hence a fresh token; modules with identical clients share one, as the
// endpoint would give them the same. Entries unused for an hour are dropped
// and the number of entries is capped.
type tokenCache struct {
	mu      sync.Mutex
	entries map[[sha256.Size]byte]*tokenEntry
}

type tokenEntry struct {
	// lock is held (a token in the channel) while the entry is read or a
	// token fetched, so that concurrent probes of one client cause one
	// request to the endpoint; waiting for it respects each probe's context.
	lock chan struct{}
	// token and refresh are guarded by lock. refresh is the newest refresh
	// token: an endpoint that rotates them invalidates the one in the file.
	token   *oauth2.Token
	expiry  time.Time
	refresh string
	// lastUsed is guarded by the cache's mu.
	lastUsed time.Time
}

func newTokenCache() *tokenCache {
	return &tokenCache{entries: map[[sha256.Size]byte]*tokenEntry{}}
}

// entry returns the entry for key, creating it, and sweeps idle entries
// when the cache is full.
func (c *tokenCache) entry(key [sha256.Size]byte, now time.Time) *tokenEntry {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[key]; ok {
		e.lastUsed = now
		return e
	}
	if len(c.entries) >= maxTokenCacheSize {
		var oldestKey [sha256.Size]byte
		var oldest *tokenEntry
		for k, e := range c.entries {
			if now.Sub(e.lastUsed) > tokenCacheIdleAfter {
				delete(c.entries, k)
				continue
			}
			if oldest == nil || e.lastUsed.Before(oldest.lastUsed) {
				oldestKey, oldest = k, e
			}
		}
		if len(c.entries) >= maxTokenCacheSize && oldest != nil {
			delete(c.entries, oldestKey)
		}
	}
	e := &tokenEntry{lock: make(chan struct{}, 1), lastUsed: now}
	c.entries[key] = e
	return e
}

// forget drops the cached token of key if it is still token, after a
// server refused it, so that the next probe asks the endpoint again instead
// of retrying a bad token. A token another probe has fetched since stays.
func (c *tokenCache) forget(ctx context.Context, key [sha256.Size]byte, token string) {
	c.mu.Lock()
	e, ok := c.entries[key]
	c.mu.Unlock()
	if !ok {
		return
	}
	select {
	case e.lock <- struct{}{}:
	case <-ctx.Done():
		return
	}
	if e.token != nil && e.token.AccessToken == token {
		e.token = nil
	}
	<-e.lock
}

func (c *tokenCache) size() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// oauthClient is one OAuth 2.0 client as configured, with its secrets read
// for this probe.
type oauthClient struct {
	cfg          *config.OAuth2
	clientSecret string
	refreshToken string
	key          [sha256.Size]byte
	// red redacts what the endpoint answers before an error shows it.
	red *redactor
}

// newOAuthClient reads the client's secret files and computes its cache key.
func newOAuthClient(cfg *config.OAuth2) (*oauthClient, error) {
	secret, err := cfg.ReadClientSecret()
	if err != nil {
		return nil, fmt.Errorf("reading %w", err)
	}
	refresh, err := cfg.ReadRefreshToken()
	if err != nil {
		return nil, fmt.Errorf("reading %w", err)
	}
	if cfg.RefreshTokenFile != "" && refresh == "" {
		return nil, errors.New("refresh_token_file is empty")
	}
	c := &oauthClient{cfg: cfg, clientSecret: secret, refreshToken: refresh}
	h := sha256.New()
	for _, part := range append([]string{cfg.TokenURL, cfg.ClientID, secret, refresh}, cfg.Scopes...) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(part)))
		h.Write(n[:])
		h.Write([]byte(part))
	}
	h.Sum(c.key[:0])
	return c, nil
}

// token returns a valid access token from the cache, or fetches one. Only
// one probe per client fetches at a time; the others wait for its token.
func (c *oauthClient) token(ctx context.Context, cache *tokenCache, logger *slog.Logger) (string, error) {
	e := cache.entry(c.key, time.Now())
	select {
	case e.lock <- struct{}{}:
	case <-ctx.Done():
		return "", fmt.Errorf("waiting for another probe's token request: %w", ctx.Err())
	}
	defer func() { <-e.lock }()
	if e.token != nil && time.Now().Before(e.expiry) {
		logger.Debug("Using the cached access token", "expires_in_seconds", time.Until(e.expiry).Seconds())
		return e.token.AccessToken, nil
	}
	if e.refresh == "" {
		e.refresh = c.refreshToken
	}
	start := time.Now()
	tok, err := c.fetch(ctx, e.refresh)
	if err != nil {
		return "", err
	}
	if !isPrintableASCII(tok.AccessToken) {
		return "", fmt.Errorf("token endpoint: %w", errNotBearerToken)
	}
	if tok.RefreshToken != "" {
		e.refresh = tok.RefreshToken
	}
	e.token = tok
	e.expiry = start.Add(tokenDefaultLife)
	if !tok.Expiry.IsZero() {
		e.expiry = tok.Expiry.Add(-tokenEarlyExpiry)
	}
	logger.Debug("Obtained an access token", "duration_seconds", time.Since(start).Seconds(),
		"grant", c.grant(), "used_for_seconds", time.Until(e.expiry).Seconds())
	return tok.AccessToken, nil
}

func (c *oauthClient) grant() string {
	if c.cfg.RefreshTokenFile != "" {
		return "refresh_token"
	}
	return "client_credentials"
}

// fetch asks the token endpoint for a token, within ctx.
func (c *oauthClient) fetch(ctx context.Context, refresh string) (*oauth2.Token, error) {
	tlsConfig, err := tlsConfigs.get(&c.cfg.TLSConfig)
	if err != nil {
		return nil, fmt.Errorf("oauth2 tls_config: %w", err)
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.TLSClientConfig = tlsConfig
	defer transport.CloseIdleConnections()
	client := &http.Client{
		Transport: transport,
		// A redirect would carry the credentials to another URL.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	ctx = context.WithValue(ctx, oauth2.HTTPClient, client)

	var tok *oauth2.Token
	if c.cfg.RefreshTokenFile == "" {
		cc := clientcredentials.Config{
			ClientID:     c.cfg.ClientID,
			ClientSecret: c.clientSecret,
			TokenURL:     c.cfg.TokenURL,
			Scopes:       c.cfg.Scopes,
		}
		tok, err = cc.Token(ctx)
	} else {
		oc := oauth2.Config{
			ClientID:     c.cfg.ClientID,
			ClientSecret: c.clientSecret,
			Endpoint:     oauth2.Endpoint{TokenURL: c.cfg.TokenURL},
			Scopes:       c.cfg.Scopes,
		}
		tok, err = oc.TokenSource(ctx, &oauth2.Token{RefreshToken: refresh}).Token()
	}
	if err != nil {
		return nil, tokenEndpointError(err, c.red)
	}
	return tok, nil
}

// tokenEndpointError describes a failed token request without the
// response body, which an endpoint may fill with anything. What it says of
// the response (status, error, error_description) is redacted by red
// before it is quoted or cut, and the URL of a failed request is shown
// without the values of its query.
func tokenEndpointError(err error, red *redactor) error {
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		var ue *url.Error
		if errors.As(err, &ue) {
			return fmt.Errorf("token endpoint: %s %s: %w", ue.Op, config.RedactURL(ue.URL), ue.Err)
		}
		return fmt.Errorf("token endpoint: %w", err)
	}
	msg := "token endpoint refused the request"
	if re.Response != nil {
		msg += ": " + red.show(re.Response.Status, 64)
	}
	if re.ErrorCode != "" {
		msg += ": error " + red.quote(re.ErrorCode, 64)
	}
	if re.ErrorDescription != "" {
		msg += " (" + red.show(re.ErrorDescription, 200) + ")"
	}
	return errors.New(msg)
}

// oauthAuth is XOAUTH2 (Google, Microsoft) or OAUTHBEARER (RFC 7628), sent
// as an initial response. A server that refuses the token answers with a
// 334 carrying a JSON error; the client must answer that with a dummy
// response (OAUTHBEARER: %x01, XOAUTH2: empty) to get the final 5xx.
type oauthAuth struct {
	name           string
	username       string
	token          string
	host           string
	port           int
	answeredPrompt bool
	// red redacts the server's JSON error before it is cut or quoted; nil
	// redacts nothing.
	red *redactor
}

func (a *oauthAuth) blob() []byte {
	if a.name == config.MechanismXOAUTH2 {
		return []byte("user=" + a.username + "\x01auth=Bearer " + a.token + "\x01\x01")
	}
	return []byte("n,a=" + scramEscape(a.username) + ",\x01host=" + a.host + "\x01port=" +
		strconv.Itoa(a.port) + "\x01auth=Bearer " + a.token + "\x01\x01")
}

func (a *oauthAuth) Start() (string, []byte, error) {
	return a.name, a.blob(), nil
}

// oauthError is the JSON a server sends when it refuses a token (RFC 7628
// 3.2.2). It names the status and the scope needed, never a secret.
type oauthError struct {
	Status  string `json:"status"`
	Scope   string `json:"scope"`
	Schemes string `json:"schemes"`
}

func (e *oauthError) Error() string {
	msg := "server refused the token"
	if e.Status != "" {
		msg += ": status " + e.Status
	}
	if e.Scope != "" {
		msg += ", scope " + strconv.Quote(e.Scope)
	}
	return msg
}

func (a *oauthAuth) Next(challenge []byte) ([]byte, error) {
	if len(challenge) == 0 && !a.answeredPrompt {
		// The server ignored the initial response and asks for it.
		a.answeredPrompt = true
		return a.blob(), nil
	}
	oe := &oauthError{}
	var raw map[string]any
	var verdict Reason
	if err := json.Unmarshal(challenge, &raw); err != nil {
		oe.Status = "unparsable error challenge"
	} else {
		verdict = oauthStatusReason(jsonString(raw["status"]))
		oe.Status = a.red.show(jsonString(raw["status"]), 32)
		oe.Scope = a.red.clip(jsonString(raw["scope"]), 200)
		oe.Schemes = a.red.show(jsonString(raw["schemes"]), 64)
	}
	dummy := []byte{}
	if a.name == config.MechanismOAUTHBEARER {
		dummy = []byte{0x01}
	}
	// Without a status the final reply decides (a 535 is token_rejected).
	return nil, &saslFailure{reason: verdict, answer: dummy, err: oe}
}

// jsonString renders a JSON value given as a string or a number ("status":
// 401 and "status": "401" are both seen).
func jsonString(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	case nil:
		return ""
	}
	return fmt.Sprint(v)
}

// readBearerToken reads token_file and checks that the token can be sent.
func readBearerToken(a *config.Auth) (string, error) {
	token, err := a.ReadToken()
	if err != nil {
		return "", fmt.Errorf("reading %w", err)
	}
	token = strings.TrimSpace(token)
	if token == "" {
		return "", errors.New("token_file is empty")
	}
	if !isPrintableASCII(token) {
		return "", errNotBearerToken
	}
	return token, nil
}
