package integration

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// authMode is one way of reaching AUTH on the lab.
type authMode struct {
	name string
	tls  string
	port func(l *Lab) int
	// phases the module plans, in the order of the README.
	phases []string
	// extensions advertised per EHLO phase, as measured on the lab.
	extensions map[string][]string
}

// The lab's EHLO keywords common to every port; AUTH and STARTTLS depend on
// the port and the TLS state.
var labBaseExtensions = []string{
	"PIPELINING", "SIZE", "VRFY", "ETRN", "ENHANCEDSTATUSCODES", "8BITMIME", "DSN", "SMTPUTF8", "CHUNKING",
}

func withExtensions(extra ...string) []string {
	return append(slices.Clone(labBaseExtensions), extra...)
}

var authModes = []authMode{
	{
		name:       "plain",
		tls:        "none",
		port:       func(l *Lab) int { return l.PortPlain },
		phases:     []string{"connect", "banner", "ehlo", "auth", "quit"},
		extensions: map[string][]string{"ehlo": withExtensions("STARTTLS", "AUTH")},
	},
	{
		name:   "submission",
		tls:    "starttls",
		port:   func(l *Lab) int { return l.PortSubmission },
		phases: []string{"connect", "banner", "ehlo", "starttls", "ehlo_tls", "auth", "quit"},
		// Postfix offers AUTH on submission only once TLS is up, and no
		// second STARTTLS then.
		extensions: map[string][]string{"ehlo": withExtensions("STARTTLS"), "ehlo_tls": withExtensions("AUTH")},
	},
	{
		name:       "implicit",
		tls:        "implicit",
		port:       func(l *Lab) int { return l.PortImplicit },
		phases:     []string{"connect", "tls", "banner", "ehlo", "auth", "quit"},
		extensions: map[string][]string{"ehlo": withExtensions("AUTH")},
	},
}

// authMechanisms are the mechanisms tested on every mode; "auto" lets the
// exporter choose.
var authMechanisms = []string{"PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256", "auto"}

// passwordMechanisms are the mechanisms the exporter speaks with a
// password, strongest first: the order in which "auto" prefers them.
var passwordMechanisms = []string{"SCRAM-SHA-256", "SCRAM-SHA-1", "CRAM-MD5", "PLAIN", "LOGIN"}

// labMechanisms is what the lab's Dovecot offers.
var labMechanisms = []string{"PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256"}

func matrixModule(mode, mechanism string) string {
	return "auth_" + mode + "_" + strings.ReplaceAll(strings.ToLower(mechanism), "-", "_")
}

const (
	moduleSubmissionNoTLSAuto  = "auth_submission_cleartext_auto"
	moduleSubmissionNoTLSPlain = "auth_submission_cleartext_plain"
	modulePlaintextRefused     = "auth_plaintext_refused"
)

func wrongPasswordModule(mechanism string) string {
	return "auth_wrong_password_" + strings.ReplaceAll(strings.ToLower(mechanism), "-", "_")
}

func authModules(l *Lab, _ string) (map[string]moduleSpec, error) {
	mods := map[string]moduleSpec{}
	for _, mode := range authModes {
		for _, mech := range authMechanisms {
			mods[matrixModule(mode.name, mech)] = moduleSpec{
				TLS: mode.tls, Port: mode.port(l), Mechanism: mech, AllowPlaintext: mode.tls == "none",
			}
		}
	}
	for _, mech := range passwordMechanisms {
		// One account with one wrong password in every mechanism's module:
		// with a hold, the first refusal would answer for the others, and
		// which one logs in first depends on the order the tests run in.
		mods[wrongPasswordModule(mech)] = moduleSpec{
			TLS: "starttls", Port: l.PortSubmission, Mechanism: mech, Password: "not-" + l.Password,
			AuthFailureBackoff: "0s",
		}
	}
	// The submission port without STARTTLS, credentials allowed in clear:
	// Postfix offers no AUTH there before TLS.
	mods[moduleSubmissionNoTLSAuto] = moduleSpec{TLS: "none", Port: l.PortSubmission, Mechanism: "auto", AllowPlaintext: true}
	mods[moduleSubmissionNoTLSPlain] = moduleSpec{TLS: "none", Port: l.PortSubmission, Mechanism: "PLAIN", AllowPlaintext: true}
	// The plain port offers AUTH in clear; the module does not allow it.
	mods[modulePlaintextRefused] = moduleSpec{TLS: "none", Port: l.PortPlain, Mechanism: "PLAIN"}
	return mods, nil
}

