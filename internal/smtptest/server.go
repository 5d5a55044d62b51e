// Package smtptest runs SMTP servers on 127.0.0.1 for the tests of every
// package: a scripted server whose per-connection handler says exactly what
// goes over the wire, a standard well-behaved server built on it (NewServer),
// in-process test certificates, and a buffer for the log of a probe.
package smtptest

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Limits that keep a misbehaving client from hanging or flooding a test.
const (
	// IdleTimeout bounds every read and write of a handler.
	IdleTimeout = 10 * time.Second
	// closeGrace is how long Close lets handlers finish on their own before
	// it closes their connections.
	closeGrace = time.Second
	maxLine    = 64 * 1024
	maxData    = 32 * 1024 * 1024
)

// Handler scripts one connection. It runs in its own goroutine; when it
// returns the connection is closed.
type Handler func(c *Conn)

// Server accepts connections on 127.0.0.1 and runs a Handler on each.
type Server struct {
	t       testing.TB
	ln      net.Listener
	handler Handler

	wg sync.WaitGroup

	mu       sync.Mutex
	conns    map[*Conn]struct{}
	accepted int
	lines    []string
	closed   bool

	// state of the standard server, see NewServer.
	std *standard
}

// NewScripted starts a server on 127.0.0.1:0 that runs handler for every
// connection. It is closed by t.Cleanup; Close may be called earlier.
func NewScripted(t testing.TB, handler Handler) *Server {
	t.Helper()
	return NewScriptedAt(t, "127.0.0.1:0", handler)
}

// NewScriptedAt is NewScripted on another loopback address, such as
// "[::1]:0". It skips the test when the address cannot be bound (no IPv6)
// and refuses any address that is not loopback.
func NewScriptedAt(t testing.TB, addr string, handler Handler) *Server {
	t.Helper()
	host, _, err := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		t.Fatalf("smtptest: %q is not a loopback address", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("smtptest: cannot listen on %s: %v", addr, err)
	}
	s := &Server{t: t, ln: ln, handler: handler, conns: map[*Conn]struct{}{}}
	s.wg.Add(1)
	go s.serve()
	t.Cleanup(s.Close)
	return s
}

func (s *Server) serve() {
	defer s.wg.Done()
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			return
		}
		c := &Conn{srv: s, nc: nc, r: bufio.NewReaderSize(nc, 4096)}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			nc.Close()
			return
		}
		s.accepted++
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			defer func() {
				c.Close()
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
			}()
			s.handler(c)
		}()
	}
}

// Addr returns the listening address, "127.0.0.1:port" or "[::1]:port".
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Port returns the listening port.
func (s *Server) Port() int { return s.ln.Addr().(*net.TCPAddr).Port }

// Connections returns how many connections the server has accepted.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted
}

// Lines returns every line clients sent, over all connections, in the order
// the server read them (DATA content excluded).
func (s *Server) Lines() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.lines...)
}

// SawCommand reports whether any client line started with the given SMTP
// verb (case-insensitive), such as "AUTH" or "MAIL".
func (s *Server) SawCommand(verb string) bool {
	for _, l := range s.Lines() {
		if f := strings.Fields(l); len(f) > 0 && strings.EqualFold(f[0], verb) {
			return true
		}
	}
	return false
}

// Close stops accepting, lets running handlers finish for a short grace
// period, then closes their connections and waits for every goroutine. It
// is safe to call more than once. Tests call it before asserting on what
// the server saw, so that nothing is still in flight.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.wg.Wait()
		return
	}
	s.closed = true
	s.mu.Unlock()
	s.ln.Close()

	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-time.After(closeGrace):
	}
	s.mu.Lock()
	for c := range s.conns {
		c.nc.Close()
	}
	s.mu.Unlock()
	<-done
}

// Conn is one server-side connection as seen by a Handler.
type Conn struct {
	srv *Server
	nc  net.Conn
	r   *bufio.Reader
	tls bool
}

// ErrLineTooLong is returned by ReadLine for a line over 64 KiB.
var ErrLineTooLong = errors.New("smtptest: line too long")

