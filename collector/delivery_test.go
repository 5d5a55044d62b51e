package collector

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/smtp-exporter/smtp_exporter/delivery"
	"github.com/smtp-exporter/smtp_exporter/prober"
)

func TestDeliveryMetrics(t *testing.T) {
	r := &prober.Result{Success: true, SizeLimit: -1, MessageAccepted: true}
	c := deliveryCollector{Collector: New(r, time.Second), status: delivery.Status{
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
	text, err := renderText(c)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text, "probe_smtp_delivery_pending 2\n") || !strings.Contains(text, "probe_success 1\n") {
		t.Errorf("exposition:\n%s", text)
	}
}

func TestNoDeliveryMetricsWithoutADeliveryBlock(t *testing.T) {
	tr := delivery.NewTracker(delivery.Options{})
	defer tr.Stop()
	inner := New(&prober.Result{SizeLimit: -1}, time.Second)
	if c := withDelivery(inner, tr, "plain"); c != inner {
		t.Error("a module without a delivery block got delivery metrics")
	}
	if c := withDelivery(inner, nil, "plain"); c != inner {
		t.Error("no tracker, yet delivery metrics")
	}
}
