#!/usr/bin/env bash
# Runs the project's tests as CI does: go vet, then every test with the race
# detector and no cached results (a result cached against another lab proves
# nothing), and ends with the tests that skipped and why: without a lab
# (SMTP_EXPORTER_LAB) or the tools of test/install-tools.sh, whole suites
# skip, and that must be the last thing the run says.
#
#   bash test/run.sh            # everything
#   bash test/run.sh -run Gate  # extra flags go to go test
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
go vet ./...
go build -o /dev/null ./test/testsummary # a build error here is not a test result
go test -race -count=1 -json "$@" ./... | go run ./test/testsummary
