package smtptest

import (
	"crypto/hmac"
	"crypto/md5"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"net"
	"net/textproto"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestCerts(t *testing.T) {
	t.Parallel()
	c := Certs()
	verify := func(leaf *x509.Certificate, name string) error {
		_, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: c.Pool})
		return err
	}
	for _, name := range LoopbackNames {
		if err := verify(c.Server.Leaf, name); err != nil {
			t.Errorf("Server for %s: %v", name, err)
		}
	}
	var invalid x509.CertificateInvalidError
	if err := verify(c.Expired.Leaf, "localhost"); !errors.As(err, &invalid) || invalid.Reason != x509.Expired {
		t.Errorf("Expired: %v", err)
	}
	var hostname x509.HostnameError
	if err := verify(c.WrongName.Leaf, "localhost"); !errors.As(err, &hostname) {
		t.Errorf("WrongName: %v", err)
	}
	var unknown x509.UnknownAuthorityError
	if err := verify(c.Untrusted.Leaf, "localhost"); !errors.As(err, &unknown) {
		t.Errorf("Untrusted: %v", err)
	}
	data, err := os.ReadFile(c.WriteCAFile(t))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" || !slices.Equal(block.Bytes, c.CA.Raw) {
		t.Error("CA file does not hold the CA certificate")
	}
}

// client is a raw SMTP client for checking the server's side of things.
type client struct {
	t *testing.T
	*textproto.Conn
}

func dial(t *testing.T, s *Server) *client {
	t.Helper()
	nc, err := net.DialTimeout("tcp", s.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Now().Add(5 * time.Second))
	c := &client{t: t, Conn: textproto.NewConn(nc)}
	t.Cleanup(func() { c.Close() })
	c.expect(220)
	return c
}

func (c *client) send(line string, want int) string {
	c.t.Helper()
	if err := c.PrintfLine("%s", line); err != nil {
		c.t.Fatal(err)
	}
	return c.expect(want)
}

func (c *client) expect(want int) string {
	c.t.Helper()
	code, msg, err := c.ReadResponse(want)
	if err != nil {
		c.t.Fatalf("want %d, got %d %q: %v", want, code, msg, err)
	}
	return msg
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestStandardServerChecksCredentials(t *testing.T) {
	t.Parallel()
	s := NewServer(t, Options{Username: "user", Password: "pass"})
	cram := func(c *client, password string) {
		chal, err := base64.StdEncoding.DecodeString(c.send("AUTH CRAM-MD5", 334))
		if err != nil {
			t.Fatal(err)
		}
		mac := hmac.New(md5.New, []byte(password))
		mac.Write(chal)
		c.PrintfLine("%s", b64("user "+hex.EncodeToString(mac.Sum(nil))))
	}
	for _, tc := range []struct {
		name string
		run  func(c *client)
		ok   bool
	}{
		{"PLAIN", func(c *client) { c.PrintfLine("AUTH PLAIN %s", b64("\x00user\x00pass")) }, true},
		{"PLAIN wrong", func(c *client) { c.PrintfLine("AUTH PLAIN %s", b64("\x00user\x00nope")) }, false},
		{"PLAIN after 334", func(c *client) { c.send("AUTH PLAIN", 334); c.PrintfLine("%s", b64("\x00user\x00pass")) }, true},
		{"LOGIN", func(c *client) {
			if p := c.send("AUTH LOGIN", 334); p != b64("Username:") {
				t.Errorf("prompt %q", p)
			}
			c.send(b64("user"), 334)
			c.PrintfLine("%s", b64("pass"))
		}, true},
		{"LOGIN wrong user", func(c *client) { c.send("AUTH LOGIN", 334); c.send(b64("other"), 334); c.PrintfLine("%s", b64("pass")) }, false},
		{"CRAM-MD5", func(c *client) { cram(c, "pass") }, true},
		{"CRAM-MD5 wrong", func(c *client) { cram(c, "nope") }, false},
	} {
		c := dial(t, s)
		c.send("EHLO test", 250)
		tc.run(c)
		if tc.ok {
			c.expect(235)
			c.send("AUTH PLAIN "+b64("\x00user\x00pass"), 503)
		} else if msg := c.expect(535); !strings.HasPrefix(msg, "5.7.8 ") {
			t.Errorf("%s: rejection %q", tc.name, msg)
		}
		c.send("QUIT", 221)
	}
	s.Close()
	auths := s.Auths()
	if len(auths) != 7 {
		t.Fatalf("%d auth attempts recorded", len(auths))
	}
	want := []bool{true, false, true, true, false, true, false}
	for i, a := range auths {
		if a.Success != want[i] || a.Username == "" {
			t.Errorf("attempt %d: %+v, want success %v", i, a, want[i])
		}
	}
}

func TestStandardServerTransaction(t *testing.T) {
	t.Parallel()
	s := NewServer(t, Options{
		Size:        1000,
		RcptReplies: map[string]string{"bad@example.net": "550 5.1.1 User unknown"},
	})
	c := dial(t, s)
	ehlo := c.send("EHLO test", 250)
	for _, ext := range []string{"PIPELINING", "SIZE 1000", "AUTH PLAIN LOGIN CRAM-MD5", "8BITMIME"} {
		if !strings.Contains(ehlo, ext) {
			t.Errorf("EHLO lacks %s:\n%s", ext, ehlo)
		}
	}
	c.send("RCPT TO:<a@example.net>", 503)
	c.send("MAIL FROM:<from@example.net> SIZE=2000", 552)
	c.send("MAIL FROM:<from@example.net> SIZE=20", 250)
	c.send("RCPT TO:<a@example.net>", 250)
	c.send("RCPT TO:<bad@example.net>", 550)
	c.send("DATA", 354)
	c.PrintfLine("Subject: dots")
	c.PrintfLine("")
	c.PrintfLine("..leading")
	c.PrintfLine("...")
	c.PrintfLine(".")
	if msg := c.expect(250); !strings.Contains(msg, "queued as") {
		t.Errorf("reply %q", msg)
	}
	c.send("RSET", 250)
	c.send("QUIT", 221)
	s.Close()
	msgs := s.Messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages", len(msgs))
	}
	m := msgs[0]
	if m.From != "from@example.net" || !slices.Equal(m.To, []string{"a@example.net"}) ||
		string(m.Data) != "Subject: dots\r\n\r\n.leading\r\n..\r\n" {
		t.Errorf("message %+v %q", m, m.Data)
	}
	if s.Resets() != 1 || !s.SawCommand("rset") || s.SawCommand("VRFY") {
		t.Errorf("resets %d, lines %q", s.Resets(), s.Lines())
	}
}

