"""What a kernel's .config must have for the check, and what it rules out.

A kernel the user built (build-vm --kbuild, --kconfig) is checked before it
boots: an option the test VM cannot boot or report without ends the build
("fatal"); one a scenario needs refuses that scenario with the reason and
leaves the others ("refused"); one that only makes the check weaker is said
("note"). build-vm prints these lines and the driver refuses a scenario by
the same rules, from the VM's `config`.

    python3 -m gdb_ftrace.core.kconfig CONFIG     one line per finding; exit 1 on a fatal one
"""

from __future__ import annotations

import dataclasses
import re
import sys

SCENARIOS = ("livepatch-trace", "trace-all", "panic-mid-run", "ftrace-toggle", "direct-call", "idle")
LIVEPATCH = ("livepatch-trace", "trace-all", "panic-mid-run")  # load gdb_ftrace_lp.ko
FTRACE = LIVEPATCH + ("ftrace-toggle", "direct-call")  # patch ftrace call sites
MODULES = LIVEPATCH + ("direct-call",)
ALL = SCENARIOS

# (option, the scenarios that need it set, why). ALL: the VM cannot boot or report without it.
NEEDS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("CONFIG_X86_64", ALL, "the checker knows x86_64's int3 path only"),
    ("CONFIG_BLK_DEV_INITRD", ALL, "the test VM boots a busybox initramfs"),
    ("CONFIG_RD_GZIP", ALL, "the initramfs is gzip-compressed"),
    ("CONFIG_SERIAL_8250", ALL, "the guest reports on the serial console ttyS0"),
    ("CONFIG_SERIAL_8250_CONSOLE", ALL, "the guest reports on the serial console ttyS0"),
    ("CONFIG_PROC_FS", ALL, "the scenarios read /proc/cmdline"),
    ("CONFIG_SYSFS", ALL, "the scenarios use /sys"),
    ("CONFIG_FUNCTION_TRACER", FTRACE, "the scenario patches ftrace call sites"),
    ("CONFIG_DYNAMIC_FTRACE", FTRACE, "only dynamic ftrace patches call sites (through int3)"),
    ("CONFIG_MODULES", MODULES, "the scenario loads our module"),
    ("CONFIG_LIVEPATCH", LIVEPATCH, "the scenario loads a livepatch of cmdline_proc_show"),
    ("CONFIG_DYNAMIC_FTRACE_WITH_REGS", LIVEPATCH, "livepatch redirects through ftrace with regs"),
    ("CONFIG_KALLSYMS_ALL", LIVEPATCH, "livepatch looks cmdline_proc_show up in kallsyms"),
    ("CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS", ("direct-call",), "the scenario registers an ftrace direct call"),
    ("CONFIG_MODULE_UNLOAD", ("direct-call",), "the scenario removes its module to switch the call off"),
)
# (option, the scenarios it rules out when set, why)
FORBIDS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("CONFIG_MODULE_SIG_FORCE", MODULES, "the kernel loads only signed modules; ours are built unsigned"),
)
# (option, what the check is without it)
WEAKER: tuple[tuple[str, str], ...] = (
    ("CONFIG_DEBUG_INFO", "no DWARF: pt_regs and the batch from the era's documented layouts, no ftrace site names"),
    ("CONFIG_SMP", "one CPU: no other CPU runs into a site while it is patched (the race is not tried)"),
    ("CONFIG_JUMP_LABEL", "no jump labels: only ftrace call sites are patched"),
    ("CONFIG_KALLSYMS", "no kallsyms: livepatch cannot find its function"),
)
LINE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$|^# (CONFIG_[A-Za-z0-9_]+) is not set$")


def parse(text: str) -> dict[str, str]:
    """A .config's values: {'CONFIG_X': 'y' | 'm' | '"str"' | 'n'} (n: '# ... is not set')."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = LINE.match(line.strip())
        if m:
            out[m.group(1) or m.group(3)] = m.group(2) if m.group(1) else "n"
    return out


@dataclasses.dataclass
class Findings:
    fatal: list[str] = dataclasses.field(default_factory=list)
    refused: dict[str, str] = dataclasses.field(default_factory=dict)  # scenario -> why
    notes: list[str] = dataclasses.field(default_factory=list)

    def lines(self) -> list[str]:
        return ([f"fatal: {w}" for w in self.fatal] + [f"refused: {s}: {w}" for s, w in self.refused.items()] +
                [f"note: {w}" for w in self.notes])


def check(text: str) -> Findings:
    cfg = parse(text)
    f = Findings()
    on = lambda o: cfg.get(o, "n") in ("y", "m")  # noqa: E731
    for opt, scenarios, why in NEEDS:
        if cfg.get(opt, "n") == "y":
            continue
        what = f"{opt} is {'=m (needs =y)' if cfg.get(opt) == 'm' else 'not set'} ({why})"
        if scenarios is ALL:
            f.fatal.append(what)
            continue
        for s in scenarios:
            f.refused.setdefault(s, what)
    for opt, scenarios, why in FORBIDS:
        if on(opt):
            for s in scenarios:
                f.refused.setdefault(s, f"{opt}=y ({why})")
    for opt, why in WEAKER:
        if not on(opt) and not (opt == "CONFIG_DEBUG_INFO" and _has_dwarf(cfg)):
            f.notes.append(f"{opt} is not set: {why}")
    return f


def _has_dwarf(cfg: dict[str, str]) -> bool:
    """v5.18+ spells DWARF as a choice (DEBUG_INFO_DWARF4/5/TOOLCHAIN_DEFAULT); DEBUG_INFO then follows it."""
    return any(cfg.get(o) == "y" for o in ("CONFIG_DEBUG_INFO_DWARF4", "CONFIG_DEBUG_INFO_DWARF5",
                                           "CONFIG_DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT"))


def refusal(text: str, scenario: str) -> str:
    """Why `scenario` cannot run on a kernel with this .config ('' if it can)."""
    f = check(text)
    if f.fatal:
        return f.fatal[0]
    return f.refused.get(scenario, "")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    with open(argv[0]) as fh:
        f = check(fh.read())
    for line in f.lines():
        print(line)
    return 1 if f.fatal else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
