// Command copy-files writes the copies that the Kubernetes manifests and the
// Helm chart hold of the shipped configuration and the alerting rules (see
// package copies). Run it from examples/kubernetes/validate:
//
//	go generate
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"

	"github.com/smtp-exporter/smtp_exporter/examples/kubernetes/validate/internal/copies"
)

func main() {
	root := flag.String("root", "../../..", "the repository's top directory")
	flag.Parse()
	for _, c := range copies.All() {
		src, err := os.ReadFile(copies.Path(*root, c.Source))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		dest := copies.Path(*root, c.Dest)
		want := c.Make(src)
		if old, err := os.ReadFile(dest); err == nil && bytes.Equal(old, want) {
			continue
		}
		if err := os.WriteFile(dest, want, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Printf("wrote %s from %s\n", c.Dest, c.Source)
	}
}
