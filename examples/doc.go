// Package examples holds no code: it is the home of the tests of the shipped
// examples, the Prometheus scrape configuration and alerting rules in
// prometheus/, the Alertmanager routing in alertmanager/, the Grafana
// dashboard in grafana/ and the Kubernetes manifests in kubernetes/ (whose
// strict validation against the Kubernetes API types is the separate module
// in kubernetes/validate).
//
// The tests run promtool, amtool and Alertmanager itself (for the inhibit
// rules, on a loopback port for a moment) when they are installed (Debian
// packages prometheus and prometheus-alertmanager); with CI=true a missing
// tool is a failure rather than a skip. docs/runbooks.md is checked against
// the rules' runbook_url annotations.
package examples
