"""Find where a handler returns to in its caller, from a disassembly listing.

The checker stops once when the handler is entered and once right after the
`call` to it returns (instead of a FinishBreakpoint, which needs frame
unwinding through the exception stack). Those return points are the
instructions following each `call <handler>` in the C entry function
(`exc_int3` since v5.8, `do_int3` before).
"""

from __future__ import annotations

import re
from typing import Iterable

_CALL = re.compile(r"^\s*call[q]?\s+(0x[0-9a-fA-F]+)")


def call_return_sites(insns: Iterable[tuple[int, int, str]], callee: int) -> list[int]:
    """insns: (address, length, asm text) in order. Returns addr+length of each
    direct `call callee`."""
    out = []
    for addr, length, asm in insns:
        m = _CALL.match(asm)
        if m and int(m.group(1), 16) == callee:
            out.append(addr + length)
    return out


_OBJDUMP_LINE = re.compile(r"^\s*([0-9a-f]+):\s+((?:[0-9a-f]{2} )+)\s*(.*)$")


def objdump_bytes(data: bytes, addr: int, timeout: float = 10.0) -> list[tuple[int, str, str]]:
    """(address, hex bytes, instruction) of raw x86_64 bytes as if at addr, by binutils'
    objdump (for bytes that are not in memory any more: what was at a site, what a
    batch installs). [] when objdump is missing or fails."""
    import os
    import subprocess
    import tempfile

    if not data:
        return []
    with tempfile.NamedTemporaryFile(suffix=".bin", delete=False) as f:
        f.write(data)
    try:
        out = subprocess.run(["objdump", "-D", "-b", "binary", "-m", "i386:x86-64", f"--adjust-vma={addr:#x}",
                              f.name], capture_output=True, text=True, timeout=timeout).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    finally:
        os.unlink(f.name)
    rows = []
    for line in out.splitlines():
        m = _OBJDUMP_LINE.match(line)
        if m:
            rows.append((int(m[1], 16), m[2].strip(), " ".join(m[3].split())))
    return rows
