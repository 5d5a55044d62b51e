// Package e2e runs the whole alerting chain with real processes on
// loopback: the smtp_exporter binary probes a private Postfix + Dovecot lab
// (test/lab), Prometheus scrapes it with the shipped scrape configuration
// and evaluates the shipped alerting rules (only their `for:` shortened),
// and Alertmanager routes the alerts to a webhook run by the test. See
// README.md in this directory for how to run it.
package e2e

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	// scrapeInterval is also the scrape timeout. A refused login takes up
	// to 0.5 s in the lab (Dovecot answers failures on a timer), and the
	// probe gets the scrape timeout minus the exporter's default
	// --timeout-offset of 0.5 s: 1.5 s leaves a wide margin on a busy
	// machine, where 1 s would leave almost none.
	scrapeInterval     = 2 * time.Second
	evaluationInterval = time.Second
	// alertFor replaces every `for:` of the shipped rules. It is more than
	// two scrape intervals, so the rules' promise still holds here: a
	// single odd scrape (a probe cut off as Postfix stops) never fires.
	alertFor = 5 * time.Second
	// alertmanagerWait is group_wait and group_interval.
	alertmanagerWait = time.Second
	// accountGroupWait is the group_wait of the route that gathers one
	// account's SMTPAuthenticationFailing alerts, scaled as the shipped one
	// (2m30s): its jobs start failing within a scrape interval plus a
	// probe's duration (the scrape timeout) of each other, and fire within
	// one more evaluation interval; 3 s of margin.
	accountGroupWait = 2*scrapeInterval + evaluationInterval + 3*time.Second

	// scenarioBudget bounds the test from the lab's start to the last
	// step (it takes about 50 s); stepTimeout each wait for an alert to
	// arrive or leave.
	scenarioBudget = 120 * time.Second
	stepTimeout    = 30 * time.Second
)

