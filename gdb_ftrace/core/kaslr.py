"""KASLR: where the running kernel is, from facts the live guest shows.

The anchor is the IDT's int3 gate. The IDT register's base comes from QEMU's
`info registers` (`IDT=     fffffe0000000000 00000fff`; since v4.15 the IDT is
mapped read-only at the fixed CPU_ENTRY_AREA_RO_IDT, which is the fallback),
and gate 3 holds the runtime address of the int3 entry (`asm_exc_int3`, `int3`
before v5.8). The slide is that address minus the entry's link address in
vmlinux. On x86_64 it is a multiple of CONFIG_PHYSICAL_ALIGN, at least 2 MiB
(arch/x86/boot/compressed/kaslr.c: find_random_virt_addr), so anything else
means the gate does not point at this vmlinux's int3 entry yet (early boot) or
ever (a different kernel). `linux_banner` at its slid address must then equal
the vmlinux's own: that is the proof that vmlinux is the running kernel.
Pure: text and bytes in, numbers out.
"""

from __future__ import annotations

import dataclasses
import re

from .insn import MASK64

IDT_FALLBACK = 0xFFFFFE0000000000  # CPU_ENTRY_AREA_RO_IDT (v4.15+, x86_64)
INT3_VECTOR = 3
GATE_SIZE = 16
SLIDE_ALIGN = 0x200000  # x86_64 CONFIG_PHYSICAL_ALIGN is a multiple of 2 MiB
KERNEL_TEXT_LO = 0xFFFFFFFF80000000  # __START_KERNEL_map
BANNER_PREFIX = b"Linux version "

_IDT = re.compile(r"^IDT=\s*([0-9a-fA-F]+)\s+([0-9a-fA-F]+)", re.M)


def parse_idt(info_registers: str) -> tuple[int, int] | None:
    """(base, limit) of the IDT register from QEMU's `info registers`, or None."""
    m = _IDT.search(info_registers)
    return (int(m.group(1), 16), int(m.group(2), 16)) if m else None


def gate_target(gate: bytes) -> int:
    """The handler address of one 16-byte x86_64 interrupt gate."""
    if len(gate) != GATE_SIZE:
        raise ValueError(f"an x86_64 gate is 16 bytes, got {len(gate)}")
    lo = int.from_bytes(gate[0:2], "little")
    mid = int.from_bytes(gate[6:8], "little")
    hi = int.from_bytes(gate[8:12], "little")
    return lo | mid << 16 | hi << 32


def gate_present(gate: bytes) -> bool:
    return bool(gate[5] & 0x80)


def slide_for(runtime: int, link: int) -> int | None:
    """runtime - link when that is a possible KASLR slide (2 MiB multiple, kernel
    range), else None."""
    if runtime < KERNEL_TEXT_LO:
        return None
    slide = (runtime - link) & MASK64
    if slide >= 1 << 63:
        slide -= 1 << 64  # below the link address: not KASLR (it only moves up)
    if slide < 0 or slide % SLIDE_ALIGN:
        return None
    return slide


def banner_text(raw: bytes) -> str:
    """The NUL-terminated banner string at the start of raw, decoded."""
    return raw.split(b"\0")[0].decode(errors="replace").strip()


def release(banner: str) -> str:
    """'6.12.117+deb12-cloud-amd64' from 'Linux version 6.12.117+deb12-cloud-amd64 (...)'."""
    m = re.match(r"Linux version (\S+)", banner)
    return m.group(1) if m else banner[:60]


def find_banner(buf: bytes) -> int | None:
    """Offset of a complete `Linux version X (...` banner in buf, or None. The
    first hit that looks like the banner (the release then a '('), so the
    `Linux version %s` format strings elsewhere do not count."""
    start = 0
    while True:
        i = buf.find(BANNER_PREFIX, start)
        if i < 0:
            return None
        tail = buf[i + len(BANNER_PREFIX):i + len(BANNER_PREFIX) + 200]
        if re.match(rb"[0-9]+\.[0-9]+\S* \(", tail):
            return i
        start = i + 1


@dataclasses.dataclass(frozen=True)
class Location:
    """Where the running kernel is: its slide and how it was found."""
    slide: int
    idt_base: int
    int3_entry: int  # runtime address of the int3 entry
    how: str         # e.g. "IDT gate 3 (base from QEMU 'info registers')"

    def describe(self) -> str:
        state = "off or not in effect" if self.slide == 0 else "on"
        return f"{self.slide:#x} (KASLR {state}; {self.how} -> {self.int3_entry:#x})"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)
