"""Struct layouts as plain data, and decoding of raw guest bytes with them.

A layout is read from the kernel's DWARF by the gdb layer (field name ->
offset, size). When DWARF is missing, the documented layouts below are used;
each names the kernel era it comes from. Decoding is pure: bytes in, dicts or
dataclasses out.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Mapping

from .errors import DecodeError


@dataclasses.dataclass(frozen=True)
class Field:
    offset: int
    size: int
    signed: bool = False


@dataclasses.dataclass(frozen=True)
class StructLayout:
    name: str
    size: int
    fields: Mapping[str, Field]
    source: str = "dwarf"  # "dwarf" or the era of a documented layout

    def has(self, name: str) -> bool:
        return name in self.fields

    def get(self, buf: bytes, name: str, base: int = 0) -> int:
        f = self.fields[name]
        end = base + f.offset + f.size
        if end > len(buf):
            raise DecodeError(f"{self.name}.{name}: need {end} bytes, have {len(buf)}")
        return int.from_bytes(buf[base + f.offset:end], "little", signed=f.signed)

    def get_bytes(self, buf: bytes, name: str, base: int = 0) -> bytes:
        f = self.fields[name]
        return bytes(buf[base + f.offset:base + f.offset + f.size])

    def to_json(self) -> dict:
        return {"name": self.name, "size": self.size, "source": self.source,
                "fields": {k: [v.offset, v.size, v.signed] for k, v in self.fields.items()}}

    @classmethod
    def from_json(cls, d: dict) -> "StructLayout":
        return cls(d["name"], d["size"], {k: Field(*v) for k, v in d["fields"].items()},
                   d.get("source", "dwarf"))


def _layout(name, size, source, **fields):
    return StructLayout(name, size, {k: Field(*v) for k, v in fields.items()}, source)


# struct pt_regs, x86_64 (arch/x86/include/asm/ptrace.h); unchanged in size
# since v4.x, cs/ss became unions with the FRED views in v6.9.
PT_REGS_X86_64 = _layout(
    "pt_regs", 168, "x86_64 ptrace.h",
    r15=(0, 8), r14=(8, 8), r13=(16, 8), r12=(24, 8), bp=(32, 8), bx=(40, 8),
    r11=(48, 8), r10=(56, 8), r9=(64, 8), r8=(72, 8), ax=(80, 8), cx=(88, 8),
    dx=(96, 8), si=(104, 8), di=(112, 8), orig_ax=(120, 8), ip=(128, 8),
    cs=(136, 8), flags=(144, 8), sp=(152, 8), ss=(160, 8),
)

# struct text_poke_loc, v5.17+ (26c44b776dba) and the 5.10.y/5.15.y
# backports; the same 16 bytes as struct smp_text_poke_loc in v6.16+.
TEXT_POKE_LOC_V517 = _layout(
    "text_poke_loc", 16, "v5.17+ documented layout",
    rel_addr=(0, 4, True), disp=(4, 4, True), len=(8, 1), opcode=(9, 1),
    text=(10, 5), old=(15, 1),
)

# v5.9 - v5.16: no len (derived from the opcode), rel32 instead of disp.
TEXT_POKE_LOC_V59 = _layout(
    "text_poke_loc", 16, "v5.9-v5.16 documented layout",
    rel_addr=(0, 4, True), rel32=(4, 4, True), opcode=(8, 1), text=(9, 5), old=(14, 1),
)

# The words the int3 entry code copies when it makes the gap, in push order
# from the top of pt_regs (entry_64.S: `.rept 6; pushq 5*8(%rsp)`).
GAP_WORDS = ("orig_ax", "ip", "cs", "flags", "sp", "ss")


def decode_struct(layout: StructLayout, buf: bytes, base: int = 0,
                  fields: tuple[str, ...] | None = None) -> dict[str, int]:
    """All integer fields (or the named ones) of one struct at buf[base:]."""
    names = fields if fields is not None else tuple(
        n for n, f in layout.fields.items() if f.size in (1, 2, 4, 8))
    return {n: layout.get(buf, n, base) for n in names}


def u64s(buf: bytes) -> list[int]:
    """Little-endian 64-bit words of buf (len must be a multiple of 8)."""
    if len(buf) % 8:
        raise DecodeError(f"{len(buf)} bytes is not a whole number of words")
    return list(struct.unpack(f"<{len(buf) // 8}Q", buf))
