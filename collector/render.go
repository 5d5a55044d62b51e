package collector

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// descText is the name and help of a Desc, which prometheus.Desc keeps to
// itself.
type descText struct {
	name, help string
}

// descTexts holds every Desc the probe collector emits, filled by probeDesc
// and smtpDesc when the package's Descs are built and read-only after.
var descTexts = map[*prometheus.Desc]descText{}

func newDesc(fqName, help string, labels []string) *prometheus.Desc {
	d := prometheus.NewDesc(fqName, help, labels, nil)
	descTexts[d] = descText{name: fqName, help: help}
	return d
}

// lastExpositionLen is the length of the latest exposition: the next one
// is about as long (the HELP and TYPE lines are most of it), so its buffer
// is allocated once, at the size the history then keeps it at.
var lastExpositionLen atomic.Int64

// renderText writes what c collects in the text exposition format, exactly
// as a registry holding c alone would have it gathered and encoded: metric
// families sorted by name, metrics by label values. It skips the registry,
// whose registration, gathering goroutines, consistency checks and two
// 1000-metric channels made up half of the exporter's allocations for a
// probe. The checks that matter for a collector of const gauges stay: a
// metric that cannot be written or repeats the labels of another is left
// out and reported in the error, as the registry does with ContinueOnError.
// The equivalence with the registry is tested on every fixture.
func renderText(c prometheus.Collector) (string, error) {
	ch := make(chan prometheus.Metric, 64)
	go func() {
		c.Collect(ch)
		close(ch)
	}()
	var (
		families []*dto.MetricFamily
		byDesc   = map[*prometheus.Desc]*dto.MetricFamily{}
		errs     []error
	)
	for m := range ch {
		desc := m.Desc()
		text, ok := descTexts[desc]
		if !ok {
			errs = append(errs, fmt.Errorf("metric with unknown %s", desc))
			continue
		}
		pb := &dto.Metric{}
		if err := m.Write(pb); err != nil {
			errs = append(errs, fmt.Errorf("collecting %s: %w", text.name, err))
			continue
		}
		mf := byDesc[desc]
		if mf == nil {
			mf = &dto.MetricFamily{Name: &text.name, Help: &text.help, Type: metricType(pb)}
			byDesc[desc] = mf
			families = append(families, mf)
		}
		mf.Metric = append(mf.Metric, pb)
	}
	slices.SortFunc(families, func(a, b *dto.MetricFamily) int { return cmp.Compare(a.GetName(), b.GetName()) })
	var b strings.Builder
	b.Grow(max(int(lastExpositionLen.Load())+512, 4096))
	for _, mf := range families {
		slices.SortFunc(mf.Metric, compareLabels)
		mf.Metric = slices.CompactFunc(mf.Metric, func(x, y *dto.Metric) bool {
			if compareLabels(x, y) == 0 {
				errs = append(errs, fmt.Errorf("%s collected twice with the same labels", mf.GetName()))
				return true
			}
			return false
		})
		if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
			errs = append(errs, err)
		}
	}
	lastExpositionLen.Store(int64(b.Len()))
	return b.String(), errors.Join(errs...)
}

// compareLabels orders metrics as the registry does: by the values of their
// (name-sorted) label pairs.
func compareLabels(x, y *dto.Metric) int {
	if n := cmp.Compare(len(x.Label), len(y.Label)); n != 0 {
		return n
	}
	for i := range x.Label {
		if n := cmp.Compare(x.Label[i].GetValue(), y.Label[i].GetValue()); n != 0 {
			return n
		}
	}
	return 0
}

func metricType(m *dto.Metric) *dto.MetricType {
	t := dto.MetricType_UNTYPED
	switch {
	case m.Gauge != nil:
		t = dto.MetricType_GAUGE
	case m.Counter != nil:
		t = dto.MetricType_COUNTER
	case m.Summary != nil:
		t = dto.MetricType_SUMMARY
	case m.Histogram != nil:
		t = dto.MetricType_HISTOGRAM
	}
	return &t
}
