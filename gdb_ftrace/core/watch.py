"""The watchpoint engine's rules, pure: which watchpoint stop is which.

Why watchpoints (measured, docs/cost.md): QEMU before 10.2 flushes its whole
translation cache at every breakpoint or single-step stop, and runs every
instruction of a 4 KiB page holding a breakpoint as its own translation block.
A watchpoint stop flushes nothing, and a watched data page only sends that
page's loads and stores through QEMU's slow path. So the engine has no
breakpoint in kernel text while the kernel patches correctly:

  the batch word (always in, read)   the handler reads it once per int3, the
                                     patching CPU only writes it: each stop in
                                     the handler is an int3's entry, pt_regs not
                                     yet changed
  the return slot (read)             put in at the entry: the word the handler's
                                     `ret` pops, so the stop lands on the return
                                     site with %rax the return value
  regs->cs (read)                    put in at the return of an emulated int3:
                                     the exit path tests it (error_return) and the
                                     iretq loads it: a stop before the iretq reads
                                     the frame it will load (nothing writes it any
                                     more), a stop after it has the vCPU's registers

QEMU's x86 watchpoints stop after the accessing instruction. gdb changes
breakpoints only at a real stop, so a stop that needs a watchpoint in or out is
one (no cache flush either). A kernel int3 nobody handles ends in die("int3"):
oops_enter is a read watchpoint on sysctl_oops_all_cpu_backtrace (a breakpoint
where that variable is missing), and kprobe's return is a breakpoint put in
only while an int3 whose handler returned 0 waits for it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .insn import MASK64

ENGINES = ("watch", "breakpoints")
DEFAULT = "watch"


@dataclasses.dataclass
class WatchStats:
    word_stops: int = 0  # stops in the handler (the batch word read)
    entries: int = 0  # of those, int3 entries
    late_entries: int = 0  # entries reported past the read, pt_regs still untouched
    late_entries_dropped: int = 0  # reported after the emulation changed pt_regs: not an entry
    returns: int = 0  # handler returns reported right after its `ret`
    late_returns: int = 0  # reported in the exit path: pt_regs read there, return value inferred
    lost_returns: int = 0  # never reported: the event ends INCOMPLETE
    landing_stops: int = 0  # stops for an emulated int3's landing (its regs->cs read)
    landings_before_iret: int = 0  # of those, in the exit path: the frame the iretq loads
    late_landings_from_frame: int = 0  # reported late, rip and rsp from the frame still in memory
    late_landings: int = 0  # reported late, the frame gone: landing not checked
    oops_int3s: int = 0  # kernel int3s first seen at oops_enter (die("int3"))
    stray_traps: int = 0  # SIGTRAPs gdb matched to no watchpoint (QEMU's late, misnamed hits)

    def to_json(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def word_stop(in_handler: bool, rip: int, open_entry_rip: int | None) -> str:
    """What a stop in the handler is, on a vCPU whose handler frame has this %rsp.

    open_entry_rip: the %rip of the entry stop of the int3 still open on that vCPU at the
    same handler %rsp (None: none is). Returns "pass" (not in the handler), "entry" (the
    reader then checks that pt_regs is untouched: a late report may come after the
    emulation), "same-call" (a later stop of the call already open: the refcount's
    cmpxchg and put on v6.16+, or a hit QEMU reported twice), or "entry-missed-return"
    (the same first read again: a new call on the same stack, the previous call's return
    was never reported)."""
    if not in_handler:
        return "pass"
    if open_entry_rip is None:
        return "entry"
    return "entry-missed-return" if rip == open_entry_rip else "same-call"


@dataclasses.dataclass(frozen=True)
class Places:
    """Where a vCPU's %rip says it is: the handler, the path from the handler's return to the
    iretq (the handler's callers and the entry text), the %rips just after the handler's
    first read of the watched word, the return sites of the calls to the handler."""

    handler: tuple[int, int]
    exit_path: tuple[tuple[int, int], ...]
    entry_rips: frozenset[int]
    returns: frozenset[int]

    def in_handler(self, rip: int) -> bool:
        return self.handler[0] <= rip < self.handler[1]

    def in_exit_path(self, rip: int) -> bool:
        return any(lo <= rip < hi for lo, hi in self.exit_path)


def classify(p: Places, rip: int, rsp: int, opened: list, landing, ip_off: int = 128) -> tuple[str, Any]:
    """What one watchpoint stop on a vCPU is, from its %rip and %rsp. opened: that vCPU's
    open int3 events (handler entered, return not seen; .handler_rsp, innermost last);
    landing: its emulated int3 waiting for the iretq, or None. Returns (kind, event):
      return       right after the handler's `ret` (%rsp just above the slot, a return site)
      late-return  the handler (a leaf) has returned, the vCPU is still in the exit path on
                   the exception frame (%rsp at or below regs->ip): pt_regs is as it left it
      lost-return  ... and has left it (past the iretq): pt_regs may be gone
      before-iret  in the exit path, still on the exception frame (%rsp at or below
                   regs->ip): the frame the iretq will load is in place
      landed       past the iretq (out of the handler and the exit path, or in it again
                   on the interrupted stack)
      entry        in the handler, no open event explains it (see word_stop)
      pass         nothing of ours"""
    for ev in reversed(opened):
        if is_handler_return(rip, rsp, ev.handler_rsp, p.returns):
            return "return", ev
        if not p.in_handler(rip):
            before_iret = p.in_exit_path(rip) and rsp <= (ev.regs_addr + ip_off) & MASK64
            return ("late-return" if before_iret else "lost-return"), ev
    if landing is not None and not p.in_handler(rip):
        ipslot = (landing.regs_addr + ip_off) & MASK64
        if p.in_exit_path(rip) and rsp <= ipslot:
            return "before-iret", landing
        return "landed", landing
    if p.in_handler(rip):
        return "entry", None
    return "pass", None


def regs_untouched(regs: dict[str, int], gap: tuple[int, ...]) -> bool:
    """pt_regs still holds the frame the CPU pushed: its ip and sp equal the CPU's frame in
    the gap (orig_ax, ip, cs, flags, sp, ss above pt_regs). Without a gap there is nothing
    to compare: True."""
    if len(gap) < 6 or gap[2] != regs.get("cs"):
        return True
    return regs.get("ip") == gap[1] and regs.get("sp") == gap[4]


def same_int3(gap_then: tuple[int, ...] | list[int] | None, gap_now: tuple[int, ...]) -> bool:
    """The words above pt_regs still hold the CPU frame of the int3 seen at the entry: the
    ip and sp slots (the emulated CALL writes only the ss slot). Another int3 taken at the
    same stack depth meanwhile leaves its own frame there."""
    if not gap_then or len(gap_then) < 6 or len(gap_now) < 6:
        return True
    return gap_then[1] == gap_now[1] and gap_then[4] == gap_now[4]


def inferred_return(before: dict[str, int], after: dict[str, int]) -> int:
    """The handler's return value when its `ret` was not seen: every emulation path changes
    regs->ip and then sets ret = 1; the paths that return 0 change nothing."""
    return int(after.get("ip") != before.get("ip") or after.get("sp") != before.get("sp"))


def exact_landing(rip: int, rsp: int, frame: tuple[int, ...]) -> bool:
    """The stop came right after the iretq: the vCPU's rip and rsp are the frame's (ip, cs,
    flags, sp, ss) words it loaded."""
    return len(frame) >= 4 and rip == frame[0] and rsp == frame[3]


def frame_kept(frame: tuple[int, ...], after: dict[str, int] | None) -> bool:
    """The iret frame in memory (ip, cs, flags, sp, ss) is still what the handler left in
    pt_regs (ip, sp): then it is what the iretq loaded, read after a late report."""
    return bool(after) and len(frame) >= 4 and frame[0] == after.get("ip") and frame[3] == after.get("sp")


STACK_SCAN_WORDS = 96  # from the handler's %rsp: its frame, the caller's, pt_regs (21 words) and the gap


def find_frames(words: tuple[int, ...], rsp: int, returns: frozenset[int], regs_words: int = 21,
                ip_word: int = 16) -> tuple[int, int] | None:
    """(pt_regs address, handler %rsp at its first instruction) from the stack words at %rsp,
    without DWARF or an unwinder: the handler's return slot is the first word that is a return
    site of a call to it; pt_regs is the first place above it whose ip, cs, flags, sp, ss are
    repeated in the gap right above it (the entry code's copy of the CPU's frame, whose
    orig_ax slot is -1). None when the stack does not look like that (no gap)."""
    slot = next((i for i, w in enumerate(words) if w in returns), None)
    if slot is None:
        return None
    for i in range(slot + 1, len(words) - regs_words - 6):
        frame = words[i + ip_word:i + ip_word + 5]
        gap = words[i + regs_words:i + regs_words + 6]
        if gap[0] == MASK64 and tuple(gap[1:6]) == tuple(frame) and frame[1] & 3 == 0:
            return (rsp + 8 * i) & MASK64, (rsp + 8 * slot) & MASK64
    return None


def is_handler_return(rip: int, rsp: int, slot: int, return_sites: frozenset[int]) -> bool:
    """The return slot was read by the handler's `ret`: %rsp just above it, %rip at a
    return site of the call (other code reads that stack word once the handler is gone)."""
    return rsp == (slot + 8) & MASK64 and (not return_sites or rip in return_sites)


def entry_rips_from(code: list[tuple[int, int, str]], word: int) -> frozenset[int]:
    """From the handler's disassembly (address, length, text): the address after the
    first instruction that names the watched word (gdb prints `# 0x... <sym+off>`)."""
    tag = f"{word:#x}"
    for addr, length, text in code:
        if tag in text:
            return frozenset({addr + length})
    return frozenset()
