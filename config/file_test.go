//go:build unix

package config

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// readBound is how long a read of a file may take before the test calls it
// stuck: far more than a read of a small file takes on a busy machine, far
// less than forever.
const readBound = 10 * time.Second

// mkfifo makes a named pipe in a test directory.
func mkfifo(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Skipf("cannot make a named pipe: %v", err)
	}
	return path
}

// sparseFile makes a file of size bytes that takes no disk space.
func sparseFile(t *testing.T, size int64) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sparse")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return path
}

// within runs read, and fails the test when it has not returned within
// readBound. A reader stuck in open(2) on a named pipe is then released by
// opening the pipe for writing and closing it, so that the test ends.
func within(t *testing.T, path string, read func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		read()
	}()
	timer := time.NewTimer(readBound)
	defer timer.Stop()
	select {
	case <-done:
		return
	case <-timer.C:
	}
	t.Errorf("reading %s did not return within %v", path, readBound)
	if w, err := os.OpenFile(path, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
		w.Close()
	}
	<-done
}

// secretReaders are the ways a module reads a secret file: each of its
// keys, and Account, which the exporter calls before every probe that may
// be held.
func secretReaders() map[string]func(path string) error {
	return map[string]func(path string) error{
		"password_file": func(path string) error {
			_, err := (&Auth{PasswordFile: path}).ReadPassword()
			return err
		},
		"token_file": func(path string) error {
			_, err := (&Auth{TokenFile: path}).ReadToken()
			return err
		},
		"client_secret_file": func(path string) error {
			_, err := (&OAuth2{ClientSecretFile: path}).ReadClientSecret()
			return err
		},
		"refresh_token_file": func(path string) error {
			_, err := (&OAuth2{RefreshTokenFile: path}).ReadRefreshToken()
			return err
		},
		"Account password_file": func(path string) error {
			_, err := (&Auth{PasswordFile: path}).Account()
			return err
		},
		"Account token_file": func(path string) error {
			_, err := (&Auth{TokenFile: path}).Account()
			return err
		},
		"Account client_secret_file": func(path string) error {
			_, err := (&Auth{OAuth2: &OAuth2{ClientSecretFile: path}}).Account()
			return err
		},
		"Account refresh_token_file": func(path string) error {
			_, err := (&Auth{OAuth2: &OAuth2{ClientSecret: "s", RefreshTokenFile: path}}).Account()
			return err
		},
	}
}

// A named pipe, a device, a directory or a file over the bound is never
// read: the read returns at once with an error that says why, and costs
// no more memory than a small file.
func TestSecretFilesRefuseWhatCouldHangOrExhaust(t *testing.T) {
	bad := []struct {
		name string
		path func(t *testing.T) string
		want error
	}{
		{"named pipe", mkfifo, ErrNotRegularFile},
		{"device", func(t *testing.T) string {
			if _, err := os.Stat("/dev/zero"); err != nil {
				t.Skip("no /dev/zero")
			}
			return "/dev/zero"
		}, ErrNotRegularFile},
		{"directory", func(t *testing.T) string { return t.TempDir() }, ErrNotRegularFile},
		{"64 MiB", func(t *testing.T) string { return sparseFile(t, 64<<20) }, ErrFileTooLarge},
	}
	for key, read := range secretReaders() {
		for _, b := range bad {
			t.Run(key+"/"+b.name, func(t *testing.T) {
				path := b.path(t)
				var err error
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				within(t, path, func() { err = read(path) })
				runtime.ReadMemStats(&after)
				if !errors.Is(err, b.want) {
					t.Fatalf("error %v, want %v", err, b.want)
				}
				if !strings.Contains(err.Error(), path) {
					t.Errorf("error %q does not name %s", err, path)
				}
				if key := strings.TrimPrefix(key, "Account "); !strings.HasPrefix(err.Error(), key+" ") {
					t.Errorf("error %q does not start with %s", err, key)
				}
				if n := after.TotalAlloc - before.TotalAlloc; n > 4<<20 {
					t.Errorf("reading it allocated %d bytes", n)
				}
			})
		}
	}
}

