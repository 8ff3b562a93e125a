"""The checker in gdb: puts the engine's points in, answers its questions, writes the logs.

Every decision is the engine's (core/engine.py, core/watch.py, core/bpengine.py):
which stop a hit is, what to read, how stops pair, what to watch next. A hit calls
engine.stop(point name, guest), guest.py answers from gdb, and the points the engine
then wants go in at the next real stop (runner.drive). With --stops every question
and answer is written to a stream that core.engine.replay() runs without gdb.
"""

from __future__ import annotations

import time

import gdb

from ..core import engine as E
from ..core import inject as I
from ..core import report
from ..core import tracker as T
from ..core.eventlog import EventLog, JsonLines
from ..core.mode import CheckMode
from . import kernel, mem, symbols
from .breakpoints import BreakpointSet
from .guest import GdbGuest


class Checker:
    def __init__(self, mode: CheckMode, log: EventLog | None = None, echo: bool = False, sample: int = 0,
                 inject: str | None = None, stops_path: str | None = None, engine: str = E.DEFAULT.value,
                 hold: "E.HoldConfig | None" = None) -> None:
        self.kinfo = k = kernel.info()
        self.facts = f = k.facts()
        self.engine_kind, self.engine_note = E.resolve(engine, f)
        E.require(f, mode, self.engine_kind)
        self.mode, self.echo, self.log = mode, echo, log
        self.listeners: list = []  # called with each finished event (the interactive status line)
        self.tracker = T.Tracker(mode, sample, f.handler_name, on_event=self._finished,
                                 on_open=log and log.handler_entry, on_followup=log and log.followup)
        self.guest = GdbGuest()
        self.rec = E.Recorder(self.guest) if stops_path else None
        self.engine, self.hold = E.make(f, mode, self.engine_kind, self.tracker, hold=hold), hold
        self.bps = BreakpointSet(self.stop)  # bps.errors: exceptions in the stop callbacks (checker bugs)
        self.stops = JsonLines(stops_path) if stops_path else None
        self._n, self._wants = 0, None
        self.set_injection(inject, header=True)
        if log:
            from . import guest, slide

            log.meta(kernel=k.to_json(), tools=guest.tools(), armed_at=time.time(), mode=mode.value, sample=sample, inject=inject,
                     engine=self.engine_kind.value, engine_note=self.engine_note,
                     slide=slide.located.to_json() if slide.located else None)

    events = property(lambda self: self.tracker.events)
    armed = property(lambda self: bool(self.bps))
    errors = property(lambda self: self.bps.errors)
    injector = property(lambda self: self.engine.injector)
    watch = property(lambda self: self.engine_kind is E.Engine.WATCH)

    def set_injection(self, mode: str | None, header: bool = False) -> list[str]:
        """Start injecting `mode` (None: stop); what the previous injection restored."""
        old, gap = self.engine.injector, self.kinfo.gap_patch(mode)
        restored = old.restore(self.rec or self.guest, (gdb.error,)) if old is not None else []
        self.engine.injector = I.Injector(mode, gap) if mode else None
        if self.stops and header:
            self.stops.write(E.header(self.facts, self.mode, self.engine_kind, self.tracker.sample, mode, gap, self.hold))
        elif self.stops:
            self.stops.write({"at": "inject", "mode": mode, "gap_patch": E.gap_patch_to_json(gap),
                              "calls": self.rec.take()})
        return restored

    def _record(self, at: str) -> None:
        self._n += 1
        rec = {"at": at, "n": self._n, "calls": self.rec.take()}
        want = sorted(self.engine.wants())
        if want != self._wants:
            rec["wants"] = self._wants = want
        self.stops.write(rec)

    def arm(self) -> None:
        self.engine.arm(self.rec or self.guest)
        if self.stops:
            self._record("arm")
        self.sync()

    def stop(self, at: str) -> bool:
        """A point of ours fired: the engine's turn. True: its points are out of date (a real stop)."""
        self.engine.stop(at, self.rec or self.guest)
        if self.stops:
            self._record(at)
        return self.engine.wants() != self.bps.current

    def sync(self) -> bool:
        return self.bps.sync(self.engine.wants())

    def stray_trap(self) -> bool:
        """A SIGTRAP gdb matched to no point: the watch engine reads it as a watchpoint stop."""
        if not self.watch:
            return False
        self.stop("stray")
        return True

    def describe_engine(self) -> str:
        return E.describe(self.engine_kind, self.facts, self.engine_note)

    def close(self) -> None:
        """Undo injections, disarm, finish open events (INCOMPLETE), close the logs."""
        g = self.rec or self.guest
        try:
            restored = self.engine.injector.restore(g, (gdb.error,)) if self.engine.injector is not None else []
        except gdb.error as e:  # the target is gone: nothing left to restore
            restored = [f"not restored: {e}"]
        if self.engine.hold is not None:
            self.engine.hold.close(g)
        if self.stops:
            self._record("close")
        self.bps.delete_all()
        self.tracker.close()
        if self.log:
            inj = self.engine.injector
            self.log.meta(closed_at=time.time(), errors=self.errors, restored=restored,
                          engine=self.engine_kind.value, engine_stats=self.engine.stats(),
                          stops={"hits": self.bps.hits, "real": self.bps.real_stops,
                                 "callback_s": round(self.bps.callback_s, 3),
                                 "reads": mem.stats["reads"], "read_s": round(mem.stats["read_s"], 3)},
                          injected=inj.describe() if inj else None, stats=self.tracker.stats.to_json(),
                          coverage=symbols.name_coverage(self.engine.coverage()))
            self.log.close()
        if self.stops:
            self.stops.close()

    def _finished(self, ev) -> None:
        symbols.name_event(ev)
        if self.log:
            self.log.event(ev)
        for fn in self.listeners:
            fn(ev)
        if self.echo:
            gdb.write(f"[ftrace-int3] {report.event_line(ev)}\n")


active: Checker | None = None  # the one `ftrace-int3 arm` made; runner.run sets it too
