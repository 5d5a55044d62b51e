package prober

import (
	"bufio"
	"bytes"
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

// BenchmarkProbeSession runs whole probes against an in-process server:
// allocations and time per session of the prober's own code (and the
// server's, which runs in the same process). "plain" has no cryptography,
// so the client's overhead stands out; "starttls auth" is the submission
// probe the README recommends.
func BenchmarkProbeSession(b *testing.B) {
	caFile := smtptest.Certs().WriteCAFile(b)
	for _, tc := range []struct {
		name string
		opts smtptest.Options
		spec moduleSpec
	}{
		{"plain", smtptest.Options{NoAuth: true}, moduleSpec{TLS: "none"}},
		{"starttls auth", smtptest.Options{TLS: smtptest.StartTLS, Username: testUser, Password: testPassword, AuthRequiresTLS: true},
			moduleSpec{TLS: "starttls", CAFile: caFile, Mechanism: "PLAIN"}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			srv := smtptest.NewServer(b, tc.opts)
			m := loadModule(b, tc.spec)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if r := Probe(ctx, srv.Addr(), &m, "bench", nil); !r.Success {
					b.Fatalf("probe failed: %+v", r.Failure)
				}
			}
		})
	}
}

// BenchmarkReadReply parses a Postfix-sized EHLO reply from memory: the
// reply reader and transcript without the network.
func BenchmarkReadReply(b *testing.B) {
	reply := []byte("250-mx.example.net\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n" +
		"250-AUTH PLAIN LOGIN CRAM-MD5 SCRAM-SHA-1 SCRAM-SHA-256\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n" +
		"250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n")
	src := bytes.NewReader(reply)
	r := bufio.NewReaderSize(src, maxReplyLineLen)
	logger := slog.New(slog.DiscardHandler)
	b.ReportAllocs()
	for b.Loop() {
		src.Reset(reply)
		r.Reset(src)
		c := &smtpConn{nc: sinkConn{}, r: r, tr: newTranscript(time.Now(), logger)}
		rep, err := c.readReply()
		if err != nil || len(parseEHLO(rep).keywords) != 10 {
			b.Fatalf("reply %+v, err %v", rep, err)
		}
	}
}
