package config

import (
	"crypto/sha256"
	"encoding/binary"
	"os"
	"time"

	promconfig "github.com/prometheus/common/config"
	"github.com/prometheus/common/model"
)

// TLSMode says how a probe encrypts the SMTP session.
type TLSMode string

const (
	// TLSNone keeps the session in clear text.
	TLSNone TLSMode = "none"
	// TLSStartTLS upgrades the session with STARTTLS after the first EHLO.
	TLSStartTLS TLSMode = "starttls"
	// TLSImplicit starts TLS before the greeting (submissions, port 465).
	TLSImplicit TLSMode = "implicit"
)

// DefaultPort is the port used for a target that names none.
func (m TLSMode) DefaultPort() int {
	switch m {
	case TLSNone:
		return 25
	case TLSImplicit:
		return 465
	default:
		return 587
	}
}

// Authentication mechanisms a module can ask for.
const (
	MechanismAuto        = "auto"
	MechanismPlain       = "PLAIN"
	MechanismLogin       = "LOGIN"
	MechanismCRAMMD5     = "CRAM-MD5"
	MechanismSCRAMSHA1   = "SCRAM-SHA-1"
	MechanismSCRAMSHA256 = "SCRAM-SHA-256"
	MechanismXOAUTH2     = "XOAUTH2"
	MechanismOAUTHBEARER = "OAUTHBEARER"
)

// PasswordMechanisms are the mechanisms that log in with a password, in the
// order "auto" prefers them: those that never send the password first, and
// among them the one with the stronger hash.
var PasswordMechanisms = []string{MechanismSCRAMSHA256, MechanismSCRAMSHA1, MechanismCRAMMD5, MechanismPlain, MechanismLogin}

// TokenMechanisms are the mechanisms that log in with an OAuth 2.0 bearer
// token, in the order "auto" prefers them: the standard one first.
var TokenMechanisms = []string{MechanismOAUTHBEARER, MechanismXOAUTH2}

// SupportedMechanisms lists every SASL mechanism the prober implements.
var SupportedMechanisms = append(append([]string{}, PasswordMechanisms...), TokenMechanisms...)

// Module is one named way of probing a target.
type Module struct {
	// Timeout caps the probe; the scrape timeout can only make it shorter.
	Timeout model.Duration `yaml:"timeout,omitempty"`
	// MinInterval is the shortest time between two sessions of this module
	// with one target: a probe within it gets the last result again. 0 is
	// off.
	MinInterval model.Duration `yaml:"min_interval,omitempty"`
	// AuthFailureBackoff is how long an authentication rejection holds
	// further logins of this module to that target, so that a wrong
	// password cannot lock the account. 0 is off.
	AuthFailureBackoff model.Duration `yaml:"auth_failure_backoff"`
	SMTP               SMTPProbe      `yaml:"smtp"`
}

// SMTPProbe describes the SMTP conversation of a module.
type SMTPProbe struct {
	TLS                 TLSMode              `yaml:"tls"`
	Port                int                  `yaml:"port,omitempty"`
	EHLO                string               `yaml:"ehlo,omitempty"`
	PreferredIPProtocol string               `yaml:"preferred_ip_protocol,omitempty"`
	IPProtocolFallback  bool                 `yaml:"ip_protocol_fallback"`
	SourceIPAddress     string               `yaml:"source_ip_address,omitempty"`
	TLSConfig           promconfig.TLSConfig `yaml:"tls_config,omitempty"`
	Auth                *Auth                `yaml:"auth,omitempty"`
	AllowPlaintextAuth  bool                 `yaml:"allow_plaintext_auth"`
	AllowedTargets      AllowedTargets       `yaml:"allowed_targets,omitempty"`
	Mail                *Mail                `yaml:"mail,omitempty"`

	// Security posture checks: each turns a policy into a failed probe.

	// FailIfAuthOfferedWithoutTLS fails the probe when the EHLO of the
	// unencrypted session advertises AUTH.
	FailIfAuthOfferedWithoutTLS bool `yaml:"fail_if_auth_offered_without_tls,omitempty"`
	// FailIfMechanismsOffered fails the probe when the EHLO of the
	// unencrypted session advertises any of these mechanisms (upper-cased).
	FailIfMechanismsOffered []string `yaml:"fail_if_mechanisms_offered,omitempty"`
	// ExpectAuthRejected turns the probe around for an account that must
	// stay disabled: it succeeds only when AUTH is refused with a 5xx.
	ExpectAuthRejected bool `yaml:"expect_auth_rejected,omitempty"`

	// allowed is AllowedTargets parsed, filled in by validation.
	allowed []targetRule
}

