// Command testsummary reads `go test -json` on its standard input, prints
// what `go test` prints without -v (a line per package, and the output of
// what failed), and ends with the tests that were skipped and why, so that
// a run where the lab or a tool was missing says so at its end.
//
//	go test -race -count=1 -json ./... | go run ./test/testsummary
//
// It exits 1 when a test or a package failed, or when the input ended
// without a result for a package that started.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action  string
	Package string
	Test    string
	Output  string
}

// skip is a skipped test and the reason it gave.
type skip struct {
	pkg, test, reason string
}

func main() {
	os.Exit(run(os.Stdin, os.Stdout))
}

func run(in io.Reader, out io.Writer) int {
	// output gathers each test's lines (and the package's own, under ""),
	// printed only for what fails, as go test does without -v.
	output := map[[2]string][]string{}
	var skipped []skip
	started, ended := map[string]bool{}, map[string]bool{}
	failed := false

	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			// Not JSON: a build error printed by go itself.
			fmt.Fprintln(out, sc.Text())
			failed = true
			continue
		}
		key := [2]string{e.Package, e.Test}
		switch e.Action {
		case "start":
			started[e.Package] = true
		case "output":
			output[key] = append(output[key], e.Output)
		case "skip":
			if e.Test != "" {
				skipped = append(skipped, skip{e.Package, e.Test, skipReason(output[key])})
			}
			if e.Test == "" {
				ended[e.Package] = true
				printPackageLine(out, output[key])
			}
			delete(output, key)
		case "pass":
			if e.Test == "" {
				ended[e.Package] = true
				printPackageLine(out, output[key])
			}
			delete(output, key)
		case "fail":
			failed = true
			if e.Test == "" {
				ended[e.Package] = true
			}
			// A failed test's lines, or the package's own ending with its
			// FAIL line.
			for _, l := range output[key] {
				fmt.Fprint(out, l)
			}
			delete(output, key)
		}
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintf(out, "testsummary: reading the test output: %v\n", err)
		failed = true
	}
	for pkg := range started {
		if !ended[pkg] {
			fmt.Fprintf(out, "testsummary: no result for %s (the run was cut short)\n", pkg)
			failed = true
		}
	}

	printSkipped(out, skipped)
	if failed {
		fmt.Fprintln(out, "\nFAIL")
		return 1
	}
	return 0
}

// printSkipped lists the skipped tests at the end, one line per package
// and reason, so that a missing lab or tool is the last thing a run says.
func printSkipped(out io.Writer, skipped []skip) {
	if len(skipped) == 0 {
		return
	}
	type group struct{ pkg, reason string }
	tests := map[group][]string{}
	var order []group
	for _, s := range skipped {
		g := group{s.pkg, s.reason}
		if tests[g] == nil {
			order = append(order, g)
		}
		tests[g] = append(tests[g], s.test)
	}
	slices.SortFunc(order, func(a, b group) int { return strings.Compare(a.pkg+a.reason, b.pkg+b.reason) })
	fmt.Fprintf(out, "\n%d tests skipped:\n", len(skipped))
	for _, g := range order {
		names := tests[g]
		slices.Sort(names)
		fmt.Fprintf(out, "  %s, %d: %s\n      %s\n", g.pkg, len(names), g.reason, strings.Join(names, " "))
	}
}

// printPackageLine prints the "ok  pkg  0.1s" line of a package that
// passed: the last line of its own output.
func printPackageLine(out io.Writer, lines []string) {
	for i := len(lines) - 1; i >= 0; i-- {
		if l := lines[i]; strings.HasPrefix(l, "ok ") || strings.HasPrefix(l, "?") {
			fmt.Fprint(out, l)
			return
		}
	}
}

// skipReason is what a skipped test said: the text of its skip, without
// the file:line prefix and the "--- SKIP" line.
func skipReason(lines []string) string {
	var reason []string
	for _, l := range lines {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "=== ") || strings.HasPrefix(l, "--- SKIP") {
			continue
		}
		if _, text, ok := strings.Cut(l, ".go:"); ok {
			// "file.go:12: reason", or "file.go:12:" for a skip without one.
			_, l, _ = strings.Cut(text, ":")
			if l = strings.TrimSpace(l); l == "" {
				continue
			}
		}
		reason = append(reason, l)
	}
	if len(reason) == 0 {
		return "(no reason given)"
	}
	return reason[len(reason)-1]
}
