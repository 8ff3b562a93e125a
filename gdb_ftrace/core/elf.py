"""Bytes of an ELF64 file at a link address: enough to read vmlinux's own
`linux_banner` without trusting the target (the guest's copy is what is compared
against it) or gdb's section handling. Pure: a path and numbers in, bytes out."""

from __future__ import annotations

import struct

SHT_NOBITS = 8


class ElfError(Exception):
    pass


def _sections(f) -> list[tuple[int, int, int, int, int]]:
    """(name offset, type, addr, file offset, size) of each section header."""
    ident = f.read(64)
    if ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1:
        raise ElfError(f"{f.name} is not a little-endian ELF64 file")
    shoff, = struct.unpack_from("<Q", ident, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ident, 0x3A)
    f.seek(shoff)
    table = f.read(shentsize * shnum)
    out = []
    for i in range(shnum):
        name, sh_type, _flags, sh_addr, sh_off, sh_size = struct.unpack_from("<IIQQQQ", table, i * shentsize)
        out.append((name, sh_type, sh_addr, sh_off, sh_size))
    return out + [shstrndx]  # type: ignore[list-item]


def section_addr(path: str, section: str) -> int | None:
    """The link address of a named section, or None when the file has no such section."""
    with open(path, "rb") as f:
        secs = _sections(f)
        shstrndx = secs.pop()
        if not 0 < shstrndx < len(secs):
            return None
        _n, _t, _a, str_off, str_size = secs[shstrndx]
        f.seek(str_off)
        names = f.read(str_size)
        for name, _t, addr, _o, _s in secs:
            if names[name:names.index(b"\0", name)].decode(errors="replace") == section:
                return addr
    return None


def read_at(path: str, addr: int, n: int) -> bytes:
    """n bytes (fewer at a section's end) of the section that holds link address addr."""
    with open(path, "rb") as f:
        secs = _sections(f)[:-1]
        for _name, sh_type, sh_addr, sh_off, sh_size in secs:
            if sh_type == SHT_NOBITS or not sh_addr or not sh_addr <= addr < sh_addr + sh_size:
                continue
            f.seek(sh_off + addr - sh_addr)
            return f.read(min(n, sh_addr + sh_size - addr))
    raise ElfError(f"no section of {path} holds {addr:#x}")
