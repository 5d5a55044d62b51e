package examples

import (
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"maps"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	versioncollector "github.com/prometheus/client_golang/prometheus/collectors/version"

	"github.com/smtp-exporter/smtp_exporter/collector"
	"github.com/smtp-exporter/smtp_exporter/config"
	"github.com/smtp-exporter/smtp_exporter/internal/smtptest"
	"github.com/smtp-exporter/smtp_exporter/prober"
)

// The PromQL in the rules and the dashboard is read with a small tokenizer
// rather than Prometheus' parser, which would pull all of Prometheus into
// go.mod. It removes what cannot name a metric (strings, label matchers,
// ranges, label lists, modifiers, numbers) and keeps the identifiers that
// are neither keywords nor followed by "(" (functions and aggregations).
var (
	stringLiteral   = regexp.MustCompile("\"(?:[^\"\\\\]|\\\\.)*\"|'(?:[^'\\\\]|\\\\.)*'|`[^`]*`")
	promqlComment   = regexp.MustCompile(`#[^\n]*`)
	templateVar     = regexp.MustCompile(`\$\{?\w+\}?`)
	labelMatchers   = regexp.MustCompile(`\{[^{}]*\}`)
	rangeSelector   = regexp.MustCompile(`\[[^\[\]]*\]`)
	labelList       = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)`)
	offsetModifier  = regexp.MustCompile(`\boffset\s+-?\w+`)
	atModifier      = regexp.MustCompile(`@\s*[\w.()]+`)
	promqlToken     = regexp.MustCompile(`[0-9][0-9A-Za-z_.]*|\.[0-9]+|[A-Za-z_:][A-Za-z0-9_:]*`)
	selectorPattern = regexp.MustCompile(`([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^{}]*)\}`)
	matcherLabel    = regexp.MustCompile(`([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)`)
	labelListLabels = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)`)
)

var promqlKeywords = map[string]bool{
	"and": true, "or": true, "unless": true, "by": true, "without": true, "on": true, "ignoring": true,
	"group_left": true, "group_right": true, "offset": true, "bool": true, "inf": true, "nan": true, "atan2": true,
}

func stripStrings(expr string) string {
	return stringLiteral.ReplaceAllString(expr, `""`)
}

// metricNames returns the metric names an expression selects, sorted.
func metricNames(expr string) []string {
	s := templateVar.ReplaceAllString(expr, " ")
	s = stripStrings(s)
	s = promqlComment.ReplaceAllString(s, " ")
	s = labelMatchers.ReplaceAllString(s, " ")
	s = rangeSelector.ReplaceAllString(s, " ")
	s = labelList.ReplaceAllString(s, " ")
	s = offsetModifier.ReplaceAllString(s, " ")
	s = atModifier.ReplaceAllString(s, " ")
	names := map[string]bool{}
	for _, loc := range promqlToken.FindAllStringIndex(s, -1) {
		tok := s[loc[0]:loc[1]]
		if tok[0] >= '0' && tok[0] <= '9' || tok[0] == '.' || promqlKeywords[tok] {
			continue
		}
		if rest := strings.TrimLeft(s[loc[1]:], " \t\n"); strings.HasPrefix(rest, "(") {
			continue // a function or an aggregation
		}
		names[tok] = true
	}
	return slices.Sorted(maps.Keys(names))
}

// selectorLabels returns, for each selector with a metric name, the label
// names its matchers use.
func selectorLabels(expr string) map[string][]string {
	s := stripStrings(templateVar.ReplaceAllString(expr, " "))
	out := map[string][]string{}
	for _, m := range selectorPattern.FindAllStringSubmatch(s, -1) {
		if m[1] == "" || promqlKeywords[m[1]] {
			continue
		}
		for _, lm := range matcherLabel.FindAllStringSubmatch(m[2], -1) {
			out[m[1]] = append(out[m[1]], lm[1])
		}
	}
	return out
}

