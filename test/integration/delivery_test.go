package integration

import (
	"context"
	"fmt"
	"net/url"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
)

// The delivery modules. Those on LAB_PORT_IMAPS with the right password
// share one watcher (the same mailbox, account and settings); its logins
// count under the first of them by name, deliveryLoginModule.
const (
	deliveryInbox         = "delivery_imaps_inbox"
	deliveryJunk          = "delivery_imaps_junk"
	deliveryLost          = "delivery_imaps_lost"
	deliveryRestart       = "delivery_imaps_restart"
	deliveryStartTLS      = "delivery_starttls_inbox"
	deliveryWrongPassword = "delivery_wrong_password"
	deliveryLoginModule   = deliveryInbox
)

// deliveryModules are canary modules that submit like the lab's canary
// module (STARTTLS, AUTH as LAB_USER) and watch the canary's INBOX.
func deliveryModules(l *Lab) map[string]moduleSpec {
	imaps := func() *deliverySpec { return &deliverySpec{Port: l.PortIMAPS, Implicit: true} }
	module := func(to string, headers map[string]string, d *deliverySpec) moduleSpec {
		return moduleSpec{
			TLS: "starttls", Port: l.PortSubmission, Mechanism: "auto",
			Mail: &mailSpec{To: []string{to}, Subject: "smtp_exporter delivery test", Headers: headers, Delivery: d},
		}
	}
	junkName, junkValue, _ := strings.Cut(l.JunkHeader, ":")
	lost := imaps()
	lost.LateAfter, lost.LostAfter = "2s", "5s"
	return map[string]moduleSpec{
		deliveryInbox:    module(l.Canary, nil, imaps()),
		deliveryJunk:     module(l.Canary, map[string]string{junkName: strings.TrimSpace(junkValue)}, imaps()),
		deliveryLost:     module(l.Discard, nil, lost),
		deliveryRestart:  module(l.Canary, nil, imaps()),
		deliveryStartTLS: module(l.Canary, nil, &deliverySpec{Port: l.PortIMAP}),
		// Sends to the discarded recipient: no canary of it may stay in
		// the mailbox, since its watcher never logs in.
		deliveryWrongPassword: module(l.Discard, nil, &deliverySpec{Port: l.PortIMAPS, Implicit: true, Password: "not-" + l.CanaryPassword}),
	}
}

// waitUntil polls cond every interval until it holds, failing the test at
// the deadline with what was awaited.
func waitUntil(t *testing.T, timeout, interval time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: still waiting for %s", timeout, what)
		}
		time.Sleep(interval)
	}
}

// histogramCount returns the sample count of the histogram series of name
// whose labels are exactly labels.
func (m Metrics) histogramCount(name string, labels map[string]string) (uint64, bool) {
	mf, ok := m.families[name]
	if !ok {
		return 0, false
	}
	for _, metric := range mf.GetMetric() {
		if metric.Histogram != nil && labelsEqual(metric.GetLabel(), labels) {
			return metric.GetHistogram().GetSampleCount(), true
		}
	}
	return 0, false
}

// deliveredCount is how many canaries of module the watchers found, from
// the latency histogram on /metrics: reading it sends nothing, unlike a
// /probe.
func (e *Exporter) deliveredCount(t *testing.T, module string) uint64 {
	t.Helper()
	n, _ := e.selfMetrics(t).histogramCount("smtp_exporter_delivery_latency_seconds", lbl("module", module))
	return n
}

// waitDelivered waits until the watchers have found n canaries of module.
func (e *Exporter) waitDelivered(t *testing.T, module string, n uint64, timeout time.Duration) {
	t.Helper()
	waitUntil(t, timeout, 100*time.Millisecond, fmt.Sprintf("%d canaries of %s delivered (smtp_exporter_delivery_latency_seconds_count)", n, module),
		func() bool { return e.deliveredCount(t, module) >= n })
}

// loginCount is smtp_exporter_logins_total{module,outcome} on /metrics.
func (e *Exporter) loginCount(t *testing.T, module, outcome string) float64 {
	t.Helper()
	v, _ := e.selfMetrics(t).Value("smtp_exporter_logins_total", lbl("module", module, "outcome", outcome))
	return v
}

