package collector

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"flag"
	"hash/fnv"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"text/template"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/smtp-exporter/smtp_exporter/prober"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden expositions in testdata/ from the current output")

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

// tlsFixture is a certificate setup where the earliest expiry among the
// presented certificates (the intermediate) differs from the expiry of the
// chain that lasts longest (via a second intermediate), so that the two
// metrics cannot be confused.
type tlsFixture struct {
	session     *prober.TLSSession
	certs       []prober.Certificate
	leaf        *x509.Certificate
	leafExpiry  time.Time
	interExpiry time.Time
}

func newTLSFixture(t *testing.T) *tlsFixture {
	t.Helper()
	rootA := newTestCert(t, "Test Root A", 1, time.Date(2040, 1, 1, 0, 0, 0, 0, time.UTC), nil, nil)
	interExpiry := time.Date(2029, 1, 15, 12, 0, 0, 0, time.UTC)
	interA := newTestCert(t, "Test Intermediate A", 3, interExpiry, nil, rootA)
	leafExpiry := time.Date(2030, 6, 1, 0, 0, 0, 0, time.UTC)
	// 0x0abc: the serial label must keep the leading zero of the first byte.
	leaf := newTestCert(t, "mail.example.net", 0x0abc, leafExpiry, []string{"mail.example.net", "smtp.example.net"}, interA)
	return &tlsFixture{
		session: &prober.TLSSession{
			Version:     tls.VersionTLS13,
			CipherSuite: tls.TLS_AES_128_GCM_SHA256,
			Verified:    true,
			// The chain via intermediate A ends with it in 2029; a second
			// one, via an intermediate B valid until 2035, lasts as long
			// as the leaf.
			LastChainExpiry: leafExpiry,
		},
		certs:       []prober.Certificate{leaf.summary(), interA.summary()},
		leaf:        leaf.cert,
		leafExpiry:  leafExpiry,
		interExpiry: interExpiry,
	}
}

func (f *tlsFixture) fingerprint() string {
	sum := sha256.Sum256(f.leaf.Raw)
	return hex.EncodeToString(sum[:])
}

// successResult is a submission probe with STARTTLS and AUTH PLAIN that
// succeeded, with the session and certificates of fix (none when nil).
func successResult(fix *tlsFixture) *prober.Result {
	r := &prober.Result{
		Success:       true,
		Duration:      ms(250),
		Host:          "mail.example.net",
		Port:          587,
		DNSLookupTime: ms(5),
		IP:            netip.MustParseAddr("127.0.0.1"),
		Phases: []prober.PhaseResult{
			{Phase: prober.PhaseConnect, Ran: true, Duration: ms(10)},
			{Phase: prober.PhaseBanner, Ran: true, Duration: ms(20), Code: 220},
			{Phase: prober.PhaseEHLO, Ran: true, Duration: ms(15), Code: 250},
			{Phase: prober.PhaseStartTLS, Ran: true, Duration: ms(80), Code: 220, Enhanced: "2.0.0"},
			{Phase: prober.PhaseEHLOTLS, Ran: true, Duration: ms(15), Code: 250},
			{Phase: prober.PhaseAuth, Ran: true, Duration: ms(100), Code: 235, Enhanced: "2.7.0"},
			{Phase: prober.PhaseQuit, Ran: true, Duration: ms(5), Code: 221, Enhanced: "2.0.0"},
		},
		Extensions: map[prober.Phase][]string{
			prober.PhaseEHLO:    {"PIPELINING", "SIZE", "STARTTLS", "8BITMIME"},
			prober.PhaseEHLOTLS: {"PIPELINING", "SIZE", "AUTH", "8BITMIME"},
		},
		SizeLimit:      10485760,
		AuthAttempted:  true,
		AuthSuccess:    true,
		AuthMechanisms: []string{"PLAIN", "LOGIN"},
		AuthMechanism:  "PLAIN",
	}
	if fix != nil {
		r.TLS, r.Certificates = fix.session, fix.certs
	}
	return r
}