// groupingLabels returns the labels named in by, without, on, ignoring and
// group_* lists.
func groupingLabels(expr string) []string {
	var out []string
	for _, m := range labelListLabels.FindAllStringSubmatch(stripStrings(expr), -1) {
		for _, l := range strings.Split(m[1], ",") {
			if l = strings.TrimSpace(l); l != "" {
				out = append(out, l)
			}
		}
	}
	return out
}

func TestMetricNameTokenizer(t *testing.T) {
	for _, tc := range []struct {
		expr   string
		names  []string
		labels map[string][]string
	}{
		{
			expr:   `sum by (job, le) (rate(foo_total{a="b", c=~"x|y"}[5m] offset 1d)) > bool 2e3 and on (instance) group_left (zone) bar`,
			names:  []string{"bar", "foo_total"},
			labels: map[string][]string{"foo_total": {"a", "c"}},
		},
		{
			// Strings that look like selectors, Grafana variables, a
			// subquery and a function without arguments.
			expr:   `label_join(up{job=~"$job", x="{a}[1m] b"}, "t", " ", "instance") * on() (time() - avg_over_time(baz[$__range:1m])) or vector(1) # comment quux`,
			names:  []string{"baz", "up"},
			labels: map[string][]string{"up": {"job", "x"}},
		},
		{
			expr:  "max_over_time(m1[1h] offset 1d) unless on (instance, job, mechanism) m2 @ end()",
			names: []string{"m1", "m2"},
		},
	} {
		if got := metricNames(tc.expr); !slices.Equal(got, tc.names) {
			t.Errorf("metricNames(%q) = %v, want %v", tc.expr, got, tc.names)
		}
		for metric, want := range tc.labels {
			if got := selectorLabels(tc.expr)[metric]; !slices.Equal(got, want) {
				t.Errorf("selectorLabels(%q)[%s] = %v, want %v", tc.expr, metric, got, want)
			}
		}
	}
	if got, want := groupingLabels(`sum by (job, le) (x) * on(instance) group_left() y`), []string{"job", "le", "instance"}; !slices.Equal(got, want) {
		t.Errorf("groupingLabels = %v, want %v", got, want)
	}
}

// Labels that Prometheus, not the exporter, puts on every series of a scrape
// job (prometheus/prometheus.yml sets module from the module parameter).
var targetLabels = []string{"instance", "job", "module"}

// prometheusOwnMetrics are series Prometheus writes for each scrape itself.
var prometheusOwnMetrics = map[string][]string{"up": nil}

// emittedMetrics returns every metric name the exporter can emit, with the
// label names of each: the /probe metrics of fully populated results of
// every shipped module (a success and a failure each), the exporter's own
// /metrics, registered as the process registers them, and what a module
// with a delivery block adds to both (deliveryMetrics).
func emittedMetrics(t *testing.T) map[string][]string {
	t.Helper()
	cfg, err := config.LoadFile(shippedConfig)
	if err != nil {
		t.Fatal(err)
	}
	metrics := map[string][]string{}
	described := map[string]bool{}
	for _, module := range cfg.Modules {
		for _, success := range []bool{true, false} {
			reg := prometheus.NewRegistry()
			// A failed result is also reported as reused, as a login held
			// by auth_failure_backoff is, so that its age metric shows up.
			c := collector.New(populatedResult(t, &module, success), 10*time.Second)
			if !success {
				c = collector.NewWithAge(populatedResult(t, &module, success), 10*time.Second, time.Minute)
			}
			reg.MustRegister(c)
			gather(t, reg, metrics)

			descs := make(chan *prometheus.Desc, 64)
			c.Describe(descs)
			close(descs)
			for d := range descs {
				if m := regexp.MustCompile(`fqName: "([^"]+)"`).FindStringSubmatch(d.String()); m != nil {
					described[m[1]] = true
				}
			}
		}
	}
	// The results must be populated enough that every metric the collector
	// describes shows up; otherwise this test would wave a typo through for
	// a metric it never saw.
	for name := range described {
		if _, ok := metrics[name]; !ok {
			t.Errorf("the hand-made results never produce %s: populate them further", name)
		}
	}

	reg := prometheus.NewRegistry()
	// As in main.go.
	reg.MustRegister(versioncollector.NewCollector("smtp_exporter"))
	live := config.NewSafeConfig(reg)
	if err := live.Reload(shippedConfig); err != nil {
		t.Fatal(err)
	}
	collector.NewExporter(collector.Options{Config: live, Registerer: reg})
	gather(t, reg, metrics)
	// The shipped configuration has no delivery block (it would need an
	// IMAP server): a module of more_modules.yml adds its metrics.
	deliveryMetrics(t, metrics)
	for name, labels := range prometheusOwnMetrics {
		metrics[name] = labels
	}
	return metrics
}