// TestAlertingEndToEnd walks one account, probed by two jobs on two ports
// (submission with STARTTLS and submissions with implicit TLS), through "all
// green", a wrong password, the password restored and Postfix stopped, and
// checks at each step what Prometheus reports as pending or firing and what
// reaches the webhook: the wrong password pages once for the account.
func TestAlertingEndToEnd(t *testing.T) {
	bins := requireTools(t)
	exporterBin := buildExporter(t)
	began := time.Now()
	h := newHarness(t, scenarioBudget)

	l := h.startLab()
	// The exporter reads its password file at every probe: rotating this
	// copy is what an operator's secret rotation looks like to it.
	password, err := os.ReadFile(l.vars["LAB_PASSWORD_FILE"])
	if err != nil {
		t.Fatal(err)
	}
	passwordFile := filepath.Join(h.dir, "probe.pass")
	if err := writeFileAtomic(passwordFile, password); err != nil {
		t.Fatal(err)
	}
	target := net.JoinHostPort("127.0.0.1", strconv.Itoa(l.submissionPort))
	implicitPort, err := strconv.Atoi(l.vars["LAB_PORT_IMPLICIT"])
	if err != nil {
		t.Fatalf("LAB_PORT_IMPLICIT: %v", err)
	}
	implicitTarget := net.JoinHostPort("127.0.0.1", strconv.Itoa(implicitPort))
	targets := map[string]string{probeJob: target, implicitJob: implicitTarget}

	exporterAddr, amAddr, promAddr := h.freeAddr(), h.freeAddr(), h.freeAddr()
	rules, alertCount := shortenedRules(t, alertFor)
	rulesFile := writeConfig(t, h.dir, "smtp_exporter.rules.yml", rules)
	prom := prometheusConfig(t, rulesFile, exporterAddr, amAddr, targets, scrapeInterval, evaluationInterval)

	exporterConfigFile := writeConfig(t, h.dir, "smtp_exporter.yml", exporterConfig(prom.modules, l, implicitPort, passwordFile))
	// Registered before the exporter starts, so that it runs once the
	// exporter has stopped and written everything.
	t.Cleanup(func() {
		if data, _ := os.ReadFile(filepath.Join(h.dir, "smtp_exporter.log")); strings.Contains(string(data), "WARNING: DATA RACE") {
			t.Error("the race detector reported a data race in smtp_exporter (see its log)")
		}
	})
	h.start("smtp_exporter", exporterBin,
		"--config.file="+exporterConfigFile,
		"--web.listen-address="+exporterAddr,
		"--log.level=debug",
	)
	exporterURL := "http://" + exporterAddr
	h.waitReady("smtp_exporter", exporterURL+"/-/healthy")

	// The lab's first login starts Dovecot's auth worker and can take a few
	// seconds; Prometheus must not see that as a slow or failed probe.
	warmStart := time.Now()
	for job, tgt := range targets {
		h.waitFor("a first successful probe of the lab by "+job, stepTimeout, func() (bool, error) {
			return h.probeSucceeds(exporterURL, prom.modules[job], tgt)
		})
	}
	t.Logf("first successful probe after %v", time.Since(warmStart).Round(time.Millisecond))

	hook := h.startWebhook()
	amConfig := writeConfig(t, h.dir, "alertmanager.yml", alertmanagerConfig(t, hook.server.URL, alertmanagerWait, accountGroupWait))
	h.start("alertmanager", bins.alertmanager,
		"--config.file="+amConfig,
		"--storage.path="+filepath.Join(h.dir, "alertmanager-data"),
		"--web.listen-address="+amAddr,
		"--cluster.listen-address=",
	)
	h.waitReady("alertmanager", "http://"+amAddr+"/-/ready")

	promConfig := writeConfig(t, h.dir, "prometheus.yml", prom.config)
	h.start("prometheus", bins.prometheus,
		"--config.file="+promConfig,
		"--storage.tsdb.path="+filepath.Join(h.dir, "prometheus-data"),
		"--web.listen-address="+promAddr,
	)
	h.waitReady("prometheus", "http://"+promAddr+"/-/ready")
	api := prometheusAPI{h: h, url: "http://" + promAddr}
	s := &scenario{h: h, api: api, hook: hook, instance: target}
	t.Logf("set up in %v", time.Since(began).Round(time.Millisecond))

	// Step 1: all green.
	stepStart := time.Now()
	const greenScrapes = 3
	h.waitFor(fmt.Sprintf("%d successful probe scrapes of each job and the exporter's own metrics", greenScrapes), stepTimeout, func() (bool, error) {
		probes, err := api.queryHasResult(fmt.Sprintf(`count(sum_over_time(probe_success{job=~%q}[1m]) >= %d) == 2`, probeJob+"|"+implicitJob, greenScrapes))
		if err != nil || !probes {
			return false, err
		}
		return api.queryHasResult(fmt.Sprintf(`up{job=%q} == 1`, exporterJob))
	})
	t.Logf("step 1: %d successful scrapes after %v", greenScrapes, time.Since(stepStart).Round(time.Millisecond))
	// A rule that never ran, or failed to, would make "no alert" vacuous.
	s.waitRulesEvaluatedAfter(time.Now(), alertCount)
	if active := s.activeAlerts(); len(active) > 0 {
		t.Fatalf("step 1, all green: alerts are active: %v", active)
	}
	if got := hook.received(time.Time{}); len(got) > 0 {
		t.Fatalf("step 1, all green: the webhook received %v", got)
	}
	t.Logf("step 1, all green: no alert pending or firing after %d scrapes (%v)", greenScrapes, time.Since(stepStart).Round(time.Millisecond))

	// Step 2: the password in the module's password file goes wrong.
	stepStart = time.Now()
	if err := writeFileAtomic(passwordFile, append([]byte("wrong-"), password...)); err != nil {
		t.Fatal(err)
	}
	auth := s.waitFiring("SMTPAuthenticationFailing", stepStart)
	t.Logf("step 2, wrong password: %s reached the webhook after %v", auth.Labels["alertname"], auth.At.Sub(stepStart).Round(time.Millisecond))
	for label, want := range map[string]string{
		"phase":    "auth",
		"reason":   "auth_rejected",
		"job":      probeJob,
		"instance": target,
		"module":   prom.module,
		"severity": "critical",
	} {
		if got := auth.Labels[label]; got != want {
			t.Errorf("step 2: SMTPAuthenticationFailing label %s = %q, want %q", label, got, want)
		}
	}
	// The description quotes the failure: "... fail in phase auth with
	// reason auth_rejected, reply code 535 (5.7.8). ..."
	description := auth.Annotations["description"]
	t.Logf("step 2: %s: %s", auth.Annotations["summary"], description)
	for _, want := range []string{"in phase auth", "reason auth_rejected", "reply code 535", "(5.7.8)"} {
		if !strings.Contains(description, want) {
			t.Errorf("step 2: SMTPAuthenticationFailing description does not say %q:\n%s", want, description)
		}
	}
	if summary := auth.Annotations["summary"]; !strings.Contains(summary, target) {
		t.Errorf("step 2: SMTPAuthenticationFailing summary does not name %s: %q", target, summary)
	}
	s.checkPrometheusValue("SMTPAuthenticationFailing", target, "535")
	// The server answers: the unreachable alert must not even be pending.
	for _, a := range s.activeAlerts() {
		if a.Labels["alertname"] == "SMTPServerUnreachable" {
			t.Errorf("step 2: SMTPServerUnreachable is active while the server answers: %s", a)
		}
	}
	s.checkOnePage(stepStart, prom.account, targets)

	// Step 3: the password is restored. The exporter holds logins after a
	// rejection (auth_failure_backoff, 5m by default) and returns the
	// rejection again meanwhile; a changed password file must end the hold,
	// or the alert would stay for minutes.
	stepStart = time.Now()
	if err := writeFileAtomic(passwordFile, password); err != nil {
		t.Fatal(err)
	}
	resolved := s.waitResolved("SMTPAuthenticationFailing", stepStart)
	t.Logf("step 3, password restored: resolved notification after %v", resolved.At.Sub(stepStart).Round(time.Millisecond))
	h.waitFor("no active alert after the password was restored", stepTimeout, func() (bool, error) {
		active := s.activeAlerts()
		return len(active) == 0, fmt.Errorf("still active: %v", active)
	})

	// Step 4: Postfix stops.
	stepStart = time.Now()
	h.stopPostfix(l, bins.postfix)
	down := s.waitFiring("SMTPServerUnreachable", stepStart)
	t.Logf("step 4, Postfix stopped: %s reached the webhook after %v", down.Labels["alertname"], down.At.Sub(stepStart).Round(time.Millisecond))
	for label, want := range map[string]string{
		"phase":    "connect",
		"reason":   "connection_refused",
		"job":      probeJob,
		"instance": target,
		"severity": "critical",
	} {
		if got := down.Labels[label]; got != want {
			t.Errorf("step 4: SMTPServerUnreachable label %s = %q, want %q", label, got, want)
		}
	}
	t.Logf("step 4: %s: %s", down.Annotations["summary"], down.Annotations["description"])
	if description := down.Annotations["description"]; !strings.Contains(description, "reason connection_refused and no reply code") {
		t.Errorf("step 4: SMTPServerUnreachable description does not say there was no reply code:\n%s", description)
	}
	s.checkPrometheusValue("SMTPServerUnreachable", target, "0")
	for _, a := range hook.received(stepStart) {
		if a.Status == "firing" && a.Labels["alertname"] == "SMTPAuthenticationFailing" {
			t.Errorf("step 4: SMTPAuthenticationFailing fired while Postfix was down: %s", a)
		}
	}

	t.Logf("scenario done in %v", time.Since(began).Round(time.Millisecond))
}

