package prober

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

// newTestCertificate signs tmpl with parent, or self-signs it as a CA when
// parent is nil.
func newTestCertificate(t testing.TB, tmpl *x509.Certificate, parent *smtptest.Issuer) *smtptest.Issuer {
	t.Helper()
	c, err := smtptest.NewCertificate(tmpl, parent)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// paddingNames are enough DNS names to make a certificate of about 200
// KiB: a server that presents such a certificate at every probe must not
// make each stored Result that large.
func paddingNames() []string {
	names := make([]string, 6500)
	for i := range names {
		names[i] = fmt.Sprintf("host-%05d.padding.example.net", i)
	}
	return names
}

// largeServerCertificate is a certificate of about 200 KiB for 127.0.0.1,
// signed by a CA of its own, and the CA as a ca_file.
func largeServerCertificate(t testing.TB) (tls.Certificate, string) {
	t.Helper()
	ca := newTestCertificate(t, &x509.Certificate{Subject: pkix.Name{CommonName: "large certificate CA"}}, nil)
	leaf := newTestCertificate(t, &x509.Certificate{
		SerialNumber: big.NewInt(0x0abc),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     append([]string{"localhost"}, paddingNames()...),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}, ca)
	if n := len(leaf.Cert.Raw); n < 190<<10 {
		t.Fatalf("padded certificate is only %d bytes", n)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, ca.PEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	return leaf.TLS(ca), caFile
}

// TestSummarizeTLS checks each value against the certificates it came
// from, and the last chain expiry against two chains that end at different
// times.
func TestSummarizeTLS(t *testing.T) {
	rootA := newTestCertificate(t, &x509.Certificate{Subject: pkix.Name{CommonName: "Root A"}, NotAfter: time.Date(2040, 1, 1, 0, 0, 0, 0, time.UTC)}, nil)
	rootB := newTestCertificate(t, &x509.Certificate{Subject: pkix.Name{CommonName: "Root B"}, NotAfter: time.Date(2041, 1, 1, 0, 0, 0, 0, time.UTC)}, nil)
	interA := newTestCertificate(t, &x509.Certificate{Subject: pkix.Name{CommonName: "Intermediate A"}, NotAfter: time.Date(2029, 1, 15, 12, 0, 0, 0, time.UTC)}, rootA)
	interB := newTestCertificate(t, &x509.Certificate{Subject: pkix.Name{CommonName: "Intermediate B"}, NotAfter: time.Date(2035, 1, 1, 0, 0, 0, 0, time.UTC)}, rootB)
	leafExpiry := time.Date(2030, 6, 1, 0, 0, 0, 0, time.UTC)
	leaf := newTestCertificate(t, &x509.Certificate{
		SerialNumber: big.NewInt(0x0abc),
		Subject:      pkix.Name{CommonName: "mail.example.net", Organization: []string{"Test"}},
		NotBefore:    time.Date(2029, 6, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:     leafExpiry,
		DNSNames:     []string{"mail.example.net", "smtp.example.net"},
		IPAddresses:  []net.IP{net.ParseIP("192.0.2.25"), net.ParseIP("2001:db8::25")},
	}, interA)

	state := &tls.ConnectionState{
		Version:          tls.VersionTLS13,
		CipherSuite:      tls.TLS_AES_128_GCM_SHA256,
		ServerName:       "mail.example.net",
		PeerCertificates: []*x509.Certificate{leaf.Cert, nil, interA.Cert},
		VerifiedChains: [][]*x509.Certificate{
			{leaf.Cert, interA.Cert, rootA.Cert},
			{leaf.Cert, interB.Cert, rootB.Cert},
		},
	}
	session, certs := summarizeTLS(state, state.PeerCertificates)
	want := &TLSSession{
		Version: tls.VersionTLS13, CipherSuite: tls.TLS_AES_128_GCM_SHA256, ServerName: "mail.example.net", Verified: true,
		// Chain A ends with its intermediate in 2029, chain B with the
		// leaf in 2030: the server stays trusted until the later.
		LastChainExpiry: leafExpiry,
	}
	if !reflect.DeepEqual(session, want) {
		t.Errorf("session = %+v, want %+v", session, want)
	}
	if len(certs) != 2 {
		t.Fatalf("%d certificates kept, want the leaf and the intermediate (nil skipped)", len(certs))
	}
	wantLeaf := Certificate{
		Fingerprint: sha256.Sum256(leaf.Cert.Raw),
		Subject:     "CN=mail.example.net,O=Test",
		Issuer:      "CN=Intermediate A",
		DNSNames:    []string{"mail.example.net", "smtp.example.net"},
		IPAddresses: []netip.Addr{netip.MustParseAddr("192.0.2.25"), netip.MustParseAddr("2001:db8::25")},
		Serial:      "0abc",
		NotBefore:   leaf.Cert.NotBefore,
		NotAfter:    leafExpiry,
	}
	if !reflect.DeepEqual(certs[0], wantLeaf) {
		t.Errorf("leaf = %+v\nwant %+v", certs[0], wantLeaf)
	}
	if certs[1].Subject != "CN=Intermediate A" || certs[1].Fingerprint != sha256.Sum256(interA.Cert.Raw) {
		t.Errorf("intermediate = %+v", certs[1])
	}

	// Verification skipped: a session, the certificates, no chain.
	state.VerifiedChains = nil
	if session, _ := summarizeTLS(state, state.PeerCertificates); session.Verified || !session.LastChainExpiry.IsZero() {
		t.Errorf("unverified session = %+v", session)
	}
	// Verification failed: no session, the certificates still.
	if session, certs := summarizeTLS(nil, []*x509.Certificate{leaf.Cert}); session != nil || len(certs) != 1 {
		t.Errorf("failed verification: session %v, %d certificates", session, len(certs))
	}
}

// TestSummarizeTLSBounds covers a hostile certificate: a subject of 10 KiB,
// thousands of names, a chain of 30 certificates.
func TestSummarizeTLSBounds(t *testing.T) {
	long := strings.Repeat("€", 4000) // three bytes each: a cut must not split one
	ca := newTestCertificate(t, &x509.Certificate{Subject: pkix.Name{CommonName: "CA", Organization: []string{long}}}, nil)
	names := append([]string{strings.Repeat("x", 60) + ".example.net"}, paddingNames()[:2000]...)
	leaf := newTestCertificate(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "localhost", OrganizationalUnit: []string{long}},
		DNSNames:    names,
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}, ca)
	chain := []*x509.Certificate{leaf.Cert}
	for range 29 {
		chain = append(chain, ca.Cert)
	}
	_, certs := summarizeTLS(nil, chain)
	if len(certs) != maxCertificates {
		t.Errorf("%d certificates kept, want %d", len(certs), maxCertificates)
	}
	c := certs[0]
	for _, s := range []string{c.Subject, c.Issuer} {
		if len(s) > maxCertificateTextLen || len(s) < maxCertificateTextLen-3 || !strings.HasPrefix(s, "CN=") || !utf8.ValidString(s) {
			t.Errorf("text of %d bytes, starting %.20q, not cut cleanly to %d", len(s), s, maxCertificateTextLen)
		}
	}
	joined := strings.Join(c.DNSNames, ", ")
	if len(joined) > maxCertificateNamesLen || len(c.DNSNames) == 0 || c.DNSNames[0] != names[0] {
		t.Errorf("names kept: %d of %d bytes, starting %v", len(c.DNSNames), len(joined), c.DNSNames[:min(1, len(c.DNSNames))])
	}
	if kept := len(c.DNSNames) + len(c.IPAddresses); kept+c.OmittedNames != len(names)+1 {
		t.Errorf("%d names kept and %d omitted, of %d", kept, c.OmittedNames, len(names)+1)
	}
	// Names stay in the certificate's order: the address comes after the
	// DNS names, and with them left out, it is left out too.
	if len(c.IPAddresses) != 0 {
		t.Errorf("address kept after omitted DNS names: %v", c.IPAddresses)
	}
}

// TestLargeCertificateLeavesSmallResult probes servers that present a
// certificate of about 200 KiB, verified or not, and checks that the Result
// keeps none of it: no certificate or TLS state, no string or byte slice
// beyond a KiB, a few KiB in all.
func TestLargeCertificateLeavesSmallResult(t *testing.T) {
	t.Parallel()
	cert, caFile := largeServerCertificate(t)
	for _, tc := range []struct {
		name       string
		serverName string
		otherCA    bool
		reason     Reason
	}{
		{name: "verified"},
		// The verification error lists every name of the certificate.
		{name: "wrong name", serverName: "mx.other.invalid", reason: ReasonCertificate},
		{name: "untrusted", otherCA: true, reason: ReasonCertificate},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ca := caFile
			if tc.otherCA {
				ca = smtptest.Certs().WriteCAFile(t)
			}
			srv := smtptest.NewServer(t, smtptest.Options{TLS: smtptest.ImplicitTLS, Cert: &cert, NoAuth: true})
			r, log := runProbe(t, target(srv), loadModule(t, moduleSpec{TLS: "implicit", CAFile: ca, ServerName: tc.serverName}))
			if tc.reason == "" {
				requireSuccess(t, r, log)
			} else {
				requireFailure(t, r, PhaseTLS, tc.reason)
			}
			if len(r.Certificates) != 2 || r.Certificates[0].Fingerprint != sha256.Sum256(cert.Certificate[0]) {
				t.Fatalf("presented certificates not summarized: %d", len(r.Certificates))
			}
			if r.Certificates[0].OmittedNames == 0 {
				t.Error("every name of the padded certificate kept")
			}
			size := retainedSize(t, "Result", reflect.ValueOf(r))
			t.Logf("Result retains about %d bytes", size)
			if size > 8<<10 {
				t.Errorf("Result retains about %d bytes, want at most 8 KiB", size)
			}
		})
	}
}

