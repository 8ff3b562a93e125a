"""Names for addresses: vmlinux symbols, and ftrace_ops trampolines by owner."""

from __future__ import annotations

import re

import gdb

from ..core.insn import MASK64
from . import mem
from .kernel import lookup_struct, symbol_address

_INFO = re.compile(r"^(\S+)(?: \+ (\d+))? in section (\S+)")
_cache: dict[int, str] = {}


def vmlinux_symbol(addr: int) -> str:
    """'func+0x4' / 'func', or '' when no vmlinux symbol covers addr."""
    if addr in _cache:
        return _cache[addr]
    try:
        out = gdb.execute(f"info symbol {addr:#x}", to_string=True).strip()
    except gdb.error:
        out = ""
    m = _INFO.match(out)
    name = ""
    if m:
        name = m.group(1) + (f"+{int(m.group(2)):#x}" if m.group(2) else "")
    _cache[addr] = name
    return name


def ftrace_ops_trampolines(limit: int = 64) -> list[tuple[int, int, int, str]]:
    """(trampoline, size, ops address, handler name) for each registered ftrace_ops
    with its own trampoline: walks ftrace_ops_list up to &ftrace_list_end."""
    head = symbol_address("ftrace_ops_list")
    end = symbol_address("ftrace_list_end")
    if head is None or end is None:
        return []
    t = lookup_struct("struct ftrace_ops")
    off = {f.name: f.bitpos // 8 for f in t.fields() if f.name}
    if not {"next", "func", "trampoline", "trampoline_size"} <= off.keys():
        return []
    out = []
    ops = mem.read_u64(head)
    for _ in range(limit):
        if ops in (0, end):
            break
        buf = mem.try_read(ops, t.sizeof)
        if buf is None:
            break

        def word(name):
            return int.from_bytes(buf[off[name]:off[name] + 8], "little")

        tramp, size = word("trampoline"), word("trampoline_size")
        if tramp:
            func = word("func")
            out.append((tramp, size, ops, vmlinux_symbol(func) or f"{func:#x}"))
        ops = word("next")
    return out


def name_target(addr: int | None) -> str:
    """Symbolic name of an emulated-call or jump destination."""
    if addr is None:
        return ""
    addr &= MASK64
    sym = vmlinux_symbol(addr)
    if sym:
        return sym
    try:
        for tramp, size, ops, func in ftrace_ops_trampolines():
            if tramp <= addr < tramp + max(size, 1):
                rel = f"+{addr - tramp:#x}" if addr != tramp else ""
                return f"ftrace_ops trampoline{rel} ({func})"
    except gdb.error:
        pass
    return f"{addr:#x} (not a vmlinux symbol)"


def clear_cache(_event=None) -> None:
    _cache.clear()


gdb.events.new_objfile.connect(clear_cache)
