package collector

import (
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/smtp-exporter/smtp_exporter/config"
	"github.com/smtp-exporter/smtp_exporter/delivery"
	"github.com/smtp-exporter/smtp_exporter/prober"
)

func TestDeliveryMetrics(t *testing.T) {
	r := &prober.Result{Success: true, SizeLimit: -1, MessageAccepted: true}
	c := deliveryCollector{sampler: newProbeCollector(r, time.Second, nil), status: delivery.Status{
		Pending: 2, Late: 1, Delivered: 7, Lost: 1, JunkSeen: 2,
		LastLatency: 1500 * time.Millisecond, LastServerLatency: time.Second, HasLast: true, WatcherUp: true,
	}}
	want := `
# HELP probe_smtp_delivery_delivered_total Canaries found in the mailbox or its Junk folder, since the exporter started.
# TYPE probe_smtp_delivery_delivered_total counter
probe_smtp_delivery_delivered_total 7
# HELP probe_smtp_delivery_junk_total Canaries found in the account's Junk folder, since the exporter started.
# TYPE probe_smtp_delivery_junk_total counter
probe_smtp_delivery_junk_total 2
# HELP probe_smtp_delivery_last_seconds Time from the 250 to DATA to the moment the most recently delivered canary was found in its mailbox.
# TYPE probe_smtp_delivery_last_seconds gauge
probe_smtp_delivery_last_seconds 1.5
# HELP probe_smtp_delivery_last_server_seconds Time from the 250 to DATA to the mailbox server's arrival time (INTERNALDATE, whole seconds) of the most recently delivered canary.
# TYPE probe_smtp_delivery_last_server_seconds gauge
probe_smtp_delivery_last_server_seconds 1
# HELP probe_smtp_delivery_late Pending canaries accepted longer than late_after ago.
# TYPE probe_smtp_delivery_late gauge
probe_smtp_delivery_late 1
# HELP probe_smtp_delivery_lost_total Canaries not found within lost_after, since the exporter started.
# TYPE probe_smtp_delivery_lost_total counter
probe_smtp_delivery_lost_total 1
# HELP probe_smtp_delivery_pending Canaries accepted by the server and not yet found in the mailbox.
# TYPE probe_smtp_delivery_pending gauge
probe_smtp_delivery_pending 2
# HELP probe_smtp_delivery_watcher_up 1 when the IMAP session watching the mailbox is logged in and watching.
# TYPE probe_smtp_delivery_watcher_up gauge
probe_smtp_delivery_watcher_up 1
`
	names := []string{"probe_smtp_delivery_delivered_total", "probe_smtp_delivery_junk_total", "probe_smtp_delivery_last_seconds",
		"probe_smtp_delivery_last_server_seconds", "probe_smtp_delivery_late", "probe_smtp_delivery_lost_total",
		"probe_smtp_delivery_pending", "probe_smtp_delivery_watcher_up"}
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	problems, err := testutil.CollectAndLint(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "probe_smtp_delivery") {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
	}
	// The exposition written for the history is the registry's.
	requireSameText(t, "delivery", c)
}

func TestNoDeliveryMetricsWithoutADeliveryBlock(t *testing.T) {
	tr := delivery.NewTracker(delivery.Options{})
	defer tr.Stop()
	inner := newProbeCollector(&prober.Result{SizeLimit: -1}, time.Second, nil)
	if c := withDelivery(inner, tr, "plain"); c != inner {
		t.Error("a module without a delivery block got delivery metrics")
	}
	if c := withDelivery(inner, nil, "plain"); c != inner {
		t.Error("no tracker, yet delivery metrics")
	}
}