// Auth holds the credentials a module logs in with: a password (password
// or password_file) or a bearer token (token_file or oauth2), never both.
type Auth struct {
	Mechanism    string            `yaml:"mechanism"`
	Username     string            `yaml:"username"`
	Password     promconfig.Secret `yaml:"password,omitempty"`
	PasswordFile string            `yaml:"password_file,omitempty"`
	// TokenFile holds an OAuth 2.0 access token, read at every probe.
	TokenFile string `yaml:"token_file,omitempty"`
	// OAuth2 obtains the access token from a token endpoint.
	OAuth2 *OAuth2 `yaml:"oauth2,omitempty"`

	// read holds the secrets of the files as WithSecretsRead read them.
	read *readSecrets
}

// readSecrets are the contents of a module's secret files at one moment,
// or the error of the first that could not be read (the rest were not).
type readSecrets struct {
	password, token, clientSecret, refreshToken string
	err                                         error
}

// OAuth2 is an OAuth 2.0 client that obtains access tokens with the client
// credentials grant or, when RefreshTokenFile is set, the refresh token grant.
type OAuth2 struct {
	ClientID         string            `yaml:"client_id"`
	ClientSecret     promconfig.Secret `yaml:"client_secret,omitempty"`
	ClientSecretFile string            `yaml:"client_secret_file,omitempty"`
	TokenURL         string            `yaml:"token_url"`
	Scopes           []string          `yaml:"scopes,omitempty"`
	// RefreshTokenFile selects the refresh token grant; the file is read at
	// every probe, so that a new refresh token takes effect without a
	// reload.
	RefreshTokenFile string `yaml:"refresh_token_file,omitempty"`
	// TLSConfig is used to reach the token endpoint.
	TLSConfig promconfig.TLSConfig `yaml:"tls_config,omitempty"`

	// read holds the secrets of the files as Auth.WithSecretsRead read them.
	read *readSecrets
}

// Defaults, applied before a module's YAML is decoded over them.
var (
	DefaultModule = Module{
		Timeout:            model.Duration(10 * time.Second),
		AuthFailureBackoff: model.Duration(5 * time.Minute),
		SMTP:               DefaultSMTPProbe,
	}
	DefaultSMTPProbe = SMTPProbe{
		TLS:                 TLSStartTLS,
		PreferredIPProtocol: "ip6",
		IPProtocolFallback:  true,
	}
	DefaultAuth = Auth{
		Mechanism: MechanismAuto,
	}
)

// UnmarshalYAML applies the defaults. Validation happens once the whole file
// is decoded, so that errors can name their line.
func (m *Module) UnmarshalYAML(unmarshal func(any) error) error {
	*m = DefaultModule
	type plain Module
	if err := unmarshal((*plain)(m)); err != nil {
		return err
	}
	// Here rather than in SMTPProbe.UnmarshalYAML, which does not run for a
	// module without an smtp block.
	if m.SMTP.EHLO == "" {
		m.SMTP.EHLO = defaultEHLOName()
	}
	return nil
}

// UnmarshalYAML applies the defaults; the EHLO name's comes from the module.
func (s *SMTPProbe) UnmarshalYAML(unmarshal func(any) error) error {
	*s = DefaultSMTPProbe
	type plain SMTPProbe
	return unmarshal((*plain)(s))
}

// UnmarshalYAML applies the defaults.
func (a *Auth) UnmarshalYAML(unmarshal func(any) error) error {
	*a = DefaultAuth
	type plain Auth
	return unmarshal((*plain)(a))
}

// EffectivePort is the port dialled for a target without one.
func (s *SMTPProbe) EffectivePort() int {
	if s.Port != 0 {
		return s.Port
	}
	return s.TLS.DefaultPort()
}

// ReadPassword returns the password, reading password_file afresh so that a
// rotated secret takes effect at the next probe. Surrounding newlines, as
// left by editors and `kubectl create secret --from-file`, are dropped.
func (a *Auth) ReadPassword() (string, error) {
	if a.PasswordFile == "" {
		return string(a.Password), nil
	}
	if a.read != nil {
		return a.read.password, a.read.err
	}
	return readSecretFile("password_file", a.PasswordFile)
}

// WithSecretsRead returns a copy of a whose secret files are read now: its
// Read methods and Account give what was read then, without reading again,
// so that everything one probe does (the account the gate keys holds on,
// the login) sees the same secrets, each file read once. When a file
// cannot be read, the Read methods of the files give that error, naming
// the file, again without reading. Without secret files it returns a
// itself.
func (a *Auth) WithSecretsRead() *Auth {
	o := a.OAuth2
	if a.PasswordFile == "" && a.TokenFile == "" && (o == nil || o.ClientSecretFile == "" && o.RefreshTokenFile == "") {
		return a
	}
	var read readSecrets
	switch {
	case a.TokenFile != "":
		read.token, read.err = a.ReadToken()
	case o != nil:
		if read.clientSecret, read.err = o.ReadClientSecret(); read.err == nil {
			read.refreshToken, read.err = o.ReadRefreshToken()
		}
	default:
		read.password, read.err = a.ReadPassword()
	}
	c := *a
	c.read = &read
	if o != nil {
		oc := *o
		oc.read = &read
		c.OAuth2 = &oc
	}
	return &c
}