// scenario holds what the steps check.
type scenario struct {
	h        *harness
	api      prometheusAPI
	hook     *webhook
	instance string
}

// activeAlerts returns the alerts Prometheus has pending or firing; an
// API error fails the test.
func (s *scenario) activeAlerts() []promAlert {
	s.h.t.Helper()
	alerts, err := s.api.alerts()
	if err != nil {
		s.h.t.Fatalf("reading Prometheus alerts: %v", err)
	}
	return alerts
}

// waitRulesEvaluatedAfter waits until every alerting rule has been
// evaluated after a moment, and checks that all of them are loaded with the
// shortened `for:` and evaluate without error.
func (s *scenario) waitRulesEvaluatedAfter(after time.Time, wantRules int) {
	s.h.t.Helper()
	s.h.waitFor("every alerting rule evaluated", stepTimeout, func() (bool, error) {
		rules, err := s.api.rules()
		if err != nil {
			return false, err
		}
		if len(rules) != wantRules {
			return false, violationf("Prometheus loaded %d alerting rules, the rules file has %d `for:` lines", len(rules), wantRules)
		}
		for _, r := range rules {
			if r.Health == "err" {
				return false, violationf("rule %s fails to evaluate: %s", r.Name, r.LastError)
			}
			if time.Duration(r.Duration*float64(time.Second)) != alertFor {
				return false, violationf("rule %s waits %vs, want the shortened %v", r.Name, r.Duration, alertFor)
			}
			if r.Health != "ok" || r.LastEvaluation.Before(after) {
				return false, fmt.Errorf("rule %s: health %q, last evaluated %v", r.Name, r.Health, r.LastEvaluation)
			}
		}
		return true, nil
	})
}

