package collector

import (
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/smtp-exporter/smtp_exporter/prober"
)

// registryText is the reference renderText must match: the collector in a
// registry of its own, gathered and encoded.
func registryText(t *testing.T, c prometheus.Collector) string {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	text, err := exposition(reg)
	if err != nil {
		t.Fatalf("registry: %v", err)
	}
	return text
}

func requireSameText(t *testing.T, name string, c prometheus.Collector) {
	t.Helper()
	got, err := renderText(c)
	if err != nil {
		t.Errorf("%s: renderText: %v", name, err)
	}
	if want := registryText(t, c); got != want {
		t.Errorf("%s: renderText differs from the registry's exposition:\n%s\nwant:\n%s", name, got, want)
	}
}

func TestRenderTextIsTheRegistrysExposition(t *testing.T) {
	fix := newTLSFixture(t)
	hostile := successResult(nil)
	hostile.Phases = append(hostile.Phases,
		prober.PhaseResult{Phase: prober.PhaseAuth, Ran: true, Code: 535},
		prober.PhaseResult{Phase: "Weird Phase\xff", Ran: true, Code: 250, Enhanced: "5.7.8 bad"},
	)
	hostile.Extensions = map[prober.Phase][]string{
		prober.PhaseEHLO:    {"auth", "AUTH", "SIZE 100", "BAD\xffUTF8", strings.Repeat("L", 200), "", "Z", "A"},
		prober.PhaseEHLOTLS: {"<script>", "PIPELINING"},
	}
	hostile.AuthMechanisms = []string{"PLAIN", "plain", "X OAUTH", "\x00"}
	hostile.AuthMechanism = "LOGIN\r\nX"

	for name, c := range map[string]prometheus.Collector{
		"success":           New(successResult(fix), 8*time.Second),
		"auth failed":       New(authFailedResult(fix), 8*time.Second),
		"dns failed":        New(dnsFailedResult(), 8*time.Second),
		"canary":            New(canaryResult(), 8*time.Second),
		"hostile":           New(hostile, time.Second),
		"nil result":        New(nil, time.Second),
		"with age":          NewWithAge(successResult(fix), 8*time.Second, 42*time.Second),
		"transcript result": New(transcriptResult(), time.Second),
	} {
		requireSameText(t, name, c)
	}
}

// TestRenderTextOnRandomResults compares both renderings on results made
// up at random: phases in any order and any state, extension and mechanism
// lists with duplicates and junk, any address and size.
func TestRenderTextOnRandomResults(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	phases := []prober.Phase{prober.PhaseConnect, prober.PhaseTLS, prober.PhaseBanner, prober.PhaseEHLO,
		prober.PhaseStartTLS, prober.PhaseEHLOTLS, prober.PhaseAuth, prober.PhaseMail, prober.PhaseRcpt,
		prober.PhaseData, prober.PhaseRset, prober.PhaseQuit}
	words := []string{"PIPELINING", "SIZE", "STARTTLS", "AUTH", "8BITMIME", "DSN", "X-Y", "pipelining", "bad word", "", "ÉCHEC", "CHUNKING"}
	enhanced := []string{"", "2.0.0", "5.7.8", "4.7.0", "5.1.10", "9.9.9", "x"}
	pick := func(n int) []string {
		out := make([]string, rng.IntN(n))
		for i := range out {
			out[i] = words[rng.IntN(len(words))]
		}
		return out
	}
	for i := range 300 {
		r := &prober.Result{
			Success:            rng.IntN(2) == 0,
			Duration:           time.Duration(rng.Int64N(int64(10 * time.Second))),
			DNSLookupTime:      time.Duration(rng.Int64N(int64(time.Second))),
			SizeLimit:          rng.Int64N(3) - 1,
			RecipientsAccepted: rng.IntN(4),
			AuthSuccess:        rng.IntN(2) == 0,
			HELOFallback:       rng.IntN(2) == 0,
			MessageAccepted:    rng.IntN(2) == 0,
			AuthMechanisms:     pick(6),
			Extensions:         map[prober.Phase][]string{},
		}
		if rng.IntN(3) > 0 {
			r.IP = netip.AddrFrom4([4]byte{127, 0, 0, byte(rng.IntN(256))})
		}
		for _, ph := range phases {
			if rng.IntN(3) == 0 {
				continue
			}
			pr := prober.PhaseResult{Phase: ph, Ran: rng.IntN(4) > 0}
			if pr.Ran {
				pr.Duration = time.Duration(rng.Int64N(int64(time.Second)))
				pr.Code = 200 + rng.IntN(400)
				pr.Enhanced = enhanced[rng.IntN(len(enhanced))]
			}
			r.Phases = append(r.Phases, pr)
		}
		for _, ph := range []prober.Phase{prober.PhaseEHLO, prober.PhaseEHLOTLS} {
			if rng.IntN(2) == 0 {
				r.Extensions[ph] = pick(10)
			}
		}
		if rng.IntN(2) == 0 {
			r.AuthMechanism = words[rng.IntN(len(words))]
		}
		if !r.Success && rng.IntN(2) == 0 {
			r.Failure = &prober.Failure{Phase: phases[rng.IntN(len(phases))], Reason: prober.ReasonTimeout}
		}
		var c prometheus.Collector = New(r, time.Duration(rng.Int64N(int64(time.Minute))))
		if i%3 == 0 {
			c = NewWithAge(r, time.Minute, time.Duration(rng.Int64N(int64(time.Hour))))
		}
		got, err := renderText(c)
		if want := registryText(t, c); got != want || err != nil {
			t.Fatalf("result %d (%+v): renderText (err %v) differs from the registry's exposition:\n%s\nwant:\n%s", i, r, err, got, want)
		}
	}
}

// TestRenderTextReportsDuplicates keeps the registry's guard against a
// collector that emits one series twice: the second is left out and the
// error says so.
func TestRenderTextReportsDuplicates(t *testing.T) {
	c := collectorFunc(func(ch chan<- prometheus.Metric) {
		gauge(ch, successDesc, 1)
		gauge(ch, successDesc, 0)
		gauge(ch, smtpPhaseDurationDesc, 1, "ehlo")
	})
	text, err := renderText(c)
	if err == nil || !strings.Contains(err.Error(), "probe_success collected twice") {
		t.Errorf("error %v, want one about probe_success collected twice", err)
	}
	if strings.Count(text, "\nprobe_success ") != 1 || !strings.Contains(text, `probe_smtp_duration_seconds{phase="ehlo"} 1`) {
		t.Errorf("exposition:\n%s", text)
	}
	if _, err := renderText(collectorFunc(func(ch chan<- prometheus.Metric) {
		ch <- prometheus.MustNewConstMetric(prometheus.NewDesc("foreign", "not ours", nil, nil), prometheus.GaugeValue, 1)
	})); err == nil {
		t.Error("a metric of a Desc the collector does not know was accepted")
	}
}

type collectorFunc func(chan<- prometheus.Metric)

func (f collectorFunc) Describe(chan<- *prometheus.Desc)    {}
func (f collectorFunc) Collect(ch chan<- prometheus.Metric) { f(ch) }

// exposition renders everything g gathers in the text format, as promhttp
// would: the reference renderText is compared with.
func exposition(g prometheus.Gatherer) (string, error) {
	mfs, err := g.Gather()
	var buf strings.Builder
	for _, mf := range mfs {
		if _, werr := expfmt.MetricFamilyToText(&buf, mf); werr != nil && err == nil {
			err = werr
		}
	}
	return buf.String(), err
}