// probeCanary probes module at the submission port, requires the canary to
// be accepted and returns the answer and the canary's probe id.
func (e *Exporter) probeCanary(t *testing.T, l *Lab, module string) (Metrics, string) {
	t.Helper()
	m := e.probe(t, module, l.Target(l.PortSubmission))
	if v := m.MustValue(t, "probe_success", nil); v != 1 {
		t.Fatalf("%s: probe_success %v, want 1: the canary was not submitted", module, v)
	}
	return m, e.ProbeID(t, module)
}

// logLatency logs the latencies of the latest canary of module the
// watcher found, as the exporter logged them.
func (e *Exporter) logLatency(t *testing.T, module string) {
	t.Helper()
	t.Logf("%s: canary found after %ss (to INTERNALDATE: %ss)", module,
		e.logValue(t, module, "Canary delivered", "latency_seconds"),
		e.logValue(t, module, "Canary delivered", "server_latency_seconds"))
}

// appendForeign appends a message to the canary's INBOX with go-imap, as
// another sender would leave one, and returns its UID.
func appendForeign(t *testing.T, l *Lab, headers ...string) imap.UID {
	t.Helper()
	c := imapLogin(t, l, true)
	msg := fmt.Sprintf("From: <someone@%s>\r\nTo: <%s>\r\nSubject: not a canary of this exporter\r\n%s\r\nLeft alone, please.\r\n",
		l.Domain, l.Canary, strings.Join(append(headers, ""), "\r\n"))
	cmd := c.Append("INBOX", int64(len(msg)), nil)
	if _, err := cmd.Write([]byte(msg)); err != nil {
		t.Fatalf("APPEND: %v", err)
	}
	if err := cmd.Close(); err != nil {
		t.Fatalf("APPEND: %v", err)
	}
	data, err := cmd.Wait()
	if err != nil {
		t.Fatalf("APPEND: %v", err)
	}
	if data.UID == 0 {
		t.Fatal("APPEND: no APPENDUID (UIDPLUS) in the reply")
	}
	return data.UID
}

// End-to-end delivery confirmation against the lab: canaries found in
// INBOX over implicit TLS and STARTTLS and deleted, one filed into Junk by
// the lab's Sieve script, one discarded by Postfix counted late then lost,
// a wrong IMAP password refused once and held, the watcher back after a
// Dovecot restart, and other messages in the mailbox left as they were.
//
// Not parallel: the Dovecot restart would cut the IMAP sessions, SASL
// logins and LMTP deliveries of other tests. Its subtests run in parallel
// with each other until the restart.
func TestDelivery(t *testing.T) {
	l := requireIMAP(t)
	e := startExporter(t, l.modulesYAML(deliveryModules(l)))

	// Before any canary: one message without the header, one with an id
	// this exporter never sent.
	foreignID := "foreign-" + newProbeID(t)
	foreign := map[string]imap.UID{
		"without the header":      appendForeign(t, l),
		"with a foreign probe id": appendForeign(t, l, probeIDHeader+": "+foreignID),
	}

	t.Run("watchers", func(t *testing.T) {
		for _, tc := range []struct {
			module   string
			implicit bool
		}{{deliveryInbox, true}, {deliveryStartTLS, false}} {
			t.Run(tc.module, func(t *testing.T) {
				t.Parallel()
				testDeliveredToInbox(t, l, e, tc.module, tc.implicit)
			})
		}
		t.Run("junk", func(t *testing.T) {
			t.Parallel()
			testDeliveredToJunk(t, l, e)
		})
		t.Run("lost", func(t *testing.T) {
			t.Parallel()
			testLost(t, l, e)
		})
		t.Run("wrong_password", func(t *testing.T) {
			t.Parallel()
			testWrongIMAPPassword(t, l, e)
		})
	})
	t.Run("dovecot_restart", func(t *testing.T) {
		testDovecotRestart(t, l, e)
	})
	t.Run("foreign_untouched", func(t *testing.T) {
		c := imapLogin(t, l, true)
		if _, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
			t.Fatalf("EXAMINE INBOX: %v", err)
		}
		var set imap.UIDSet
		for _, uid := range foreign {
			set.AddNum(uid)
		}
		msgs, err := c.Fetch(set, &imap.FetchOptions{UID: true, Flags: true}).Collect()
		if err != nil {
			t.Fatalf("UID FETCH: %v", err)
		}
		flags := map[imap.UID][]imap.Flag{}
		for _, m := range msgs {
			flags[m.UID] = m.Flags
		}
		for what, uid := range foreign {
			f, ok := flags[uid]
			switch {
			case !ok:
				t.Errorf("the message %s (UID %d) is gone from INBOX", what, uid)
			case len(f) > 0:
				// Neither \Deleted nor \Seen (the watcher peeks): no flag.
				t.Errorf("the message %s (UID %d) has the flags %v, want none", what, uid, f)
			}
		}
		if t.Failed() {
			return
		}
		for _, uid := range foreign {
			if err := deleteIMAPMessage(c, "INBOX", uid); err != nil {
				t.Errorf("removing the foreign message: %v", err)
			}
		}
	})
}

