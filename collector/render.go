package collector

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
)

// descText is what the text format needs of a Desc and prometheus.Desc
// keeps to itself: name, help, label names, and the order of the labels by
// name, which is the order the format writes and sorts them in.
type descText struct {
	name   string
	labels []string
	byName []int
	// header is the HELP line and the start of the TYPE line, escaped.
	header string
}

// descTexts holds every Desc the probe collector emits, filled by probeDesc
// and smtpDesc when the package's Descs are built and read-only after.
var descTexts = map[*prometheus.Desc]*descText{}

func newDesc(fqName, help string, labels []string) *prometheus.Desc {
	d := prometheus.NewDesc(fqName, help, labels, nil)
	byName := make([]int, len(labels))
	for i := range byName {
		byName[i] = i
	}
	slices.SortFunc(byName, func(a, b int) int { return cmp.Compare(labels[a], labels[b]) })
	var header strings.Builder
	header.WriteString("# HELP " + fqName + " ")
	writeEscaped(&header, help, false)
	header.WriteString("\n# TYPE " + fqName)
	descTexts[d] = &descText{name: fqName, labels: labels, byName: byName, header: header.String()}
	return d
}

// emitFunc receives one metric of a probe: a value, its kind and the values
// of its Desc's labels.
type emitFunc func(desc *prometheus.Desc, kind prometheus.ValueType, value float64, labels ...string)

// sampler is a collector of this package: it hands its metrics to an
// emitFunc, which renderText writes as text without building a
// prometheus.Metric for each, and which Collect turns into const metrics
// for a registry (the other exposition formats).
type sampler interface {
	prometheus.Collector
	samples(emit emitFunc)
}

// collectInto is Collect for a sampler. A metric that cannot be built is
// sent as an invalid metric, which the registry reports, rather than a
// panic in the registry's goroutine.
func collectInto(ch chan<- prometheus.Metric, s sampler) {
	s.samples(func(desc *prometheus.Desc, kind prometheus.ValueType, value float64, labels ...string) {
		m, err := prometheus.NewConstMetric(desc, kind, value, labels...)
		if err != nil {
			m = prometheus.NewInvalidMetric(desc, err)
		}
		ch <- m
	})
}

// lastExpositionLen is the length of the latest exposition: the next one
// is about as long (the HELP and TYPE lines are most of it), so its buffer
// is allocated once, at the size the history then keeps it at.
var lastExpositionLen atomic.Int64

// sample is one metric as renderText keeps it until it is written.
type sample struct {
	desc   *descText
	kind   prometheus.ValueType
	value  float64
	labels []string
}

// renderText writes the metrics of s in the text exposition format,
// exactly as a registry holding s alone would have them gathered and
// encoded: metric families sorted by name, metrics by label values (labels
// in name order), the same escaping and number formatting. It skips the
// registry and the const metrics and protocol buffers it is built on,
// which made up most of the exporter's work and allocations around a
// probe. The registry's checks that matter for these metrics stay: a
// metric of an unknown Desc, with the wrong number of labels or a label
// that is not UTF-8, or repeating the labels of another, is left out and
// reported in the error, as the registry does with ContinueOnError. The
// equivalence with the registry is tested on every fixture and on random
// results.
func renderText(s sampler) (string, error) {
	var errs []error
	// A probe's metrics number some 50 to 70.
	samples := make([]sample, 0, 80)
	s.samples(func(desc *prometheus.Desc, kind prometheus.ValueType, value float64, labels ...string) {
		d, ok := descTexts[desc]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("metric with unknown %s", desc))
		case len(labels) != len(d.labels):
			errs = append(errs, fmt.Errorf("collecting %s: %d label values for %d labels", d.name, len(labels), len(d.labels)))
		case slices.ContainsFunc(labels, func(v string) bool { return !utf8.ValidString(v) }):
			errs = append(errs, fmt.Errorf("collecting %s: label value is not valid UTF-8", d.name))
		default:
			samples = append(samples, sample{desc: d, kind: kind, value: value, labels: labels})
		}
	})
	slices.SortStableFunc(samples, func(a, b sample) int {
		if a.desc != b.desc {
			return cmp.Compare(a.desc.name, b.desc.name)
		}
		return compareLabels(a, b)
	})
	var b strings.Builder
	b.Grow(max(int(lastExpositionLen.Load())+512, 4096))
	var num []byte
	for i, s := range samples {
		d := s.desc
		if i > 0 && samples[i-1].desc == d {
			if compareLabels(samples[i-1], s) == 0 {
				errs = append(errs, fmt.Errorf("%s collected twice with the same labels", d.name))
				continue
			}
		} else {
			b.WriteString(d.header)
			b.WriteString(typeNames[s.kind])
		}
		b.WriteString(d.name)
		for j, k := range d.byName {
			if j == 0 {
				b.WriteByte('{')
			} else {
				b.WriteByte(',')
			}
			b.WriteString(d.labels[k])
			b.WriteString(`="`)
			writeEscaped(&b, s.labels[k], true)
			b.WriteByte('"')
		}
		if len(d.byName) > 0 {
			b.WriteByte('}')
		}
		b.WriteByte(' ')
		num = appendValue(num[:0], s.value)
		b.Write(num)
		b.WriteByte('\n')
	}
	lastExpositionLen.Store(int64(b.Len()))
	return b.String(), errors.Join(errs...)
}

// typeNames ends the TYPE line of each kind of metric.
var typeNames = map[prometheus.ValueType]string{
	prometheus.GaugeValue:   " gauge\n",
	prometheus.CounterValue: " counter\n",
	prometheus.UntypedValue: " untyped\n",
}

// compareLabels orders the metrics of one family as the registry does: by
// the values of their labels in name order.
func compareLabels(x, y sample) int {
	for _, k := range x.desc.byName {
		if n := cmp.Compare(x.labels[k], y.labels[k]); n != 0 {
			return n
		}
	}
	return 0
}

// writeEscaped escapes as the text format does: backslash and line feed in
// HELP, and the double quote as well in a label value.
func writeEscaped(b *strings.Builder, s string, quote bool) {
	special := "\\\n"
	if quote {
		special = "\\\n\""
	}
	for {
		i := strings.IndexAny(s, special)
		if i < 0 {
			b.WriteString(s)
			return
		}
		b.WriteString(s[:i])
		switch s[i] {
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		default:
			b.WriteString(`\"`)
		}
		s = s[i+1:]
	}
}

// appendValue formats a value as the text format does.
func appendValue(dst []byte, v float64) []byte {
	switch {
	case v == 0:
		return append(dst, '0') // -0 too
	case math.IsNaN(v):
		return append(dst, "NaN"...)
	case math.IsInf(v, +1):
		return append(dst, "+Inf"...)
	case math.IsInf(v, -1):
		return append(dst, "-Inf"...)
	}
	return strconv.AppendFloat(dst, v, 'g', -1, 64)
}
