# shellcheck shell=bash
# Sourced by vm-images/build-vm: a kernel built from a source tree or release
# tarball (build-vm --ksrc PATH; make check KSRC=PATH), for the eras no
# package registry here carries (v5.2-v5.5: ftrace_int3_handler).
#
#   ksrc_key SRC                    a key for SRC's contents (the cache folder name)
#   ksrc_unpack TARBALL DEST        unpack a release tarball (one top folder) into DEST
#   ksrc_configure SRC OBJ FRAG     x86_64_defconfig + FRAG in OBJ, checked
#   ksrc_build SRC OBJ LOG          bzImage, vmlinux and the modules, with progress
#
# The tree is built out of place (O=OBJ), so a user's source directory stays
# as it was. Needs lib/common.sh. Runs under `set -euo pipefail`: no reader
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

# ksrc_configure SRC OBJ FRAGMENT: x86_64_defconfig, then FRAGMENT's lines
# merged in, then olddefconfig; every CONFIG_X=y of FRAGMENT must be =y after
# it (a dependency the tree lacks would silently drop it).
ksrc_configure() {
	local src=$1 obj=$2 frag=$3 missing
	if [ -f "$src/.config" ] || [ -d "$src/include/config" ]; then
		die "$src has been configured or built in place; build-vm builds out of place (O=): run 'make mrproper' there, or pass a release tarball"
	fi
	log "configuring: x86_64_defconfig + $(basename "$frag")"
	mkdir -p "$obj"
	make -s -C "$src" O="$obj" x86_64_defconfig >"$obj/config.log" 2>&1 || { tail -20 "$obj/config.log" >&2; die "make x86_64_defconfig failed"; }
	# Later assignments win in a .config: append the fragment, then let Kconfig resolve it.
	grep -E '^(CONFIG_[A-Za-z0-9_]+=|# CONFIG_[A-Za-z0-9_]+ is not set)' "$frag" >>"$obj/.config"
	make -s -C "$src" O="$obj" olddefconfig >>"$obj/config.log" 2>&1 || { tail -20 "$obj/config.log" >&2; die "make olddefconfig failed"; }
	missing=$(grep -E '^CONFIG_[A-Za-z0-9_]+=y$' "$frag" | while read -r line; do
		grep -qxF "$line" "$obj/.config" || echo "${line%=y}"
	done | xargs)
	[ -z "$missing" ] || die "this tree cannot enable: $missing (needed by the check; see $frag)"
}

# ksrc_build SRC OBJ LOG: bzImage, vmlinux and the modules (for Module.symvers,
# which an out-of-tree module build needs). A line every 30 s says how long
# it has run and what it compiles; make's output goes to LOG.
ksrc_build() {
	local src=$1 obj=$2 blog=$3 t0=$SECONDS pid rc last jobs next
	jobs=$(nproc)
	log "building $(make -s -C "$src" kernelversion 2>/dev/null || echo the kernel) with $(gcc -dumpfullversion 2>/dev/null | sed 's/^/gcc /') on $jobs cores" \
		"(about 10 minutes on 2 cores; once, then cached; log: $blog)"
	make -C "$src" O="$obj" -j"$jobs" bzImage modules >"$blog" 2>&1 &
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
		die "building the kernel failed (log: $blog)"
	fi
	if [ ! -f "$obj/arch/x86/boot/bzImage" ] || [ ! -f "$obj/vmlinux" ]; then die "the build made no bzImage/vmlinux (log: $blog)"; fi
	log "  built in $(((SECONDS - t0) / 60))m$(((SECONDS - t0) % 60))s"
}
