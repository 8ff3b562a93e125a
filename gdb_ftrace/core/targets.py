"""Names for call targets outside vmlinux's symbols. Pure.

An emulated CALL at an ftrace site goes to one of: a vmlinux function
(ftrace_caller, ftrace_regs_caller: named from DWARF), the trampoline ftrace
allocated for one ftrace_ops (ops->trampoline, ops->trampoline_size), or an
ftrace *direct call*: a trampoline outside ftrace (a BPF trampoline, or
samples/ftrace/ftrace-direct.c) that the site calls with no ftrace code in
between. A direct call is registered with register_ftrace_direct(ops, addr)
(v6.6+), which sets ops->direct_call = addr, ops->flags |= FTRACE_OPS_FL_DIRECT
and puts the ops on ftrace_ops_list like any other; the site then holds
"call addr" when that ops is the only one on the function.

The gdb layer reads ftrace_ops_list and, for a target in a module, the
module's kallsyms (struct mod_kallsyms: an Elf64_Sym array and a string
table); this module decodes those bytes and builds the name.
"""

from __future__ import annotations

import dataclasses
import struct

from .insn import MASK64

ELF64_SYM = struct.Struct("<IBBHQQ")  # st_name, st_info, st_other, st_shndx, st_value, st_size
STT_FUNC = 2
STT_OBJECT = 1


@dataclasses.dataclass(frozen=True)
class FtraceOps:
    """The fields of one struct ftrace_ops that name a target."""

    addr: int
    func: int = 0
    flags: int = 0
    trampoline: int = 0
    trampoline_size: int = 0
    direct_call: int = 0  # 0: no direct call, or a kernel without the field (before v6.6)


def decode_ftrace_ops(buf: bytes, addr: int, offsets: dict[str, int]) -> tuple[FtraceOps, int]:
    """(FtraceOps, ops->next) from the bytes of one struct ftrace_ops; `offsets` maps
    field names to byte offsets (from DWARF); a field the kernel lacks reads as 0.
    `flags` is an unsigned long."""

    def word(name: str) -> int:
        o = offsets.get(name)
        if o is None or o + 8 > len(buf):
            return 0
        return int.from_bytes(buf[o:o + 8], "little")

    ops = FtraceOps(addr=addr, func=word("func"), flags=word("flags"), trampoline=word("trampoline"),
                    trampoline_size=word("trampoline_size"), direct_call=word("direct_call"))
    return ops, word("next")


def decode_elf64_syms(buf: bytes) -> list[tuple[int, int, int, int]]:
    """(st_name, type, st_value, st_size) for each Elf64_Sym in buf."""
    out = []
    for off in range(0, len(buf) - ELF64_SYM.size + 1, ELF64_SYM.size):
        name, info, _other, _shndx, value, size = ELF64_SYM.unpack_from(buf, off)
        out.append((name, info & 0xF, value, size))
    return out


def symbol_covering(addr: int, syms: list[tuple[int, int, int, int]]) -> tuple[int, int] | None:
    """(st_name, offset) of the function or object symbol whose [value, value+size)
    holds addr (size 0: addr == value only); the innermost when several do."""
    best = None
    for name, typ, value, size in syms:
        if typ not in (STT_FUNC, STT_OBJECT) or not value:
            continue
        if value <= addr < value + max(size, 1) and (best is None or value > best[1]):
            best = (name, value)
    return None if best is None else (best[0], addr - best[1])


def cstring(buf: bytes, off: int) -> str:
    """The NUL-terminated string at buf[off:]."""
    end = buf.find(b"\0", off)
    return buf[off:end if end >= 0 else len(buf)].decode("ascii", "replace")


def module_symbol(name: str, offset: int, module: str) -> str:
    """'name [module]', 'name+0x10 [module]' (the form of /proc/kallsyms)."""
    return f"{name}{f'+{offset:#x}' if offset else ''} [{module}]"


def name_target(addr: int, ops_list: list[FtraceOps], direct_flag: int | None,
                name_of=lambda a: "", func_name=lambda a: "") -> str:
    """The name of a call/jump target that no vmlinux symbol covers, or ''.

    direct_flag: FTRACE_OPS_FL_DIRECT (None: the kernel has no direct calls
    through ftrace_ops, or it is unknown: then direct_call alone decides).
    name_of(addr) -> 'sym [module]' or '' (module kallsyms);
    func_name(addr) -> a vmlinux symbol or ''.
    """
    addr &= MASK64
    for ops in ops_list:
        if ops.direct_call and ops.direct_call == addr and (direct_flag is None or ops.flags & direct_flag):
            what = name_of(addr) or f"{addr:#x}"
            owner = name_of(ops.addr) or f"{ops.addr:#x}"
            sym, _, mod = owner.partition(" [")
            if mod and what.endswith(f" [{mod}"):  # the ops in the trampoline's module: say it once
                owner = sym
            return f"direct call {what} (ftrace_ops {owner})"
    for ops in ops_list:
        if ops.trampoline and ops.trampoline <= addr < ops.trampoline + max(ops.trampoline_size, 1):
            rel = f"+{addr - ops.trampoline:#x}" if addr != ops.trampoline else ""
            return f"ftrace_ops trampoline{rel} ({func_name(ops.func) or f'{ops.func:#x}'})"
    return name_of(addr)
