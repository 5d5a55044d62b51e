package prober

import (
	"errors"
	"io"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

// TestHandshakeCutShort: a server that resets (RST) or closes (FIN) the
// connection during the TLS handshake fails the probe in the phase of the
// handshake with tls_handshake, as the README's failure reasons say: the
// session broke in TLS, which is what SMTPTLSBroken is for.
func TestHandshakeCutShort(t *testing.T) {
	t.Parallel()
	// clientHello reads the client's first TLS record whole, so that the
	// server is in the middle of the handshake when it acts, and a close
	// leaves no unread data that would turn it into a reset.
	clientHello := func(c *smtptest.Conn) bool {
		var header [5]byte
		if c.NetConn().SetReadDeadline(time.Now().Add(smtptest.IdleTimeout)) != nil {
			return false
		}
		if _, err := io.ReadFull(c.NetConn(), header[:]); err != nil || header[0] != 0x16 {
			t.Errorf("the client's first record is %x (%v), not a handshake", header, err)
			return false
		}
		body := make([]byte, int(header[3])<<8|int(header[4]))
		if _, err := io.ReadFull(c.NetConn(), body); err != nil {
			t.Errorf("reading the ClientHello: %v", err)
			return false
		}
		return true
	}
	// serverHelloStart answers with the header of a handshake record and
	// none of its body.
	serverHelloStart := func(c *smtptest.Conn) bool {
		return clientHello(c) && c.Write("\x16\x03\x03\x00\x7a") == nil
	}
	reset := func(c *smtptest.Conn) { c.Reset() }
	hangup := func(c *smtptest.Conn) { c.Close() }
	for _, tc := range []struct {
		name  string
		tls   string
		start func(c *smtptest.Conn) bool
		end   func(c *smtptest.Conn)
		reset bool
	}{
		{"implicit, reset after the ClientHello", "implicit", clientHello, reset, true},
		{"implicit, reset in the ServerHello", "implicit", serverHelloStart, reset, true},
		{"implicit, closed after the ClientHello", "implicit", clientHello, hangup, false},
		{"starttls, reset after the ClientHello", "starttls", clientHello, reset, true},
		{"starttls, reset in the ServerHello", "starttls", serverHelloStart, reset, true},
		{"starttls, closed after the ClientHello", "starttls", clientHello, hangup, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := smtptest.NewScripted(t, func(c *smtptest.Conn) {
				if tc.tls == "starttls" {
					if c.Reply(220, "mx ESMTP") != nil {
						return
					}
					for {
						line, err := c.ReadLine()
						if err != nil {
							return
						}
						switch strings.ToUpper(line) {
						case "STARTTLS":
							if c.Reply(220, "2.0.0 go ahead") != nil {
								return
							}
						default:
							if c.Reply(250, "mx", "STARTTLS") != nil {
								return
							}
							continue
						}
						break
					}
				}
				if tc.start(c) {
					tc.end(c)
				}
			})
			r, _ := runProbe(t, target(srv), loadModule(t, moduleSpec{TLS: tc.tls, Timeout: "5s"}))
			phase := PhaseTLS
			if tc.tls == "starttls" {
				phase = PhaseStartTLS
			}
			requireFailure(t, r, phase, ReasonTLSHandshake)
			if got := errors.Is(r.Failure.Err, syscall.ECONNRESET); got != tc.reset {
				t.Errorf("error %q: a reset %v, want %v", r.Failure.Err, got, tc.reset)
			}
			if r.TLS != nil {
				t.Error("a TLS session is reported")
			}
			if q := phaseOf(t, r, PhaseQuit); q.Ran {
				t.Error("QUIT was sent on a broken connection")
			}
		})
	}
}
