"""The Guest the engines ask (core/facts.Guest), answered by gdb: one raw observation per
call, no decision. A memory read is one gdbstub round trip (mem.py counts them)."""

from __future__ import annotations

import time

import gdb

from ..core.insn import MASK64
from . import mem, symbols


class GdbGuest:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self._ncpus = 0

    def cpu(self) -> int:
        return mem.vcpu_index()

    def ncpus(self) -> int:
        """QEMU's vCPUs, asked once: Inferior.threads() is three gdbstub round trips."""
        if not self._ncpus:
            self._ncpus = len(gdb.selected_inferior().threads())
        return self._ncpus

    def reg(self, name: str) -> int:
        return mem.reg(name)

    def read(self, addr: int, n: int) -> bytes | None:
        return mem.try_read(addr, n)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def handler_frame(self):
        frame = gdb.selected_frame()
        while frame is not None and frame.type() == gdb.INLINE_FRAME:
            frame = frame.older()
        if frame is None:
            return None
        try:
            regs = int(frame.read_var("regs")) & MASK64
        except (gdb.error, ValueError):
            regs = None
        older = frame.older()
        return frame.name() or "", regs, (int(older.read_register("rsp")) & MASK64) if older is not None else None

    def frame_names(self, depth: int) -> list[str]:
        out, frame = [], gdb.selected_frame()
        while frame is not None and len(out) < depth:
            out.append(frame.name() or "")
            frame = frame.older()
        return out

    def die_args(self, depth: int):
        frame = gdb.selected_frame()
        for _ in range(depth):
            frame = frame.older()
            if frame is None:
                return None
            if frame.name() == "die":
                try:
                    return frame.read_var("str").string(length=8), int(frame.read_var("regs")) & MASK64
                except (gdb.error, ValueError, UnicodeDecodeError):
                    return None
        return None

    def is_ftrace_location(self, site: int) -> bool:
        return symbols.is_ftrace_location(site)

    def site_kind(self, site: int) -> str:
        return symbols.site_kind(site, "")

    def write(self, addr: int, data: bytes) -> None:
        mem.write(addr, data)


def tools() -> dict:
    """What runs the check, for the event log's meta record: gdb's version, its Python's,
    and what the stub says it is (QEMU: `monitor info version`; '' where it cannot say)."""
    import platform
    try:
        stub = gdb.execute("monitor info version", to_string=True).strip()
    except gdb.error:
        stub = ""
    return {"gdb": gdb.VERSION, "python": platform.python_version(), "qemu": stub}
