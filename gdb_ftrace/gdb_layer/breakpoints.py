"""The checker's points in the guest: gdb breakpoints and read watchpoints, put in and
taken out to match the set the engine wants (core.engine.Point).

A point's stop() calls the checker with the point's name and returns its
answer: False lets the guest run on, True makes a real stop (the engine now
wants other points: gdb forbids changing breakpoints inside stop(), so the
driver loop calls sync() at the real stop). An exception in a callback (a
checker bug) never stops the guest: it is kept in `errors` and printed.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from typing import Callable

import gdb

from . import mem

MAX_ERRORS = 50


class _Bp(gdb.Breakpoint):
    def __init__(self, point, callback: Callable[[], bool]) -> None:
        if point.kind in ("read", "write"):  # QEMU stops after the access: no translation-cache flush
            kind = {1: "char", 4: "int", 8: "long"}[point.size]
            super().__init__(f"*(unsigned {kind} *){point.addr:#x}", type=gdb.BP_WATCHPOINT,
                             wp_class=gdb.WP_READ if point.kind == "read" else gdb.WP_WRITE, internal=True)
        else:
            super().__init__(f"*{point.addr:#x}", type=gdb.BP_BREAKPOINT, internal=True)
        self.silent, self._callback = True, callback

    def stop(self) -> bool:
        return bool(self._callback())


def post_interrupt() -> None:
    """Interrupt the guest from any thread (gdb's `interrupt`, run in gdb's own thread)."""
    def fire() -> None:
        try:
            gdb.execute("interrupt", to_string=True)
        except gdb.error:
            pass
    gdb.post_event(fire)


class _RunOnly:
    """A "run" point (a hold, core/hold.py): only vCPU point.addr runs, the others stay
    stopped. gdb's scheduler-locking resumes only the selected thread (vCont;c:p1.N);
    QEMU is told that thread is its continue thread too (Hc), or an interrupt reports the
    held vCPU, which gdb thinks was never resumed (an internal error in gdb 13). From
    point.size ms on, gdb is interrupted every 0.1 s (one that lands in a step-over is
    dropped) and each interrupt is the engine's "hold-tick" stop."""

    def __init__(self, point, bps: "BreakpointSet") -> None:
        self.bps, self.live = bps, True
        thread = next(t for t in gdb.selected_inferior().threads() if t.num - 1 == point.addr)
        thread.switch()
        gdb.execute(f"maint packet Hcp{thread.ptid[0]:x}.{thread.ptid[1]:x}", to_string=True)
        gdb.execute("set scheduler-locking on", to_string=True)
        self._timer(point.size / 1000.0)

    def _timer(self, delay: float) -> None:
        self.t = threading.Timer(delay, self._fire)
        self.t.daemon = True
        self.t.start()

    def _fire(self) -> None:  # the timer's thread
        if self.live:
            gdb.post_event(self._interrupt)
            self._timer(0.1)

    def _interrupt(self) -> None:  # gdb's thread: the stop it makes is a tick even if the hold ends first
        try:
            if self.live and gdb.selected_thread().is_running():
                self.bps.tick = True
                gdb.execute("interrupt", to_string=True)
        except gdb.error:
            pass

    def is_valid(self) -> bool:
        return self.live

    def delete(self) -> None:
        self.live = False
        self.t.cancel()
        gdb.execute("set scheduler-locking replay", to_string=True)


class BreakpointSet:
    def __init__(self, on_stop: Callable[[str], bool]) -> None:
        self.on_stop = on_stop  # on_stop(point name) -> True when the points are out of date
        self.errors: list[str] = []
        self.halt = False  # set from another thread: the next hit becomes a real stop, read nothing
        self.interrupted = False  # Ctrl-C (SIGINT) arrived inside a callback: that hit became a real stop
        self.hits = 0  # stop() calls: every stop of ours
        self.real_stops = 0  # of those, the ones that stopped for real (to switch points)
        self.callback_s = 0.0  # time in the callbacks (reading the guest, the engine): the checker's own part
        self._in: dict = {}  # Point -> _Bp in the guest
        self._parked: dict = {}  # breakpoints taken out, kept disabled: enabling one is cheaper than a new one
        self.tick = False  # a hold's time bound interrupted gdb and its SIGINT stop is not seen yet

    @property
    def current(self) -> frozenset:
        return frozenset(self._in)

    def __bool__(self) -> bool:
        return bool(self._in or self._parked)

    def _guard(self, at: str) -> Callable[[], bool]:
        def run() -> bool:
            if self.halt:
                return True
            t0 = time.perf_counter()
            mem.in_callback[0] = True
            try:
                real = self.on_stop(at)
                self.real_stops += bool(real)
                return real
            except KeyboardInterrupt:  # the user's Ctrl-C must end the run, not vanish here
                self.interrupted = True
                return True
            except Exception as e:  # noqa: BLE001 - a checker bug must not stop the guest
                if len(self.errors) < MAX_ERRORS:
                    self.errors.append(f"{type(e).__name__}: {e}")
                    traceback.print_exc(file=sys.stderr)
                return False
            finally:
                mem.in_callback[0] = False
                self.hits += 1
                self.callback_s += time.perf_counter() - t0
        return run

    def sync(self, wanted: frozenset) -> bool:
        """Put in the wanted points that are not in, take out the others; True when one changed."""
        drop = [p for p in self._in if p not in wanted]
        add = [p for p in wanted if p not in self._in]
        for p in drop:
            bp = self._in.pop(p)
            if not bp.is_valid():
                continue
            if p.kind == "break":
                bp.enabled = False
                self._parked[p] = bp
            else:
                bp.delete()
        for p in add:
            bp = self._parked.pop(p, None)
            if bp is not None and bp.is_valid():
                bp.enabled = True
            elif p.kind == "run":
                bp = _RunOnly(p, self)
            else:
                bp = _Bp(p, self._guard(p.at))
            self._in[p] = bp
        return bool(drop or add)

    def delete_all(self) -> None:
        for bp in list(self._in.values()) + list(self._parked.values()):
            if bp.is_valid():
                bp.delete()
        self._in.clear()
        self._parked.clear()
