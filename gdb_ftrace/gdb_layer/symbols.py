"""Names for addresses: vmlinux symbols, ftrace_ops trampolines by owner, ftrace
direct calls by their ftrace_ops, module symbols (decoding in core.targets)."""

from __future__ import annotations

import re
import time

import gdb

from ..core import sites, targets
from ..core.errors import UserError
from ..core.insn import MASK64
from . import mem
from .cache import per_objfile
from .symtab import lookup_struct, read_text, struct_layout, symbol_address

_INFO = re.compile(r"^(\S+)(?: \+ (\d+))? in section (\S+)")


@per_objfile
def vmlinux_symbol(addr: int) -> str:
    """'func+0x4' / 'func', or '' when no vmlinux symbol covers addr."""
    try:
        out = gdb.execute(f"info symbol {addr:#x}", to_string=True).strip()
    except gdb.error:
        out = ""
    m = _INFO.match(out)
    if not m:
        return ""
    return m.group(1) + (f"+{int(m.group(2)):#x}" if m.group(2) else "")


@per_objfile
def _offsets(type_name: str) -> tuple[dict[str, int], int]:
    """{field: byte offset} and sizeof of a struct, from DWARF (symtab.struct_layout)."""
    lay = struct_layout(type_name)
    return {n: f.offset for n, f in lay.fields.items()}, lay.size


def ftrace_ops_registered(limit: int = 64) -> list[targets.FtraceOps]:
    """Every ftrace_ops on ftrace_ops_list (up to &ftrace_list_end): the function
    tracer's, livepatch's, and direct calls' (register_ftrace_direct puts them there)."""
    head = symbol_address("ftrace_ops_list")
    end = symbol_address("ftrace_list_end")
    if head is None or end is None:
        return []
    off, size = _offsets("struct ftrace_ops")
    if not {"next", "func", "trampoline", "trampoline_size"} <= off.keys():
        return []
    out = []
    ops = mem.read_u64(head)
    for _ in range(limit):
        if ops in (0, end):
            break
        buf = mem.try_read(ops, size)
        if buf is None:
            break
        rec, ops = targets.decode_ftrace_ops(buf, ops, off)
        out.append(rec)
    return out


@per_objfile
def _direct_flag() -> int | None:
    """FTRACE_OPS_FL_DIRECT from DWARF (None: unknown, e.g. before v5.5)."""
    try:
        return int(gdb.parse_and_eval("(unsigned long)FTRACE_OPS_FL_DIRECT"))
    except gdb.error:
        return None