func TestStandardServerAuthRequiresTLS(t *testing.T) {
	t.Parallel()
	s := NewServer(t, Options{TLS: StartTLS, AuthRequiresTLS: true, Username: "u", Password: "p"})
	c := dial(t, s)
	ehlo := c.send("EHLO test", 250)
	if strings.Contains(ehlo, "AUTH") || !strings.Contains(ehlo, "STARTTLS") {
		t.Errorf("EHLO before TLS:\n%s", ehlo)
	}
	c.send("AUTH PLAIN "+b64("\x00u\x00p"), 530)
	c.send("QUIT", 221)
}

func TestLegacyEHLO(t *testing.T) {
	t.Parallel()
	s := NewServer(t, Options{Legacy: true, Size: 10240000, Mechanisms: []string{"LOGIN", "PLAIN"}})
	c := dial(t, s)
	ehlo := c.send("EHLO test", 250)
	for _, l := range []string{"auth login plain", "AUTH=LOGIN PLAIN", "Size 10240000"} {
		if !strings.Contains(ehlo, l) {
			t.Errorf("legacy EHLO lacks %q:\n%s", l, ehlo)
		}
	}
}

func TestCloseDoesNotWaitForeverOnAClient(t *testing.T) {
	t.Parallel()
	s := NewScripted(t, func(c *Conn) { c.WaitClosed() })
	nc, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for s.Connections() == 0 {
		time.Sleep(time.Millisecond)
	}
	start := time.Now()
	s.Close()
	if d := time.Since(start); d > closeGrace+time.Second {
		t.Errorf("Close took %v", d)
	}
	if _, err := net.DialTimeout("tcp", s.Addr(), time.Second); err == nil {
		t.Error("server still accepting after Close")
	}
}

func TestResetSendsRST(t *testing.T) {
	t.Parallel()
	s := NewScripted(t, func(c *Conn) {
		c.Reply(220, "mx")
		if _, err := c.ReadLine(); err == nil {
			c.Reset()
		}
	})
	nc, err := net.DialTimeout("tcp", s.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	if _, err := nc.Read(buf); err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Write([]byte("EHLO me\r\n")); err != nil {
		t.Fatal(err)
	}
	// An orderly close would read as io.EOF; a reset is ECONNRESET.
	if _, err := nc.Read(buf); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("read after Reset: %v, want connection reset", err)
	}
}

// Without Auth, AUTH gets Other; with Quit, QUIT goes to it and no 221 is
// written.
func TestAuthSessionWithoutAuthAndWithQuit(t *testing.T) {
	t.Parallel()
	quit := make(chan struct{})
	s := NewScripted(t, AuthSession{
		Host:  "quiet.test",
		Other: "250 quiet.test",
		Quit:  func(c *Conn) { close(quit); c.WaitClosed() },
	}.Handle)
	c := dial(t, s)
	if ehlo := c.send("EHLO test", 250); ehlo != "quiet.test" {
		t.Errorf("EHLO reply %q, want quiet.test alone", ehlo)
	}
	c.send("AUTH PLAIN", 250)
	if err := c.PrintfLine("QUIT"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-quit:
	case <-time.After(5 * time.Second):
		t.Fatal("QUIT not handed to Quit")
	}
	if line, err := c.ReadLine(); err == nil {
		t.Errorf("reply %q to QUIT, want none", line)
	}
}
