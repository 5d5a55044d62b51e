package prober

import (
	"bytes"
	"crypto/tls"
	"os"
	"sync"

	promconfig "github.com/prometheus/common/config"
)

// maxCachedTLSConfigs bounds the cache below: there is one entry per
// distinct tls_config, so only a long run of reloads that change them
// could fill it.
const maxCachedTLSConfigs = 256

// tlsConfigCache keeps the *tls.Config built from each tls_config, so that
// a probe does not parse the CA certificates again: that was a tenth of the
// prober's own work. The CA file is still read at every probe and the
// configuration rebuilt when its content changed, so a rotated CA takes
// effect at the next probe, as before. Configurations with a client
// certificate or a secret reference are built afresh every time, so that
// their errors stay where and how promconfig reports them.
type tlsConfigCache struct {
	mu      sync.Mutex
	entries map[promconfig.TLSConfig]cachedTLSConfig
}

type cachedTLSConfig struct {
	ca  []byte // content of CAFile the config was built from
	cfg *tls.Config
}

var tlsConfigs = &tlsConfigCache{entries: map[promconfig.TLSConfig]cachedTLSConfig{}}

// get returns a configuration of the probe's own, to set ServerName on.
func (c *tlsConfigCache) get(tc *promconfig.TLSConfig) (*tls.Config, error) {
	if !cacheable(tc) {
		return promconfig.NewTLSConfig(tc)
	}
	var ca []byte
	if tc.CAFile != "" {
		b, err := os.ReadFile(tc.CAFile)
		if err != nil {
			return promconfig.NewTLSConfig(tc) // its error names the file
		}
		ca = b
	}
	c.mu.Lock()
	e, ok := c.entries[*tc]
	c.mu.Unlock()
	if ok && bytes.Equal(e.ca, ca) {
		return e.cfg.Clone(), nil
	}
	// Built from the bytes just compared, so that the entry matches them
	// even if the file changes again meanwhile.
	built := *tc
	if tc.CAFile != "" {
		built.CA, built.CAFile = string(ca), ""
	}
	cfg, err := promconfig.NewTLSConfig(&built)
	if err != nil {
		return promconfig.NewTLSConfig(tc) // the error as it words it for the file
	}
	c.mu.Lock()
	if len(c.entries) >= maxCachedTLSConfigs {
		clear(c.entries)
	}
	c.entries[*tc] = cachedTLSConfig{ca: ca, cfg: cfg}
	c.mu.Unlock()
	return cfg.Clone(), nil
}

// cacheable reports a tls_config whose whole outcome depends on its own
// fields and the content of its CA file.
func cacheable(tc *promconfig.TLSConfig) bool {
	return tc.Cert == "" && tc.CertFile == "" && tc.CertRef == "" &&
		tc.Key == "" && tc.KeyFile == "" && tc.KeyRef == "" &&
		tc.CARef == "" && (tc.CA == "" || tc.CAFile == "")
}
