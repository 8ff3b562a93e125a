"""Fault injection: what to write into the live guest to reproduce each bug class, pure.

The gdb layer (gdb_layer/inject.py) calls these at the checker's stops and
does the writes. Each mode reproduces a bug that the seed series or its
follow-ups fixed, so that the checker can prove it catches it:

  skip-call     the pre-seed handler: an int3 at a CALL being installed is
                skipped (regs->ip = site + 5, nothing pushed) instead of
                emulated; a livepatched function's old body runs
  wrong-return  the emulated CALL pushes a return address a few bytes off
  no-gap        the int3 entry code does not make the gap: its
                `jnz .Lfrom_usermode_no_gap` becomes a `jmp`, so pt_regs sits
                where the CPU pushed its frame and a push can hit it
  late-int3     an int3 byte shows up after its batch has finished (what a
                CPU running stale code sees): the byte is put back when the
                int3 is taken, before the handler looks
"""

from __future__ import annotations

import dataclasses
import re

from .insn import CALL, CALL_INSN_SIZE, MASK64

INJECTIONS = ("skip-call", "wrong-return", "no-gap", "late-int3")
# What each reproduces and the verdict the checker must give it (help text, README).
INJECTION_HELP = {
    "skip-call": "the pre-seed handler: a CALL being installed is skipped (regs->ip = site + 5, nothing "
                 "pushed) -> WRONG-TARGET",
    "wrong-return": "the emulated CALL pushes site + 8; repaired after the landing is seen (modes "
                    "landing/full) -> WRONG-RETURN",
    "no-gap": "the int3 entry makes no gap (its jnz becomes a jmp); the guest usually dies soon after "
              "-> GAP-VIOLATION",
    "late-int3": "an int3 reappears at an ftrace call site after its batch; put back when taken -> MISSED",
}
WRONG_RETURN_OFFSET = 3  # bytes added to the pushed return address


@dataclasses.dataclass(frozen=True)
class Write:
    addr: int
    data: bytes
    why: str


def _u64(v: int) -> bytes:
    return (v & MASK64).to_bytes(8, "little")


def is_emulated_call(ret: int | None, opcode: int | None) -> bool:
    return bool(ret) and opcode == CALL


def call_opcode(loc, ftrace: dict | None) -> int | None:
    """The opcode the handler emulates at this event's site: the batch's (not for a
    v5.3-v5.5 detour), or CALL at an fentry site under ftrace_int3_handler (v5.2-v5.5)."""
    if loc is not None:
        return None if loc.detour is not None else loc.opcode
    return CALL if ftrace and ftrace.get("is_location") else None


def skip_call(regs_addr: int, ip_off: int, sp_off: int, site: int, sp_before: int) -> list[Write]:
    """Undo an emulated CALL the way the pre-seed handler behaved: resume after the site."""
    return [Write(regs_addr + ip_off, _u64(site + CALL_INSN_SIZE), "regs->ip = site + 5 (call skipped)"),
            Write(regs_addr + sp_off, _u64(sp_before), "regs->sp = interrupted sp (nothing pushed)")]


def wrong_return(sp_after: int, site: int) -> tuple[Write, Write]:
    """(corrupt, repair) for the word the emulated CALL pushed."""
    good = (site + CALL_INSN_SIZE) & MASK64
    return (Write(sp_after, _u64(good + WRONG_RETURN_OFFSET), f"[regs->sp] = site + 5 + {WRONG_RETURN_OFFSET}"),
            Write(sp_after, _u64(good), "[regs->sp] = site + 5 (repaired after the landing)"))


_TEST_CS = re.compile(r"^testb?\s+\$0x3,")
_JNE = re.compile(r"^(jne|jnz)\s")
_COPY = re.compile(r"^push[q]?\s+0x28\(%rsp\)")


def gap_branch(code: list[tuple[int, int, str]], read) -> tuple[Write, Write]:
    """(patch, restore) turning the int3 entry's from-user-mode test into an
    unconditional jump over the gap copy (entry_64.S: `testb $3, CS-ORIG_RAX(%rsp);
    jnz .Lfrom_usermode_no_gap; .rept 6; pushq 5*8(%rsp); .endr`).

    code: (addr, length, asm) of the entry's instructions; read(addr, n) -> bytes.
    """
    for i in range(len(code) - 2):
        a, n, asm = code[i + 1]
        if _TEST_CS.match(code[i][2].strip()) and _JNE.match(asm.strip()) and _COPY.match(code[i + 2][2].strip()):
            old = bytes(read(a, n))
            if n == 2 and old[0] == 0x75:  # jnz rel8 -> jmp rel8
                new = b"\xeb" + old[1:]
            elif n == 6 and old[:2] == b"\x0f\x85":  # jnz rel32 -> nop; jmp rel32 (same end, same rel)
                new = b"\x90\xe9" + old[2:]
            else:
                raise ValueError(f"unexpected encoding {old.hex()} of '{asm}' at {a:#x}")
            return (Write(a, new, "int3 entry: skip the gap (jnz -> jmp)"),
                    Write(a, old, "int3 entry: gap restored"))
    raise ValueError("no 'testb $0x3; jnz; pushq 0x28(%rsp)' sequence: is this the int3 entry with the gap?")
