"""An older kernel tree on today's compiler: the build errors we know, and what gets past each.

build-vm runs this over a failed kernel build's log (and the driver over a
serial log whose boot died) so the message names the known cause, the
upstream fix and the make variable (KMAKE="VAR=value ...") or compiler that
gets past it, instead of leaving the user with make's last lines.

    python3 -m gdb_ftrace.core.toolchain LOG     one paragraph per known error found; exit 1 if none
"""

from __future__ import annotations

import dataclasses
import re
import sys


@dataclasses.dataclass(frozen=True)
class Known:
    name: str
    pattern: re.Pattern[str]
    cause: str
    fix: str  # the upstream commit(s) and the releases that have it
    way_past: str  # what the user can do without patching, or that they must patch


KNOWN: tuple[Known, ...] = (
    Known("use-after-free",
          re.compile(r"error: pointer (?:['‘][\w.>-]+['’] )?may be used after ['‘]realloc['’] \[-Werror=use-after-free\]"),
          "gcc >= 12 warns in tools/lib/subcmd (objtool's library), which builds with -Werror",
          "52a9dab6d892 \"libsubcmd: Fix use-after-free for realloc(..., 0)\" (v5.17; 5.4.181, 4.19.231, 4.14.268)",
          "KMAKE='WERROR=0' (tools/ builds without -Werror), or KMAKE='CC=gcc-11 HOSTCC=gcc-11' "
          "(apt-get install gcc-11: gcc 11 has no -Wuse-after-free)"),
    Known("missing-symbol-table",
          re.compile(r"objtool: missing symbol table"),
          "binutils >= 2.36 leaves an empty object (arch/x86/entry/thunk_64.o) without a symbol table, "
          "and older objtool fails on it",
          "1d489151e9f9 \"objtool: Don't fail on missing symbol table\" (v5.11; 5.10.y, 5.4.y, 4.19.175, "
          "4.14.221, 4.9.257)",
          "no make variable reaches it: cherry-pick the fix into the tree, or build with binutils < 2.36"),
    Known("missing-symbol-for-insn",
          re.compile(r"objtool: missing symbol for insn at offset 0x[0-9a-f]+"),
          "binutils >= 2.36 drops the local label .L_restore in arch/x86/entry/thunk_64.S, which objtool needs",
          "5e6dca82bcaa \"x86/entry: Emit a symbol for register restoring thunk\" (v5.11; 5.10.13)",
          "no make variable reaches it: cherry-pick the fix, or a config with an empty thunk_64.o "
          "(no PREEMPT, TRACE_IRQFLAGS or DEBUG_LOCK_ALLOC)"),
    Known("__force_order",
          re.compile(r"multiple definition of [`'‘]__force_order['’]"),
          "gcc >= 10 defaults to -fno-common, and arch/x86/boot/compressed defines __force_order twice",
          "df6d4f9db79c \"x86/boot/compressed: Don't declare __force_order in kaslr_64.c\" (v5.6; 4.19.109, "
          "4.14.173), later 3e626682046e \"x86/asm: Replace __force_order with a memory clobber\" (v5.10; 5.4.73)",
          "no make variable reaches it (arch/x86/boot/compressed sets its own flags): cherry-pick df6d4f9db79c "
          "(a one-line delete), or a gcc < 10 (Debian 12 ships gcc-11 and gcc-12 only)"),
    Known("yylloc",
          re.compile(r"multiple definition of [`'‘]yylloc['’]"),
          "gcc >= 10 defaults to -fno-common, and scripts/dtc defines yylloc twice",
          "e33a814e772c \"scripts/dtc: Remove redundant YYLOC global declaration\" (v5.6; 5.4.y, 4.19.y, 4.14.175)",
          "KMAKE='HOSTCFLAGS=-fcommon'"),
    Known("start_secondary",
          re.compile(r"stack-protector: Kernel stack is corrupted in: start_secondary"),
          "gcc >= 10 tail-calls cpu_startup_entry() after boot_init_stack_canary(): the second CPU panics at boot",
          "a9a3ed1eff36 \"x86: Fix early boot crash on gcc-10, third try\" (v5.7; the 2020-05 stable releases)",
          "a config without the stack protector (CONFIG_STACKPROTECTOR, before 4.18 CONFIG_CC_STACKPROTECTOR) "
          "through KCONFIG, or cherry-pick the fix"),
)


def explain(text: str) -> list[str]:
    """One paragraph for each known error in `text` (a build or serial log), in KNOWN's order."""
    out = []
    for k in KNOWN:
        m = k.pattern.search(text)
        if m:
            out.append(f"known toolchain error ({k.name}): {m.group(0)}\n  cause: {k.cause}\n"
                       f"  fixed upstream by {k.fix}\n  to get past it: {k.way_past}")
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    with open(argv[0], errors="replace") as fh:
        found = explain(fh.read())
    for p in found:
        print(p)
    return 0 if found else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
