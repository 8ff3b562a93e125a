"""What the int3 handler must do for one text_poke_loc of a batch: x86 semantics, pure.

The text-patching batch (struct text_poke_loc / smp_text_poke_loc) records,
for each site, the bytes being installed (`text`) and the instruction the
int3 handler emulates meanwhile (`opcode` + `disp`, with `len`). The kernel
stores a NOP5 (NOP2) as JMP32+0 (JMP8+0), and a Jcc.d32 as the Jcc.d8 opcode
with len == 6 (text_poke_loc_init() in arch/x86/kernel/alternative.c).

`expected_effect()` computes, from the text_poke_loc, the site and the registers the
CPU saved, what regs->ip / regs->sp / the pushed word must be after a correct
emulation. It mirrors int3_emulate_{call,jmp,ret,jcc} in
arch/x86/include/asm/text-patching.h but is written from the x86 semantics of
the instruction, not copied from the handler.
"""

from __future__ import annotations

import dataclasses

from .layout import StructLayout

INT3 = 0xCC
RET = 0xC3
CALL = 0xE8
JMP32 = 0xE9
JMP8 = 0xEB
CALL_INSN_SIZE = 5
NOP5 = bytes.fromhex("0f1f440000")  # x86_nops[5] on x86_64 (BYTES_NOP5); P6_NOP5_ATOMIC before v5.15
NOP2 = bytes.fromhex("6690")  # x86_nops[2]
# Before v5.15 ftrace and jump labels installed ideal_nops[NOP_ATOMIC5], chosen at
# boot by CPU: P6 (= NOP5) or, on AMD K8-family CPUs and QEMU's default qemu64,
# K8_NOP5_ATOMIC (arch/x86/include/asm/nops.h of those trees).
NOP5_K8_ATOMIC = bytes.fromhex("6666666690")

MASK64 = (1 << 64) - 1

# EFLAGS bits used by Jcc.
CF, PF, ZF, SF, OF = 1 << 0, 1 << 2, 1 << 6, 1 << 7, 1 << 11

JCC_NAMES = ("jo", "jno", "jb", "jae", "je", "jne", "jbe", "ja",
             "js", "jns", "jp", "jnp", "jl", "jge", "jle", "jg")


def text_opcode_size(opcode: int) -> int:
    """Length of an emulated instruction in trees without text_poke_loc.len (v5.6-v5.16)."""
    return {INT3: 1, RET: 1, CALL: 5, JMP32: 5, JMP8: 2}.get(opcode, 0)


@dataclasses.dataclass(frozen=True)
class PokeLoc:
    """One text_poke_loc of a batch: a site and what is being installed there."""

    index: int
    site: int
    opcode: int  # the opcode the handler emulates
    length: int  # bytes from the site to the next instruction
    disp: int  # displacement of the emulated instruction (signed)
    text: bytes  # the new bytes being written (as stored: see installed_bytes)
    detour: int | None = None  # v5.3-v5.5: where the handler sends the CPU instead of emulating

    @property
    def installed(self) -> bytes:
        """The instruction bytes being installed at the site."""
        if self.length == 6:  # Jcc.d32: text holds bytes 1..5, byte 0 is 0x0f
            return b"\x0f" + self.text[:5]
        return self.text[:self.length]

    def to_json(self) -> dict:
        d = {"index": self.index, "site": self.site, "opcode": self.opcode,
             "len": self.length, "disp": self.disp, "text": self.text.hex()}
        if self.detour is not None:
            d["detour"] = self.detour
        return d

    @classmethod
    def from_json(cls, d: dict) -> "PokeLoc":
        return cls(d["index"], d["site"], d["opcode"], d["len"], d["disp"], bytes.fromhex(d["text"]),
                   d.get("detour"))


def decode_loc(layout: StructLayout, buf: bytes, base: int, index: int, stext: int) -> PokeLoc:
    """Decode one text_poke_loc at buf[base:]. `stext` is the address of _stext."""
    if layout.has("detour"):  # v5.3-v5.5: {detour, addr, len, opcode[5]}: opcode holds the new bytes
        text = layout.get_bytes(buf, "opcode", base)
        return PokeLoc(index, layout.get(buf, "addr", base), text[0], layout.get(buf, "len", base), 0, text,
                       detour=layout.get(buf, "detour", base))
    if layout.has("rel_addr"):
        site = (stext + layout.get(buf, "rel_addr", base)) & MASK64
    else:  # v5.3-v5.5: void *addr
        site = layout.get(buf, "addr", base)
    opcode = layout.get(buf, "opcode", base)
    if layout.has("len"):
        length = layout.get(buf, "len", base)
    else:
        length = text_opcode_size(opcode)
    disp = layout.get(buf, "disp" if layout.has("disp") else "rel32", base)
    return PokeLoc(index, site, opcode, length, disp, layout.get_bytes(buf, "text", base))


