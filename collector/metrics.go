// Package collector turns a probe's Result into Prometheus metrics, serves
// the /probe endpoint, keeps a bounded history of recent probes and renders
// the landing, logs and config pages.
package collector

import (
	"crypto/tls"
	"encoding/hex"
	"hash/fnv"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/smtp-exporter/smtp_exporter/internal/printable"
	"github.com/smtp-exporter/smtp_exporter/prober"
)

const namespace = "probe"

func probeDesc(name, help string, labels ...string) *prometheus.Desc {
	return newDesc(prometheus.BuildFQName(namespace, "", name), help, labels)
}

func smtpDesc(name, help string, labels ...string) *prometheus.Desc {
	return newDesc(prometheus.BuildFQName(namespace, "smtp", name), help, labels)
}

// The metrics of one probe. Names and meanings of the blackbox-compatible
// ones follow blackbox_exporter, so that its alerts and dashboards apply.
var (
	successDesc = probeDesc("success",
		"Whether the probe succeeded (1) or failed (0).")
	durationDesc = probeDesc("duration_seconds",
		"How long the probe took to complete, in seconds.")
	timeoutDesc = probeDesc("timeout_seconds",
		"The timeout the probe ran with: the scrape timeout less the offset, capped by the module's timeout, in seconds.")
	dnsLookupDesc = probeDesc("dns_lookup_time_seconds",
		"How long resolving the target took, in seconds.")
	ipProtocolDesc = probeDesc("ip_protocol",
		"IP protocol of the address dialled: 4 or 6, 0 when the probe stopped before choosing one.")
	ipAddrHashDesc = probeDesc("ip_addr_hash",
		"FNV-32a hash of the address dialled, to notice when the target's address changes.")

	sslEarliestExpiryDesc = probeDesc("ssl_earliest_cert_expiry",
		"Earliest expiry of the certificates the server presented, verified or not, as a Unix timestamp in seconds.")
	sslLastChainExpiryDesc = probeDesc("ssl_last_chain_expiry_timestamp_seconds",
		"Expiry of the verified chain that expires last (each chain expiring with its earliest certificate), as a Unix timestamp in seconds.")
	sslLastChainInfoDesc = probeDesc("ssl_last_chain_info",
		"The leaf certificate the server presented, verified or not: SHA-256 fingerprint, subject, issuer, DNS names and serial number. Always 1.",
		"fingerprint_sha256", "subject", "issuer", "subjectalternative", "serialnumber")
	tlsVersionDesc = probeDesc("tls_version_info",
		"TLS version of the encrypted session. Always 1.", "version")
	tlsCipherDesc = probeDesc("tls_cipher_info",
		"Cipher suite of the encrypted session. Always 1.", "cipher")

	smtpPhaseDurationDesc = smtpDesc("duration_seconds",
		"Duration of each planned phase of the SMTP conversation, in seconds; 0 for a phase that did not run.", "phase")
	smtpStatusCodeDesc = smtpDesc("status_code",
		"Reply code that ended each planned phase; 0 when the phase got no reply or did not run.", "phase")
	smtpEnhancedCodeDesc = smtpDesc("enhanced_status_code_info",
		"RFC 3463 enhanced status code of the reply that ended a phase, when the server gave one. Always 1.", "phase", "code")
	smtpFailureDesc = smtpDesc("failure_info",
		"The phase a failed probe stopped in and why. Present only when the probe failed. Always 1.", "phase", "reason")
	smtpAuthSuccessDesc = smtpDesc("auth_success",
		"Whether authentication succeeded (1) or not (0). Present only for modules that authenticate.")
	smtpHELOFallbackDesc = smtpDesc("helo_fallback",
		"Whether the server refused EHLO and the probe fell back to HELO (1) or not (0).")
	smtpTLSDesc = smtpDesc("tls",
		"Whether the SMTP session was encrypted, by STARTTLS or implicit TLS (1), or not (0).")
	smtpExtensionDesc = smtpDesc("extension_info",
		"An extension keyword the server advertised in reply to EHLO (phase ehlo) or to EHLO on the encrypted session (phase ehlo_tls). Always 1.",
		"phase", "extension")
	smtpAuthMechanismDesc = smtpDesc("auth_mechanism_info",
		"A SASL mechanism the server advertised on the session authentication would run on. Always 1.", "mechanism")
	smtpAuthMechanismUsedDesc = smtpDesc("auth_mechanism_used_info",
		"The SASL mechanism the probe authenticated with. Always 1.", "mechanism")
	smtpSizeLimitDesc = smtpDesc("size_limit_bytes",
		"Maximum message size the server advertised with SIZE, in bytes; 0 means no fixed limit. Absent when SIZE was not advertised.")
	smtpRecipientsAcceptedDesc = smtpDesc("recipients_accepted",
		"Number of canary recipients the server accepted with RCPT TO. Present only for modules that send a canary.")
	smtpMessageAcceptedDesc = smtpDesc("message_accepted",
		"Whether the server accepted the canary message after DATA (1) or not (0). Present only for modules that send one.")
	smtpResultAgeDesc = smtpDesc("result_age_seconds",
		"Seconds since the probe whose result this is started: 0 for a probe run for this scrape, more for a result reused within min_interval or held after an authentication rejection. Present only for modules whose results can be reused.")
)

