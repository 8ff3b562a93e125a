"""The checker's reader: each gdb stop read into one core.tracker record.

Where it stops is the CheckMode's (core/mode.py); how stops pair into
events is core/tracker.py's. Here: read the guest in bulk at each stop (a
read is one gdbstub round trip), apply fault injection at its fixed points,
name finished events, write the logs. The landing is read from the frame our
iretq loads (on_iret); land() steps an iretq only when replaying a recording
that has no frame, or for a tracker that asks (step_pending).
"""

from __future__ import annotations

import dataclasses
import functools
import time

import gdb

from ..core import report
from ..core import tracker as T
from ..core.eventlog import EventLog, JsonLines
from ..core.insn import MASK64
from ..core.layout import GAP_WORDS, decode_struct, u64s
from ..core.mode import CheckMode
from ..core.verdict import IRET_FRAME
from . import kernel, mem, symbols
from .breakpoints import BreakpointSet
from .inject import Injector
from .mem import reg, vcpu_index


class Checker:
    def __init__(self, mode: CheckMode, json_path: str | None = None, echo: bool = False,
                 sample: int = 0, inject: str | None = None, stops_path: str | None = None) -> None:
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
        self.bps = BreakpointSet()  # bps.errors: exceptions in the stop callbacks (checker bugs)
        self.listeners: list = []  # called with each finished event (the interactive status line)

    events = property(lambda self: self.tracker.events)
    armed = property(lambda self: bool(self.bps))
    errors = property(lambda self: self.bps.errors)

    def arm(self) -> None:
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
        k, inj, done = self.kinfo, self.injector, []
        regs_addr, size = reg("rdi"), k.pt_regs.size
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
        return self._feed(T.HandlerEntryStop(
            cpu, reg("rsp"), regs_addr, regs, tuple(u64s(buf[size:])), site_bytes, batch,
            round(time.monotonic() - self.t0, 6), k.read_cpu_refs(cpu),
            top, tuple(i for i in done if i), ftrace, handler))

    def on_handler_return(self) -> bool:
        cpu, rsp, rax, regs = vcpu_index(), reg("rsp"), reg("rax"), self.kinfo.pt_regs
        ev = self.tracker.open_event_for_return(cpu, rsp)
        if ev is None:
            return self._feed(T.HandlerReturnStop(cpu, rsp, rax))
        done = self.injector and self.injector.at_return(
            ev, T.handler_return_value(rax), regs.fields["ip"].offset, regs.fields["sp"].offset)
        after = decode_struct(regs, mem.read(ev.regs_addr, regs.size), 0, ("ip", "sp"))
        pushed = mem.try_read_u64(after["sp"]) if after["sp"] != ev.before["sp"] else None
        return self._feed(T.HandlerReturnStop(cpu, rsp, rax, after, pushed, (done,) if done else ()))

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

    def land(self) -> None:
        """Called by the driver loop, stopped at our iretq: step it and record the landing."""
        ev = self.tracker.step_pending
        if ev is None:
            return
        try:
            # Silently: gdb 13 prints the frame of a CLI `thread N` and `stepi` even under
            # to_string (hundreds of lines in an interactive `run`); the Python thread switch
            # and the MI step print nothing. scheduler-locking step applies to both.
            if vcpu_index() != ev.cpu:
                next(t for t in gdb.selected_inferior().threads() if t.num == ev.cpu + 1).switch()
            gdb.execute('interpreter-exec mi "-exec-step-instruction"', to_string=True)
            stop = T.LandingStop(ev.cpu, reg("rip"), reg("rsp"), mem.try_read_u64(reg("rsp")))
        except (gdb.error, StopIteration) as e:
            stop = T.LandingStop(ev.cpu, error=str(e) or f"no thread {ev.cpu + 1}")
        done = self.injector and self.injector.after_landing(ev)
        self._feed(dataclasses.replace(stop, injected=(done,)) if done else stop)
        self.bps.sync()

    def _finished(self, ev) -> None:
        symbols.name_event(ev)
        if self.log:
            self.log.event(ev)
        for fn in self.listeners:
            fn(ev)
        if self.echo:
            gdb.write(f"[ftrace-int3] {report.event_line(ev)}\n")


active: Checker | None = None  # the one `ftrace-int3 arm` made; runner.run sets it too
