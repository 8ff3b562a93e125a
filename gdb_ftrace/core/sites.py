"""What kind of patch site an address is: ftrace, jump label, static call. Pure.

The kernel keeps a table for each mechanism that patches text through the
int3 path; the gdb layer reads the tables' bytes from the guest once and
this module decodes them (x86_64 layouts, include/linux/jump_label.h and
include/linux/static_call_types.h, both with relative offsets):

  struct jump_entry       { s32 code; s32 target; long key; }   16 bytes
  struct static_call_site { s32 addr; s32 key; }                 8 bytes

Each field is relative to its own address; the low bits of `key` are flags
(jump label: branch/init; static call: tail/init). The jump table is sorted
in place at boot, so it must be read from the running guest, not vmlinux.
"""

from __future__ import annotations

import struct

from .insn import MASK64

JUMP_ENTRY_SIZE = 16
STATIC_CALL_SITE_SIZE = 8


def decode_jump_table(buf: bytes, base: int) -> dict[int, tuple[int, int]]:
    """{code address: (target address, static key address)}."""
    out = {}
    for off in range(0, len(buf) - JUMP_ENTRY_SIZE + 1, JUMP_ENTRY_SIZE):
        code, target, key = struct.unpack_from("<iiq", buf, off)
        a = base + off
        out[(a + code) & MASK64] = ((a + 4 + target) & MASK64, (a + 8 + key) & MASK64 & ~3)
    return out


def decode_static_call_sites(buf: bytes, base: int) -> dict[int, int]:
    """{call site address: static_call_key address}."""
    out = {}
    for off in range(0, len(buf) - STATIC_CALL_SITE_SIZE + 1, STATIC_CALL_SITE_SIZE):
        addr, key = struct.unpack_from("<ii", buf, off)
        a = base + off
        out[(a + addr) & MASK64] = (a + 4 + key) & MASK64 & ~3
    return out


def site_kind(site: int, site_sym: str, jump: dict, scall: dict, name_of) -> str:
    """'jump label KEY', 'static_call NAME', 'static_call NAME (trampoline)', 'ftrace', or ''.

    name_of(addr) -> symbol name ('' if none)."""
    if site in jump:
        key = name_of(jump[site][1])
        return f"jump label {key}" if key else "jump label"
    if site in scall:
        key = name_of(scall[site])
        return "static_call " + (key.removeprefix("__SCK__") if key else "?")
    if site_sym.startswith("__SCT__"):
        return f"static_call {site_sym.removeprefix('__SCT__').split('+')[0]} (trampoline)"
    return ""


class FtraceRecords:
    """The fentry sites ftrace manages (ftrace_location() != 0), as read from the guest by
    read() -> set of addresses. A miss re-reads them, at most once per max_age seconds of
    clock(): modules add records after boot. Not for a jump-label or static-call site
    (`other`): no fentry site is one, and on v5.2-v5.5, where every int3 asks
    ftrace_int3_handler first, a jump label's int3s missed and re-read the whole table
    (30 000 records, 60 ms) once a second: a fifth of what the checker cost there."""

    def __init__(self, read, clock, max_age: float = 1.0) -> None:
        self._read, self._clock, self.max_age = read, clock, max_age
        self.addrs: set[int] = set()
        self.reads = 0
        self.read_at = 0.0
        self.reread()

    def reread(self) -> None:
        self.addrs = self._read()
        self.reads += 1
        self.read_at = self._clock()

    def contains(self, addr: int, other: bool = False) -> bool:
        if addr in self.addrs:
            return True
        if other or self._clock() - self.read_at <= self.max_age:
            return False
        self.reread()
        return addr in self.addrs