func gather(t *testing.T, g prometheus.Gatherer, into map[string][]string) {
	t.Helper()
	families, err := g.Gather()
	if err != nil {
		t.Fatalf("gathering: %v", err)
	}
	for _, mf := range families {
		addFamily(mf, into)
	}
}

// populatedResult is a probe result of module with every field set: every
// planned phase run with a reply, extensions before and after TLS, a
// verified TLS session, authentication and the canary, and on failure the
// failure.
func populatedResult(t *testing.T, module *config.Module, success bool) *prober.Result {
	t.Helper()
	leaf := smtptest.Certs().Server.Leaf
	r := &prober.Result{
		Success:       success,
		Duration:      120 * time.Millisecond,
		Host:          "smtp.example.net",
		Port:          module.SMTP.EffectivePort(),
		DNSLookupTime: time.Millisecond,
		IP:            netip.MustParseAddr("192.0.2.25"),
		HELOFallback:  false,
		Extensions: map[prober.Phase][]string{
			prober.PhaseEHLO:    {"PIPELINING", "SIZE", "STARTTLS", "8BITMIME"},
			prober.PhaseEHLOTLS: {"PIPELINING", "SIZE", "AUTH", "8BITMIME"},
		},
		SizeLimit: 10 << 20,
		TLS: &prober.TLSSession{
			Version:         tls.VersionTLS13,
			CipherSuite:     tls.TLS_AES_128_GCM_SHA256,
			Verified:        true,
			LastChainExpiry: leaf.NotAfter,
		},
		Certificates: []prober.Certificate{{
			Fingerprint: sha256.Sum256(leaf.Raw),
			Subject:     leaf.Subject.String(),
			Issuer:      leaf.Issuer.String(),
			DNSNames:    leaf.DNSNames,
			Serial:      fmt.Sprintf("%x", leaf.SerialNumber.Bytes()),
			NotBefore:   leaf.NotBefore,
			NotAfter:    leaf.NotAfter,
		}},
		AuthAttempted:      true,
		AuthSuccess:        success,
		AuthMechanisms:     []string{"PLAIN", "LOGIN", "CRAM-MD5"},
		AuthMechanism:      "PLAIN",
		RecipientsAccepted: 1,
		MessageAccepted:    success,
	}
	for _, p := range prober.PlannedPhases(module) {
		r.Phases = append(r.Phases, prober.PhaseResult{Phase: p, Ran: true, Duration: 5 * time.Millisecond, Code: 250, Enhanced: "2.0.0"})
	}
	if !success {
		r.Failure = &prober.Failure{Phase: prober.PhaseAuth, Reason: prober.ReasonAuthRejected}
	}
	return r
}

var templateAction = regexp.MustCompile(`(?s)\{\{.*?\}\}`)

// templateQueries returns the queries in an annotation template: the
// strings inside its actions that hold a selector. Text outside the
// actions is prose, where an apostrophe is not a quote.
func templateQueries(text string) []string {
	var out []string
	for _, action := range templateAction.FindAllString(text, -1) {
		for _, s := range stringLiteral.FindAllString(action, -1) {
			if strings.Contains(s, "{") {
				out = append(out, s[1:len(s)-1])
			}
		}
	}
	return out
}

// queries is every PromQL expression the examples contain, keyed by where
// it is.
func queries(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, r := range loadRules(t) {
		out["rule "+r.Alert] = r.Expr
		for name, text := range r.Annotations {
			for i, q := range templateQueries(text) {
				out["rule "+r.Alert+" annotation "+name+" query "+string(rune('0'+i))] = q
			}
		}
	}
	for where, expr := range dashboardQueries(t, loadDashboard(t)) {
		out["dashboard "+where] = expr
	}
	return out
}