// Bounds on what a server can make us emit. The prober already sanitizes
// keywords; these caps keep a hostile or broken server from inflating the
// series count of a scrape even if it did not.
const (
	maxKeywordsPerList = 64
	maxKeywordLen      = 40
	maxCertLabelLen    = 512
)

// probeCollector exposes one probe's Result. It is built per probe, holds no
// state of its own and is registered with a registry made for that probe.
type probeCollector struct {
	result  *prober.Result
	timeout time.Duration
	// age, when not nil, is reported as probe_smtp_result_age_seconds.
	age *time.Duration
}

// New returns a collector for the metrics of one finished probe. timeout is
// the effective timeout the probe ran with.
func New(r *prober.Result, timeout time.Duration) prometheus.Collector {
	return newProbeCollector(r, timeout, nil)
}

// NewWithAge is New for a module whose results can be reused: it also
// reports how long ago the probe behind the result started.
func NewWithAge(r *prober.Result, timeout, age time.Duration) prometheus.Collector {
	return newProbeCollector(r, timeout, &age)
}

func newProbeCollector(r *prober.Result, timeout time.Duration, age *time.Duration) *probeCollector {
	if r == nil {
		r = &prober.Result{SizeLimit: -1}
	}
	return &probeCollector{result: r, timeout: timeout, age: age}
}

// Describe sends every Desc this collector may emit.
func (c *probeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		successDesc, durationDesc, timeoutDesc, dnsLookupDesc, ipProtocolDesc, ipAddrHashDesc,
		sslEarliestExpiryDesc, sslLastChainExpiryDesc, sslLastChainInfoDesc, tlsVersionDesc, tlsCipherDesc,
		smtpPhaseDurationDesc, smtpStatusCodeDesc, smtpEnhancedCodeDesc, smtpFailureDesc,
		smtpAuthSuccessDesc, smtpHELOFallbackDesc, smtpTLSDesc, smtpExtensionDesc,
		smtpAuthMechanismDesc, smtpAuthMechanismUsedDesc, smtpSizeLimitDesc,
		smtpRecipientsAcceptedDesc, smtpMessageAcceptedDesc, smtpResultAgeDesc,
	} {
		ch <- d
	}
}

// Collect sends the metrics of the Result.
func (c *probeCollector) Collect(ch chan<- prometheus.Metric) { collectInto(ch, c) }

