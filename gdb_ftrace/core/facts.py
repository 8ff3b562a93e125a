"""What the engines need to know about the kernel, as plain data, and the guest they read.

The gdb layer (gdb_layer/kernel.py) finds these facts in the symbols and DWARF
once and hands them over as a KernelFacts; a stop stream (`--stops FILE`)
carries them in its first line, so that a recorded run replays through the
same engine code without gdb (core/engine.py, tests/unit/test_replay.py).

`Guest` is everything an engine may ask the live guest: registers of the
stopped vCPU, memory, a few frame facts gdb's unwinder knows, writes (fault
injection). It answers, it never decides.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from .batch import Batch, DescLayout, header_read, make_batch, parse_header, readable_count, single_site_batch
from .ftrace_era import FtraceState, claims
from .insn import MASK64
from .layout import StructLayout

FTRACE_HANDLER = "ftrace_int3_handler"  # v5.2-v5.5, asked before poke_int3_handler


class Guest(Protocol):
    """What the engines read from (and write to) the stopped guest. Each method is one
    raw observation; the gdb layer answers it (gdb_layer/guest.py), a recording answers
    it in a replay (core/engine.Replayed)."""

    def cpu(self) -> int: ...  # the stopped vCPU's index, 0-based
    def ncpus(self) -> int: ...
    def reg(self, name: str) -> int: ...  # rip, rsp, rax, rdi, cs, eflags, ss
    def read(self, addr: int, n: int) -> bytes | None: ...  # None: not mapped
    def now(self) -> float: ...  # seconds since the checker was armed
    # The innermost frame that is not inlined: (function, its `regs` argument or None, the
    # caller frame's %rsp or None); None when gdb knows no frame.
    def handler_frame(self) -> tuple[str, int | None, int | None] | None: ...
    def frame_names(self, depth: int) -> list[str]: ...  # innermost first
    # The die() frame on this vCPU's stack within `depth` frames: (its `str`, its `regs`), or None.
    def die_args(self, depth: int) -> tuple[str, int] | None: ...
    def is_ftrace_location(self, site: int) -> bool: ...
    def site_kind(self, site: int) -> str: ...  # "ftrace", "jump label KEY", ...
    def write(self, addr: int, data: bytes) -> None: ...


class GuestReadError(Exception):
    """A read the engine cannot do without (pt_regs, the descriptor) failed."""


def need(g: Guest, addr: int, n: int) -> bytes:
    raw = g.read(addr & MASK64, n)
    if raw is None:
        raise GuestReadError(f"cannot read {n} bytes at {addr & MASK64:#x}")
    return raw


def u64(g: Guest, addr: int) -> int:
    return int.from_bytes(need(g, addr, 8), "little")


def try_u64(g: Guest, addr: int) -> int | None:
    raw = g.read(addr & MASK64, 8)
    return int.from_bytes(raw, "little") if raw is not None else None


@dataclasses.dataclass(frozen=True)
class KernelFacts:
    """The kernel's handler, its callers' return sites, the batch descriptor and where the
    engines may stop. Addresses are as the running kernel has them (after the slide)."""

    handler_name: str
    handlers: tuple[tuple[str, int], ...]  # every handler the int3 path asks, in its order
    returns: tuple[int, ...]  # where calls to the handlers return
    followups: tuple[int, ...]  # where calls to kprobe_int3_handler return
    dwarf: bool = True
    stext: int = 0
    desc: DescLayout | None = None
    desc_addr: int | None = None
    loc: StructLayout | None = None
    keeps_last_batch: bool = False
    single_site: tuple[int, int, int] | None = None  # v5.2: bp_patching_in_progress, bp_int3_addr, bp_int3_handler
    percpu_refs: int | None = None  # v6.16+: text_poke_array_refs (a per-CPU offset)
    per_cpu_offset: int | None = None  # __per_cpu_offset
    ftrace: dict[str, int] | None = None  # v5.2-v5.5: modifying, update_func, update_func_call, regs_caller
    int3_entry: int | None = None
    iret: int | None = None
    die: int | None = None  # oops_enter (or die)
    die_name: str = ""
    oops_word: int | None = None  # sysctl_oops_all_cpu_backtrace: only oops_enter reads it
    # The watch engine (core/watch.py):
    no_watch: str = ""  # why it cannot run here ('' if it can)
    # v5.2-v5.5: the word is read by the handlers' caller (do_int3), not by a handler:
    # the function it watches in, and the return sites of the calls to it (in the int3 entry).
    watch_fn: str = ""
    watch_returns: tuple[int, ...] = ()
    watch_word: str = ""
    watch_size: int = 0
    handler_range: tuple[int, int] = (0, 0)
    exit_ranges: tuple[tuple[int, int], ...] = ()
    handler_code: tuple[tuple[int, int, str], ...] = ()  # the handler's instructions naming data
    # The hold (core/hold.py): point [addr, kind, size], range [lo, hi), sites_from, csq,
    # per_cpu_offset, locks; None where this era has no hold point.
    hold: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["desc"] = self.desc.to_json() if self.desc else None
        d["loc"] = self.loc.to_json() if self.loc else None
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "KernelFacts":
        d = dict(d)
        d["desc"] = DescLayout(**d["desc"]) if d.get("desc") else None
        d["loc"] = StructLayout.from_json(d["loc"]) if d.get("loc") else None
        for k in ("handlers", "exit_ranges", "handler_code"):
            d[k] = tuple(tuple(x) for x in d.get(k) or ())
        for k in ("returns", "followups", "handler_range", "single_site", "watch_returns"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)

    def handler_at(self, rip: int) -> str:
        """The handler whose first instruction is rip ('' for none)."""
        return next((n for n, a in self.handlers if a == rip), "")

    # -- what a handler decides by -----------------------------------------
    def read_batch(self, g: Guest) -> Batch:
        """The batch the handler sees: one read for the descriptor, one for the vector."""
        if self.single_site is not None:
            flag, int3_addr, handler = self.single_site
            return single_site_batch(need(g, flag, 1)[0], u64(g, int3_addr), u64(g, handler))
        d = self.desc
        addr = self.desc_addr
        if d.is_pointer:
            addr = u64(g, self.desc_addr)
            if addr == 0:
                return Batch(False, 0, [])
        live, nr, vec = parse_header(d, need(g, addr, header_read(d)), addr)
        n = readable_count(nr, vec) if live or self.keeps_last_batch else 0
        buf = g.read(vec, n * self.loc.size) if n else None
        return make_batch(live, nr, self.loc, buf, self.stext)

    def read_decision(self, g: Guest, handler: str, site: int) -> tuple[Batch, dict | None]:
        """What `handler` decides an int3 at `site` by: the batch, or for ftrace_int3_handler
        (v5.2-v5.5) the ftrace state (core.ftrace_era.FtraceState)."""
        if handler != FTRACE_HANDLER:
            return self.read_batch(g), None
        f = self.ftrace
        modifying = int.from_bytes(need(g, f["modifying"], 4), "little", signed=True)
        call = f["update_func_call"]  # None: a pre-series kernel (core.ftrace_era)
        st = FtraceState(modifying, g.is_ftrace_location(site), u64(g, f["update_func"]),
                         u64(g, call) if call is not None else None, f["regs_caller"])
        return Batch(False, 0, []), st.to_json()

    def read_dispatch(self, g: Guest, site: int) -> tuple[str, Batch, dict | None]:
        """v5.2-v5.5, read in do_int3 before it asks a handler: which handler takes the int3
        at `site` (ftrace_int3_handler when it claims it, else the text-patch handler) and
        what that handler decides by (read_decision)."""
        batch, ftrace = self.read_decision(g, FTRACE_HANDLER, site)
        if claims(site, FtraceState(**ftrace)):
            return FTRACE_HANDLER, batch, ftrace
        return (self.handler_name, *self.read_decision(g, self.handler_name, site))

    def read_cpu_refs(self, g: Guest, cpu: int) -> int | None:
        """This CPU's text_poke_array_refs (v6.16+), None where refs are not per CPU."""
        if self.percpu_refs is None or self.per_cpu_offset is None:
            return None
        raw = g.read((u64(g, self.per_cpu_offset + 8 * cpu) + self.percpu_refs) & MASK64, 4)
        return int.from_bytes(raw, "little", signed=True) if raw is not None else None

    @property
    def word_behind_refcount(self) -> bool:
        """v6.0-v6.15: the watched word (bp_desc.nr_entries) is read only after try_get_desc()
        took a reference; a handler that found the refcount at 0 (no batch in flight, as that
        CPU saw it) returns 0 without reading it. Elsewhere every kernel int3 reads the word."""
        d = self.desc
        return (not self.watch_fn and self.percpu_refs is None and d is not None and not d.is_pointer
                and d.refs_off is not None)

    def watch_addrs(self, g: Guest) -> list[int]:
        """Where the watch engine's batch word is: one address, or one per CPU (v6.16+)."""
        d = self.desc
        if self.watch_fn:
            return [self.ftrace["modifying"]]
        if self.percpu_refs is not None:
            return [(u64(g, self.per_cpu_offset + 8 * cpu) + self.percpu_refs) & MASK64
                    for cpu in range(g.ncpus())]
        if d.is_pointer:
            return [self.desc_addr]
        return [self.desc_addr + d.nr_off]