// authFailedResult is the same probe turned down with 535 5.7.8.
func authFailedResult(fix *tlsFixture) *prober.Result {
	r := successResult(fix)
	r.Success = false
	r.AuthSuccess = false
	r.Phases[5] = prober.PhaseResult{Phase: prober.PhaseAuth, Ran: true, Duration: ms(100), Code: 535, Enhanced: "5.7.8"}
	r.Failure = &prober.Failure{Phase: prober.PhaseAuth, Reason: prober.ReasonAuthRejected,
		Err: errors.New("535 5.7.8 Error: authentication failed")}
	return r
}

// dnsFailedResult never got past resolving the target.
func dnsFailedResult() *prober.Result {
	return &prober.Result{
		Duration:      ms(30),
		Host:          "nonexistent.example.net",
		Port:          587,
		DNSLookupTime: ms(30),
		Phases: []prober.PhaseResult{
			{Phase: prober.PhaseConnect},
			{Phase: prober.PhaseBanner},
			{Phase: prober.PhaseEHLO},
			{Phase: prober.PhaseStartTLS},
			{Phase: prober.PhaseEHLOTLS},
			{Phase: prober.PhaseAuth},
			{Phase: prober.PhaseQuit},
		},
		SizeLimit: -1,
		Failure: &prober.Failure{Phase: prober.PhaseSetup, Reason: prober.ReasonDNS,
			Err: errors.New("lookup nonexistent.example.net: no such host")},
	}
}

// canaryResult is a relay probe (no TLS, no AUTH) that sent a canary to two
// recipients, one of them refused.
func canaryResult() *prober.Result {
	return &prober.Result{
		Duration:      ms(400),
		DNSLookupTime: ms(1),
		IP:            netip.MustParseAddr("::1"),
		Phases: []prober.PhaseResult{
			{Phase: prober.PhaseConnect, Ran: true, Duration: ms(1)},
			{Phase: prober.PhaseBanner, Ran: true, Duration: ms(2), Code: 220},
			{Phase: prober.PhaseEHLO, Ran: true, Duration: ms(3), Code: 250},
			{Phase: prober.PhaseMail, Ran: true, Duration: ms(4), Code: 250, Enhanced: "2.1.0"},
			{Phase: prober.PhaseRcpt, Ran: true, Duration: ms(5), Code: 550, Enhanced: "5.1.1"},
			{Phase: prober.PhaseData},
			{Phase: prober.PhaseQuit, Ran: true, Duration: ms(1), Code: 221},
		},
		Extensions:         map[prober.Phase][]string{prober.PhaseEHLO: {"SIZE"}},
		SizeLimit:          0,
		RecipientsAccepted: 1,
		Failure:            &prober.Failure{Phase: prober.PhaseRcpt, Reason: prober.ReasonRecipientRejected},
	}
}

// compareGolden checks the collector's exposition against testdata/name,
// a text/template filled with the values that depend on generated
// certificates.
func compareGolden(t *testing.T, c prometheus.Collector, name string, data any) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *updateGolden {
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(c)
		got, err := exposition(reg)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s: review it, then replace generated values by template fields", path)
		return
	}
	tmpl, err := template.ParseFiles(path)
	if err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	if err := tmpl.Execute(&want, data); err != nil {
		t.Fatal(err)
	}
	if err := testutil.CollectAndCompare(c, &want); err != nil {
		t.Error(err)
	}
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", err, problems)
	}
}

func TestCollectorGolden(t *testing.T) {
	fix := newTLSFixture(t)
	certData := map[string]string{"Fingerprint": fix.fingerprint()}
	t.Run("starttls auth success", func(t *testing.T) {
		compareGolden(t, New(successResult(fix), 9500*time.Millisecond), "success_starttls_auth.prom", certData)
	})
	t.Run("auth rejected 535 5.7.8", func(t *testing.T) {
		compareGolden(t, New(authFailedResult(fix), 9500*time.Millisecond), "failure_auth.prom", certData)
	})
	t.Run("dns failure before connect", func(t *testing.T) {
		compareGolden(t, New(dnsFailedResult(), 10*time.Second), "failure_dns.prom", nil)
	})
	t.Run("canary with a rejected recipient", func(t *testing.T) {
		compareGolden(t, New(canaryResult(), 5*time.Second), "failure_canary_rcpt.prom", nil)
	})
}

