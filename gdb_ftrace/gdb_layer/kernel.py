"""What this kernel has: handler, its callers, the batch descriptor, layouts.

Detection is by symbols and DWARF types, never by version number (the
handler and descriptor of each era: arch/x86/kernel/alternative.c and, before
v5.6, arch/x86/kernel/ftrace.c; docs/eras.md):
  smp_text_poke_int3_handler + text_poke_array   v6.16+
  poke_int3_handler + bp_desc (struct)           v6.0 - v6.15 (and backports)
  poke_int3_handler + bp_desc (pointer)          v5.6 - v5.19
  ftrace_int3_handler + poke_int3_handler        v5.2 - v5.5: ftrace sites emulated as a
                + bp_patching (detours)          CALL into ftrace_regs_caller (core.ftrace_era),
                                                 other sites detoured (v5.3-v5.5)
Everything is resolved lazily and cached until gdb loads a new objfile (cache.py).
"""

from __future__ import annotations

import contextlib
import re

import gdb  # only this layer imports gdb

from ..core.disasm import call_return_sites
from ..core.errors import UserError
from ..core.ftrace_era import FtraceState
from ..core.batch import (SINGLE_SITE, Batch, DescLayout, documented, era_name, header_read, make_batch,
                          parse_header, readable_count, single_site_batch)
from ..core.insn import MASK64
from ..core.layout import PT_REGS_X86_64, Field, StructLayout
from ..core.mode import CheckMode
from . import mem
from .cache import per_objfile

NO_DWARF = ("no: pt_regs, the batch descriptor and text_poke_loc from the era's documented layouts; "
            "unavailable: which sites are ftrace's, ftrace_ops trampoline owners, module symbol names")
HANDLERS = ("smp_text_poke_int3_handler", "poke_int3_handler")
FTRACE_HANDLER = "ftrace_int3_handler"  # v5.2-v5.5, asked before poke_int3_handler
CALLERS = ("exc_int3", "do_int3")
DESCRIPTORS = ("text_poke_array", "bp_desc", "int3_desc", "bp_patching")  # bp_patching: v5.3-v5.5
LOC_TYPES = ("struct smp_text_poke_loc", "struct text_poke_loc")
INT3_ENTRIES = ("asm_exc_int3", "int3")  # the IDT's int3 entry: v5.8+, before v5.8
IRET = "native_irq_return_iret"
DIE_STOPS = ("oops_enter", "die")
_RANGE = re.compile(r"^Address range (0x[0-9a-f]+) to (0x[0-9a-f]+):", re.M)
_INSN_ADDR = re.compile(r"^(?:=> |   )(0x[0-9a-f]+) <", re.M)  # the iretq every return to kernel mode takes


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


def _from_vmlinux():
    """Read code from vmlinux, not the target: before the guest has booted (QEMU -S)
    the kernel is not mapped yet."""
    return trust_readonly(True)


