"""The checker's state machine, pure: typed stop records in, finished Int3Events out.

An engine (core/engine.py) turns each stop of the guest into one record
below and feeds it to a Tracker; a recorded stop stream replays through the
same engine and Tracker in the unit tests. The Tracker never reads the guest:
where an engine needs to know which open event a stop belongs to (to read its
pt_regs), it asks a query method, which changes nothing.

Per vCPU it keeps:
  frames      the CPU frames read at the int3 entry, not yet claimed by a handler entry
  open        handler entries whose return has not been seen (a stack: int3s nest)
  landing     the emulated int3 waiting for its iretq (modes landing/full)
  unhandled   the last event whose handler returned 0 (kprobe / die follow-ups)

Pairing rules (each learnt from a real run):
  - A handler return belongs to the open entry whose %rsp is 8 below the
    return's %rsp (the call's return address is popped), not simply the
    latest: an entry whose context died must not take another's return.
  - With multi-threaded TCG one breakpoint hit can be reported twice; a
    second handler entry with the same pt_regs and %rsp, or a second int3
    entry with the same %rsp, is a duplicate, not a nested int3.
  - An iretq is ours when %rsp points at the pt_regs->ip of the event
    waiting for its landing on that vCPU.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Iterable, Union

from .batch import Batch
from .event import DIE, KPROBE, NESTED, REPEAT, FollowUp, Injection, Int3Event
from .insn import MASK64, RET, find_loc
from .layout import PT_REGS_X86_64
from .mode import CheckMode
from .verdict import IRET_FRAME, finalize

PT_REGS_IP = PT_REGS_X86_64.fields["ip"].offset
REGS_AT_ENTRY = ("ip", "sp", "flags", "cs", "ss", "orig_ax")  # the pt_regs fields a handler entry reads
# Where a landing was read (Int3Event.landing["source"], for the report): the frame the iretq
# loads, the vCPU's registers right after it, the frame still in memory after a late report.
SRC_IRET_FRAME, SRC_REGISTERS, SRC_FRAME_AFTER_LATE_REPORT = "iret-frame", "registers", "late-frame"


# -- stop records -------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Int3EntryStop:
    """The int3 entry's first instruction (asm_exc_int3 / int3): %rsp points at the
    frame the CPU pushed."""

    cpu: int
    rsp: int
    frame: tuple[int, ...]  # the words at %rsp, in IRET_FRAME order (ip, cs, flags, sp, ss)


@dataclasses.dataclass(frozen=True)
class HandlerEntryStop:
    """The text-patch handler's first instruction: pt_regs and what it decides by."""

    cpu: int
    rsp: int | None  # None: read at oops_enter (seen_at), not at the handler
    regs_addr: int  # %rdi
    regs: dict[str, int]  # pt_regs fields (ip, sp, flags, cs, ss, orig_ax)
    gap: tuple[int, ...]  # the 6 words above pt_regs
    site_bytes: bytes
    batch: Batch
    time_s: float
    cpu_refs: int | None = None  # v6.16+: this CPU's text_poke_array_refs
    stack_top: int | None = None  # [regs->sp], read when the site is a RET being installed
    injected: tuple[Injection, ...] = ()
    ftrace: dict[str, Any] | None = None  # v5.2-v5.5 ftrace_int3_handler: the FtraceState
    handler: str = ""  # which handler ('' : the tracker's default)
    seen_at: str = ""  # '': at the handler; "oops_enter": first seen when the kernel oopsed on it


@dataclasses.dataclass(frozen=True)
class HandlerReturnStop:
    """Right after the call to the handler returns: its return value, pt_regs again."""

    cpu: int
    rsp: int
    rax: int
    after: dict[str, int] | None = None  # regs->ip, regs->sp (None: no open entry to read for)
    pushed: int | None = None  # [regs->sp] when sp moved
    injected: tuple[Injection, ...] = ()
    note: str = ""  # how it was seen, when not right after the `ret` (the watch engine's late report)


@dataclasses.dataclass(frozen=True)
class IretStop:
    """The landing of this vCPU's emulated int3: `rsp` the address of the frame (its
    regs->ip), `frame` what the iretq loads (IRET_FRAME order) and `top` the word at that
    frame's sp: where and on what stack the vCPU lands. No frame: an iretq of another
    frame (the breakpoint engine stops at every iretq while one is awaited)."""

    cpu: int
    rsp: int
    frame: tuple[int, ...] | None = None
    top: int | None = None
    injected: tuple[Injection, ...] = ()
    source: str = SRC_IRET_FRAME  # one of the SRC_* above
    top_known: bool = True  # False: [rsp] could not be read where the vCPU landed (top is None)


