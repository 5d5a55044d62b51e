package smtptest

import (
	"crypto/hmac"
	"crypto/md5"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TLSMode is how the standard server offers TLS.
type TLSMode int

const (
	// NoTLS offers no TLS at all: STARTTLS is not advertised.
	NoTLS TLSMode = iota
	// StartTLS advertises STARTTLS before the session is encrypted.
	StartTLS
	// ImplicitTLS handshakes before the greeting, as on port 465.
	ImplicitTLS
)

// DefaultMechanisms are the SASL mechanisms the standard server offers when
// Options.Mechanisms is nil.
var DefaultMechanisms = []string{"PLAIN", "LOGIN", "CRAM-MD5"}

// DefaultMessageReply is the standard server's answer to an accepted message.
const DefaultMessageReply = "250 2.0.0 Ok: queued as 4XyZ1a2B3c"

// Options shape the standard server. The zero value is a plain-text server
// offering PLAIN, LOGIN and CRAM-MD5, with no valid credentials.
type Options struct {
	// Hostname is the server's name in the greeting and EHLO reply.
	// Default "mx.smtptest.invalid".
	Hostname string
	TLS      TLSMode
	// Cert is the server certificate; default Certs().Server.
	Cert *tls.Certificate
	// Greeting lines of the 220 banner; default "<Hostname> ESMTP smtptest".
	Greeting []string

	// Username and Password are the one account AUTH accepts; every
	// mechanism really checks them. SetPassword changes the password later.
	Username, Password string
	// Mechanisms advertised after AUTH; nil means DefaultMechanisms.
	Mechanisms []string
	// NoAuth advertises and accepts no AUTH at all.
	NoAuth bool
	// AuthRequiresTLS hides AUTH until the session is encrypted and answers
	// it with 530 before, as Postfix does with smtpd_tls_auth_only.
	AuthRequiresTLS bool

	// Size, when positive, is advertised as SIZE and enforced.
	Size int64
	// Extensions are extra EHLO lines, such as "DSN" or "SIZE".
	Extensions []string
	// Legacy speaks like old servers: lower-case EHLO keywords
	// ("250-auth login plain"), an extra "250-AUTH=LOGIN PLAIN" line,
	// "Size" in mixed case and "235 Authentication Successful".
	Legacy bool
	// RejectEHLO answers EHLO with 502 so that clients fall back to HELO.
	RejectEHLO bool

	// Reply overrides, each a full reply line such as
	// "454 4.7.0 Temporary authentication failure".
	AuthReply    string            // replaces the final reply of every AUTH
	MailReply    string            // replaces the reply to MAIL FROM
	RcptReplies  map[string]string // by recipient address
	DataReply    string            // replaces the 354 to DATA
	MessageReply string            // after the message; default DefaultMessageReply
	// QuitClose closes the connection instead of answering QUIT.
	QuitClose bool
}

// Message is a message the standard server accepted.
type Message struct {
	From string
	To   []string
	// Data is the message as received, dot-stuffing undone, CRLF endings.
	Data []byte
	// TLS and AuthUser describe the session it came on.
	TLS      bool
	AuthUser string
}

// AuthAttempt is one AUTH exchange the standard server ran to its end.
type AuthAttempt struct {
	Mechanism string
	Username  string
	Success   bool
	TLS       bool
}

type standard struct {
	opts Options
	cert tls.Certificate

	mu       sync.Mutex
	password string
	messages []Message
	auths    []AuthAttempt
	rsets    int
}

// NewServer starts a standard, well-behaved SMTP server shaped by opts on
// 127.0.0.1:0. It is closed by t.Cleanup.
func NewServer(t testing.TB, opts Options) *Server {
	t.Helper()
	if opts.Hostname == "" {
		opts.Hostname = "mx.smtptest.invalid"
	}
	if len(opts.Greeting) == 0 {
		opts.Greeting = []string{opts.Hostname + " ESMTP smtptest"}
	}
	if opts.Mechanisms == nil {
		opts.Mechanisms = DefaultMechanisms
	}
	if opts.MessageReply == "" {
		opts.MessageReply = DefaultMessageReply
	}
	st := &standard{opts: opts, password: opts.Password}
	if opts.Cert != nil {
		st.cert = *opts.Cert
	} else {
		st.cert = Certs().Server
	}
	s := NewScripted(t, st.handle)
	s.std = st
	return s
}

// SetPassword changes the password the standard server accepts.
func (s *Server) SetPassword(password string) {
	st := s.mustStandard()
	st.mu.Lock()
	st.password = password
	st.mu.Unlock()
}

// Messages returns the messages the standard server accepted.
func (s *Server) Messages() []Message {
	st := s.mustStandard()
	st.mu.Lock()
	defer st.mu.Unlock()
	return slices.Clone(st.messages)
}

// Auths returns the AUTH exchanges the standard server completed.
func (s *Server) Auths() []AuthAttempt {
	st := s.mustStandard()
	st.mu.Lock()
	defer st.mu.Unlock()
	return slices.Clone(st.auths)
}

// Resets returns how many RSET commands the standard server answered.
func (s *Server) Resets() int {
	st := s.mustStandard()
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.rsets
}

func (s *Server) mustStandard() *standard {
	if s.std == nil {
		panic("smtptest: not a server made by NewServer")
	}
	return s.std
}

// session is the SMTP state of one connection.
type session struct {
	greeted  bool
	authUser string
	from     string
	inTx     bool
	rcpts    []string
}

func (st *standard) handle(c *Conn) {
	o := st.opts
	if o.TLS == ImplicitTLS {
		if err := c.StartTLS(st.cert); err != nil {
			return
		}
	}
	if c.Reply(220, o.Greeting...) != nil {
		return
	}
	var sess session
	for {
		line, err := c.ReadLine()
		if err != nil {
			return
		}
		verb, arg, _ := strings.Cut(line, " ")
		verb = strings.ToUpper(verb)
		switch verb {
		case "EHLO":
			if o.RejectEHLO {
				err = c.WriteLine("502 5.5.2 Error: command not recognized")
				break
			}
			sess = session{greeted: true, authUser: sess.authUser}
			err = c.Reply(250, st.ehloLines(c)...)
		case "HELO":
			sess = session{greeted: true, authUser: sess.authUser}
			err = c.WriteLine("250 " + o.Hostname)
		case "STARTTLS":
			if o.TLS != StartTLS || c.TLS() {
				err = c.WriteLine("502 5.5.1 Error: command not implemented")
				break
			}
			if err = c.WriteLine("220 2.0.0 Ready to start TLS"); err != nil {
				return
			}
			if c.StartTLS(st.cert) != nil {
				return
			}
			// RFC 3207: forget everything learnt before the handshake.
			sess = session{}
		case "AUTH":
			err = st.auth(c, &sess, arg)
		case "MAIL":
			err = st.mail(c, &sess, arg)
		case "RCPT":
			err = st.rcpt(c, &sess, arg)
		case "DATA":
			err = st.data(c, &sess)
		case "RSET":
			st.mu.Lock()
			st.rsets++
			st.mu.Unlock()
			sess.inTx, sess.from, sess.rcpts = false, "", nil
			err = c.WriteLine("250 2.0.0 Ok")
		case "NOOP":
			err = c.WriteLine("250 2.0.0 Ok")
		case "QUIT":
			if o.QuitClose {
				return
			}
			c.WriteLine("221 2.0.0 Bye")
			return
		default:
			err = c.WriteLine("502 5.5.2 Error: command not recognized")
		}
		if err != nil {
			return
		}
	}
}

func (st *standard) authOffered(c *Conn) bool {
	return !st.opts.NoAuth && (c.TLS() || !st.opts.AuthRequiresTLS)
}

func (st *standard) ehloLines(c *Conn) []string {
	o := st.opts
	lines := []string{o.Hostname}
	offerTLS := o.TLS == StartTLS && !c.TLS()
	if o.Legacy {
		lines = append(lines, "pipelining")
		if o.Size > 0 {
			lines = append(lines, "Size "+strconv.FormatInt(o.Size, 10))
		}
		if offerTLS {
			lines = append(lines, "starttls")
		}
		if st.authOffered(c) {
			mechs := strings.Join(o.Mechanisms, " ")
			lines = append(lines, "auth "+strings.ToLower(mechs), "AUTH="+mechs)
		}
		lines = append(lines, o.Extensions...)
		return append(lines, "8bitmime")
	}
	lines = append(lines, "PIPELINING")
	if o.Size > 0 {
		lines = append(lines, "SIZE "+strconv.FormatInt(o.Size, 10))
	}
	if offerTLS {
		lines = append(lines, "STARTTLS")
	}
	if st.authOffered(c) {
		lines = append(lines, "AUTH "+strings.Join(o.Mechanisms, " "))
	}
	lines = append(lines, "ENHANCEDSTATUSCODES")
	lines = append(lines, o.Extensions...)
	return append(lines, "8BITMIME")
}

func (st *standard) auth(c *Conn, sess *session, arg string) error {
	o := st.opts
	switch {
	case !sess.greeted:
		return c.WriteLine("503 5.5.1 Error: send HELO/EHLO first")
	case o.AuthRequiresTLS && !c.TLS() && !o.NoAuth:
		return c.WriteLine("530 5.7.0 Must issue a STARTTLS command first")
	case !st.authOffered(c):
		return c.WriteLine("503 5.5.1 Error: authentication not enabled")
	case sess.authUser != "":
		return c.WriteLine("503 5.5.1 Error: already authenticated")
	}
	mech, ir, _ := strings.Cut(arg, " ")
	mech = strings.ToUpper(mech)
	if !slices.ContainsFunc(o.Mechanisms, func(m string) bool { return strings.EqualFold(m, mech) }) {
		return c.WriteLine("504 5.5.4 Unsupported authentication mechanism")
	}
	var user string
	var ok, aborted bool
	var err error
	switch mech {
	case "PLAIN":
		user, ok, aborted, err = st.plain(c, ir)
	case "LOGIN":
		user, ok, aborted, err = st.login(c, ir)
	case "CRAM-MD5":
		user, ok, aborted, err = st.cramMD5(c)
	default:
		return c.WriteLine("504 5.5.4 Unsupported authentication mechanism")
	}
	if err != nil {
		return err
	}
	if aborted {
		return c.WriteLine("501 5.7.0 Authentication aborted")
	}
	st.mu.Lock()
	st.auths = append(st.auths, AuthAttempt{Mechanism: mech, Username: user, Success: ok, TLS: c.TLS()})
	st.mu.Unlock()
	if o.AuthReply != "" {
		return c.WriteLine(o.AuthReply)
	}
	if !ok {
		return c.WriteLine("535 5.7.8 Error: authentication failed: authentication failure")
	}
	sess.authUser = user
	if o.Legacy {
		return c.WriteLine("235 Authentication Successful")
	}
	return c.WriteLine("235 2.7.0 Authentication successful")
}

// challenge sends a 334 with the base64 of prompt and returns the decoded
// answer; aborted is true for the client's "*".
func (st *standard) challenge(c *Conn, prompt string) (answer []byte, aborted bool, err error) {
	if err := c.WriteLine("334 " + base64.StdEncoding.EncodeToString([]byte(prompt))); err != nil {
		return nil, false, err
	}
	line, err := c.ReadLine()
	if err != nil {
		return nil, false, err
	}
	return decodeAnswer(line)
}

func decodeAnswer(line string) ([]byte, bool, error) {
	if line == "*" {
		return nil, true, nil
	}
	if line == "=" {
		return []byte{}, false, nil
	}
	b, err := base64.StdEncoding.DecodeString(line)
	if err != nil {
		// Undecodable answers fail the exchange like a wrong password.
		return nil, false, nil
	}
	return b, false, nil
}

func (st *standard) checkPassword(user, pass string) bool {
	st.mu.Lock()
	want := st.password
	st.mu.Unlock()
	return st.opts.Username != "" &&
		subtle.ConstantTimeCompare([]byte(user), []byte(st.opts.Username)) == 1 &&
		subtle.ConstantTimeCompare([]byte(pass), []byte(want)) == 1
}

func (st *standard) plain(c *Conn, ir string) (string, bool, bool, error) {
	var blob []byte
	var aborted bool
	var err error
	if ir == "" {
		blob, aborted, err = st.challenge(c, "")
	} else {
		blob, aborted, err = decodeAnswer(ir)
	}
	if err != nil || aborted {
		return "", false, aborted, err
	}
	parts := strings.Split(string(blob), "\x00")
	if len(parts) != 3 {
		return "", false, false, nil
	}
	return parts[1], st.checkPassword(parts[1], parts[2]), false, nil
}

func (st *standard) login(c *Conn, ir string) (string, bool, bool, error) {
	var user []byte
	var aborted bool
	var err error
	if ir != "" {
		user, aborted, err = decodeAnswer(ir)
	} else {
		user, aborted, err = st.challenge(c, "Username:")
	}
	if err != nil || aborted {
		return "", false, aborted, err
	}
	pass, aborted, err := st.challenge(c, "Password:")
	if err != nil || aborted {
		return "", false, aborted, err
	}
	return string(user), st.checkPassword(string(user), string(pass)), false, nil
}

func (st *standard) cramMD5(c *Conn) (string, bool, bool, error) {
	n, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		return "", false, false, err
	}
	chal := fmt.Sprintf("<%d.%d@%s>", n, time.Now().Unix(), st.opts.Hostname)
	answer, aborted, err := st.challenge(c, chal)
	if err != nil || aborted {
		return "", false, aborted, err
	}
	user, digest, found := strings.Cut(string(answer), " ")
	if !found {
		return "", false, false, nil
	}
	st.mu.Lock()
	mac := hmac.New(md5.New, []byte(st.password))
	st.mu.Unlock()
	mac.Write([]byte(chal))
	want := hex.EncodeToString(mac.Sum(nil))
	ok := st.opts.Username != "" && user == st.opts.Username &&
		hmac.Equal([]byte(strings.ToLower(digest)), []byte(want))
	return user, ok, false, nil
}

