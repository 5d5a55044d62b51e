package config

import (
	"net/netip"
	"testing"
)

// allowed_targets may be set on any module, not only on those with
// credentials: a module without auth that may probe any target would
// otherwise show, with debug=true, the first lines of any port of any host
// the exporter reaches.
func TestAllowedTargetsWithoutAuth(t *testing.T) {
	cfg, err := LoadFile("testdata/valid/allowed-targets-without-auth.yml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		module string
		host   string
		addr   string
		port   int
		want   bool
	}{
		{"smtp_banner", "mx.example.org", "198.51.100.7", 25, true},
		{"smtp_banner", "10.0.0.5", "10.0.0.5", 25, true},
		{"smtp_banner", "redis.internal", "10.0.0.6", 6379, false},
		{"smtp_banner", "127.0.0.1", "127.0.0.1", 9465, false},
		{"internal_relay", "relay.example.net", "203.0.113.9", 25, true},
		{"internal_relay", "relay.example.org", "192.0.2.77", 587, true},
		{"internal_relay", "relay.example.org", "198.51.100.7", 25, false},
		{"internal_relay", "2001:db8::25", "2001:db8::25", 2525, true},
		{"internal_relay", "2001:db8::25", "2001:db8::25", 25, false},
	} {
		m, ok := cfg.Modules[tc.module]
		if !ok {
			t.Fatalf("module %s not loaded", tc.module)
		}
		if m.SMTP.Auth != nil || !m.SMTP.TargetRestricted() {
			t.Fatalf("module %s: auth %v, restricted %v; want no auth and a restriction", tc.module, m.SMTP.Auth, m.SMTP.TargetRestricted())
		}
		got := m.SMTP.AllowsHost(tc.host, tc.port) || m.SMTP.AllowsAddr(netip.MustParseAddr(tc.addr), tc.port)
		if got != tc.want {
			t.Errorf("module %s, %s (%s) port %d: allowed %v, want %v", tc.module, tc.host, tc.addr, tc.port, got, tc.want)
		}
	}
}

// Every module of the shipped configuration limits its targets, so that a
// copy deployed as it is answers only for the targets it was meant for.
func TestShippedModulesLimitTargets(t *testing.T) {
	cfg, err := LoadFile("../smtp_exporter.yml")
	if err != nil {
		t.Fatal(err)
	}
	for name, m := range cfg.Modules {
		if !m.SMTP.TargetRestricted() {
			t.Errorf("module %s sets no allowed_targets", name)
		}
		// No module may be pointed at another service of the network.
		if m.SMTP.AllowsHost("db.internal", 5432) || m.SMTP.AllowsAddr(netip.MustParseAddr("10.0.0.6"), 5432) {
			t.Errorf("module %s admits port 5432 of any host", name)
		}
	}
}