// Kubernetes mounts a Secret as symbolic links: key -> ..data/key, and
// ..data -> the directory of the current version. They are followed.
func TestSecretFilesFollowSymlinks(t *testing.T) {
	dir := t.TempDir()
	version := filepath.Join(dir, "..2025_01_01_00_00_00.000000001")
	if err := os.Mkdir(version, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(version, "secret"), []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Base(version), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "secret")
	if err := os.Symlink(filepath.Join("..data", "secret"), path); err != nil {
		t.Fatal(err)
	}
	if got, err := (&Auth{PasswordFile: path}).ReadPassword(); err != nil || got != "s3cret" {
		t.Errorf("ReadPassword = %q, %v; want s3cret", got, err)
	}
	if got, err := (&Auth{TokenFile: path}).ReadToken(); err != nil || got != "s3cret" {
		t.Errorf("ReadToken = %q, %v; want s3cret", got, err)
	}
	if got, err := (&OAuth2{ClientSecretFile: path}).ReadClientSecret(); err != nil || got != "s3cret" {
		t.Errorf("ReadClientSecret = %q, %v; want s3cret", got, err)
	}
	if got, err := (&OAuth2{RefreshTokenFile: path}).ReadRefreshToken(); err != nil || got != "s3cret" {
		t.Errorf("ReadRefreshToken = %q, %v; want s3cret", got, err)
	}
	if _, err := (&Auth{PasswordFile: path}).Account(); err != nil {
		t.Errorf("Account: %v", err)
	}

	// A link to a named pipe is a named pipe.
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(filepath.Join(version, "fifo"), 0o600); err != nil {
		t.Skipf("cannot make a named pipe: %v", err)
	}
	if err := os.Symlink(filepath.Join("..data", "fifo"), fifo); err != nil {
		t.Fatal(err)
	}
	var err error
	within(t, fifo, func() { _, err = (&Auth{PasswordFile: fifo}).ReadPassword() })
	if !errors.Is(err, ErrNotRegularFile) || !strings.Contains(err.Error(), "a named pipe") {
		t.Errorf("a link to a named pipe: error %v, want %v (a named pipe)", err, ErrNotRegularFile)
	}
}

func TestReadFileBound(t *testing.T) {
	dir := t.TempDir()
	const limit = 1000
	exact := bytes.Repeat([]byte("x"), limit)
	path := filepath.Join(dir, "exact")
	if err := os.WriteFile(path, exact, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadFile("ca_file", path, limit); err != nil || !bytes.Equal(got, exact) {
		t.Errorf("a file of the limit: %d bytes, %v; want it whole", len(got), err)
	}
	over := filepath.Join(dir, "over")
	if err := os.WriteFile(over, append(exact, 'x'), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := ReadFile("ca_file", over, limit)
	if !errors.Is(err, ErrFileTooLarge) || err.Error() != "ca_file "+over+": file too large: 1001 bytes, the limit is 1000" {
		t.Errorf("a byte over the limit: %v", err)
	}

	// A file whose size the file system does not know in advance is cut
	// at the limit all the same.
	if _, err := os.Stat("/proc/self/maps"); err == nil {
		_, err := ReadFile("key_file", "/proc/self/maps", 16)
		if !errors.Is(err, ErrFileTooLarge) {
			t.Errorf("/proc/self/maps with a limit of 16 bytes: %v", err)
		}
	}

	missing := filepath.Join(dir, "missing")
	_, err = ReadFile("cert_file", missing, limit)
	if !errors.Is(err, fs.ErrNotExist) || err.Error() != "cert_file "+missing+": no such file or directory" {
		t.Errorf("a missing file: %v", err)
	}
}

// Loading a configuration reads none of the files it names, so a reload
// cannot hang on one: they are read, bounded, by the probes.
func TestLoadDoesNotReadTheFilesItNames(t *testing.T) {
	fifo := mkfifo(t)
	yaml := strings.ReplaceAll(`
modules:
  password:
    smtp:
      tls_config: {ca_file: FIFO, cert_file: FIFO, key_file: FIFO}
      auth: {username: u, password_file: FIFO}
      mail:
        from: probe@example.net
        to: [sink@example.net]
        data: true
        message:
          body: hello
          attachments: [{path: FIFO}]
      allowed_targets: ["*"]
  token:
    smtp:
      auth: {username: u, token_file: FIFO}
      allowed_targets: ["*"]
  oauth2:
    smtp:
      auth:
        username: u
        oauth2:
          client_id: c
          client_secret_file: FIFO
          refresh_token_file: FIFO
          token_url: https://login.example.net/token
          tls_config: {ca_file: FIFO, cert_file: FIFO, key_file: FIFO}
      allowed_targets: ["*"]
`, "FIFO", fifo)
	path := filepath.Join(t.TempDir(), "smtp_exporter.yml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	sc := NewSafeConfig(nil)
	var err error
	within(t, fifo, func() { err = sc.Reload(path) })
	if err != nil {
		t.Fatal(err)
	}
	if len(sc.ModuleNames()) != 3 {
		t.Errorf("modules %v, want 3", sc.ModuleNames())
	}
}