// samples emits the metrics of the Result.
func (c *probeCollector) samples(ch emitFunc) {
	r := c.result
	gauge(ch, successDesc, boolValue(r.Success))
	gauge(ch, durationDesc, r.Duration.Seconds())
	gauge(ch, timeoutDesc, c.timeout.Seconds())
	gauge(ch, dnsLookupDesc, r.DNSLookupTime.Seconds())
	gauge(ch, ipProtocolDesc, ipProtocol(r))
	if r.IP.IsValid() {
		gauge(ch, ipAddrHashDesc, ipHash(r))
	}

	c.collectTLS(ch)
	c.collectPhases(ch)

	if f := r.Failure; f != nil && !r.Success {
		gauge(ch, smtpFailureDesc, 1, phaseLabel(f.Phase), identifierLabel(string(f.Reason)))
	}

	if c.planned(prober.PhaseAuth) {
		gauge(ch, smtpAuthSuccessDesc, boolValue(r.AuthSuccess))
	}
	gauge(ch, smtpHELOFallbackDesc, boolValue(r.HELOFallback))
	gauge(ch, smtpTLSDesc, boolValue(r.TLS != nil))

	phases := make([]prober.Phase, 0, len(r.Extensions))
	for p := range r.Extensions {
		phases = append(phases, p)
	}
	slices.Sort(phases)
	for _, p := range phases {
		for _, ext := range keywords(r.Extensions[p]) {
			gauge(ch, smtpExtensionDesc, 1, phaseLabel(p), ext)
		}
	}
	for _, mech := range keywords(r.AuthMechanisms) {
		gauge(ch, smtpAuthMechanismDesc, 1, mech)
	}
	if used := keywords([]string{r.AuthMechanism}); len(used) == 1 {
		gauge(ch, smtpAuthMechanismUsedDesc, 1, used[0])
	}
	// A zero SizeLimit means "no limit" only if an EHLO reply said so; a
	// probe that never got that far has nothing to report.
	if r.SizeLimit >= 0 && (c.ran(prober.PhaseEHLO) || c.ran(prober.PhaseEHLOTLS)) {
		gauge(ch, smtpSizeLimitDesc, float64(r.SizeLimit))
	}
	if c.planned(prober.PhaseMail) {
		gauge(ch, smtpRecipientsAcceptedDesc, float64(r.RecipientsAccepted))
	}
	// A module that ends the canary with RSET instead of DATA never sends a
	// message; a constant 0 there would read as a rejection.
	if c.planned(prober.PhaseData) {
		gauge(ch, smtpMessageAcceptedDesc, boolValue(r.MessageAccepted))
	}
	if c.age != nil {
		gauge(ch, smtpResultAgeDesc, max(c.age.Seconds(), 0))
	}
}

func (c *probeCollector) collectPhases(ch emitFunc) {
	// A probe has a dozen phases at most: a list on the stack finds them.
	var seenBuf [16]string
	seen := seenBuf[:0]
	for _, p := range c.result.Phases {
		phase := phaseLabel(p.Phase)
		if slices.Contains(seen, phase) {
			continue // a duplicate would make the whole scrape fail
		}
		seen = append(seen, phase)
		if !p.Ran {
			gauge(ch, smtpPhaseDurationDesc, 0, phase)
			gauge(ch, smtpStatusCodeDesc, 0, phase)
			continue
		}
		gauge(ch, smtpPhaseDurationDesc, p.Duration.Seconds(), phase)
		gauge(ch, smtpStatusCodeDesc, float64(p.Code), phase)
		if prober.IsEnhancedCode(p.Enhanced) {
			gauge(ch, smtpEnhancedCodeDesc, 1, phase, p.Enhanced)
		}
	}
}

