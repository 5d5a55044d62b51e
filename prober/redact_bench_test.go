package prober

import (
	"log/slog"
	"testing"
	"time"
)

// BenchmarkRedact registers the secrets of an AUTH PLAIN probe and redacts
// what such a probe hands the redactor: log messages and values, the lines
// of the server's replies, and one reply that quotes the password.
func BenchmarkRedact(b *testing.B) {
	texts := []string{
		"Phase started", "Phase done", "connect", "starttls", "auth", "Authenticating", "PLAIN",
		"Resolved target", "127.0.0.1", "localhost", "Probe succeeded",
		"mx.example.net ESMTP Postfix (Debian/GNU)", "PIPELINING", "SIZE 10240000", "ENHANCEDSTATUSCODES",
		"AUTH PLAIN LOGIN CRAM-MD5 SCRAM-SHA-1 SCRAM-SHA-256", "2.0.0 Ready to start TLS",
		"2.7.0 Authentication successful", "2.0.0 Bye",
		"5.7.8 Error: authentication failed: bad password " + testPassword,
	}
	b.ReportAllocs()
	for b.Loop() {
		t := newTranscript(time.Now(), slog.New(slog.DiscardHandler))
		t.addPassword(testUser, testPassword)
		t.addResponse((&plainAuth{username: testUser, password: testPassword}).blob(), testUser)
		for _, s := range texts {
			t.scrub(s)
		}
	}
}
