package prober

import (
	"encoding/pem"
	"os"
	"path/filepath"
	"sync"
	"testing"

	promconfig "github.com/prometheus/common/config"

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

	first, err := tlsConfigs.get(tc)
	if err != nil {
		t.Fatal(err)
	}
	second, err := tlsConfigs.get(tc)
	if err != nil {
		t.Fatal(err)
	}
	if first == second {
		t.Fatal("two probes got the same *tls.Config: each sets its own ServerName")
	}
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

func TestTLSConfigErrorsAreTheUncachedOnes(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]promconfig.TLSConfig{
		"missing file":     {CAFile: filepath.Join(dir, "missing.pem")},
		"not a PEM":        {CAFile: garbage},
		"both ca and file": {CA: string(smtptest.Certs().CAPEM), CAFile: garbage},
		"client key only":  {KeyFile: garbage},
	} {
		_, want := promconfig.NewTLSConfig(&tc)
		_, got := tlsConfigs.get(&tc)
		if want == nil || got == nil || got.Error() != want.Error() {
			t.Errorf("%s: error %v, promconfig says %v", name, got, want)
		}
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
