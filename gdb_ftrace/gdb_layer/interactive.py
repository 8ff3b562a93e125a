"""What an interactive session sees: no output from the checker's own stops, one
status line (core/status.py) that updates while `ftrace-int3 run` runs, pygments colours."""

from __future__ import annotations

import os
import sys

import gdb

from ..core import style
from ..core.status import StatusLine


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


def status_line(checker, on: bool) -> StatusLine:
    """The status line of `ftrace-int3 run` on this checker. It draws straight to the
    terminal: events finish inside a breakpoint's stop(), that is inside the driver's
    `continue` (to_string), which would swallow a gdb.write."""
    def clear(text: str) -> None:
        gdb.write(text)
        gdb.flush()
    return StatusLine(checker.listeners, on, lambda text: os.write(1, text.encode()), clear)


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
