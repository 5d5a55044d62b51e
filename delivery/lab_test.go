package delivery

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"

	"github.com/smtp-exporter/smtp_exporter/config"
	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
	"github.com/smtp-exporter/smtp_exporter/prober/message"
)

const (
	testUser     = "canary@example.net"
	testPassword = "s3cret-imap-Passw0rd"
)

// imapLab is an in-process IMAP server (go-imap's in-memory backend)
// behind implicit TLS on loopback.
type imapLab struct {
	t      testing.TB
	addr   string
	caFile string
	user   *imapmemserver.User
	tls    *tls.Config

	logins  atomic.Int32 // by the watcher: the inspector's are not counted
	inspect atomic.Bool
	// onSelect, when set, is called with the mailbox of each SELECT of
	// the watcher, before the server runs it.
	onSelect atomic.Pointer[func(mailbox string)]

	mu    sync.Mutex
	conns []net.Conn
}

type countingSession struct {
	imapserver.Session
	lab *imapLab
}

// Select runs the lab's onSelect hook, if any, before the server selects.
func (s countingSession) Select(mailbox string, options *imap.SelectOptions) (*imap.SelectData, error) {
	if hook := s.lab.onSelect.Load(); hook != nil && !s.lab.inspect.Load() {
		(*hook)(mailbox)
	}
	return s.Session.Select(mailbox, options)
}

func (s countingSession) Login(username, password string) error {
	if !s.lab.inspect.Load() {
		s.lab.logins.Add(1)
	}
	return s.Session.Login(username, password)
}

type trackingListener struct {
	net.Listener
	lab *imapLab
}

func (l trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.lab.mu.Lock()
		l.lab.conns = append(l.lab.conns, c)
		l.lab.mu.Unlock()
	}
	return c, err
}

func newIMAPLab(t testing.TB, caps ...imap.Cap) *imapLab {
	t.Helper()
	certs := smtptest.Certs()
	lab := &imapLab{t: t, tls: &tls.Config{Certificates: []tls.Certificate{certs.Server}}}
	lab.caFile = certs.WriteCAFile(t)
	mem := imapmemserver.New()
	lab.user = imapmemserver.NewUser(testUser, testPassword)
	if err := lab.user.Create("INBOX", nil); err != nil {
		t.Fatal(err)
	}
	mem.AddUser(lab.user)
	capSet := imap.CapSet{imap.CapIMAP4rev1: {}}
	for _, c := range caps {
		capSet[c] = struct{}{}
	}
	srv := imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return countingSession{Session: mem.NewSession(), lab: lab}, nil, nil
		},
		Caps:      capSet,
		TLSConfig: lab.tls,
		Logger:    discardLogger{},
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lab.addr = ln.Addr().String()
	go srv.Serve(tls.NewListener(trackingListener{ln, lab}, lab.tls))
	t.Cleanup(func() { srv.Close() })
	return lab
}

type discardLogger struct{}

func (discardLogger) Printf(string, ...any) {}

// drop closes every connection the server has accepted.
func (l *imapLab) drop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Close()
	}
	l.conns = nil
}

func (l *imapLab) deliver(folder, probeID, subject string) {
	l.t.Helper()
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: probe@example.net\r\nTo: %s\r\nSubject: %s\r\n", testUser, subject)
	if probeID != "" {
		fmt.Fprintf(&b, "%s: %s\r\n", message.ProbeIDHeader, probeID)
	}
	b.WriteString("\r\nbody\r\n")
	if _, err := l.user.Append(folder, bytes.NewReader(b.Bytes()), &imap.AppendOptions{Time: time.Now()}); err != nil {
		l.t.Fatal(err)
	}
}

type inspected struct {
	Subject string
	Flags   []imap.Flag
}

// messages lists a folder as another client sees it.
func (l *imapLab) messages(folder string) []inspected {
	l.t.Helper()
	l.inspect.Store(true)
	defer l.inspect.Store(false)
	c := l.login()
	defer c.Close()
	data, err := c.Select(folder, &imap.SelectOptions{ReadOnly: true}).Wait()
	if err != nil {
		l.t.Fatal(err)
	}
	if data.NumMessages == 0 {
		return nil
	}
	msgs, err := c.Fetch(imap.SeqSet{imap.SeqRange{Start: 1, Stop: 0}}, &imap.FetchOptions{Flags: true, Envelope: true}).Collect()
	if err != nil {
		l.t.Fatal(err)
	}
	var out []inspected
	for _, m := range msgs {
		// A message the watcher expunges between SELECT and FETCH comes
		// back without its envelope: it is still counted, so that a test
		// waiting for the mailbox to empty asks again.
		var subject string
		if m.Envelope != nil {
			subject = m.Envelope.Subject
		}
		out = append(out, inspected{Subject: subject, Flags: m.Flags})
	}
	return out
}

// moduleYAML is a canary module watching the lab's INBOX.
func (l *imapLab) moduleYAML(name, password, backoff string) string {
	return fmt.Sprintf(`
  %s:
    auth_failure_backoff: %s
    smtp:
      mail:
        from: probe@example.net
        to: [%s]
        delivery:
          imap:
            address: %s
            tls: implicit
            tls_config: {ca_file: %s}
            username: %s
            password: %q
          late_after: 2m
          lost_after: 30m
`, name, backoff, testUser, l.addr, l.caFile, testUser, password)
}

func loadConfig(t testing.TB, modules ...string) *config.Config {
	t.Helper()
	text := "modules:\n  plain: {}\n"
	for _, m := range modules {
		text += m
	}
	cfg, err := config.Load([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

var fastTiming = Timing{Op: 5 * time.Second, Poll: 50 * time.Millisecond, Idle: time.Second, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}

type loginLog struct {
	mu  sync.Mutex
	got []string
}

func (l *loginLog) add(module, outcome string) {
	l.mu.Lock()
	l.got = append(l.got, module+"/"+outcome)
	l.mu.Unlock()
}

func (l *loginLog) list() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.got)
}

func newTestTracker(t *testing.T, now func() time.Time) (*Tracker, *loginLog) {
	logins := &loginLog{}
	tr := NewTracker(Options{Now: now, OnLogin: logins.add, Timing: fastTiming})
	t.Cleanup(tr.Stop)
	return tr, logins
}

// eventually waits up to 10 s for cond.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func status(t *testing.T, tr *Tracker, module string) Status {
	t.Helper()
	s, ok := tr.Status(module)
	if !ok {
		t.Fatalf("module %s has no delivery state", module)
	}
	return s
}

// login is another client of the lab, trusting its CA file, logged in
// as the canary's owner.
func (l *imapLab) login() *imapclient.Client {
	l.t.Helper()
	pool := x509.NewCertPool()
	ca, _ := os.ReadFile(l.caFile)
	pool.AppendCertsFromPEM(ca)
	c, err := imapclient.DialTLS(l.addr, &imapclient.Options{TLSConfig: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}})
	if err != nil {
		l.t.Fatal(err)
	}
	if err := c.Login(testUser, testPassword).Wait(); err != nil {
		c.Close()
		l.t.Fatal(err)
	}
	return c
}

// client is a logged-in inspector with INBOX selected read-write.
func (l *imapLab) client() *imapclient.Client {
	l.t.Helper()
	c := l.login()
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		l.t.Fatal(err)
	}
	return c
}
