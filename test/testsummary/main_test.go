package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The summary of a real `go test -json` run of a module with a passing, a
// skipped and a failing test: the failure's output and the package's FAIL,
// the skip and its reason at the end, exit 1.
func TestSummary(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"go.mod": "module example.net/summary\n\ngo 1.22\n",
		"a_test.go": `package a

import "testing"

func TestPass(t *testing.T) {}
func TestSkip(t *testing.T) { t.Skip("no lab: start one") }
func TestFail(t *testing.T) { t.Error("the server said no") }
`,
		"b/b_test.go": `package b

import "testing"

func TestOnlySkip(t *testing.T) { t.Skipf("needs %s", "promtool") }
func TestSilentSkip(t *testing.T) { t.Skip() }
`,
	}
	for name, content := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("go", "test", "-count=1", "-json", "./...")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=", "GOWORK=off")
	input, _ := cmd.Output() // exits 1: a test fails
	if len(input) == 0 {
		t.Fatal("go test -json printed nothing")
	}

	var out bytes.Buffer
	code := run(bytes.NewReader(input), &out)
	got := out.String()
	if code != 1 {
		t.Errorf("exit %d, want 1:\n%s", code, got)
	}
	for _, want := range []string{
		"the server said no",
		"--- FAIL: TestFail",
		"FAIL\texample.net/summary",
		"ok  \texample.net/summary/b",
		"3 tests skipped:",
		"example.net/summary, 1: no lab: start one\n      TestSkip\n",
		"example.net/summary/b, 1: (no reason given)\n      TestSilentSkip\n",
		"example.net/summary/b, 1: needs promtool\n      TestOnlySkip\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("summary lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "TestPass") {
		t.Errorf("a passing test is listed:\n%s", got)
	}
	if i, j := strings.Index(got, "tests skipped"), strings.LastIndex(got, "FAIL"); i < 0 || j < i {
		t.Errorf("the skipped tests are not at the end, before the verdict:\n%s", got)
	}

	// Cut short: a package that started and never ended is a failure.
	var cut bytes.Buffer
	if code := run(strings.NewReader(`{"Action":"start","Package":"x"}`+"\n"), &cut); code != 1 || !strings.Contains(cut.String(), "no result for x") {
		t.Errorf("cut-short run: exit %d\n%s", code, cut.String())
	}
}
