// Package config defines the smtp_exporter configuration file: its schema,
// defaults, validation and a safe hot swap for reloads. It imports none of the
// exporter's other packages.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"
)

// Config is the whole configuration file.
type Config struct {
	Modules map[string]Module `yaml:"modules"`
}

// Load parses a configuration from YAML and validates it in full. Unknown
// keys are errors, and every error names the line it was found on.
func Load(data []byte) (*Config, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	cfg := &Config{}
	if err := dec.Decode(cfg); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("empty configuration: no modules defined")
		}
		return nil, errors.New(typeNameInError.ReplaceAllString(err.Error(), ""))
	}
	// A second document would be ignored: refuse it, so that what the file
	// says is what runs. Empty ones (a trailing "---") say nothing.
	for {
		var next yaml.Node
		err := dec.Decode(&next)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, errors.New(typeNameInError.ReplaceAllString(err.Error(), ""))
		}
		if len(next.Content) > 0 && next.Content[0].Tag != "!!null" {
			return nil, fmt.Errorf("line %d: a second YAML document; the configuration is a single document", next.Line)
		}
	}
	if err := cfg.validate(); err != nil {
		return nil, withLine(data, err)
	}
	return cfg, nil
}

// typeNameInError matches the Go type yaml names in its errors ("field x not
// found in type config.plain"), which means nothing to a user.
var typeNameInError = regexp.MustCompile(` in type [A-Za-z0-9_.]+`)

// LoadFile reads and parses the configuration file at path.
func LoadFile(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	cfg, err := Load(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// Marshal renders the configuration as YAML with every secret shown as
// <secret>, for the /config page and debug output.
func (c *Config) Marshal() ([]byte, error) {
	return yaml.Marshal(c)
}

// MarshalModule renders one module the same way.
func MarshalModule(m Module) ([]byte, error) {
	return yaml.Marshal(m)
}

// MarshalYAML shows token_url as RedactURL does: keys sometimes live in
// its query.
func (o OAuth2) MarshalYAML() (any, error) {
	type plain OAuth2
	shown := plain(o)
	shown.TokenURL = RedactURL(o.TokenURL)
	return shown, nil
}

// RedactURL returns a URL as it may be shown: the value of every query
// parameter and the fragment as <secret>, the names kept, so that a key in
// the query never shows. A URL without query or fragment is returned as it
// is.
func RedactURL(raw string) string {
	base, fragment, hasFragment := strings.Cut(raw, "#")
	base, query, hasQuery := strings.Cut(base, "?")
	if hasQuery {
		params := strings.Split(query, "&")
		for i, param := range params {
			if name, _, found := strings.Cut(param, "="); found {
				params[i] = name + "=" + secretMark
			} else if param != "" {
				params[i] = secretMark
			}
		}
		base += "?" + strings.Join(params, "&")
	}
	if hasFragment && fragment != "" {
		base += "#" + secretMark
	}
	return base
}

// secretMark is how marshalled configuration shows a secret, as
// prometheus/common's Secret does.
const secretMark = "<secret>"

// SafeConfig holds the configuration in use and swaps it atomically on a
// successful reload. Readers take a snapshot and never block a reload for
// longer than a pointer copy.
type SafeConfig struct {
	mu sync.RWMutex
	c  *Config

	reloadSuccess   prometheus.Gauge
	reloadTimestamp prometheus.Gauge
}

// NewSafeConfig registers the reload metrics with reg.
func NewSafeConfig(reg prometheus.Registerer) *SafeConfig {
	sc := &SafeConfig{
		reloadSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "smtp_exporter",
			Name:      "config_last_reload_successful",
			Help:      "Whether the last configuration reload attempt was successful.",
		}),
		reloadTimestamp: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "smtp_exporter",
			Name:      "config_last_reload_success_timestamp_seconds",
			Help:      "Timestamp of the last successful configuration reload.",
		}),
	}
	if reg != nil {
		reg.MustRegister(sc.reloadSuccess, sc.reloadTimestamp)
	}
	return sc
}

// Get returns the configuration in use. Callers must not modify it.
func (sc *SafeConfig) Get() *Config {
	sc.mu.RLock()
	defer sc.mu.RUnlock()
	return sc.c
}

// Module returns a copy of the named module and whether it exists.
func (sc *SafeConfig) Module(name string) (Module, bool) {
	sc.mu.RLock()
	defer sc.mu.RUnlock()
	if sc.c == nil {
		return Module{}, false
	}
	m, ok := sc.c.Modules[name]
	return m, ok
}

// ModuleNames returns the configured module names, sorted.
func (sc *SafeConfig) ModuleNames() []string {
	cfg := sc.Get()
	if cfg == nil {
		return nil
	}
	return cfg.ModuleNames()
}

// ModuleNames returns the module names, sorted: the order in which every
// walk over the modules goes, so that errors and logs come out the same
// each time.
func (c *Config) ModuleNames() []string {
	return slices.Sorted(maps.Keys(c.Modules))
}

// Reload loads path and, only if it is valid in full, makes it the
// configuration in use. On error the previous configuration keeps serving.
func (sc *SafeConfig) Reload(path string) error {
	cfg, err := LoadFile(path)
	if err != nil {
		sc.reloadSuccess.Set(0)
		return err
	}
	now := time.Now()
	sc.mu.Lock()
	sc.c = cfg
	sc.mu.Unlock()
	sc.reloadSuccess.Set(1)
	sc.reloadTimestamp.Set(float64(now.Unix()))
	return nil
}