func (c *probeCollector) collectTLS(ch emitFunc) {
	r := c.result
	// The certificates are there even when verification failed and there
	// is no session, so that an expired certificate shows as an expiry in
	// the past rather than as nothing.
	if earliest, ok := earliestExpiry(r.Certificates); ok {
		gauge(ch, sslEarliestExpiryDesc, float64(earliest.Unix()))
	}
	if len(r.Certificates) > 0 {
		leaf := r.Certificates[0]
		gauge(ch, sslLastChainInfoDesc, 1,
			hex.EncodeToString(leaf.Fingerprint[:]),
			certLabel(leaf.Subject),
			certLabel(leaf.Issuer),
			certLabel(strings.Join(leaf.DNSNames, ",")),
			leaf.Serial,
		)
	}
	s := r.TLS
	if s == nil {
		return
	}
	if !s.LastChainExpiry.IsZero() {
		gauge(ch, sslLastChainExpiryDesc, float64(s.LastChainExpiry.Unix()))
	}
	gauge(ch, tlsVersionDesc, 1, tls.VersionName(s.Version))
	gauge(ch, tlsCipherDesc, 1, s.CipherName())
}

func (c *probeCollector) planned(p prober.Phase) bool {
	_, ok := c.result.Phase(p)
	return ok
}

func (c *probeCollector) ran(p prober.Phase) bool {
	pr, ok := c.result.Phase(p)
	return ok && pr.Ran
}

// gauge emits one gauge.
func gauge(emit emitFunc, desc *prometheus.Desc, value float64, labels ...string) {
	emit(desc, prometheus.GaugeValue, value, labels...)
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func ipProtocol(r *prober.Result) float64 {
	switch {
	case !r.IP.IsValid():
		return 0
	case r.IP.Unmap().Is4():
		return 4
	default:
		return 6
	}
}

// ipHash hashes the address bytes the way blackbox_exporter does (4 bytes for
// IPv4, 16 for IPv6), so that both exporters give one address one value.
func ipHash(r *prober.Result) float64 {
	h := fnv.New32a()
	h.Write(r.IP.Unmap().AsSlice())
	return float64(h.Sum32())
}

func earliestExpiry(certs []prober.Certificate) (time.Time, bool) {
	var earliest time.Time
	for _, cert := range certs {
		if cert.NotAfter.IsZero() {
			continue
		}
		if earliest.IsZero() || cert.NotAfter.Before(earliest) {
			earliest = cert.NotAfter
		}
	}
	return earliest, !earliest.IsZero()
}

// phaseLabel and identifierLabel keep to the shape of the closed sets the
// prober defines (lower case, digits, underscore), whatever it sends.
func phaseLabel(p prober.Phase) string { return identifierLabel(string(p)) }

func identifierLabel(s string) string {
	s = strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '_':
			return r
		case r >= 'A' && r <= 'Z':
			return unicode.ToLower(r)
		default:
			return '_'
		}
	}, s)
	if len(s) > maxKeywordLen {
		s = s[:maxKeywordLen]
	}
	if s == "" {
		return "unknown"
	}
	return s
}

// keywords returns the EHLO keywords or SASL mechanism names in list that
// are well formed (letters, digits, hyphen, underscore), upper-cased,
// without duplicates and at most maxKeywordsPerList of them. Anything else
// is dropped rather than repaired: a mangled name would be a new series.
func keywords(list []string) []string {
	out := make([]string, 0, min(len(list), maxKeywordsPerList))
	for _, k := range list {
		k = strings.ToUpper(k)
		if !isKeyword(k) || slices.Contains(out, k) {
			continue
		}
		out = append(out, k)
		if len(out) == maxKeywordsPerList {
			break
		}
	}
	return out
}

func isKeyword(s string) bool {
	if s == "" || len(s) > maxKeywordLen {
		return false
	}
	for _, r := range s {
		if !(r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// certLabel makes a certificate field a safe label value: valid UTF-8 (or
// the scrape would fail), what cannot be seen escaped as on the pages (the
// label shows in debug output) and a bounded length.
func certLabel(s string) string {
	return printable.Bounded(s, maxCertLabelLen)
}
