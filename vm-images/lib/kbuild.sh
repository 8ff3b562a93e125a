# shellcheck shell=bash
# Sourced by vm-images/build-vm: building out-of-tree modules against a kernel
# build directory KDIR (a directory `make -C KDIR M=... modules` works in: the
# headers of a Debian kernel, or the output of a kernel built from source).
#
#   kbuild_compiler KDIR        choose the compiler (sets kbuild_cc, kbuild_args)
#   kbuild_tools_too_new DIR    the kernel's build tools this glibc cannot run
#   kbuild_host_tools ...       rebuild those from the kernel's source
#   kbuild_btf KDIR             leave module BTF out when the local pahole is too old
#   kbuild_module ...           build one module
#
# Needs lib/common.sh (log, die, need_space). Runs under `set -euo pipefail`:
# no reader on a pipe may stop early (see lib/deb.sh).
#
# State: kbuild_cc, the compiler ("" = the kernel's own, as its Makefile
# says), and kbuild_args, extra make variables for every module build.
kbuild_cc=""
kbuild_args=()

# kbuild_compiler KDIR: the kernel's own compiler (.kernelvariables names it)
# when this machine has it or its Debian release ships it; a kernel from a
# newer release may be built with a gcc this release does not have (trixie's
# gcc-14 needs a newer libc), and then the module is built with the newest
# local gcc, taking the kernel Makefile's own fallbacks for what that gcc
# lacks. Same .config, headers and Module.symvers, so the same module ABI.
kbuild_compiler() {
	local kcc
	kbuild_cc="" kbuild_args=()
	# shellcheck disable=SC2016 # $(CROSS_COMPILE) is make's, matched literally
	kcc=$(sed -n 's/^CC *= .*\$(CROSS_COMPILE)\(gcc-[0-9]*\).*/\1/p' "$1/.kernelvariables" 2>/dev/null || true)
	[ -n "$kcc" ] || return 0
	if command -v "x86_64-linux-gnu-$kcc" >/dev/null; then
		kbuild_cc=x86_64-linux-gnu-$kcc
		return 0
	fi
	if [ -n "$(apt-cache policy "$kcc" 2>/dev/null | sed -n '/(none)/d; s/^ *Candidate: //p')" ]; then
		die "the kernel was built with $kcc; install it (apt-get install $kcc) to build the livepatch module"
	fi
	kbuild_cc=$(newest_gcc)
	[ -n "$kbuild_cc" ] || die "the kernel was built with $kcc, which this Debian release does not ship, and there is no other gcc; run 'make setup'"
	kbuild_args=(CC="$kbuild_cc")
	log "the kernel was built with $kcc, which this Debian release does not ship: building the livepatch module with ${kbuild_cc#x86_64-linux-gnu-}"
	if grep -q '^CONFIG_CC_HAS_MIN_FUNCTION_ALIGNMENT=y' "$1/.config" &&
		! "$kbuild_cc" -fmin-function-alignment=16 -x c -c /dev/null -o /dev/null 2>/dev/null; then
		kbuild_args+=(CONFIG_CC_HAS_MIN_FUNCTION_ALIGNMENT=)
		log "  ${kbuild_cc#x86_64-linux-gnu-} has no -fmin-function-alignment: the kernel Makefile's fallback -falign-functions is used"
	fi
}
newest_gcc() { # the newest /usr/bin/x86_64-linux-gnu-gcc-<N>, or nothing
	local f
	for f in /usr/bin/x86_64-linux-gnu-gcc-[0-9]*; do
		[[ ! "$f" =~ -gcc-[0-9]+$ ]] || echo "${f##*/}"
	done | sort -V | tail -1
}

# Debian's linux-kbuild package of a newer release holds host tools (modpost,
# objtool, resolve_btfids) linked against that release's glibc. When this
# machine's glibc is too old for any of them, they are rebuilt from the
# kernel's own source with this machine's gcc and put in their place. They run
# on the build host only; the module's code and ABI do not depend on how they
# were compiled.
kbuild_host_glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')

# kbuild_tools_too_new DIR: the ELF files under DIR needing a newer glibc than
# this machine's, one "PATH (glibc VERSION)" a line, PATH relative to DIR.
kbuild_tools_too_new() {
	local f need
	command -v objdump >/dev/null || die "'objdump' is missing (package binutils); run 'make setup'"
	find "$1" -type f -perm -u+x | while read -r f; do
		need=$(objdump -T "$f" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)
		if [ -n "$need" ] && [ "$(printf '%s\n%s\n' "$need" "$kbuild_host_glibc" | sort -V | tail -1)" != "$kbuild_host_glibc" ]; then
			echo "${f#"$1"/} (glibc $need)"
		fi
	done
}

