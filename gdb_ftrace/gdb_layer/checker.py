"""The checker's reader: each gdb stop read into one core.tracker record.

Where it stops is the CheckMode's (core/mode.py); how stops pair into
events is core/tracker.py's. Here: read the guest in bulk at each stop (a
read is one gdbstub round trip), apply fault injection at its fixed points,
name finished events, write the logs. The landing is read from the frame our
iretq loads (on_iret). Real stops happen only where breakpoints must be
switched (the iretq's, the gate's): the driver loop (runner.drive) syncs them.
"""

from __future__ import annotations

import functools
import time

import gdb

from ..core import gate as gate_mod
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
                 sample: int = 0, inject: str | None = None, stops_path: str | None = None,
                 gate: bool = False) -> None:
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
        # The hot breakpoints only while the kernel patches (core/gate.py); None: always in.
        self.gate = gate_mod.Gate() if gate and not k.no_gate else None
        self.no_gate = "off (experimental: --gate, GATE=1)" if not gate else k.no_gate
        self.bps = BreakpointSet()  # bps.errors: exceptions in the stop callbacks (checker bugs)
        self.listeners: list = []  # called with each finished event (the interactive status line)

    events = property(lambda self: self.tracker.events)
    armed = property(lambda self: bool(self.bps))
    errors = property(lambda self: self.bps.errors)

    def arm(self) -> None:
        k, add, t, g = self.kinfo, self.bps.add, self.tracker, self.gate

        def hot(wanted=None):
            """In the guest only while the gate is armed (always without a gate)."""
            if g is None:
                return wanted
            return lambda: g.armed and (wanted is None or wanted())

        if g is not None:
            owner = self._text_mutex_owner()
            if owner is not None and gate_mod.mutex_held(owner):
                g.triggered(time.monotonic())  # armed in the middle of a patching burst
            size = k.gate_word()[1]
            for addr in k.gate_watch(len(gdb.selected_inferior().threads())):
                add(addr, functools.partial(self.on_gate_word, addr, size), lambda: not g.armed, watch=size)
        if self.mode.stops_at_int3_entry:
            add(k.int3_entry, self.on_int3_entry, hot(t.wants_int3_entry_stops))
        for name, addr in k.handlers:
            add(addr, functools.partial(self.on_handler_entry, name), hot())
        for ret, on in [(r, self.on_handler_return) for _, r in k.returns] + \
                [(r, self.on_kprobe_return) for _, r in k.followups]:
            add(ret, on, hot())
        if k.die:
            add(k.die, lambda: self._feed(T.DieStop(vcpu_index())), hot())
        if self.mode.follows_landing:
            add(k.iret, self.on_iret, hot(t.wants_iret_stops))

    # -- the gate (core/gate.py) ------------------------------------------------
    def on_gate_word(self, addr: int, size: int) -> bool:
        """The gate's watchpoint, disarmed. The word is non-zero when a batch has just started;
        zero when the handler read it for an int3 that no batch covers (a late or stale one, a
        kprobe's): that one is read here as its handler entry (pt_regs is unchanged so far).
        Either way arm: a real stop, where the driver switches the breakpoints in, so the
        batch's int3s, or this int3's return, kprobe and die follow-ups, are seen."""
        raw = mem.try_read(addr, size)
        if raw is None or not int.from_bytes(raw, "little"):
            where = self._in_handler()
            if where is None:
                return False
            self.gate.stats.unarmed_int3s += 1
            self._feed(self._read_handler_entry(self.kinfo.handler_name, *where))
        self.gate.triggered(time.monotonic())
        return True

    def _in_handler(self) -> tuple[int, int] | None:
        """(pt_regs, %rsp at its first instruction) of the text-patch handler this vCPU is in
        (DWARF's `regs`, else %rdi; the caller's %rsp - 8), or None when the watched word was
        touched elsewhere."""
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

    def gate_describe(self) -> str:
        if self.gate is None:
            return f"none, the handler's breakpoints stay in: {self.no_gate}"
        return (f"an access watchpoint on {self.kinfo.gate_word()[0]} puts the handler's breakpoints in "
                "when a batch starts; they come out once text_mutex is free")

    def at_gate_stop(self) -> None:
        """The driver stopped the guest for the gate: disarm unless the kernel is patching."""
        t = self.tracker
        self.gate.at_interrupt_stop(time.monotonic(), self._text_mutex_owner(), len(t.open_events()),
                                    t.landings_pending())
        self.bps.sync()

    def _text_mutex_owner(self) -> int | None:
        """text_mutex.owner (core.gate.mutex_held), None without the symbol or the read."""
        return mem.try_read_u64(self.kinfo.text_mutex) if self.kinfo.text_mutex else None
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
                          gate=self.gate.stats.to_json() if self.gate else {"off": self.no_gate},
                          injected=self.injector.describe() if self.injector else None,
                          stats=self.tracker.stats.to_json())
            self.log.close()
        if self.stops:
            self.stops.close()

    def _feed(self, stop) -> bool:
        if self.gate is not None:
            self.gate.stopped(time.monotonic())
        if self.stops:
            self.stops.write(T.stop_to_json(stop))
        return self.tracker.feed(stop) or self.bps.out_of_date()

    def on_int3_entry(self) -> bool:
        rsp = reg("rsp")
        return self._feed(T.Int3EntryStop(vcpu_index(), rsp, tuple(u64s(mem.read(rsp, 8 * len(IRET_FRAME))))))

    def on_handler_entry(self, handler: str) -> bool:
        return self._feed(self._read_handler_entry(handler))

    def _read_handler_entry(self, handler: str, regs_addr: int | None = None,
                            rsp: int | None = None) -> T.HandlerEntryStop:
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
            cpu, reg("rsp") if rsp is None else rsp, regs_addr, regs, tuple(u64s(buf[size:])), site_bytes, batch,
            round(time.monotonic() - self.t0, 6), k.read_cpu_refs(cpu),
            top, tuple(i for i in done if i), ftrace, handler)

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

    def _finished(self, ev) -> None:
        symbols.name_event(ev)
        if self.log:
            self.log.event(ev)
        for fn in self.listeners:
            fn(ev)
        if self.echo:
            gdb.write(f"[ftrace-int3] {report.event_line(ev)}\n")


active: Checker | None = None  # the one `ftrace-int3 arm` made; runner.run sets it too
