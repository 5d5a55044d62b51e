package config

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// AllowedTargets lists where a module may connect, and so where its
// credentials may be sent and whose banners it may show. Any module may set
// it. Entries are "*", "*:port" (any host, on that port only), a host name,
// host:port, an IP address (optionally with a port: "192.0.2.1:587",
// "[2001:db8::1]:587") or a CIDR prefix. A host name entry admits that name
// whatever it resolves to; an address or prefix entry is checked against
// the address actually dialled, so a name that resolves somewhere
// unexpected does not slip through.
type AllowedTargets []string

type targetRule struct {
	any    bool
	host   string // lower case, without trailing dot; empty for address rules
	prefix netip.Prefix
	port   int // 0: any port
}

func parseTargetRule(entry string) (targetRule, error) {
	e := strings.TrimSpace(entry)
	if e == "" {
		return targetRule{}, fmt.Errorf("empty entry")
	}
	if e == "*" {
		return targetRule{any: true}, nil
	}
	if p, ok := strings.CutPrefix(e, "*:"); ok {
		// Any host, on this port only: a module meant for any MX cannot
		// be pointed at the other services of a network.
		n, ok := parsePort(p)
		if !ok {
			return targetRule{}, fmt.Errorf("%q: invalid port %q", entry, p)
		}
		return targetRule{any: true, port: n}, nil
	}
	if p, err := netip.ParsePrefix(e); err == nil {
		return targetRule{prefix: p.Masked()}, nil
	}
	if strings.ContainsAny(e, "/@?#") || strings.ContainsFunc(e, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		// A URL, a path or a prefix that does not parse.
		return targetRule{}, fmt.Errorf("%q is not a host name, host:port, IP address or CIDR prefix", entry)
	}
	if strings.Contains(e, "%") {
		// A zone is dropped from a prefix, and a zoned target matches no
		// prefix: the entry would not admit what it names.
		return targetRule{}, fmt.Errorf("%q: IPv6 zones are not supported", entry)
	}
	if inner, ok := strings.CutPrefix(e, "["); ok && strings.HasSuffix(inner, "]") {
		// "[2001:db8::1]", as a target may be written.
		e = strings.TrimSuffix(inner, "]")
		if a, err := netip.ParseAddr(e); err != nil || !a.Is6() {
			return targetRule{}, fmt.Errorf("%q is not a bracketed IPv6 address", entry)
		}
	}
	if a, err := netip.ParseAddr(e); err == nil {
		return targetRule{prefix: netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())}, nil
	}
	host, port := e, 0
	if h, p, err := net.SplitHostPort(e); err == nil {
		n, ok := parsePort(p)
		if !ok {
			return targetRule{}, fmt.Errorf("%q: invalid port %q", entry, p)
		}
		host, port = h, n
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return targetRule{prefix: netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), port: port}, nil
	}
	if !isValidHostName(host) {
		return targetRule{}, fmt.Errorf("%q is not a host name, host:port, IP address or CIDR prefix", entry)
	}
	return targetRule{host: normalizeHost(host), port: port}, nil
}

// parsePort parses a TCP port number, 1 to 65535.
func parsePort(s string) (int, bool) {
	n, err := strconv.Atoi(s)
	return n, err == nil && n >= 1 && n <= 65535
}

func normalizeHost(h string) string {
	return strings.TrimSuffix(strings.ToLower(h), ".")
}

// TargetRestricted reports whether the module limits its targets at all.
func (s *SMTPProbe) TargetRestricted() bool {
	return len(s.allowed) > 0
}

// AllowsHost reports whether a target given by name (or address literal) and
// port is admitted by a "*", host name or address entry. It needs no DNS.
func (s *SMTPProbe) AllowsHost(host string, port int) bool {
	if len(s.allowed) == 0 {
		return true
	}
	h := normalizeHost(host)
	addr, addrErr := netip.ParseAddr(h)
	for _, r := range s.allowed {
		if r.port != 0 && r.port != port {
			continue
		}
		switch {
		case r.any:
			return true
		case r.host != "" && r.host == h:
			return true
		case r.host == "" && addrErr == nil && r.prefix.Contains(addr.Unmap()):
			return true
		}
	}
	return false
}

// AllowsAddr reports whether the address about to be dialled is admitted by
// an address or prefix entry.
func (s *SMTPProbe) AllowsAddr(addr netip.Addr, port int) bool {
	if len(s.allowed) == 0 {
		return true
	}
	for _, r := range s.allowed {
		if r.port != 0 && r.port != port {
			continue
		}
		if r.any || (r.host == "" && r.prefix.Contains(addr.Unmap())) {
			return true
		}
	}
	return false
}

// isValidHostName accepts DNS names made of letters, digits, '-', '_' and
// dots, as used for SMTP servers.
func isValidHostName(h string) bool {
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, c := range label {
			ok := c == '-' || c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
			if !ok {
				return false
			}
		}
	}
	return true
}

// isValidEHLOName accepts a host name or an address literal ("[192.0.2.1]",
// "[IPv6:2001:db8::1]"), the forms RFC 5321 allows after EHLO.
func isValidEHLOName(s string) bool {
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		inner := strings.TrimPrefix(s[1:len(s)-1], "IPv6:")
		_, err := netip.ParseAddr(inner)
		return err == nil
	}
	return isValidHostName(s)
}
