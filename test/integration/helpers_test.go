package integration

import (
	"crypto/x509"
	"encoding/pem"
	"maps"
	"net/mail"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// lbl builds a label set from name, value pairs.
func lbl(pairs ...string) map[string]string {
	if len(pairs)%2 != 0 {
		panic("lbl needs name, value pairs")
	}
	m := make(map[string]string, len(pairs)/2)
	for i := 0; i < len(pairs); i += 2 {
		m[pairs[i]] = pairs[i+1]
	}
	return m
}

func formatLabels(labels map[string]string) string {
	if len(labels) == 0 {
		return ""
	}
	parts := make([]string, 0, len(labels))
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		parts = append(parts, k+"="+strconv.Quote(labels[k]))
	}
	return "{" + strings.Join(parts, ",") + "}"
}

// Expect checks that the series exists with the value want.
func (m Metrics) Expect(t *testing.T, name string, labels map[string]string, want float64) {
	t.Helper()
	got, ok := m.Value(name, labels)
	switch {
	case !ok:
		t.Errorf("no series %s%s", name, formatLabels(labels))
	case got != want:
		t.Errorf("%s%s = %v, want %v", name, formatLabels(labels), got, want)
	}
}

// ExpectAbsent checks that no series of name exists at all.
func (m Metrics) ExpectAbsent(t *testing.T, name string) {
	t.Helper()
	if got := m.Labels(name); len(got) > 0 {
		t.Errorf("%s should be absent, got series %v", name, got)
	}
}

// LabelValues returns, sorted, the values of label among the series of name
// whose other labels include where.
func (m Metrics) LabelValues(name, label string, where map[string]string) []string {
	var values []string
series:
	for _, labels := range m.Labels(name) {
		for k, v := range where {
			if labels[k] != v {
				continue series
			}
		}
		if v, ok := labels[label]; ok {
			values = append(values, v)
		}
	}
	slices.Sort(values)
	return values
}

// ExpectLabelValues checks the exact set of values of label among the
// series of name that match where.
func (m Metrics) ExpectLabelValues(t *testing.T, name, label string, where map[string]string, want ...string) {
	t.Helper()
	want = slices.Sorted(slices.Values(want))
	if got := m.LabelValues(name, label, where); !slices.Equal(got, want) {
		t.Errorf("%s%s: %s values %q, want %q", name, formatLabels(where), label, got, want)
	}
}

// ModuleLog returns the exporter's log lines about probes of module: every
// line a probe logs carries module=NAME.
func (e *Exporter) ModuleLog(module string) []string {
	return e.output.moduleLines(module)
}

// logModuleOnFailure shows the shared exporter's log of module if the test
// fails. Exporters of a single test show their whole output instead.
func (e *Exporter) logModuleOnFailure(t *testing.T, module string) {
	if !e.shared {
		return
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("smtp_exporter log of module %s:\n%s", module, scrubLabPassword(strings.Join(e.ModuleLog(module), "\n")))
		}
	})
}

// logAttr returns the value of attribute key in a logfmt line, unquoted.
func logAttr(line, key string) (string, bool) {
	i := strings.Index(line, " "+key+"=")
	if i < 0 {
		return "", false
	}
	rest := line[i+len(key)+2:]
	if strings.HasPrefix(rest, `"`) {
		q, err := strconv.QuotedPrefix(rest)
		if err != nil {
			return "", false
		}
		v, err := strconv.Unquote(q)
		return v, err == nil
	}
	v, _, _ := strings.Cut(rest, " ")
	return v, true
}