@dataclasses.dataclass(frozen=True)
class LostStop:
    """The watch engine: the open event whose handler ran with this %rsp will not see its
    return: finished INCOMPLETE, `reason` in Int3Event.lost_return (core.watch.LOST_*)."""

    cpu: int
    rsp: int
    reason: str


@dataclasses.dataclass(frozen=True)
class LandingUnseenStop:
    """The watch engine: this vCPU's emulated int3 has landed, but where was not seen."""

    cpu: int
    why: str


@dataclasses.dataclass(frozen=True)
class KprobeReturnStop:
    """kprobe_int3_handler returned (the caller asks it after our handler returned 0)."""

    cpu: int
    rax: int
    regs_ip: int | None = None  # regs->ip of the unhandled event, after kprobes looked at it


@dataclasses.dataclass(frozen=True)
class DieStop:
    """The kernel is about to oops: oops_enter() (called by die() via oops_begin()), or die()."""

    cpu: int


Stop = Union[Int3EntryStop, HandlerEntryStop, HandlerReturnStop, IretStop,
             KprobeReturnStop, DieStop, LostStop, LandingUnseenStop]


def wants_stack_top(batch: Batch, site: int) -> bool:
    """Whether the reader must read [regs->sp] at handler entry: a RET being installed
    pops the interrupted stack, so its destination is that word."""
    if not batch.live:
        return False
    loc = find_loc(batch.locs, site)
    return loc is not None and loc.opcode == RET


def handler_return_value(rax: int) -> int:
    """The handler's int return value from %rax (eax, sign-extended)."""
    ret = rax & 0xFFFFFFFF
    return ret - (1 << 32) if ret & 0x80000000 else ret