@per_objfile
def _module_region_offsets() -> tuple[tuple[int, int, int], ...]:
    """(region offset, its base's offset, its size's offset) in struct module, for each
    memory region: mem[] (v6.4+) or core_layout/init_layout before."""
    out = []
    for f in lookup_struct("struct module").fields():
        if f.name not in ("mem", "core_layout", "init_layout"):
            continue
        ft = f.type.strip_typedefs()
        n, et = 1, ft
        if ft.code == gdb.TYPE_CODE_ARRAY:
            lo, hi = ft.range()
            n, et = hi - lo + 1, ft.target().strip_typedefs()
        eoff = {g.name: g.bitpos // 8 for g in et.fields() if g.name}
        if {"base", "size"} <= eoff.keys():
            out += [(f.bitpos // 8 + i * et.sizeof, eoff["base"], eoff["size"]) for i in range(n)]
    return tuple(out)


def _module_ranges(buf: bytes) -> list[tuple[int, int]]:
    """[(base, size)] of one struct module's memory regions."""
    out = []
    for o, boff, soff in _module_region_offsets():
        base = int.from_bytes(buf[o + boff:o + boff + 8], "little")
        sz = int.from_bytes(buf[o + soff:o + soff + 4], "little")
        if base and sz:
            out.append((base, sz))
    return out


def module_symbol(addr: int, limit: int = 512) -> str:
    """'sym+0x4 [module]' for an address in a loaded module (its kallsyms), '' else.
    Read afresh each time: modules come and go (the direct-call scenario reloads one)."""
    head = symbol_address("modules")
    if head is None:
        return ""
    try:
        off, size = _offsets("struct module")
        koff, ksize = _offsets("struct mod_kallsyms")
    except gdb.error:
        return ""
    if not {"list", "name", "kallsyms"} <= off.keys():
        return ""
    node = mem.read_u64(head)
    for _ in range(limit):
        if node in (0, head):
            break
        mod = node - off["list"]
        buf = mem.try_read(mod, size)
        if buf is None:
            break
        node = int.from_bytes(buf[off["list"]:off["list"] + 8], "little")
        if not any(b <= addr < b + n for b, n in _module_ranges(buf)):
            continue
        name = targets.cstring(buf, off["name"])
        ks = mem.try_read(int.from_bytes(buf[off["kallsyms"]:off["kallsyms"] + 8], "little"), ksize)
        if ks is None:
            return f"{addr:#x} [{name}]"

        def word(f, n=8):
            return int.from_bytes(ks[koff[f]:koff[f] + n], "little")

        num = word("num_symtab", 4)
        syms = mem.try_read(word("symtab"), num * targets.ELF64_SYM.size) if 0 < num < (1 << 16) else None
        hit = targets.symbol_covering(addr, targets.decode_elf64_syms(syms)) if syms else None
        if hit is None:
            return f"{addr:#x} [{name}]"
        sname = mem.try_read(word("strtab") + hit[0], 256) or b""
        return targets.module_symbol(targets.cstring(sname, 0), hit[1], name)
    return ""


def name_target(addr: int | None) -> str:
    """Symbolic name of an emulated-call or jump destination: a vmlinux symbol, an
    ftrace direct call's trampoline, an ftrace_ops trampoline, a module symbol."""
    if addr is None:
        return ""
    addr &= MASK64
    sym = vmlinux_symbol(addr)
    if sym:
        return sym
    name = ""
    try:
        name = targets.name_target(addr, ftrace_ops_registered(), _direct_flag(),
                                   name_of=module_symbol, func_name=vmlinux_symbol)
    except gdb.error:
        pass
    return name or f"{addr:#x} (not a vmlinux symbol)"


class _SiteTables:
    """The kernel's patch-site tables, read from the guest once (see core.sites)."""

    def __init__(self) -> None:
        self.jump: dict = {}
        self.scall: dict = {}
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
        self.ftrace = sites.FtraceRecords(self._read_ftrace, time.monotonic)

    def _read_ftrace(self) -> set[int]:
        try:
            return _ftrace_locations()
        except (gdb.error, ValueError) as e:
            self.errors.append(f"ftrace records: {e}")
            return self.ftrace.addrs if hasattr(self, "ftrace") else set()  # the last good read


def _ftrace_locations(max_pages: int = 100000) -> set[int]:
    """Every fentry site ftrace manages: walk ftrace_pages_start -> struct ftrace_page
    {next, records, index} -> struct dyn_ftrace {ip, ...}[index]."""
    head = symbol_address("ftrace_pages_start")
    if head is None:
        return set()
    off, page_size = _offsets("struct ftrace_page")
    roff, rec_size = _offsets("struct dyn_ftrace")
    ip_off = roff["ip"]
    out: set[int] = set()
    pg = mem.read_u64(head)
    for _ in range(max_pages):
        if not pg:
            break
        buf = mem.read(pg, page_size)
        nxt = int.from_bytes(buf[off["next"]:off["next"] + 8], "little")
        recs = int.from_bytes(buf[off["records"]:off["records"] + 8], "little")
        n = int.from_bytes(buf[off["index"]:off["index"] + 4], "little")
        if recs and 0 < n < (1 << 20):
            raw = mem.read(recs, n * rec_size)
            out.update(int.from_bytes(raw[i * rec_size + ip_off:i * rec_size + ip_off + 8], "little")
                       for i in range(n))
        pg = nxt
    return out


@per_objfile
def _site_tables() -> _SiteTables:
    """Read from the running guest on first use (the jump table is sorted at boot)."""
    return _SiteTables()


def is_ftrace_location(addr: int) -> bool:
    """ftrace_location(addr) != 0, from the guest's ftrace records (core.sites.FtraceRecords:
    when a miss re-reads them)."""
    t = _site_tables()
    return t.ftrace.contains(addr, addr in t.jump or addr in t.scall)


def site_kind(addr: int, site_sym: str) -> str:
    """'ftrace', 'jump label KEY', 'static_call NAME', or ''."""
    tables = _site_tables()
    kind = sites.site_kind(addr, site_sym, tables.jump, tables.scall, vmlinux_symbol)
    if not kind and addr in tables.ftrace.addrs:
        kind = "ftrace"
    return kind


def _is_int3_selftest(addr: int) -> bool:
    """The boot-time int3 self-test's site. Where int3_selftest() is inlined (5.10
    builds it into alternative_instructions), its site is the value of the init-data
    word int3_selftest_ip, readable while the kernel boots (when it fires)."""
    holder = symbol_address("int3_selftest_ip")
    return holder is not None and mem.try_read_u64(holder) == addr


def name_event(ev) -> None:
    """Name a finished Int3Event's site, the kind of site, and its emulated target."""
    ev.site_sym = vmlinux_symbol(ev.site)
    ev.site_kind = site_kind(ev.site, ev.site_sym)
    if not ev.site_kind and ev.verdict == "OTHER" and _is_int3_selftest(ev.site):
        ev.site_kind = "int3 self-test"
    if ev.expected and ev.expected.target is not None:
        ev.target_sym = name_target(ev.expected.target)


def name_coverage(cov: dict | None) -> dict | None:
    """The coverage (core.hold.coverage) with its unhit sites named: function+offset."""
    if cov and cov.get("unhit"):  # ({"off": why} when no hold point was taken)
        cov["unhit"] = [f"{vmlinux_symbol(int(a, 16)) or a}" for a in cov["unhit"]]
    return cov


def hold_sites(names: list[str]) -> tuple[tuple[int, str], ...]:
    """The fentry site of each function named (core.hold.fentry_site, from vmlinux's bytes)."""
    from ..core.hold import fentry_site

    out = []
    for name in names:
        addr = symbol_address(name)
        if addr is None:
            raise UserError(f"--hold-sites: no function {name!r} in the symbols")
        out.append((fentry_site(addr, read_text(addr, 4)), name))
    return tuple(out)


def hold_config(ms: int, sites: str):
    """--hold / --hold-sites as the engine's core.hold.HoldConfig (None: neither given)."""
    from ..core.hold import HoldConfig

    names = [n for n in sites.split(",") if n]
    return HoldConfig(ms, hold_sites(names)) if ms or names else None
