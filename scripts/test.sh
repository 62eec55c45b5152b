#!/usr/bin/env bash
# Runs the whole test suite against real PostgreSQL and MinIO servers started by
# scripts/services.sh. Extra arguments go to go test, e.g.
#   scripts/test.sh -run TestBackup
# (package patterns given here are added to ./...).
#
# The suite runs on PostgreSQL 15. Then, unless arguments were given, the core
# (TestPostgresMatrix: snapshot, restore, capture + restore --at, drill) runs
# once more on each other supported major version, each on its own throwaway
# server (scripts/pgbin.sh fetches the binaries once). TENANTVAULT_TEST_MATRIX
# lists those versions (default "13 14 16 17 18"; empty for none), and given
# explicitly it runs them even with arguments.
#
# Tests that count what they did (the fault-injection suite, the bit-flip
# tests) append one line each to $TENANTVAULT_TEST_REPORT; go test shows no
# output of passing packages, so the lines are printed after the tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tenantvault-test.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
report=$tmp/report
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

matrix="13 14 16 17 18"
if [[ -n ${TENANTVAULT_TEST_MATRIX+set} ]]; then
	matrix=$TENANTVAULT_TEST_MATRIX
elif [[ $# -gt 0 ]]; then
	matrix=""
fi

rc=0
start=$SECONDS
# shellcheck disable=SC2016 # expanded by the inner shell
TENANTVAULT_PG_VERSION=15 TENANTVAULT_TEST_PG_VERSION=15 \
	scripts/services.sh bash -c '
	rc=0
	go test -race -count=1 -timeout 30m ./... "${@:2}" || rc=$?
	if [[ $1 == 1 ]]; then
		(cd tools && go test -count=1 -timeout 15m ./...) || rc=$?
	fi
	exit "$rc"' test.sh "$tools" "$@" || rc=$?
echo "--- full suite on PostgreSQL 15: $([[ $rc -eq 0 ]] && echo ok || echo FAILED) in $((SECONDS - start))s"

if [[ -n $matrix ]]; then
	# One build, run on each server: no MinIO (the matrix uses a file://
	# repository). The runs mostly wait (for the change log, for the
	# servers), so TENANTVAULT_TEST_MATRIX_JOBS of them (default 2) run at
	# once.
	go test -race -c -o "$tmp/tenantvault.test" ./cmd/tenantvault
	parallel=${TENANTVAULT_TEST_MATRIX_JOBS:-2}
	start=$SECONDS
	for v in $matrix; do
		while [[ $(jobs -rp | wc -l) -ge $parallel ]]; do
			wait -n || true
		done
		(
			s=$SECONDS
			vrc=0
			cd cmd/tenantvault &&
				TENANTVAULT_SERVICES=postgres TENANTVAULT_PG_VERSION=$v TENANTVAULT_TEST_PG_VERSION=$v \
					../../scripts/services.sh "$tmp/tenantvault.test" -test.run '^TestPostgresMatrix$' -test.count=1 -test.timeout 10m -test.v \
					>"$tmp/matrix-$v.log" 2>&1 || vrc=$?
			echo "$vrc $((SECONDS - s))" >"$tmp/matrix-$v.rc"
		) &
	done
	wait
	echo "--- core matrix (TestPostgresMatrix), $((SECONDS - start))s:"
	for v in $matrix; do
		read -r vrc secs <"$tmp/matrix-$v.rc" || vrc=1
		if [[ $vrc -ne 0 ]]; then
			rc=1
			echo "    PostgreSQL $v: FAILED in ${secs:-?}s"
			sed 's/^/        /' "$tmp/matrix-$v.log"
		else
			echo "    PostgreSQL $v: ok in ${secs}s"
			grep -E '^    --- ' "$tmp/matrix-$v.log" | sed 's/^/    /'
		fi
	done
fi

if [[ -s $report ]]; then
	echo "--- counts reported by the tests:"
	sort "$report"
fi
exit "$rc"