// TestQueriesUseEmittedMetrics checks every metric and label name in the
// rules and the dashboard against what the exporter emits, so that a
// renamed metric or a typo cannot leave an alert that never fires.
func TestQueriesUseEmittedMetrics(t *testing.T) {
	emitted := emittedMetrics(t)
	allLabels := slices.Clone(targetLabels)
	for _, labels := range emitted {
		allLabels = append(allLabels, labels...)
	}

	for where, expr := range queries(t) {
		names := metricNames(expr)
		if len(names) == 0 {
			t.Errorf("%s: no metric found in %q", where, expr)
		}
		for _, name := range names {
			if _, ok := emitted[name]; !ok {
				t.Errorf("%s uses %s, which the exporter does not emit", where, name)
			}
		}
		for metric, labels := range selectorLabels(expr) {
			known, ok := emitted[metric]
			if !ok {
				continue // reported above
			}
			for _, l := range labels {
				if !slices.Contains(known, l) && !slices.Contains(targetLabels, l) {
					t.Errorf("%s selects %s by label %q, which it does not have (labels: %v, plus %v)", where, metric, l, known, targetLabels)
				}
			}
		}
		for _, l := range groupingLabels(expr) {
			if !slices.Contains(allLabels, l) {
				t.Errorf("%s groups or matches by label %q, which no metric has", where, l)
			}
		}
	}
}

var (
	matcherWithValue = regexp.MustCompile(`([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"`)
	plainAlternation = regexp.MustCompile(`^[a-z0-9_]+(\|[a-z0-9_]+)*$`)
)

// TestQueriesUseKnownPhasesAndReasons checks the phase and reason values in
// label matchers against the closed sets declared in prober/result.go: a
// misspelt reason would make a selector match nothing, and the alert would
// never fire.
func TestQueriesUseKnownPhasesAndReasons(t *testing.T) {
	known := closedSets(t, "../prober/result.go")
	if len(known["phase"]) < 10 || len(known["reason"]) < 20 {
		t.Fatalf("read too few phases and reasons from prober/result.go: %v", known)
	}
	checked := 0
	for where, expr := range queries(t) {
		for _, m := range matcherWithValue.FindAllStringSubmatch(expr, -1) {
			label, op, value := m[1], m[2], m[3]
			set, ok := known[label]
			if !ok || strings.ContainsAny(value, "%$") {
				continue // another label, or a template placeholder
			}
			alternatives := []string{value}
			if op == "=~" || op == "!~" {
				if !plainAlternation.MatchString(value) {
					t.Errorf("%s: %s%s%q is not a plain list of alternatives this test can check", where, label, op, value)
					continue
				}
				alternatives = strings.Split(value, "|")
			}
			for _, v := range alternatives {
				checked++
				if !set[v] {
					t.Errorf("%s: %s %q is not a %s of prober/result.go", where, label, v, label)
				}
			}
		}
	}
	if checked == 0 {
		t.Error("no phase or reason matcher found: the check did not run")
	}
}

// closedSets reads the string constants of type Phase and Reason from the
// prober's source, keyed by the label they become.
func closedSets(t *testing.T, file string) map[string]map[string]bool {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), file, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	sets := map[string]map[string]bool{"phase": {}, "reason": {}}
	for _, decl := range f.Decls {
		gd, ok := decl.(*ast.GenDecl)
		if !ok || gd.Tok != token.CONST {
			continue
		}
		for _, spec := range gd.Specs {
			vs := spec.(*ast.ValueSpec)
			typ, ok := vs.Type.(*ast.Ident)
			if !ok {
				continue
			}
			set, ok := sets[strings.ToLower(typ.Name)]
			if !ok {
				continue
			}
			for _, v := range vs.Values {
				if lit, ok := v.(*ast.BasicLit); ok && lit.Kind == token.STRING {
					value, err := strconv.Unquote(lit.Value)
					if err != nil {
						t.Fatal(err)
					}
					set[value] = true
				}
			}
		}
	}
	return sets
}
