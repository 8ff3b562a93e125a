"""Names for addresses: vmlinux symbols, and ftrace_ops trampolines by owner."""

from __future__ import annotations

import re

import gdb

from ..core import sites
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


class _SiteTables:
    """The kernel's patch-site tables, read from the guest once (see core.sites)."""

    def __init__(self) -> None:
        self.jump: dict = {}
        self.scall: dict = {}
        self.ftrace: set[int] = set()
        self.errors: list[str] = []
        for name, start, stop, decode in (
                ("jump", "__start___jump_table", "__stop___jump_table", sites.decode_jump_table),
                ("scall", "__start_static_call_sites", "__stop_static_call_sites", sites.decode_static_call_sites)):
            a, b = symbol_address(start), symbol_address(stop)
            if a is None or b is None or not 0 < b - a < (64 << 20):
                continue
            buf = mem.try_read(a, b - a)
            if buf is None:
                self.errors.append(f"cannot read {start}")
                continue
            setattr(self, name, decode(buf, a))
        try:
            self.ftrace = _ftrace_locations()
        except (gdb.error, ValueError) as e:
            self.errors.append(f"ftrace records: {e}")


def _ftrace_locations(max_pages: int = 100000) -> set[int]:
    """Every fentry site ftrace manages: walk ftrace_pages_start -> struct ftrace_page
    {next, records, index} -> struct dyn_ftrace {ip, ...}[index]."""
    head = symbol_address("ftrace_pages_start")
    if head is None:
        return set()
    pt = lookup_struct("struct ftrace_page")
    off = {f.name: f.bitpos // 8 for f in pt.fields() if f.name}
    rt = lookup_struct("struct dyn_ftrace")
    ip_off = next(f.bitpos // 8 for f in rt.fields() if f.name == "ip")
    out: set[int] = set()
    pg = mem.read_u64(head)
    for _ in range(max_pages):
        if not pg:
            break
        buf = mem.read(pg, pt.sizeof)
        nxt = int.from_bytes(buf[off["next"]:off["next"] + 8], "little")
        recs = int.from_bytes(buf[off["records"]:off["records"] + 8], "little")
        n = int.from_bytes(buf[off["index"]:off["index"] + 4], "little")
        if recs and 0 < n < (1 << 20):
            raw = mem.read(recs, n * rt.sizeof)
            out.update(int.from_bytes(raw[i * rt.sizeof + ip_off:i * rt.sizeof + ip_off + 8], "little")
                       for i in range(n))
        pg = nxt
    return out


_tables: _SiteTables | None = None


def site_kind(addr: int, site_sym: str) -> str:
    """'ftrace', 'jump label KEY', 'static_call NAME', or '' (read the tables on first use)."""
    global _tables
    if _tables is None:
        _tables = _SiteTables()
    kind = sites.site_kind(addr, site_sym, _tables.jump, _tables.scall, vmlinux_symbol)
    if not kind and addr in _tables.ftrace:
        kind = "ftrace"
    return kind


def _forget_tables(_event=None) -> None:
    global _tables
    _tables = None


gdb.events.new_objfile.connect(_forget_tables)
