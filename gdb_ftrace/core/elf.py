"""Bytes of an ELF64 file at a link address: enough to read vmlinux's own
`linux_banner` without trusting the target (the guest's copy is what is compared
against it) or gdb's section handling. Pure: a path and numbers in, bytes out."""

from __future__ import annotations

import struct

SHT_NOBITS = 8


class ElfError(Exception):
    pass


def read_at(path: str, addr: int, n: int) -> bytes:
    """n bytes (fewer at a section's end) of the section that holds link address addr."""
    with open(path, "rb") as f:
        ident = f.read(64)
        if ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1:
            raise ElfError(f"{path} is not a little-endian ELF64 file")
        shoff, = struct.unpack_from("<Q", ident, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", ident, 0x3A)
        f.seek(shoff)
        table = f.read(shentsize * shnum)
        for i in range(shnum):
            _name, sh_type, _flags, sh_addr, sh_off, sh_size = struct.unpack_from("<IIQQQQ", table, i * shentsize)
            if sh_type == SHT_NOBITS or not sh_addr or not sh_addr <= addr < sh_addr + sh_size:
                continue
            f.seek(sh_off + addr - sh_addr)
            return f.read(min(n, sh_addr + sh_size - addr))
    raise ElfError(f"no section of {path} holds {addr:#x}")
