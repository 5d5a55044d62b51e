// Package validate holds the tests of the Kubernetes examples in
// examples/kubernetes and of the Helm chart in charts/smtp-exporter: each
// kustomization is built with the kustomize library and the chart rendered
// with `helm template`, and every resource they produce is decoded strictly
// (unknown or duplicate fields are errors) into the Kubernetes and
// Prometheus Operator API types, then checked for the settings the examples
// promise.
//
// It is a module of its own so that the exporter's module does not depend
// on the Kubernetes libraries. Run it with:
//
//	cd examples/kubernetes/validate && go test -count=1 ./...
//
// -count=1 because the manifests lie outside this module's directory, and
// go test does not notice changes there when it reuses a cached result.
//
// The chart's tests run helm: $HELM, else helm on the PATH; without either
// they skip, except with CI=true, where they fail. Build one with
//
//	GOBIN=/tmp/helm go install helm.sh/helm/v3/cmd/helm@v3.22.0
//	HELM=/tmp/helm/helm go test -count=1 ./...
//
// kustomize and Helm read only files below their own directories, so the
// shipped smtp_exporter.yml and the alerting rules are copied there (package
// internal/copies lists the copies; a test checks each one). After changing
// either, write the copies again with:
//
//	cd examples/kubernetes/validate && go generate
package validate

//go:generate go run ./cmd/copy-files
