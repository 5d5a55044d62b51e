#!/usr/bin/env bash
# Builds the Debian package of smtp_exporter: first a static binary that
# carries its version (the VERSION file), revision and branch (Git), build
# user and date through -ldflags, then the .deb with nfpm (run through the Go
# module proxy, no install needed). Prints the path of the .deb.
#
#   bash packaging/build-deb.sh                   # dist/smtp-exporter_0.1.0_amd64.deb
#   GOARCH=arm64 bash packaging/build-deb.sh      # another architecture
#
# Environment: DIST_DIR (default dist), GOARCH (default the Go toolchain's),
# VERSION (default the VERSION file), DEB_MAINTAINER, BUILD_USER, and
# SOURCE_DATE_EPOCH for a fixed build date.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

nfpm=github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2
dist=${DIST_DIR:-dist}

fail() {
	echo "build-deb: $*" >&2
	exit 1
}

version=${VERSION:-$(tr -d ' \t\n' <VERSION)}
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+([~+][0-9A-Za-z.+~]+)?$ ]] ||
	fail "version $version: want X.Y.Z, optionally followed by ~ or + and letters, digits, . + ~"

revision=unknown
branch=unknown
if git rev-parse --git-dir >/dev/null 2>&1; then
	revision=$(git rev-parse HEAD)
	# As Go's vcs.modified and prometheus/common/version mark it.
	if [[ -n $(git status --porcelain 2>/dev/null) ]]; then
		revision+=-modified
	fi
	branch=$(git rev-parse --abbrev-ref HEAD)
fi
build_user=${BUILD_USER:-$(id -un)@$(uname -n)}
if [[ -n ${SOURCE_DATE_EPOCH:-} ]]; then
	build_date=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y%m%d-%H:%M:%S)
else
	build_date=$(date -u +%Y%m%d-%H:%M:%S)
fi

goarch=${GOARCH:-$(go env GOARCH)}
arch=$goarch
goarm=
if [[ $goarch == arm ]]; then
	# Debian's armhf: ARMv7 with hardware floating point.
	arch=arm7
	goarm=7
fi

mkdir -p "$dist"
binary=$dist/smtp_exporter-linux-$goarch
v=github.com/prometheus/common/version
echo "build-deb: smtp_exporter $version (revision $revision, branch $branch) for linux/$goarch" >&2
CGO_ENABLED=0 GOOS=linux GOARCH=$goarch GOARM=$goarm go build -trimpath -o "$binary" -ldflags "-s -w \
	-X $v.Version=$version \
	-X $v.Revision=$revision \
	-X $v.Branch=$branch \
	-X $v.BuildUser=$build_user \
	-X $v.BuildDate=$build_date" .

deb_name=smtp-exporter_${version}_$(case $arch in 386) echo i386 ;; arm7) echo armhf ;; ppc64le) echo ppc64el ;; *) echo "$arch" ;; esac).deb
deb=$dist/$deb_name
rm -f "$deb"
# nfpm runs on this machine, whatever GOARCH the package is for.
env -u GOOS -u GOARCH -u GOARM \
	VERSION="$version" ARCH="$arch" BINARY="$binary" \
	DEB_MAINTAINER="${DEB_MAINTAINER:-The smtp_exporter Authors}" \
	go run "$nfpm" package --config packaging/nfpm.yaml --packager deb --target "$deb" >&2
echo "$deb"
