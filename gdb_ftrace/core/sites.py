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
