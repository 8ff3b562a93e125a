"""What an interactive session sees: no output from the checker's own stops, one
status line that updates while `ftrace-int3 run` runs, pygments colours."""

from __future__ import annotations

import collections
import os
import sys
import time

import gdb

from ..core import style
from ..core.verdict import verdict_class


def _param(name: str):
    try:
        return gdb.parameter(name)
    except (gdb.error, RuntimeError):
        return None


def terminal() -> bool:
    """gdb's own output is a terminal and its styling is on."""
    try:
        tty = os.isatty(sys.__stdout__.fileno())
    except (AttributeError, ValueError, OSError):
        tty = False
    return tty and bool(_param("style enabled"))


class StatusLine:
    """`ftrace-int3 run`'s one line: int3s, verdict counts, the last site; redrawn in
    place (at most every 0.3 s) on a terminal, silent otherwise."""

    def __init__(self, checker, on: bool) -> None:
        self.c, self.on, self.last, self.shown = checker, on, 0.0, False
        self.counts: collections.Counter = collections.Counter()
        self.site = ""
        checker.listeners.append(self.event)

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
            # Straight to the terminal: events now finish inside a breakpoint's stop(), that is
            # inside the driver's `continue` (to_string), which would swallow a gdb.write.
            os.write(1, ("\r\033[K" + self.text()).encode())

    def close(self) -> None:
        if self in getattr(self.c, "listeners", []):
            self.c.listeners.remove(self.event)
        if self.on and self.shown:
            gdb.write("\r\033[K")
            gdb.flush()


def highlighter():
    """A function colouring one line of AT&T assembly with pygments, or None."""
    if not (terminal() and style.enabled()):
        return None
    try:
        from pygments import highlight
        from pygments.formatters import TerminalFormatter
        from pygments.lexers import GasLexer
    except ImportError:
        return None
    lexer, fmt = GasLexer(), TerminalFormatter()
    return lambda text: highlight(text, lexer, fmt).rstrip("\n")
