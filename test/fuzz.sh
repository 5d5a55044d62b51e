#!/usr/bin/env bash
# Runs every Go fuzz target of the module briefly, one after the other.
#
#   test/fuzz.sh              # each target for FUZZTIME (default 10s)
#   FUZZTIME=60s test/fuzz.sh # longer, by hand
#
# Targets are found by their "func FuzzX(f *testing.F)" line, so a new one
# is run without touching this script. A failing input is written by Go to
# the package's testdata/fuzz/FuzzX/ directory: commit it with the fix, as a
# regression case. Exits non-zero at the first target that fails.
set -euo pipefail

cd "$(dirname "$0")/.."
fuzztime="${FUZZTIME:-10s}"

targets=$({ grep -rl --include='*_test.go' -E '^func Fuzz[A-Za-z0-9_]+\(f \*testing\.F\)' . || true; } |
	while read -r file; do
		dir=$(dirname "$file")
		sed -nE 's/^func (Fuzz[A-Za-z0-9_]+)\(f \*testing\.F\).*/\1/p' "$file" | sed "s|^|$dir |"
	done | sort)

if [ -z "$targets" ]; then
	echo "fuzz.sh: no fuzz targets found" >&2
	exit 1
fi

start=$(date +%s)
while read -r dir name; do
	t0=$(date +%s)
	echo "=== $name ($dir, $fuzztime)"
	if ! go test -run='^$' -fuzz="^${name}\$" -fuzztime="$fuzztime" "$dir"; then
		echo "fuzz.sh: $name failed; the input is in $dir/testdata/fuzz/$name/" >&2
		exit 1
	fi
	echo "--- $name: $(($(date +%s) - t0))s"
done <<<"$targets"
echo "fuzz.sh: $(wc -l <<<"$targets") targets in $(($(date +%s) - start))s"
