package prober

import (
	"net/netip"
	"time"
)

// Phase names one step of the SMTP conversation. The set is closed: these
// values become metric labels.
type Phase string

// The phases, in the order a conversation runs them.
const (
	// PhaseSetup covers everything before the first packet: target parsing,
	// allowed_targets, DNS, reading credentials and attachments.
	PhaseSetup    Phase = "setup"
	PhaseConnect  Phase = "connect"
	PhaseTLS      Phase = "tls" // implicit TLS handshake
	PhaseBanner   Phase = "banner"
	PhaseEHLO     Phase = "ehlo"
	PhaseStartTLS Phase = "starttls" // command and handshake
	PhaseEHLOTLS  Phase = "ehlo_tls"
	PhaseAuth     Phase = "auth"
	PhaseMail     Phase = "mail"
	PhaseRcpt     Phase = "rcpt"
	PhaseData     Phase = "data" // from the 354 to the final reply
	PhaseRset     Phase = "rset"
	PhaseQuit     Phase = "quit"
)

// Reason says why a probe failed. The set is closed and documented in the
// README: these values become metric labels and alert descriptions.
type Reason string

// Failure reasons.
const (
	ReasonTimeout              Reason = "timeout"
	ReasonTargetInvalid        Reason = "target_invalid"
	ReasonTargetNotAllowed     Reason = "target_not_allowed"
	ReasonDNS                  Reason = "dns_failure"
	ReasonCredentials          Reason = "credentials_unavailable"
	ReasonMessageUnavailable   Reason = "message_unavailable"
	ReasonConnectionRefused    Reason = "connection_refused"
	ReasonConnectionFailed     Reason = "connection_failed"
	ReasonConnectionClosed     Reason = "connection_closed"
	ReasonTLSHandshake         Reason = "tls_handshake"
	ReasonCertificate          Reason = "certificate"
	ReasonProtocolError        Reason = "protocol_error" // malformed, over-long or binary replies
	ReasonServiceUnavailable   Reason = "service_unavailable"
	ReasonUnexpectedReply      Reason = "unexpected_reply"
	ReasonStartTLSUnavailable  Reason = "starttls_unavailable"
	ReasonAuthUnavailable      Reason = "auth_unavailable" // no AUTH advertised at all
	ReasonMechanismUnavailable Reason = "mechanism_unavailable"
	ReasonPlaintextAuthRefused Reason = "plaintext_auth_refused"
	// ReasonAuthRejected: the server checked the credentials and refused
	// them (535, 5.7.8, SCRAM e=invalid-proof).
	ReasonAuthRejected Reason = "auth_rejected"
	// ReasonAuthTemporaryFailure: a 4xx to AUTH (454 4.7.0): the server
	// could not check the credentials now.
	ReasonAuthTemporaryFailure Reason = "auth_temporary_failure"
	// ReasonAuthThrottled: the server is limiting logins (421 during AUTH,
	// or a reply saying too many attempts or a rate limit).
	ReasonAuthThrottled Reason = "auth_throttled"
	// ReasonAuthEncryptionRequired: 538 or 5.7.11, the mechanism needs an
	// encrypted session (RFC 4954).
	ReasonAuthEncryptionRequired Reason = "auth_encryption_required"
	// ReasonAuthMechanismTooWeak: 534 or 5.7.9, the server wants a stronger
	// mechanism (or, at Google, an application password).
	ReasonAuthMechanismTooWeak Reason = "auth_mechanism_too_weak"
	// ReasonAuthBasicDisabled: 5.7.30, basic (password) authentication is
	// disabled for submission (Microsoft 365): the module must use OAuth.
	ReasonAuthBasicDisabled Reason = "auth_basic_disabled"
	// ReasonAuthDisabled: 5.7.139, SMTP AUTH is disabled for the tenant or
	// the mailbox (Microsoft 365).
	ReasonAuthDisabled Reason = "auth_disabled"
	// ReasonAuthRefused: any other 5xx to AUTH, a policy refusal that says
	// nothing about the credentials.
	ReasonAuthRefused       Reason = "auth_refused"
	ReasonSenderRejected    Reason = "sender_rejected"
	ReasonMessageTooLarge   Reason = "message_too_large"
	ReasonRecipientRejected Reason = "recipient_rejected"
	ReasonRecipientDeferred Reason = "recipient_deferred"
	ReasonMessageRejected   Reason = "message_rejected"
	ReasonMessageDeferred   Reason = "message_deferred"

	// Modern authentication.
	ReasonServerSignature  Reason = "server_signature"  // SCRAM server did not prove it knows the password
	ReasonTokenRejected    Reason = "token_rejected"    // the server refused the OAuth bearer token
	ReasonTokenUnavailable Reason = "token_unavailable" // no token: token_file or token endpoint failed

	// Security posture checks.
	ReasonAuthOfferedWithoutTLS    Reason = "auth_offered_without_tls"
	ReasonInsecureMechanism        Reason = "insecure_mechanism_offered"
	ReasonTLSVersion               Reason = "tls_version" // no TLS version within min_version..max_version
	ReasonAuthUnexpectedlyAccepted Reason = "auth_unexpectedly_accepted"
)

