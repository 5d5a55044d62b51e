package config

import (
	"strings"
	"testing"
	"time"
)

func TestDeliveryDefaults(t *testing.T) {
	cfg, err := Load([]byte(`
modules:
  canary:
    smtp:
      mail:
        from: probe@example.net
        to: [canary@example.net]
        delivery:
          imap:
            address: imap.example.net:993
            username: canary@example.net
            password: hunter22
`))
	if err != nil {
		t.Fatal(err)
	}
	d := cfg.Modules["canary"].SMTP.Mail.Delivery
	if d.IMAP.TLS != TLSImplicit || d.IMAP.Mailbox != "INBOX" || d.IMAP.Auth.Mechanism != MechanismAuto {
		t.Errorf("imap defaults: %+v", d.IMAP)
	}
	if time.Duration(d.LateAfter) != 2*time.Minute || time.Duration(d.LostAfter) != 30*time.Minute {
		t.Errorf("late_after %s, lost_after %s; want 2m, 30m", d.LateAfter, d.LostAfter)
	}
	out, err := cfg.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if s := string(out); !strings.Contains(s, "password: <secret>") || strings.Contains(s, "hunter22") {
		t.Errorf("the IMAP password is not shown as <secret>:\n%s", s)
	}
	m := cfg.Modules["canary"]
	found := false
	for _, s := range m.InlineSecrets() {
		found = found || s == "hunter22"
	}
	if !found {
		t.Error("InlineSecrets lacks the IMAP password")
	}
}