# kbuild_host_tools_needed TOOLS: say which tools (kbuild_tools_too_new's
# lines) this glibc cannot run, and check that what rebuilding them takes is here.
kbuild_host_tools_needed() {
	local t
	log "this machine's glibc $kbuild_host_glibc is too old for the kernel's build tools" \
		"($(echo "$1" | sed 's/.*(glibc \(.*\))$/\1/' | sort -V | tail -1) needed):" \
		"$(echo "$1" | sed 's/ (.*//; s/\.real-.*//' | sort -u | xargs)"
	for t in flex bison; do command -v $t >/dev/null || die "'$t' is missing to rebuild the kernel's build tools; run 'make setup'"; done
	[ -f /usr/include/gelf.h ] || die "libelf-dev is missing to rebuild the kernel's build tools; run 'make setup'"
}

# kbuild_host_tools SRC NAME CONFIG KBUILD-DIR TOOLS LOG: build the host tools
# from the kernel source tree SRC (NAME for the log) configured with CONFIG,
# and install TOOLS (kbuild_tools_too_new's lines) over those in KBUILD-DIR.
# The make output goes to LOG.
kbuild_host_tools() {
	local src=$1 name=$2 config=$3 kbdir=$4 tools=$5 blog=$6 out t rel
	log "building modpost/objtool/resolve_btfids from $name (about 1 min, once)"
	out=$src/build
	mkdir -p "$out"
	cp "$config" "$out/.config"
	{ make -s -C "$src" O="$out" HOSTCC=gcc CC="${kbuild_cc:-gcc}" olddefconfig &&
		make -s -j"$(nproc)" -C "$src" O="$out" HOSTCC=gcc CC="${kbuild_cc:-gcc}" modules_prepare; } >"$blog" 2>&1 ||
		{ tail -20 "$blog" >&2; die "building the kernel's build tools failed (log: $blog)"; }
	echo "$tools" | sed 's/ (.*//' | while read -r t; do
		rel=${t%.real-*} # Debian's modpost/objtool dispatch to <tool>.real-<target>
		[ -x "$out/$rel" ] || die "rebuilding $t: $name built no $rel"
		install -m 755 "$out/$rel" "$kbdir/$rel"
	done
	[ -z "$(kbuild_tools_too_new "$kbdir" | sed '/\.real-/d')" ] || die "some of the kernel's build tools still need a newer glibc: $(kbuild_tools_too_new "$kbdir")"
}

# kbuild_btf KDIR: module BTF is made by pahole with the options the kernel's
# pahole had; an older local pahole rejects them. Only BPF uses a module's
# BTF, and a module without any loads the same, so leave it out then.
kbuild_btf() {
	local kpahole lpahole
	kpahole=$(sed -n 's/^CONFIG_PAHOLE_VERSION=//p' "$1/.config")
	if grep -q '^CONFIG_DEBUG_INFO_BTF_MODULES=y' "$1/.config" && [ -n "$kpahole" ] && [ -f "$1/scripts/pahole-version.sh" ]; then
		lpahole=$(sh "$1/scripts/pahole-version.sh" pahole)
		if [ "$lpahole" -lt "$kpahole" ]; then
			kbuild_args+=(CONFIG_DEBUG_INFO_BTF_MODULES=)
			log "pahole $lpahole is older than the kernel's ($kpahole): building the modules without BTF (only BPF uses it)"
		fi
	fi
}

# kbuild_module WHAT AGAINST KDIR SRC-DIR BUILD-DIR LOG: build the module in
# SRC-DIR (its Kbuild and sources, copied into BUILD-DIR, emptied first)
# against the kernel build directory KDIR, with kbuild_args; make's output
# goes to LOG. WHAT and AGAINST name the module and the kernel in the log.
# Returns 1 when the build fails: the caller decides whether that ends the run.
kbuild_module() {
	local what=$1 against=$2 kdir=$3 src=$4 bdir=$5 blog=$6
	log "building the $what module against $against"
	{ rm -rf "$bdir" && mkdir -p "$bdir" && cp "$src"/* "$bdir/"; } || return 1
	make -s -C "$kdir" M="$bdir" "${kbuild_args[@]}" modules >"$blog" 2>&1
}
