package prober

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/smtp-exporter/smtp_exporter/config"
)

// maxTargetLen bounds the target parameter: a DNS name of the longest
// length allowed (253) with a port.
const maxTargetLen = 253 + len(":65535")

// parseTarget splits a target into host and port. Accepted forms: "host",
// "host:port", "[v6]", "[v6]:port" and a bare IPv6 address; defaultPort
// applies when none is given. Anything that looks like a URL (scheme, path,
// userinfo) is refused rather than guessed at.
func parseTarget(target string, defaultPort int) (host string, port int, err error) {
	switch {
	case target == "":
		return "", 0, errors.New("empty target")
	case len(target) > maxTargetLen:
		return "", 0, fmt.Errorf("target longer than %d characters", maxTargetLen)
	case strings.ContainsFunc(target, func(r rune) bool { return r <= ' ' || r == 0x7f }):
		return "", 0, errors.New("target contains spaces or control characters")
	case strings.Contains(target, "://"):
		return "", 0, errors.New("target must be host[:port], not a URL")
	case strings.ContainsAny(target, "/?#"):
		return "", 0, errors.New("target must not contain a path")
	case strings.Contains(target, "@"):
		return "", 0, errors.New("target must not contain user information")
	}

	// A bare IPv6 address has colons but no port.
	if a, err := netip.ParseAddr(target); err == nil {
		if !isZone(a.Zone()) {
			return "", 0, errZone
		}
		return a.String(), defaultPort, nil
	}
	if strings.HasPrefix(target, "[") && strings.HasSuffix(target, "]") {
		a, err := netip.ParseAddr(target[1 : len(target)-1])
		if err != nil || !a.Is6() {
			return "", 0, fmt.Errorf("%q is not a bracketed IPv6 address", target)
		}
		if !isZone(a.Zone()) {
			return "", 0, errZone
		}
		return a.String(), defaultPort, nil
	}

	host, port = target, defaultPort
	if strings.Contains(target, ":") {
		h, p, err := net.SplitHostPort(target)
		if err != nil {
			return "", 0, fmt.Errorf("invalid target: %v", err)
		}
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 || p != strconv.Itoa(n) {
			return "", 0, fmt.Errorf("invalid port %q", p)
		}
		host, port = h, n
		if a, err := netip.ParseAddr(host); err == nil {
			if strings.HasPrefix(target, "[") && !a.Is6() {
				return "", 0, fmt.Errorf("%q: only IPv6 addresses go in brackets", target)
			}
			if a.Is6() && !strings.HasPrefix(target, "[") {
				return "", 0, errors.New("an IPv6 address with a port must be in brackets")
			}
			if !isZone(a.Zone()) {
				return "", 0, errZone
			}
			return a.String(), port, nil
		}
	}
	if strings.HasPrefix(target, "[") || !isHostName(host) {
		return "", 0, fmt.Errorf("%q is not a host name or IP address", host)
	}
	return strings.TrimSuffix(host, "."), port, nil
}

// errZone refuses an IPv6 zone that cannot name a network interface:
// netip accepts any text after the "%", brackets and colons included.
var errZone = errors.New("the IPv6 zone must be an interface name or number")

// isZone accepts no zone, or an interface name or index: letters, digits,
// '.', '-' and '_', as Linux, BSD and Windows name them.
func isZone(z string) bool {
	if len(z) > 32 {
		return false
	}
	for i := 0; i < len(z); i++ {
		c := z[i]
		ok := c == '.' || c == '-' || c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
		if !ok {
			return false
		}
	}
	return true
}

// isHostName accepts DNS names of letters, digits, '-' and '_'.
func isHostName(h string) bool {
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			ok := c == '-' || c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
			if !ok {
				return false
			}
		}
	}
	return true
}

// resolve picks the address to dial the way blackbox_exporter does: with
// fallback, look up every address and take the first of the preferred family,
// else the first of the other; without, look up the preferred family only.
// An IP literal is used as given, whatever the preference: the target named
// it exactly.
func resolve(ctx context.Context, host, preferred string, fallback bool) (netip.Addr, time.Duration, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return a.Unmap(), 0, nil
	}
	if preferred != "ip4" {
		preferred = "ip6"
	}
	network := preferred
	if fallback {
		network = "ip"
	}
	start := time.Now()
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, network, host)
	elapsed := time.Since(start)
	if err != nil {
		return netip.Addr{}, elapsed, err
	}
	var other netip.Addr
	for _, a := range addrs {
		a = a.Unmap()
		if a.Is4() == (preferred == "ip4") {
			return a, elapsed, nil
		}
		if !other.IsValid() {
			other = a
		}
	}
	if other.IsValid() {
		return other, elapsed, nil
	}
	return netip.Addr{}, elapsed, fmt.Errorf("no %s address for %s", preferred, host)
}

// Target is a target parsed, resolved and checked against allowed_targets:
// what a probe dials. Resolving before the probe lets the caller tell that
// two spellings of a target ("localhost:2525", "[::ffff:127.0.0.1]:2525")
// are one server before anything is sent to it.
type Target struct {
	// Host is the host as given, without a trailing dot; the TLS server
	// name for a host name.
	Host string
	Port int
	// IP is the address to dial; invalid when Failure is set.
	IP            netip.Addr
	DNSLookupTime time.Duration
	// Failure says why the target cannot be dialled (phase setup: invalid,
	// unresolvable or not allowed); nil when it can.
	Failure *Failure
}

// Address is the address dialled in one spelling for every way of writing
// it: the IP (IPv4-mapped IPv6 addresses as IPv4) and the port. Before a
// target resolved it is the host name, lower-cased.
func (t Target) Address() string {
	if t.IP.IsValid() {
		return netip.AddrPortFrom(t.IP, uint16(t.Port)).String()
	}
	return net.JoinHostPort(strings.ToLower(t.Host), strconv.Itoa(t.Port))
}

// Resolve parses target, looks it up and checks it against the module's
// allowed_targets. It sends nothing to the target; a failure is in the
// returned Target, for the probe to report in phase setup.
func Resolve(ctx context.Context, target string, s *config.SMTPProbe) Target {
	host, port, err := parseTarget(target, s.EffectivePort())
	if err != nil {
		return Target{Failure: &Failure{Phase: PhaseSetup, Reason: ReasonTargetInvalid, Err: err}}
	}
	t := Target{Host: host, Port: port}
	ip, lookup, err := resolve(ctx, host, s.PreferredIPProtocol, s.IPProtocolFallback)
	t.DNSLookupTime = lookup
	if err != nil {
		reason := ReasonDNS
		if ctx.Err() != nil {
			reason = ReasonTimeout
		}
		t.Failure = &Failure{Phase: PhaseSetup, Reason: reason, Err: err}
		return t
	}
	if !s.AllowsHost(host, port) && !s.AllowsAddr(ip, port) {
		t.Failure = &Failure{Phase: PhaseSetup, Reason: ReasonTargetNotAllowed,
			Err: fmt.Errorf("target %s (%s) port %d is not in allowed_targets", host, ip, port)}
		return t
	}
	t.IP = ip
	return t
}
