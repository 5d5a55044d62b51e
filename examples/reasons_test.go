package examples

import (
	"regexp"
	"strings"
	"testing"

	"github.com/smtp-exporter/smtp_exporter/prober"
)

// templateReason finds a reason an annotation template compares with:
// {{ if eq $labels.reason "auth_rejected" }}.
var templateReason = regexp.MustCompile(`eq\s+\$labels\.reason\s+"([^"]*)"`)

// authPhaseReasons are the reasons particular to phase auth. The
// description of SMTPAuthenticationFailing explains each in words of its
// own; reasons any phase can give (timeout, connection_closed, ...) share
// its last sentence.
var authPhaseReasons = []prober.Reason{
	prober.ReasonAuthUnavailable,
	prober.ReasonMechanismUnavailable,
	prober.ReasonPlaintextAuthRefused,
	prober.ReasonAuthRejected,
	prober.ReasonAuthTemporaryFailure,
	prober.ReasonAuthThrottled,
	prober.ReasonAuthEncryptionRequired,
	prober.ReasonAuthMechanismTooWeak,
	prober.ReasonAuthBasicDisabled,
	prober.ReasonAuthDisabled,
	prober.ReasonAuthRefused,
	prober.ReasonServerSignature,
	prober.ReasonTokenRejected,
	prober.ReasonAuthUnexpectedlyAccepted,
}

// TestAuthAlertExplainsEveryReason checks the reasons the annotation
// templates compare with against the closed set of prober/result.go (a
// misspelt one would never match, and its sentence never show), and that
// SMTPAuthenticationFailing has a sentence for every reason of phase auth.
func TestAuthAlertExplainsEveryReason(t *testing.T) {
	known := closedSets(t, "../prober/result.go")["reason"]
	explained := map[string]bool{}
	for _, r := range loadRules(t) {
		for name, text := range r.Annotations {
			for _, m := range templateReason.FindAllStringSubmatch(text, -1) {
				if !known[m[1]] {
					t.Errorf("%s %s compares with reason %q, which is not a reason of prober/result.go", r.Alert, name, m[1])
				}
				if r.Alert == "SMTPAuthenticationFailing" && name == "description" {
					explained[m[1]] = true
				}
			}
		}
	}
	for _, reason := range authPhaseReasons {
		if !explained[string(reason)] {
			t.Errorf("the SMTPAuthenticationFailing description has no sentence for %s", reason)
		}
	}
	// A new auth_* reason must be added to authPhaseReasons (and explained)
	// unless it belongs to another phase.
	for reason := range known {
		if strings.HasPrefix(reason, "auth_") && reason != string(prober.ReasonAuthOfferedWithoutTLS) && !explained[reason] {
			t.Errorf("reason %s is not explained by SMTPAuthenticationFailing", reason)
		}
	}
}

// reasonsExplained are, for the failure alerts other than
// SMTPAuthenticationFailing, the reasons each can fire with that its
// description explains in a sentence of its own; any other reason gets the
// last sentence, which points at the probe log.
var reasonsExplained = map[string][]prober.Reason{
	"SMTPServerUnreachable": {
		prober.ReasonDNS, prober.ReasonConnectionRefused, prober.ReasonConnectionFailed, prober.ReasonTimeout,
		prober.ReasonConnectionClosed, prober.ReasonServiceUnavailable, prober.ReasonProtocolError,
	},
	"SMTPProbeMisconfigured": {
		prober.ReasonTargetNotAllowed, prober.ReasonTargetInvalid, prober.ReasonCredentials,
		prober.ReasonTokenUnavailable, prober.ReasonMessageUnavailable, prober.ReasonCertificate,
	},
	"SMTPTLSBroken": {prober.ReasonCertificate, prober.ReasonTLSVersion, prober.ReasonTLSHandshake},
	"SMTPCanaryNotAccepted": {
		prober.ReasonSenderRejected, prober.ReasonMessageTooLarge, prober.ReasonRecipientRejected,
		prober.ReasonRecipientDeferred, prober.ReasonMessageRejected, prober.ReasonMessageDeferred,
	},
	"SMTPProbeFailing": {
		prober.ReasonTimeout, prober.ReasonConnectionClosed, prober.ReasonUnexpectedReply, prober.ReasonProtocolError,
		prober.ReasonServiceUnavailable, prober.ReasonAuthOfferedWithoutTLS, prober.ReasonInsecureMechanism,
	},
}

// TestFailureAlertsExplainTheirReasons checks that each failure alert says
// what the reason that fired means, rather than listing every reason it
// covers.
func TestFailureAlertsExplainTheirReasons(t *testing.T) {
	descriptions := map[string]string{}
	for _, r := range loadRules(t) {
		descriptions[r.Alert] = r.Annotations["description"]
	}
	for alert, reasons := range reasonsExplained {
		explained := map[string]bool{}
		for _, m := range templateReason.FindAllStringSubmatch(descriptions[alert], -1) {
			explained[m[1]] = true
		}
		for _, reason := range reasons {
			if !explained[string(reason)] {
				t.Errorf("the %s description has no sentence for reason %s", alert, reason)
			}
		}
	}
}
