# shellcheck shell=bash
# Sourced by vm-images/build-vm: a Debian kernel from Debian's archive, through apt.
# Resolve which kernel (the newest cloud-amd64 one, or the one asked for), in
# this machine's apt or in other suites through a private apt configuration;
# download its packages; take bzImage, vmlinux, the headers and the kernel
# source out of them. Nothing is installed on this machine.
#
# Needs lib/common.sh (log, die, need_space) and lib/deb.sh (deb_member,
# field_of). Runs under `set -euo pipefail`: no reader on a pipe may stop early
# (see lib/deb.sh).
#
# State:
#   apt_opts       empty for this machine's apt; apt_use_suites points it at a
#                  private configuration instead
#   apt_suites     the suites of that private configuration ("" = this machine's)
#   apt_refreshed  1 once apt's lists were refreshed in this run (at most once)
apt_opts=()
apt_suites=""
apt_refreshed=0

# apt_use_suites APT-DIR SUITE...: look packages up in these suites only, through
# a private apt configuration in APT-DIR: this machine's apt sources stay as
# they are. Fetches the lists when the suites changed or none are there yet.
apt_use_suites() {
	local aptdir=$1 list s
	shift
	list=$(for s in "$@"; do
		case "$s" in
		*-security) echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security $s main" ;;
		*) echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $s main" ;;
		esac
	done)
	mkdir -p "$aptdir/lists/partial" "$aptdir/cache/archives/partial"
	apt_opts=(-o Dir::Etc::sourcelist="$aptdir/sources.list" -o Dir::Etc::sourceparts=-
		-o Dir::State::lists="$aptdir/lists" -o Dir::Cache="$aptdir/cache")
	apt_suites="$*"
	if [ "$list" != "$(cat "$aptdir/sources.list" 2>/dev/null)" ] || ! ls "$aptdir"/lists/*_Packages* >/dev/null 2>&1; then
		echo "$list" >"$aptdir/sources.list"
		log "fetching the package lists of $* into $aptdir (a private apt configuration: this machine's apt sources stay as they are)"
		apt-get "${apt_opts[@]}" update -q >&2 || die "apt-get update of the private lists ($*) failed"
	fi
}

# apt_release_suites KERNEL: the suites of the Debian release KERNEL's ABI
# names (+deb12: bookworm-backports, +deb13: trixie*, +deb14: forky, sid;
# 5.10.0-N: Debian 11, bullseye, whose security suite lists newer ABIs whose
# files are not always served); nothing for any other ABI.
apt_release_suites() {
	case "$1" in
	5.10.0-*) echo "bullseye bullseye-security" ;;
	*+deb12*) echo "bookworm-backports" ;;
	*+deb13*) echo "trixie trixie-security trixie-backports" ;;
	*+deb14*) echo "forky sid" ;;
	esac
}

# Old ABIs leave the archive: when apt's lists are stale (nothing found, or a
# download fails), they are refreshed once per run and the step tried again.
# That needs root for this machine's lists; a private configuration is ours.
apt_can_refresh() { [ "$apt_refreshed" = 0 ] && { [ -n "$apt_suites" ] || [ "$(id -u)" = 0 ]; }; }
apt_refresh() { # REASON
	log "$1; refreshing apt lists (apt-get update${apt_suites:+ of $apt_suites}) and retrying"
	apt-get "${apt_opts[@]}" update -q >&2 || die "apt-get update failed"
	apt_refreshed=1
}

apt_has() { [ -n "$(apt-cache "${apt_opts[@]}" show --no-all-versions "$1" 2>/dev/null | field_of Package)" ]; }

# apt_image_pkg KERNEL: the unsigned kernel image package: linux-image-<K>-unsigned
# until Debian renamed it to linux-binary-unsigned-<K> (the 6.19+ packages of
# trixie-backports, sid).
apt_image_pkg() {
	if apt_has "linux-image-$1-unsigned"; then echo "linux-image-$1-unsigned"
	elif apt_has "linux-binary-unsigned-$1"; then echo "linux-binary-unsigned-$1"
	else return 1; fi
}

# apt_find_kernel [KERNEL]: sets kernel (when none is given: the newest
# cloud-amd64 kernel for which apt knows the unsigned image, the -dbg package
# and the headers), img_pkg, dbg_pkg and hdr_pkg. Returns 1 when apt lacks
# something that refreshing its lists may bring, with apt_missing saying what
# and apt_gone the error to give if it stays missing.
apt_find_kernel() {
	local k candidates p
	kernel=${1:-}
	if [ -z "$kernel" ]; then
		log "resolving the newest cloud-amd64 kernel with -dbg and headers from apt metadata${apt_suites:+ ($apt_suites)}"
		candidates=$({ apt-cache "${apt_opts[@]}" search --names-only '^linux-image-.*-cloud-amd64-unsigned$' 2>/dev/null |
			sed -n 's/^linux-image-\(.*-cloud-amd64\)-unsigned .*/\1/p'
			apt-cache "${apt_opts[@]}" search --names-only '^linux-binary-unsigned-.*-cloud-amd64$' 2>/dev/null |
			sed -n 's/^linux-binary-unsigned-\(.*-cloud-amd64\) .*/\1/p'; } | sort -V -r -u)
		if [ -z "$candidates" ]; then
			apt_missing="apt knows no unsigned cloud-amd64 kernel image package"
			apt_gone="$apt_missing; run 'apt-get update' as root and retry"
			return 1
		fi
		for k in $candidates; do
			if apt_has "linux-image-$k-dbg" && apt_has "linux-headers-$k"; then kernel=$k; break; fi
		done
		[ -n "$kernel" ] || die "no cloud-amd64 kernel in apt has all of -unsigned, -dbg and headers"
	fi
	img_pkg=$(apt_image_pkg "$kernel") || img_pkg=linux-image-$kernel-unsigned # (or linux-binary-unsigned-$kernel)
	dbg_pkg=linux-image-$kernel-dbg
	hdr_pkg=linux-headers-$kernel
	for p in "$img_pkg" "$dbg_pkg" "$hdr_pkg"; do
		apt_has "$p" && continue
		apt_missing="apt has no package $p"
		apt_gone="apt${apt_suites:+ ($apt_suites)} has no package $p"
		[ "$p" != "linux-image-$kernel-unsigned" ] || apt_gone+=" (nor linux-binary-unsigned-$kernel)"
		apt_gone+=" (old ABIs leave the archive; list what is there with: apt-cache search --names-only '^linux-image-.*-dbg\$'; newer kernels: --suite trixie-backports)"
		return 1
	done
}

