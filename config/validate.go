package config

import (
	"errors"
	"fmt"
	"mime"
	"net"
	"net/mail"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"

	promconfig "github.com/prometheus/common/config"
	"go.yaml.in/yaml/v3"
)

// fieldError is a validation error for one field, located by its path of
// YAML keys (and sequence indexes) so that Load can name its line.
type fieldError struct {
	path []string
	msg  string
}

func (e *fieldError) Error() string {
	path := slices.Clone(e.path)
	for i, p := range path {
		// A key with a line break must not break the error's line.
		if ContainsControl(p) {
			path[i] = strconv.Quote(p)
		}
	}
	return strings.Join(path, ".") + ": " + e.msg
}

func fieldErr(path []string, format string, args ...any) error {
	return &fieldError{path: slices.Clone(path), msg: fmt.Sprintf(format, args...)}
}

// withLine turns a fieldError into "line N: path: reason" by looking the
// path up in the document.
func withLine(data []byte, err error) error {
	var fe *fieldError
	if !errors.As(err, &fe) {
		return err
	}
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) != nil {
		return err
	}
	if line := lineOf(&doc, fe.path); line > 0 {
		return fmt.Errorf("line %d: %w", line, err)
	}
	return err
}

// lineOf returns the line of the deepest node along path that exists.
func lineOf(n *yaml.Node, path []string) int {
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := n.Line
	for _, key := range path {
		var next *yaml.Node
		switch n.Kind {
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == key {
					line = n.Content[i].Line
					next = n.Content[i+1]
					break
				}
			}
		case yaml.SequenceNode:
			if i, err := strconv.Atoi(key); err == nil && i >= 0 && i < len(n.Content) {
				next = n.Content[i]
				line = next.Line
			}
		}
		if next == nil {
			return line
		}
		n = next
	}
	return line
}

// validate checks every module and fills in derived fields. It stops at the
// first error so that the message is about one thing.
func (c *Config) validate() error {
	if len(c.Modules) == 0 {
		return errors.New("no modules defined")
	}
	for _, name := range c.ModuleNames() {
		m := c.Modules[name]
		if err := m.validate([]string{"modules", name}); err != nil {
			return err
		}
		c.Modules[name] = m
	}
	return nil
}

func (m *Module) validate(path []string) error {
	if name := path[len(path)-1]; name == "" || ContainsControl(name) {
		return fieldErr(path, "invalid module name %q", name)
	}
	if m.SMTP.TLS == "" {
		// "name:" with nothing after it: no defaults were applied.
		return fieldErr(path, "the module is empty; write {} to take every default")
	}
	if m.Timeout <= 0 {
		return fieldErr(append(path, "timeout"), "must be greater than 0")
	}
	return m.SMTP.validate(append(path, "smtp"))
}

func (s *SMTPProbe) validate(path []string) error {
	switch s.TLS {
	case TLSNone, TLSStartTLS, TLSImplicit:
	default:
		return fieldErr(append(path, "tls"), "must be one of none, starttls, implicit; got %q", s.TLS)
	}
	if s.Port < 0 || s.Port > 65535 {
		return fieldErr(append(path, "port"), "must be between 1 and 65535, got %d", s.Port)
	}
	if !isValidEHLOName(s.EHLO) {
		return fieldErr(append(path, "ehlo"), "%q is not a host name or address literal", s.EHLO)
	}
	switch s.PreferredIPProtocol {
	case "ip4", "ip6":
	default:
		return fieldErr(append(path, "preferred_ip_protocol"), "must be ip4 or ip6, got %q", s.PreferredIPProtocol)
	}
	if s.SourceIPAddress != "" {
		if _, err := netip.ParseAddr(s.SourceIPAddress); err != nil {
			return fieldErr(append(path, "source_ip_address"), "%q is not an IP address", s.SourceIPAddress)
		}
	}
	if err := validateTLSConfig(append(path, "tls_config"), &s.TLSConfig); err != nil {
		return err
	}
	s.allowed = nil
	for i, entry := range s.AllowedTargets {
		r, err := parseTargetRule(entry)
		if err != nil {
			return fieldErr(append(path, "allowed_targets", strconv.Itoa(i)), "%v", err)
		}
		s.allowed = append(s.allowed, r)
	}
	if s.Auth != nil {
		if err := s.Auth.validate(append(path, "auth")); err != nil {
			return err
		}
		if len(s.AllowedTargets) == 0 {
			return fieldErr(append(path, "auth"), `a module with credentials must list the targets they may be sent to in allowed_targets (use "*" to allow any)`)
		}
	}
	if err := s.validatePosture(path); err != nil {
		return err
	}
	if s.Mail != nil {
		return s.Mail.validate(append(path, "mail"))
	}
	return nil
}

