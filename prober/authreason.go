package prober

import (
	"errors"
	"regexp"
	"strings"
)

// The rules that name a failed AUTH by what the server meant. Whether a
// reason refuses the credentials or holds further logins is decided by
// Reason.RefusesCredentials and Reason.HoldsLogins alone.

// authThrottleText finds a server saying that it limits logins, in a 4xx or
// 5xx reply to AUTH: "454 4.7.0 Too many login attempts, please try again
// later" (Google), "too many AUTH commands", "rate limit exceeded",
// "throttled".
var authThrottleText = regexp.MustCompile(`(?i)too many|rate[ -]?limit|throttl`)

// authThrottle421Text is what makes a 421 to AUTH throttling rather than a
// server going away: a 421 there closes the session, and a text about
// attempts, rates, limits or coming back later says the closing is aimed at
// this client ("421 4.7.0 Try again later, closing connection"). Any other
// 421 stays service_unavailable, as in every other phase.
var authThrottle421Text = regexp.MustCompile(`(?i)too many|\brate\b|rate[ -]?limit|\blimit|throttl|try again later`)

// authEnhancedReasons are the enhanced status codes whose meaning decides a
// reply to AUTH whatever its basic code says ("550 5.7.8" is a refusal of
// the credentials, "535 5.7.139" SMTP AUTH switched off). A generic
// enhanced code (5.7.0, 5.7.1, 5.7.3, ...) leaves the decision to the basic
// code: "535 5.7.0" (sendmail) and "535 5.7.3" (Microsoft 365) are both
// refused credentials.
var authEnhancedReasons = map[string]Reason{
	"5.7.8":   ReasonAuthRejected,           // RFC 4954: authentication credentials invalid
	"5.7.9":   ReasonAuthMechanismTooWeak,   // RFC 4954; Google: application-specific password required
	"5.7.11":  ReasonAuthEncryptionRequired, // RFC 4954: encryption required for the mechanism
	"5.7.30":  ReasonAuthBasicDisabled,      // Microsoft 365: basic authentication not supported for submission
	"5.7.139": ReasonAuthDisabled,           // Microsoft 365: SMTP AUTH disabled for the tenant or mailbox
}

// authCodeReasons are the basic reply codes with a meaning of their own.
// Another 4xx is auth_temporary_failure, another 5xx auth_refused.
var authCodeReasons = map[int]Reason{
	500: ReasonUnexpectedReply, // syntax and sequence errors: nothing was judged
	501: ReasonUnexpectedReply,
	502: ReasonUnexpectedReply,
	503: ReasonUnexpectedReply,
	504: ReasonMechanismUnavailable,
	534: ReasonAuthMechanismTooWeak,
	535: ReasonAuthRejected,
	538: ReasonAuthEncryptionRequired,
}

// scramErrorReasons map the server-error of a SCRAM exchange (RFC 5802
// section 7, "e=..."). Only a failed proof or an unknown user judges the
// credentials; no-resources is the server's trouble; the other values
// (encodings, channel binding, extensions, other-error, and any unknown
// value) refuse the exchange without saying anything of the credentials.
var scramErrorReasons = map[string]Reason{
	"invalid-proof": ReasonAuthRejected,
	"unknown-user":  ReasonAuthRejected,
	"no-resources":  ReasonAuthTemporaryFailure,
}

// scramErrorReason is the verdict of a SCRAM server-error.
func scramErrorReason(value string) Reason {
	if r, ok := scramErrorReasons[value]; ok {
		return r
	}
	return ReasonAuthRefused
}

// oauthStatusReasons map the status of the JSON error an XOAUTH2 or
// OAUTHBEARER server sends before its final reply: Google sends HTTP
// statuses ("401"), RFC 7628 the RFC 6750 error codes ("invalid_token").
// Only an invalid token is a refusal of the credentials; another status
// ("400", "invalid_request", "403", "insufficient_scope") refuses the
// login for a reason of the request or of the token's scope.
var oauthStatusReasons = map[string]Reason{
	"401":           ReasonTokenRejected,
	"invalid_token": ReasonTokenRejected,
}

// oauthStatusReason is the verdict of an OAuth JSON error; "" when the
// error named no status, which leaves the decision to the final reply.
func oauthStatusReason(status string) Reason {
	if status == "" {
		return ""
	}
	if r, ok := oauthStatusReasons[strings.ToLower(status)]; ok {
		return r
	}
	return ReasonAuthRefused
}

// authFailureReason classifies a failed AUTH exchange from its final reply
// (rep, when err carries a *ReplyError for it), the mechanism's own verdict
// (a SCRAM server-error, an OAuth JSON error, a server signature that does
// not verify) and whether a bearer token was sent. In order:
//
//  1. No failure reply: the mechanism's verdict, else the I/O error's
//     reason (timeout, connection closed, protocol error). A reply below
//     400 where a 235 or 334 belongs is unexpected_reply.
//  2. Throttling: a 421 whose text says too many, a rate, a limit,
//     throttled or try again later; any other 421 is service_unavailable,
//     as in every phase. A 4xx or 5xx whose text says too many, rate limit
//     or throttled.
//  3. After a SCRAM server-error or an OAuth JSON error, a 5xx takes the
//     mechanism's verdict, which is more precise than the final reply
//     (Google ends every refused XOAUTH2 exchange with 535 5.7.8).
//  4. The enhanced code, when it has a meaning of its own
//     (authEnhancedReasons), wins over the basic code; then the basic code
//     (authCodeReasons); any other 4xx is auth_temporary_failure, any
//     other 5xx auth_refused, a policy refusal.
//
// A refusal of the credentials is token_rejected when a bearer token was
// sent.
func (p *probe) authFailureReason(err error, rep *Reply) Reason {
	var verdict Reason
	var sf *saslFailure
	if errors.As(err, &sf) {
		verdict = sf.reason
	}
	var re *ReplyError
	switch {
	case rep == nil || !errors.As(err, &re):
		if verdict != "" {
			return verdict
		}
		return p.ioReason(err)
	case rep.Code < 400:
		return ReasonUnexpectedReply
	}
	reason := authReplyReason(rep, verdict)
	if p.token != "" && reason == ReasonAuthRejected {
		return ReasonTokenRejected
	}
	return reason
}

// authReplyReason is steps 2 to 4 of authFailureReason, for a 4xx or 5xx.
func authReplyReason(rep *Reply, verdict Reason) Reason {
	text := strings.Join(rep.Lines, " ")
	switch {
	case rep.Code == 421 && authThrottle421Text.MatchString(text):
		return ReasonAuthThrottled
	case rep.Code == 421:
		return ReasonServiceUnavailable
	case authThrottleText.MatchString(text):
		return ReasonAuthThrottled
	case verdict != "" && rep.Code >= 500:
		return verdict
	}
	if r, ok := authEnhancedReasons[rep.Enhanced]; ok {
		return r
	}
	if r, ok := authCodeReasons[rep.Code]; ok {
		return r
	}
	if rep.Code < 500 {
		return ReasonAuthTemporaryFailure
	}
	return ReasonAuthRefused
}
