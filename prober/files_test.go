//go:build unix

package prober

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smtp-exporter/smtp_exporter/config"
	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

// fileBound is how long a probe of a module with a bad file may take before
// the test calls it stuck: twice the modules' timeout.
const fileBound = 10 * time.Second

// fileModuleTimeout is the timeout of the modules of these tests.
const fileModuleTimeout = 5 * time.Second

// releaseFIFO lets a reader stuck in open(2) on a named pipe go on, by
// opening the pipe for writing and closing it at once.
func releaseFIFO(path string) {
	if w, err := os.OpenFile(path, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
		w.Close()
	}
}

// fileKind is a file a module can name: the key it is named under, what a
// good one holds, and the failure a bad one gives.
type fileKind struct {
	key    string
	reason Reason
	// start starts the servers a module of this kind talks to, and returns
	// what the good file holds, the module that reads path, and its target.
	start func(t *testing.T) (content string, module func(path string) config.Module, target string)
}

// fileKinds are every file a module names, read at every probe.
var fileKinds = []fileKind{
	{"password_file", ReasonCredentials, func(t *testing.T) (string, func(string) config.Module, string) {
		srv := smtptest.NewServer(t, smtptest.Options{Username: testUser, Password: testPassword})
		return testPassword + "\n", func(path string) config.Module {
			return loadModule(t, moduleSpec{TLS: "none", Mechanism: "PLAIN", PasswordFile: path, AllowPlaintext: true})
		}, srv.Addr()
	}},
	{"token_file", ReasonTokenUnavailable, func(t *testing.T) (string, func(string) config.Module, string) {
		const token = "ya29.file-token-leak-canary"
		srv := newBearerServer(t, &bearerServer{user: testUser}, token)
		return token + "\n", func(path string) config.Module {
			return loadAuthModule(t, fmt.Sprintf("auth:\n  mechanism: XOAUTH2\n  username: %s\n  token_file: %q", testUser, path))
		}, srv.Addr()
	}},
	{"client_secret_file", ReasonTokenUnavailable, func(t *testing.T) (string, func(string) config.Module, string) {
		url := (&tokenEndpoint{clientSecret: testClientSecret}).start(t)
		srv := newBearerServer(t, &bearerServer{user: testUser}, "access-token-1-"+strings.Repeat("x", 20))
		return testClientSecret + "\n", func(path string) config.Module {
			return oauthModule(t, "XOAUTH2", url, path, "")
		}, srv.Addr()
	}},
	{"refresh_token_file", ReasonTokenUnavailable, func(t *testing.T) (string, func(string) config.Module, string) {
		url := (&tokenEndpoint{clientSecret: testClientSecret, refreshToken: testRefreshToken}).start(t)
		srv := newBearerServer(t, &bearerServer{user: testUser}, "access-token-1-"+strings.Repeat("x", 20))
		secretFile := writeFile(t, t.TempDir(), "secret", testClientSecret)
		return testRefreshToken + "\n", func(path string) config.Module {
			return oauthModule(t, "XOAUTH2", url, secretFile, path)
		}, srv.Addr()
	}},
	smtpTLSFile("ca_file"),
	smtpTLSFile("cert_file"),
	smtpTLSFile("key_file"),
	oauthTLSFile("ca_file"),
	oauthTLSFile("cert_file"),
	oauthTLSFile("key_file"),
	{"attachment", ReasonMessageUnavailable, func(t *testing.T) (string, func(string) config.Module, string) {
		srv := smtptest.NewServer(t, smtptest.Options{})
		return "attached", func(path string) config.Module {
			return loadModule(t, moduleSpec{TLS: "none", Mail: canaryYAML(true, "sink@example.net") +
				fmt.Sprintf("  attachments:\n    - path: %q\n", path)})
		}, srv.Addr()
	}},
}

// goodTLSFiles are good files for a tls_config: the test CA, and a client
// certificate and key.
func goodTLSFiles(t *testing.T) map[string]string {
	certFile, keyFile := writeClientCert(t)
	files := map[string]string{"ca_file": smtptest.Certs().WriteCAFile(t), "cert_file": certFile, "key_file": keyFile}
	for key, path := range files {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		files[key] = string(b)
	}
	return files
}

// tlsConfigYAML is a tls_config with every file, key's at path and the
// others good ones in dir.
func tlsConfigYAML(t *testing.T, files map[string]string, key, path string) string {
	dir := t.TempDir()
	var b strings.Builder
	b.WriteString("tls_config:\n")
	for _, k := range []string{"ca_file", "cert_file", "key_file"} {
		p := path
		if k != key {
			p = writeFile(t, dir, k, files[k])
		}
		fmt.Fprintf(&b, "  %s: %q\n", k, p)
	}
	return b.String()
}

// smtpTLSFile is a file of the tls_config of the SMTP session.
func smtpTLSFile(key string) fileKind {
	return fileKind{key, ReasonCertificate, func(t *testing.T) (string, func(string) config.Module, string) {
		srv := smtptest.NewServer(t, smtptest.Options{TLS: smtptest.StartTLS})
		files := goodTLSFiles(t)
		return files[key], func(path string) config.Module {
			var b strings.Builder
			fmt.Fprintf(&b, "modules:\n  test:\n    timeout: %s\n    smtp:\n      tls: starttls\n      preferred_ip_protocol: ip4\n", fileModuleTimeout)
			for _, line := range strings.Split(strings.TrimSpace(tlsConfigYAML(t, files, key, path)), "\n") {
				b.WriteString("      " + line + "\n")
			}
			cfg, err := config.Load([]byte(b.String()))
			if err != nil {
				t.Fatalf("loading module: %v\n%s", err, b.String())
			}
			return cfg.Modules["test"]
		}, srv.Addr()
	}}
}

