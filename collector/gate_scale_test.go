package collector

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"math/big"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/smtp-exporter/smtp_exporter/config"
	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
	"github.com/smtp-exporter/smtp_exporter/prober"
)

// BenchmarkGateStoreFull stores results of modules with min_interval into a
// gate already holding limit unexpired ones, as with thousands of targets:
// the cost of a probe's bookkeeping must not grow with them.
func BenchmarkGateStoreFull(b *testing.B) {
	for _, limit := range []int{100, 10000} {
		b.Run(fmt.Sprintf("%d targets", limit), func(b *testing.B) {
			g := newGate(limit, 0)
			entry := &Entry{Time: time.Now(), Success: true, Result: &prober.Result{Success: true}}
			run := func() *Entry { return entry }
			req := func(i int) gateRequest {
				return gateRequest{key: resultKey{module: "m", address: fmt.Sprintf("target-%d:25", i)},
					minInterval: time.Hour, deadline: time.Now().Add(time.Minute)}
			}
			for i := range limit {
				g.decide(context.Background(), req(i), run)
			}
			i := limit
			b.ReportAllocs()
			for b.Loop() {
				i++
				g.decide(context.Background(), req(i), run)
			}
			if g.size() != limit {
				b.Fatalf("gate holds %d results, limit %d", g.size(), limit)
			}
		})
	}
}

// freshCertServer is an SMTP server that presents a new certificate of
// about size bytes at every STARTTLS, as a hostile or merely odd fleet of
// servers would.
func freshCertServer(t testing.TB, size int) *smtptest.Server {
	t.Helper()
	padding, err := asn1.Marshal(make([]byte, size))
	if err != nil {
		t.Fatal(err)
	}
	fresh := func() (tls.Certificate, error) {
		serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
		if err != nil {
			return tls.Certificate{}, err
		}
		cert, err := smtptest.NewCertificate(&x509.Certificate{
			SerialNumber: serial,
			Subject:      pkix.Name{CommonName: "mx-" + serial.String() + ".example.net"},
			DNSNames:     []string{"mx-" + serial.String() + ".example.net"},
			ExtraExtensions: []pkix.Extension{{
				Id:    asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 55555, 1}, // private, non-critical
				Value: padding,
			}},
		}, nil)
		if err != nil {
			return tls.Certificate{}, err
		}
		return cert.TLS(), nil
	}
	return smtptest.NewScripted(t, func(c *smtptest.Conn) {
		c.Reply(220, "mx.example.net ESMTP")
		for {
			line, err := c.ReadLine()
			if err != nil {
				return
			}
			switch verb := strings.ToUpper(strings.Fields(line + " x")[0]); {
			case verb == "EHLO" && !c.TLS():
				c.Reply(250, "mx.example.net", "STARTTLS")
			case verb == "EHLO":
				c.Reply(250, "mx.example.net", "SIZE 1000000")
			case verb == "STARTTLS":
				cert, err := fresh()
				if err != nil {
					t.Error(err)
					return
				}
				c.Reply(220, "go ahead")
				if c.StartTLS(cert) != nil {
					return
				}
			case verb == "QUIT":
				c.Reply(221, "bye")
				return
			default:
				c.Reply(502, "no")
			}
		}
	})
}

// The gate's stored results are slim: 10,000 of them, each from a real
// probe of a server presenting a fresh 200 KiB certificate, stay under
// 64 MiB of heap. (1,000 under the race detector, which makes every probe
// much slower; the bound per result is the same.)
func TestGateMemory(t *testing.T) {
	const certSize = 200 << 10
	const budget = 64 << 20 // for 10,000 results
	results := 10000
	if raceDetector || testing.Short() {
		results = 1000
	}
	srv := freshCertServer(t, certSize)
	module := config.Module{Timeout: 5e9, SMTP: config.SMTPProbe{TLS: config.TLSStartTLS, PreferredIPProtocol: "ip4", EHLO: "probe.example.net"}}
	module.SMTP.TLSConfig.InsecureSkipVerify = true
	g := newGate(results, 0)

	probe := func(i int) {
		res := prober.Probe(context.Background(), srv.Addr(), &module, "p", nil)
		if !res.Success {
			t.Fatalf("probe %d failed: %+v", i, res.Failure)
		}
		if len(res.Certificates) == 0 {
			t.Fatalf("probe %d: no certificate reported", i)
		}
		entry := &Entry{ID: uint64(i), Time: time.Now(), Success: true, Duration: res.Duration, Result: boundResult(res)}
		req := gateRequest{key: resultKey{module: "m", address: fmt.Sprintf("target-%d:25", i)},
			minInterval: time.Hour, deadline: time.Now().Add(time.Minute)}
		if ans, err := g.decide(context.Background(), req, func() *Entry { return entry }); err != nil || ans.Provenance != Fresh {
			t.Fatalf("probe %d: %v %v", i, ans.Provenance, err)
		}
	}
	probe(0) // warm up: TLS, the server's goroutines, the gate's maps
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := 1; i <= results; i++ {
		probe(i)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if n := g.size(); n != results {
		t.Fatalf("gate holds %d results, want %d", n, results)
	}
	grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	perResult := grown / int64(results)
	t.Logf("%d stored results from servers with fresh %d KiB certificates: heap +%.1f MiB, %d bytes per result",
		results, certSize>>10, float64(grown)/(1<<20), perResult)
	if perResult*10000 > budget {
		t.Errorf("%d bytes per stored result: 10,000 would take %.0f MiB, over %d MiB",
			perResult, float64(perResult*10000)/(1<<20), budget>>20)
	}
	runtime.KeepAlive(g)
}
