package collector

import (
	"crypto/sha256"
	"sync"

	"github.com/smtp-exporter/smtp_exporter/config"
)

// moduleText is what the handler derives from a module's configuration for
// every request: the YAML kept with each probe in the history, and its
// SHA-256, the guard's fingerprint of the module. Marshalling a module cost
// more than all the rest of the handler's work for a probe; it only changes
// with a reload.
type moduleText struct {
	yaml        string
	fingerprint [sha256.Size]byte
}

// moduleTexts caches the moduleText of each module of the configuration in
// use. A reload swaps the configuration pointer, which empties the cache, so
// it never holds more than the modules of one configuration. It is safe for
// concurrent use.
type moduleTexts struct {
	mu      sync.Mutex
	config  *config.Config
	modules map[string]moduleText
}

// lookup returns a copy of the named module of the configuration in use and
// its text.
func (c *moduleTexts) lookup(sc *config.SafeConfig, name string) (config.Module, moduleText, bool) {
	cfg := sc.Get()
	if cfg == nil {
		return config.Module{}, moduleText{}, false
	}
	module, ok := cfg.Modules[name]
	if !ok {
		return config.Module{}, moduleText{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.config != cfg {
		c.config, c.modules = cfg, make(map[string]moduleText, len(cfg.Modules))
	}
	text, ok := c.modules[name]
	if !ok {
		text = newModuleText(module)
		c.modules[name] = text
	}
	return module, text, true
}

func newModuleText(module config.Module) moduleText {
	yaml, err := config.MarshalModule(module)
	if err != nil {
		return moduleText{yaml: "error rendering the module: " + err.Error() + "\n"}
	}
	return moduleText{yaml: string(yaml), fingerprint: sha256.Sum256(yaml)}
}