// testDeliveredToInbox: a canary found in INBOX is counted with a latency
// and deleted.
func testDeliveredToInbox(t *testing.T, l *Lab, e *Exporter, module string, implicit bool) {
	first, id := e.probeCanary(t, l, module)
	first.Expect(t, "probe_smtp_delivery_delivered_total", nil, 0)
	first.Expect(t, "probe_smtp_delivery_lost_total", nil, 0)
	if p := first.MustValue(t, "probe_smtp_delivery_pending", nil); p != 1 {
		t.Errorf("probe_smtp_delivery_pending %v right after the probe, want 1 (the watcher cannot have found it within the answer)", p)
	}
	first.ExpectAbsent(t, "probe_smtp_delivery_last_seconds")
	e.waitDelivered(t, module, 1, 15*time.Second)
	e.logLatency(t, module)

	// The next answer tells of it; its own canary is pending.
	m, _ := e.probeCanary(t, l, module)
	m.Expect(t, "probe_smtp_delivery_delivered_total", nil, 1)
	m.Expect(t, "probe_smtp_delivery_junk_total", nil, 0)
	m.Expect(t, "probe_smtp_delivery_watcher_up", nil, 1)
	m.Expect(t, "probe_smtp_delivery_late", nil, 0)
	if v := m.MustValue(t, "probe_smtp_delivery_last_seconds", nil); v <= 0 || v > 15 {
		t.Errorf("probe_smtp_delivery_last_seconds %v, want in (0, 15]", v)
	}
	if v := m.MustValue(t, "probe_smtp_delivery_last_server_seconds", nil); v < 0 || v > 15 {
		t.Errorf("probe_smtp_delivery_last_server_seconds %v, want in [0, 15]", v)
	}

	// The watcher deleted the first canary.
	c := imapLogin(t, l, implicit)
	waitUntil(t, 5*time.Second, 100*time.Millisecond, "the delivered canary "+id+" deleted from INBOX",
		func() bool { return len(searchProbeID(t, c, "INBOX", id)) == 0 })

	// The second one too, so that nothing stays behind.
	e.waitDelivered(t, module, 2, 15*time.Second)
	e.logLatency(t, module)
}

// testDeliveredToJunk: a canary the Sieve script files into Junk is found
// there (the watcher looks in Junk while canaries are pending).
func testDeliveredToJunk(t *testing.T, l *Lab, e *Exporter) {
	_, id := e.probeCanary(t, l, deliveryJunk)
	// Junk is searched every 10 s while canaries are pending.
	e.waitDelivered(t, deliveryJunk, 1, 20*time.Second)
	e.logLatency(t, deliveryJunk)
	m, _ := e.probeCanary(t, l, deliveryJunk)
	m.Expect(t, "probe_smtp_delivery_delivered_total", nil, 1)
	m.Expect(t, "probe_smtp_delivery_junk_total", nil, 1)
	c := imapLogin(t, l, true)
	waitUntil(t, 5*time.Second, 100*time.Millisecond, "the canary "+id+" deleted from Junk",
		func() bool { return len(searchProbeID(t, c, "Junk", id)) == 0 })
	e.waitDelivered(t, deliveryJunk, 2, 20*time.Second)
}

// testLost: a canary Postfix accepts and discards is pending, then late
// (late_after 2s), then lost (lost_after 5s). Every look is a probe, which
// sends another canary to the discarded recipient.
func testLost(t *testing.T, l *Lab, e *Exporter) {
	first, _ := e.probeCanary(t, l, deliveryLost)
	first.Expect(t, "probe_smtp_delivery_pending", nil, 1)
	first.Expect(t, "probe_smtp_delivery_late", nil, 0)
	first.Expect(t, "probe_smtp_delivery_lost_total", nil, 0)
	sawLate := false
	var last Metrics
	waitUntil(t, 12*time.Second, time.Second, "a lost canary of "+deliveryLost, func() bool {
		last, _ = e.probeCanary(t, l, deliveryLost)
		lost := last.MustValue(t, "probe_smtp_delivery_lost_total", nil)
		if lost == 0 && last.MustValue(t, "probe_smtp_delivery_late", nil) >= 1 {
			sawLate = true
		}
		return lost >= 1
	})
	if !sawLate {
		t.Errorf("never saw a late canary before the first lost one")
	}
	last.Expect(t, "probe_smtp_delivery_delivered_total", nil, 0)
	last.ExpectAbsent(t, "probe_smtp_delivery_last_seconds")
	// The first canary is lost; the newer ones are still pending.
	if p := last.MustValue(t, "probe_smtp_delivery_pending", nil); p < 1 {
		t.Errorf("probe_smtp_delivery_pending %v, want the newer canaries pending", p)
	}
	e.logValue(t, deliveryLost, "Canary lost: not found within lost_after", "probe_id")
}