class KernelInfo:
    """Symbols and layouts of the kernel in gdb, resolved once."""

    def __init__(self) -> None:
        # v5.2-v5.5 (and the 4.14/4.19/5.0/5.1 stable backports): ftrace has its own
        # int3 handler, which do_int3 asks first while modifying_ftrace_code != 0;
        # then poke_int3_handler, whose v5.3-v5.5 batch holds detours, not instructions.
        self.ftrace_handler = symbol_address(FTRACE_HANDLER)
        self.handler_name = next((h for h in HANDLERS if symbol_address(h) is not None), None)
        if self.handler_name is None:
            raise UserError(
                "no int3 text-patch handler found (looked for " + ", ".join(HANDLERS) +
                "): is a vmlinux with symbols loaded? (file /path/to/vmlinux)")
        self.handler = symbol_address(self.handler_name)
        # Every handler the int3 path asks, in the order it asks them.
        self.handlers: list[tuple[str, int]] = [(self.handler_name, self.handler)]
        if self.ftrace_handler is not None:
            self.handlers.insert(0, (FTRACE_HANDLER, self.ftrace_handler))
        self.returns: list[tuple[str, int]] = []
        caller_code: dict[str, list] = {}
        for caller in CALLERS:
            if symbol_address(caller) is None:
                continue
            caller_code[caller] = self.disassemble(caller)
            for _name, addr in self.handlers:
                self.returns += [(caller, ret) for ret in call_return_sites(caller_code[caller], addr)]
        if not self.returns:
            raise UserError(f"found {self.handler_name} but no call to it in {', '.join(CALLERS)}")
        self.returns.sort(key=lambda r: r[1])
        self.dwarf = True  # False: layouts documented per era (core.batch.documented), no DWARF names
        self.stext = symbol_address("_stext") or 0
        self.pt_regs = self._pt_regs_layout()
        self.desc_name = next((d for d in DESCRIPTORS if symbol_address(d) is not None), None)
        self.single_site: tuple[int, ...] | None = None
        self.desc: DescLayout | None = None
        self.loc_type, self.loc, self.desc_addr = None, None, None
        self.keeps_last_batch, self.percpu_refs, self.per_cpu_offset = False, None, None
        if self.desc_name is None:
            single = [symbol_address(n) for n in SINGLE_SITE]
            if None in single:
                raise UserError("no batch descriptor found (looked for " + ", ".join(DESCRIPTORS) +
                                ", and v5.2's " + ", ".join(SINGLE_SITE) + ")")
            self.single_site = tuple(single)
            self.desc_name = "bp_int3_addr"
        else:
            self._batch_layout()
        # Where a handler that returned 0 hands over: kprobe_int3_handler, called
        # from the same caller (its code was disassembled above).
        self.followups: list[tuple[str, int]] = []
        kprobe = symbol_address("kprobe_int3_handler")
        if kprobe is not None:
            caller = self.returns[0][0]
            self.followups = [("kprobe_int3_handler", r) for r in call_return_sites(caller_code[caller], kprobe)]
        # Where the kernel is about to oops: oops_enter (die -> oops_begin -> oops_enter), not
        # die's own first instruction, whose 4 KiB page shares local_touch_nmi (6.12: the
        # idle loop's) and nmi_handle: a breakpoint there slowed an idle guest by ~25 %.
        self.die_name = next((n for n in DIE_STOPS if symbol_address(n) is not None), None)
        self.die = symbol_address(self.die_name) if self.die_name else None
        if self.ftrace_handler is not None:
            names = ("modifying_ftrace_code", "ftrace_update_func", "ftrace_update_func_call", "ftrace_regs_caller")
            missing = [n for n in names if symbol_address(n) is None]
            if missing:
                raise UserError(f"{FTRACE_HANDLER} found, but not {', '.join(missing)}: unknown v5.2-v5.5 layout")
            (self.modifying_ftrace_code, self.ftrace_update_func, self.ftrace_update_func_call,
             self.ftrace_regs_caller) = (symbol_address(n) for n in names)
        self.int3_entry_name = next((e for e in INT3_ENTRIES if symbol_address(e) is not None), None)
        self.int3_entry = symbol_address(self.int3_entry_name) if self.int3_entry_name else None
        self.iret = symbol_address(IRET)
        self.version = self._version()
        self.era = era_name([n for n, _ in self.handlers], self.desc, self.version)
        self.no_watch = self._no_watch()

    def _no_watch(self) -> str:
        """Why the watchpoint engine cannot run here ('' if it can): it needs a word the
        handler reads for each int3 (core/watch.py)."""
        if self.ftrace_handler is not None:
            return f"{FTRACE_HANDLER} (v5.2-v5.5) patches ftrace sites with no batch descriptor to watch"
        if self.desc is None:
            return "v5.2's one-site patching: no batch descriptor to watch"
        return ""

    def watch_word(self) -> tuple[str, int]:
        """The word the watchpoint engine watches for reads, and its size: one the handler
        reads once per int3 and the patching CPU does not read (core/watch.py):
          v6.0-v6.15 (and backports): bp_desc.nr_entries, read once the refcount is taken
                     (an int3 no batch covers is seen at oops_enter instead)
          v5.6-v5.19 (pointer): bp_desc, read first by every kernel int3
          v6.16+:    this CPU's text_poke_array_refs (the batch's end reads it: one stop
                     per CPU per batch), read first by every kernel int3"""
        d = self.desc
        if self.percpu_refs is not None:
            return "text_poke_array_refs (per CPU)", 4
        if d.is_pointer:
            return d.name, 8
        return f"{d.name}.nr_entries", 4

    def watch_addrs(self, ncpus: int) -> list[int]:
        """The addresses of watch_word(): one, or one per CPU (v6.16+; reads the guest)."""
        d = self.desc
        if self.percpu_refs is not None:
            return [(mem.read_u64(self.per_cpu_offset + 8 * cpu) + self.percpu_refs) & MASK64
                    for cpu in range(ncpus)]
        if d.is_pointer:
            return [self.desc_addr]
        return [self.desc_addr + d.nr_off]

    def exit_ranges(self) -> list[tuple[int, int]]:
        """Where a vCPU is between the handler's return and the iretq: the handler's callers
        (exc_int3 / do_int3) and the entry text (asm_exc_int3 ... native_irq_return_iret)."""
        out = []
        for caller in {c for c, _ in self.returns}:
            fn = self._function_range(symbol_address(caller))
            if fn:
                out.append(fn)
        lo, hi = symbol_address("__entry_text_start"), symbol_address("__entry_text_end")
        if lo and hi:
            out.append((lo, hi))
        elif self.int3_entry and self.iret:
            out.append((min(self.int3_entry, self.iret), max(self.int3_entry, self.iret) + 2))
        return out

    @staticmethod
    def _function_range(addr: int | None) -> tuple[int, int] | None:
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

    def handler_range(self) -> tuple[int, int]:
        """[start, end) of the text-patch handler's code (its DWARF block, else the
        disassembly's last instruction)."""
        fn = self._function_range(self.handler)
        if fn is not None and fn[0] == self.handler:
            return fn
        code = self.disassemble(self.handler_name)
        return self.handler, code[-1][0] + code[-1][1]

    def _batch_layout(self) -> None:
        """The batch descriptor and its text_poke_loc layout, from DWARF (v5.3+)."""
        self.loc_type = next((t for t in LOC_TYPES if self._has_type(t)), None)
        self.desc_addr = symbol_address(self.desc_name)
        if self.loc_type is None:
            self._documented_batch_layout()
            return
        self.loc = struct_layout(self.loc_type)
        dtype = gdb.parse_and_eval(f"'{self.desc_name}'").type.strip_typedefs()
        is_pointer = dtype.code == gdb.TYPE_CODE_PTR
        st = dtype.target().strip_typedefs() if is_pointer else dtype
        fields = {f.name: (f.bitpos // 8, f.type.strip_typedefs()) for f in st.fields()}
        if "vec" not in fields or "nr_entries" not in fields:
            raise UserError(f"{self.desc_name} has no vec/nr_entries; unknown kernel layout")
        self.desc = DescLayout(self.desc_name, is_pointer, st.sizeof, fields["vec"][0],
                               fields["vec"][1].code == gdb.TYPE_CODE_ARRAY, fields["nr_entries"][0],
                               fields["refs"][0] if "refs" in fields else None)
        self._batch_flags()

    def _documented_batch_layout(self) -> None:
        """No DWARF (a stripped vmlinux): the era's documented layouts (core.batch.documented)."""
        version = self._version()
        got = documented(self.desc_name, version)
        if got is None:
            raise UserError(f"no DWARF for struct text_poke_loc, and {self.desc_name} of {version or 'this kernel'} "
                            "has no documented layout (v5.16 and older changed it inside stable series): "
                            "load the vmlinux with full debug info (the -dbg package)")
        self.desc, self.loc = got
        self.loc_type = f"struct {self.loc.name} ({self.loc.source}, no DWARF)"
        self.dwarf = False
        self._batch_flags()

    def _batch_flags(self) -> None:
        # v6.0-v6.15 leave vec/nr_entries of the finished batch in place: an int3
        # that arrives late can still be matched against it (MISSED, not OTHER).
        self.keeps_last_batch = not self.desc.is_pointer and not self.desc.vec_inline and self.desc.refs_off is not None
        # v6.16+: the handler only looks at the batch while this CPU's
        # text_poke_array_refs is non-zero (try_get_text_poke_array()).
        self.percpu_refs = symbol_address("text_poke_array_refs") if self.desc.refs_off is None else None
        self.per_cpu_offset = symbol_address("__per_cpu_offset") if self.percpu_refs else None

    def _version(self) -> str:
        """The release in vmlinux's linux_banner ("Linux version 5.10.223 ..."), '' if unknown."""
        from .slide import file_bytes

        addr = symbol_address("linux_banner")
        try:
            banner = file_bytes(addr, 160).split(b"\0")[0].decode(errors="replace") if addr else ""
        except UserError:
            return ""
        m = re.match(r"Linux version (\d+\.\d+[^\s]*)", banner)
        return m.group(1) if m else ""

    def require(self, mode: CheckMode) -> None:
        """Refuse a check mode whose stops this kernel's symbols do not have."""
        if mode.stops_at_int3_entry and self.int3_entry is None:
            raise UserError(f"mode {mode} needs the int3 entry ({' or '.join(INT3_ENTRIES)}) in the symbols")
        if mode.follows_landing and self.iret is None:
            raise UserError(f"mode {mode} needs {IRET} in the symbols to follow the landing")

    @staticmethod
    def _has_type(name: str) -> bool:
        try:
            lookup_struct(name)
            return True
        except gdb.error:
            return False

    @staticmethod
    def read_text(addr: int, n: int) -> bytes:
        """Kernel text as vmlinux has it (also before the guest has booted)."""
        with _from_vmlinux():
            return bytes(gdb.selected_inferior().read_memory(addr, n))

    @staticmethod
    def disassemble(func: str) -> list[tuple[int, int, str]]:
        """(address, length, text) of each instruction of `func`, from vmlinux, in
        address order. gdb's `disassemble` names the function's ranges: its block's
        end is wrong both where the first instruction belongs to an inlined callee
        (5.4's do_int3 starts with an inlined atomic_read) and where gcc split the
        function (a .cold part far away: 5.10's text_poke_bp_batch)."""
        arch = gdb.selected_inferior().architecture()
        with _from_vmlinux():
            text = gdb.execute(f"disassemble '{func}'", to_string=True)
            ranges = [(int(a, 16), int(b, 16)) for a, b in _RANGE.findall(text)]
            if not ranges:
                addrs = [int(a, 16) for a in _INSN_ADDR.findall(text)]
                if not addrs:
                    return []
                ranges = [(addrs[0], addrs[-1] + 1)]
            return [(i["addr"], i["length"], i["asm"])
                    for lo, hi in ranges for i in arch.disassemble(lo, hi - 1)]

    @staticmethod
    def _pt_regs_layout() -> StructLayout:
        try:
            dwarf = struct_layout("struct pt_regs")
        except gdb.error:
            return PT_REGS_X86_64
        for name in ("ip", "sp", "flags", "orig_ax"):
            if dwarf.fields.get(name) and dwarf.fields[name].offset != PT_REGS_X86_64.fields[name].offset:
                raise UserError(f"struct pt_regs.{name} is at {dwarf.fields[name].offset} in DWARF; "
                                "this is not an x86_64 kernel")
        if dwarf.size != PT_REGS_X86_64.size:
            raise UserError(f"sizeof(struct pt_regs) is {dwarf.size}, expected 168 (x86_64)")
        return PT_REGS_X86_64

    def describe(self) -> list[tuple[str, str]]:
        era = f"{self.era} ({', then '.join(n for n, _ in self.handlers)})"
        d = self.desc
        if d is None:  # v5.2: one site at a time
            desc = ", ".join(f"{n} at {a:#x}" for n, a in zip(SINGLE_SITE, self.single_site))
            desc_row, loc_row = f"one site at a time (v5.2): {desc}", "- (the handler only jumps to bp_int3_handler)"
        else:
            desc = f"{d.name} ({'pointer' if d.is_pointer else 'static struct'}" + \
                (", inline vec" if d.vec_inline else "") + (", refs" if d.refs_off is not None else "") + \
                (", keeps the last batch" if self.keeps_last_batch else "") + ")"
            desc_row = f"{desc} at {self.desc_addr:#x}"
            loc_row = f"{self.loc_type}, {self.loc.size} bytes: " + \
                ", ".join(f"{n}@{f.offset}" for n, f in self.loc.fields.items())
        return [
            ("era", era),
            ("handler", ", ".join(f"{n} at {a:#x}" for n, a in self.handlers)),
            ("returns to", ", ".join(f"{c}+{r - symbol_address(c):#x} ({r:#x})" for c, r in self.returns)),
            ("then", ", ".join(f"{f} returns to {r:#x}" for f, r in self.followups) or "-"),
            ("batch descriptor", desc_row),
            ("batch element", loc_row),
            ("_stext", f"{self.stext:#x}"),
            ("int3 entry", f"{self.int3_entry_name} at {self.int3_entry:#x}" if self.int3_entry
             else "not found (no MODE=full)"),
            ("per-CPU refs", f"text_poke_array_refs at {self.percpu_refs:#x} + __per_cpu_offset[cpu]"
             if self.percpu_refs else "-"),
            ("iret", f"{IRET} at {self.iret:#x}" if self.iret else "not found (no landing checks)"),
            ("DWARF", "yes" if self.dwarf else NO_DWARF),
            ("engine", f"watch (default): a read watchpoint on {self.watch_word()[0]}, then each int3's "
             "return slot and regs->cs; breakpoints: on the handler, its returns, the int3 entry, the iretq"
             if not self.no_watch else f"breakpoints only: {self.no_watch}"),
        ]

    def to_json(self) -> dict:
        return {"handler": self.handler_name, "handler_addr": self.handler, "handlers": self.handlers,
                "era": self.era, "version": self.version,
                "returns": [[c, r] for c, r in self.returns],
                "descriptor": self.desc.to_json() if self.desc else None, "single_site": self.single_site,
                "desc_addr": self.desc_addr, "keeps_last_batch": self.keeps_last_batch,
                "loc_type": self.loc_type, "loc_layout": self.loc.to_json() if self.loc else None,
                "stext": self.stext,
                "int3_entry": [self.int3_entry_name, self.int3_entry], "iret": self.iret, "dwarf": self.dwarf,
                "watch_word": None if self.no_watch else self.watch_word()[0], "no_watch": self.no_watch}

    def read_cpu_refs(self, cpu: int) -> int | None:
        """This CPU's text_poke_array_refs (v6.16+), or None where refs are not per CPU."""
        if self.percpu_refs is None or self.per_cpu_offset is None:
            return None
        base = mem.read_u64(self.per_cpu_offset + 8 * cpu)
        raw = mem.try_read((base + self.percpu_refs) & MASK64, 4)
        return int.from_bytes(raw, "little", signed=True) if raw is not None else None

    def read_decision(self, handler: str, site: int) -> tuple[Batch, dict | None]:
        """What `handler` decides an int3 at `site` by: the batch, or for
        ftrace_int3_handler (v5.2-v5.5) the ftrace state (core.ftrace_era.FtraceState)."""
        if handler != FTRACE_HANDLER:
            return self.read_batch(), None
        from . import symbols

        st = FtraceState(mem.read_s32(self.modifying_ftrace_code), symbols.is_ftrace_location(site),
                         mem.read_u64(self.ftrace_update_func), mem.read_u64(self.ftrace_update_func_call),
                         self.ftrace_regs_caller)
        return Batch(False, 0, []), st.to_json()

    def read_batch(self) -> Batch:
        """The batch the handler sees: one read for the descriptor, one for the vector."""
        if self.single_site is not None:
            flag, int3_addr, handler = self.single_site
            return single_site_batch(mem.read(flag, 1)[0], mem.read_u64(int3_addr), mem.read_u64(handler))
        d = self.desc
        addr = self.desc_addr
        if d.is_pointer:
            addr = mem.read_u64(self.desc_addr)
            if addr == 0:
                return Batch(False, 0, [])
        live, nr, vec = parse_header(d, mem.read(addr, header_read(d)), addr)
        n = readable_count(nr, vec) if live or self.keeps_last_batch else 0
        buf = mem.try_read(vec, n * self.loc.size) if n else None
        return make_batch(live, nr, self.loc, buf, self.stext)


@per_objfile
def info() -> KernelInfo:
    """The kernel in gdb, resolved once per set of symbols."""
    return KernelInfo()
