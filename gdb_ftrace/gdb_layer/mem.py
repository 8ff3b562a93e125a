"""Guest memory and registers. A memory read is one gdbstub round trip: read whole structs."""

from __future__ import annotations

import time

import gdb

from ..core.insn import MASK64

# Guest reads so far and the time they took: each is one remote round trip (make bench's breakdown).
stats = {"reads": 0, "read_s": 0.0}


def read(addr: int, n: int) -> bytes:
    """n bytes at addr; raises gdb.MemoryError when unmapped."""
    t0 = time.perf_counter()
    try:
        return bytes(gdb.selected_inferior().read_memory(addr, n))
    finally:
        stats["reads"] += 1
        stats["read_s"] += time.perf_counter() - t0


def read_u64(addr: int) -> int:
    return int.from_bytes(read(addr, 8), "little")


def read_s32(addr: int) -> int:
    return int.from_bytes(read(addr, 4), "little", signed=True)


def try_read(addr: int, n: int) -> bytes | None:
    try:
        return read(addr, n)
    except gdb.MemoryError:
        return None


def try_read_u64(addr: int) -> int | None:
    """The word at addr, or None when unmapped."""
    raw = try_read(addr, 8)
    return int.from_bytes(raw, "little") if raw is not None else None


def write(addr: int, data: bytes) -> None:
    gdb.selected_inferior().write_memory(addr, data)


# True while a breakpoint callback runs (BreakpointSet sets it): there the selected frame is
# the stop's frame 0, and `$reg` reads it without building a gdb.Frame. newest_frame()
# computes the frame's id (its unwinder, DWARF CFI): 0.23 ms a stop against 0.02 for
# parse_and_eval("$rip") (gdb 13.1, 6.12 vmlinux with DWARF), a sixth of the checker's
# Python per stop. Outside a callback the user may have selected another frame.
in_callback = [False]


def reg(name: str) -> int:
    """A register of the stopped vCPU, as an unsigned 64-bit int."""
    if in_callback[0]:
        return int(gdb.parse_and_eval(f"${name}")) & MASK64
    return int(gdb.newest_frame().read_register(name)) & MASK64


def vcpu_index() -> int:
    """The stopped vCPU's index: QEMU's gdbstub shows one thread per vCPU, numbered from 1."""
    return gdb.selected_thread().num - 1
