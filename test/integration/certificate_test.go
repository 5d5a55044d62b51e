package integration

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"testing"
	"time"
)

const moduleExpired = "cert_expired"

func certificateModules(l *Lab, _ string) (map[string]moduleSpec, error) {
	return map[string]moduleSpec{
		moduleExpired: {TLS: "implicit", Port: l.PortExpired, Mechanism: "PLAIN"},
	}, nil
}

// checkPresentedCert checks the metrics about the certificate the server
// presented against the PEM file the lab serves.
func checkPresentedCert(t *testing.T, m Metrics, cert *x509.Certificate) {
	t.Helper()
	m.Expect(t, "probe_ssl_earliest_cert_expiry", nil, float64(cert.NotAfter.Unix()))
	fingerprint := sha256.Sum256(cert.Raw)
	infos := m.Labels("probe_ssl_last_chain_info")
	if len(infos) != 1 {
		t.Errorf("probe_ssl_last_chain_info: %v, want one series", infos)
		return
	}
	want := map[string]string{
		"fingerprint_sha256": hex.EncodeToString(fingerprint[:]),
		"subject":            cert.Subject.String(),
		"issuer":             cert.Issuer.String(),
		"serialnumber":       fmt.Sprintf("%x", cert.SerialNumber.Bytes()),
	}
	for k, v := range want {
		if infos[0][k] != v {
			t.Errorf("probe_ssl_last_chain_info %s = %q, want %q (from the lab's PEM file)", k, infos[0][k], v)
		}
	}
}

// The port with the certificate that expired in 2020 fails the TLS
// handshake with reason certificate, and the expiry of the certificate it
// presented is reported all the same.
func TestExpiredCertificate(t *testing.T) {
	t.Parallel()
	l, e := sharedExporter(t)
	expired := readCert(t, l.ExpiredCert)
	if !expired.NotAfter.Before(time.Now()) {
		t.Fatalf("LAB_EXPIRED_CERT is valid until %v; the lab should serve an expired certificate", expired.NotAfter)
	}

	m := e.probe(t, moduleExpired, l.Target(l.PortExpired))
	m.Expect(t, "probe_success", nil, 0)
	m.ExpectLabelValues(t, "probe_smtp_failure_info", "reason", nil, "certificate")
	m.Expect(t, "probe_smtp_failure_info", lbl("phase", "tls", "reason", "certificate"), 1)
	checkPresentedCert(t, m, expired)
	if v, ok := m.Value("probe_ssl_earliest_cert_expiry", nil); ok && v >= float64(time.Now().Unix()) {
		t.Errorf("probe_ssl_earliest_cert_expiry %v is not in the past", v)
	}
	// No session, so nothing about one; nothing said in clear either.
	m.Expect(t, "probe_smtp_tls", nil, 0)
	m.ExpectAbsent(t, "probe_tls_version_info")
	m.ExpectAbsent(t, "probe_ssl_last_chain_expiry_timestamp_seconds")
	m.Expect(t, "probe_smtp_auth_success", nil, 0)
	for _, phase := range []string{"banner", "ehlo", "auth", "quit"} {
		m.Expect(t, "probe_smtp_status_code", lbl("phase", phase), 0)
		m.Expect(t, "probe_smtp_duration_seconds", lbl("phase", phase), 0)
	}
	if d := m.MustValue(t, "probe_smtp_duration_seconds", lbl("phase", "tls")); d <= 0 {
		t.Errorf("tls phase duration %v, want > 0: the handshake ran", d)
	}
}