// Every TLS mode with every mechanism logs in to the real Postfix + Dovecot,
// and the metrics say exactly what the server said and advertised.
func TestAuthEveryModeAndMechanism(t *testing.T) {
	t.Parallel()
	l, e := sharedExporter(t)
	leaf := readCert(t, l.Cert)
	for _, mode := range authModes {
		for _, mech := range authMechanisms {
			module := matrixModule(mode.name, mech)
			t.Run(mode.name+"/"+mech, func(t *testing.T) {
				t.Parallel()
				start := time.Now()
				m := e.probe(t, module, l.Target(mode.port(l)))
				m.Expect(t, "probe_success", nil, 1)
				m.Expect(t, "probe_smtp_auth_success", nil, 1)
				m.ExpectAbsent(t, "probe_smtp_failure_info")

				wantUsed := mech
				if mech == "auto" {
					wantUsed = strongestOffered(labMechanisms)
				}
				m.ExpectLabelValues(t, "probe_smtp_auth_mechanism_used_info", "mechanism", nil, wantUsed)
				m.ExpectLabelValues(t, "probe_smtp_auth_mechanism_info", "mechanism", nil, labMechanisms...)
				// A login is never a stored result: this one was run now.
				m.Expect(t, "probe_smtp_result_age_seconds", nil, 0)

				checkPhases(t, m, mode.phases)
				codes := map[string]float64{
					"connect": 0, "tls": 0, "banner": 220, "ehlo": 250, "starttls": 220, "ehlo_tls": 250, "auth": 235, "quit": 221,
				}
				for _, phase := range mode.phases {
					m.Expect(t, "probe_smtp_status_code", lbl("phase", phase), codes[phase])
				}
				// Postfix gives enhanced codes with STARTTLS, AUTH and QUIT
				// only: not in its greeting nor in its EHLO reply.
				enhanced := map[string]string{"auth": "2.7.0", "quit": "2.0.0"}
				if mode.tls == "starttls" {
					enhanced["starttls"] = "2.0.0"
				}
				var phasesWithEnhanced []string
				for phase, code := range enhanced {
					phasesWithEnhanced = append(phasesWithEnhanced, phase)
					m.Expect(t, "probe_smtp_enhanced_status_code_info", lbl("phase", phase, "code", code), 1)
				}
				m.ExpectLabelValues(t, "probe_smtp_enhanced_status_code_info", "phase", nil, phasesWithEnhanced...)

				var ehloPhases []string
				for phase, keywords := range mode.extensions {
					ehloPhases = append(ehloPhases, phase)
					m.ExpectLabelValues(t, "probe_smtp_extension_info", "extension", lbl("phase", phase), keywords...)
				}
				// No series for a phase that was not run or not planned.
				phasesSeen := slices.Compact(m.LabelValues("probe_smtp_extension_info", "phase", nil))
				if slices.Sort(ehloPhases); !slices.Equal(phasesSeen, ehloPhases) {
					t.Errorf("extension phases %q, want %q", phasesSeen, ehloPhases)
				}
				m.Expect(t, "probe_smtp_size_limit_bytes", nil, float64(l.SizeLimit))
				m.Expect(t, "probe_smtp_helo_fallback", nil, 0)
				m.Expect(t, "probe_ip_protocol", nil, 4)
				m.Expect(t, "probe_timeout_seconds", nil, 10)
				if d := m.MustValue(t, "probe_duration_seconds", nil); d <= 0 || d > time.Since(start).Seconds() {
					t.Errorf("probe_duration_seconds %v, want within the %v the request took", d, time.Since(start))
				}

				if mode.tls == "none" {
					m.Expect(t, "probe_smtp_tls", nil, 0)
					for _, name := range []string{"probe_tls_version_info", "probe_tls_cipher_info", "probe_ssl_earliest_cert_expiry",
						"probe_ssl_last_chain_expiry_timestamp_seconds", "probe_ssl_last_chain_info"} {
						m.ExpectAbsent(t, name)
					}
					return
				}
				m.Expect(t, "probe_smtp_tls", nil, 1)
				m.ExpectLabelValues(t, "probe_tls_version_info", "version", nil, "TLS 1.3")
				if ciphers := m.Labels("probe_tls_cipher_info"); len(ciphers) != 1 {
					t.Errorf("probe_tls_cipher_info: %v, want one series", ciphers)
				}
				checkPresentedCert(t, m, leaf)
				// The lab CA outlives the server certificate: the verified
				// chain expires with the leaf.
				m.Expect(t, "probe_ssl_last_chain_expiry_timestamp_seconds", nil, float64(leaf.NotAfter.Unix()))
				if !leaf.NotAfter.After(time.Now()) {
					t.Errorf("LAB_CERT expired on %v: restart the lab", leaf.NotAfter)
				}
			})
		}
	}
}

// strongestOffered is what "auto" picks, as the README documents: the first
// of passwordMechanisms the server offers.
func strongestOffered(offered []string) string {
	for _, m := range passwordMechanisms {
		if slices.Contains(offered, m) {
			return m
		}
	}
	return ""
}

// checkPhases checks that the probe reports exactly the planned phases, each
// with a duration, as the README documents.
func checkPhases(t *testing.T, m Metrics, planned []string) {
	t.Helper()
	m.ExpectLabelValues(t, "probe_smtp_status_code", "phase", nil, planned...)
	m.ExpectLabelValues(t, "probe_smtp_duration_seconds", "phase", nil, planned...)
	for _, phase := range planned {
		if d, ok := m.Value("probe_smtp_duration_seconds", lbl("phase", phase)); ok && d <= 0 {
			t.Errorf("probe_smtp_duration_seconds{phase=%q} = %v, want > 0 for a phase that ran", phase, d)
		}
	}
}