// The result page shows the module's recent canaries as the tracker has
// them, this probe's marked, every value escaped, and links to the IMAP
// transcript.
func TestProbePageDeliveryState(t *testing.T) {
	sent := time.Date(2026, 3, 4, 3, 12, 0, 0, time.UTC)
	s := delivery.Status{
		Pending: 1, Late: 1, Delivered: 3, JunkSeen: 1, Lost: 2, WatcherUp: true,
		Recent: []delivery.Canary{
			{ProbeID: "0badcafe-7", Sent: sent, State: delivery.StatePending},
			{ProbeID: "0badcafe-6", Sent: sent.Add(-time.Minute), Seen: sent.Add(-time.Minute + 1500*time.Millisecond),
				Latency: 1500 * time.Millisecond, ServerLatency: time.Second, Folder: "Junk" + hostileScript, Junk: true, State: delivery.StateDelivered},
			{ProbeID: "0badcafe-5" + hostileImg, Sent: sent.Add(-time.Hour), State: delivery.StateLost},
		},
	}
	e := entryFor(&prober.Result{Success: true, SizeLimit: -1, MessageAccepted: true})
	p := newProbePage(e, sent)
	p.DeliveryState = deliveryStateOf(s, e.ProbeID)
	var b strings.Builder
	if err := probeTemplate.Execute(&b, p); err != nil {
		t.Fatal(err)
	}
	page := b.String()
	for _, raw := range []string{"<script", "<img"} {
		if strings.Contains(page, raw) {
			t.Errorf("page contains raw %q", raw)
		}
	}
	doc := parseHTML(t, page)
	state := doc.byID(t, "delivery-state")
	for attr, want := range map[string]string{"data-watcher-up": "true", "data-pending": "1", "data-late": "1",
		"data-delivered": "3", "data-junk": "1", "data-lost": "2"} {
		if got := state.attrs[attr]; got != want {
			t.Errorf("#delivery-state %s=%q, want %q", attr, got, want)
		}
	}
	rows := doc.byID(t, "canaries").find(func(n *htmlNode) bool { return n.tag == "tr" && n.attrs["data-probe-id"] != "" })
	type row struct{ id, state, folder, junk, this string }
	var got []row
	for _, r := range rows {
		got = append(got, row{r.attrs["data-probe-id"], r.attrs["data-state"], r.attrs["data-folder"], r.attrs["data-junk"], r.attrs["data-this-probe"]})
	}
	want := []row{
		{"0badcafe-7", "pending", "", "false", "true"},
		{"0badcafe-6", "delivered", "Junk" + hostileScript, "true", ""},
		{"0badcafe-5" + hostileImg, "lost", "", "false", ""},
	}
	if len(got) != len(want) {
		t.Fatalf("canary rows %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("row %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	if text := rows[1].Text(); !strings.Contains(text, "1.5s") || !strings.Contains(text, "2026-03-04 03:11:01Z") {
		t.Errorf("delivered row %q: want its latency and when it was seen", text)
	}
	link := doc.byID(t, "imap-transcript").attrs["href"]
	q, err := url.ParseQuery(strings.TrimPrefix(link, "probe?"))
	if err != nil || !strings.HasPrefix(link, "probe?") || q.Get("delivery_transcript") != "true" || q.Get("debug") != "true" ||
		q.Get("module") != e.Module || q.Get("target") != e.Target {
		t.Errorf("transcript link %q (%v)", link, err)
	}

	// Without a delivery block, or without a tracker: no section.
	p.DeliveryState = nil
	b.Reset()
	if err := probeTemplate.Execute(&b, p); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), `id="delivery-state"`) || strings.Contains(b.String(), `id="imap-transcript"`) {
		t.Error("a page without delivery state shows the delivery section")
	}
}

// The view comes from the tracker: a module with a delivery block shows
// the canary it just sent as pending; one without has no view.
func TestDeliveryStateViewFromTracker(t *testing.T) {
	tr := delivery.NewTracker(delivery.Options{})
	defer tr.Stop()
	cfg, err := config.Load([]byte(`modules:
  plain: {}
  canary:
    smtp:
      mail:
        from: probe@example.net
        to: [canary@example.net]
        delivery:
          imap:
            address: 127.0.0.1:1
            username: canary@example.net
            password: secret
`))
	if err != nil {
		t.Fatal(err)
	}
	tr.Apply(cfg)
	tr.Sent("canary", "feed-1", time.Now())
	if v := newDeliveryStateView(tr, "plain", "x"); v != nil {
		t.Errorf("module without a delivery block: %+v", v)
	}
	if v := newDeliveryStateView(nil, "canary", "x"); v != nil {
		t.Errorf("no tracker: %+v", v)
	}
	v := newDeliveryStateView(tr, "canary", "feed-1")
	if v == nil || v.WatcherUp || v.Pending != 1 || len(v.Canaries) != 1 || !v.Canaries[0].ThisProbe || v.Canaries[0].State != delivery.StatePending {
		t.Errorf("view %+v, want one pending canary of this probe and the watcher down", v)
	}
}
