package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strings"
	"testing"
	"time"
)

func TestBuildVersion(t *testing.T) {
	vcs := func(rev, at, modified string) []debug.BuildSetting {
		return []debug.BuildSetting{
			{Key: "-buildmode", Value: "exe"},
			{Key: "vcs", Value: "git"},
			{Key: "vcs.revision", Value: rev},
			{Key: "vcs.time", Value: at},
			{Key: "vcs.modified", Value: modified},
		}
	}
	const rev = "0123456789abcdef0123456789abcdef01234567"
	for _, tc := range []struct {
		name string
		info *debug.BuildInfo
		want builtVersion
	}{
		{
			name: "no build information",
			want: builtVersion{Version: "0.1.0", Revision: "unknown", BuildDate: "unknown"},
		},
		{
			name: "outside a checkout, or -buildvcs=false",
			info: &debug.BuildInfo{Main: debug.Module{Path: "github.com/smtp-exporter/smtp_exporter", Version: "(devel)"}},
			want: builtVersion{Version: "0.1.0", Revision: "unknown", BuildDate: "unknown"},
		},
		{
			name: "go build of a tagged commit",
			info: &debug.BuildInfo{Main: debug.Module{Version: "v0.1.0"}, Settings: vcs(rev, "2026-12-02T09:10:11+01:00", "false")},
			want: builtVersion{Version: "0.1.0", Revision: rev, BuildDate: "20261202-08:10:11"},
		},
		{
			name: "go build with uncommitted changes after a tag",
			info: &debug.BuildInfo{Main: debug.Module{Version: "v0.1.1-0.20261202081011-0123456789ab+dirty"}, Settings: vcs(rev, "2026-12-02T08:10:11Z", "true")},
			want: builtVersion{Version: "0.1.1-0.20261202081011-0123456789ab+dirty", Revision: rev + "-modified", BuildDate: "20261202-08:10:11"},
		},
		{
			name: "go install module@commit, no vcs settings",
			info: &debug.BuildInfo{Main: debug.Module{Version: "v0.1.1-0.20261202081011-0123456789ab"}},
			want: builtVersion{Version: "0.1.1-0.20261202081011-0123456789ab", Revision: "0123456789ab", BuildDate: "20261202-08:10:11"},
		},
		{
			name: "go install module@commit before the first tag",
			info: &debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20261202081011-0123456789ab"}},
			want: builtVersion{Version: "0.0.0-20261202081011-0123456789ab", Revision: "0123456789ab", BuildDate: "20261202-08:10:11"},
		},
		{
			name: "go install module@v0.1.0",
			info: &debug.BuildInfo{Main: debug.Module{Version: "v0.1.0"}},
			want: builtVersion{Version: "0.1.0", Revision: "unknown", BuildDate: "unknown"},
		},
		{
			name: "a pre-release tag is not a pseudo-version",
			info: &debug.BuildInfo{Main: debug.Module{Version: "v0.2.0-rc.1"}},
			want: builtVersion{Version: "0.2.0-rc.1", Revision: "unknown", BuildDate: "unknown"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := buildVersion(tc.info, "0.1.0\n"); got != tc.want {
				t.Errorf("buildVersion = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestVersionFileIsARelease(t *testing.T) {
	if !regexp.MustCompile(`^[0-9]+\.[0-9]+\.[0-9]+\n$`).MatchString(releaseVersion) {
		t.Errorf("VERSION holds %q, want one line X.Y.Z", releaseVersion)
	}
}

// buildExporter builds the exporter from this checkout with the go command
// and the given extra flags, and returns the binary's path.
func buildExporter(t *testing.T, flags ...string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binary: skipped with -short")
	}
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command in PATH")
	}
	bin := filepath.Join(t.TempDir(), "smtp_exporter")
	args := append([]string{"build", "-o", bin}, flags...)
	cmd := exec.Command(goCmd, append(args, ".")...)
	if out, err := cmd.CombinedOutput(); err != nil {
		if strings.Contains(string(out), "error obtaining VCS status") {
			// Git cannot read this checkout (a repository owned by another
			// user, say): Go records nothing, as with -buildvcs=false, which
			// TestBuildVersion covers.
			t.Skipf("go build cannot read Git here:\n%s", out)
		}
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return bin
}

func versionOutput(t *testing.T, bin string) string {
	t.Helper()
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("%s --version: %v\n%s", bin, err, out)
	}
	return string(out)
}

// A go build without -ldflags shows the version and the commit Go recorded.
func TestVersionOfAPlainGoBuild(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("no git command in PATH")
	}
	head, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		t.Skip("not a Git checkout: the build records no commit")
	}
	bin := buildExporter(t, "-buildvcs=true")

	// The module version Go recorded, as `go version -m` reads it back.
	mod, err := exec.Command("go", "version", "-m", bin).Output()
	if err != nil {
		t.Fatalf("go version -m: %v", err)
	}
	m := regexp.MustCompile(`(?m)^\s+mod\s+\S+\s+(\S+)`).FindSubmatch(mod)
	if m == nil {
		t.Fatalf("go version -m shows no main module:\n%s", mod)
	}
	if !strings.Contains(string(mod), "vcs.revision=") {
		// Go stamps no VCS information in some checkouts (a git worktree,
		// whose .git is a file): there is no commit to compare with.
		t.Skipf("go build -buildvcs=true recorded no commit here:\n%s", mod)
	}
	wantVersion := strings.TrimPrefix(string(m[1]), "v")
	if wantVersion == "(devel)" {
		wantVersion = strings.TrimSpace(releaseVersion)
	}
	wantRevision := strings.TrimSpace(string(head))

	out := versionOutput(t, bin)
	re := regexp.MustCompile(`^smtp_exporter, version (\S+) \(branch: unknown, revision: ([0-9a-f]{40})(-modified)?\)`)
	got := re.FindStringSubmatch(out)
	if got == nil {
		t.Fatalf("--version does not match %s:\n%s", re, out)
	}
	if got[1] != wantVersion {
		t.Errorf("--version shows version %s, want %s:\n%s", got[1], wantVersion, out)
	}
	if got[2] != wantRevision {
		t.Errorf("--version shows revision %s, want HEAD %s:\n%s", got[2], wantRevision, out)
	}
	if !regexp.MustCompile(`build date:\s+[0-9]{8}-[0-9:]{8}\n`).MatchString(out) {
		t.Errorf("--version shows no commit date:\n%s", out)
	}

	// smtp_exporter_build_info carries the same version and revision.
	metrics := scrapeBinary(t, bin)
	wantInfo := fmt.Sprintf(`revision="%s%s"`, got[2], got[3])
	if !strings.Contains(metrics, wantInfo) || !strings.Contains(metrics, fmt.Sprintf(`version="%s"`, got[1])) {
		t.Errorf("smtp_exporter_build_info lacks %s and version=%q:\n%s", wantInfo, got[1], grepLines(metrics, "smtp_exporter_build_info"))
	}
}

// A release build's -ldflags win over everything the build recorded.
func TestVersionOfAReleaseBuild(t *testing.T) {
	const p = "github.com/prometheus/common/version."
	bin := buildExporter(t, "-ldflags", "-X "+p+"Version=9.8.7 -X "+p+"Revision=feedfacefeedfacefeedfacefeedfacefeedface"+
		" -X "+p+"Branch=release-9.8 -X "+p+"BuildUser=release@build -X "+p+"BuildDate=20261202-08:00:00")
	out := versionOutput(t, bin)
	for _, want := range []string{
		"smtp_exporter, version 9.8.7 (branch: release-9.8, revision: feedfacefeedfacefeedfacefeedfacefeedface)\n",
		"build user:       release@build\n",
		"build date:       20261202-08:00:00\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("--version lacks %q:\n%s", want, out)
		}
	}
}

