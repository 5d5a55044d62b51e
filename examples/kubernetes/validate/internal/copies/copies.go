// Package copies knows the files that the Kubernetes manifests and the Helm
// chart hold a copy of: kustomize and Helm read only files below their own
// directory, so the shipped configuration and the alerting rules are copied
// there. The tests check every copy against its source; the command
// ../../cmd/copy-files (go generate in examples/kubernetes/validate) writes
// them again.
package copies

import (
	"bytes"
	"path/filepath"
)

// A Copy is one file made from another, both relative to the repository's
// top directory.
type Copy struct {
	Source, Dest string
	// Make turns the source's content into the copy's.
	Make func(source []byte) []byte
}

// Command writes every copy again; it is what a test tells to run when a
// copy is out of date.
const Command = "(cd examples/kubernetes/validate && go generate)"

const (
	shippedConfig = "smtp_exporter.yml"
	rulesFile     = "examples/prometheus/smtp_exporter.rules.yml"
)

// All lists the copies.
func All() []Copy {
	same := func(b []byte) []byte { return b }
	return []Copy{
		{Source: shippedConfig, Dest: "examples/kubernetes/base/smtp_exporter.yml", Make: same},
		{Source: shippedConfig, Dest: "charts/smtp-exporter/files/smtp_exporter.yml", Make: same},
		{Source: rulesFile, Dest: "charts/smtp-exporter/files/smtp_exporter.rules.yml", Make: same},
		{Source: rulesFile, Dest: "examples/kubernetes/prometheusrule.yaml", Make: PrometheusRule},
	}
}

// Path returns the path of a file of the repository from root, the
// repository's top directory.
func Path(root, name string) string {
	return filepath.Join(root, filepath.FromSlash(name))
}

// PrometheusRule wraps a Prometheus rules file into a PrometheusRule of the
// Prometheus Operator: the file, comments and all, indented under spec, so
// that its groups are spec.groups.
func PrometheusRule(rules []byte) []byte {
	var b bytes.Buffer
	b.WriteString(`# Generated from examples/prometheus/smtp_exporter.rules.yml; do not edit.
# Write it again after changing the rules with
#   ` + Command + `
# (a test of examples/kubernetes/validate fails while it differs).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: smtp-exporter
  labels:
    app.kubernetes.io/name: smtp-exporter
spec:
`)
	for _, line := range bytes.SplitAfter(rules, []byte("\n")) {
		if len(bytes.TrimSpace(line)) > 0 {
			b.WriteString("  ")
		} else {
			line = bytes.TrimLeft(line, " \t")
		}
		b.Write(line)
	}
	if !bytes.HasSuffix(b.Bytes(), []byte("\n")) {
		b.WriteString("\n")
	}
	return b.Bytes()
}
