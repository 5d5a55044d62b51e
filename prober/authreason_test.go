package prober

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
)

// authReplies are final replies to AUTH as servers send them, each with
// what it means. credentials marks a refusal of the credentials (what
// expect_auth_rejected expects); holds a reply after which logins wait for
// auth_failure_backoff.
var authReplies = []struct {
	name        string
	reply       string // raw, CRLF between the lines of a multi-line reply
	reason      Reason
	code        int
	enhanced    string
	credentials bool
	holds       bool
}{
	// Refused credentials.
	{name: "RFC 4954 invalid credentials", reply: "535 5.7.8 Authentication credentials invalid",
		reason: ReasonAuthRejected, code: 535, enhanced: "5.7.8", credentials: true, holds: true},
	{name: "Postfix and Dovecot", reply: "535 5.7.8 Error: authentication failed: authentication failure",
		reason: ReasonAuthRejected, code: 535, enhanced: "5.7.8", credentials: true, holds: true},
	{name: "Google, multi-line", reply: "535-5.7.8 Username and Password not accepted. For more information, go to\r\n" +
		"535 5.7.8  https://support.google.com/mail/?p=BadCredentials a640c23a62f3a-ab7-gsmtp",
		reason: ReasonAuthRejected, code: 535, enhanced: "5.7.8", credentials: true, holds: true},
	{name: "Microsoft 365 wrong password", reply: "535 5.7.3 Authentication unsuccessful",
		reason: ReasonAuthRejected, code: 535, enhanced: "5.7.3", credentials: true, holds: true},
	{name: "sendmail", reply: "535 5.7.0 authentication failed",
		reason: ReasonAuthRejected, code: 535, enhanced: "5.7.0", credentials: true, holds: true},
	{name: "Exim, no enhanced code", reply: "535 Incorrect authentication data",
		reason: ReasonAuthRejected, code: 535, credentials: true, holds: true},
	{name: "5.7.8 wins over 550", reply: "550 5.7.8 Invalid credentials for relay",
		reason: ReasonAuthRejected, code: 550, enhanced: "5.7.8", credentials: true, holds: true},

	// Temporary failures and throttling.
	{name: "RFC 4954 temporary failure", reply: "454 4.7.0 Temporary authentication failure",
		reason: ReasonAuthTemporaryFailure, code: 454, enhanced: "4.7.0", holds: true},
	{name: "RFC 4954 password transition", reply: "432 4.7.12 A password transition is needed",
		reason: ReasonAuthTemporaryFailure, code: 432, enhanced: "4.7.12", holds: true},
	{name: "try again later in a 4xx other than 421", reply: "451 4.3.0 Temporary server error. Please try again later",
		reason: ReasonAuthTemporaryFailure, code: 451, enhanced: "4.3.0", holds: true},
	{name: "Google too many login attempts", reply: "454 4.7.0 Too many login attempts, please try again later. d9443c01a7336-21d-gsmtp",
		reason: ReasonAuthThrottled, code: 454, enhanced: "4.7.0", holds: true},
	{name: "too many AUTH commands", reply: "450 4.7.1 Error: too many AUTH commands from 192.0.2.1",
		reason: ReasonAuthThrottled, code: 450, enhanced: "4.7.1", holds: true},
	{name: "rate limit in a 5xx", reply: "550 5.7.1 Authentication rate limit exceeded",
		reason: ReasonAuthThrottled, code: 550, enhanced: "5.7.1", holds: true},
	{name: "throttled, multi-line", reply: "535-5.7.0 Login refused.\r\n535 5.7.0 Account throttled, wait before retrying",
		reason: ReasonAuthThrottled, code: 535, enhanced: "5.7.0", holds: true},
	{name: "421 try again later", reply: "421 4.7.0 Try again later, closing connection.",
		reason: ReasonAuthThrottled, code: 421, enhanced: "4.7.0", holds: true},
	{name: "421 connection limit", reply: "421 4.7.0 Connection limit reached for this account",
		reason: ReasonAuthThrottled, code: 421, enhanced: "4.7.0", holds: true},
	{name: "421 shutting down", reply: "421 4.3.2 Service shutting down, closing transmission channel",
		reason: ReasonServiceUnavailable, code: 421, enhanced: "4.3.2"},

	// Refusals that say nothing of the credentials.
	{name: "RFC 4954 encryption required", reply: "538 5.7.11 Encryption required for requested authentication mechanism",
		reason: ReasonAuthEncryptionRequired, code: 538, enhanced: "5.7.11"},
	{name: "538 without enhanced code", reply: "538 Encryption required",
		reason: ReasonAuthEncryptionRequired, code: 538},
	{name: "RFC 4954 mechanism too weak", reply: "534 5.7.9 Authentication mechanism is too weak",
		reason: ReasonAuthMechanismTooWeak, code: 534, enhanced: "5.7.9"},
	{name: "Google application-specific password, multi-line", reply: "534-5.7.9 Application-specific password required. For more information, go to\r\n" +
		"534 5.7.9  https://support.google.com/mail/?p=InvalidSecondFactor 5b1f17b1804b1-43b-gsmtp",
		reason: ReasonAuthMechanismTooWeak, code: 534, enhanced: "5.7.9"},
	{name: "5.7.9 wins over 535", reply: "535 5.7.9 Please log in with your web browser",
		reason: ReasonAuthMechanismTooWeak, code: 535, enhanced: "5.7.9"},
	{name: "5.7.11 wins over 535", reply: "535 5.7.11 Encryption required",
		reason: ReasonAuthEncryptionRequired, code: 535, enhanced: "5.7.11"},
	{name: "Microsoft 365 basic authentication off", reply: "550 5.7.30 Basic authentication is not supported for Client Submission.",
		reason: ReasonAuthBasicDisabled, code: 550, enhanced: "5.7.30"},
	{name: "Microsoft 365 SMTP AUTH off for the tenant", reply: "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information.",
		reason: ReasonAuthDisabled, code: 535, enhanced: "5.7.139"},
	{name: "Microsoft 365 security defaults", reply: "535 5.7.139 Authentication unsuccessful, user is locked by your organization's security defaults policy. Contact your administrator.",
		reason: ReasonAuthDisabled, code: 535, enhanced: "5.7.139"},
	{name: "Microsoft 365 conditional access, 550", reply: "550 5.7.139 Authentication unsuccessful, the request did not meet the criteria to be authenticated successfully. Contact your administrator.",
		reason: ReasonAuthDisabled, code: 550, enhanced: "5.7.139"},
	{name: "policy refusal", reply: "554 5.7.1 Authentication not permitted from this network",
		reason: ReasonAuthRefused, code: 554, enhanced: "5.7.1"},
	{name: "530", reply: "530 5.7.0 Must issue a STARTTLS command first",
		reason: ReasonAuthRefused, code: 530, enhanced: "5.7.0"},
	{name: "bare 550", reply: "550 Access denied",
		reason: ReasonAuthRefused, code: 550},
	{name: "504 after the mechanism was offered", reply: "504 5.5.4 Unrecognized authentication type",
		reason: ReasonMechanismUnavailable, code: 504, enhanced: "5.5.4"},
	{name: "syntax error", reply: "501 5.5.2 Cannot decode response",
		reason: ReasonUnexpectedReply, code: 501, enhanced: "5.5.2"},
}

