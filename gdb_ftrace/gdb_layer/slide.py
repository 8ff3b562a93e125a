"""Find the running kernel (KASLR slide), prove the vmlinux is it, relocate the symbols.

The guest is read, never trusted to match the file: the IDT's int3 gate gives
the runtime int3 entry (core.kaslr), `linux_banner` at the slid address must
equal vmlinux's. A wrong vmlinux is refused naming both releases. When the
slide is not what gdb's symbols assume, vmlinux is loaded again at the slide
(relocate(): about a second, DWARF is read lazily), and the exec file is
dropped so that no code read is answered from the file at link addresses that
now hold something else.
"""

from __future__ import annotations

import gdb

from ..core import elf, kaslr
from ..core.errors import UserError
from ..core.insn import MASK64
from . import mem
from . import symtab
from .symtab import file_bytes, symbol_address, trust_readonly

INT3_ENTRIES = ("asm_exc_int3", "int3")  # the IDT's int3 entry: v5.8+, before v5.8
located: kaslr.Location | None = None


def _from_target():
    """Read the guest, not the file, whatever the user set."""
    return trust_readonly(False)


def connected() -> bool:
    """A live target to read (not just a vmlinux file)."""
    try:
        return bool(gdb.selected_inferior().pid) and bool(gdb.selected_inferior().threads())
    except gdb.error:
        return False


def idt() -> tuple[int, str]:
    """The IDT base and where it came from."""
    try:
        out = gdb.execute("monitor info registers", to_string=True)
    except gdb.error:
        out = ""
    got = kaslr.parse_idt(out)
    if got is not None:
        return got[0], "IDT gate 3, base from QEMU 'info registers'"
    return kaslr.IDT_FALLBACK, f"IDT gate 3, base {kaslr.IDT_FALLBACK:#x} (CPU_ENTRY_AREA_RO_IDT)"


def guest_banner_near(addr: int, span: int = 64 << 20, chunk: int = 1 << 20) -> str:
    """Search the guest's kernel image from the 2 MiB page of addr on for its banner."""
    start = addr & ~(kaslr.SLIDE_ALIGN - 1)
    with _from_target():
        for off in range(0, span, chunk):
            buf = mem.try_read(start + off, chunk)
            if buf is None:
                continue
            i = kaslr.find_banner(buf)
            if i is not None:
                return kaslr.banner_text(buf[i:i + 256])
    return ""


class NotUpYet(Exception):
    """The guest's int3 gate does not point at this kernel's int3 entry yet (reset,
    early boot). runtime: where it points when that is kernel text."""

    def __init__(self, msg: str, runtime: int | None = None) -> None:
        super().__init__(msg)
        self.runtime = runtime


def locate() -> kaslr.Location:
    """Where the running kernel is relative to gdb's symbols (raises NotUpYet, UserError)."""
    entry_name = next((e for e in INT3_ENTRIES if symbol_address(e) is not None), None)
    if entry_name is None:
        raise UserError(f"no int3 entry ({' or '.join(INT3_ENTRIES)}) in the symbols: cannot find the kernel")
    entry = symbol_address(entry_name)
    base, how = idt()
    with _from_target():
        gate = mem.try_read((base + kaslr.INT3_VECTOR * kaslr.GATE_SIZE) & MASK64, kaslr.GATE_SIZE)
    if gate is None or not kaslr.gate_present(gate):
        raise NotUpYet("no int3 gate yet")
    runtime = kaslr.gate_target(gate)
    if runtime < kaslr.KERNEL_TEXT_LO:
        raise NotUpYet(f"int3 gate points at {runtime:#x}, not kernel text")
    delta = kaslr.slide_for(runtime, entry)
    if delta is None and runtime != entry:
        # A relocated objfile: the slide can be below gdb's current symbols too.
        back = kaslr.slide_for(entry, runtime)
        delta = -back if back is not None else None
    if delta is None:
        raise NotUpYet(f"int3 gate points at {runtime:#x}, not at {entry_name} ({entry:#x}) moved by a KASLR slide",
                       runtime)
    banner, want = _file_banner()
    with _from_target():
        raw = mem.try_read((banner + delta) & MASK64, 256)
    have = kaslr.banner_text(raw) if raw else ""
    if have != want:
        raise WrongKernel(want, have or guest_banner_near(runtime))
    path = symtab.vmlinux_path()
    total = symtab.applied.get(path, 0) + delta
    return kaslr.Location(total, base, runtime, how)


def refuse_unmatched(runtime: int) -> None:
    """The kernel is up but its int3 gate never matched this vmlinux: say which kernel runs."""
    _addr, want = _file_banner()
    have = guest_banner_near(runtime)
    if have != want:
        raise WrongKernel(want, have)
    raise UserError(f"the guest runs this vmlinux's kernel ({kaslr.release(want)}) but its int3 gate points at "
                    f"{runtime:#x}, which is not the int3 entry moved by a KASLR slide")


def _file_banner() -> tuple[int, str]:
    """linux_banner's address in gdb's symbols, and the banner text vmlinux holds there."""
    addr = symbol_address("linux_banner")
    if addr is None:
        raise UserError("no linux_banner in the symbols: cannot tell which kernel this vmlinux is")
    return addr, kaslr.banner_text(file_bytes(addr, 256))


class WrongKernel(UserError):
    def __init__(self, file_banner_: str, guest_banner: str) -> None:
        self.file_banner, self.guest_banner = file_banner_, guest_banner
        guest = kaslr.release(guest_banner) if guest_banner else "a kernel whose banner was not found"
        super().__init__(
            f"this vmlinux is not the running kernel: the guest runs {guest}, the vmlinux is "
            f"{kaslr.release(file_banner_)}; load the running kernel's vmlinux (file /path/to/vmlinux)\n"
            f"  guest:   {guest_banner or '?'}\n  vmlinux: {file_banner_}")


def relocate(loc: kaslr.Location) -> bool:
    """Move gdb's symbols to the running kernel; True when they were reloaded.

    `add-symbol-file -o SLIDE -s .data..percpu 0`: every section moves by the slide
    except the per-CPU one, linked at 0 on x86_64 SMP, whose symbols are offsets
    from each CPU's base and do not move (so per-CPU reads stay right, ours and
    those of the kernel's own lx-* scripts)."""
    path = symtab.vmlinux_path()
    if symtab.applied.get(path, 0) == loc.slide:
        return False
    keep = ""
    try:
        if elf.section_addr(path, ".data..percpu") == 0:
            keep = " -s .data..percpu 0"
    except (OSError, elf.ElfError):
        pass
    confirm = gdb.parameter("confirm")
    # gdb disables a breakpoint whose symbols are discarded; the user's come back as they were.
    users = [(b, b.enabled) for b in gdb.breakpoints() if b.is_valid()]
    gdb.execute("set confirm off", to_string=True)
    try:
        gdb.execute("symbol-file", to_string=True)
        gdb.execute(f"add-symbol-file '{path}' -o {loc.slide:#x}{keep}", to_string=True)
    finally:
        gdb.execute(f"set confirm {'on' if confirm else 'off'}", to_string=True)
        for b, enabled in users:
            if b.is_valid() and b.enabled != enabled:
                b.enabled = enabled
    try:
        gdb.execute("exec-file", to_string=True)  # its sections stay at link addresses
    except gdb.error:
        pass
    symtab.vmlinux = path
    symtab.applied[path] = loc.slide
    return True


def ensure() -> kaslr.Location:
    """Locate the kernel, refuse a wrong vmlinux, relocate the symbols: before arming."""
    global located
    loc = locate()
    relocate(loc)
    located = loc
    return loc
