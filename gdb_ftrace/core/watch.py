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
one (no cache flush either). The decisions at each stop are WatchEngine's, at
the end of this file. A kernel int3 nobody handles ends in die("int3"):
oops_enter is a read watchpoint on sysctl_oops_all_cpu_backtrace (a breakpoint
where that variable is missing), and kprobe's return is a breakpoint put in
only while an int3 whose handler returned 0 waits for it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from . import tracker as T
from .engine import IP_OFF, PT_REGS, Engine, EngineBase, Point
from .facts import need, try_u64
from .insn import MASK64
from .layout import GAP_WORDS, u64s
from .verdict import IRET_FRAME

DIE_STOPS = ("oops_enter", "die")  # the functions an oops passes: die() -> oops_begin() -> oops_enter()


@dataclasses.dataclass
class WatchStats:
    word_stops: int = 0  # stops in the handler (the batch word read)
    entries: int = 0  # of those, int3 entries
    late_entries: int = 0  # entries reported past the read, pt_regs still untouched
    late_entries_dropped: int = 0  # reported after the emulation changed pt_regs: not an entry
    returns: int = 0  # handler returns reported right after its `ret`
    late_returns: int = 0  # reported in the exit path: pt_regs read there, return value inferred
    exit_returns: int = 0  # v5.2-v5.5 landing modes: do_int3's return read where the exit path tests regs->cs
    lost_returns: int = 0  # never reported: the event ends INCOMPLETE
    landing_stops: int = 0  # stops for an emulated int3's landing (its regs->cs read)
    landings_before_iret: int = 0  # of those, in the exit path: the frame the iretq loads
    late_landings_from_frame: int = 0  # reported late, rip and rsp from the frame still in memory
    late_landings: int = 0  # reported late, the frame gone: landing not checked
    oops_int3s: int = 0  # kernel int3s first seen at oops_enter (die("int3"))
    stray_traps: int = 0  # SIGTRAPs gdb matched to no watchpoint (QEMU's late, misnamed hits)

    def to_json(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def no_watch(ftrace_handler: bool, desc) -> str:
    """Why the watch engine cannot run on a kernel ('' if it can): it needs a word read for
    each int3 that the patching CPU only writes."""
    if desc is None and not ftrace_handler:
        return "v5.2's one-site patching without dynamic ftrace: no word every int3 reads"
    return ""


def watch_fn(ftrace_handler: bool, callers: list[str]) -> str:
    """Where the word is read when it is not in the handler: v5.2-v5.5's do_int3 reads
    modifying_ftrace_code first, before it asks any handler (callers: the handlers'
    callers, do_int3 there). '' elsewhere: the handler reads the word itself."""
    return callers[0] if ftrace_handler and callers else ""


def watch_word(desc, percpu_refs: int | None, ftrace_handler: bool = False) -> tuple[str, int]:
    """The word the watch engine watches for reads, and its size: one read once per int3
    that the patching CPU does not read:
      v5.2-v5.5: modifying_ftrace_code, do_int3's first load (atomic_read), for every
                 int3; ftrace only increments and decrements it around its patching
                 (single-threaded TCG reports that lock inc/dec as a read too: the stop
                 is outside do_int3 and passed)
      v6.0-v6.15 (and backports): bp_desc.nr_entries, read once the refcount is taken
                 (an int3 no batch covers is seen at oops_enter instead)
      v5.6-v5.19 (pointer): bp_desc, read first by every kernel int3
      v6.16+:    this CPU's text_poke_array_refs (the batch's end reads it: one stop
                 per CPU per batch), read first by every kernel int3"""
    if ftrace_handler:
        return "modifying_ftrace_code", 4
    if percpu_refs is not None:
        return "text_poke_array_refs (per CPU)", 4
    if desc.is_pointer:
        return desc.name, 8
    return f"{desc.name}.nr_entries", 4


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


def classify(p: Places, rip: int, rsp: int, opened: list, landing, ip_off: int = 128,
             calls_out: bool = False) -> tuple[str, Any]:
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
      pass         nothing of ours
    calls_out: the watched function calls the handlers (do_int3, v5.2-v5.5): a stop below
    an open call's return slot (%rsp < the slot) is still in its call tree (a handler, or a
    hit QEMU reported late), whatever %rip says."""
    for ev in reversed(opened):
        if is_handler_return(rip, rsp, ev.handler_rsp, p.returns):
            return "return", ev
        if calls_out and rsp < ev.handler_rsp:  # a nested int3's do_int3, or nothing of ours
            return ("entry", None) if p.in_handler(rip) else ("pass", None)
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
PAGE = 4096


def read_stack(g, rsp: int, n: int) -> bytes | None:
    """n bytes from rsp, or those up to the end of rsp's page when one read of n fails: a
    task stack's top is followed by an unmapped guard page, and an int3 taken near it has
    its pt_regs and gap within the page (21 of 74 word stops of a 6.12 run on the
    no-DWARF path had no entry: the 768-byte read crossed the top)."""
    raw = g.read(rsp, n)
    rest = PAGE - (rsp & (PAGE - 1))
    if raw is None and rest < n:
        raw = g.read(rsp, rest)
    return raw


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


# Why an open event's return was never seen (Int3Event.lost_return).
LOST_REGS_GONE = "regs-gone"  # reported after the vCPU left the exception frame: pt_regs may be reused
LOST_NOT_REPORTED = "not-reported"  # the handler ran again on that stack before its return was reported


class WatchEngine(EngineBase):
    """The watch engine's decisions: which stop a watchpoint hit is (classify, word_stop),
    whether a late report can still be read, what to watch next."""

    engine = Engine.WATCH

    def __init__(self, facts, mode, tracker, injector=None, hold=None) -> None:
        super().__init__(facts, mode, tracker, injector, hold)
        self.st = WatchStats()
        self.places: Places | None = None
        self._static: frozenset[Point] = frozenset()
        self._percpu_wait: Point | None = None
        self._entry_rip: dict[int, int] = {}  # seq of an open event -> %rip of its entry stop
        tracker.on_finish.append(lambda ev: self._entry_rip.pop(ev.seq, None))

    def arm(self, g) -> None:
        self._place(g)

    def _place(self, g) -> None:
        """Where the batch word and the rest of the static points are. v6.16+: one word per
        CPU, at __per_cpu_offset[cpu] + text_poke_array_refs; armed early in boot (KASLR: as
        soon as the IDT is up) every CPU still has the boot offset, so until the last CPU's
        offset is written (setup_per_cpu_areas) a write watchpoint on it waits for that."""
        f = self.facts
        addrs = f.watch_addrs(g)
        self._percpu_wait = None
        if f.percpu_refs is not None and len(addrs) > 1 and len(set(addrs)) == 1:
            self._percpu_wait = Point("percpu", (f.per_cpu_offset + 8 * (len(addrs) - 1)) & MASK64, "write", 8)
        lo, hi = f.handler_range
        code = [i for i in f.handler_code if lo <= i[0] < hi]
        self.places = Places((lo, hi), tuple(f.exit_ranges),
                             entry_rips_from(code, addrs[0]) if len(addrs) == 1 else frozenset(),
                             frozenset(f.watch_returns or f.returns))
        points = {Point("word", a, "read", f.watch_size) for a in addrs}
        # oops_enter: a read watchpoint on the word only it reads; a breakpoint where that is
        # missing (even a breakpoint never hit slows the guest: docs/cost.md).
        if f.oops_word is not None and f.die_name == "oops_enter":
            points.add(Point("oops", f.oops_word, "read", 4))
        elif f.die:
            points.add(Point("oops", f.die))
        self._static = frozenset(points)

    def points(self) -> frozenset[Point]:
        """The static points, each open handler call's return slot, each emulated int3's
        regs->cs until its landing is read, kprobe's return while an int3 waits for it."""
        t = self.tracker
        want = set(self._static)
        if self._percpu_wait is not None:
            want.add(self._percpu_wait)
        def cs(ev) -> Point:
            return Point("cs", (ev.regs_addr + IP_OFF + 8) & MASK64, "read", 8)

        opened = [ev for ev in t.open_events() if ev.handler_rsp is not None]
        if self.returns_at_exit:  # do_int3's return and the landing: one stop, at the exit path's cs test
            want.update(cs(ev) for ev in opened)
        else:
            want.update(Point("slot", ev.handler_rsp, "read", 8) for ev in opened)
        if self.mode.follows_landing:
            want.update(cs(ev) for ev in t.landing_events().values())
        if t.has_unhandled() and not self.facts.watch_fn:  # watch_fn: its return is after every follow-up
            want.update(Point("kprobe", r) for r in self.facts.followups)
        return frozenset(want)

    @property
    def returns_at_exit(self) -> bool:
        """v5.2-v5.5 in landing/full: no watchpoint on do_int3's return slot. do_int3 returns
        nothing (its handler's return value is inferred from pt_regs either way) and its
        exit path tests regs->cs before the iretq, where pt_regs is what the handlers left:
        that stop reads the return and the landing, 2 stops per int3 instead of 3 (QEMU 7.2
        reported every such cs read before the iretq in the 5.4.286 runs: docs/cost.md)."""
        return bool(self.facts.watch_fn) and self.mode.follows_landing

    def stats(self) -> dict[str, int]:
        return self.st.to_json()

    def on_stop(self, at: str, g) -> None:
        if at == "kprobe":
            self.kprobe_return(g)
        elif at == "percpu":  # the per-CPU offsets were written: the per-CPU words move there
            self._place(g)
        elif at == "oops":
            self._oops(g)
        else:  # any watchpoint, or a SIGTRAP gdb matched to none ("stray"): the vCPU says which
            self.st.stray_traps += at == "stray"
            self._watch(g)

    def _watch(self, g) -> None:
        """Which stop it is comes from the vCPU's %rip and %rsp (classify), not from the
        watchpoint gdb names: QEMU 7.2 with two vCPUs can report a hit late, under another
        watchpoint's address, or not at all (docs/cost.md)."""
        t, p, st = self.tracker, self.places, self.st
        cpu, rip, rsp = g.cpu(), g.reg("rip"), g.reg("rsp")
        opened = [ev for ev in t.open_events() if ev.cpu == cpu and ev.handler_rsp is not None]
        landing = t.landing_events().get(cpu) if self.mode.follows_landing else None
        calls_out = bool(self.facts.watch_fn)
        what, ev = classify(p, rip, rsp, opened, landing, IP_OFF, calls_out)
        if what in ("return", "late-return") and not self._still_ours(g, ev):
            what = "lost-return"
        if what == "return":
            st.returns += 1
            if calls_out:
                self._fn_return(g, cpu, rsp, ev)
            else:
                self.handler_returned(g, cpu, rsp, g.reg("rax"), ev)
        elif what == "lost-return":
            st.lost_returns += 1
            self.feed(T.LostStop(cpu, ev.handler_rsp, LOST_REGS_GONE))
        elif what == "late-return":
            if self.returns_at_exit:
                st.exit_returns += 1
                self._fn_return(g, cpu, (ev.handler_rsp + 8) & MASK64, ev, at_exit=True)
            else:
                st.late_returns += 1
                self._late_return(g, cpu, ev)
            landing = t.landing_events().get(cpu) if self.mode.follows_landing else None
            if landing is not None and classify(p, rip, rsp, [], landing, IP_OFF, calls_out)[0] == "before-iret":
                self._before_iret(g, cpu, landing)
        elif what == "before-iret":
            self._before_iret(g, cpu, landing)
        elif what == "landed":
            self._landed(g, cpu, landing, rip, rsp)
        elif what == "entry":
            self._entry(g, cpu, rip)

    def _still_ours(self, g, ev) -> bool:
        """The words above ev's pt_regs are still its CPU frame (same_int3)."""
        return same_int3(ev.gap, tuple(u64s(need(g, ev.regs_addr + PT_REGS.size, 8 * len(GAP_WORDS)))))

    def _entry(self, g, cpu: int, rip: int) -> None:
        """In the handler (the batch word was read): this int3's entry unless it is a later
        access of a call already open on this vCPU, or pt_regs no longer holds what the CPU
        pushed (a late report after the emulation)."""
        t, st = self.tracker, self.st
        st.word_stops += 1
        where = self._in_handler(g)
        open_ev = None
        if where is not None:
            open_ev = next((ev for ev in t.open_events() if ev.cpu == cpu and ev.handler_rsp == where[1]), None)
        kind = word_stop(where is not None, rip, self._entry_rip.get(open_ev.seq) if open_ev else None)
        if kind in ("pass", "same-call"):
            return
        if kind == "entry-missed-return":
            st.lost_returns += 1
            self.feed(T.LostStop(cpu, open_ev.handler_rsp, LOST_NOT_REPORTED))
        stop = self.read_handler_entry(g, None if self.facts.watch_fn else self.facts.handler_name, *where)
        if not regs_untouched(stop.regs, stop.gap):
            st.late_entries_dropped += 1
            return
        st.entries += 1
        st.late_entries += bool(self.places.entry_rips) and rip not in self.places.entry_rips
        self.feed(stop)
        mine = t.innermost_open(cpu)  # the event this entry opened, on this vCPU
        if mine is not None:
            self._entry_rip[mine.seq] = rip

    def _late_return(self, g, cpu: int, ev) -> None:
        """The handler has returned but the stop came after its `ret`, in the exit path, the
        vCPU still on the exception frame and the frame above pt_regs still this int3's:
        pt_regs is what the handler left (the exit path only reads it) and is judged as at
        the return; the return value is what every emulation path sets (1) when regs->ip or
        regs->sp moved, else 0 (said in the reasons). The injector has its turn as at a
        return reported on time."""
        after, pushed = self.read_after(g, ev)
        rax = inferred_return(ev.before, after)
        done = self.injector and self.injector.at_return(g, ev, rax, IP_OFF, PT_REGS.fields["sp"].offset)
        if done:
            after, pushed = self.read_after(g, ev)
        note = ("the watchpoint on its return address was reported late: pt_regs read in the exit path, "
                f"return value {rax} inferred from regs->ip")
        self.feed(T.HandlerReturnStop(cpu, (ev.handler_rsp + 8) & MASK64, rax, after, pushed, self._done(done),
                                      note=note))

    def _fn_return(self, g, cpu: int, rsp: int, ev, at_exit: bool = False) -> None:
        """do_int3 (v5.2-v5.5) has returned. It returns nothing, and after the handlers it
        asks kprobes and the die notifiers, which change pt_regs too (the boot int3
        self-test's notifier). So the handler's return value is inferred from pt_regs only
        where it claims the site (ftrace_int3_handler's sites, a live batch's entry); elsewhere
        it returned 0, whatever ran after it did, and no follow-up stop is to come."""
        after, _ = self.read_after(g, ev)
        claimed = ev.ftrace is not None or ev.loc is not None
        rax = inferred_return(ev.before, after) if claimed else 0
        fn = self.facts.watch_fn
        note = (f"{fn} returned: the return value of {ev.handler} ({rax}) inferred from regs->ip" if claimed else
                f"{fn} returned; {ev.handler} does not claim this site, so it returned 0 (pt_regs "
                f"{'changed after it: a kprobe or a die notifier' if inferred_return(ev.before, after) else 'unchanged'})")
        if at_exit:
            note += "; pt_regs read where the exit path tests regs->cs, before the iretq"
        self.handler_returned(g, cpu, rsp, rax, ev, note=note)
        if not rax:
            self.tracker.settled(cpu)

    def _frame_and_gap(self, g, ev) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        """One read from ev's regs->ip up: (its address, the iret frame in pt_regs, the gap above)."""
        ipslot = (ev.regs_addr + IP_OFF) & MASK64
        words = tuple(u64s(need(g, ipslot, PT_REGS.size - IP_OFF + 8 * len(GAP_WORDS))))
        return ipslot, words[:len(IRET_FRAME)], words[-len(GAP_WORDS):]

    def _landed(self, g, cpu: int, ev, rip: int, rsp: int) -> None:
        """Past the iretq. Reported right after it: the vCPU's rip and rsp are the words it
        loaded from the frame, still in memory: the landing is the registers and [rsp].
        Reported late (the vCPU ran on): the frame in memory is what the iretq loaded if it
        is still what the handler left in pt_regs (frame_kept): rip and rsp from it, [rsp]
        not known (the vCPU may have popped it); otherwise the landing was not seen."""
        st = self.st
        st.landing_stops += 1
        ipslot, frame, gap = self._frame_and_gap(g, ev)
        same = same_int3(ev.gap, gap)
        exact = exact_landing(rip, rsp, frame)
        if same and not exact and frame_kept(frame, ev.after):
            st.late_landings_from_frame += 1
            self.feed(T.IretStop(cpu, ipslot, frame, None, self.landing_done(g, ev),
                                 source=T.SRC_FRAME_AFTER_LATE_REPORT, top_known=False))
        elif not same or not exact:
            st.late_landings += 1
            self.landing_done(g, ev)
            self.feed(T.LandingUnseenStop(cpu, "QEMU reported the watchpoint on regs->cs late, and the frame "
                                               "the iretq loaded is gone: not checked"))
        else:
            top = try_u64(g, rsp)
            done = self.landing_done(g, ev)
            regs_now = (rip, g.reg("cs"), g.reg("eflags"), rsp, g.reg("ss"))
            self.feed(T.IretStop(cpu, ipslot, regs_now, top, done, source=T.SRC_REGISTERS))

    def _before_iret(self, g, cpu: int, ev) -> None:
        """In the exit path, before the iretq: the frame in pt_regs is what it will load
        (POP_REGS and the iretq write none of it) and the word at its sp what the vCPU will
        find at [rsp]: the landing, as the breakpoint engine reads it at the iretq."""
        st = self.st
        st.landing_stops += 1
        ipslot, frame, gap = self._frame_and_gap(g, ev)
        if not same_int3(ev.gap, gap):
            st.late_landings += 1
            self.landing_done(g, ev)
            self.feed(T.LandingUnseenStop(cpu, "the frame above its pt_regs is another int3's when the exit "
                                               "path was reported: not checked"))
            return
        st.landings_before_iret += 1
        top = try_u64(g, frame[IRET_FRAME.index("sp")])
        self.feed(T.IretStop(cpu, ipslot, frame, top, self.landing_done(g, ev)))

    def _in_handler(self, g) -> tuple[int, int] | None:
        """(pt_regs, %rsp at its first instruction) of the text-patch handler this vCPU is in
        (DWARF's `regs`, else %rdi; the caller's %rsp - 8), or None when the watched word was
        touched elsewhere. Without DWARF both come off the stack (find_frames): gdb's
        prologue analysis misreads the handler there."""
        if not self.facts.dwarf:
            rsp = g.reg("rsp")
            raw = read_stack(g, rsp, 8 * STACK_SCAN_WORDS)
            if raw is None:
                return None
            return find_frames(tuple(u64s(raw)), rsp, self.places.returns, PT_REGS.size // 8, IP_OFF // 8)
        fr = g.handler_frame()
        if fr is None:
            return None
        name, regs, caller_rsp = fr
        if name != (self.facts.watch_fn or self.facts.handler_name) or caller_rsp is None:
            return None
        return (g.reg("rdi") if regs is None else regs) & MASK64, (caller_rsp - 8) & MASK64

    def _oops(self, g) -> None:
        """oops_enter. An int3 the handler was seen to leave (its return) has its die follow-up;
        a kernel int3 the watch did not see enter (v6.0-v6.15 watch nr_entries, which a
        handler without a live batch does not read) is read here from die("int3", regs):
        die() is called for an int3 only when every handler returned 0."""
        cpu, t = g.cpu(), self.tracker
        if not any(n in DIE_STOPS for n in g.frame_names(3)):
            return  # a hit QEMU reported late or under this address: not an oops
        if t.unhandled_event(cpu) is None:
            got = g.die_args(8)
            regs = got[1] & MASK64 if got is not None and got[0].split("\0")[0] == "int3" else None
            if regs is not None:
                self.st.oops_int3s += 1
                entry = self.read_handler_entry(g, self.facts.handler_name, regs, seen_at="oops_enter")
                if self.facts.word_behind_refcount and entry.batch.live:
                    # The handler never read nr_entries: it found the refcount at 0, no batch in
                    # flight. The batch live now began after (tcg-multi, toggling one site: a
                    # stale int3 of the batch before it); judge against it as not in flight.
                    entry = dataclasses.replace(entry, batch=dataclasses.replace(entry.batch, live=False, stale=True))
                self.feed(entry)
                after = {"ip": entry.regs["ip"], "sp": entry.regs["sp"]}  # a handler returning 0 changed nothing
                self.feed(T.HandlerReturnStop(cpu, 0, 0, after))
                if self.facts.followups:
                    self.feed(T.KprobeReturnStop(cpu, 0, after["ip"]))
        self.feed(T.DieStop(cpu))
