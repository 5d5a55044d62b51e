package config

import (
	"os"

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
	MechanismAuto    = "auto"
	MechanismPlain   = "PLAIN"
	MechanismLogin   = "LOGIN"
	MechanismCRAMMD5 = "CRAM-MD5"
)

// SupportedMechanisms lists the SASL mechanisms the prober implements, in the
// order "auto" prefers them.
var SupportedMechanisms = []string{MechanismCRAMMD5, MechanismPlain, MechanismLogin}

// Module is one named way of probing a target.
type Module struct {
	// Timeout caps the probe; the scrape timeout can only make it shorter.
	Timeout model.Duration `yaml:"timeout,omitempty"`
	SMTP    SMTPProbe      `yaml:"smtp"`
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

	// allowed is AllowedTargets parsed, filled in by validation.
	allowed []targetRule
}

// Auth holds the credentials a module logs in with.
type Auth struct {
	Mechanism    string            `yaml:"mechanism"`
	Username     string            `yaml:"username"`
	Password     promconfig.Secret `yaml:"password,omitempty"`
	PasswordFile string            `yaml:"password_file,omitempty"`
}

// Defaults, applied before a module's YAML is decoded over them.
var (
	DefaultModule = Module{
		Timeout: model.Duration(10e9),
		SMTP:    DefaultSMTPProbe,
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
	return unmarshal((*plain)(m))
}

// UnmarshalYAML applies the defaults, including the machine's hostname as the
// EHLO name.
func (s *SMTPProbe) UnmarshalYAML(unmarshal func(any) error) error {
	*s = DefaultSMTPProbe
	type plain SMTPProbe
	if err := unmarshal((*plain)(s)); err != nil {
		return err
	}
	if s.EHLO == "" {
		s.EHLO = defaultEHLOName()
	}
	return nil
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
	data, err := os.ReadFile(a.PasswordFile)
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
