package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strings"
)

// labEnv is the lab's env file (test/lab/start.sh): KEY='value' lines.
type labEnv map[string]string

func readLabEnv(path string) (labEnv, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	l := labEnv{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if key, value, ok := strings.Cut(sc.Text(), "="); ok {
			l[key] = strings.Trim(value, "'")
		}
	}
	for _, key := range []string{"LAB_HOST", "LAB_PORT_SUBMISSION", "LAB_PORT_IMPLICIT", "LAB_CA", "LAB_USER", "LAB_PASSWORD", "LAB_PASSWORD_FILE", "LAB_POSTFIX_PID"} {
		if l[key] == "" {
			return nil, fmt.Errorf("lab env file %s lacks %s", path, key)
		}
	}
	if ip := net.ParseIP(l["LAB_HOST"]); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("lab host %s is not a loopback address", l["LAB_HOST"])
	}
	return l, nil
}

func (l labEnv) addr(portKey string) string {
	return net.JoinHostPort(l["LAB_HOST"], l[portKey])
}

// server is one SMTP server the arms are run against.
type server struct {
	name      string // "go" or "postfix", also the module name prefix
	title     string
	starttls  string // host:port of the STARTTLS service
	implicit  string // host:port of the implicit-TLS service
	caFile    string
	user      string
	password  string
	passwFile string // for the exporter's module; "" to put password inline
}

// Module names carry a worker index: smtp_exporter shares the session of
// concurrent requests for the same module and target (two Prometheus
// replicas scraping at once get one login), so each concurrent worker of a
// run asks for its own copy of the module to make the exporter hold as many
// sessions as the floor does. blackbox_exporter gets the same names.
func moduleName(server, kind string, worker int) string {
	return fmt.Sprintf("%s_%s_%d", server, kind, worker)
}

// exporterConfig is smtp_exporter's configuration: for each server and
// worker a STARTTLS module with and without AUTH PLAIN and an implicit-TLS
// module, and hung modules for the server that never answers.
func exporterConfig(servers []server, hungCA string, workers, hung int) string {
	var b strings.Builder
	b.WriteString("modules:\n")
	module := func(name, tls, ca string, auth string) {
		fmt.Fprintf(&b, "  %s:\n    timeout: 60s\n    smtp:\n      tls: %s\n      preferred_ip_protocol: ip4\n      tls_config: {ca_file: %q}\n", name, tls, ca)
		if auth != "" {
			b.WriteString(auth)
			b.WriteString("      allowed_targets: [\"127.0.0.1\"]\n")
		}
	}
	for _, s := range servers {
		secret := fmt.Sprintf("password: %q", s.password)
		if s.passwFile != "" {
			secret = fmt.Sprintf("password_file: %q", s.passwFile)
		}
		auth := fmt.Sprintf("      auth: {mechanism: PLAIN, username: %q, %s}\n", s.user, secret)
		for i := range workers {
			module(moduleName(s.name, "starttls", i), "starttls", s.caFile, "")
			module(moduleName(s.name, "starttls_auth", i), "starttls", s.caFile, auth)
			module(moduleName(s.name, "implicit", i), "implicit", s.caFile, "")
		}
	}
	for i := range hung {
		module(moduleName("hung", "starttls", i), "starttls", hungCA, "")
	}
	return b.String()
}

// blackboxConfig is blackbox_exporter's: tcp modules with query_response
// holding the same conversation without AUTH, the 221 to QUIT included.
// blackbox ends each line it sends with LF; the "\r" makes it CRLF.
func blackboxConfig(servers []server, hungCA string, workers, hung int) string {
	var b strings.Builder
	b.WriteString("modules:\n")
	module := func(name, ca string, implicit bool) {
		fmt.Fprintf(&b, "  %s:\n    prober: tcp\n    timeout: 60s\n    tcp:\n      preferred_ip_protocol: ip4\n      tls: %t\n      tls_config: {ca_file: %q}\n      query_response:\n", name, implicit, ca)
		steps := []string{`expect: "^220 "`, `send: "EHLO localhost\r"`, `expect: "^250 "`}
		if !implicit {
			steps = append(steps, `send: "STARTTLS\r"`, `expect: "^220 "`, `starttls: true`, `send: "EHLO localhost\r"`, `expect: "^250 "`)
		}
		steps = append(steps, `send: "QUIT\r"`, `expect: "^221 "`)
		for _, s := range steps {
			b.WriteString("        - " + s + "\n")
		}
	}
	for _, s := range servers {
		for i := range workers {
			module(moduleName(s.name, "starttls", i), s.caFile, false)
			module(moduleName(s.name, "implicit", i), s.caFile, true)
		}
	}
	for i := range hung {
		module(moduleName("hung", "starttls", i), hungCA, false)
	}
	return b.String()
}
