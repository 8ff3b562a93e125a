"""The checker's reader: each gdb stop read into one core.tracker record.

Where it stops is the CheckMode's (core/mode.py); how stops pair into
events is core/tracker.py's. Here: read the guest in bulk at each stop (a
read is one gdbstub round trip), apply fault injection at its fixed points,
name finished events, write the logs.

Two engines see the same stops (core/watch.py): `watch` (the default where
the kernel has a batch word to watch, v5.6+) with watchpoints only, and
`breakpoints` with breakpoints on the handler, its returns, the int3 entry and
the iretq. Real stops happen only where breakpoints or watchpoints must be
switched: the driver loop (runner.drive) syncs them.
"""

from __future__ import annotations

import functools
import time

import gdb

from ..core import report
from ..core import tracker as T
from ..core import watch as W
from ..core.errors import UserError
from ..core.eventlog import EventLog, JsonLines
from ..core.insn import MASK64
from ..core.layout import GAP_WORDS, decode_struct, u64s
from ..core.mode import CheckMode
from ..core.verdict import IRET_FRAME
from . import kernel, mem, symbols
from .breakpoints import BreakpointSet
from .inject import Injector
from .mem import reg, vcpu_index


OOPS_WORD = "sysctl_oops_all_cpu_backtrace"  # read by oops_enter() (v5.8+) and its sysctl only


