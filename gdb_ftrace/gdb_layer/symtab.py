"""Low-level symbol and vmlinux helpers, used by every other gdb-layer module.

Symbols, DWARF struct layouts and the bytes of the vmlinux file; nothing here
knows about the checker. (kernel.py builds the kernel's facts from these,
slide.py moves them to the running kernel, symbols.py names addresses.)
"""

from __future__ import annotations

import contextlib
import re

import gdb

from ..core import elf
from ..core.errors import UserError
from ..core.insn import MASK64
from ..core.layout import Field, StructLayout
from .cache import per_objfile

_RANGE = re.compile(r"^Address range (0x[0-9a-f]+) to (0x[0-9a-f]+):", re.M)
_INSN_ADDR = re.compile(r"^(?:=> |   )(0x[0-9a-f]+) <", re.M)

# What the symbols in gdb have been moved by (slide.relocate()), per vmlinux path.
applied: dict[str, int] = {}
vmlinux: str | None = None  # the path slide.relocate() loaded with add-symbol-file (not the main symbol file then)


def symbol_address(name: str) -> int | None:
    """Address of a function or variable in the loaded symbols, or None."""
    try:
        return int(gdb.parse_and_eval(f"(unsigned long)&'{name}'")) & MASK64
    except gdb.error:
        return None


def data_symbol_address(name: str) -> int | None:
    """Address of a variable (not a function) in the loaded symbols, or None."""
    try:
        v = gdb.parse_and_eval(f"&'{name}'")
        if v.type.target().strip_typedefs().code == gdb.TYPE_CODE_FUNC:
            return None
        return int(v.cast(gdb.lookup_type("unsigned long"))) & MASK64
    except gdb.error:
        return None


def lookup_struct(type_name: str):
    """gdb.Type of `struct NAME` (raises gdb.error when DWARF has no such type)."""
    return gdb.parse_and_eval(f"({type_name} *)0").dereference().type.strip_typedefs()


@per_objfile
def struct_layout(type_name: str) -> StructLayout:
    """Layout of a struct from DWARF: every named member, anonymous unions flattened."""
    t = lookup_struct(type_name)
    fields: dict[str, Field] = {}

    def walk(ty, base):
        for f in ty.fields():
            off = base + f.bitpos // 8
            ft = f.type.strip_typedefs()
            if not f.name:
                walk(ft, off)
                continue
            if f.name in fields:
                continue
            signed = False
            if ft.code == gdb.TYPE_CODE_INT:
                signed = bool(getattr(ft, "is_signed", False))
            fields[f.name] = Field(off, ft.sizeof, signed)

    walk(t, 0)
    return StructLayout(type_name.split()[-1], t.sizeof, fields, "dwarf")


@contextlib.contextmanager
def trust_readonly(on: bool):
    """Reads of read-only sections from the file (on) or from the target (off), whatever
    the user had set, restored afterwards."""
    trust = gdb.parameter("trust-readonly-sections")
    gdb.execute(f"set trust-readonly-sections {'on' if on else 'off'}", to_string=True)
    try:
        yield
    finally:
        gdb.execute(f"set trust-readonly-sections {'on' if trust else 'off'}", to_string=True)


def read_text(addr: int, n: int) -> bytes:
    """Kernel text as vmlinux has it (also before the guest has booted, QEMU -S)."""
    with trust_readonly(True):
        return bytes(gdb.selected_inferior().read_memory(addr, n))


def disassemble(func: str) -> list[tuple[int, int, str]]:
    """(address, length, text) of each instruction of `func`, from vmlinux, in
    address order. gdb's `disassemble` names the function's ranges: its block's
    end is wrong both where the first instruction belongs to an inlined callee
    (5.4's do_int3 starts with an inlined atomic_read) and where gcc split the
    function (a .cold part far away: 5.10's text_poke_bp_batch)."""
    arch = gdb.selected_inferior().architecture()
    with trust_readonly(True):
        text = gdb.execute(f"disassemble '{func}'", to_string=True)
        ranges = [(int(a, 16), int(b, 16)) for a, b in _RANGE.findall(text)]
        if not ranges:
            addrs = [int(a, 16) for a in _INSN_ADDR.findall(text)]
            if not addrs:
                return []
            ranges = [(addrs[0], addrs[-1] + 1)]
        return [(i["addr"], i["length"], i["asm"])
                for lo, hi in ranges for i in arch.disassemble(lo, hi - 1)]


def function_range(addr: int | None) -> tuple[int, int] | None:
    """[start, end) of the function whose block holds addr (DWARF), or None."""
    if addr is None:
        return None
    try:
        fn = gdb.block_for_pc(addr)
        while fn is not None and fn.function is None:
            fn = fn.superblock
        if fn is not None:
            return fn.start, fn.end
    except RuntimeError:
        pass
    return None


def vmlinux_path() -> str:
    """The vmlinux gdb has: the main symbol file, or the one slide.relocate() added."""
    path = gdb.current_progspace().filename
    if path:
        return path
    if vmlinux and any(o.filename == vmlinux for o in gdb.objfiles()):
        return vmlinux
    raise UserError("no vmlinux loaded (file /path/to/vmlinux)")


def file_bytes(addr: int, n: int) -> bytes:
    """n bytes of the vmlinux file at what gdb's symbols call addr."""
    path = vmlinux_path()
    try:
        return elf.read_at(path, addr - applied.get(path, 0), n)
    except (OSError, elf.ElfError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
