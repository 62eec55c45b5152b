#!/usr/bin/env bash
# Runs the whole test suite against real PostgreSQL and MinIO servers started by
# scripts/services.sh. Extra arguments go to go test, e.g.
#   scripts/test.sh -run TestBackup
# (package patterns given here are added to ./...).
#
# Tests that count what they did (the fault-injection suite, the bit-flip
# tests) append one line each to $TENANTVAULT_TEST_REPORT; go test shows no
# output of passing packages, so the lines are printed after the tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
report=$(mktemp "${TMPDIR:-/tmp}/tenantvault-test-report.XXXXXX")
trap 'rm -f "$report"' EXIT
export TENANTVAULT_TEST_REPORT=$report
# Race-enabled binaries sleep a second at exit by default (for late race
# reports); the tests start the race-built CLI and agent hundreds of times.
# Races found while a test runs still fail it.
export GORACE="atexit_sleep_ms=0${GORACE:+ $GORACE}"
rc=0
scripts/services.sh go test -race -count=1 -timeout 30m ./... "$@" || rc=$?
if [[ -s $report ]]; then
	echo "--- counts reported by the tests:"
	sort "$report"
fi
exit "$rc"
