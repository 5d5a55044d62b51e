package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

// With --web.config.file, exporter-toolkit serves every endpoint over TLS
// and behind basic auth: a request without the right credentials gets 401
// whatever it asks for, probes and reloads included.
func TestWebConfigTLSAndBasicAuth(t *testing.T) {
	const user, password = "prometheus", "web-Passw0rd-for-tests"
	dir := t.TempDir()
	certs := smtptest.Certs()
	key, err := x509.MarshalPKCS8PrivateKey(certs.Server.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	var chain []byte
	for _, der := range certs.Server.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "cert.pem"), string(chain))
	writeFile(t, filepath.Join(dir, "key.pem"), string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key})))
	writeFile(t, filepath.Join(dir, "web-config.yml"), `tls_server_config:
  cert_file: `+filepath.Join(dir, "cert.pem")+`
  key_file: `+filepath.Join(dir, "key.pem")+`
basic_auth_users:
  `+user+`: `+string(hash)+`
`)
	writeFile(t, filepath.Join(dir, "smtp_exporter.yml"), "modules:\n  m:\n    timeout: 2s\n    smtp:\n      tls: none\n")

	addr, _ := startExporter(t, filepath.Join(dir, "smtp_exporter.yml"),
		"--web.config.file="+filepath.Join(dir, "web-config.yml"))

	client := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: certs.Pool, ServerName: "localhost"}},
	}
	base := "https://" + addr
	do := func(method, path, user, password string) (int, http.Header) {
		t.Helper()
		req, err := http.NewRequest(method, base+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if user != "" {
			req.SetBasicAuth(user, password)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, resp.Header
	}

	deadline := time.Now().Add(5 * time.Second)
	for {
		req, _ := http.NewRequest(http.MethodGet, base+"/-/healthy", nil)
		req.SetBasicAuth(user, password)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("exporter not healthy over TLS after 5s: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	for _, ep := range []struct {
		method, path string
		// authorized is the status with the right credentials.
		authorized int
	}{
		{http.MethodGet, "/probe?module=m&target=127.0.0.1:1", http.StatusOK},
		{http.MethodGet, "/probe?module=m&target=127.0.0.1:1&debug=true", http.StatusOK},
		{http.MethodGet, "/metrics", http.StatusOK},
		{http.MethodGet, "/", http.StatusOK},
		{http.MethodGet, "/config", http.StatusOK},
		{http.MethodGet, "/logs?id=1", http.StatusOK},
		{http.MethodPost, "/-/reload", http.StatusOK},
		{http.MethodGet, "/-/reload", http.StatusMethodNotAllowed},
		{http.MethodGet, "/-/healthy", http.StatusOK},
		{http.MethodGet, "/-/ready", http.StatusOK},
		{http.MethodGet, "/no-such-page", http.StatusNotFound},
	} {
		for _, cred := range []struct{ name, user, password string }{
			{"no credentials", "", ""},
			{"wrong password", user, password + "x"},
			{"unknown user", "admin", password},
		} {
			if code, header := do(ep.method, ep.path, cred.user, cred.password); code != http.StatusUnauthorized {
				t.Errorf("%s %s with %s: status %d, want 401", ep.method, ep.path, cred.name, code)
			} else if !strings.HasPrefix(header.Get("WWW-Authenticate"), "Basic") {
				t.Errorf("%s %s: 401 without a Basic challenge", ep.method, ep.path)
			}
		}
		if code, _ := do(ep.method, ep.path, user, password); code != ep.authorized {
			t.Errorf("%s %s with the right credentials: status %d, want %d", ep.method, ep.path, code, ep.authorized)
		}
	}

	// Plain HTTP gets no page at all.
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + addr + "/metrics")
	if err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK || strings.Contains(string(body), "smtp_exporter_build_info") {
			t.Errorf("plain HTTP answered %d with the metrics", resp.StatusCode)
		}
	}
}