@dataclasses.dataclass
class TrackerStats:
    int3_entry_stops: int = 0
    duplicate_stops: int = 0  # one breakpoint hit reported twice (multi-threaded TCG)
    unmatched_returns: int = 0  # handler returns with no open entry on that %rsp
    foreign_irets: int = 0  # iretq stops that were not a waiting landing's
    sampled_out: int = 0  # int3s past the per-batch sample (handler checks only)
    max_depth: int = 1  # deepest nesting of int3s on one vCPU
    foreign_dies: list[int] = dataclasses.field(default_factory=list)  # vCPUs: die() outside our int3s

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Tracker:
    """Pairs stops into Int3Events. Hooks (all optional):
      on_open(ev)           a handler entry was taken (before its return is seen)
      on_followup(ev, fu)   a follow-up was added to an event
      on_event(ev)          an event is finished and judged (name it here: site_sym, ...)
    and on_finish, a list of more callables for finished events (the engines' own state).
    """

    def __init__(self, mode: CheckMode, sample: int = 0, handler: str = "",
                 on_open: Callable[[Int3Event], None] | None = None,
                 on_followup: Callable[[Int3Event, FollowUp], None] | None = None,
                 on_event: Callable[[Int3Event], None] | None = None) -> None:
        if sample < 0:
            raise ValueError("sample must be 0 (every int3) or a positive number per batch")
        self.mode = mode
        self.sample = sample  # > 0: entry frame and landing only for the first `sample` int3s of a batch
        self.handler = handler
        self.on_open = on_open
        self.on_followup = on_followup
        self.on_event = on_event
        self.on_finish: list[Callable[[Int3Event], None]] = []
        self.events: list[Int3Event] = []
        self.stats = TrackerStats()
        self._seq = 0
        self._frames: dict[int, list[dict[str, int]]] = collections.defaultdict(list)
        self._open: dict[int, list[Int3Event]] = collections.defaultdict(list)
        self._landing: dict[int, Int3Event] = {}
        self._unhandled: dict[int, Int3Event] = {}
        self._repeat_key: tuple[int, int] | None = None  # (cpu, site) of the last unhandled int3
        self._repeat_count = 0
        self._batch_key: tuple | None = None
        self._batch_sampled = 0  # int3s of the current batch that got the full checks

    # -- queries (change nothing) -----------------------------------------
    def is_duplicate_handler_entry(self, cpu: int, rsp: int, regs_addr: int) -> bool:
        top = self._open.get(cpu)
        return bool(top) and top[-1].regs_addr == regs_addr and top[-1].handler_rsp == rsp

    def open_event_for_return(self, cpu: int, rsp: int) -> Int3Event | None:
        """The open handler entry a return at this %rsp belongs to."""
        i = self._return_index(cpu, rsp)
        return None if i is None else self._open[cpu][i]

    def unhandled_event(self, cpu: int) -> Int3Event | None:
        return self._unhandled.get(cpu)

    def open_events(self) -> list[Int3Event]:
        return [ev for stack in self._open.values() for ev in stack]

    def innermost_open(self, cpu: int) -> Int3Event | None:
        """The latest handler entry still open on this vCPU."""
        stack = self._open.get(cpu)
        return stack[-1] if stack else None

    def landing_events(self) -> dict[int, Int3Event]:
        """vCPU -> the emulated int3 waiting for its iretq there."""
        return dict(self._landing)

    def settled(self, cpu: int) -> None:
        """This vCPU's int3 path is over (v5.2-v5.5: do_int3 returned): its event whose
        handler returned 0 gets no kprobe or die follow-up."""
        self._unhandled.pop(cpu, None)

    def has_unhandled(self) -> bool:
        """An int3 whose handler returned 0 waits for its kprobe / die follow-ups."""
        return bool(self._unhandled)

    def wants_iret_stops(self) -> bool:
        return self.mode.follows_landing and bool(self._landing)

    def wants_int3_entry_stops(self) -> bool:
        return self.mode.stops_at_int3_entry and (self.sample == 0 or self._batch_sampled < self.sample)

    # -- feeding --------------------------------------------------------------
    def feed(self, stop: Stop) -> None:
        """Take one stop record."""
        self._HANDLERS[type(stop)](self, stop)

    def replay(self, stops: Iterable[Stop]) -> "Tracker":
        for s in stops:
            self.feed(s)
        return self

    def _int3_entry(self, s: Int3EntryStop) -> None:
        frames = self._frames[s.cpu]
        if frames and frames[-1]["addr"] == s.rsp:
            self.stats.duplicate_stops += 1
            return
        self.stats.int3_entry_stops += 1
        frames.append({"addr": s.rsp, **dict(zip(IRET_FRAME, s.frame))})

    def _handler_entry(self, s: HandlerEntryStop) -> None:
        if self.is_duplicate_handler_entry(s.cpu, s.rsp, s.regs_addr):
            # A real nested int3 enters on a deeper stack with another pt_regs.
            self.stats.duplicate_stops += 1
            return
        self._seq += 1
        site = (s.regs["ip"] - 1) & MASK64
        ev = Int3Event(seq=self._seq, cpu=s.cpu, regs_addr=s.regs_addr, before=dict(s.regs), site=site,
                       gap=list(s.gap), time_s=s.time_s, handler=s.handler or self.handler, handler_rsp=s.rsp,
                       site_bytes=s.site_bytes, cpu_refs=s.cpu_refs, stack_top=s.stack_top,
                       injected=list(s.injected), ftrace=s.ftrace, seen_at=s.seen_at)
        frames = self._frames.get(s.cpu)
        if frames:  # the int3 entry this handler call belongs to (entries nest LIFO)
            ev.hw_frame, ev.hw_source = frames.pop(), "entry"
        elif self.mode.stops_at_int3_entry:
            ev.hw_source = "gap"  # armed between the int3 entry and the handler, or sampled out
        batch = s.batch
        ev.batch_nr = batch.nr if batch.live else None
        found = find_loc(batch.locs, site)
        if batch.live:
            ev.loc = found
        else:
            ev.stale_loc = found
        key = batch.key
        if key is not None and key != self._batch_key:
            self._batch_key, self._batch_sampled = key, 0
        ev.in_sample = self.sample == 0 or key is None or self._batch_sampled < self.sample
        if key is not None and ev.in_sample:
            self._batch_sampled += 1
        if not ev.in_sample:
            self.stats.sampled_out += 1
        stack = self._open[s.cpu]
        stack.append(ev)
        if self.on_open:
            self.on_open(ev)
        if len(stack) > 1:  # an int3 inside the int3 path: the kprobe_int3_handler+0x1 recursion class
            ev.depth = len(stack)
            self.stats.max_depth = max(self.stats.max_depth, ev.depth)
            self._follow(stack[-2], FollowUp(NESTED, {"seq": ev.seq, "site": ev.site, "cpu": ev.cpu,
                                                      "depth": ev.depth}))

    def _return_index(self, cpu: int, rsp: int) -> int | None:
        stack = self._open.get(cpu) or []
        return next((i for i in range(len(stack) - 1, -1, -1)
                     if stack[i].handler_rsp is None or stack[i].handler_rsp + 8 == rsp), None)

    def _handler_return(self, s: HandlerReturnStop) -> None:
        idx = self._return_index(s.cpu, s.rsp)
        if idx is None:
            self.stats.unmatched_returns += 1
            return
        stack = self._open[s.cpu]
        ev = stack[idx]
        for orphan in stack[idx + 1:]:  # entered later on a deeper stack, never returned
            self._complete(orphan)
        del stack[idx:]
        ev.ret = handler_return_value(s.rax)
        ev.injected += s.injected
        if s.note:
            ev.notes.append(s.note)
        ev.after = dict(s.after) if s.after is not None else None
        ev.pushed = s.pushed
        cpu = ev.cpu
        if self.mode.follows_landing and ev.ret and not ev.before["cs"] & 3 and ev.in_sample:
            old = self._landing.pop(cpu, None)
            if old is not None:
                old.landing_note = "no iretq to its frame was seen before the next int3 on this vCPU"
                self._complete(old)
            self._landing[cpu] = ev
        else:
            self._complete(ev)
        if ev.ret == 0:
            self._unhandled[cpu] = ev
            key = (cpu, ev.site)
            self._repeat_count = self._repeat_count + 1 if key == self._repeat_key else 1
            self._repeat_key = key
            if self._repeat_count > 1 and ev.verdict == "MISSED":
                self._follow(ev, FollowUp(REPEAT, {"count": self._repeat_count}))
        else:
            self._unhandled.pop(cpu, None)
            self._repeat_key, self._repeat_count = None, 0

    def iret_is_ours(self, cpu: int, rsp: int) -> Int3Event | None:
        """The event waiting for its landing whose pt_regs->ip this iretq's %rsp points at."""
        ev = self._landing.get(cpu)
        return ev if ev is not None and rsp == (ev.regs_addr + PT_REGS_IP) & MASK64 else None

    def _iret(self, s: IretStop) -> None:
        if s.cpu not in self._landing:
            self.stats.foreign_irets += 1
            return
        ev = self.iret_is_ours(s.cpu, s.rsp)
        if ev is None or s.frame is None:
            return  # an iretq of another frame (an interrupt's) on this vCPU
        frame = dict(zip(IRET_FRAME, s.frame))  # what the iretq loads: rip and rsp; [rsp] read there
        del self._landing[s.cpu]
        ev.landing = {"ip": frame["ip"], "sp": frame["sp"], "top": s.top,
                      "top_known": s.top_known, "source": s.source}
        ev.injected += s.injected
        self._complete(ev)

    def _kprobe_return(self, s: KprobeReturnStop) -> None:
        ev = self._unhandled.pop(s.cpu, None)
        if ev is None:
            return
        kret = handler_return_value(s.rax)
        self._follow(ev, FollowUp(KPROBE, {"ret": kret, "ip": s.regs_ip,
                                           "rewound": bool(kret) and s.regs_ip == ev.site}))
        if not kret:  # nobody owns it: notify_die / die() come next
            self._unhandled[ev.cpu] = ev

    def _die(self, s: DieStop) -> None:
        ev = self._unhandled.get(s.cpu)
        if ev is not None:
            if not ev.has_followup(DIE):  # die() can be entered again while the oops unwinds
                self._follow(ev, FollowUp(DIE))
        else:  # an oops elsewhere (after a fault, say): the guest console tells the rest
            self.stats.foreign_dies.append(s.cpu)

    def _landing_unseen(self, s: LandingUnseenStop) -> None:
        ev = self._landing.pop(s.cpu, None)
        if ev is not None:
            ev.landing_note = s.why
            self._complete(ev)

    def _lost(self, s: LostStop) -> None:
        stack = self._open.get(s.cpu) or []
        ev = next((e for e in stack if e.handler_rsp == s.rsp), None)
        if ev is not None:
            stack.remove(ev)
            ev.lost_return = s.reason
            self._complete(ev)

    _HANDLERS: dict[type, Callable] = {
        Int3EntryStop: _int3_entry, HandlerEntryStop: _handler_entry, HandlerReturnStop: _handler_return,
        IretStop: _iret, KprobeReturnStop: _kprobe_return, DieStop: _die,
        LostStop: _lost, LandingUnseenStop: _landing_unseen}

    # -- ending ---------------------------------------------------------------
    def close(self) -> None:
        """The run ended: events waiting for a landing are finished without one, open
        handler entries become INCOMPLETE."""
        for ev in list(self._landing.values()):
            ev.landing_note = "the run ended before this vCPU returned from the int3"
            self._complete(ev)
        self._landing.clear()
        for stack in self._open.values():
            for ev in stack:
                self._complete(ev)
        self._open.clear()

    def _follow(self, ev: Int3Event, fu: FollowUp) -> None:
        ev.followups.append(fu)
        if self.on_followup:
            self.on_followup(ev, fu)

    def _complete(self, ev: Int3Event) -> None:
        finalize(ev)
        for fn in self.on_finish:
            fn(ev)
        if self.on_event:
            self.on_event(ev)
        self.events.append(ev)