# apt_resolve_kernel [KERNEL]: apt_find_kernel, and when apt lacks something,
# refresh its lists once and look again.
apt_resolve_kernel() {
	apt_find_kernel "$@" && return 0
	apt_can_refresh || die "$apt_gone"
	apt_refresh "$apt_missing"
	apt_find_kernel "$@" || die "$apt_gone"
}

# apt_download PKG DIR: PKG's .deb into DIR; sets deb to its path. When the
# download fails, refresh apt's lists once and try again.
apt_download() {
	mkdir -p "$2"
	if ! apt_get_deb "$1" "$2"; then
		apt_can_refresh || die "apt-get download $1 failed; run 'apt-get update' as root and retry"
		apt_refresh "apt-get download $1 failed"
		apt_get_deb "$1" "$2" || die "apt-get download $1 failed, also after refreshing apt's lists"
	fi
	deb=$(ls "$2/$1"_*.deb)
}
apt_get_deb() { # PKG DIR: quietly, then once more showing apt's errors
	(cd "$2" && rm -f "$1"_*.deb && apt-get "${apt_opts[@]}" download -q "$1" >&2 2>/dev/null) ||
		(cd "$2" && apt-get "${apt_opts[@]}" download "$1" >&2)
}

# apt_fetch_bzimage PKG VM: VM/bzImage (and VM/config when the package has
# one) from the unsigned image package PKG.
apt_fetch_bzimage() {
	local pkg=$1 vm=$2 deb tmp kimg kcfg
	need_space 200 "$vm"
	log "downloading $pkg"
	apt_download "$pkg" "$vm/debs"
	log "extracting bzImage"
	tmp=$(mktemp -d "$vm/x.XXXXXX")
	# ./boot/vmlinuz-<K> in linux-image-*-unsigned, ./usr/lib/modules/<K>/vmlinuz.unsigned
	# in linux-binary-unsigned-* (whose config is in the headers, see apt_fetch_headers).
	kimg=$(deb_member "$deb" '^\./(boot/vmlinuz-|usr/lib/modules/[^/]+/vmlinuz)') || die "no kernel image in $deb"
	kcfg=$(deb_member "$deb" '^\./boot/config-') || true
	dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" "$kimg" ${kcfg:+"$kcfg"}
	mv "$tmp/$kimg" "$vm/bzImage"
	[ -z "$kcfg" ] || mv "$tmp/$kcfg" "$vm/config"
	rm -rf "$tmp" "$deb"
}