// A wrong password is refused by Dovecot through Postfix with 535 5.7.8, and
// the probe says so in phase auth, for every mechanism.
func TestWrongPassword(t *testing.T) {
	t.Parallel()
	l, e := sharedExporter(t)
	for _, mech := range passwordMechanisms {
		module := wrongPasswordModule(mech)
		t.Run(mech, func(t *testing.T) {
			t.Parallel()
			m := e.probe(t, module, l.Target(l.PortSubmission))
			m.Expect(t, "probe_success", nil, 0)
			m.Expect(t, "probe_smtp_auth_success", nil, 0)
			m.Expect(t, "probe_smtp_status_code", lbl("phase", "auth"), 535)
			m.Expect(t, "probe_smtp_enhanced_status_code_info", lbl("phase", "auth", "code", "5.7.8"), 1)
			m.ExpectLabelValues(t, "probe_smtp_failure_info", "reason", nil, "auth_rejected")
			m.Expect(t, "probe_smtp_failure_info", lbl("phase", "auth", "reason", "auth_rejected"), 1)
			m.ExpectLabelValues(t, "probe_smtp_auth_mechanism_used_info", "mechanism", nil, mech)
			// The session is still in order after a refused login: the
			// probe says goodbye.
			m.Expect(t, "probe_smtp_status_code", lbl("phase", "quit"), 221)
		})
	}
}

// Postfix's submission port advertises no AUTH before STARTTLS. A module
// that allows credentials in clear but does not use STARTTLS fails with
// auth_unavailable, without sending AUTH, whether it names a mechanism or
// lets the exporter choose.
func TestAuthBeforeStartTLS(t *testing.T) {
	t.Parallel()
	l, e := sharedExporter(t)
	for _, module := range []string{moduleSubmissionNoTLSAuto, moduleSubmissionNoTLSPlain} {
		t.Run(module, func(t *testing.T) {
			t.Parallel()
			m := e.probe(t, module, l.Target(l.PortSubmission))
			m.Expect(t, "probe_success", nil, 0)
			m.ExpectLabelValues(t, "probe_smtp_failure_info", "reason", nil, "auth_unavailable")
			m.Expect(t, "probe_smtp_failure_info", lbl("phase", "auth", "reason", "auth_unavailable"), 1)
			// No AUTH command, hence no reply code for the phase.
			m.Expect(t, "probe_smtp_status_code", lbl("phase", "auth"), 0)
			m.Expect(t, "probe_smtp_auth_success", nil, 0)
			m.ExpectAbsent(t, "probe_smtp_auth_mechanism_info")
			m.ExpectAbsent(t, "probe_smtp_auth_mechanism_used_info")
			m.ExpectLabelValues(t, "probe_smtp_extension_info", "extension", lbl("phase", "ehlo"), withExtensions("STARTTLS")...)
			m.Expect(t, "probe_smtp_tls", nil, 0)
			m.Expect(t, "probe_smtp_status_code", lbl("phase", "quit"), 221)

			transcript := e.CompleteTranscript(t, module)
			if !clientSent(transcript, "EHLO") {
				t.Fatalf("no EHLO in the logged transcript %v", transcript)
			}
			if clientSent(transcript, "AUTH") {
				t.Errorf("AUTH sent to a server that does not advertise it: %v", transcript)
			}
		})
	}
}

// The plain port advertises AUTH in clear; a module without
// allow_plaintext_auth refuses to send credentials there, and nothing of
// AUTH reaches the server.
func TestPlaintextAuthRefused(t *testing.T) {
	t.Parallel()
	l, e := sharedExporter(t)
	m := e.probe(t, modulePlaintextRefused, l.Target(l.PortPlain))
	m.Expect(t, "probe_success", nil, 0)
	m.ExpectLabelValues(t, "probe_smtp_failure_info", "reason", nil, "plaintext_auth_refused")
	m.Expect(t, "probe_smtp_failure_info", lbl("phase", "auth", "reason", "plaintext_auth_refused"), 1)
	m.Expect(t, "probe_smtp_status_code", lbl("phase", "auth"), 0)
	m.Expect(t, "probe_smtp_auth_success", nil, 0)
	m.ExpectAbsent(t, "probe_smtp_auth_mechanism_used_info")
	// The server did offer AUTH: the refusal is the exporter's.
	m.Expect(t, "probe_smtp_extension_info", lbl("phase", "ehlo", "extension", "AUTH"), 1)
	m.Expect(t, "probe_smtp_status_code", lbl("phase", "quit"), 221)

	transcript := e.CompleteTranscript(t, modulePlaintextRefused)
	if clientSent(transcript, "AUTH") {
		t.Errorf("AUTH sent in clear although allow_plaintext_auth is off: %v", transcript)
	}
	for _, line := range e.ModuleLog(modulePlaintextRefused) {
		for _, secret := range passwordForms(l.User, l.Password) {
			if strings.Contains(line, secret) {
				t.Fatal("the log of a refused plaintext AUTH holds the password")
			}
		}
	}
}
