package collector

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net/netip"
	"testing"
	"time"

	"github.com/smtp-exporter/smtp_exporter/prober"
)

// testCert is a certificate made in the test, with its key so that it can
// sign others.
type testCert struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// newTestCert makes a certificate valid until notAfter, signed by parent or
// self-signed when parent is nil.
func newTestCert(t *testing.T, cn string, serial int64, notAfter time.Time, dnsNames []string, parent *testCert) *testCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"Test"}},
		NotBefore:    notAfter.Add(-365 * 24 * time.Hour),
		NotAfter:     notAfter,
		DNSNames:     dnsNames,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	signer, signerKey := tmpl, key
	if parent == nil {
		tmpl.IsCA = true
		tmpl.BasicConstraintsValid = true
	} else {
		signer, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCert{cert: cert, key: key}
}

// summary is what a prober.Result keeps of the certificate: these test
// certificates are small enough for the prober's bounds to keep all of it.
func (c *testCert) summary() prober.Certificate {
	return certificateSummary(c.cert)
}

func certificateSummary(c *x509.Certificate) prober.Certificate {
	s := prober.Certificate{
		Fingerprint: sha256.Sum256(c.Raw),
		Subject:     c.Subject.String(),
		Issuer:      c.Issuer.String(),
		DNSNames:    c.DNSNames,
		Serial:      fmt.Sprintf("%x", c.SerialNumber.Bytes()),
		NotBefore:   c.NotBefore,
		NotAfter:    c.NotAfter,
	}
	for _, ip := range c.IPAddresses {
		addr, _ := netip.AddrFromSlice(ip)
		s.IPAddresses = append(s.IPAddresses, addr.Unmap())
	}
	return s
}
