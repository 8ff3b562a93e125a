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
