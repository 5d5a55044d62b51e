package prober

import (
	"context"
	"testing"

	"github.com/smtp-exporter/smtp_exporter/config"
)

// Every spelling of one server resolves to one Address, which is what the
// exporter keys logins by; a target that cannot be dialled says why.
func TestResolveAddress(t *testing.T) {
	s := &config.SMTPProbe{TLS: config.TLSNone, PreferredIPProtocol: "ip4", IPProtocolFallback: true}
	for _, target := range []string{
		"127.0.0.1:2525", "localhost:2525", "LOCALHOST:2525", "localhost.:2525", "[::ffff:127.0.0.1]:2525",
	} {
		got := Resolve(context.Background(), target, s)
		if got.Failure != nil || got.Address() != "127.0.0.1:2525" {
			t.Errorf("%s: address %q, failure %+v; want 127.0.0.1:2525", target, got.Address(), got.Failure)
		}
	}
	if got := Resolve(context.Background(), "[::1]:2525", s); got.Address() != "[::1]:2525" {
		t.Errorf("IPv6: %q", got.Address())
	}
	for target, reason := range map[string]Reason{
		"127.0.0.1:2525:": ReasonTargetInvalid,
		"http://x/":       ReasonTargetInvalid,
	} {
		if got := Resolve(context.Background(), target, s); got.Failure == nil || got.Failure.Reason != reason || got.Failure.Phase != PhaseSetup {
			t.Errorf("%s: failure %+v, want %s in setup", target, got.Failure, reason)
		}
	}
	cfg, err := config.Load([]byte("modules:\n  m:\n    smtp: {tls: none, preferred_ip_protocol: ip4, allowed_targets: [\"192.0.2.0/24\"]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	allowed := cfg.Modules["m"].SMTP
	if got := Resolve(context.Background(), "localhost:25", &allowed); got.Failure == nil || got.Failure.Reason != ReasonTargetNotAllowed || got.IP.IsValid() {
		t.Errorf("outside allowed_targets: %+v", got)
	}
}