// testWrongIMAPPassword: the watcher's login is refused once and held
// (auth_failure_backoff, 5m by default): watcher_up stays 0 while the SMTP
// side succeeds, and no second login follows.
func testWrongIMAPPassword(t *testing.T, l *Lab, e *Exporter) {
	waitUntil(t, 10*time.Second, 100*time.Millisecond, "the refused IMAP login counted", func() bool {
		return e.loginCount(t, deliveryWrongPassword, "refused") >= 1
	})
	// Held: still one refusal a while later, however often we look.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if n := e.loginCount(t, deliveryWrongPassword, "refused"); n != 1 {
			t.Fatalf("smtp_exporter_logins_total{outcome=\"refused\"} = %v, want 1: the login was not held", n)
		}
		time.Sleep(200 * time.Millisecond)
	}
	m, _ := e.probeCanary(t, l, deliveryWrongPassword)
	m.Expect(t, "probe_success", nil, 1)
	m.Expect(t, "probe_smtp_delivery_watcher_up", nil, 0)
	m.Expect(t, "probe_smtp_delivery_delivered_total", nil, 0)

	// The transcript tells of the refusal and the hold, without the
	// password.
	r := e.probeRaw(t, deliveryWrongPassword, l.Target(l.PortSubmission), url.Values{"debug": {"true"}, "delivery_transcript": {"true"}})
	if !strings.Contains(r.Body, "IMAP transcript (credentials replaced):") || !strings.Contains(r.Body, "login refused") {
		t.Errorf("debug=true&delivery_transcript=true shows no refused login in the IMAP transcript:\n%s", r.Body)
	}
	if strings.Contains(r.Body, l.CanaryPassword) {
		t.Errorf("the debug output holds the canary's password")
	}
	if n := e.loginCount(t, deliveryWrongPassword, "refused"); n != 1 {
		t.Errorf("smtp_exporter_logins_total{outcome=\"refused\"} = %v after the probes, want 1", n)
	}
}

// testDovecotRestart: the watcher reconnects after Dovecot restarts, and a
// canary sent afterwards is found.
func testDovecotRestart(t *testing.T, l *Lab, e *Exporter) {
	before := e.loginCount(t, deliveryLoginModule, "accepted")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	out, err := exec.CommandContext(ctx, "bash", "../lab/restart-dovecot.sh", l.Dir).CombinedOutput()
	if err != nil {
		t.Fatalf("restart-dovecot.sh: %v\n%s", err, out)
	}
	t.Logf("Dovecot restarted in %s", time.Since(start).Round(time.Millisecond))
	// Dovecot's old imap processes end their sessions ("Server shutting
	// down") a few seconds after the new master starts, up to 17 s seen:
	// the watcher logs in again after that and its back-off.
	waitUntil(t, 30*time.Second, 100*time.Millisecond, "the watcher's login after the restart", func() bool {
		return e.loginCount(t, deliveryLoginModule, "accepted") > before
	})
	t.Logf("the watcher logged in again %s after the restart began", time.Since(start).Round(time.Millisecond))
	// Logged in, it lists and selects before it watches: look until
	// watcher_up is 1. Each look sends a canary, all found below.
	sent := uint64(0)
	waitUntil(t, 5*time.Second, 200*time.Millisecond, "probe_smtp_delivery_watcher_up 1 after the restart", func() bool {
		m, _ := e.probeCanary(t, l, deliveryRestart)
		sent++
		return m.MustValue(t, "probe_smtp_delivery_watcher_up", nil) == 1
	})
	e.waitDelivered(t, deliveryRestart, sent, 15*time.Second)
	e.logLatency(t, deliveryRestart)
}