func (st *standard) mail(c *Conn, sess *session, arg string) error {
	o := st.opts
	if !sess.greeted {
		return c.WriteLine("503 5.5.1 Error: send HELO/EHLO first")
	}
	if sess.inTx {
		return c.WriteLine("503 5.5.1 Error: nested MAIL command")
	}
	from, params, ok := parsePath(arg, "FROM:")
	if !ok {
		return c.WriteLine("501 5.5.4 Syntax: MAIL FROM:<address>")
	}
	for _, p := range params {
		k, v, _ := strings.Cut(p, "=")
		if strings.EqualFold(k, "SIZE") && o.Size > 0 {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return c.WriteLine("501 5.5.4 Bad message size syntax")
			}
			if n > o.Size {
				return c.WriteLine("552 5.3.4 Message size exceeds fixed limit")
			}
		}
	}
	if o.MailReply != "" {
		if err := c.WriteLine(o.MailReply); err != nil || !strings.HasPrefix(o.MailReply, "2") {
			return err
		}
	} else if err := c.WriteLine("250 2.1.0 Ok"); err != nil {
		return err
	}
	sess.inTx, sess.from, sess.rcpts = true, from, nil
	return nil
}

func (st *standard) rcpt(c *Conn, sess *session, arg string) error {
	if !sess.inTx {
		return c.WriteLine("503 5.5.1 Error: need MAIL command")
	}
	to, _, ok := parsePath(arg, "TO:")
	if !ok {
		return c.WriteLine("501 5.5.4 Syntax: RCPT TO:<address>")
	}
	if reply, found := st.opts.RcptReplies[to]; found {
		if err := c.WriteLine(reply); err != nil || !strings.HasPrefix(reply, "2") {
			return err
		}
	} else if err := c.WriteLine("250 2.1.5 Ok"); err != nil {
		return err
	}
	sess.rcpts = append(sess.rcpts, to)
	return nil
}

