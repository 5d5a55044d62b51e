package prober

import (
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/smtp-exporter/smtp_exporter/config"
	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

// The delayed-ACK trap. A server that leaves Nagle's algorithm on (Postfix
// does) and writes a reply in two pieces sends the second only once the
// first is acknowledged. Postfix with OpenSSL and TLS 1.3 does exactly that
// after every handshake: the NewSessionTicket record goes out alone, and the
// banner (implicit TLS) or the reply to the second EHLO (STARTTLS) waits
// behind it. A Linux client that has just sent a command is in its
// interactive ("pingpong") mode and delays that acknowledgement by 40 ms, so
// a phase would report 40 ms the server never spent. The prober asks for an
// immediate acknowledgement before every reply it reads.

// stallThreshold is well below the 40 ms minimum delayed ACK of Linux and
// well above what a loopback reply costs, even on a busy machine.
const stallThreshold = 30 * time.Millisecond

// newNagleServer is an SMTP server with Nagle's algorithm on that writes
// every reply in two pieces, one per write: what Postfix does after a TLS
// 1.3 handshake, for every reply.
func newNagleServer(t *testing.T, implicit bool) *smtptest.Server {
	t.Helper()
	cert := smtptest.Certs().Server
	split := func(c *smtptest.Conn, reply string) error {
		first, rest, _ := strings.Cut(reply, "\n")
		if err := c.Write(first + "\n"); err != nil {
			return err
		}
		return c.Write(rest)
	}
	return smtptest.NewScripted(t, func(c *smtptest.Conn) {
		tcp, ok := c.NetConn().(*net.TCPConn)
		if !ok || tcp.SetNoDelay(false) != nil {
			t.Error("cannot turn Nagle's algorithm on for the test server")
			return
		}
		if implicit && c.StartTLS(cert) != nil {
			return
		}
		if split(c, "220-mx.nagle.invalid ESMTP\r\n220 ready\r\n") != nil {
			return
		}
		for {
			line, err := c.ReadLine()
			if err != nil {
				return
			}
			verb, _, _ := strings.Cut(strings.ToUpper(line), " ")
			switch verb {
			case "EHLO":
				ext := "250-PIPELINING\r\n250 SIZE 10240000\r\n"
				if !c.TLS() {
					ext = "250-STARTTLS\r\n" + ext
				}
				err = split(c, "250-mx.nagle.invalid\r\n"+ext)
			case "STARTTLS":
				if err = c.Reply(220, "2.0.0 Ready to start TLS"); err == nil {
					err = c.StartTLS(cert)
				}
			case "QUIT":
				split(c, "221 2.0.0\r\n221 Bye\r\n")
				return
			default:
				err = c.Reply(502, "5.5.2 Error: command not recognized")
			}
			if err != nil {
				return
			}
		}
	})
}

func TestPhaseTimingsCarryNoDelayedACKStall(t *testing.T) {
	if testing.Short() {
		t.Skip("runs 40 probes")
	}
	caFile := smtptest.Certs().WriteCAFile(t)
	for _, mode := range []string{"starttls", "implicit"} {
		t.Run(mode, func(t *testing.T) {
			srv := newNagleServer(t, mode == "implicit")
			requireNoStall(t, target(srv), loadModule(t, moduleSpec{TLS: mode, CAFile: caFile}), 20)
		})
	}
}

// The same against the lab's Postfix, where the trap was found: OpenSSL,
// TLS 1.3, a session ticket written alone after every handshake.
func TestLabNoDelayedACKStall(t *testing.T) {
	l := requireLab(t)
	if testing.Short() {
		t.Skip("runs 150 probes")
	}
	for _, tc := range []struct {
		name, port, tls string
		lines           []string
	}{
		{"starttls", "LAB_PORT_SUBMISSION", "starttls", nil},
		{"starttls with auth", "LAB_PORT_SUBMISSION", "starttls", []string{l.auth("PLAIN", l["LAB_PASSWORD"])}},
		{"implicit", "LAB_PORT_IMPLICIT", "implicit", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			requireNoStall(t, l.target(tc.port), l.module(t, tc.tls, tc.lines...), 50)
		})
	}
}

// requireNoStall runs probes probes and fails when a phase that reads a
// reply took stallThreshold or more in most of them.
func requireNoStall(t *testing.T, target string, m config.Module, probes int) {
	t.Helper()
	durations := map[Phase][]time.Duration{}
	for range probes {
		r, log := runProbe(t, target, m)
		requireSuccess(t, r, log)
		for _, p := range r.Phases {
			durations[p.Phase] = append(durations[p.Phase], p.Duration)
		}
	}
	for ph, ds := range durations {
		if ph == PhaseConnect || ph == PhaseTLS || ph == PhaseStartTLS {
			continue // no reply after a handshake to wait for
		}
		slices.Sort(ds)
		stalled := 0
		for _, d := range ds {
			if d >= stallThreshold {
				stalled++
			}
		}
		// A loaded machine may delay a probe now and then; the stall
		// delays nearly all of them.
		if median := ds[len(ds)/2]; median >= stallThreshold || stalled > probes/4 {
			t.Errorf("phase %s: median %v, %d of %d probes at %v or more: a delayed-ACK stall, not the server",
				ph, median, stalled, probes, stallThreshold)
		}
	}
}
