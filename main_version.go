package main

import (
	_ "embed"
	"regexp"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/common/version"
)

// releaseVersion is the VERSION file: the version of the latest release.
//
//go:embed VERSION
var releaseVersion string

var fillVersionOnce sync.Once

// fillVersion completes the variables of prometheus/common/version, which
// --version, the start-up log and smtp_exporter_build_info show. Release
// builds set them with -ldflags -X (packaging/build-deb.sh, the Dockerfile),
// and those values are kept; a plain `go build` or `go install` leaves them
// empty, and they are filled from what the Go toolchain recorded in the
// binary (see buildVersion). It must run before the version is first read.
func fillVersion() {
	fillVersionOnce.Do(func() {
		info, _ := debug.ReadBuildInfo()
		b := buildVersion(info, releaseVersion)
		fill := func(v *string, with string) {
			if *v == "" {
				*v = with
			}
		}
		fill(&version.Version, b.Version)
		fill(&version.Revision, b.Revision)
		fill(&version.BuildDate, b.BuildDate)
		fill(&version.Branch, "unknown")
		fill(&version.BuildUser, "unknown")
	})
}

// builtVersion is what a binary knows of its own version without -ldflags.
type builtVersion struct {
	Version   string // "0.1.0", "0.1.1-0.20261202081500-0123456789ab+dirty"
	Revision  string // the commit, with "-modified" if the tree was; "unknown"
	BuildDate string // the commit's time as 20060102-15:04:05 (UTC), or "unknown"
}

// buildDateLayout is the format promu gives version.BuildDate.
const buildDateLayout = "20060102-15:04:05"

// A pseudo-version (vX.Y.Z-[pre.]0.yyyymmddhhmmss-rev or
// vX.0.0-yyyymmddhhmmss-rev) names the commit and its time.
var pseudoVersion = regexp.MustCompile(`^v[0-9]+\.[0-9]+\.[0-9]+-(?:[0-9A-Za-z.-]*\.)?([0-9]{14})-([0-9a-f]{12})(?:\+[0-9A-Za-z.-]+)?$`)

// buildVersion reads the version from the build information Go embeds in
// every binary:
//
//   - the version is the main module's, without its "v": the tag of the
//     commit built, or the pseudo-version Go derives from the latest tag and
//     the commit (with "+dirty" for uncommitted changes). When Go recorded
//     none ("(devel)": a build outside a Git checkout or with
//     -buildvcs=false), it is the VERSION file's;
//   - the revision and the date are the commit's (vcs.revision, vcs.time,
//     vcs.modified), or those named by a pseudo-version (`go install
//     module@commit` records no vcs.* settings).
func buildVersion(info *debug.BuildInfo, release string) builtVersion {
	b := builtVersion{Version: strings.TrimSpace(release), Revision: "unknown", BuildDate: "unknown"}
	if info == nil {
		return b
	}
	if v := info.Main.Version; v != "" && v != "(devel)" {
		b.Version = strings.TrimPrefix(v, "v")
		if m := pseudoVersion.FindStringSubmatch(v); m != nil {
			b.Revision = m[2]
			if t, err := time.Parse("20060102150405", m[1]); err == nil {
				b.BuildDate = t.Format(buildDateLayout)
			}
		}
	}
	var modified bool
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			b.Revision = s.Value
		case "vcs.time":
			if t, err := time.Parse(time.RFC3339, s.Value); err == nil {
				b.BuildDate = t.UTC().Format(buildDateLayout)
			}
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if modified && b.Revision != "unknown" {
		// As prometheus/common/version itself marks it.
		b.Revision += "-modified"
	}
	return b
}
