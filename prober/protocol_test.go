package prober

import (
	"encoding/base64"
	"strings"
	"testing"

	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

// Servers that break the protocol in one way each. Every case must end in
// the given phase and reason, within the timeout, without a panic.
func TestProbeBrokenServers(t *testing.T) {
	t.Parallel()
	const ehlo = "250-mx\r\n250 AUTH PLAIN LOGIN\r\n"
	for _, tc := range []struct {
		name     string
		greeting string
		replies  map[string]string
		auth     bool
		phase    Phase
		reason   Reason
		code     int
		quit     bool // whether the probe still said QUIT
	}{
		{name: "over-long line", greeting: "220 " + strings.Repeat("x", 5000) + "\r\n",
			phase: PhaseBanner, reason: ReasonProtocolError},
		{name: "too many lines", greeting: strings.Repeat("220-spam\r\n", 150) + "220 ok\r\n",
			phase: PhaseBanner, reason: ReasonProtocolError},
		{name: "mixed codes", greeting: "220-mx\r\n250 ok\r\n",
			phase: PhaseBanner, reason: ReasonProtocolError},
		{name: "not SMTP", greeting: "HTTP/1.1 400 Bad Request\r\n",
			phase: PhaseBanner, reason: ReasonProtocolError},
		{name: "binary", greeting: "220 \x00\x01\x02\xff\r\n",
			phase: PhaseBanner, reason: ReasonProtocolError},
		{name: "code out of range", greeting: "620 what\r\n",
			phase: PhaseBanner, reason: ReasonProtocolError},
		{name: "bad separator", greeting: "220_mx\r\n",
			phase: PhaseBanner, reason: ReasonProtocolError},
		{name: "421 greeting", greeting: "421 4.3.2 Service shutting down\r\n",
			phase: PhaseBanner, reason: ReasonServiceUnavailable, code: 421},
		{name: "554 greeting", greeting: "554 5.7.1 No SMTP service here\r\n",
			phase: PhaseBanner, reason: ReasonServiceUnavailable, code: 554},
		{name: "other greeting", greeting: "250 hello?\r\n",
			phase: PhaseBanner, reason: ReasonUnexpectedReply, code: 250, quit: true},
		{name: "closed before greeting", greeting: smtptest.Hangup,
			phase: PhaseBanner, reason: ReasonConnectionClosed},
		{name: "half a line then close", greeting: "220 mx" + smtptest.Hangup,
			phase: PhaseBanner, reason: ReasonConnectionClosed},
		{name: "421 to EHLO", greeting: "220 mx\r\n", replies: map[string]string{"EHLO": "421 4.7.0 Too many connections\r\n"},
			phase: PhaseEHLO, reason: ReasonServiceUnavailable, code: 421},
		{name: "4xx to EHLO", greeting: "220 mx\r\n", replies: map[string]string{"EHLO": "451 4.3.0 try later\r\n"},
			phase: PhaseEHLO, reason: ReasonUnexpectedReply, code: 451, quit: true},
		{name: "HELO refused too", greeting: "220 mx\r\n", replies: map[string]string{"EHLO": "500 no\r\n", "HELO": "550 go away\r\n"},
			phase: PhaseEHLO, reason: ReasonUnexpectedReply, code: 550, quit: true},
		{name: "close after EHLO", greeting: "220 mx\r\n", replies: map[string]string{"EHLO": smtptest.Hangup},
			phase: PhaseEHLO, reason: ReasonConnectionClosed},
		{name: "challenge not base64", greeting: "220 mx\r\n", auth: true,
			replies: map[string]string{"EHLO": ehlo, "AUTH": "334 !!not*base64!!\r\n"},
			phase:   PhaseAuth, reason: ReasonProtocolError, code: 334},
		{name: "absurd challenge", greeting: "220 mx\r\n", auth: true,
			replies: map[string]string{"EHLO": ehlo, "AUTH": "334 " + strings.Repeat("QUFB", 1000) + "\r\n"},
			phase:   PhaseAuth, reason: ReasonProtocolError, code: 334},
		{name: "endless challenges", greeting: "220 mx\r\n", auth: true,
			replies: map[string]string{"EHLO": ehlo, "AUTH": "334 \r\n", "": "334 \r\n"},
			phase:   PhaseAuth, reason: ReasonProtocolError, code: 334},
		{name: "421 to AUTH", greeting: "220 mx\r\n", auth: true,
			replies: map[string]string{"EHLO": ehlo, "AUTH": "421 4.4.2 bye\r\n"},
			phase:   PhaseAuth, reason: ReasonServiceUnavailable, code: 421},
		{name: "250 to AUTH", greeting: "220 mx\r\n", auth: true,
			replies: map[string]string{"EHLO": ehlo, "AUTH": "250 fine\r\n"},
			phase:   PhaseAuth, reason: ReasonUnexpectedReply, code: 250, quit: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := smtptest.NewReplyServer(t, tc.greeting, tc.replies)
			spec := moduleSpec{TLS: "none", Timeout: "3s"}
			if tc.auth {
				spec.Mechanism, spec.AllowPlaintext = "PLAIN", true
			}
			r, _ := runProbe(t, target(srv), loadModule(t, spec))
			requireFailure(t, r, tc.phase, tc.reason)
			if got := phaseOf(t, r, tc.phase); !got.Ran || got.Code != tc.code {
				t.Errorf("phase %+v, want code %d", got, tc.code)
			}
			if q := phaseOf(t, r, PhaseQuit); q.Ran != tc.quit {
				t.Errorf("quit ran: %v, want %v", q.Ran, tc.quit)
			}
			if len(r.Transcript) > maxTranscriptLines {
				t.Errorf("transcript has %d lines", len(r.Transcript))
			}
			for _, l := range r.Transcript {
				if len(l.Text) > maxTranscriptLineLen+3 || strings.ContainsRune(l.Text, 0) {
					t.Errorf("transcript line not bounded or not printable: %q", shorten(l.Text, 80))
				}
			}
		})
	}
}