// Every reply runs through a real session twice: a plain probe fails with
// the reply's reason, code and enhanced code; an expect_auth_rejected probe
// succeeds only for a refusal of the credentials and otherwise fails with
// the same reason.
func TestAuthReplyReasons(t *testing.T) {
	t.Parallel()
	caFile := smtptest.Certs().WriteCAFile(t)
	for _, tc := range authReplies {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := tc.reason.RefusesCredentials(); got != tc.credentials {
				t.Errorf("%s refuses credentials: %v, want %v", tc.reason, got, tc.credentials)
			}
			if got := tc.reason.HoldsLogins(); got != tc.holds {
				t.Errorf("%s holds logins: %v, want %v", tc.reason, got, tc.holds)
			}
			srv := smtptest.NewServer(t, smtptest.Options{TLS: smtptest.StartTLS, Username: testUser, Password: testPassword, AuthReply: tc.reply})
			closes := tc.code == 421

			r, log := runProbe(t, target(srv), loadModule(t, moduleSpec{TLS: "starttls", CAFile: caFile, Mechanism: "PLAIN"}))
			requireFailure(t, r, PhaseAuth, tc.reason)
			if auth := phaseOf(t, r, PhaseAuth); !auth.Ran || auth.Code != tc.code || auth.Enhanced != tc.enhanced {
				t.Errorf("auth phase %+v, want code %d enhanced %q", auth, tc.code, tc.enhanced)
			}
			var re *ReplyError
			if !errors.As(r.Failure.Err, &re) || re.Code != tc.code || re.Enhanced != tc.enhanced || re.Command != "AUTH" {
				t.Errorf("failure error %v does not carry the reply", r.Failure.Err)
			}
			if !r.AuthAttempted || r.AuthSuccess {
				t.Errorf("AuthAttempted %v AuthSuccess %v, want a refused attempt", r.AuthAttempted, r.AuthSuccess)
			}
			// A 421 closes the session: no QUIT. Any other refusal leaves
			// it in order.
			if q := phaseOf(t, r, PhaseQuit); q.Ran == closes || (!closes && q.Code != 221) {
				t.Errorf("quit %+v after %d", q, tc.code)
			}
			if strings.Contains(log, testPassword) || strings.Contains(transcriptText(r), testPassword) {
				t.Error("password leaked")
			}

			m := mustModule(t, fmt.Sprintf("modules:\n  m:\n    smtp:\n      tls: starttls\n      preferred_ip_protocol: ip4\n      tls_config: {ca_file: %q}\n"+
				"      auth: {mechanism: PLAIN, username: %s, password: %q}\n      allowed_targets: [127.0.0.1]\n      expect_auth_rejected: true\n",
				caFile, testUser, "disabled-account"))
			r, log = runProbe(t, target(srv), m)
			if auth := phaseOf(t, r, PhaseAuth); auth.Code != tc.code || auth.Enhanced != tc.enhanced {
				t.Errorf("expect_auth_rejected: auth phase %+v, want code %d enhanced %q", auth, tc.code, tc.enhanced)
			}
			if tc.credentials {
				requireSuccess(t, r, log)
				if !strings.Contains(transcriptText(r), "as expect_auth_rejected requires") {
					t.Errorf("transcript does not say the refusal was expected:\n%s", transcriptText(r))
				}
			} else {
				requireFailure(t, r, PhaseAuth, tc.reason)
			}

			srv.Close()
			if a := srv.Auths(); len(a) != 2 {
				t.Errorf("server saw %d AUTH exchanges, want 2", len(a))
			}
			if srv.SawCommand("QUIT") == closes {
				t.Errorf("server saw QUIT: %v, after %d", !closes, tc.code)
			}
		})
	}
}
