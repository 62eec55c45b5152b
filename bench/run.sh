#!/usr/bin/env bash
# Usage: bench/run.sh [tvbench flags...]
#
# Builds tenantvault and the benchmark driver (bench/cmd/tvbench), then runs
# the side-by-side benchmark on one generated database:
#   tenantvault snapshot  vs  pg_dump -Fd -j 2  vs  pgBackRest full backup;
#   restore of 1 tenant, 1% and 40% of tenants into the live database  vs
#   pg_restore -j 2 of the whole dump  vs  pgBackRest restore + start + copy;
#   a second snapshot after 1% of tenants changed; load throughput vs plain
#   COPY; the machine's COPY, zstd, SHA-256 and disk limits; CPU profiles.
#
# Defaults: --tenants 1000 --size 1GB --reps 3 (about 30-40 minutes on 2
# cores). Common flags:
#   --smoke                  20 tenants, 20MB, 1 repetition (a minute)
#   --shape chain            issue 15's production shape (tenants, issues,
#                            comments through issues, reactions through
#                            comments) instead of the twelve-table tracker
#   --size 10GB --reps 1     the large run
#   --skip pgbackrest,load   leave parts out (pg_dump, pgbackrest, restore,
#                            incremental, load, limits, profile)
#   --variant 'work-mem 512MB=--work-mem=512MB'   an extra snapshot config
#   --out DIR                results.json, report.md, logs, profiles
#   --baseline BIN           an earlier tenantvault build: its snapshot and
#                            its restore of 40% of tenants are measured in
#                            the same reps
# The driver starts its own PostgreSQL 15 cluster (initdb/pg_ctl, as the
# postgres user when run as root) with archiving for pgBackRest, and removes
# it and every temporary file on exit or Ctrl-C. pgBackRest is used when
# installed (Debian: apt-get install pgbackrest), else that part is skipped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
	sed -n '/^# Usage:/,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0" >&2
	exit 0
fi

bin=$(mktemp -d "${TMPDIR:-/tmp}/tvbench-bin.XXXXXX")
trap 'rm -rf -- "$bin"' EXIT
chmod 0755 "$bin"
echo "run.sh: building tenantvault and tvbench" >&2
go build -o "$bin/tenantvault" ./cmd/tenantvault
go build -o "$bin/tvbench" ./bench/cmd/tvbench

out_given=false
for a in "$@"; do
	[[ $a == --out || $a == --out=* ]] && out_given=true
done
args=()
if ! $out_given; then
	args+=(--out "bench/results/$(date -u +%Y%m%dT%H%M%SZ)")
fi
"$bin/tvbench" --tenantvault "$bin/tenantvault" "${args[@]}" "$@"