func (st *standard) data(c *Conn, sess *session) error {
	o := st.opts
	switch {
	case !sess.inTx:
		return c.WriteLine("503 5.5.1 Error: need RCPT command")
	case len(sess.rcpts) == 0:
		return c.WriteLine("554 5.5.1 Error: no valid recipients")
	case o.DataReply != "":
		return c.WriteLine(o.DataReply)
	}
	if err := c.WriteLine("354 End data with <CR><LF>.<CR><LF>"); err != nil {
		return err
	}
	data, err := c.ReadData()
	if err != nil {
		return err
	}
	reply := o.MessageReply
	if o.Size > 0 && int64(len(data)) > o.Size {
		reply = "552 5.3.4 Message size exceeds fixed limit"
	}
	if strings.HasPrefix(reply, "2") {
		st.mu.Lock()
		st.messages = append(st.messages, Message{
			From: sess.from, To: slices.Clone(sess.rcpts), Data: data,
			TLS: c.TLS(), AuthUser: sess.authUser,
		})
		st.mu.Unlock()
	}
	sess.inTx, sess.from, sess.rcpts = false, "", nil
	return c.WriteLine(reply)
}

// parsePath splits "FROM:<a@b> SIZE=10" into the address and parameters.
func parsePath(arg, prefix string) (addr string, params []string, ok bool) {
	if len(arg) < len(prefix) || !strings.EqualFold(arg[:len(prefix)], prefix) {
		return "", nil, false
	}
	rest := strings.TrimLeft(arg[len(prefix):], " ")
	if !strings.HasPrefix(rest, "<") {
		return "", nil, false
	}
	end := strings.IndexByte(rest, '>')
	if end < 0 {
		return "", nil, false
	}
	return rest[1:end], strings.Fields(rest[end+1:]), true
}
