# shellcheck shell=bash
# Sourced by vm-images/build-vm: what every step and library shares.
# Progress goes to stderr as "[vm] ..."; an error ends the script as
# "build-vm: error: ..." with status 1.

log() { echo "[vm] $*" >&2; }
die() { echo "build-vm: error: $*" >&2; exit 1; }

# need_space MB DIR: die unless the file system holding DIR has MB megabytes free.
need_space() {
	local avail
	avail=$(df -Pk "$2" | awk 'NR==2 {print $4}')
	[ "$avail" -ge $(($1 * 1024)) ] || die "need $1 MB free in $2, have $((avail / 1024)) MB (set GDB_FTRACE_CACHE to a bigger disk)"
}
