//go:build unix

package prober

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	promconfig "github.com/prometheus/common/config"

	"github.com/smtp-exporter/smtp_exporter/config"
	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

func TestTLSConfigCachedUntilTheCAFileChanges(t *testing.T) {
	certs := smtptest.Certs()
	otherCA := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certs.Untrusted.Certificate[1]})
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	writeCA := func(pem []byte) {
		t.Helper()
		if err := os.WriteFile(caFile, pem, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeCA(certs.CAPEM)
	tc := &promconfig.TLSConfig{CAFile: caFile}

	first, second := twoTLSConfigs(t, tc)
	if first.RootCAs == nil || first.RootCAs != second.RootCAs {
		t.Error("the CA pool was built again for an unchanged CA file")
	}

	// A probe of a server whose certificate only the other CA signed fails,
	// then passes once the file names that CA, then fails again.
	srv := smtptest.NewServer(t, smtptest.Options{TLS: smtptest.StartTLS, Cert: &certs.Untrusted})
	m := loadModule(t, moduleSpec{TLS: "starttls", CAFile: caFile})
	r, _ := runProbe(t, srv.Addr(), m)
	requireFailure(t, r, PhaseStartTLS, ReasonCertificate)
	writeCA(otherCA)
	r, log := runProbe(t, srv.Addr(), m)
	requireSuccess(t, r, log)
	writeCA(certs.CAPEM)
	r, _ = runProbe(t, srv.Addr(), m)
	requireFailure(t, r, PhaseStartTLS, ReasonCertificate)
}

// A CA file modified long ago is stated, not read, at each probe; another
// file renamed over it, as a rotation does, is seen at the next probe even
// with the old modification time.
func TestTLSConfigSeesACAFileRenamedOverTheOld(t *testing.T) {
	certs := smtptest.Certs()
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	old := time.Now().Add(-time.Hour)
	write := func(path string, pem []byte) {
		t.Helper()
		if err := os.WriteFile(path, pem, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, old, old); err != nil {
			t.Fatal(err)
		}
	}
	write(caFile, certs.CAPEM)
	tc := &promconfig.TLSConfig{CAFile: caFile}
	cache := &tlsConfigCache{entries: map[promconfig.TLSConfig]cachedTLSConfig{}}
	pool := func() *x509.CertPool {
		t.Helper()
		cfg, err := cache.get(tc)
		if err != nil {
			t.Fatal(err)
		}
		return cfg.RootCAs
	}
	first := pool()
	if pool() != first {
		t.Fatal("the CA pool was built again for an unchanged CA file")
	}
	next := filepath.Join(dir, "ca.pem.new")
	write(next, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certs.Untrusted.Certificate[1]}))
	if err := os.Rename(next, caFile); err != nil {
		t.Fatal(err)
	}
	if pool() == first {
		t.Fatal("a CA file renamed over the old one was not read again")
	}
}

// The files of a tls_config are read by config.ReadFile, and promconfig
// only sees their content: errors name the file as the configuration does.
func TestTLSConfigErrorsNameTheFile(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	certFile, keyFile := writeClientCert(t)
	for name, tc := range map[string]struct {
		cfg  promconfig.TLSConfig
		want string
	}{
		"missing file":     {promconfig.TLSConfig{CAFile: missing}, "ca_file " + missing + ": no such file or directory"},
		"not a PEM":        {promconfig.TLSConfig{CAFile: garbage}, "ca_file " + garbage + ": no PEM certificate in it"},
		"both ca and file": {promconfig.TLSConfig{CA: string(smtptest.Certs().CAPEM), CAFile: garbage}, "at most one of ca, ca_file & ca_ref must be configured"},
		"client key only":  {promconfig.TLSConfig{KeyFile: garbage}, "exactly one of cert or cert_file must be configured when a client key is configured"},
		"cert not a PEM": {promconfig.TLSConfig{CertFile: garbage, KeyFile: keyFile},
			"client certificate (cert_file " + garbage + ") and key (key_file " + keyFile + "): tls: failed to find any PEM data in certificate input"},
		"missing key": {promconfig.TLSConfig{CertFile: certFile, KeyFile: missing}, "key_file " + missing + ": no such file or directory"},
		"inline key bad": {promconfig.TLSConfig{CertFile: certFile, Key: "garbage"},
			"client certificate (cert_file " + certFile + ") and key (key): tls: failed to find any PEM data in key input"},
	} {
		_, err := tlsConfigs.get(&tc.cfg)
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s: error %v, want %s", name, err, tc.want)
		}
	}
}

// writeClientCert writes a client certificate and its key, as cert_file
// and key_file expect them, and returns their paths.
func writeClientCert(t testing.TB) (certFile, keyFile string) {
	t.Helper()
	cert := smtptest.Certs().Server
	key, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// twoTLSConfigs gets the configuration of tc for two probes, and checks
// that they are not the same *tls.Config: each sets its own ServerName.
func twoTLSConfigs(t *testing.T, tc *promconfig.TLSConfig) (first, second *tls.Config) {
	t.Helper()
	first, err := tlsConfigs.get(tc)
	if err != nil {
		t.Fatal(err)
	}
	second, err = tlsConfigs.get(tc)
	if err != nil {
		t.Fatal(err)
	}
	if first == second {
		t.Fatal("two probes got the same *tls.Config: each sets its own ServerName")
	}
	return first, second
}

// A client certificate is read with the other files at every probe, and
// the configuration rebuilt when it changed; a handshake reads no file.
func TestTLSConfigClientCertificate(t *testing.T) {
	certFile, keyFile := writeClientCert(t)
	tc := &promconfig.TLSConfig{CertFile: certFile, KeyFile: keyFile}
	first, second := twoTLSConfigs(t, tc)
	got, err := first.GetClientCertificate(&tls.CertificateRequestInfo{})
	if err != nil || len(got.Certificate) == 0 || !bytes.Equal(got.Certificate[0], smtptest.Certs().Server.Certificate[0]) {
		t.Fatalf("GetClientCertificate: %v", err)
	}

	// Once the files are gone, the configuration built keeps its
	// certificate, and a new one fails with the file's error.
	if err := os.Remove(certFile); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(certFile, 0o600); err != nil {
		t.Skipf("cannot make a named pipe: %v", err)
	}
	t.Cleanup(func() { releaseFIFO(certFile) })
	done := make(chan error, 1)
	go func() {
		_, err := second.GetClientCertificate(&tls.CertificateRequestInfo{})
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("GetClientCertificate after the file changed: %v", err)
		}
	case <-time.After(fileBound):
		t.Fatal("GetClientCertificate read the certificate file again, and hung on a named pipe")
	}
	if _, err := tlsConfigs.get(tc); !errors.Is(err, config.ErrNotRegularFile) {
		t.Errorf("cert_file a named pipe: error %v, want %v", err, config.ErrNotRegularFile)
	}
}

func TestTLSConfigCacheConcurrentUse(t *testing.T) {
	caFile := smtptest.Certs().WriteCAFile(t)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				tc := &promconfig.TLSConfig{CAFile: caFile, ServerName: string(rune('a' + i))}
				cfg, err := tlsConfigs.get(tc)
				if err != nil || cfg.ServerName != tc.ServerName {
					t.Errorf("get: %v, server name %q", err, cfg.ServerName)
					return
				}
				cfg.ServerName = "changed by a probe"
			}
		}()
	}
	wg.Wait()
}