var (
	x509CertificateType    = reflect.TypeFor[x509.Certificate]()
	tlsConnectionStateType = reflect.TypeFor[tls.ConnectionState]()
	timeType               = reflect.TypeFor[time.Time]()
)

// retainedSize walks v and returns about how many bytes it keeps reachable,
// failing the test on a certificate, a TLS state, or a string or byte slice
// longer than maxCertificateTextLen.
func retainedSize(t *testing.T, path string, v reflect.Value) int {
	t.Helper()
	size := 0
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			return 0
		}
		return int(v.Type().Elem().Size()) + retainedSize(t, path, v.Elem())
	case reflect.Interface:
		if v.IsNil() {
			return 0
		}
		e := v.Elem()
		if e.Kind() != reflect.Pointer {
			size += int(e.Type().Size())
		}
		return size + retainedSize(t, path+"("+e.Type().String()+")", e)
	case reflect.Struct:
		if v.Type() == timeType {
			return 0 // its location is shared, not kept per Result
		}
		if v.Type() == x509CertificateType || v.Type() == tlsConnectionStateType {
			t.Errorf("%s holds a %s", path, v.Type())
			return 0
		}
		for i := range v.NumField() {
			size += retainedSize(t, path+"."+v.Type().Field(i).Name, v.Field(i))
		}
	case reflect.Slice:
		if v.Type().Elem().Kind() == reflect.Uint8 && v.Len() > maxCertificateTextLen {
			t.Errorf("%s is %d bytes", path, v.Len())
		}
		size += v.Cap() * int(v.Type().Elem().Size())
		fallthrough
	case reflect.Array:
		for i := range v.Len() {
			size += retainedSize(t, fmt.Sprintf("%s[%d]", path, i), v.Index(i))
		}
	case reflect.Map:
		iter := v.MapRange()
		for iter.Next() {
			size += int(iter.Key().Type().Size()+iter.Value().Type().Size()) +
				retainedSize(t, path+"[key]", iter.Key()) + retainedSize(t, path+"[value]", iter.Value())
		}
	case reflect.String:
		if v.Len() > maxCertificateTextLen {
			t.Errorf("%s is %d bytes", path, v.Len())
		}
		size += v.Len()
	}
	return size
}