// UsesToken reports whether the module logs in with a bearer token rather
// than a password.
func (a *Auth) UsesToken() bool {
	return a.TokenFile != "" || a.OAuth2 != nil
}

// AutoMechanisms returns the mechanisms "auto" may choose, in order of
// preference: those the module has the credential for.
func (a *Auth) AutoMechanisms() []string {
	if a.UsesToken() {
		return TokenMechanisms
	}
	return PasswordMechanisms
}

// ReadToken returns the access token in token_file, read afresh.
func (a *Auth) ReadToken() (string, error) {
	if a.read != nil && a.TokenFile != "" {
		return a.read.token, a.read.err
	}
	return readSecretFile("token_file", a.TokenFile)
}

// ReadClientSecret returns the client secret, reading client_secret_file
// afresh; "" when none is configured.
func (o *OAuth2) ReadClientSecret() (string, error) {
	if o.ClientSecretFile == "" {
		return string(o.ClientSecret), nil
	}
	if o.read != nil {
		return o.read.clientSecret, o.read.err
	}
	return readSecretFile("client_secret_file", o.ClientSecretFile)
}

// ReadRefreshToken returns the refresh token, read afresh; "" for the client
// credentials grant.
func (o *OAuth2) ReadRefreshToken() (string, error) {
	if o.RefreshTokenFile == "" {
		return "", nil
	}
	if o.read != nil {
		return o.read.refreshToken, o.read.err
	}
	return readSecretFile("refresh_token_file", o.RefreshTokenFile)
}

// Account is who a module logs in as, and with which secret, as digests.
type Account struct {
	// ID is a SHA-256 of the username (for OAuth also the client and its
	// token endpoint): the same for every module that logs in as one
	// account.
	ID [sha256.Size]byte
	// Secret is a SHA-256 of the password, the token, or the client secret
	// and refresh token, as read now: it changes when they do.
	Secret [sha256.Size]byte
}

// Account returns the module's account, reading the secrets from their
// files afresh (or taking them as WithSecretsRead read them). It keeps no
// secret.
func (a *Auth) Account() (Account, error) {
	var parts []string
	switch {
	case a.TokenFile != "":
		token, err := a.ReadToken()
		if err != nil {
			return Account{}, err
		}
		parts = []string{"token", token}
	case a.OAuth2 != nil:
		secret, err := a.OAuth2.ReadClientSecret()
		if err != nil {
			return Account{}, err
		}
		refresh, err := a.OAuth2.ReadRefreshToken()
		if err != nil {
			return Account{}, err
		}
		parts = []string{"oauth2", secret, refresh}
	default:
		password, err := a.ReadPassword()
		if err != nil {
			return Account{}, err
		}
		parts = []string{"password", password}
	}
	id := []string{a.Username}
	if o := a.OAuth2; o != nil {
		id = append(id, o.ClientID, o.TokenURL)
	}
	return Account{ID: digest(id), Secret: digest(parts)}, nil
}

// digest is a SHA-256 of strings, each prefixed with its length so that
// moving text from one to the next changes it.
func digest(parts []string) [sha256.Size]byte {
	h := sha256.New()
	for _, s := range parts {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}

// InlineSecrets returns the secrets written in the module itself, which its
// marshalled form shows as <secret>: whoever tells two versions of a module
// apart must see a changed inline password too.
func (m *Module) InlineSecrets() []string {
	secrets := []string{string(m.SMTP.TLSConfig.Key)}
	if a := m.SMTP.Auth; a != nil {
		secrets = append(secrets, string(a.Password))
		if o := a.OAuth2; o != nil {
			secrets = append(secrets, string(o.ClientSecret), string(o.TLSConfig.Key))
		}
	}
	if m.SMTP.Mail != nil && m.SMTP.Mail.Delivery != nil {
		i := &m.SMTP.Mail.Delivery.IMAP
		secrets = append(secrets, string(i.TLSConfig.Key), string(i.Auth.Password))
		if o := i.Auth.OAuth2; o != nil {
			secrets = append(secrets, string(o.ClientSecret), string(o.TLSConfig.Key))
		}
	}
	return secrets
}

// readSecretFile reads a secret from a file named under key, dropping
// surrounding newlines. Only a regular file of at most MaxSecretFileBytes
// is read (see ReadFile).
func readSecretFile(key, path string) (string, error) {
	data, err := ReadFile(key, path, MaxSecretFileBytes)
	if err != nil {
		return "", err
	}
	return trimNewlines(string(data)), nil
}

func trimNewlines(s string) string {
	for len(s) > 0 && (s[len(s)-1] == '\n' || s[len(s)-1] == '\r') {
		s = s[:len(s)-1]
	}
	return s
}

func defaultEHLOName() string {
	name, err := os.Hostname()
	if err != nil || name == "" || !isValidEHLOName(name) {
		return "localhost"
	}
	return name
}