// onlyAlert checks that no alert other than want is firing in Prometheus
// or has reached the webhook firing since the step began. Another alert may
// be pending for a moment (a probe cut off mid-way as the step changes
// something), but the shortened `for:` must keep it from firing.
func (s *scenario) onlyAlert(want string, since time.Time) error {
	// The failure alerts' joins only meet real data in these steps: an
	// evaluation error there is the finding, not a timeout.
	rules, err := s.api.rules()
	if err != nil {
		return err
	}
	for _, r := range rules {
		if r.Health == "err" {
			return violationf("rule %s fails to evaluate: %s", r.Name, r.LastError)
		}
	}
	alerts, err := s.api.alerts()
	if err != nil {
		return err
	}
	for _, a := range alerts {
		if name := a.Labels["alertname"]; name != want && a.State == "firing" {
			return violationf("%s is firing as well: %s", name, a)
		}
	}
	for _, a := range s.hook.received(since) {
		if a.Status == "firing" && a.Labels["alertname"] != want {
			return violationf("the webhook received another alert: %s", a)
		}
	}
	return nil
}

// waitFiring waits until the webhook receives alert firing for this
// scenario's target, while no other alert fires, and returns it.
func (s *scenario) waitFiring(alert string, since time.Time) receivedAlert {
	s.h.t.Helper()
	var got receivedAlert
	s.h.waitFor(alert+" firing at the webhook", stepTimeout, func() (bool, error) {
		if err := s.onlyAlert(alert, since); err != nil {
			return false, err
		}
		for _, a := range s.hook.received(since) {
			if a.Status == "firing" && a.Labels["alertname"] == alert && a.Labels["instance"] == s.instance {
				got = a
				return true, nil
			}
		}
		return false, nil
	})
	return got
}

// waitResolved waits until the webhook receives alert resolved.
func (s *scenario) waitResolved(alert string, since time.Time) receivedAlert {
	s.h.t.Helper()
	var got receivedAlert
	s.h.waitFor(alert+" resolved at the webhook", stepTimeout, func() (bool, error) {
		if err := s.onlyAlert(alert, since); err != nil {
			return false, err
		}
		for _, a := range s.hook.received(since) {
			if a.Status == "resolved" && a.Labels["alertname"] == alert && a.Labels["instance"] == s.instance {
				got = a
				return true, nil
			}
		}
		return false, nil
	})
	return got
}