// ReadLine reads one line from the client, without its CRLF, and records it.
func (c *Conn) ReadLine() (string, error) {
	line, err := c.readRaw()
	if err != nil {
		return "", err
	}
	c.srv.mu.Lock()
	c.srv.lines = append(c.srv.lines, line)
	c.srv.mu.Unlock()
	return line, nil
}

func (c *Conn) readRaw() (string, error) {
	if err := c.nc.SetReadDeadline(time.Now().Add(IdleTimeout)); err != nil {
		return "", err
	}
	var buf []byte
	for {
		chunk, err := c.r.ReadSlice('\n')
		buf = append(buf, chunk...)
		if len(buf) > maxLine {
			return "", ErrLineTooLong
		}
		if err == nil {
			break
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return "", err
		}
	}
	return strings.TrimSuffix(strings.TrimSuffix(string(buf), "\n"), "\r"), nil
}

// WriteLine writes text followed by CRLF.
func (c *Conn) WriteLine(text string) error {
	return c.Write(text + "\r\n")
}

// Writef formats a line and writes it followed by CRLF.
func (c *Conn) Writef(format string, args ...any) error {
	return c.WriteLine(fmt.Sprintf(format, args...))
}

// Write writes raw bytes: for replies that break the rules on purpose.
func (c *Conn) Write(raw string) error {
	if err := c.nc.SetWriteDeadline(time.Now().Add(IdleTimeout)); err != nil {
		return err
	}
	_, err := io.WriteString(c.nc, raw)
	return err
}

// Reply writes a reply with one line per text, using "code-" for every
// line but the last. A text may carry an enhanced status code.
func (c *Conn) Reply(code int, texts ...string) error {
	if len(texts) == 0 {
		texts = []string{""}
	}
	var b strings.Builder
	for i, t := range texts {
		sep := "-"
		if i == len(texts)-1 {
			sep = " "
		}
		b.WriteString(strconv.Itoa(code) + sep + t + "\r\n")
	}
	return c.Write(b.String())
}

