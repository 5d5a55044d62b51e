package config

import (
	"strings"
	"testing"
)

// An IMAP address whose port is no TCP port is refused with the port named.
func TestDeliveryIMAPAddressPort(t *testing.T) {
	for _, port := range []string{"0", "65536", "imaps"} {
		_, err := Load([]byte(`
modules:
  canary:
    smtp:
      mail:
        from: probe@example.net
        to: [canary@example.net]
        delivery:
          imap:
            address: imap.example.net:` + port + `
            username: canary@example.net
            password: hunter22
`))
		want := `modules.canary.smtp.mail.delivery.imap.address: "imap.example.net:` + port + `": invalid port "` + port + `"`
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("port %s: error %v, want it to contain %s", port, err, want)
		}
	}
}
