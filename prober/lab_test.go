package prober

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/smtp-exporter/smtp_exporter/config"
)

// The prober against the real Postfix + Dovecot lab of test/lab, whose
// Dovecot offers SCRAM-SHA-1 and SCRAM-SHA-256: the proof that our SCRAM
// client interoperates with a server we did not write. Skipped unless
// SMTP_EXPORTER_LAB names the lab's env file:
//
//	bash test/lab/start.sh
//	SMTP_EXPORTER_LAB=/tmp/smtp-exporter-lab/env go test -run Lab ./prober/

// lab is what the lab's env file says.
type lab map[string]string

func requireLab(t *testing.T) lab {
	t.Helper()
	path := os.Getenv("SMTP_EXPORTER_LAB")
	if path == "" {
		t.Skip("SMTP_EXPORTER_LAB is not set: start test/lab and point it at the env file")
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("SMTP_EXPORTER_LAB: %v", err)
	}
	defer f.Close()
	l := lab{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), "=")
		if ok {
			l[key] = strings.Trim(value, "'")
		}
	}
	for _, key := range []string{"LAB_HOST", "LAB_PORT_PLAIN", "LAB_PORT_SUBMISSION", "LAB_CA", "LAB_USER", "LAB_PASSWORD"} {
		if l[key] == "" {
			t.Fatalf("lab env file %s lacks %s", path, key)
		}
	}
	if host := l["LAB_HOST"]; host != "127.0.0.1" && host != "::1" {
		t.Fatalf("lab host %s is not loopback", host)
	}
	return l
}

func (l lab) target(portKey string) string {
	return l["LAB_HOST"] + ":" + l[portKey]
}

// module is a lab module with the given smtp lines besides the
// connection settings.
func (l lab) module(t *testing.T, tls string, lines ...string) config.Module {
	t.Helper()
	yaml := fmt.Sprintf("modules:\n  lab:\n    timeout: 10s\n    smtp:\n      tls: %s\n      preferred_ip_protocol: ip4\n      tls_config: {ca_file: %q}\n      allowed_targets: [%q]\n",
		tls, l["LAB_CA"], l["LAB_HOST"])
	for _, line := range lines {
		yaml += "      " + line + "\n"
	}
	return mustModule(t, yaml)
}

func (l lab) auth(mechanism, password string) string {
	return fmt.Sprintf("auth: {mechanism: %s, username: %q, password: %q}", mechanism, l["LAB_USER"], password)
}

func TestLabSCRAM(t *testing.T) {
	l := requireLab(t)
	target := l.target("LAB_PORT_SUBMISSION")
	for _, tc := range []struct{ configured, want string }{
		{"SCRAM-SHA-256", "SCRAM-SHA-256"},
		{"SCRAM-SHA-1", "SCRAM-SHA-1"},
		{"auto", "SCRAM-SHA-256"},
	} {
		t.Run(tc.configured, func(t *testing.T) {
			m := l.module(t, "starttls", l.auth(tc.configured, l["LAB_PASSWORD"]))
			r, log := runProbe(t, target, m)
			requireSuccess(t, r, log)
			if r.AuthMechanism != tc.want || phaseOf(t, r, PhaseAuth).Code != 235 {
				t.Errorf("mechanism %s, auth code %d; want %s and 235", r.AuthMechanism, phaseOf(t, r, PhaseAuth).Code, tc.want)
			}
			// Dovecot sent its signature and we checked it: the exchange
			// had the server-final challenge and our empty answer.
			transcript := transcriptText(r)
			if strings.Count(transcript, "S: 334 ") != 2 || strings.Count(transcript, "C: "+Redacted+"\n") != 2 {
				t.Errorf("not a full SCRAM exchange:\n%s", transcript)
			}
			assertNoSecrets(t, r, log, l["LAB_PASSWORD"])
		})
	}

	t.Run("wrong password", func(t *testing.T) {
		m := l.module(t, "starttls", l.auth("SCRAM-SHA-256", "not-"+l["LAB_PASSWORD"]))
		r, log := runProbe(t, target, m)
		requireFailure(t, r, PhaseAuth, ReasonAuthRejected)
		if auth := phaseOf(t, r, PhaseAuth); auth.Code != 535 || auth.Enhanced != "5.7.8" {
			t.Errorf("auth phase %+v, want 535 5.7.8", auth)
		}
		assertNoSecrets(t, r, log, l["LAB_PASSWORD"], "not-"+l["LAB_PASSWORD"])
	})

	// How long a SCRAM-SHA-256 login takes here, against PLAIN on the same
	// port: the key derivation (4096 iterations on each side) and the extra
	// round trip.
	const n = 20
	for _, mech := range []string{"PLAIN", "SCRAM-SHA-256"} {
		m := l.module(t, "starttls", l.auth(mech, l["LAB_PASSWORD"]))
		var auth, total time.Duration
		for range n {
			r, log := runProbe(t, target, m)
			requireSuccess(t, r, log)
			auth += phaseOf(t, r, PhaseAuth).Duration
			total += r.Duration
		}
		t.Logf("%s against Dovecot: auth phase %.2f ms, whole probe %.2f ms (mean of %d)",
			mech, float64(auth.Microseconds())/n/1000, float64(total.Microseconds())/n/1000, n)
	}
}

func TestLabPosture(t *testing.T) {
	l := requireLab(t)
	// The plain port offers AUTH PLAIN LOGIN ... before STARTTLS; the
	// submission port offers AUTH only after it.
	for _, tc := range []struct {
		name, port string
		lines      []string
		phase      Phase
		reason     Reason // "" for success
	}{
		{"AUTH before TLS", "LAB_PORT_PLAIN", []string{"fail_if_auth_offered_without_tls: true"}, PhaseEHLO, ReasonAuthOfferedWithoutTLS},
		{"AUTH after TLS", "LAB_PORT_SUBMISSION", []string{"fail_if_auth_offered_without_tls: true"}, "", ""},
		{"PLAIN in clear", "LAB_PORT_PLAIN", []string{"fail_if_mechanisms_offered: [PLAIN, LOGIN]"}, PhaseEHLO, ReasonInsecureMechanism},
		{"PLAIN only after TLS", "LAB_PORT_SUBMISSION", []string{"fail_if_mechanisms_offered: [PLAIN, LOGIN]"}, "", ""},
		{"disabled account stays disabled", "LAB_PORT_SUBMISSION",
			[]string{l.auth("auto", "no-such-password"), "expect_auth_rejected: true"}, "", ""},
		{"disabled account accepted", "LAB_PORT_SUBMISSION",
			[]string{l.auth("auto", l["LAB_PASSWORD"]), "expect_auth_rejected: true"}, PhaseAuth, ReasonAuthUnexpectedlyAccepted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, log := runProbe(t, l.target(tc.port), l.module(t, "starttls", tc.lines...))
			if tc.reason == "" {
				requireSuccess(t, r, log)
				return
			}
			requireFailure(t, r, tc.phase, tc.reason)
		})
	}
}
