package smtptest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// CertSet holds certificates made in-process for TLS tests: a CA, and
// server certificates that are good, expired, issued for the wrong name, or
// issued by a CA nobody trusts.
type CertSet struct {
	// CA is the test authority that signs Server, Expired and WrongName.
	CA *x509.Certificate
	// CAPEM is CA in PEM form, as tls_config.ca_file expects it.
	CAPEM []byte
	// Pool trusts CA alone.
	Pool *x509.CertPool

	// Server is valid now for localhost, 127.0.0.1 and ::1.
	Server tls.Certificate
	// Expired has the same names as Server but ran out a day ago.
	Expired tls.Certificate
	// WrongName is valid now but only for wrong-name.invalid.
	WrongName tls.Certificate
	// Untrusted has Server's names but is signed by a CA that is not CA.
	Untrusted tls.Certificate
}

// LoopbackNames are the names and addresses the good certificates cover.
var LoopbackNames = []string{"localhost", "127.0.0.1", "::1"}

var (
	certsOnce sync.Once
	certs     *CertSet
	certsErr  error
)

// Certs returns the process-wide test certificates, made on first use.
// Generation takes a few milliseconds (ECDSA P-256), so every test shares
// one set.
func Certs() *CertSet {
	certsOnce.Do(func() { certs, certsErr = newCertSet() })
	if certsErr != nil {
		panic(fmt.Sprintf("smtptest: making test certificates: %v", certsErr))
	}
	return certs
}

// WriteCAFile writes the CA certificate to a PEM file in a test temp
// directory and returns its path, for tls_config.ca_file.
func (c *CertSet) WriteCAFile(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(path, c.CAPEM, 0o600); err != nil {
		t.Fatalf("writing CA file: %v", err)
	}
	return path
}

// Issuer is a certificate made in-process with its key, so that it can
// sign others.
type Issuer struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// NewCertificate signs tmpl with parent, or self-signs it as a CA when
// parent is nil, with a new P-256 key. An unset serial number is random, and
// an unset validity runs from an hour ago to a day ahead. For tests that
// need a certificate of their own (a large one, a new one at every
// handshake, a chain with chosen dates); Certs covers the common cases.
func NewCertificate(tmpl *x509.Certificate, parent *Issuer) (*Issuer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	if tmpl.SerialNumber == nil {
		tmpl.SerialNumber = randomSerial()
	}
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = time.Now().Add(-time.Hour)
	}
	if tmpl.NotAfter.IsZero() {
		tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	}
	signer, signerKey := tmpl, key
	if parent == nil {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	} else {
		signer, signerKey = parent.Cert, parent.Key
		tmpl.KeyUsage |= x509.KeyUsageDigitalSignature
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &Issuer{Cert: cert, Key: key}, nil
}

// TLS is the certificate with its key, as a server presents it, followed
// by chain.
func (c *Issuer) TLS(chain ...*Issuer) tls.Certificate {
	out := tls.Certificate{Certificate: [][]byte{c.Cert.Raw}, PrivateKey: c.Key, Leaf: c.Cert}
	for _, ca := range chain {
		out.Certificate = append(out.Certificate, ca.Cert.Raw)
	}
	return out
}

// PEM is the certificate in PEM form, as tls_config.ca_file expects it.
func (c *Issuer) PEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Cert.Raw})
}

func newCertSet() (*CertSet, error) {
	now := time.Now()
	ca, err := newCA("smtptest CA", now)
	if err != nil {
		return nil, err
	}
	rogue, err := newCA("smtptest untrusted CA", now)
	if err != nil {
		return nil, err
	}
	set := &CertSet{
		CA:    ca.Cert,
		CAPEM: ca.PEM(),
		Pool:  x509.NewCertPool(),
	}
	set.Pool.AddCert(ca.Cert)

	day := 24 * time.Hour
	if set.Server, err = newLeaf(ca, "localhost", LoopbackNames, now.Add(-day), now.Add(365*day)); err != nil {
		return nil, err
	}
	if set.Expired, err = newLeaf(ca, "localhost", LoopbackNames, now.Add(-30*day), now.Add(-day)); err != nil {
		return nil, err
	}
	if set.WrongName, err = newLeaf(ca, "wrong-name.invalid", []string{"wrong-name.invalid"}, now.Add(-day), now.Add(365*day)); err != nil {
		return nil, err
	}
	if set.Untrusted, err = newLeaf(rogue, "localhost", LoopbackNames, now.Add(-day), now.Add(365*day)); err != nil {
		return nil, err
	}
	return set, nil
}

func newCA(name string, now time.Time) (*Issuer, error) {
	return NewCertificate(&x509.Certificate{
		Subject:   pkix.Name{CommonName: name, Organization: []string{"smtp_exporter tests"}},
		NotBefore: now.Add(-48 * time.Hour),
		NotAfter:  now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:  x509.KeyUsageCRLSign,
	}, nil)
}

func newLeaf(ca *Issuer, cn string, names []string, notBefore, notAfter time.Time) (tls.Certificate, error) {
	tmpl := &x509.Certificate{
		Subject:   pkix.Name{CommonName: cn, Organization: []string{"smtp_exporter tests"}},
		NotBefore: notBefore,
		NotAfter:  notAfter,
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	leaf, err := NewCertificate(tmpl, ca)
	if err != nil {
		return tls.Certificate{}, err
	}
	return leaf.TLS(ca), nil
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		// crypto/rand does not fail on supported platforms.
		panic(err)
	}
	return n
}
