"""`ftrace-int3 run`'s one status line: int3s, verdict counts, the last site, redrawn in
place (at most every 0.3 s) on a terminal, silent otherwise. Pure: the gdb layer gives
it where to draw (gdb_layer/interactive.py)."""

from __future__ import annotations

import collections
import time
from typing import Callable

from .verdict import verdict_class


class StatusLine:
    def __init__(self, listeners: list, on: bool, draw: Callable[[str], None],
                 clear: Callable[[str], None]) -> None:
        self.listeners, self.on, self.draw, self.clear = listeners, on, draw, clear
        self.last, self.shown = 0.0, False
        self.counts: collections.Counter = collections.Counter()
        self.site = ""
        listeners.append(self.event)

    def text(self) -> str:
        n = sum(self.counts.values())
        parts = [f"{n} int3s"] + [f"{k} {v}" for k, v in (("verified", self.counts["verified"]),
                                                            ("failed", self.counts["failed"]),
                                                            ("missed", self.counts["missed"]),
                                                            ("other", self.counts["other"])) if v or k == "verified"]
        return "[ftrace-int3] " + ", ".join(parts) + (f" | last {self.site}" if self.site else "")

    def event(self, ev) -> None:
        self.counts[verdict_class(ev.verdict)] += 1
        self.site = f"{ev.site_sym or hex(ev.site)} {ev.expected.kind if ev.expected else '-'} {ev.verdict}"
        now = time.monotonic()
        if self.on and now - self.last >= 0.3:
            self.last, self.shown = now, True
            self.draw("\r\033[K" + self.text())

    def close(self) -> None:
        """Stop listening (the listener is the bound method self.event) and wipe the line."""
        if self.event in self.listeners:
            self.listeners.remove(self.event)
        if self.on and self.shown:
            self.clear("\r\033[K")