// TestTLSExpiries checks the two expiry metrics against the fixture's dates,
// independently of the golden files.
func TestTLSExpiries(t *testing.T) {
	fix := newTLSFixture(t)
	c := New(successResult(fix), time.Second)
	got := gatherValues(t, c)
	if v := got["probe_ssl_earliest_cert_expiry"]; v != float64(fix.interExpiry.Unix()) {
		t.Errorf("earliest expiry = %v, want the intermediate's %v", v, fix.interExpiry.Unix())
	}
	if v := got["probe_ssl_last_chain_expiry_timestamp_seconds"]; v != float64(fix.leafExpiry.Unix()) {
		t.Errorf("last chain expiry = %v, want the longer chain's (the leaf's) %v", v, fix.leafExpiry.Unix())
	}
}

// TestTLSWithoutVerifiedChains covers insecure_skip_verify: no verified
// chain, so no chain expiry, but the presented certificates still count.
func TestTLSWithoutVerifiedChains(t *testing.T) {
	fix := newTLSFixture(t)
	r := successResult(fix)
	r.TLS = &prober.TLSSession{Version: fix.session.Version, CipherSuite: fix.session.CipherSuite}
	got := gatherValues(t, New(r, time.Second))
	if _, ok := got["probe_ssl_last_chain_expiry_timestamp_seconds"]; ok {
		t.Error("chain expiry reported without a verified chain")
	}
	if _, ok := got["probe_ssl_earliest_cert_expiry"]; !ok {
		t.Error("earliest expiry missing")
	}
}

func TestIPProtocolAndHash(t *testing.T) {
	fnvOf := func(b []byte) float64 {
		h := fnv.New32a()
		h.Write(b)
		return float64(h.Sum32())
	}
	for _, tc := range []struct {
		ip       string
		protocol float64
		hash     float64
	}{
		{"127.0.0.1", 4, fnvOf([]byte{127, 0, 0, 1})},
		// A v4-mapped address is IPv4 on the wire, and hashes like it.
		{"::ffff:127.0.0.1", 4, fnvOf([]byte{127, 0, 0, 1})},
		{"::1", 6, fnvOf([]byte{15: 1})},
	} {
		r := dnsFailedResult()
		r.IP = netip.MustParseAddr(tc.ip)
		got := gatherValues(t, New(r, time.Second))
		if got["probe_ip_protocol"] != tc.protocol {
			t.Errorf("%s: protocol %v, want %v", tc.ip, got["probe_ip_protocol"], tc.protocol)
		}
		if got["probe_ip_addr_hash"] != tc.hash {
			t.Errorf("%s: hash %v, want %v", tc.ip, got["probe_ip_addr_hash"], tc.hash)
		}
	}
}

