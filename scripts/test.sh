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
# The deployment files' tests (alert rules, dashboard, Helm chart) are a
# module of their own, tools/, so that Prometheus, Helm and the Kubernetes API
# types stay out of the product's go.mod. They run, with gofmt and go vet over
# both modules, when no arguments narrow the run (CI), or with
# TENANTVAULT_TEST_TOOLS=1; TENANTVAULT_TEST_TOOLS=0 leaves them out. Not
# under -race: their only concurrent code is the agent, whose own tests run
# under it, and a race build of those dependencies costs minutes more.
tools=${TENANTVAULT_TEST_TOOLS:-$([[ $# -eq 0 ]] && echo 1 || echo 0)}
if [[ $tools == 1 ]]; then
	unformatted=$(gofmt -l .)
	if [[ -n $unformatted ]]; then
		printf 'gofmt: not formatted:\n%s\n' "$unformatted" >&2
		exit 1
	fi
	go vet ./...
	(cd tools && go vet ./...)
fi
rc=0
# shellcheck disable=SC2016 # expanded by the inner shell
scripts/services.sh bash -c '
	rc=0
	go test -race -count=1 -timeout 30m ./... "${@:2}" || rc=$?
	if [[ $1 == 1 ]]; then
		(cd tools && go test -count=1 -timeout 15m ./...) || rc=$?
	fi
	exit "$rc"' test.sh "$tools" "$@" || rc=$?
if [[ -s $report ]]; then
	echo "--- counts reported by the tests:"
	sort "$report"
fi
exit "$rc"
