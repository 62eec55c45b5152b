#!/usr/bin/env bash
# Quick start: snapshot a demo multi-tenant database and restore deleted
# tenants from it, end to end, on this machine.
#
# Starts a throwaway PostgreSQL (scripts/services.sh, no MinIO needed), builds
# tenantvault, generates a small issue-tracker database with 40 tenants, takes
# a snapshot into a file:// repository, "accidentally" deletes three tenants
# the way a bad maintenance script would, restores them, and proves they are
# back row for row. Everything is removed afterwards.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ ${1:-} != --inside ]]; then
	exec env TENANTVAULT_SERVICES=postgres scripts/services.sh "$0" --inside
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/tenantvault-quickstart.XXXXXX")
trap 'rm -rf "$work"' EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() {
	printf '$'
	printf ' %q' "$@"
	printf '\n'
	"$@"
}

step "build tenantvault and the demo data generator"
go build -o "$work/tenantvault" ./cmd/tenantvault
go build -o "$work/tvgen" ./bench/cmd/tvgen
PATH=$work:$PATH

db="postgres://postgres@${PGHOST}:${PGPORT}/demo?sslmode=disable"
repo="file://$work/repo"
psql -qX -d "$TENANTVAULT_TEST_PG_URL" -c 'CREATE DATABASE demo'

step "generate a demo SaaS database: 40 tenants, about 20 MB, some with odd IDs"
run tvgen --db "$db" --tenants 40 --size 20MB --seed 7 --odd-ids

step "see how tenantvault reads the schema (nothing is written)"
run tenantvault snapshot --source "$db" --repo "$repo" --dry-run

step "take a snapshot of every tenant"
run tenantvault snapshot --source "$db" --repo "$repo" --init
run tenantvault list --repo "$repo"

victims=("o'brien & co" "t0003" "t0007")
fingerprint() {
	# Every row of the victims, as text, from plain SQL.
	psql -qAtX -d "$db" -v ids="$(printf "'%s'," "${victims[@]//\'/\'\'}" | sed 's/,$//')" <<'SQL' | md5sum
SELECT string_agg(x, E'\n' ORDER BY x) FROM (
  SELECT t::text AS x FROM tenants t WHERE id IN (:ids)
  UNION ALL SELECT u::text FROM users u WHERE tenant_id IN (:ids)
  UNION ALL SELECT i::text FROM issues i WHERE tenant_id IN (:ids)
  UNION ALL SELECT c::text FROM comments c JOIN issues i ON i.id = c.issue_id WHERE i.tenant_id IN (:ids)
  UNION ALL SELECT a::text FROM attachments a JOIN comments c ON c.id = a.comment_id JOIN issues i ON i.id = c.issue_id WHERE i.tenant_id IN (:ids)
  UNION ALL SELECT e::text FROM events e WHERE tenant_id IN (:ids)
  UNION ALL SELECT l::text FROM audit_log l WHERE tenant_id IN (:ids)
) s
SQL
}
before=$(fingerprint)

step "the incident: a maintenance script deletes three customers (cascading)"
ids=$(printf "'%s'," "${victims[@]//\'/\'\'}" | sed 's/,$//')
run psql -qX -d "$db" -c "DELETE FROM tenants WHERE id IN ($ids)"

step "restore them into the live database: plan first, then for real"
args=(--repo "$repo" --target "$db")
for v in "${victims[@]}"; do args+=(--tenant "$v"); done
run tenantvault restore "${args[@]}" --dry-run
run tenantvault restore "${args[@]}" --yes
run tenantvault list --repo "$repo" --tenant "o'brien & co"

step "prove it: the repository reads back, and the tenants equal what was deleted"
run tenantvault verify --repo "$repo" --read-data
after=$(fingerprint)
if [[ $before != "$after" ]]; then
	echo "quick start FAILED: restored rows differ from the original ones" >&2
	exit 1
fi
echo "restored tenants are identical to the deleted ones, row for row"
