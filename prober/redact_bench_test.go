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

// BenchmarkRedactResult redacts the server's strings of a STARTTLS probe's
// Result (EHLO keywords twice, mechanisms, two certificates) with the
// secrets of an AUTH PLAIN probe registered.
func BenchmarkRedactResult(b *testing.B) {
	t := newTranscript(time.Now(), slog.New(slog.DiscardHandler))
	t.addPassword(testUser, testPassword)
	t.addResponse((&plainAuth{username: testUser, password: testPassword}).blob(), testUser)
	keywords := []string{"PIPELINING", "SIZE", "ETRN", "STARTTLS", "ENHANCEDSTATUSCODES", "8BITMIME", "DSN", "CHUNKING"}
	res := &Result{
		QueueID:        "4XyZ1k2Lmnz9",
		Extensions:     map[Phase][]string{PhaseEHLO: keywords, PhaseEHLOTLS: append([]string{"AUTH"}, keywords...)},
		AuthMechanisms: []string{"PLAIN", "LOGIN", "SCRAM-SHA-256"},
		TLS:            &TLSSession{ServerName: "mx.example.net"},
		Certificates: []Certificate{
			{Subject: "CN=mx.example.net", Issuer: "CN=R11,O=Let's Encrypt,C=US", Serial: "4a3f9b2c81d07e6655aa12", DNSNames: []string{"mx.example.net", "smtp.example.net"}},
			{Subject: "CN=R11,O=Let's Encrypt,C=US", Issuer: "CN=ISRG Root X1,O=Internet Security Research Group,C=US", Serial: "8a7d3e13d62f30ef2386bd29076b34f8"},
		},
	}
	b.ReportAllocs()
	for b.Loop() {
		t.red.redactResult(res)
	}
}
