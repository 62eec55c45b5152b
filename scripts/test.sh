#!/usr/bin/env bash
# Runs the whole test suite against real PostgreSQL and MinIO servers started by
# scripts/services.sh. Extra arguments go to go test, e.g.
#   scripts/test.sh -run TestBackup
# (package patterns given here are added to ./...).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec scripts/services.sh go test -race -count=1 -timeout 30m ./... "$@"
