"""Fault injection: what to write into the live guest to reproduce each bug class, pure.

The engines (core/engine.py) call the Injector at the checker's stops; its
writes go through the Guest the gdb layer answers. Each mode reproduces a bug that the seed series or its
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

from .insn import CALL, CALL_INSN_SIZE, INT3, MASK64

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


class Injector:
    """The injection's state and decisions. The engines call its hooks at fixed points of
    each stop, before they read what a hook may change, with the Guest it writes through:
      before_handler  handler entry, before the site bytes are read (late-int3)
      after_batch     handler entry, once the batch is known (no-gap, late-int3)
      at_return       handler return (on time or reported late), before pt_regs is read
                      (skip-call, wrong-return)
      after_landing   after the landing was read (wrong-return repair)
      restore         when the check ends or is interrupted: every byte written back
    Every write goes through guest memory (QEMU's debug path, which also drops stale
    translations), and every write to kernel text is undone by restore().
    gap_patch: (patch, restore) from gap_branch() for no-gap."""

    def __init__(self, mode: str, gap_patch: tuple[Write, Write] | None = None) -> None:
        from .errors import UserError

        if mode not in INJECTIONS:
            raise UserError(f"unknown injection {mode!r}; one of: {', '.join(INJECTIONS)}")
        if mode == "no-gap" and gap_patch is None:
            raise UserError("INJECT=no-gap needs the int3 entry's gap code (asm_exc_int3 / int3)")
        self.mode = mode
        self.count = 0  # events changed
        self.log: list[str] = []
        self._text_restore: dict[int, Write] = {}  # kernel text we changed, by address
        self._gap_patch = gap_patch if mode == "no-gap" else None
        self._repairs: dict[int, Write] = {}  # seq -> repair after landing
        self._recent: dict[int, bytes] = {}  # late-int3: site -> bytes its finished batch installed
        self._planted: dict[int, bytes] = {}  # late-int3: site -> original first byte
        self._hits: dict[int, int] = {}  # int3s taken per site: late-int3 plants only at hot sites
        self.max_plants = 3

    def describe(self) -> str:
        return f"{self.mode}: {self.count} event(s) changed" + (f" ({self.log[-1]})" if self.log else "")

    def _did(self, what: str):
        from .event import Injection

        return Injection(self.mode, what)

    @staticmethod
    def _write(g, w: Write) -> None:
        g.write(w.addr, w.data)

    def before_handler(self, g, site: int):
        """late-int3: the planted int3 was taken; put the byte back before the handler looks."""
        self._hits[site] = self._hits.get(site, 0) + 1
        orig = self._planted.pop(site, None)
        if orig is None:
            return None
        self._write(g, Write(site, orig, "late int3 taken: original first byte put back"))
        self._text_restore.pop(site, None)
        self.count += 1
        return self._did(f"late-int3: an int3 was planted at {site:#x} after its batch; byte put back on entry")

    def after_batch(self, g, batch) -> None:
        if self._gap_patch is not None and self._gap_patch[0].addr not in self._text_restore:
            patch, restore = self._gap_patch
            if g.read(patch.addr, len(restore.data)) == restore.data:  # the kernel is in place
                self._write(g, patch)
                self._text_restore[patch.addr] = restore
                self.log.append(f"{patch.why} at {patch.addr:#x}")
        if self.mode != "late-int3":
            return
        live = {loc.site for loc in batch.locs} if batch.live else set()
        for site in list(self._planted):  # the kernel is patching it again: its int3 replaces ours
            if site in live:
                del self._planted[site]
                self._text_restore.pop(site, None)
        if batch.live:
            for loc in batch.locs:
                # Ftrace call sites being enabled: the class the seed is about, and hot
                # enough in the scenarios (the livepatched function) to be hit soon.
                if loc.installed[:1] == bytes([CALL]):
                    self._recent[loc.site] = loc.installed
        if self._planted or not self._recent or self.count >= self.max_plants:
            return
        for site, installed in list(self._recent.items()):
            if site in live or not installed:
                continue
            # Only an ftrace site that CPUs keep running into: the kernel checks the
            # old bytes before it patches a site again (ftrace_verify_code, static
            # calls BUG() on an unexpected 0xcc), so a planted int3 must be taken soon.
            if self._hits.get(site, 0) < 2 or g.site_kind(site) != "ftrace":
                continue
            now = g.read(site, len(installed))
            if now is None or bytes(now) != installed:
                continue  # its batch has not finished yet
            self._write(g, Write(site, bytes([INT3]), "late int3 planted"))
            self._planted[site] = installed[:1]
            self._text_restore[site] = Write(site, installed[:1], "late int3 removed")
            self.log.append(f"int3 planted at {site:#x} after its batch finished")
            del self._recent[site]
            break

    def at_return(self, g, ev, ret: int, ip_off: int, sp_off: int):
        """skip-call / wrong-return, at the handler's return, before the checker reads pt_regs."""
        if self.mode not in ("skip-call", "wrong-return"):
            return None
        if not is_emulated_call(ret, call_opcode(ev.loc, ev.ftrace)):
            return None
        if self.mode == "skip-call":
            for w in skip_call(ev.regs_addr, ip_off, sp_off, ev.site, ev.before["sp"]):
                self._write(g, w)
            what = "skip-call: regs->ip = site+5, regs->sp restored (the call is skipped)"
        else:
            raw = g.read(ev.regs_addr + sp_off, 8)
            if raw is None:
                return None
            corrupt, repair = wrong_return(int.from_bytes(raw, "little"), ev.site)
            self._write(g, corrupt)
            self._repairs[ev.seq] = repair
            what = f"wrong-return: pushed site+5+{WRONG_RETURN_OFFSET}"
        self.count += 1
        self.log.append(what)
        return self._did(what)

    def after_landing(self, g, ev):
        repair = self._repairs.pop(ev.seq, None)
        if repair is None:
            return None
        self._write(g, repair)
        return self._did("wrong-return: return address repaired after the landing was seen")

    def restore(self, g, errors: tuple = ()) -> list[str]:
        """Write back every byte of kernel text we changed. Safe to call twice. errors: the
        exceptions a write may raise when the target is gone (reported, not raised)."""
        done = []
        for w in list(self._text_restore.values()):
            try:
                self._write(g, w)
                done.append(f"{w.why} at {w.addr:#x}")
            except errors as e:
                done.append(f"could not restore {w.addr:#x}: {e}")
        self._text_restore.clear()
        self._planted.clear()
        for w in list(self._repairs.values()):
            try:
                self._write(g, w)
            except errors:
                pass
        self._repairs.clear()
        return done