// validatePosture checks the security posture options. An option that could
// never fire is refused rather than left to pass silently.
func (s *SMTPProbe) validatePosture(path []string) error {
	if s.TLS == TLSImplicit {
		if s.FailIfAuthOfferedWithoutTLS {
			return fieldErr(append(path, "fail_if_auth_offered_without_tls"), "has no effect with tls: implicit, where EHLO is always encrypted")
		}
		if len(s.FailIfMechanismsOffered) > 0 {
			return fieldErr(append(path, "fail_if_mechanisms_offered"), "has no effect with tls: implicit, where EHLO is always encrypted")
		}
	}
	for i, m := range s.FailIfMechanismsOffered {
		upper := strings.ToUpper(m)
		if !isMechanismName(upper) {
			return fieldErr(append(path, "fail_if_mechanisms_offered", strconv.Itoa(i)), "%q is not a SASL mechanism name", m)
		}
		s.FailIfMechanismsOffered[i] = upper
	}
	if s.ExpectAuthRejected {
		if s.Auth == nil {
			return fieldErr(append(path, "expect_auth_rejected"), "needs an auth block: the credentials that must be refused")
		}
		if s.Mail != nil {
			return fieldErr(append(path, "expect_auth_rejected"), "cannot be combined with mail: no mail can be sent after a refused login")
		}
	}
	return nil
}

