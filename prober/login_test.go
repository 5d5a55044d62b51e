package prober

import (
	"encoding/base64"
	"strings"
	"testing"
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
