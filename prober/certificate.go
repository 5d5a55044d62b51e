package prober

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Bounds on what a Result keeps of the certificates a server presented. A
// handshake may carry hundreds of KiB of names and subjects, and a Result is
// kept for the pages and for reuse, so it keeps a summary of bounded size.
const (
	// maxCertificates is how many presented certificates are kept, leaf
	// first. Real chains have two to four.
	maxCertificates = 10
	// maxCertificateTextLen bounds a subject, an issuer and a serial, and
	// the text of a verification error (which can list every name of the
	// certificate).
	maxCertificateTextLen = 1024
	// maxCertificateNames and maxCertificateNamesLen bound the names kept
	// of one certificate (DNS names, then addresses): at most so many, of
	// at most so many bytes together. The others are only counted.
	maxCertificateNames    = 100
	maxCertificateNamesLen = 1024
)

// TLSSession is what the probe learnt of the encrypted session.
type TLSSession struct {
	// Version and CipherSuite are the crypto/tls constants
	// (tls.VersionName and CipherName name them).
	Version     uint16
	CipherSuite uint16
	// ServerName is the name the client asked for (SNI), as crypto/tls
	// reports it.
	ServerName string
	// Verified is whether the presented chain led to a trusted root; with
	// verification turned off (insecure_skip_verify) it did not.
	Verified bool
	// LastChainExpiry is when the last of the verified chains stops being
	// valid: a chain expires with its earliest certificate, and the server
	// stays trusted while any chain does. Zero when nothing was verified.
	LastChainExpiry time.Time
}

// CipherName is the name of the session's cipher suite, as
// tls.CipherSuiteName gives it. That function builds the list of every
// suite on each call; a probe names its suite three times (transcript,
// metrics, result page).
func (s *TLSSession) CipherName() string {
	if name, ok := cipherSuiteNames[s.CipherSuite]; ok {
		return name
	}
	return tls.CipherSuiteName(s.CipherSuite)
}

// cipherSuiteNames names the suites crypto/tls knows.
var cipherSuiteNames = func() map[uint16]string {
	names := map[uint16]string{}
	for _, c := range append(tls.CipherSuites(), tls.InsecureCipherSuites()...) {
		names[c.ID] = c.Name
	}
	return names
}()

// Certificate is what a Result keeps of one certificate the server
// presented: its identity and validity, not the certificate itself.
type Certificate struct {
	// Fingerprint is the SHA-256 of the DER encoding.
	Fingerprint [sha256.Size]byte
	// Subject and Issuer are distinguished names in RFC 2253 form.
	Subject string
	Issuer  string
	// DNSNames and IPAddresses are the subject alternative names, in the
	// certificate's order, as many as the bounds allow.
	DNSNames    []string
	IPAddresses []netip.Addr
	// OmittedNames counts the names left out of DNSNames and IPAddresses.
	OmittedNames int
	// Serial is the serial number in lower-case hexadecimal, each byte as
	// two digits ("0abc"); "" when the certificate has none.
	Serial    string
	NotBefore time.Time
	NotAfter  time.Time
}

// summarizeTLS keeps of a handshake what the metrics and pages need. state
// is nil when there is no session (verification failed); presented is the
// chain the server sent, leaf first, verified or not. Nothing it returns
// refers to the certificates, so they can be freed.
func summarizeTLS(state *tls.ConnectionState, presented []*x509.Certificate) (*TLSSession, []Certificate) {
	var session *TLSSession
	if state != nil {
		session = &TLSSession{
			Version:         state.Version,
			CipherSuite:     state.CipherSuite,
			ServerName:      boundText(state.ServerName),
			Verified:        len(state.VerifiedChains) > 0,
			LastChainExpiry: lastChainExpiry(state.VerifiedChains),
		}
	}
	var certs []Certificate
	for _, c := range presented {
		if len(certs) == maxCertificates {
			break
		}
		if c != nil {
			certs = append(certs, summarizeCertificate(c))
		}
	}
	return session, certs
}

func summarizeCertificate(c *x509.Certificate) Certificate {
	s := Certificate{
		Fingerprint: sha256.Sum256(c.Raw),
		Subject:     boundText(c.Subject.String()),
		Issuer:      boundText(c.Issuer.String()),
		NotBefore:   c.NotBefore,
		NotAfter:    c.NotAfter,
	}
	if c.SerialNumber != nil {
		s.Serial = boundText(fmt.Sprintf("%x", c.SerialNumber.Bytes()))
	}
	// Names are counted as the pages show them: joined by ", ".
	size := 0
	fits := func(name string) bool {
		if len(s.DNSNames)+len(s.IPAddresses) == maxCertificateNames || size+len(name) > maxCertificateNamesLen {
			return false
		}
		size += len(name) + len(", ")
		return true
	}
	for _, name := range c.DNSNames {
		if s.OmittedNames > 0 || !fits(name) {
			s.OmittedNames++
			continue
		}
		s.DNSNames = append(s.DNSNames, strings.Clone(name))
	}
	for _, ip := range c.IPAddresses {
		addr, ok := netip.AddrFromSlice(ip)
		if s.OmittedNames > 0 || !ok || !fits(addr.Unmap().String()) {
			s.OmittedNames++
			continue
		}
		s.IPAddresses = append(s.IPAddresses, addr.Unmap())
	}
	return s
}

// lastChainExpiry returns the latest of the chains' expiries, each chain
// expiring with its earliest certificate; zero without chains.
func lastChainExpiry(chains [][]*x509.Certificate) time.Time {
	var last time.Time
	for _, chain := range chains {
		var earliest time.Time
		for _, c := range chain {
			if c == nil || c.NotAfter.IsZero() {
				continue
			}
			if earliest.IsZero() || c.NotAfter.Before(earliest) {
				earliest = c.NotAfter
			}
		}
		if earliest.After(last) {
			last = earliest
		}
	}
	return last
}

// boundText returns s cut to maxCertificateTextLen bytes on a character
// boundary, in memory of its own: a cut string must not keep the long one
// it came from alive.
func boundText(s string) string {
	if len(s) <= maxCertificateTextLen {
		return strings.Clone(s)
	}
	return strings.Clone(s[:cutAt(s, maxCertificateTextLen)])
}

// certificateError is a failed verification as text: the errors of
// crypto/x509 hold the certificate they are about, and their text can list
// every name in it.
type certificateError string

func (e certificateError) Error() string { return string(e) }