// logValue waits for a line of module's log with message msg and returns
// its attribute key, from the latest such line: each test probes its
// modules once, but -count runs it again with the same shared exporter.
// The exporter's output reaches us through a pipe, a moment after the HTTP
// answer.
func (e *Exporter) logValue(t *testing.T, module, msg, key string) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		lines := e.ModuleLog(module)
		for i := len(lines) - 1; i >= 0; i-- {
			if m, _ := logAttr(lines[i], "msg"); m != msg {
				continue
			}
			if v, ok := logAttr(lines[i], key); ok {
				return v
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("module %s: no log line %q with %s", module, msg, key)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ProbeID returns the probe id of the latest probe of module.
func (e *Exporter) ProbeID(t *testing.T, module string) string {
	t.Helper()
	return e.logValue(t, module, "Beginning probe", "probe_id")
}

// transcriptLine is one line of the SMTP conversation as the exporter
// logged it: direction C, S or * and the text.
type transcriptLine struct {
	Dir, Text string
}

// ModuleTranscript returns the SMTP transcript of module's probes from the
// exporter's log ("SMTP C", "SMTP S" and "SMTP *" lines).
func (e *Exporter) ModuleTranscript(module string) []transcriptLine {
	var lines []transcriptLine
	for _, line := range e.ModuleLog(module) {
		msg, _ := logAttr(line, "msg")
		dir, ok := strings.CutPrefix(msg, "SMTP ")
		if !ok {
			continue
		}
		text, _ := logAttr(line, "line")
		lines = append(lines, transcriptLine{Dir: dir, Text: text})
	}
	return lines
}

// CompleteTranscript waits until the exporter's log holds the whole
// conversation of module's probe, up to the client's QUIT, and returns it.
// The log reaches us through a pipe, a moment after the HTTP answer: without
// the wait, a check that a command was not sent could pass on a log not yet
// written.
func (e *Exporter) CompleteTranscript(t *testing.T, module string) []transcriptLine {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		lines := e.ModuleTranscript(module)
		if clientSent(lines, "QUIT") {
			return lines
		}
		if time.Now().After(deadline) {
			t.Fatalf("module %s: no QUIT in the logged transcript %v", module, lines)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// debugTranscript extracts the SMTP transcript of a debug=true answer.
func debugTranscript(t *testing.T, debug string) []transcriptLine {
	t.Helper()
	const start = "SMTP transcript (credentials replaced):\n"
	i := strings.Index(debug, start)
	if i < 0 {
		t.Fatalf("debug output has no transcript:\n%s", debug)
	}
	section, _, _ := strings.Cut(debug[i+len(start):], "\n\n")
	re := regexp.MustCompile(`^\[\s*[0-9.]+s\] ([CS*]): (.*)$`)
	var lines []transcriptLine
	for line := range strings.Lines(section) {
		m := re.FindStringSubmatch(strings.TrimRight(line, "\n"))
		if m == nil {
			t.Fatalf("transcript line %q not in the form [  0.000s] C: text", line)
		}
		lines = append(lines, transcriptLine{Dir: m[1], Text: m[2]})
	}
	return lines
}

// clientSent reports whether the client sent a line starting with prefix.
func clientSent(lines []transcriptLine, prefix string) bool {
	for _, l := range lines {
		if l.Dir == "C" && strings.HasPrefix(strings.ToUpper(l.Text), prefix) {
			return true
		}
	}
	return false
}

// readCert parses the first certificate of a PEM file.
func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("%s: no PEM certificate", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return cert
}

// delivered is a message found in a Maildir.
type delivered struct {
	Path string
	Raw  []byte
	Msg  *mail.Message
}

// probeIDHeader is where the exporter puts the probe id in the canary.
const probeIDHeader = "X-SMTP-Exporter-Probe-ID"

// messagesWithProbeID returns the messages in the Maildir (new/ and cur/)
// whose probe id header is probeID, skipping the names in seen (and adding the
// names of messages that do not match, so a poll reads each file once).
func messagesWithProbeID(t *testing.T, maildir, probeID string, seen map[string]bool) []delivered {
	t.Helper()
	var found []delivered
	for name := range maildirFiles(t, maildir) {
		if seen[name] {
			continue
		}
		path := filepath.Join(maildir, name)
		raw, err := os.ReadFile(path)
		if err != nil {
			// Another test run may have cleaned its message up, or
			// Dovecot moved it from new/ to cur/ (read again next poll).
			if os.IsNotExist(err) {
				continue
			}
			t.Fatalf("reading delivered message: %v", err)
		}
		msg, err := mail.ReadMessage(strings.NewReader(string(raw)))
		if err != nil || msg.Header.Get(probeIDHeader) != probeID {
			seen[name] = true
			continue
		}
		found = append(found, delivered{Path: path, Raw: raw, Msg: msg})
	}
	return found
}

// removeMaildirMessage removes the message found at path, under its cur/
// name if an IMAP session has moved it there since ("cur/UNIQUE:2,FLAGS").
func removeMaildirMessage(path string) error {
	err := os.Remove(path)
	if !os.IsNotExist(err) {
		return err
	}
	unique, _, _ := strings.Cut(filepath.Base(path), ":")
	moved, _ := filepath.Glob(filepath.Join(filepath.Dir(filepath.Dir(path)), "cur", unique+":*"))
	if len(moved) == 0 {
		return err
	}
	return os.Remove(moved[0])
}

// waitForProbeMessage waits until the canary of probeID is in the Maildir
// and returns it; the message is removed when the test passes. Delivery is
// asynchronous: the 250 after DATA only means queued.
func waitForProbeMessage(t *testing.T, maildir, probeID string) delivered {
	t.Helper()
	const timeout = 10 * time.Second
	deadline := time.Now().Add(timeout)
	seen := map[string]bool{}
	for {
		if found := messagesWithProbeID(t, maildir, probeID, seen); len(found) > 0 {
			t.Cleanup(func() {
				if t.Failed() {
					return // kept for a look
				}
				for _, d := range found {
					if err := removeMaildirMessage(d.Path); err != nil {
						t.Logf("removing delivered canary: %v", err)
					}
				}
			})
			return found[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no message with %s: %s in %s (new/, cur/) after %s", probeIDHeader, probeID, maildir, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