// oauthTLSFile is a file of the tls_config of the token endpoint, which
// answers over TLS with the test CA's certificate.
func oauthTLSFile(key string) fileKind {
	return fileKind{"oauth2 " + key, ReasonTokenUnavailable, func(t *testing.T) (string, func(string) config.Module, string) {
		endpoint := httptest.NewUnstartedServer(http.HandlerFunc((&tokenEndpoint{clientSecret: testClientSecret}).serve))
		endpoint.TLS = &tls.Config{Certificates: []tls.Certificate{smtptest.Certs().Server}}
		endpoint.StartTLS()
		t.Cleanup(endpoint.Close)
		srv := newBearerServer(t, &bearerServer{user: testUser}, "access-token-1-"+strings.Repeat("x", 20))
		files := goodTLSFiles(t)
		secretFile := writeFile(t, t.TempDir(), "secret", testClientSecret)
		return files[key], func(path string) config.Module {
			lines := fmt.Sprintf("auth:\n  mechanism: XOAUTH2\n  username: %s\n  oauth2:\n    client_id: %s\n    token_url: %s\n    client_secret_file: %q\n",
				testUser, testClientID, endpoint.URL+"/oauth2/token", secretFile)
			for _, line := range strings.Split(strings.TrimSpace(tlsConfigYAML(t, files, key, path)), "\n") {
				lines += "    " + line + "\n"
			}
			return loadAuthModule(t, lines)
		}, srv.Addr()
	}}
}

// badFiles are what a path may name that must never be read: each fails
// the probe in setup at once, and costs no more memory than a small file.
var badFiles = []struct {
	name string
	make func(t *testing.T) string
	want string // in the error
}{
	{"named pipe", func(t *testing.T) string {
		path := filepath.Join(t.TempDir(), "fifo")
		if err := syscall.Mkfifo(path, 0o600); err != nil {
			t.Skipf("cannot make a named pipe: %v", err)
		}
		return path
	}, "not a regular file (a named pipe)"},
	{"device", func(t *testing.T) string {
		if _, err := os.Stat("/dev/zero"); err != nil {
			t.Skip("no /dev/zero")
		}
		return "/dev/zero"
	}, "not a regular file (a character device)"},
	{"directory", func(t *testing.T) string { return t.TempDir() }, "not a regular file (a directory)"},
	{"64 MiB", func(t *testing.T) string {
		path := filepath.Join(t.TempDir(), "sparse")
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		// Sparse: larger than every bound, and takes no disk space.
		if err := f.Truncate(64 << 20); err != nil {
			t.Fatal(err)
		}
		return path
	}, "file too large: 67108864 bytes, the limit is "},
}

// Not parallel: the allocations are measured for the whole process.
func TestFilesThatCouldHangOrExhaustFailInSetup(t *testing.T) {
	for _, kind := range fileKinds {
		t.Run(kind.key, func(t *testing.T) {
			_, module, target := kind.start(t)
			for _, bad := range badFiles {
				t.Run(bad.name, func(t *testing.T) {
					path := bad.make(t)
					m := module(path)
					var r *Result
					var log string
					done := make(chan struct{})
					var before, after runtime.MemStats
					runtime.ReadMemStats(&before)
					start := time.Now()
					go func() {
						defer close(done)
						r, log = runProbe(t, target, m)
					}()
					select {
					case <-done:
					case <-time.After(fileBound):
						releaseFIFO(path)
						<-done
						t.Fatalf("the probe did not end within %v", fileBound)
					}
					elapsed := time.Since(start)
					runtime.ReadMemStats(&after)
					requireFailure(t, r, PhaseSetup, kind.reason)
					if elapsed >= fileModuleTimeout {
						t.Errorf("the probe took %v, its timeout is %v", elapsed, fileModuleTimeout)
					}
					key := strings.TrimPrefix(kind.key, "oauth2 ")
					for _, want := range []string{key + " " + path + ": ", bad.want} {
						if !strings.Contains(r.Failure.Err.Error(), want) {
							t.Errorf("error %q does not say %q", r.Failure.Err, want)
						}
					}
					if !strings.Contains(log, "Probe failed") || !strings.Contains(log, bad.want) {
						t.Errorf("no log line says why:\n%s", log)
					}
					if n := after.TotalAlloc - before.TotalAlloc; n > 4<<20 {
						t.Errorf("the probe allocated %d bytes", n)
					}
				})
			}
		})
	}
}

// Kubernetes mounts Secrets and ConfigMaps as symbolic links: key ->
// ..data/key, and ..data -> the directory of the current version. A probe
// follows them.
func TestFilesBehindSymlinks(t *testing.T) {
	for _, kind := range fileKinds {
		t.Run(kind.key, func(t *testing.T) {
			t.Parallel()
			content, module, target := kind.start(t)
			dir := t.TempDir()
			const version = "..2025_01_01_00_00_00.000000001"
			if err := os.Mkdir(filepath.Join(dir, version), 0o700); err != nil {
				t.Fatal(err)
			}
			writeFile(t, filepath.Join(dir, version), "file", content)
			if err := os.Symlink(version, filepath.Join(dir, "..data")); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "file")
			if err := os.Symlink(filepath.Join("..data", "file"), path); err != nil {
				t.Fatal(err)
			}
			r, log := runProbe(t, target, module(path))
			requireSuccess(t, r, log)

		})
	}
}