// StartTLS runs the server side of a TLS handshake on the connection, as
// after "220 Ready to start TLS" or at once for implicit TLS.
func (c *Conn) StartTLS(cert tls.Certificate) error {
	if c.r.Buffered() > 0 {
		return errors.New("smtptest: client sent data before the TLS handshake")
	}
	tc := tls.Server(c.nc, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	if err := tc.SetDeadline(time.Now().Add(IdleTimeout)); err != nil {
		return err
	}
	if err := tc.Handshake(); err != nil {
		return err
	}
	c.nc = tc
	c.r = bufio.NewReaderSize(tc, 4096)
	c.tls = true
	return nil
}

// NetConn returns the connection underneath, TLS included once StartTLS
// ran, for writes that must not allocate (a handler flooding a client with
// megabytes from one buffer) and for socket options. Reads must go through
// ReadLine and ReadData, which buffer.
func (c *Conn) NetConn() net.Conn { return c.nc }

// RemoteAddr returns the client's address.
func (c *Conn) RemoteAddr() net.Addr { return c.nc.RemoteAddr() }

// TLS reports whether the connection is encrypted.
func (c *Conn) TLS() bool { return c.tls }

// ReadData reads a DATA body up to the terminating "." line and returns it
// with the dot-stuffing undone and CRLF line endings.
func (c *Conn) ReadData() ([]byte, error) {
	var msg bytes.Buffer
	for {
		line, err := c.readRaw()
		if err != nil {
			return nil, err
		}
		if line == "." {
			return msg.Bytes(), nil
		}
		line = strings.TrimPrefix(line, ".")
		msg.WriteString(line + "\r\n")
		if msg.Len() > maxData {
			return nil, errors.New("smtptest: message too large")
		}
	}
}

// WaitClosed reads and discards until the client closes the connection or
// IdleTimeout passes with nothing read: a silent server.
func (c *Conn) WaitClosed() {
	buf := make([]byte, 512)
	for {
		if c.nc.SetReadDeadline(time.Now().Add(IdleTimeout)) != nil {
			return
		}
		if _, err := c.nc.Read(buf); err != nil {
			return
		}
	}
}

// Close closes the connection.
func (c *Conn) Close() error { return c.nc.Close() }

// Reset aborts the connection with a TCP RST rather than an orderly FIN
// (SO_LINGER 0, then close), as a crashing server or a middlebox does. The
// client's next read or write fails with "connection reset by peer".
func (c *Conn) Reset() error {
	nc := c.nc
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	if tcp, ok := nc.(*net.TCPConn); ok {
		if err := tcp.SetLinger(0); err != nil {
			return err
		}
	}
	return nc.Close()
}

// Hangup, at the end of a greeting or reply in NewReplyServer, closes the
// connection once the text before it is written.
const Hangup = "\x00hangup"

// commandVerbs are the verbs NewReplyServer answers by default.
var commandVerbs = []string{"EHLO", "HELO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "VRFY", "QUIT"}

// NewReplyServer starts a server that writes greeting (raw, CRLFs included)
// and then answers each command by its verb from replies, also raw, so that
// tests can send broken replies on purpose. A verb not in replies gets
// "250 ok", QUIT "221 bye" (and the connection ends). Client lines that are
// not commands, such as AUTH responses, are looked up by their whole text,
// then under "". A greeting or reply ending in Hangup closes the connection
// after the text before it.
func NewReplyServer(t testing.TB, greeting string, replies map[string]string) *Server {
	t.Helper()
	send := func(c *Conn, text string) bool {
		raw, hangup := strings.CutSuffix(text, Hangup)
		if raw != "" && c.Write(raw) != nil {
			return false
		}
		return !hangup
	}
	return NewScripted(t, func(c *Conn) {
		if !send(c, greeting) {
			return
		}
		for {
			line, err := c.ReadLine()
			if err != nil {
				return
			}
			verb, _, _ := strings.Cut(line, " ")
			verb = strings.ToUpper(verb)
			reply, ok := replies[verb]
			if !ok {
				reply, ok = replies[line]
			}
			if !ok && !slices.Contains(commandVerbs, verb) {
				reply, ok = replies[""]
			}
			if !ok {
				reply = "250 ok\r\n"
				if verb == "QUIT" {
					reply = "221 bye\r\n"
				}
			}
			if !send(c, reply) || verb == "QUIT" {
				return
			}
		}
	})
}

// AuthSession scripts a server for tests of one AUTH exchange: it greets
// as Host, offers Extensions after Host in its EHLO reply, hands every AUTH
// command to Auth, says 221 to QUIT (or hands it to Quit), and answers any
// other command with Other. The test writes only the exchange itself.
type AuthSession struct {
	Host       string
	Extensions []string
	// Auth carries out one exchange from the argument of the AUTH command
	// (mechanism and initial response); it returns false to end the session.
	// Without Auth, AUTH is answered with Other.
	Auth func(c *Conn, arg string) bool
	// Quit, when set, takes QUIT instead of the 221, as the session's last
	// step: a server that never answers it, for one.
	Quit func(c *Conn)
	// Other is the raw reply line to every other command; by default
	// "502 5.5.2 Error: command not recognized".
	Other string
}

// Handle runs the session on one connection; it is a Handler.
func (s AuthSession) Handle(c *Conn) {
	other := s.Other
	if other == "" {
		other = "502 5.5.2 Error: command not recognized"
	}
	if c.Reply(220, s.Host+" ESMTP") != nil {
		return
	}
	for {
		line, err := c.ReadLine()
		if err != nil {
			return
		}
		verb, arg, _ := strings.Cut(line, " ")
		switch strings.ToUpper(verb) {
		case "EHLO":
			err = c.Reply(250, append([]string{s.Host}, s.Extensions...)...)
		case "AUTH":
			if s.Auth == nil {
				err = c.WriteLine(other)
			} else if !s.Auth(c, arg) {
				return
			}
		case "QUIT":
			if s.Quit != nil {
				s.Quit(c)
			} else {
				c.Reply(221, "2.0.0 Bye")
			}
			return
		default:
			err = c.WriteLine(other)
		}
		if err != nil {
			return
		}
	}
}