// isMechanismName follows RFC 4422: 1 to 20 upper-case letters, digits,
// hyphens and underscores. Up to 32 are accepted, as the prober reads them.
func isMechanismName(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for _, r := range s {
		if !(r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

func (a *Auth) validate(path []string) error {
	mech := strings.ToUpper(a.Mechanism)
	if mech == "AUTO" {
		mech = MechanismAuto
	}
	if mech != MechanismAuto && !slices.Contains(SupportedMechanisms, mech) {
		return fieldErr(append(path, "mechanism"), "unsupported mechanism %q (supported: auto, %s)", a.Mechanism, strings.Join(SupportedMechanisms, ", "))
	}
	a.Mechanism = mech
	if a.Username == "" {
		return fieldErr(append(path, "username"), "must be set")
	}
	if ContainsControl(a.Username) {
		return fieldErr(append(path, "username"), "must not contain CR, LF or other control characters")
	}
	password := a.Password != "" || a.PasswordFile != ""
	switch {
	case a.Password != "" && a.PasswordFile != "":
		return fieldErr(path, "set only one of password and password_file")
	case a.TokenFile != "" && a.OAuth2 != nil:
		return fieldErr(path, "set only one of token_file and oauth2")
	case password && a.UsesToken():
		return fieldErr(path, "set either a password (password, password_file) or a token (token_file, oauth2), not both")
	case !password && !a.UsesToken():
		return fieldErr(path, "one of password, password_file, token_file and oauth2 must be set")
	}
	if strings.ContainsRune(string(a.Password), 0) {
		return fieldErr(append(path, "password"), "must not contain a NUL byte")
	}
	switch {
	case a.UsesToken() && slices.Contains(PasswordMechanisms, mech):
		return fieldErr(append(path, "mechanism"), "%s logs in with a password, but the module has a token (token_file or oauth2)", mech)
	case !a.UsesToken() && slices.Contains(TokenMechanisms, mech):
		return fieldErr(append(path, "mechanism"), "%s logs in with a token: set token_file or oauth2 instead of a password", mech)
	}
	if a.OAuth2 != nil {
		return a.OAuth2.validate(append(path, "oauth2"))
	}
	return nil
}

func (o *OAuth2) validate(path []string) error {
	if o.ClientID == "" {
		return fieldErr(append(path, "client_id"), "must be set")
	}
	if ContainsControl(o.ClientID) {
		return fieldErr(append(path, "client_id"), "must not contain control characters")
	}
	if o.ClientSecret != "" && o.ClientSecretFile != "" {
		return fieldErr(path, "set only one of client_secret and client_secret_file")
	}
	if o.RefreshTokenFile == "" && o.ClientSecret == "" && o.ClientSecretFile == "" {
		return fieldErr(path, "the client credentials grant needs client_secret or client_secret_file (or set refresh_token_file for the refresh token grant)")
	}
	if err := validateTokenURL(o.TokenURL); err != nil {
		return fieldErr(append(path, "token_url"), "%v", err)
	}
	for i, scope := range o.Scopes {
		if scope == "" || strings.ContainsFunc(scope, func(r rune) bool { return r <= ' ' || r == 0x7f || r == '"' || r == '\\' }) {
			return fieldErr(append(path, "scopes", strconv.Itoa(i)), "%q is not a scope (no spaces, quotes or control characters)", scope)
		}
	}
	return validateTLSConfig(append(path, "tls_config"), &o.TLSConfig)
}

// validateTLSConfig checks a tls_config, whether it is the SMTP session's
// or the token endpoint's.
func validateTLSConfig(path []string, c *promconfig.TLSConfig) error {
	if err := c.Validate(); err != nil {
		return fieldErr(path, "%v", err)
	}
	if err := validateServerName(c.ServerName); err != nil {
		return fieldErr(append(path, "server_name"), "%v", err)
	}
	if c.MaxVersion != 0 && c.MinVersion > c.MaxVersion {
		return fieldErr(append(path, "min_version"), "must not be greater than max_version")
	}
	return nil
}

// validateServerName accepts an empty server_name (the target's), a host
// name or an IP address: it is sent in the TLS ClientHello, so anything
// else, a line break above all, is refused.
func validateServerName(name string) error {
	if name == "" || isValidHostName(name) {
		return nil
	}
	if _, err := netip.ParseAddr(name); err == nil && !strings.Contains(name, "%") {
		return nil
	}
	return fmt.Errorf("%q is not a host name or IP address", name)
}

// validateTokenURL accepts an https URL, or http for a loopback host only:
// the client secret and refresh token travel in the request.
func validateTokenURL(raw string) error {
	if raw == "" {
		return errors.New("must be set")
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || u.User != nil || ContainsControl(raw) {
		return fmt.Errorf("%q is not an absolute URL without user information", raw)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		host := u.Hostname()
		if ip, err := netip.ParseAddr(host); (err == nil && ip.IsLoopback()) || strings.EqualFold(host, "localhost") {
			return nil
		}
		return fmt.Errorf("%q: the token endpoint must use https (http only on a loopback address)", raw)
	}
	return fmt.Errorf("%q: the token endpoint must use https", raw)
}

// GeneratedHeaders are written by the message builder and cannot be
// overridden from the configuration (lower case).
var GeneratedHeaders = []string{
	"from", "to", "cc", "bcc", "date", "message-id", "subject", "reply-to",
	"mime-version", "content-type", "content-transfer-encoding", "x-priority",
	"auto-submitted", "x-smtp-exporter-probe-id",
}

func (m *Mail) validate(path []string) error {
	if err := validateEnvelopeAddress(append(path, "from"), m.From); err != nil {
		return err
	}
	if len(m.To)+len(m.Cc)+len(m.Bcc) == 0 {
		return fieldErr(path, "at least one recipient in to, cc or bcc is required")
	}
	for _, list := range []struct {
		key   string
		addrs []string
	}{{"to", m.To}, {"cc", m.Cc}, {"bcc", m.Bcc}} {
		for i, a := range list.addrs {
			if err := validateEnvelopeAddress(append(path, list.key, strconv.Itoa(i)), a); err != nil {
				return err
			}
		}
	}
	if err := m.Message.validate(append(path, "message")); err != nil {
		return err
	}
	if m.Delivery != nil {
		if !m.Data {
			return fieldErr(append(path, "delivery"), "needs data: true: only a canary that is sent can be delivered")
		}
		return m.Delivery.validate(append(path, "delivery"))
	}
	return nil
}

func (d *Delivery) validate(path []string) error {
	if d.LateAfter <= 0 {
		return fieldErr(append(path, "late_after"), "must be greater than 0")
	}
	if d.LostAfter <= d.LateAfter {
		return fieldErr(append(path, "lost_after"), "must be greater than late_after (%s)", d.LateAfter)
	}
	return d.IMAP.validate(append(path, "imap"))
}

func (i *IMAP) validate(path []string) error {
	host, port, err := net.SplitHostPort(i.Address)
	if err != nil || host == "" || ContainsControl(i.Address) {
		return fieldErr(append(path, "address"), "%q is not host:port", i.Address)
	}
	if _, ok := parsePort(port); !ok {
		return fieldErr(append(path, "address"), "%q: invalid port %q", i.Address, port)
	}
	switch i.TLS {
	case TLSImplicit, TLSStartTLS:
	default:
		return fieldErr(append(path, "tls"), "must be implicit or starttls (the login must not travel in clear); got %q", i.TLS)
	}
	if err := validateTLSConfig(append(path, "tls_config"), &i.TLSConfig); err != nil {
		return err
	}
	if mech := strings.ToUpper(i.Auth.Mechanism); mech != "AUTO" && !slices.Contains(IMAPMechanisms, mech) {
		return fieldErr(append(path, "mechanism"), "unsupported mechanism %q for IMAP (supported: auto, %s)", i.Auth.Mechanism, strings.Join(IMAPMechanisms, ", "))
	}
	if err := i.Auth.validate(path); err != nil {
		return err
	}
	if i.Mailbox == "" || ContainsControl(i.Mailbox) || len(i.Mailbox) > 255 {
		return fieldErr(append(path, "mailbox"), "must be a mailbox name of at most 255 bytes without control characters")
	}
	return nil
}

func (m *Message) validate(path []string) error {
	for _, f := range []struct{ key, value string }{
		{"from_name", m.FromName}, {"subject", m.Subject},
	} {
		if ContainsControl(f.value) {
			return fieldErr(append(path, f.key), "must not contain CR, LF or other control characters")
		}
	}
	if m.ReplyTo != "" {
		if ContainsControl(m.ReplyTo) {
			return fieldErr(append(path, "reply_to"), "must not contain CR, LF or other control characters")
		}
		if _, err := mail.ParseAddress(m.ReplyTo); err != nil {
			return fieldErr(append(path, "reply_to"), "%q is not an address: %v", m.ReplyTo, err)
		}
	}
	if m.Priority < 0 || m.Priority > 5 {
		return fieldErr(append(path, "priority"), "must be between 1 (highest) and 5 (lowest), got %d", m.Priority)
	}
	for name, value := range m.Headers {
		if !IsHeaderName(name) {
			return fieldErr(append(path, "headers", name), "%q is not a valid header name", name)
		}
		if slices.Contains(GeneratedHeaders, strings.ToLower(name)) {
			return fieldErr(append(path, "headers", name), "header %s is set by the exporter and cannot be overridden", name)
		}
		if ContainsControl(value) {
			return fieldErr(append(path, "headers", name), "value must not contain CR, LF or other control characters")
		}
	}
	if strings.TrimSpace(m.Body) == "" && strings.TrimSpace(m.HTMLBody) == "" {
		return fieldErr(append(path, "body"), "body or html_body must be set")
	}
	for i, a := range m.Attachments {
		p := append(path, "attachments", strconv.Itoa(i))
		if a.Path == "" {
			return fieldErr(append(p, "path"), "must be set")
		}
		if a.ContentType != "" {
			if _, _, err := mime.ParseMediaType(a.ContentType); err != nil || ContainsControl(a.ContentType) {
				return fieldErr(append(p, "content_type"), "%q is not a media type", a.ContentType)
			}
		}
		if ContainsControl(a.Filename) || strings.ContainsAny(a.Filename, `"\/`) {
			return fieldErr(append(p, "filename"), "must not contain control characters, quotes, slashes or backslashes")
		}
	}
	return nil
}

// validateEnvelopeAddress accepts a bare RFC 5322 addr-spec in ASCII, which
// is what MAIL FROM and RCPT TO carry without SMTPUTF8.
func validateEnvelopeAddress(path []string, addr string) error {
	if ContainsControl(addr) {
		return fieldErr(path, "must not contain CR, LF or other control characters")
	}
	for _, r := range addr {
		if r > 126 {
			return fieldErr(path, "%q: non-ASCII addresses are not supported", addr)
		}
	}
	parsed, err := mail.ParseAddress(addr)
	if err != nil {
		return fieldErr(path, "%q is not an address: %v", addr, err)
	}
	if parsed.Name != "" || parsed.Address != addr || strings.ContainsAny(addr, "<> ") {
		return fieldErr(path, "%q must be a bare address such as probe@example.net", addr)
	}
	return nil
}

// ContainsControl reports a C0 control character (CR and LF above all,
// which would inject a command or a header line) or DEL.
func ContainsControl(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return true
		}
	}
	return false
}

// IsHeaderName follows RFC 5322 field-name: printable ASCII except colon.
func IsHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < 33 || r > 126 || r == ':' {
			return false
		}
	}
	return true
}
