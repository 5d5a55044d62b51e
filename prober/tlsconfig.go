package prober

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"sync"

	promconfig "github.com/prometheus/common/config"

	"github.com/smtp-exporter/smtp_exporter/config"
)

// maxCachedTLSConfigs bounds the cache below: there is one entry per
// distinct tls_config, so only a long run of reloads that change them
// could fill it.
const maxCachedTLSConfigs = 256

// tlsConfigCache keeps the *tls.Config built from each tls_config, so that
// a probe does not parse the CA certificates again: that was a tenth of the
// prober's own work. Its files (ca_file, cert_file, key_file) are still read
// at every probe, by config.ReadFile (regular files of at most
// config.MaxTLSFileBytes), and the configuration is rebuilt when their
// content changed, so a rotated CA or client certificate takes effect at
// the next probe. promconfig never sees a file name: it gets the content,
// so that it reads no file itself, neither now nor at each handshake.
type tlsConfigCache struct {
	mu      sync.Mutex
	entries map[promconfig.TLSConfig]cachedTLSConfig
}

// cachedTLSConfig is a configuration and the content of the files it was
// built from.
type cachedTLSConfig struct {
	files tlsFiles
	cfg   *tls.Config
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
	files, err := readTLSFiles(tc)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	e, ok := c.entries[*tc]
	c.mu.Unlock()
	if ok && e.files.equal(files) {
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
	c.entries[*tc] = cachedTLSConfig{files: files, cfg: cfg}
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
