"""The checker's internal breakpoints, some of which come and go.

A breakpoint's stop() runs a callback and returns its result: False lets
the guest run on, True makes a real stop. An exception in a callback (a
checker bug) never stops the guest: it is kept in `errors` and printed. A switched breakpoint is enabled
only while its `wanted()` says so; gdb forbids changing breakpoints inside
stop(), so a callback returns True when one is out of date and the driver
loop calls sync() at the real stop.
"""

from __future__ import annotations

import sys
import time
import traceback
from typing import Callable

import gdb

MAX_ERRORS = 50


class _Bp(gdb.Breakpoint):
    def __init__(self, addr: int, callback: Callable[[], bool], enabled: bool, watch: int = 0,
                 read_only: bool = False) -> None:
        if watch:  # a watchpoint on `watch` bytes: QEMU stops after the access, no cache flush
            kind = {4: "int", 8: "long"}[watch]
            super().__init__(f"*(unsigned {kind} *){addr:#x}", type=gdb.BP_WATCHPOINT,
                             wp_class=gdb.WP_READ if read_only else gdb.WP_ACCESS, internal=True)
        else:
            super().__init__(f"*{addr:#x}", type=gdb.BP_BREAKPOINT, internal=True)
        self.silent, self.enabled, self._callback = True, enabled, callback

    def stop(self) -> bool:
        return bool(self._callback())


class BreakpointSet:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.halt = False  # set from another thread: the next hit becomes a real stop, read nothing
        self.interrupted = False  # Ctrl-C (SIGINT) arrived inside a callback: that hit became a real stop
        self.hits = 0  # stop() calls: every stop of ours
        self.real_stops = 0  # of those, the ones that stopped for real (to switch breakpoints)
        self.callback_s = 0.0  # time in the callbacks (reading the guest, the tracker): the checker's own part
        self._all: list[_Bp] = []
        self._switched: list[tuple[_Bp, Callable[[], bool]]] = []
        # Read watchpoints that come and go with the guest's state: wanted() -> {addr: callback}
        self._dynamic_wanted: Callable[[], dict[int, Callable[[], bool]]] | None = None
        self._dynamic: dict[int, _Bp] = {}

    def _guard(self, fn: Callable[[], bool]) -> Callable[[], bool]:
        def run() -> bool:
            if self.halt:
                return True
            t0 = time.perf_counter()
            try:
                real = fn()
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
                self.hits += 1
                self.callback_s += time.perf_counter() - t0
        return run

    def add(self, addr: int, callback: Callable[[], bool], wanted: Callable[[], bool] | None = None,
            watch: int = 0, read_only: bool = False) -> None:
        bp = _Bp(addr, self._guard(callback), enabled=wanted() if wanted else True, watch=watch,
                 read_only=read_only)
        self._all.append(bp)
        if wanted is not None:
            self._switched.append((bp, wanted))

    def dynamic(self, wanted: Callable[[], dict[int, Callable[[], bool]]]) -> None:
        """8-byte read watchpoints at the addresses wanted() names (each with its callback),
        put in and taken out by sync()."""
        self._dynamic_wanted = wanted

    def _dynamic_changes(self) -> tuple[dict[int, Callable[[], bool]], list[int]]:
        if self._dynamic_wanted is None:
            return {}, []
        want = self._dynamic_wanted()
        return ({a: cb for a, cb in want.items() if a not in self._dynamic},
                [a for a in self._dynamic if a not in want])

    def __bool__(self) -> bool:
        return bool(self._all)

    def delete_all(self) -> None:
        for bp in self._all + list(self._dynamic.values()):
            if bp.is_valid():
                bp.delete()
        self._all.clear()
        self._dynamic.clear()
        self._dynamic_wanted = None
        self._switched.clear()

    def out_of_date(self) -> bool:
        add, drop = self._dynamic_changes()
        return bool(add or drop) or any(bp.enabled != wanted() for bp, wanted in self._switched)

    def sync(self) -> bool:
        """Enable/disable the switched breakpoints as wanted; True when one changed."""
        changed = [bp for bp, wanted in self._switched if bp.is_valid() and bp.enabled != wanted()]
        for bp in changed:
            bp.enabled = not bp.enabled
        add, drop = self._dynamic_changes()
        for a in drop:
            bp = self._dynamic.pop(a)
            if bp.is_valid():
                bp.delete()
        for a, cb in add.items():
            self._dynamic[a] = _Bp(a, self._guard(cb), True, watch=8, read_only=True)
        return bool(changed or add or drop)