// RefusesCredentials reports a reason meaning that the server checked the
// credentials and refused them: the failure that, repeated, locks an
// account, and the one expect_auth_rejected expects.
func (r Reason) RefusesCredentials() bool {
	return r == ReasonAuthRejected || r == ReasonTokenRejected
}

// HoldsLogins reports a reason after which further logins of the account
// wait for auth_failure_backoff: a refusal of the credentials, or the server
// asking for fewer attempts.
func (r Reason) HoldsLogins() bool {
	return r.RefusesCredentials() || r == ReasonAuthThrottled || r == ReasonAuthTemporaryFailure
}

// PhaseResult is what one phase of the conversation did.
type PhaseResult struct {
	Phase Phase
	// Ran is false for a planned phase the probe never reached.
	Ran      bool
	Duration time.Duration
	// Code is the reply code that ended the phase, 0 when there was none.
	Code int
	// Enhanced is the RFC 3463 enhanced status code as given ("5.7.8"), or "".
	Enhanced string
}

// Failure describes why a probe failed.
type Failure struct {
	Phase  Phase
	Reason Reason
	// Err carries the detail for the probe log. It never contains a secret.
	Err error
}

// Direction tells who sent a transcript line.
type Direction string

// Transcript directions.
const (
	Client Direction = "C"
	Server Direction = "S"
	Note   Direction = "*" // a note of ours, such as "TLS handshake done"
)

// TranscriptLine is one line of the SMTP conversation. Client lines that
// carry credentials are replaced by a marker before they are stored.
type TranscriptLine struct {
	At   time.Duration // since the probe started
	Dir  Direction
	Text string
}

// Result is everything a probe found out. It is a plain value: the collector
// turns it into metrics, the history keeps it for the pages.
type Result struct {
	Success  bool
	Failure  *Failure // nil on success
	Duration time.Duration

	// Target as given and what it resolved to.
	Host          string
	Port          int
	DNSLookupTime time.Duration
	// IP is the address dialled, invalid when the probe stopped before.
	IP netip.Addr

	// Phases lists every phase the module plans, in conversation order,
	// whether it ran or not.
	Phases []PhaseResult

	HELOFallback bool
	// Extensions advertised in reply to EHLO (before TLS) and to the EHLO
	// after STARTTLS or on an implicit TLS session, keywords upper-cased.
	Extensions map[Phase][]string
	// SizeLimit is the SIZE the server advertised on the session AUTH ran on
	// (or the last EHLO); -1 when not advertised, 0 for "no limit".
	SizeLimit int64

	// TLS describes the encrypted session, nil when there was none.
	TLS *TLSSession
	// Certificates is the chain the server presented, leaf first. It is set
	// also when verification failed (TLS is nil then), so that an expired
	// or untrusted certificate can still be reported.
	Certificates []Certificate

	AuthAttempted bool
	AuthSuccess   bool
	// AuthMechanisms is what the server advertised on the session AUTH ran
	// on, upper-cased.
	AuthMechanisms []string
	// AuthMechanism is the mechanism used, "" when AUTH did not run.
	AuthMechanism string

	RecipientsAccepted int
	MessageAccepted    bool
	// QueueID is the server's id for the canary message, for logs only.
	QueueID string
	// MessageID is the Message-ID header of the canary, for logs only.
	MessageID string
	// AcceptedAt is when the 250 to the end of DATA arrived: where a
	// delivery's latency starts. Zero unless MessageAccepted.
	AcceptedAt time.Time

	Transcript []TranscriptLine
}

// Phase returns the result of one phase, and false if it was not planned.
func (r *Result) Phase(p Phase) (PhaseResult, bool) {
	for _, pr := range r.Phases {
		if pr.Phase == p {
			return pr, true
		}
	}
	return PhaseResult{}, false
}
