package collector

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/smtp-exporter/smtp_exporter/delivery"
	"github.com/smtp-exporter/smtp_exporter/internal/printable"
)

// The delivery metrics of a canary module's /probe answer: the state the
// Tracker has gathered across probes, not this probe's.
var (
	deliveryLastDesc = newDeliveryDesc("last_seconds",
		"Time from the 250 to DATA to the moment the most recently delivered canary was found in its mailbox.")
	deliveryLastServerDesc = newDeliveryDesc("last_server_seconds",
		"Time from the 250 to DATA to the mailbox server's arrival time (INTERNALDATE, whole seconds) of the most recently delivered canary.")
	deliveryPendingDesc = newDeliveryDesc("pending",
		"Canaries accepted by the server and not yet found in the mailbox.")
	deliveryLateDesc = newDeliveryDesc("late",
		"Pending canaries accepted longer than late_after ago.")
	deliveryLostDesc = newDeliveryDesc("lost_total",
		"Canaries not found within lost_after, since the exporter started.")
	deliveryDeliveredDesc = newDeliveryDesc("delivered_total",
		"Canaries found in the mailbox or its Junk folder, since the exporter started.")
	deliveryJunkDesc = newDeliveryDesc("junk_total",
		"Canaries found in the account's Junk folder, since the exporter started.")
	deliveryWatcherUpDesc = newDeliveryDesc("watcher_up",
		"1 when the IMAP session watching the mailbox is logged in and watching.")
)

// deliveryDescs lists the delivery metrics, for Describe.
var deliveryDescs []*prometheus.Desc

func newDeliveryDesc(name, help string) *prometheus.Desc {
	d := newDesc("probe_smtp_delivery_"+name, help, nil)
	deliveryDescs = append(deliveryDescs, d)
	return d
}

// deliveryCollector adds a module's delivery state to its probe's metrics.
type deliveryCollector struct {
	sampler
	status delivery.Status
}

func (c deliveryCollector) Describe(ch chan<- *prometheus.Desc) {
	c.sampler.Describe(ch)
	for _, d := range deliveryDescs {
		ch <- d
	}
}

func (c deliveryCollector) Collect(ch chan<- prometheus.Metric) { collectInto(ch, c) }

func (c deliveryCollector) samples(emit emitFunc) {
	c.sampler.samples(emit)
	s := c.status
	gauge := func(d *prometheus.Desc, v float64) { emit(d, prometheus.GaugeValue, v) }
	counter := func(d *prometheus.Desc, v uint64) { emit(d, prometheus.CounterValue, float64(v)) }
	if s.HasLast {
		gauge(deliveryLastDesc, s.LastLatency.Seconds())
		gauge(deliveryLastServerDesc, s.LastServerLatency.Seconds())
	}
	gauge(deliveryPendingDesc, float64(s.Pending))
	gauge(deliveryLateDesc, float64(s.Late))
	counter(deliveryLostDesc, s.Lost)
	counter(deliveryDeliveredDesc, s.Delivered)
	counter(deliveryJunkDesc, s.JunkSeen)
	up := 0.0
	if s.WatcherUp {
		up = 1
	}
	gauge(deliveryWatcherUpDesc, up)
}

// withDelivery adds the module's delivery state to c when it has a
// delivery block; t may be nil.
func withDelivery(c sampler, t *delivery.Tracker, module string) sampler {
	s, ok := t.Status(module)
	if !ok {
		return c
	}
	return deliveryCollector{sampler: c, status: s}
}

// writeDeliveryText appends a module's delivery state to debug output, and
// the IMAP session's redacted transcript when asked for.
func writeDeliveryText(w io.Writer, t *delivery.Tracker, module string, transcript bool) {
	s, ok := t.Status(module)
	if !ok {
		return
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n\n\nDelivery (IMAP watcher up: %t; pending %d, late %d; delivered %d, in Junk %d, lost %d since start):\n",
		s.WatcherUp, s.Pending, s.Late, s.Delivered, s.JunkSeen, s.Lost)
	for _, c := range s.Recent {
		fmt.Fprintf(&b, "  %s sent %s  %s", printable.String(c.ProbeID), c.Sent.UTC().Format(time.RFC3339), c.State)
		if !c.Seen.IsZero() {
			fmt.Fprintf(&b, "  seen %s in %s after %.3fs (server: %.0fs)", c.Seen.UTC().Format(time.RFC3339),
				printable.String(c.Folder), c.Latency.Seconds(), c.ServerLatency.Seconds())
		}
		b.WriteString("\n")
	}
	if transcript {
		b.WriteString("\nIMAP transcript (credentials replaced):\n")
		for _, l := range t.Transcript(module) {
			b.WriteString(printable.String(l))
			b.WriteString("\n")
		}
	} else {
		b.WriteString("\nAdd delivery_transcript=true for the IMAP session's transcript.\n")
	}
	io.WriteString(w, b.String())
}
