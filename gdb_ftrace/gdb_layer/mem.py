"""Guest memory reads: one gdbstub round trip each, so read whole structs."""

from __future__ import annotations

import gdb


def read(addr: int, n: int) -> bytes:
    """n bytes at addr; raises gdb.MemoryError when unmapped."""
    return bytes(gdb.selected_inferior().read_memory(addr, n))


def read_u64(addr: int) -> int:
    return int.from_bytes(read(addr, 8), "little")


def try_read(addr: int, n: int) -> bytes | None:
    try:
        return read(addr, n)
    except gdb.MemoryError:
        return None


def write(addr: int, data: bytes) -> None:
    gdb.selected_inferior().write_memory(addr, data)
