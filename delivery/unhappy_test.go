package delivery

import (
	"crypto/tls"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

// unhappyTracker watches addr, trusting the test CA, with operations
// bounded by op.
func unhappyTracker(t *testing.T, addr string, op time.Duration) (*Tracker, *loginLog) {
	t.Helper()
	logins := &loginLog{}
	timing := fastTiming
	timing.Op = op
	tr := NewTracker(Options{OnLogin: logins.add, Timing: timing})
	t.Cleanup(tr.Stop)
	lab := &imapLab{t: t, addr: addr, caFile: smtptest.Certs().WriteCAFile(t)}
	tr.Apply(loadConfig(t, lab.moduleYAML("canary", testPassword, "5m")))
	return tr, logins
}

// countingListener accepts connections, counts them and hands each to
// serve.
func countingListener(t *testing.T, serve func(net.Conn)) (string, *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var n atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			go serve(c)
		}
	}()
	return ln.Addr().String(), &n
}

// assertNeverUp checks that the watcher did not log in, counted no login,
// noted why the session ended (one of why), and kept the password out.
func assertNeverUp(t *testing.T, tr *Tracker, logins *loginLog, why ...string) {
	t.Helper()
	text := strings.Join(tr.Transcript("canary"), "\n")
	if status(t, tr, "canary").WatcherUp {
		t.Error("watcher up")
	}
	if got := logins.list(); len(got) != 0 {
		t.Errorf("logins %v, want none: the session never reached LOGIN", got)
	}
	said := slices.ContainsFunc(why, func(w string) bool { return strings.Contains(text, w) })
	if !strings.Contains(text, "session ended") || !said {
		t.Errorf("the transcript does not say the session ended (%q):\n%s", why, text)
	}
	if strings.Contains(text, testPassword) || strings.Contains(text, "login as") {
		t.Errorf("the transcript reached the login:\n%s", text)
	}
}

func TestConnectionRefusedReconnects(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	tr, logins := unhappyTracker(t, addr, 5*time.Second)
	eventually(t, "a second attempt", func() bool {
		return strings.Count(strings.Join(tr.Transcript("canary"), "\n"), "session ended") >= 2
	})
	assertNeverUp(t, tr, logins, "refused")
}

func TestUntrustedCertificateIsRefused(t *testing.T) {
	untrusted := &tls.Config{Certificates: []tls.Certificate{smtptest.Certs().Untrusted}}
	addr, conns := countingListener(t, func(c net.Conn) {
		defer c.Close()
		tc := tls.Server(c, untrusted)
		if tc.Handshake() == nil {
			tc.Write([]byte("* OK ready\r\n"))
			time.Sleep(time.Second)
		}
	})
	tr, logins := unhappyTracker(t, addr, 5*time.Second)
	eventually(t, "a second attempt", func() bool { return conns.Load() >= 2 })
	assertNeverUp(t, tr, logins, "certificate")
}

// A server that accepts and says nothing holds a session for Op, not
// longer.
func TestSilentServerTimesOut(t *testing.T) {
	addr, conns := countingListener(t, func(c net.Conn) {
		defer c.Close()
		time.Sleep(10 * time.Second)
	})
	start := time.Now()
	tr, logins := unhappyTracker(t, addr, 200*time.Millisecond)
	eventually(t, "a second attempt", func() bool { return conns.Load() >= 2 })
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("the first session lasted about %s, want it ended at Op (200ms)", d)
	}
	// The handshake's context or the socket's deadline, whichever
	// fires first.
	assertNeverUp(t, tr, logins, "deadline exceeded", "i/o timeout")
}
