package prober

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"time"

	promconfig "github.com/prometheus/common/config"

	"github.com/smtp-exporter/smtp_exporter/config"
)

// maxCachedTLSConfigs bounds the cache below: there is one entry per
// distinct tls_config, so only a long run of reloads that change them
// could fill it.
const maxCachedTLSConfigs = 256

// tlsConfigCache keeps the *tls.Config built from each tls_config, so that
// a probe does not parse the CA certificates again: that was a tenth of the
// prober's own work. Every probe still looks at its files (ca_file,
// cert_file, key_file), with one stat each: when one is another file than
// before (a new inode, as a rename or a symlink swap gives) or has another
// size or modification time, they are all read again, by config.ReadFile
// (regular files of at most config.MaxTLSFileBytes), and the configuration
// is rebuilt if their content changed, so a rotated CA or client
// certificate takes effect at the next probe. promconfig never sees a file
// name: it gets the content, so that it reads no file itself, neither now
// nor at each handshake.
type tlsConfigCache struct {
	mu      sync.Mutex
	entries map[promconfig.TLSConfig]cachedTLSConfig
}

// cachedTLSConfig is a configuration, the content of the files it was
// built from and what a stat said of them before they were last read.
type cachedTLSConfig struct {
	files  tlsFiles
	stamps tlsStamps
	cfg    *tls.Config
}

// tlsStamps is a stat of each file of a tls_config, nil for those it does
// not name; all nil when a stat failed (the read that follows says why) or
// a file was modified too recently to tell a later change by its stat.
type tlsStamps [3]fs.FileInfo

// racyStamp is how recently modified a file must be for its stat not to be
// trusted: a file system with coarse timestamps could show a second write
// of the same size within that time under the same modification time.
const racyStamp = 2 * time.Second

// statTLSFiles stats the files of tc, in the order of readTLSFiles.
func statTLSFiles(tc *promconfig.TLSConfig) tlsStamps {
	var st tlsStamps
	for i, path := range [3]string{tc.CAFile, tc.CertFile, tc.KeyFile} {
		if path == "" {
			continue
		}
		fi, err := os.Stat(path)
		if err != nil || time.Since(fi.ModTime()) < racyStamp {
			return tlsStamps{}
		}
		st[i] = fi
	}
	return st
}

// unchanged reports whether s and t say the same of every file: the same
// file, of the same size and modification time. A failed stat is never
// unchanged.
func (s tlsStamps) unchanged(t tlsStamps, tc *promconfig.TLSConfig) bool {
	for i, path := range [3]string{tc.CAFile, tc.CertFile, tc.KeyFile} {
		if path == "" {
			continue
		}
		a, b := s[i], t[i]
		if a == nil || b == nil || !os.SameFile(a, b) || a.Size() != b.Size() || !a.ModTime().Equal(b.ModTime()) {
			return false
		}
	}
	return true
}

// tlsFiles is the content of the files of a tls_config, "" for those it
// does not name.
type tlsFiles struct {
	ca, cert, key []byte
}

func (f tlsFiles) equal(g tlsFiles) bool {
	return bytes.Equal(f.ca, g.ca) && bytes.Equal(f.cert, g.cert) && bytes.Equal(f.key, g.key)
}

var tlsConfigs = &tlsConfigCache{entries: map[promconfig.TLSConfig]cachedTLSConfig{}}

// get returns a configuration of the probe's own, to set ServerName on.
func (c *tlsConfigCache) get(tc *promconfig.TLSConfig) (*tls.Config, error) {
	// Before any file is read: "both ca and ca_file" and the like.
	if err := tc.Validate(); err != nil {
		return nil, err
	}
	// Stamped before the read, so that a change after it shows at the
	// next probe.
	stamps := statTLSFiles(tc)
	c.mu.Lock()
	e, ok := c.entries[*tc]
	c.mu.Unlock()
	if ok && e.stamps.unchanged(stamps, tc) {
		return e.cfg.Clone(), nil
	}
	files, err := readTLSFiles(tc)
	if err != nil {
		return nil, err
	}
	if ok && e.files.equal(files) {
		c.mu.Lock()
		c.entries[*tc] = cachedTLSConfig{files: files, stamps: stamps, cfg: e.cfg}
		c.mu.Unlock()
		return e.cfg.Clone(), nil
	}
	// Built from the bytes just compared, so that the entry matches them
	// even if the files change again meanwhile.
	built := *tc
	if tc.CAFile != "" {
		built.CA, built.CAFile = string(files.ca), ""
	}
	if tc.CertFile != "" {
		built.Cert, built.CertFile = string(files.cert), ""
	}
	if tc.KeyFile != "" {
		built.Key, built.KeyFile = promconfig.Secret(files.key), ""
	}
	cfg, err := promconfig.NewTLSConfig(&built)
	if err != nil {
		return nil, contentError(tc, files, err)
	}
	c.mu.Lock()
	if len(c.entries) >= maxCachedTLSConfigs {
		clear(c.entries)
	}
	c.entries[*tc] = cachedTLSConfig{files: files, stamps: stamps, cfg: cfg}
	c.mu.Unlock()
	return cfg.Clone(), nil
}

// readTLSFiles reads the files a tls_config names.
func readTLSFiles(tc *promconfig.TLSConfig) (tlsFiles, error) {
	var files tlsFiles
	for _, f := range []struct {
		key, path string
		content   *[]byte
	}{
		{"ca_file", tc.CAFile, &files.ca},
		{"cert_file", tc.CertFile, &files.cert},
		{"key_file", tc.KeyFile, &files.key},
	} {
		if f.path == "" {
			continue
		}
		b, err := config.ReadFile(f.key, f.path, config.MaxTLSFileBytes)
		if err != nil {
			return tlsFiles{}, err
		}
		*f.content = b
	}
	return files, nil
}

// contentError names the file whose content promconfig refused: it only
// saw the content, and speaks of it as "inline".
func contentError(tc *promconfig.TLSConfig, files tlsFiles, err error) error {
	if tc.CAFile != "" && !x509.NewCertPool().AppendCertsFromPEM(files.ca) {
		return fmt.Errorf("ca_file %s: no PEM certificate in it", tc.CAFile)
	}
	if tc.CertFile != "" || tc.KeyFile != "" {
		cert, key := []byte(tc.Cert), []byte(tc.Key)
		if tc.CertFile != "" {
			cert = files.cert
		}
		if tc.KeyFile != "" {
			key = files.key
		}
		if _, kerr := tls.X509KeyPair(cert, key); kerr != nil {
			return fmt.Errorf("client certificate (%s) and key (%s): %w",
				describe("cert_file", tc.CertFile, "cert"), describe("key_file", tc.KeyFile, "key"), kerr)
		}
	}
	return err
}

// describe says where a tls_config takes a certificate or key from.
func describe(fileKey, path, inlineKey string) string {
	if path != "" {
		return fileKey + " " + path
	}
	return inlineKey
}