// TestHostileLabels feeds what a broken or hostile server could make a
// careless prober pass on: duplicates, invalid UTF-8, spaces, over-long
// keywords, a flood of extensions, malformed enhanced codes. The scrape must
// still gather cleanly with bounded series.
func TestHostileLabels(t *testing.T) {
	flood := make([]string, 0, 500)
	for i := range 500 {
		flood = append(flood, "X-EXT-"+strings.Repeat("A", i%10)+string(rune('A'+i%26))+string(rune('A'+i/26)))
	}
	r := successResult(nil)
	r.Phases = append(r.Phases,
		prober.PhaseResult{Phase: prober.PhaseAuth, Ran: true, Code: 535}, // duplicate phase
		prober.PhaseResult{Phase: "Weird Phase\xff", Ran: true, Code: 250, Enhanced: "5.7.8 bad"},
	)
	r.Extensions = map[prober.Phase][]string{
		prober.PhaseEHLO:    append([]string{"auth", "AUTH", "SIZE 100", "BAD\xffUTF8", strings.Repeat("L", 200), ""}, flood...),
		prober.PhaseEHLOTLS: {"<script>", "PIPELINING"},
	}
	r.AuthMechanisms = []string{"PLAIN", "plain", "PLAIN", "X OAUTH", "\x00"}
	r.AuthMechanism = "LOGIN\r\nX"
	c := New(r, time.Second)

	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather failed: %v", err)
	}
	count := map[string]int{}
	for _, mf := range mfs {
		count[mf.GetName()] = len(mf.GetMetric())
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if strings.ContainsAny(l.GetValue(), " <>\r\n\x00\xff") {
					t.Errorf("%s: unsafe label value %q", mf.GetName(), l.GetValue())
				}
			}
		}
	}
	if n := count["probe_smtp_extension_info"]; n > 2*maxKeywordsPerList || n == 0 {
		t.Errorf("extension series = %d, want between 1 and %d", n, 2*maxKeywordsPerList)
	}
	if n := count["probe_smtp_auth_mechanism_info"]; n != 1 {
		t.Errorf("mechanism series = %d, want 1 (PLAIN, deduplicated)", n)
	}
	if n := count["probe_smtp_auth_mechanism_used_info"]; n != 0 {
		t.Errorf("a mechanism with CRLF was reported as used")
	}
	if n := count["probe_smtp_enhanced_status_code_info"]; n != 3 {
		t.Errorf("enhanced code series = %d, want the 3 well-formed ones", n)
	}
}

// gatherValues returns the value of every unlabelled metric of c.
func gatherValues(t *testing.T, c prometheus.Collector) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) == 0 {
				out[mf.GetName()] = m.GetGauge().GetValue()
			}
		}
	}
	return out
}

// TestFailedVerificationReportsCertificate covers a STARTTLS handshake that
// failed on an expired certificate: no session, but the presented
// certificate's expiry (in the past) and identity are still reported.
func TestFailedVerificationReportsCertificate(t *testing.T) {
	expiredAt := time.Now().Add(-24 * time.Hour).Truncate(time.Second)
	ca := newTestCert(t, "Test Root A", 1, time.Now().Add(24*time.Hour), nil, nil)
	leaf := newTestCert(t, "mail.example.net", 7, expiredAt, []string{"mail.example.net"}, ca)

	r := dnsFailedResult()
	r.IP = netip.MustParseAddr("127.0.0.1")
	r.Phases[0] = prober.PhaseResult{Phase: prober.PhaseConnect, Ran: true, Duration: ms(1)}
	r.Phases[1] = prober.PhaseResult{Phase: prober.PhaseBanner, Ran: true, Duration: ms(1), Code: 220}
	r.Phases[2] = prober.PhaseResult{Phase: prober.PhaseEHLO, Ran: true, Duration: ms(1), Code: 250}
	r.Phases[3] = prober.PhaseResult{Phase: prober.PhaseStartTLS, Ran: true, Duration: ms(5), Code: 220}
	r.Certificates = []prober.Certificate{leaf.summary()}
	r.Failure = &prober.Failure{Phase: prober.PhaseStartTLS, Reason: prober.ReasonCertificate}

	c := New(r, time.Second)
	got := gatherValues(t, c)
	if v := got["probe_ssl_earliest_cert_expiry"]; v != float64(expiredAt.Unix()) {
		t.Errorf("earliest expiry = %v, want %v (in the past)", v, expiredAt.Unix())
	}
	if got["probe_smtp_tls"] != 0 {
		t.Error("a failed handshake counted as an encrypted session")
	}
	for _, absent := range []string{"probe_ssl_last_chain_expiry_timestamp_seconds", "probe_tls_version_info", "probe_tls_cipher_info"} {
		if n := testutil.CollectAndCount(c, absent); n != 0 {
			t.Errorf("%s reported without a session", absent)
		}
	}
	if n := testutil.CollectAndCount(c, "probe_ssl_last_chain_info"); n != 1 {
		t.Errorf("leaf info series = %d, want 1", n)
	}
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", err, problems)
	}
}
