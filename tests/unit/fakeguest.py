"""A small guest for the engines' rules: memory as a dict of bytes, the vCPUs' registers,
the frame facts gdb would give. Addresses and layouts are those of the 6.12.118 run in
tests/data (poke_int3_handler, bp_desc with its static struct, the 16-byte text_poke_loc),
moved to round numbers; what a test changes is said in the test."""

from __future__ import annotations

from gdb_ftrace.core.batch import DESC_V60_STRUCT
from gdb_ftrace.core.facts import KernelFacts
from gdb_ftrace.core.insn import CALL, JMP8, MASK64
from gdb_ftrace.core.layout import PT_REGS_X86_64, TEXT_POKE_LOC_V517

HANDLER = 0xFFFFFFFF81091770
HANDLER_END = HANDLER + 0x1E6
ENTRY_RIP = HANDLER + 46  # after its first read of bp_desc.nr_entries
LATER_RIP = HANDLER + 109  # a later read of bp_desc in the same call (the refcount's put)
EXC_INT3 = 0xFFFFFFFF810908A0
RETURN_SITE = EXC_INT3 + 0xE
ENTRY_TEXT = (0xFFFFFFFF81200010, 0xFFFFFFFF8120224B)
EXIT_RIP = ENTRY_TEXT[0] + 0x1269  # error_return, before the iretq
STEXT = 0xFFFFFFFF81000000
BP_DESC = 0xFFFFFFFF82AE55E0
VEC = 0xFFFFFFFF82B00000
SITE_CALL = 0xFFFFFFFF81400004  # cmdline_proc_show+0x4 in the run
SITE_JMP = 0xFFFFFFFF81300100
CALL_TARGET = 0xFFFFFFFF81E00000  # ftrace_caller
STACK = {0: 0xFFFFC90000003000, 1: 0xFFFFC90000103000}  # the interrupted sp on each vCPU

FACTS = KernelFacts(
    handler_name="poke_int3_handler", handlers=(("poke_int3_handler", HANDLER),), returns=(RETURN_SITE,),
    followups=(), dwarf=True, stext=STEXT, desc=DESC_V60_STRUCT, desc_addr=BP_DESC, loc=TEXT_POKE_LOC_V517,
    keeps_last_batch=True, die=0xFFFFFFFF810A0000, die_name="oops_enter", oops_word=0xFFFFFFFF82000000,
    watch_word="bp_desc.nr_entries", watch_size=4, handler_range=(HANDLER, HANDLER_END),
    exit_ranges=((EXC_INT3, EXC_INT3 + 0x124), ENTRY_TEXT),
    handler_code=((ENTRY_RIP - 7, 7, f"movslq 0x1a53e4a(%rip),%rcx        # {BP_DESC + 8:#x} <bp_desc+8>"),))


def _u64(v: int) -> bytes:
    return (v & MASK64).to_bytes(8, "little")


class World:
    """Memory, per-vCPU registers and frames; `on(cpu)` gives the Guest of a stop there."""

    def __init__(self) -> None:
        self.mem: dict[int, int] = {}
        self.regs = {0: {}, 1: {}}
        self.frames = {0: None, 1: None}
        self.writes: list[tuple[int, bytes]] = []
        self.batch([])

    def put(self, addr: int, data: bytes) -> None:
        for i, b in enumerate(data):
            self.mem[(addr + i) & MASK64] = b

    def get(self, addr: int, n: int) -> bytes | None:
        try:
            return bytes(self.mem[(addr + i) & MASK64] for i in range(n))
        except KeyError:
            return None

    def batch(self, sites: list[tuple[int, int, int]]) -> None:
        """bp_desc with these (site, opcode, disp) entries, live (refs 1) when any."""
        self.put(BP_DESC, _u64(VEC) + len(sites).to_bytes(4, "little") + (1 if sites else 0).to_bytes(4, "little"))
        for i, (site, op, disp) in enumerate(sorted(sites)):
            length = 5 if op == CALL else 2
            text = (bytes([op]) + (disp & 0xFFFFFFFF).to_bytes(4, "little"))[:length].ljust(5, b"\0")
            self.put(VEC + 16 * i, ((site - STEXT) & 0xFFFFFFFF).to_bytes(4, "little") +
                     (disp & 0xFFFFFFFF).to_bytes(4, "little") + bytes([length, op]) + text + b"\0")

    def int3(self, cpu: int, site: int, depth: int = 0) -> int:
        """The CPU took the int3 at site on its stack: pt_regs and the gap in memory, the
        vCPU in the handler's first read. Returns the pt_regs address."""
        sp = STACK[cpu] - 0x400 * depth
        frame = (site + 1, 0x10, 0x246, sp, 0x18)
        regs_addr = (sp & ~0xF) - 48 - PT_REGS_X86_64.size - 0x40
        self.put(regs_addr, b"\0" * 120 + _u64(-1) + b"".join(_u64(w) for w in frame))
        self.put(regs_addr + PT_REGS_X86_64.size, _u64(-1) + b"".join(_u64(w) for w in frame))
        self.put(site, b"\xcc" + b"\x90" * 7)
        self.put(sp, _u64(0x1234))
        handler_rsp = regs_addr - 32
        self.put(handler_rsp, _u64(RETURN_SITE))
        self.regs[cpu] = {"rip": ENTRY_RIP, "rsp": handler_rsp - 8, "rdi": regs_addr, "rax": 0}
        self.frames[cpu] = ("poke_int3_handler", regs_addr, handler_rsp + 8)
        return regs_addr

    def emulate(self, regs_addr: int, ip: int, push: int | None = None) -> None:
        """What the handler does to pt_regs: regs->ip = ip, and for a CALL the push."""
        self.put(regs_addr + 128, _u64(ip))
        if push is not None:
            sp = int.from_bytes(self.get(regs_addr + 152, 8), "little") - 8
            self.put(regs_addr + 152, _u64(sp))
            self.put(sp, _u64(push))

    def on(self, cpu: int) -> "FakeGuest":
        return FakeGuest(self, cpu)


class FakeGuest:
    def __init__(self, world: World, cpu: int) -> None:
        self.w, self.c = world, cpu

    def cpu(self) -> int:
        return self.c

    def ncpus(self) -> int:
        return 2

    def reg(self, name: str) -> int:
        return self.w.regs[self.c].get(name, 0)

    def read(self, addr: int, n: int) -> bytes | None:
        return self.w.get(addr, n)

    def now(self) -> float:
        return 1.0

    def handler_frame(self):
        return self.w.frames[self.c]

    def frame_names(self, depth: int) -> list[str]:
        return []

    def die_args(self, depth: int):
        return None

    def is_ftrace_location(self, site: int) -> bool:
        return site == SITE_CALL

    def site_kind(self, site: int) -> str:
        return "ftrace" if site == SITE_CALL else ""

    def write(self, addr: int, data: bytes) -> None:
        self.w.writes.append((addr, data))
        self.w.put(addr, data)


__all__ = ["FACTS", "World", "FakeGuest", "CALL", "JMP8"]
