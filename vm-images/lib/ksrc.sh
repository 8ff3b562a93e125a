# shellcheck shell=bash
# Sourced by vm-images/build-vm: a kernel built from a source tree or release
# tarball (build-vm --ksrc PATH; make check KSRC=PATH), for the eras no
# package registry here carries (v5.2-v5.5: ftrace_int3_handler).
#
#   ksrc_key SRC                    a key for SRC's contents (the cache folder name)
#   ksrc_unpack TARBALL DEST        unpack a release tarball (one top folder) into DEST
#   ksrc_configure SRC OBJ FRAG [USER]  x86_64_defconfig + FRAG (+ USER's fragment) in OBJ,
#                                   or USER's whole .config + FRAG's needs; checked
#   ksrc_build SRC OBJ LOG          bzImage, vmlinux and the modules, with progress
#
# The tree is built out of place (O=OBJ), so a user's source directory stays
# as it was. Every make gets kmake_args (build-vm --kmake). Needs lib/common.sh. Runs under `set -euo pipefail`: no reader
# on a pipe may stop early (see lib/deb.sh).

# ksrc_key SRC: 16 hex digits naming SRC's contents. A tarball: its sha256.
# A directory: every source file's path, size and mtime (a git checkout also
# its HEAD), so an edit gives another key and a rebuild.
ksrc_key() {
	if [ -f "$1" ]; then
		sha256sum "$1" | cut -c1-16
		return
	fi
	{
		git -C "$1" rev-parse HEAD 2>/dev/null || true
		(cd "$1" && find . -type f \( -name '*.[chS]' -o -name 'Kconfig*' -o -name 'Makefile*' -o -name 'Kbuild' \) \
			-not -path './.git/*' -printf '%P %s %T@\n' | LC_ALL=C sort)
	} | sha256sum | cut -c1-16
}

# ksrc_name SRC: a readable name for the cache folder: the tarball's or folder's name.
ksrc_name() {
	local b
	b=$(basename "$1")
	b=${b%.tar.*}
	b=${b%.tgz}
	echo "${b//[^A-Za-z0-9._+-]/_}"
}

# ksrc_unpack TARBALL DEST: a release tarball has one top folder; its contents go to DEST.
ksrc_unpack() {
	local t0=$SECONDS
	log "unpacking $(basename "$1") (a kernel tree is about 1 GB unpacked; once)"
	rm -rf "$2"
	mkdir -p "$2"
	tar -xf "$1" -C "$2" --strip-components=1 || die "cannot unpack $1"
	if [ ! -f "$2/Makefile" ] || [ ! -d "$2/arch/x86" ]; then die "$1 is not a kernel source tree with arch/x86"; fi
	log "  unpacked in $((SECONDS - t0)) s"
}