// scrapeBinary starts the exporter binary on a free loopback port with the
// shipped configuration, and returns its /metrics.
func scrapeBinary(t *testing.T, bin string) string {
	t.Helper()
	addr := freeLoopbackAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "--config.file=smtp_exporter.yml", "--web.listen-address="+addr)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err == nil {
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode == http.StatusOK {
				return string(body)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not serve /metrics on %s: %v", bin, addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func grepLines(s, substr string) string {
	var b strings.Builder
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, substr) {
			fmt.Fprintln(&b, line)
		}
	}
	return b.String()
}

// --version prints the version block and exits 0 without starting the
// server; --help-man's header is one line, the version kept out of it.
func TestVersionAndManPageFlags(t *testing.T) {
	code, stdout, _ := runCaptured(t, "--version")
	if code != 0 || !strings.HasPrefix(stdout, "smtp_exporter, version ") || !strings.Contains(stdout, "go version:") {
		t.Errorf("--version: exit %d\n%s", code, stdout)
	}
	bin := filepath.Join(t.TempDir(), "smtp_exporter")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	man, err := exec.Command(bin, "--help-man").Output()
	if err != nil {
		t.Fatalf("--help-man: %v", err)
	}
	first, rest, _ := strings.Cut(string(man), "\n")
	if !strings.HasPrefix(first, ".TH smtp_exporter 1") || !strings.HasPrefix(rest, ".SH ") {
		t.Errorf("--help-man begins with a broken header:\n%s\n%.200s", first, rest)
	}
}
