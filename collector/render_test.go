package collector

import (
	"math"
	"math/rand/v2"
	"net/netip"
	"strconv"
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

func requireSameText(t *testing.T, name string, c sampler) {
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

	age := 42 * time.Second
	for name, c := range map[string]sampler{
		"success":           newProbeCollector(successResult(fix), 8*time.Second, nil),
		"auth failed":       newProbeCollector(authFailedResult(fix), 8*time.Second, nil),
		"dns failed":        newProbeCollector(dnsFailedResult(), 8*time.Second, nil),
		"canary":            newProbeCollector(canaryResult(), 8*time.Second, nil),
		"hostile":           newProbeCollector(hostile, time.Second, nil),
		"nil result":        newProbeCollector(nil, time.Second, nil),
		"with age":          newProbeCollector(successResult(fix), 8*time.Second, &age),
		"transcript result": newProbeCollector(transcriptResult(), time.Second, nil),
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
		c := newProbeCollector(r, time.Duration(rng.Int64N(int64(time.Minute))), nil)
		if i%3 == 0 {
			age := time.Duration(rng.Int64N(int64(time.Hour)))
			c = newProbeCollector(r, time.Minute, &age)
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
	c := samplerFunc(func(emit emitFunc) {
		gauge(emit, successDesc, 1)
		gauge(emit, successDesc, 0)
		gauge(emit, smtpPhaseDurationDesc, 1, "ehlo")
	})
	text, err := renderText(c)
	if err == nil || !strings.Contains(err.Error(), "probe_success collected twice") {
		t.Errorf("error %v, want one about probe_success collected twice", err)
	}
	if strings.Count(text, "\nprobe_success ") != 1 || !strings.Contains(text, `probe_smtp_duration_seconds{phase="ehlo"} 1`) {
		t.Errorf("exposition:\n%s", text)
	}
	if _, err := renderText(samplerFunc(func(emit emitFunc) {
		gauge(emit, prometheus.NewDesc("foreign", "not ours", nil, nil), 1)
	})); err == nil {
		t.Error("a metric of a Desc the collector does not know was accepted")
	}
}

// TestRenderTextLeavesOutWhatTheRegistryRefuses: a metric with the wrong
// number of label values or a label value that is not UTF-8 is left out
// and reported, and the rest is written as the registry writes it.
func TestRenderTextLeavesOutWhatTheRegistryRefuses(t *testing.T) {
	c := samplerFunc(func(emit emitFunc) {
		gauge(emit, successDesc, 1)
		gauge(emit, smtpPhaseDurationDesc, 1, "ehlo", "extra")
		gauge(emit, smtpStatusCodeDesc, 250, "bad\xff")
		gauge(emit, smtpStatusCodeDesc, 220, "banner")
	})
	text, err := renderText(c)
	for _, want := range []string{"2 label values for 1 labels", "not valid UTF-8"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v, want one saying %q", err, want)
		}
	}
	want := "# HELP probe_smtp_status_code Reply code that ended each planned phase; 0 when the phase got no reply or did not run.\n" +
		"# TYPE probe_smtp_status_code gauge\nprobe_smtp_status_code{phase=\"banner\"} 220\n" +
		"# HELP probe_success Whether the probe succeeded (1) or failed (0).\n# TYPE probe_success gauge\nprobe_success 1\n"
	if text != want {
		t.Errorf("exposition:\n%s\nwant:\n%s", text, want)
	}
}

// TestRenderTextWritesValuesAndLabelsAsTheRegistry covers what results do
// not reach: the special values, -0, and label values and help that need
// escaping, in labels given out of name order.
func TestRenderTextWritesValuesAndLabelsAsTheRegistry(t *testing.T) {
	odd := newDesc("probe_test_odd", "Help with a \\ backslash,\na line feed and \"quotes\".", []string{"zeta", "alpha"})
	defer delete(descTexts, odd)
	c := samplerFunc(func(emit emitFunc) {
		for i, v := range []float64{math.NaN(), math.Inf(1), math.Inf(-1), math.Copysign(0, -1), -1, 1, 1e-9, 123456789012, 0.1} {
			gauge(emit, odd, v, strconv.Itoa(i%3), "q\"uote\\back\nline"+strconv.Itoa(i))
		}
		emit(deliveryLostDesc, prometheus.CounterValue, 3)
	})
	requireSameText(t, "odd values", c)
}

// samplerFunc is a sampler made of a function, for the tests.
type samplerFunc func(emitFunc)

func (f samplerFunc) Describe(chan<- *prometheus.Desc)    {}
func (f samplerFunc) Collect(ch chan<- prometheus.Metric) { collectInto(ch, f) }
func (f samplerFunc) samples(emit emitFunc)               { f(emit) }

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