// checkPrometheusValue checks the value of the one firing alert of that
// name for a target: the failure alerts carry the reply code that ended
// the phase.
func (s *scenario) checkPrometheusValue(alert, instance, want string) {
	s.h.t.Helper()
	var values []string
	for _, a := range s.activeAlerts() {
		if a.Labels["alertname"] == alert && a.Labels["instance"] == instance && a.State == "firing" {
			values = append(values, a.Value)
		}
	}
	if len(values) != 1 {
		s.h.t.Errorf("%d firing %s alerts for %s in Prometheus, want 1", len(values), alert, instance)
		return
	}
	got, err := strconv.ParseFloat(values[0], 64)
	wantValue, _ := strconv.ParseFloat(want, 64)
	if err != nil || got != wantValue {
		s.h.t.Errorf("%s has the value %q in Prometheus, want %s", alert, values[0], want)
	}
}

// notification is what one POST of Alertmanager to the webhook carried.
type notification struct {
	receiver string
	at       time.Time
	alerts   []receivedAlert
}

// notifications regroups the alerts the webhook received since a moment
// into the notifications that carried them: the webhook stamps every alert
// of one POST with the same arrival time.
func (s *scenario) notifications(since time.Time) []notification {
	var out []notification
	for _, a := range s.hook.received(since) {
		if n := len(out); n > 0 && out[n-1].receiver == a.Receiver && out[n-1].at.Equal(a.At) {
			out[n-1].alerts = append(out[n-1].alerts, a)
			continue
		}
		out = append(out, notification{receiver: a.Receiver, at: a.At, alerts: []receivedAlert{a}})
	}
	return out
}

// checkOnePage checks that the wrong password of one account, probed by two
// jobs on two ports, pages once: both jobs' SMTPAuthenticationFailing fire
// in Prometheus, and the webhook receives exactly one notification with
// them, sent to the pager, and nothing more while they keep firing.
func (s *scenario) checkOnePage(since time.Time, account string, targets map[string]string) {
	s.h.t.Helper()
	firing := func() (map[string]bool, error) {
		jobs := map[string]bool{}
		alerts, err := s.api.alerts()
		for _, a := range alerts {
			if a.Labels["alertname"] == "SMTPAuthenticationFailing" && a.State == "firing" {
				jobs[a.Labels["job"]] = true
			}
		}
		return jobs, err
	}
	s.h.waitFor("SMTPAuthenticationFailing firing in Prometheus for every job of the account", stepTimeout, func() (bool, error) {
		jobs, err := firing()
		return len(jobs) == len(targets), err
	})
	// Long enough for a second notification: Alertmanager would send one
	// group_interval after a change of the group.
	time.Sleep(3 * alertmanagerWait)

	var pages []notification
	for _, n := range s.notifications(since) {
		for _, a := range n.alerts {
			if a.Status == "firing" && a.Labels["alertname"] == "SMTPAuthenticationFailing" {
				pages = append(pages, n)
				break
			}
		}
	}
	for _, n := range pages {
		s.h.t.Logf("step 2: notification to %s at %s with %d alerts", n.receiver, n.at.Format("15:04:05.000"), len(n.alerts))
	}
	if len(pages) != 1 {
		s.h.t.Errorf("step 2: %d notifications of SMTPAuthenticationFailing for account %s, want exactly 1", len(pages), account)
		return
	}
	page := pages[0]
	if page.receiver != "mail-team-pager" {
		s.h.t.Errorf("step 2: the notification went to %s, want mail-team-pager", page.receiver)
	}
	for job, target := range targets {
		found := false
		for _, a := range page.alerts {
			if a.Status == "firing" && a.Labels["job"] == job && a.Labels["instance"] == target && a.Labels["account"] == account {
				found = true
			}
		}
		if !found {
			s.h.t.Errorf("step 2: the notification does not carry SMTPAuthenticationFailing of job %s (%s, account %s): %v", job, target, account, page.alerts)
		}
	}
	if jobs, err := firing(); err != nil || len(jobs) != len(targets) {
		s.h.t.Errorf("step 2: SMTPAuthenticationFailing no longer fires for every job (%v, %v)", jobs, err)
	}
}