def decode_vector(layout: StructLayout, buf: bytes, nr: int, stext: int) -> list[PokeLoc]:
    return [decode_loc(layout, buf, i * layout.size, i, stext) for i in range(nr)]


def find_loc(locs: list[PokeLoc], site: int) -> PokeLoc | None:
    """The text_poke_loc for `site`, by exact address (the handler bsearches a sorted
    vector; we search linearly so an unsorted vector still finds what is there)."""
    for loc in locs:
        if loc.site == site:
            return loc
    return None


def classify_bytes(b: bytes) -> str:
    """Name the instruction the bytes encode (only the kinds text patching installs)."""
    if not b:
        return "?"
    op = b[0]
    if op == CALL and len(b) >= 5:
        return "CALL"
    if op == JMP32 and len(b) >= 5:
        return "JMP32"
    if op == JMP8 and len(b) >= 2:
        return "JMP8"
    if op == RET:
        return "RET"
    if op == INT3:
        return "INT3"
    if b[:5] in (NOP5, NOP5_K8_ATOMIC):
        return "NOP5"
    if b[:2] == NOP2:
        return "NOP2"
    if 0x70 <= op <= 0x7F:
        return JCC_NAMES[op & 0xF].upper() + "8"
    if op == 0x0F and len(b) >= 2 and 0x80 <= b[1] <= 0x8F:
        return JCC_NAMES[b[1] & 0xF].upper() + "32"
    return f"?{b.hex()}"


def rel_target(b: bytes, site: int) -> int | None:
    """Branch destination encoded in the installed bytes, or None."""
    kind = classify_bytes(b)
    if kind in ("CALL", "JMP32"):
        return (site + 5 + int.from_bytes(b[1:5], "little", signed=True)) & MASK64
    if kind == "JMP8" or kind.endswith("8") and kind.startswith("J"):
        return (site + 2 + int.from_bytes(b[1:2], "little", signed=True)) & MASK64
    if kind.endswith("32") and kind.startswith("J"):
        return (site + 6 + int.from_bytes(b[2:6], "little", signed=True)) & MASK64
    return None


def jcc_taken(cc: int, flags: int) -> bool:
    """Whether Jcc with condition code cc (0..15) is taken for these EFLAGS."""
    base = cc >> 1
    if base == 0:
        match = bool(flags & OF)
    elif base == 1:
        match = bool(flags & CF)
    elif base == 2:
        match = bool(flags & ZF)
    elif base == 3:
        match = bool(flags & (CF | ZF))
    elif base == 4:
        match = bool(flags & SF)
    elif base == 5:
        match = bool(flags & PF)
    elif base == 6:
        match = bool(flags & SF) != bool(flags & OF)
    else:
        match = (bool(flags & SF) != bool(flags & OF)) or bool(flags & ZF)
    return match != bool(cc & 1)


@dataclasses.dataclass(frozen=True)
class Expected:
    """The effect of a correct emulation."""

    kind: str  # CALL, JMP, NOP, RET, Jcc name, DETOUR (v5.3-v5.5), INT3 (left alone), or BUG
    emulate: bool  # True: the handler must consume the int3 (return 1)
    ip: int | None = None
    sp_delta: int = 0
    push: int | None = None  # the word a CALL pushes (its return address)
    target: int | None = None  # destination of a CALL/JMP, for naming

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def expected_effect(loc: PokeLoc, site: int, flags: int, stack_top: int | None) -> Expected:
    """What the handler must do at `site` for `loc`.

    flags: the interrupted EFLAGS (regs->flags); stack_top: the word at the
    interrupted regs->sp (needed for RET only).
    """
    end = (site + loc.length) & MASK64
    op = loc.opcode
    if loc.detour is not None:
        # v5.3-v5.5 poke_int3_handler: no emulation, regs->ip = detour whatever is
        # installed (a jump label's detour is the instruction after the site).
        return Expected("DETOUR", True, ip=loc.detour, target=loc.detour)
    if op == INT3:
        return Expected("INT3", emulate=False)
    if op == CALL:
        tgt = (end + loc.disp) & MASK64
        return Expected("CALL", True, ip=tgt, sp_delta=-8,
                        push=(site + CALL_INSN_SIZE) & MASK64, target=tgt)
    if op in (JMP32, JMP8):
        tgt = (end + loc.disp) & MASK64
        installed = classify_bytes(loc.installed)
        kind = "NOP" if installed.startswith("NOP") and loc.disp == 0 else "JMP"
        return Expected(kind, True, ip=tgt, target=tgt)
    if op == RET:
        return Expected("RET", True, ip=stack_top, sp_delta=8)
    if 0x70 <= op <= 0x7F:
        cc = op & 0xF
        tgt = (end + loc.disp) & MASK64
        ip = tgt if jcc_taken(cc, flags) else end
        return Expected(JCC_NAMES[cc].upper(), True, ip=ip, target=tgt)
    return Expected("BUG", emulate=False)