func TestProbeStartTLSRefusedOrInjected(t *testing.T) {
	t.Parallel()
	const ehlo = "250-mx\r\n250 STARTTLS\r\n"
	for _, tc := range []struct {
		name   string
		reply  string
		reason Reason
		code   int
	}{
		{"454", "454 4.7.0 TLS not available due to local problem\r\n", ReasonUnexpectedReply, 454},
		{"421", "421 4.3.0 bye\r\n", ReasonServiceUnavailable, 421},
		// A reply pipelined behind the 220 would be read as if it came
		// over TLS: the classic STARTTLS injection.
		{"injected", "220 go ahead\r\n250 injected\r\n", ReasonProtocolError, 220},
		{"no handshake", "220 go ahead\r\n", ReasonTLSHandshake, 220},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := smtptest.NewReplyServer(t, "220 mx\r\n", map[string]string{"EHLO": ehlo, "STARTTLS": tc.reply, "": smtptest.Hangup})
			r, _ := runProbe(t, target(srv), loadModule(t, moduleSpec{TLS: "starttls", Timeout: "3s"}))
			requireFailure(t, r, PhaseStartTLS, tc.reason)
			if got := phaseOf(t, r, PhaseStartTLS); got.Code != tc.code {
				t.Errorf("starttls code %d, want %d", got.Code, tc.code)
			}
		})
	}
}

// A server that ignores PLAIN's initial response and sends an empty 334
// gets the credentials again, and the exchange succeeds.
func TestProbePlainEmptyChallenge(t *testing.T) {
	t.Parallel()
	blob := base64.StdEncoding.EncodeToString([]byte("\x00" + testUser + "\x00" + testPassword))
	srv := smtptest.NewReplyServer(t, "220 mx\r\n", map[string]string{
		"EHLO": "250-mx\r\n250 AUTH PLAIN\r\n",
		"AUTH": "334 \r\n",
		blob:   "235 2.7.0 ok\r\n",
		"":     "535 5.7.8 wrong\r\n",
	})
	r, log := runProbe(t, target(srv), loadModule(t, moduleSpec{TLS: "none", AllowPlaintext: true, Mechanism: "PLAIN"}))
	requireSuccess(t, r, log)
	if !strings.Contains(transcriptText(r), "C: AUTH PLAIN <redacted>\nS: 334 \nC: <redacted>\nS: 235") {
		t.Errorf("transcript:\n%s", transcriptText(r))
	}
	assertNoSecrets(t, r, log, blob, testPassword)
}
