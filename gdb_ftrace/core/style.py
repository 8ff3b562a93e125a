"""A tiny semantic palette (ok / fail / warn / hint) with one switch.

Colour is on only when the output is a terminal and neither NO_COLOR nor
FTRACE_INT3_NO_COLOR is set; the gdb layer also turns it off when gdb's
`set style enabled off` is in force. Uses pygments' console colours.
"""

from __future__ import annotations

import os

_enabled = False

_PALETTE = {"ok": "green", "fail": "red", "warn": "yellow", "hint": "cyan", "bold": "bold"}


def set_enabled(on: bool) -> None:
    global _enabled
    _enabled = bool(on) and not os.environ.get("NO_COLOR") and not os.environ.get("FTRACE_INT3_NO_COLOR")


def enabled() -> bool:
    return _enabled


def paint(role: str, text: str) -> str:
    if not _enabled:
        return text
    from pygments.console import colorize

    return colorize(_PALETTE[role], text)


def verdict_role(verdict_class: str) -> str:
    return {"verified": "ok", "failed": "fail", "missed": "fail", "other": "hint"}.get(verdict_class, "bold")
