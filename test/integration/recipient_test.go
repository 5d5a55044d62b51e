package integration

import "testing"

const (
	moduleRcptOtherDomain     = "rcpt_other_domain"
	moduleRcptUnknownUser     = "rcpt_unknown_user"
	moduleRcptRelayDenied     = "rcpt_relay_unauthenticated"
	moduleRcptOneOfTwoRefused = "rcpt_one_of_two_refused"
)

// otherDomainRecipient is outside the lab's domain; the lab delivers
// nothing off the host whatever it answers.
const otherDomainRecipient = "someone@example.org"

func recipientModules(l *Lab, _ string) (map[string]moduleSpec, error) {
	unknown := "nobody@" + l.Domain
	submission := func(to ...string) moduleSpec {
		return moduleSpec{TLS: "starttls", Port: l.PortSubmission, Mechanism: "PLAIN", Mail: &mailSpec{To: to}}
	}
	return map[string]moduleSpec{
		moduleRcptOtherDomain:     submission(otherDomainRecipient),
		moduleRcptUnknownUser:     submission(unknown),
		moduleRcptOneOfTwoRefused: submission(l.Canary, unknown),
		// Without AUTH the plain port relays for nobody.
		moduleRcptRelayDenied: {TLS: "none", Port: l.PortPlain, Mail: &mailSpec{To: []string{otherDomainRecipient}}},
	}, nil
}

// Recipients Postfix refuses fail the probe in phase rcpt with the code
// Postfix gave, and no message is sent.
func TestRecipientRejected(t *testing.T) {
	t.Parallel()
	l, e := sharedExporter(t)
	for _, tc := range []struct {
		module   string
		port     int
		code     float64
		enhanced string
		accepted float64
	}{
		// Authenticated, so relaying is allowed, but the lab has no
		// transport for other domains and smtpd_reject_unlisted_recipient
		// refuses the address.
		{moduleRcptOtherDomain, l.PortSubmission, 550, "5.1.1", 0},
		{moduleRcptUnknownUser, l.PortSubmission, 550, "5.1.1", 0},
		{moduleRcptRelayDenied, l.PortPlain, 554, "5.7.1", 0},
		// Every recipient is tried; the phase reports the worst reply.
		{moduleRcptOneOfTwoRefused, l.PortSubmission, 550, "5.1.1", 1},
	} {
		t.Run(tc.module, func(t *testing.T) {
			t.Parallel()
			m := e.probe(t, tc.module, l.Target(tc.port))
			m.Expect(t, "probe_success", nil, 0)
			m.ExpectLabelValues(t, "probe_smtp_failure_info", "reason", nil, "recipient_rejected")
			m.Expect(t, "probe_smtp_failure_info", lbl("phase", "rcpt", "reason", "recipient_rejected"), 1)
			m.Expect(t, "probe_smtp_status_code", lbl("phase", "rcpt"), tc.code)
			m.Expect(t, "probe_smtp_enhanced_status_code_info", lbl("phase", "rcpt", "code", tc.enhanced), 1)
			m.Expect(t, "probe_smtp_recipients_accepted", nil, tc.accepted)
			m.Expect(t, "probe_smtp_status_code", lbl("phase", "mail"), 250)
			m.Expect(t, "probe_smtp_status_code", lbl("phase", "data"), 0)
			m.Expect(t, "probe_smtp_message_accepted", nil, 0)
			m.Expect(t, "probe_smtp_status_code", lbl("phase", "quit"), 221)
			if transcript := e.CompleteTranscript(t, tc.module); clientSent(transcript, "DATA") {
				t.Errorf("DATA sent after a refused recipient: %v", transcript)
			}
		})
	}
}
