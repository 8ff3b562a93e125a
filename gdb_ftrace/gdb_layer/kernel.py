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

import re

import gdb  # only this layer imports gdb

from ..core import watch as W
from ..core.batch import SINGLE_SITE, DescLayout, documented, era_name
from ..core.disasm import call_return_sites
from ..core.errors import UserError
from ..core.facts import FTRACE_HANDLER, KernelFacts
from ..core.inject import gap_branch
from ..core.layout import PT_REGS_X86_64, StructLayout
from .cache import per_objfile
from .slide import INT3_ENTRIES
from .symtab import (data_symbol_address, disassemble, file_bytes, function_range, lookup_struct, read_text,
                     struct_layout, symbol_address)

NO_DWARF = ("no: pt_regs, the batch descriptor and text_poke_loc from the era's documented layouts; "
            "unavailable: which sites are ftrace's, ftrace_ops trampoline owners, module symbol names")
HANDLERS = ("smp_text_poke_int3_handler", "poke_int3_handler")
CALLERS = ("exc_int3", "do_int3")
DESCRIPTORS = ("text_poke_array", "bp_desc", "int3_desc", "bp_patching")  # bp_patching: v5.3-v5.5
LOC_TYPES = ("struct smp_text_poke_loc", "struct text_poke_loc")
IRET = "native_irq_return_iret"
OOPS_WORD = "sysctl_oops_all_cpu_backtrace"  # read by oops_enter() (v5.8+) and its sysctl only


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
            caller_code[caller] = disassemble(caller)
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
        # die's own first instruction, whose page shares code the idle loop runs (docs/cost.md).
        self.die_name = next((n for n in W.DIE_STOPS if symbol_address(n) is not None), None)
        self.die = symbol_address(self.die_name) if self.die_name else None
        if self.ftrace_handler is not None:
            # ftrace_update_func_call came with the series (v5.2): None on an older kernel (core.ftrace_era).
            names = ("modifying_ftrace_code", "ftrace_update_func", "ftrace_regs_caller")
            missing = [n for n in names if symbol_address(n) is None]
            if missing:
                raise UserError(f"{FTRACE_HANDLER} found, but not {', '.join(missing)}: unknown ftrace_int3_handler era")
            self.modifying_ftrace_code, self.ftrace_update_func, self.ftrace_regs_caller = \
                (symbol_address(n) for n in names)
            self.ftrace_update_func_call = symbol_address("ftrace_update_func_call")
        self.int3_entry_name = next((e for e in INT3_ENTRIES if symbol_address(e) is not None), None)
        self.int3_entry = symbol_address(self.int3_entry_name) if self.int3_entry_name else None
        self.iret = symbol_address(IRET)
        self.version = self._version()
        self.era = era_name([n for n, _ in self.handlers], self.desc, self.version,
                            {"update_func_call": self.ftrace_update_func_call} if self.ftrace_handler else None)
        self.no_watch = W.no_watch(self.ftrace_handler is not None, self.desc)
        self.watch_fn = W.watch_fn(self.ftrace_handler is not None, sorted({c for c, _ in self.returns}))
        self.watch_returns: list[int] = []
        if self.watch_fn and self.int3_entry_name:  # where the int3 entry's call to do_int3 returns
            self.watch_returns = call_return_sites(disassemble(self.int3_entry_name), symbol_address(self.watch_fn))

    def watch_word(self) -> tuple[str, int]:
        return W.watch_word(self.desc, self.percpu_refs, self.ftrace_handler is not None)

    def exit_ranges(self) -> list[tuple[int, int]]:
        """Where a vCPU is between the handler's return and the iretq: the handler's callers
        (exc_int3 / do_int3) and the entry text (asm_exc_int3 ... native_irq_return_iret)."""
        out = []
        for caller in {c for c, _ in self.returns}:
            fn = function_range(symbol_address(caller))
            if fn:
                out.append(fn)
        lo, hi = symbol_address("__entry_text_start"), symbol_address("__entry_text_end")
        if lo and hi:
            out.append((lo, hi))
        elif self.int3_entry and self.iret:
            out.append((min(self.int3_entry, self.iret), max(self.int3_entry, self.iret) + 2))
        return out

    def handler_range(self) -> tuple[int, int]:
        """[start, end) of the code the watched word is read in: the text-patch handler's, or
        do_int3's (v5.2-v5.5); its DWARF block, else the disassembly's last instruction."""
        name = self.watch_fn or self.handler_name
        start = symbol_address(name)
        code = disassemble(name)
        end = code[-1][0] + code[-1][1]
        fn = function_range(start)  # a DWARF block may be the first of several ranges (do_int3 on 5.4: 6 bytes)
        return (start, max(end, fn[1])) if fn is not None and fn[0] == start else (start, end)

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
        addr = symbol_address("linux_banner")
        try:
            banner = file_bytes(addr, 160).split(b"\0")[0].decode(errors="replace") if addr else ""
        except UserError:
            return ""
        m = re.match(r"Linux version (\d+\.\d+[^\s]*)", banner)
        return m.group(1) if m else ""

    @staticmethod
    def _has_type(name: str) -> bool:
        try:
            lookup_struct(name)
            return True
        except gdb.error:
            return False

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
            ("engine", f"watch (default): a read watchpoint on {self.watch_word()[0]}"
             f"{' (read in ' + self.watch_fn + ')' if self.watch_fn else ''}, then each int3's "
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

    def gap_patch(self, mode: str | None):
        """INJECT=no-gap: the writes that make the int3 entry skip its gap (core.inject.gap_branch)."""
        k = self
        if mode != "no-gap":
            return None
        if k.int3_entry is None:
            raise UserError("INJECT=no-gap needs the int3 entry (asm_exc_int3 / int3) in the symbols")
        try:  # the entry's bytes from vmlinux: the guest may not have booted yet
            return gap_branch(disassemble(k.int3_entry_name), read_text)
        except ValueError as e:
            raise UserError(f"INJECT=no-gap: {e}") from None

    def hold_facts(self) -> tuple[dict | None, str]:
        """The hold point's raw inputs from the symbols; core.hold.hold_facts decides."""
        from ..core.hold import HOLD_FUNCS, hold_facts

        ftrace_path = self.ftrace_handler is not None
        fn = next((symbol_address(n) for n in HOLD_FUNCS if symbol_address(n) is not None), None)
        old = self.loc.fields["old"].offset if self.loc is not None and "old" in self.loc.fields else None
        return hold_facts(ftrace_path=ftrace_path,
                          replace_code=disassemble("ftrace_replace_code") if ftrace_path else None,
                          desc=self.desc, desc_addr=self.desc_addr, loc_old=old, tp_vec=data_symbol_address("tp_vec"),
                          func_range=function_range(fn) if fn else None, csq=data_symbol_address("call_single_queue"),
                          per_cpu_offset=symbol_address("__per_cpu_offset"),
                          locks=[data_symbol_address(n) for n in ("text_mutex", "ftrace_lock")])

    def facts(self) -> KernelFacts:
        """What the engines need (core/facts.py), at the addresses gdb's symbols have now."""
        lo, hi = self.handler_range()
        word, size = ("", 0) if self.no_watch else self.watch_word()
        code = tuple((a, n, t) for a, n, t in disassemble(self.watch_fn or self.handler_name)
                     if lo <= a < hi and "# 0x" in t) \
            if not self.no_watch else ()
        ftrace = None
        if self.ftrace_handler is not None:
            ftrace = {"modifying": self.modifying_ftrace_code, "update_func": self.ftrace_update_func,
                      "update_func_call": self.ftrace_update_func_call, "regs_caller": self.ftrace_regs_caller}
        return KernelFacts(
            handler_name=self.handler_name, handlers=tuple(self.handlers), returns=tuple(r for _, r in self.returns),
            followups=tuple(r for _, r in self.followups), dwarf=self.dwarf, stext=self.stext, desc=self.desc,
            desc_addr=self.desc_addr, loc=self.loc, keeps_last_batch=self.keeps_last_batch,
            single_site=self.single_site, percpu_refs=self.percpu_refs, per_cpu_offset=self.per_cpu_offset,
            ftrace=ftrace, int3_entry=self.int3_entry, iret=self.iret, die=self.die, die_name=self.die_name or "",
            oops_word=data_symbol_address(OOPS_WORD), no_watch=self.no_watch, watch_word=word, watch_size=size,
            handler_range=(lo, hi), exit_ranges=tuple(self.exit_ranges()), handler_code=code,
            watch_fn=self.watch_fn, watch_returns=tuple(self.watch_returns),
            hold=self.hold_facts()[0])


@per_objfile
def info() -> KernelInfo:
    """The kernel in gdb, resolved once per set of symbols."""
    return KernelInfo()
