package prober

import (
	"crypto/hmac"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"slices"
	"strings"

	"github.com/smtp-exporter/smtp_exporter/config"
)

// saslMechanism is one SASL client mechanism, after net/smtp's Auth: Start
// names the mechanism and gives the initial response (nil for none), Next
// answers each 334 challenge, already base64-decoded.
type saslMechanism interface {
	Start() (name string, initial []byte, err error)
	Next(challenge []byte) ([]byte, error)
}

var errUnexpectedChallenge = errors.New("unexpected extra challenge from server")

// saslFailure is a mechanism's verdict that ends an exchange with a reason
// of its own, or with "" when the mechanism cannot tell and the final reply
// decides (authFailureReason). With answer set, the answer is sent so that
// the server can give its final reply (a refused OAuth token, a SCRAM server
// error); without, the exchange is cancelled with "*".
type saslFailure struct {
	reason Reason
	answer []byte
	err    error
}

func (f *saslFailure) Error() string { return f.err.Error() }
func (f *saslFailure) Unwrap() error { return f.err }

// completer is a mechanism that must see the exchange through before a 235
// counts: SCRAM needs the server's signature.
type completer interface {
	complete() error
}

// plainAuth is RFC 4616 PLAIN, sent as an initial response. A server that
// ignores the initial response and sends an empty 334 gets the same blob
// again.
type plainAuth struct {
	username, password string
	answered           bool
}

func (a *plainAuth) blob() []byte {
	return []byte("\x00" + a.username + "\x00" + a.password)
}

func (a *plainAuth) Start() (string, []byte, error) {
	return config.MechanismPlain, a.blob(), nil
}

func (a *plainAuth) Next(challenge []byte) ([]byte, error) {
	if a.answered || len(challenge) != 0 {
		return nil, errUnexpectedChallenge
	}
	a.answered = true
	return a.blob(), nil
}

// loginAuth is the LOGIN mechanism: the username, then the password, each
// in answer to a prompt. The prompts ("Username:", "Password:", or anything
// else a server says) are not interpreted: the first is answered with the
// username and the second with the password.
type loginAuth struct {
	username, password string
	step               int
}

func (a *loginAuth) Start() (string, []byte, error) {
	return config.MechanismLogin, nil, nil
}

func (a *loginAuth) Next([]byte) ([]byte, error) {
	a.step++
	switch a.step {
	case 1:
		return []byte(a.username), nil
	case 2:
		return []byte(a.password), nil
	}
	return nil, errUnexpectedChallenge
}

// cramMD5Auth is RFC 2195 CRAM-MD5: "username hex(HMAC-MD5(password,
// challenge))" in answer to one challenge.
type cramMD5Auth struct {
	username, password string
	answered           bool
}

func (a *cramMD5Auth) Start() (string, []byte, error) {
	return config.MechanismCRAMMD5, nil, nil
}

func (a *cramMD5Auth) Next(challenge []byte) ([]byte, error) {
	if a.answered || len(challenge) == 0 {
		return nil, errUnexpectedChallenge
	}
	a.answered = true
	mac := hmac.New(md5.New, []byte(a.password))
	mac.Write(challenge)
	return []byte(a.username + " " + hex.EncodeToString(mac.Sum(nil))), nil
}

// newMechanism returns the client of a mechanism the configuration
// accepted; nil for any other name.
func (p *probe) newMechanism(name string) saslMechanism {
	user := p.smtp.Auth.Username
	switch name {
	case config.MechanismPlain:
		return &plainAuth{username: user, password: p.password}
	case config.MechanismLogin:
		return &loginAuth{username: user, password: p.password}
	case config.MechanismCRAMMD5:
		return &cramMD5Auth{username: user, password: p.password}
	case config.MechanismSCRAMSHA1, config.MechanismSCRAMSHA256:
		a := newSCRAM(name, user, p.password, p.tr.addSecret)
		a.ctx = p.ctx
		a.red = p.tr.red
		return a
	case config.MechanismXOAUTH2, config.MechanismOAUTHBEARER:
		return &oauthAuth{name: name, username: user, token: p.token, host: p.r.Host, port: p.r.Port, red: p.tr.red}
	}
	return nil
}

// chooseMechanism picks the configured mechanism if the server offers it,
// or for "auto" the first of candidates (in order of preference) it offers.
func chooseMechanism(configured string, offered, candidates []string) (string, bool) {
	configured = strings.ToUpper(configured)
	if configured != "" && configured != strings.ToUpper(config.MechanismAuto) {
		return configured, slices.Contains(offered, configured)
	}
	for _, m := range candidates {
		if slices.Contains(offered, m) {
			return m, true
		}
	}
	return "", false
}