# ksrc_configure SRC OBJ FRAGMENT [USER]: x86_64_defconfig, then FRAGMENT's
# lines merged in, then USER's (a fragment: its lines win), then
# olddefconfig. USER may be a whole .config instead ("# Automatically
# generated file" at its top): then it is the start, and only FRAGMENT's
# CONFIG_X=y lines (what the check needs) are added. Without USER every
# CONFIG_X=y of FRAGMENT must be =y after it (a dependency the tree lacks
# would silently drop it); with USER, USER's own =y/=m lines must survive,
# and what it switched off of ours is left to build-vm's .config check
# (refused scenarios, named).
ksrc_configure() {
	local src=$1 obj=$2 frag=$3 user=${4:-} missing opts
	if [ -f "$src/.config" ] || [ -d "$src/include/config" ]; then
		if [ -f "$src/vmlinux" ] && [ -f "$src/arch/x86/boot/bzImage" ]; then
			die "$src is configured and built in place: check it as it is with KBUILD=$src (nothing in it is written), or 'make mrproper' there to have KSRC build it out of place"
		fi
		die "$src has been configured in place but not built: build it ('make bzImage modules' there) and check it with KBUILD=$src, or 'make mrproper' there to have KSRC build it out of place (O=)"
	fi
	mkdir -p "$obj"
	if [ -n "$user" ] && awk 'NR <= 5 && /^# Automatically generated file/ { f = 1 } END { exit !f }' "$user"; then
		log "configuring: your .config $(basename "$user") + what the check needs from $(basename "$frag")"
		cp "$user" "$obj/.config"
		grep -E '^CONFIG_[A-Za-z0-9_]+=y$' "$frag" >>"$obj/.config"
	else
		log "configuring: x86_64_defconfig + $(basename "$frag")${user:+ + $(basename "$user")}"
		make -s -C "$src" O="$obj" "${kmake_args[@]}" x86_64_defconfig >"$obj/config.log" 2>&1 || { tail -20 "$obj/config.log" >&2; die "make x86_64_defconfig failed"; }
		# Later assignments win in a .config: append the fragments, then let Kconfig resolve them.
		grep -E '^(CONFIG_[A-Za-z0-9_]+=|# CONFIG_[A-Za-z0-9_]+ is not set)' "$frag" >>"$obj/.config"
		[ -z "$user" ] || grep -E '^(CONFIG_[A-Za-z0-9_]+=|# CONFIG_[A-Za-z0-9_]+ is not set)' "$user" >>"$obj/.config" || true
	fi
	make -s -C "$src" O="$obj" "${kmake_args[@]}" olddefconfig >>"$obj/config.log" 2>&1 || { tail -20 "$obj/config.log" >&2; die "make olddefconfig failed"; }
	if [ -z "$user" ]; then
		opts=$(grep -E '^CONFIG_[A-Za-z0-9_]+=y$' "$frag" || true)
		missing=$(while read -r line; do [ -z "$line" ] || grep -qxF "$line" "$obj/.config" || echo "${line%=y}"; done <<<"$opts" | xargs)
		[ -z "$missing" ] || die "this tree cannot enable: $missing (needed by the check; see $frag)"
		return 0
	fi
	opts=$(grep -E '^CONFIG_[A-Za-z0-9_]+=[ym]$' "$user" || true)
	missing=$(while read -r line; do [ -z "$line" ] || grep -qxF "$line" "$obj/.config" || echo "${line%=*}"; done <<<"$opts" | xargs)
	[ -z "$missing" ] || die "KCONFIG $(basename "$user") asks for $missing, which this tree's Kconfig dropped (an option it depends on is off, or the tree has no such option)"
}

# ksrc_build SRC OBJ LOG: bzImage, vmlinux and the modules (for Module.symvers,
# which an out-of-tree module build needs). A line every 30 s says how long
# it has run and what it compiles; make's output goes to LOG.
ksrc_build() {
	local src=$1 obj=$2 blog=$3 t0=$SECONDS pid rc last jobs next
	jobs=$(nproc)
	log "building $(make -s -C "$src" kernelversion 2>/dev/null || echo the kernel) with $(gcc -dumpfullversion 2>/dev/null | sed 's/^/gcc /') on $jobs cores" \
		"(about 10 minutes on 2 cores; once, then cached; log: $blog)"
	log "  make ${kmake_args[*]}${kmake_args[*]:+ }bzImage modules"
	make -C "$src" O="$obj" -j"$jobs" "${kmake_args[@]}" bzImage modules >"$blog" 2>&1 &
	pid=$!
	next=$((t0 + 30))
	while kill -0 "$pid" 2>/dev/null; do
		sleep 1
		if [ "$SECONDS" -ge "$next" ]; then
			next=$((next + 30))
			last=$(tail -c 4096 "$blog" | awk '/^  [A-Z0-9]+ / { l = $0 } END { sub(/^ +/, "", l); print l }')
			log "  building: $(((SECONDS - t0) / 60))m$(((SECONDS - t0) % 60))s${last:+, $last}"
		fi
	done
	rc=0
	wait "$pid" || rc=$?
	if [ "$rc" != 0 ]; then
		grep -E 'error|Error' "$blog" | tail -15 >&2 || true
		PYTHONPATH="$(dirname "${BASH_SOURCE[0]}")/../.." /usr/bin/python3 -m gdb_ftrace.core.toolchain "$blog" >&2 ||
			log "(not a toolchain error build-vm knows; KMAKE='VAR=value ...' passes make variables to the build)"
		die "building the kernel failed (log: $blog)"
	fi
	if [ ! -f "$obj/arch/x86/boot/bzImage" ] || [ ! -f "$obj/vmlinux" ]; then die "the build made no bzImage/vmlinux (log: $blog)"; fi
	log "  built in $(((SECONDS - t0) / 60))m$(((SECONDS - t0) % 60))s"
}