# apt_fetch_vmlinux PKG VM: VM/vmlinux, the full-DWARF vmlinux of the -dbg package PKG.
apt_fetch_vmlinux() {
	local pkg=$1 vm=$2 deb tmp vml
	need_space 2000 "$vm"
	log "downloading $pkg (about 300-600 MB)"
	apt_download "$pkg" "$vm/debs"
	log "extracting vmlinux from the -dbg package (about 10 s)"
	tmp=$(mktemp -d "$vm/x.XXXXXX")
	vml=$(deb_member "$deb" '^\./usr/lib/debug/(boot/vmlinux-[^/]*|(usr/)?lib/modules/[^/]+/vmlinux)$') || die "no vmlinux in $deb"
	dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" "$vml"
	mv "$tmp/$vml" "$vm/vmlinux"
	rm -rf "$tmp" "$deb"
}

# apt_fetch_headers PKG DIR DEBS: unpack the headers package PKG
# (linux-headers-<K>) and the linux-headers-*-common and linux-kbuild-*
# packages it depends on into DIR (emptied first); DIR/usr/src/PKG is then a
# kernel build directory for out-of-tree modules. The headers package depends
# on the image package: installing it would put a kernel into this machine's
# /boot, so it is only unpacked.
apt_fetch_headers() {
	local pkg=$1 dir=$2 debs=$3 deps p deb
	deps=$(apt-cache "${apt_opts[@]}" depends "$pkg" | sed -n 's/^ *|\{0,1\}Depends: \(linux-\(headers\|kbuild\)-[^ ]*\)$/\1/p' | sort -u)
	rm -rf "$dir"
	mkdir -p "$dir"
	for p in "$pkg" $deps; do
		log "downloading $p"
		apt_download "$p" "$debs"
		dpkg-deb -x "$deb" "$dir"
		rm -f "$deb"
	done
	# Debian's top Makefile includes the -common tree by absolute path.
	sed -i "s|/usr/src/|$dir/usr/src/|" "$dir/usr/src/$pkg/Makefile"
}

# apt_fetch_source KERNEL HDR-PKG DEST DEBS WHY: unpack the kernel's source
# (linux-source-<major.minor>, from the same suites as the headers HDR-PKG)
# into DEST; sets src_pkg. WHY ends the "downloading" line.
apt_fetch_source() {
	local kernel=$1 hdr_pkg=$2 dest=$3 debs=$4 why=$5 ver hv sv deb
	ver=$(echo "$kernel" | sed -n 's/^\([0-9]*\.[0-9]*\).*/\1/p')
	src_pkg=linux-source-$ver
	apt_has "$src_pkg" || die "cannot rebuild them: apt${apt_suites:+ ($apt_suites)} has no $src_pkg"
	hv=$(apt-cache "${apt_opts[@]}" show --no-all-versions "$hdr_pkg" | field_of Version)
	sv=$(apt-cache "${apt_opts[@]}" show --no-all-versions "$src_pkg" | field_of Version)
	[ "$hv" = "$sv" ] || log "  note: $src_pkg is version $sv, the headers $hv"
	need_space 2500 "$dest"
	log "downloading $src_pkg (about 170 MB) $why"
	apt_download "$src_pkg" "$debs"
	dpkg-deb --fsys-tarfile "$deb" | tar -xO --wildcards './usr/src/linux-source-*.tar.xz' | tar -xJ -C "$dest" --strip-components=1
	rm -f "$deb"
}
