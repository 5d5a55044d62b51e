package integration

import (
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// One exporter serves every test that needs nothing of its own: starting a
// race-detector build takes longer than most probes of the lab. Its modules
// come from the lists below, one per test file, and every test probes its
// own modules only, so that tests can run in parallel and a failing test
// can be shown its own log lines.
var sharedModuleLists = []func(l *Lab, dir string) (map[string]moduleSpec, error){
	authModules,
	certificateModules,
	canaryModules,
	recipientModules,
	redactionModules,
}

var (
	sharedOnce     sync.Once
	sharedExp      *Exporter
	sharedStartErr error
)

// sharedExporter returns the lab and the exporter started with every
// module of sharedModuleLists, starting it on first use. TestMain stops it.
func sharedExporter(t *testing.T) (*Lab, *Exporter) {
	t.Helper()
	l := requireLab(t)
	sharedOnce.Do(func() {
		dir := filepath.Join(workDir, "shared")
		if sharedStartErr = os.Mkdir(dir, 0o700); sharedStartErr != nil {
			return
		}
		all := map[string]moduleSpec{}
		for _, list := range sharedModuleLists {
			mods, err := list(l, dir)
			if err != nil {
				sharedStartErr = err
				return
			}
			for name, spec := range mods {
				if _, dup := all[name]; dup {
					sharedStartErr = fmt.Errorf("module %s defined twice", name)
					return
				}
				all[name] = spec
			}
		}
		sharedExp, sharedStartErr = launchExporter(dir, l.modulesYAML(all))
		if sharedExp != nil {
			sharedExp.shared = true
		}
	})
	if sharedStartErr != nil {
		t.Fatalf("shared smtp_exporter: %v", sharedStartErr)
	}
	return l, sharedExp
}

// stopSharedExporter stops the shared exporter if it ran, and checks what
// no single test can: that nothing it logged in the whole run holds the
// lab's password in any form.
func stopSharedExporter() error {
	if sharedExp == nil {
		return nil
	}
	err := sharedExp.stop()
	out := sharedExp.Output()
	if scrubbed := scrubLabPassword(out); scrubbed != out {
		err = errors.Join(err, errors.New("its log contains the lab password or an encoding of it (marked below)"))
	}
	if err != nil {
		// Shown scrubbed, the leaks marked where they were.
		return fmt.Errorf("shared smtp_exporter: %w\n%s", err, scrubLabPassword(out))
	}
	return nil
}

// passwordForms returns the password and the encodings of it that AUTH
// sends: base64 of the password (LOGIN) and of the PLAIN blob, padded or
// not.
func passwordForms(user, password string) []string {
	forms := []string{password}
	for _, raw := range []string{password, "\x00" + user + "\x00" + password, user + "\x00" + password} {
		forms = append(forms,
			base64.StdEncoding.EncodeToString([]byte(raw)),
			base64.RawStdEncoding.EncodeToString([]byte(raw)))
	}
	return forms
}

// scrubLabPassword hides the lab password and its encodings in text a
// failing test shows: a redaction test fails exactly when they are there.
func scrubLabPassword(text string) string {
	if lab == nil {
		return text
	}
	for _, secret := range passwordForms(lab.User, lab.Password) {
		text = strings.ReplaceAll(text, secret, "<the lab password, leaked>")
	}
	return text
}

// moduleSpec describes a module of a test configuration against the lab.
// Every module may connect to LAB_HOST only and verifies certificates
// against LAB_CA.
type moduleSpec struct {
	TLS  string // none, starttls or implicit
	Port int
	// Mechanism enables AUTH as the lab user; "" means no auth block.
	Mechanism string
	// Password is sent inline; otherwise PasswordFile, by default
	// LAB_PASSWORD_FILE, is read at each probe.
	Password       string
	PasswordFile   string
	AllowPlaintext bool
	// AuthFailureBackoff overrides the default hold after a refused login
	// (5m), e.g. "0s" for a module whose every probe must log in.
	AuthFailureBackoff string
	Mail               *mailSpec
}

// mailSpec is a module's canary; the sender is always the lab user.
type mailSpec struct {
	To, Cc, Bcc []string
	NoData      bool // RSET instead of DATA
	FromName    string
	Subject     string
	Body        string
	Headers     map[string]string
	Attachments []string
	// Delivery, when set, adds a delivery block watching the canary's
	// mailbox over the lab's IMAP.
	Delivery *deliverySpec
}

// deliverySpec is a module's delivery block: the canary account's INBOX,
// over implicit TLS (LAB_PORT_IMAPS) or STARTTLS (LAB_PORT_IMAP).
type deliverySpec struct {
	Port     int
	Implicit bool
	// Password is sent inline; otherwise LAB_CANARY_PASSWORD_FILE is read.
	Password             string
	LateAfter, LostAfter string // "" for the defaults
}

// modulesYAML renders a configuration file with the given modules.
func (l *Lab) modulesYAML(mods map[string]moduleSpec) string {
	var b strings.Builder
	b.WriteString("modules:\n")
	for _, name := range slices.Sorted(maps.Keys(mods)) {
		m := mods[name]
		fmt.Fprintf(&b, "  %s:\n    timeout: 10s\n", quote(name))
		if m.AuthFailureBackoff != "" {
			fmt.Fprintf(&b, "    auth_failure_backoff: %s\n", m.AuthFailureBackoff)
		}
		fmt.Fprintf(&b, "    smtp:\n      tls: %s\n      port: %d\n", m.TLS, m.Port)
		if m.TLS != "none" {
			fmt.Fprintf(&b, "      tls_config:\n        ca_file: %s\n", quote(l.CA))
		}
		fmt.Fprintf(&b, "      allowed_targets: [%s]\n", quote(l.Host))
		if m.AllowPlaintext {
			b.WriteString("      allow_plaintext_auth: true\n")
		}
		if m.Mechanism != "" {
			fmt.Fprintf(&b, "      auth:\n        mechanism: %s\n        username: %s\n", quote(m.Mechanism), quote(l.User))
			switch {
			case m.Password != "":
				fmt.Fprintf(&b, "        password: %s\n", quote(m.Password))
			case m.PasswordFile != "":
				fmt.Fprintf(&b, "        password_file: %s\n", quote(m.PasswordFile))
			default:
				fmt.Fprintf(&b, "        password_file: %s\n", quote(l.PasswordFile))
			}
		}
		if m.Mail != nil {
			m.Mail.render(&b, l.User)
			if d := m.Mail.Delivery; d != nil {
				d.render(&b, l)
			}
		}
	}
	return b.String()
}

func (m *mailSpec) render(b *strings.Builder, from string) {
	list := func(key string, addrs []string) {
		if len(addrs) == 0 {
			return
		}
		quoted := make([]string, len(addrs))
		for i, a := range addrs {
			quoted[i] = quote(a)
		}
		fmt.Fprintf(b, "        %s: [%s]\n", key, strings.Join(quoted, ", "))
	}
	fmt.Fprintf(b, "      mail:\n        from: %s\n", quote(from))
	list("to", m.To)
	list("cc", m.Cc)
	list("bcc", m.Bcc)
	fmt.Fprintf(b, "        data: %t\n", !m.NoData)
	b.WriteString("        message:\n")
	if m.FromName != "" {
		fmt.Fprintf(b, "          from_name: %s\n", quote(m.FromName))
	}
	if m.Subject != "" {
		fmt.Fprintf(b, "          subject: %s\n", quote(m.Subject))
	}
	if m.Body != "" {
		fmt.Fprintf(b, "          body: %s\n", quote(m.Body))
	}
	if len(m.Headers) > 0 {
		b.WriteString("          headers:\n")
		for _, k := range slices.Sorted(maps.Keys(m.Headers)) {
			fmt.Fprintf(b, "            %s: %s\n", quote(k), quote(m.Headers[k]))
		}
	}
	if len(m.Attachments) > 0 {
		b.WriteString("          attachments:\n")
		for _, path := range m.Attachments {
			fmt.Fprintf(b, "            - path: %s\n", quote(path))
		}
	}
}

func (d *deliverySpec) render(b *strings.Builder, l *Lab) {
	tls := "starttls"
	if d.Implicit {
		tls = "implicit"
	}
	fmt.Fprintf(b, "        delivery:\n          imap:\n            address: %s\n            tls: %s\n", quote(l.Target(d.Port)), tls)
	fmt.Fprintf(b, "            tls_config:\n              ca_file: %s\n            username: %s\n", quote(l.CA), quote(l.Canary))
	if d.Password != "" {
		fmt.Fprintf(b, "            password: %s\n", quote(d.Password))
	} else {
		fmt.Fprintf(b, "            password_file: %s\n", quote(l.CanaryPasswordFile))
	}
	b.WriteString("            mailbox: INBOX\n")
	if d.LateAfter != "" {
		fmt.Fprintf(b, "          late_after: %s\n", d.LateAfter)
	}
	if d.LostAfter != "" {
		fmt.Fprintf(b, "          lost_after: %s\n", d.LostAfter)
	}
}
