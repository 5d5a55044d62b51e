// Package validate holds the tests of the Kubernetes examples in
// examples/kubernetes: each kustomization is built with the kustomize
// library, and every resource it produces is decoded strictly (unknown or
// duplicate fields are errors) into the Kubernetes and Prometheus Operator
// API types, then checked for the settings the examples promise.
//
// It is a module of its own so that the exporter's module does not depend
// on the Kubernetes libraries. Run it with:
//
//	cd examples/kubernetes/validate && go test -count=1 ./...
//
// -count=1 because the manifests lie outside this module's directory, and
// go test does not notice changes there when it reuses a cached result.
package validate