// BenchmarkResultRetained keeps, at each iteration, the Result of a freshly
// parsed certificate of about 200 KiB (as a server presenting a new one at
// every probe gives) and reports the heap each kept Result costs.
func BenchmarkResultRetained(b *testing.B) {
	cert, _ := largeServerCertificate(b)
	ca, err := x509.ParseCertificate(cert.Certificate[1])
	if err != nil {
		b.Fatal(err)
	}
	results := make([]*Result, 0, b.N)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	for range b.N {
		leaf, err := x509.ParseCertificate(cert.Certificate[0])
		if err != nil {
			b.Fatal(err)
		}
		state := tls.ConnectionState{
			Version:          tls.VersionTLS13,
			CipherSuite:      tls.TLS_AES_128_GCM_SHA256,
			ServerName:       "localhost",
			PeerCertificates: []*x509.Certificate{leaf, ca},
			VerifiedChains:   [][]*x509.Certificate{{leaf, ca}},
		}
		r := &Result{Success: true}
		r.TLS, r.Certificates = summarizeTLS(&state, state.PeerCertificates)
		results = append(results, r)
	}
	b.StopTimer()
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/float64(b.N), "heap-B/result")
	runtime.KeepAlive(results)
}

// CipherName names every suite as tls.CipherSuiteName does, an unknown
// one included.
func TestCipherNameIsCryptoTLSName(t *testing.T) {
	ids := []uint16{0x0000, 0xfefe}
	for _, c := range append(tls.CipherSuites(), tls.InsecureCipherSuites()...) {
		ids = append(ids, c.ID)
	}
	for _, id := range ids {
		if got, want := (&TLSSession{CipherSuite: id}).CipherName(), tls.CipherSuiteName(id); got != want {
			t.Errorf("suite %#04x: %q, want %q", id, got, want)
		}
	}
}
