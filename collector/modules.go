package collector

import (
	"crypto/sha256"
	"fmt"
	"sync"

	"github.com/smtp-exporter/smtp_exporter/config"
)

// moduleText is what the handler derives from a module's configuration for
// every request: the YAML kept with each probe in the history, and the
// gate's fingerprint of the module: a SHA-256 of that YAML and of the
// secrets it shows as <secret>, so that a changed inline password ends the
// reuse of results at once. Marshalling a module cost
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

// lookup returns the request's own copy of the named module of the
// configuration in use, and its text.
func (c *moduleTexts) lookup(sc *config.SafeConfig, name string) (*config.Module, moduleText, bool) {
	cfg := sc.Get()
	if cfg == nil {
		return nil, moduleText{}, false
	}
	module, ok := cfg.Modules[name]
	if !ok {
		return nil, moduleText{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.config != cfg {
		c.config, c.modules = cfg, make(map[string]moduleText, len(cfg.Modules))
	}
	text, ok := c.modules[name]
	if !ok {
		text = newModuleText(&module)
		c.modules[name] = text
	}
	return &module, text, true
}

func newModuleText(module *config.Module) moduleText {
	yaml, err := config.MarshalModule(*module)
	if err != nil {
		return moduleText{yaml: "error rendering the module: " + err.Error() + "\n"}
	}
	h := sha256.New()
	h.Write(yaml)
	for _, secret := range module.InlineSecrets() {
		// Length-prefixed, so that moving text between secrets changes the sum.
		fmt.Fprintf(h, "\x00%d:%s", len(secret), secret)
	}
	text := moduleText{yaml: string(yaml)}
	h.Sum(text.fingerprint[:0])
	return text
}