class Checker:
    def __init__(self, mode: CheckMode, json_path: str | None = None, echo: bool = False,
                 sample: int = 0, inject: str | None = None, stops_path: str | None = None,
                 engine: str = W.DEFAULT) -> None:
        self.kinfo = k = kernel.info()
        k.require(mode)
        self.mode, self.echo, self.t0 = mode, echo, time.monotonic()
        self.injector = Injector(inject, k) if inject else None
        self.log = EventLog(json_path) if json_path else None
        self.stops = JsonLines(stops_path) if stops_path else None
        self.tracker = T.Tracker(mode, sample, k.handler_name, on_event=self._finished,
                                 on_open=self.log and self.log.handler_entry,
                                 on_followup=self.log and self.log.followup)
        if self.log:
            from . import slide

            self.log.meta(kernel=k.to_json(), armed_at=time.time(), mode=mode.value, sample=sample, inject=inject,
                          slide=slide.located.to_json() if slide.located else None)
        if engine not in W.ENGINES:
            raise UserError(f"unknown engine {engine!r}; one of: {', '.join(W.ENGINES)}")
        # Watchpoints only where the kernel has a batch word (core/watch.py); else breakpoints.
        self.watch = engine == "watch" and not k.no_watch
        self.engine = "watch" if self.watch else "breakpoints"
        self.engine_note = k.no_watch if engine == "watch" and k.no_watch else ""
        self.watch_stats = W.WatchStats()
        self._entry_rip: dict[int, int] = {}  # seq of an open event -> %rip of its entry stop
        self.bps = BreakpointSet()  # bps.errors: exceptions in the stop callbacks (checker bugs)
        self.listeners: list = []  # called with each finished event (the interactive status line)

    events = property(lambda self: self.tracker.events)
    armed = property(lambda self: bool(self.bps))
    errors = property(lambda self: self.bps.errors)

    def arm(self) -> None:
        if self.watch:
            self._arm_watch()
            return
        k, add, t = self.kinfo, self.bps.add, self.tracker
        if self.mode.stops_at_int3_entry:
            add(k.int3_entry, self.on_int3_entry, t.wants_int3_entry_stops)
        for name, addr in k.handlers:
            add(addr, functools.partial(self.on_handler_entry, name))
        for ret, on in [(r, self.on_handler_return) for _, r in k.returns] + \
                [(r, self.on_kprobe_return) for _, r in k.followups]:
            add(ret, on)
        if k.die:
            add(k.die, lambda: self._feed(T.DieStop(vcpu_index())))
        if self.mode.follows_landing:
            add(k.iret, self.on_iret, t.wants_iret_stops)

    # -- the watchpoint engine (core/watch.py) --------------------------------------
    def _arm_watch(self) -> None:
        k, add, t = self.kinfo, self.bps.add, self.tracker
        size = k.watch_word()[1]
        addrs = k.watch_addrs(len(gdb.selected_inferior().threads()))
        lo, hi = k.handler_range()
        code = [i for i in k.disassemble(k.handler_name) if lo <= i[0] < hi]
        self._w = W.Places((lo, hi), tuple(k.exit_ranges()),
                           W.entry_rips_from(code, addrs[0]) if len(addrs) == 1 else frozenset(),
                           frozenset(r for _, r in k.returns))
        self._ip_off = k.pt_regs.fields["ip"].offset
        for addr in addrs:
            add(addr, self.on_watch, watch=size, read_only=True)
        self.bps.dynamic(self._watches)
        for _, ret in k.followups:
            add(ret, self.on_kprobe_return, t.has_unhandled)
        # oops_enter is the only place of ours in kernel text, and even a breakpoint never hit
        # slows the guest (docs/cost.md): where oops_enter reads a word nothing else reads,
        # a read watchpoint on it instead.
        word = kernel.data_symbol_address(OOPS_WORD)
        if word is not None and k.die_name == "oops_enter":
            add(word, self.on_die_watch, watch=4, read_only=True)
        elif k.die:
            add(k.die, self.on_die_watch)

    def _watches(self) -> dict:
        """The read watchpoints the open events want: each open handler call's return slot,
        each emulated int3's regs->cs until its landing is read."""
        t = self.tracker
        want = {ev.handler_rsp: self.on_watch for ev in t.open_events() if ev.handler_rsp is not None}
        if self.mode.follows_landing:
            for ev in t.landing_events().values():
                want[(ev.regs_addr + self._ip_off + 8) & MASK64] = self.on_watch  # regs->cs
        return want

    def on_watch(self) -> bool:
        """Any of the engine's watchpoints. Which stop it is comes from the vCPU's %rip and %rsp
        (core.watch.classify), not from the address gdb names: with two vCPUs QEMU 7.2 can
        report a hit late, or under another watchpoint's address, or not at all (measured)."""
        t, p, cpu, rip, rsp = self.tracker, self._w, vcpu_index(), reg("rip"), reg("rsp")
        st = self.watch_stats
        opened = [ev for ev in t.open_events() if ev.cpu == cpu and ev.handler_rsp is not None]
        landing = t.landing_events().get(cpu) if self.mode.follows_landing else None
        what, ev = W.classify(p, rip, rsp, opened, landing, self._ip_off)
        if what in ("return", "late-return") and not self._still_ours(ev):
            what = "lost-return"
        if what == "return":
            st.returns += 1
            return self.on_handler_return()
        if what == "lost-return":
            st.lost_returns += 1
            return self._feed(T.LostStop(cpu, ev.handler_rsp, "its handler's return was not reported by "
                                         "QEMU's watchpoint, and its pt_regs are gone (watch engine): not judged"))
        if what == "late-return":
            st.late_returns += 1
            real = self._late_return(cpu, ev)
            landing = t.landing_events().get(cpu) if self.mode.follows_landing else None
            if landing is not None and W.classify(p, rip, rsp, [], landing, self._ip_off)[0] == "before-iret":
                return self._before_iret(cpu, landing) or real
            return real
        if what == "before-iret":
            return self._before_iret(cpu, landing)
        if what == "landed":
            return self._landed(cpu, landing, rip, rsp)
        if what == "entry":
            return self._entry(cpu, rip)
        return False

    def _still_ours(self, ev) -> bool:
        """The words above ev's pt_regs are still its CPU frame (core.watch.same_int3)."""
        size = self.kinfo.pt_regs.size
        return W.same_int3(ev.gap, tuple(u64s(mem.read(ev.regs_addr + size, 8 * len(GAP_WORDS)))))

    def _feed_none(self) -> bool:
        return self.bps.out_of_date()

    def _entry(self, cpu: int, rip: int) -> bool:
        """In the handler (the batch word was read): this int3's entry unless it is a later access
        of a call already open, or pt_regs no longer holds what the CPU pushed (a late report
        after the emulation)."""
        st = self.watch_stats
        st.word_stops += 1
        where = self._in_handler()
        open_ev = None
        if where is not None:
            open_ev = next((ev for ev in self.tracker.open_events()
                            if ev.cpu == cpu and ev.handler_rsp == where[1]), None)
        kind = W.word_stop(where is not None, rip, self._entry_rip.get(open_ev.seq) if open_ev else None)
        if kind in ("pass", "same-call"):
            return False
        if kind == "entry-missed-return":
            st.lost_returns += 1
            self._feed(T.LostStop(cpu, open_ev.handler_rsp, "its handler's return was not reported by QEMU's "
                                                            "watchpoint (watch engine): not judged"))
        stop = self._read_handler_entry(self.kinfo.handler_name, *where)
        if not W.regs_untouched(stop.regs, stop.gap):
            st.late_entries_dropped += 1
            return self._feed_none()
        st.entries += 1
        st.late_entries += bool(self._w.entry_rips) and rip not in self._w.entry_rips
        result = self._feed(stop)
        opened = self.tracker.open_events()
        if opened:
            self._entry_rip[opened[-1].seq] = rip
        return result

    def _late_return(self, cpu: int, ev) -> bool:
        """The handler has returned but the stop came after its `ret`, in the exit path, the vCPU
        still on the exception frame (core.watch.classify) and the frame above pt_regs still this
        int3's: pt_regs is what the handler left (the exit path only reads it) and is judged as
        at the return; the return value is what every emulation path sets (1) when regs->ip or
        regs->sp moved, else 0 (said in the reasons)."""
        after, pushed = self._read_after(ev)
        rax = W.inferred_return(ev.before, after)
        note = ("the watchpoint on its return address was reported late: pt_regs read in the exit path, "
                f"return value {rax} inferred from regs->ip")
        return self._feed(T.HandlerReturnStop(cpu, (ev.handler_rsp + 8) & MASK64, rax, after, pushed, note=note))

    def _landed(self, cpu: int, ev, rip: int, rsp: int) -> bool:
        """Past the iretq (the vCPU has left the exit path). When the report came right after
        the iretq, the vCPU's rip and rsp are the words it loaded from the frame, still in
        memory: the landing is the registers and [rsp]. When it came late (the vCPU ran on),
        the frame in memory is what the iretq loaded if it is still what the handler left in
        pt_regs (core.watch.frame_kept): rip and rsp from it, [rsp] not judged (the vCPU may
        have popped it); otherwise the landing is noted as not seen."""
        self.watch_stats.landing_stops += 1
        ipslot, frame, gap = self._frame_and_gap(ev)
        same = W.same_int3(ev.gap, gap)
        if same and not W.exact_landing(rip, rsp, frame) and W.frame_kept(frame, ev.after):
            self.watch_stats.late_landings_from_frame += 1
            done = self.injector and self.injector.after_landing(ev)
            return self._feed(T.IretStop(cpu, ipslot, frame, None, (done,) if done else (), late=True))
        if not same or not W.exact_landing(rip, rsp, frame):
            self.watch_stats.late_landings += 1
            if self.injector:
                self.injector.after_landing(ev)
            return self._feed(T.LandingUnseenStop(cpu, "QEMU reported the watchpoint on regs->cs late, and the "
                                                       "frame the iretq loaded is gone: not checked"))
        top = mem.try_read_u64(rsp)
        done = self.injector and self.injector.after_landing(ev)
        regs_now = (rip, reg("cs"), reg("eflags"), rsp, reg("ss"))
        return self._feed(T.IretStop(cpu, ipslot, regs_now, top, (done,) if done else (), after_iret=True))

    def _before_iret(self, cpu: int, ev) -> bool:
        """In the exit path, before the iretq: the frame in pt_regs is what it will load (POP_REGS
        and the iretq write none of it) and the word at its sp what the vCPU will find at [rsp]:
        the landing, as the breakpoint engine reads it at the iretq."""
        self.watch_stats.landing_stops += 1
        ipslot, frame, gap = self._frame_and_gap(ev)
        if not W.same_int3(ev.gap, gap):
            self.watch_stats.late_landings += 1
            return self._feed(T.LandingUnseenStop(cpu, "the frame above its pt_regs is another int3's when the "
                                                       "exit path was reported: not checked"))
        self.watch_stats.landings_before_iret += 1
        top = mem.try_read_u64(frame[IRET_FRAME.index("sp")])
        done = self.injector and self.injector.after_landing(ev)
        return self._feed(T.IretStop(cpu, ipslot, frame, top, (done,) if done else ()))

    def _frame_and_gap(self, ev) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        """One read from ev's regs->ip up: (its address, the iret frame in pt_regs, the gap above)."""
        ipslot = (ev.regs_addr + self._ip_off) & MASK64
        words = tuple(u64s(mem.read(ipslot, self.kinfo.pt_regs.size - self._ip_off + 8 * len(GAP_WORDS))))
        return ipslot, words[:len(IRET_FRAME)], words[-len(GAP_WORDS):]

    def stray_trap(self) -> bool:
        """A SIGTRAP gdb matched to no breakpoint of its own (a hit QEMU reported under an
        address no watchpoint has any more): read as a watchpoint stop. True when the checker
        runs the watch engine and the guest may go on."""
        if not self.watch:
            return False
        self.watch_stats.stray_traps += 1
        self.on_watch()
        return True

    def on_die_watch(self) -> bool:
        """oops_enter. An int3 the handler was seen to leave (its return) has its die follow-up;
        a kernel int3 the watch did not see enter (v6.0-v6.15 watch nr_entries, which a
        handler without a live batch does not read) is read here from die("int3", regs):
        die() is called for an int3 only when every handler returned 0."""
        cpu = vcpu_index()
        if not self._in_die():
            return False  # a hit QEMU reported late or under this address: not an oops
        if self.tracker.unhandled_event(cpu) is None:
            regs = self._die_int3_regs()
            if regs is not None:
                self.watch_stats.oops_int3s += 1
                entry = self._read_handler_entry(self.kinfo.handler_name, regs, seen_at="oops_enter")
                self._feed(entry)
                after = {"ip": entry.regs["ip"], "sp": entry.regs["sp"]}  # a handler returning 0 changed nothing
                self._feed(T.HandlerReturnStop(cpu, 0, 0, after))
                if self.kinfo.followups:
                    self._feed(T.KprobeReturnStop(cpu, 0, after["ip"]))
        return self._feed(T.DieStop(cpu))

    def _in_die(self) -> bool:
        frame = gdb.selected_frame()
        for _ in range(3):
            if frame is None:
                return False
            if frame.name() in kernel.DIE_STOPS:
                return True
            frame = frame.older()
        return False

    def _die_int3_regs(self) -> int | None:
        """pt_regs of the die("int3", regs, ...) this vCPU is in, None for another oops."""
        frame = gdb.selected_frame()
        for _ in range(8):
            frame = frame.older()
            if frame is None:
                return None
            if frame.name() == "die":
                try:
                    what = frame.read_var("str").string(length=8)
                    regs = int(frame.read_var("regs")) & MASK64
                except (gdb.error, ValueError, UnicodeDecodeError):
                    return None
                return regs if what == "int3" else None
        return None

    def _frames_from_stack(self) -> tuple[int, int] | None:
        """(pt_regs, handler %rsp) read off the stack (core.watch.find_frames): one read, no
        DWARF, no unwinder (without DWARF gdb's prologue analysis misreads the handler)."""
        rsp = reg("rsp")
        raw = mem.try_read(rsp, 8 * W.STACK_SCAN_WORDS)
        if raw is None:
            return None
        regs = self.kinfo.pt_regs
        return W.find_frames(tuple(u64s(raw)), rsp, self._w.returns, regs.size // 8,
                             regs.fields["ip"].offset // 8)

    def _in_handler(self) -> tuple[int, int] | None:
        """(pt_regs, %rsp at its first instruction) of the text-patch handler this vCPU is in
        (DWARF's `regs`, else %rdi; the caller's %rsp - 8), or None when the watched word was
        touched elsewhere."""
        if self.watch and not self.kinfo.dwarf:
            return self._frames_from_stack()
        frame = gdb.selected_frame()
        while frame is not None and frame.type() == gdb.INLINE_FRAME:
            frame = frame.older()
        if frame is None or frame.name() != self.kinfo.handler_name or frame.older() is None:
            return None
        try:
            regs = int(frame.read_var("regs")) & MASK64
        except (gdb.error, ValueError):
            regs = reg("rdi")
        return regs, (int(frame.older().read_register("rsp")) - 8) & MASK64

    def describe_engine(self) -> str:
        if not self.watch:
            return "breakpoints" + (f" (no watch engine here: {self.engine_note})" if self.engine_note else "")
        return (f"watch: a read watchpoint on {self.kinfo.watch_word()[0]}, then each int3's return slot "
                "and regs->cs; no breakpoint in kernel text but oops_enter")

    def close(self) -> None:
        """Undo injections, disarm, finish open events (INCOMPLETE), close the logs."""
        try:
            restored = self.injector.restore() if self.injector is not None else []
        except gdb.error as e:  # the target is gone: nothing left to restore
            restored = [f"not restored: {e}"]
        self.bps.delete_all()
        self.tracker.close()
        if self.log:
            self.log.meta(closed_at=time.time(), errors=self.errors, restored=restored,
                          engine=self.engine, watch=self.watch_stats.to_json() if self.watch else None,
                          stops={"hits": self.bps.hits, "real": self.bps.real_stops,
                                 "callback_s": round(self.bps.callback_s, 3),
                                 "reads": mem.stats["reads"], "read_s": round(mem.stats["read_s"], 3)},
                          injected=self.injector.describe() if self.injector else None,
                          stats=self.tracker.stats.to_json())
            self.log.close()
        if self.stops:
            self.stops.close()

    def _feed(self, stop) -> bool:
        if self.stops:
            self.stops.write(T.stop_to_json(stop))
        return self.tracker.feed(stop) or self.bps.out_of_date()

    def on_int3_entry(self) -> bool:
        rsp = reg("rsp")
        return self._feed(T.Int3EntryStop(vcpu_index(), rsp, tuple(u64s(mem.read(rsp, 8 * len(IRET_FRAME))))))

    def on_handler_entry(self, handler: str) -> bool:
        return self._feed(self._read_handler_entry(handler))

    def _read_handler_entry(self, handler: str, regs_addr: int | None = None,
                            rsp: int | None = None, seen_at: str = "") -> T.HandlerEntryStop:
        """pt_regs and what the handler decides by. seen_at: not at the handler (the event
        is read at oops_enter; no handler %rsp to pair a return with)."""
        k, inj, done = self.kinfo, self.injector, []
        regs_addr, size = reg("rdi") if regs_addr is None else regs_addr, k.pt_regs.size
        buf = mem.read(regs_addr, size + 8 * len(GAP_WORDS))
        regs = decode_struct(k.pt_regs, buf, 0, T.REGS_AT_ENTRY)
        site = (regs["ip"] - 1) & MASK64
        if inj is not None:
            done.append(inj.before_handler(site))
        site_bytes = mem.try_read(site, 8) or b""
        batch, ftrace = k.read_decision(handler, site)
        if inj is not None:
            inj.after_batch(batch)
        cpu = vcpu_index()
        top = mem.try_read_u64(regs["sp"]) if T.wants_stack_top(batch, site) else None
        return T.HandlerEntryStop(
            cpu, None if seen_at else reg("rsp") if rsp is None else rsp, regs_addr, regs, tuple(u64s(buf[size:])), site_bytes, batch,
            round(time.monotonic() - self.t0, 6), k.read_cpu_refs(cpu),
            top, tuple(i for i in done if i), ftrace, handler, seen_at)

    def on_handler_return(self) -> bool:
        cpu, rsp, rax, regs = vcpu_index(), reg("rsp"), reg("rax"), self.kinfo.pt_regs
        ev = self.tracker.open_event_for_return(cpu, rsp)
        if ev is None:
            return self._feed(T.HandlerReturnStop(cpu, rsp, rax))
        done = self.injector and self.injector.at_return(
            ev, T.handler_return_value(rax), regs.fields["ip"].offset, regs.fields["sp"].offset)
        after, pushed = self._read_after(ev)
        return self._feed(T.HandlerReturnStop(cpu, rsp, rax, after, pushed, (done,) if done else ()))

    def _read_after(self, ev) -> tuple[dict[str, int], int | None]:
        """What the handler left in ev's pt_regs (ip, sp), and the word at sp when sp moved."""
        regs = self.kinfo.pt_regs
        after = decode_struct(regs, mem.read(ev.regs_addr, regs.size), 0, ("ip", "sp"))
        return after, mem.try_read_u64(after["sp"]) if after["sp"] != ev.before["sp"] else None

    def on_iret(self) -> bool:
        """Our iretq: the frame it loads is the landing (no stepi stop); other frames: nothing read."""
        cpu, rsp = vcpu_index(), reg("rsp")
        ev = self.tracker.iret_is_ours(cpu, rsp)
        if ev is None:
            return self._feed(T.IretStop(cpu, rsp))
        frame = tuple(u64s(mem.read(rsp, 8 * len(IRET_FRAME))))
        top = mem.try_read_u64(frame[IRET_FRAME.index("sp")])
        done = self.injector and self.injector.after_landing(ev)  # after [sp] was read
        return self._feed(T.IretStop(cpu, rsp, frame, top, (done,) if done else ()))

    def on_kprobe_return(self) -> bool:
        cpu = vcpu_index()
        ev = self.tracker.unhandled_event(cpu)
        ip = mem.read_u64(ev.regs_addr + self.kinfo.pt_regs.fields["ip"].offset) if ev is not None else None
        return self._feed(T.KprobeReturnStop(cpu, reg("rax"), ip))

    def _finished(self, ev) -> None:
        self._entry_rip.pop(ev.seq, None)
        symbols.name_event(ev)
        if self.log:
            self.log.event(ev)
        for fn in self.listeners:
            fn(ev)
        if self.echo:
            gdb.write(f"[ftrace-int3] {report.event_line(ev)}\n")


active: Checker | None = None  # the one `ftrace-int3 arm` made; runner.run sets it too
