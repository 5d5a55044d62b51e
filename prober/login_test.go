package prober

import (
	"context"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

func TestScrubberRedactsIMAPLogins(t *testing.T) {
	s := NewScrubber()
	s.AddPassword("canary@example.net", `pa"ss\word`)
	s.AddToken("ya29.a0AfH6SMB-token")
	for _, line := range []string{
		`A1 LOGIN "canary@example.net" "pa\"ss\\word"`,
		"A2 AUTHENTICATE PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00canary@example.net\x00pa\"ss\\word")),
		"A3 AUTHENTICATE XOAUTH2 " + base64.StdEncoding.EncodeToString([]byte("user=canary@example.net\x01auth=Bearer ya29.a0AfH6SMB-token\x01\x01")),
	} {
		got := s.Scrub(line)
		if strings.Contains(got, "word") || strings.Contains(got, "SMB-token") || !strings.Contains(got, Redacted) {
			t.Errorf("Scrub(%q) = %q", line, got)
		}
	}
}

// A probe under WithLoginAccepted says so once, as soon as the server
// accepted its login and before MAIL, and not at all when the server
// refused it.
func TestWithLoginAccepted(t *testing.T) {
	t.Parallel()
	caFile := smtptest.Certs().WriteCAFile(t)
	m := loadModule(t, moduleSpec{TLS: "starttls", CAFile: caFile, Mechanism: "PLAIN",
		Mail: "from: probe@example.net\nto: [canary@example.net]\n"})
	for _, tc := range []struct {
		name     string
		password string
		want     int
	}{
		{"accepted", testPassword, 1},
		{"refused", "not-" + testPassword, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := smtptest.NewServer(t, smtptest.Options{TLS: smtptest.StartTLS, Username: testUser, Password: tc.password})
			calls := 0
			ctx := WithLoginAccepted(context.Background(), func() {
				calls++
				if srv.SawCommand("MAIL") {
					t.Error("called after MAIL was sent")
				}
			})
			r, log := runProbeCtx(t, ctx, target(srv), m)
			if calls != tc.want {
				t.Errorf("called %d times, want %d (probe: success %v, failure %v)\n%s", calls, tc.want, r.Success, r.Failure, log)
			}
			if tc.want > 0 && !srv.SawCommand("MAIL") {
				t.Errorf("the session stopped after the login: %v", r.Failure)
			}
		})
	}
}
