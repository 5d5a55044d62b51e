package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// benchPattern selects the benchmarks of the probe path and of metric
// rendering, in prober/ and collector/ *_bench_test.go.
const benchPattern = "^Benchmark(ProbeSession|ReadReply|RenderMetrics|ProbeHandler|GuardStoreFull)"

func (h *harness) benchmarks() error {
	h.logf("running the benchmarks (%s, -benchtime %s)", benchPattern, h.o.benchtime)
	cmd := exec.CommandContext(h.ctx, "go", "test", "-run", "^$", "-bench", benchPattern, "-benchmem",
		"-benchtime", h.o.benchtime, "./prober/", "./collector/")
	cmd.Dir = h.root
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		h.fail("benchmarks: %v\n%s", err, stdout.String())
		return nil
	}
	pkg := ""
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "pkg: "):
			pkg = strings.TrimPrefix(line, "pkg: github.com/smtp-exporter/smtp_exporter/")
		case strings.HasPrefix(line, "Benchmark"):
			h.report.bench = append(h.report.bench, fmt.Sprintf("%-10s %s", pkg, line))
		}
	}
	return nil
}
