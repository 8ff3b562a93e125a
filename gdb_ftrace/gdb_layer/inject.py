"""Fault injection into the live guest, at the checker's stops (see core.inject).

The Injector is owned by the Checker, which calls its hooks at fixed points
of each stop, before it reads what the hook may change:
  before_handler  handler entry, before the site bytes are read (late-int3)
  after_batch     handler entry, once the batch is known (no-gap, late-int3)
  at_return       handler return, before regs->ip/sp are read (skip-call, wrong-return)
  after_landing   after the landing was recorded (wrong-return repair)
  restore         when the check ends or is interrupted: every byte written back
Every write goes through guest memory (QEMU's debug path, which also drops
stale translations), and every write to kernel text is undone by restore().
"""

from __future__ import annotations

import gdb

from ..core import inject as core
from ..core.batch import Batch
from ..core.errors import UserError
from ..core.event import Injection
from ..core.insn import CALL, INT3
from . import mem, symbols


def _write(w: core.Write) -> None:
    gdb.selected_inferior().write_memory(w.addr, w.data)


class Injector:
    def __init__(self, mode: str, kinfo) -> None:
        if mode not in core.INJECTIONS:
            raise UserError(f"unknown injection {mode!r}; one of: {', '.join(core.INJECTIONS)}")
        self.mode = mode
        self.kinfo = kinfo
        self.count = 0  # events changed
        self.log: list[str] = []
        self._text_restore: dict[int, core.Write] = {}  # kernel text we changed, by address
        self._gap_patch: tuple[core.Write, core.Write] | None = None
        self._repairs: dict[int, core.Write] = {}  # seq -> repair after landing
        self._recent: dict[int, bytes] = {}  # late-int3: site -> bytes its finished batch installed
        self._planted: dict[int, bytes] = {}  # late-int3: site -> original first byte
        self._hits: dict[int, int] = {}  # int3s taken per site: late-int3 plants only at hot sites
        self.max_plants = 3
        if mode == "no-gap":
            if kinfo.int3_entry is None:
                raise UserError("INJECT=no-gap needs the int3 entry (asm_exc_int3 / int3) in the symbols")
            code = kinfo.disassemble(kinfo.int3_entry_name)
            try:
                # Read the bytes from vmlinux: the guest may not have booted yet.
                self._gap_patch = core.gap_branch(code, kinfo.read_text)
            except ValueError as e:
                raise UserError(f"INJECT=no-gap: {e}") from None

    def describe(self) -> str:
        return f"{self.mode}: {self.count} event(s) changed" + (f" ({self.log[-1]})" if self.log else "")

    # -- hooks ----------------------------------------------------------
    def _did(self, what: str) -> Injection:
        return Injection(self.mode, what)

    def before_handler(self, site: int) -> Injection | None:
        """late-int3: the planted int3 was taken; put the byte back before the handler looks."""
        self._hits[site] = self._hits.get(site, 0) + 1
        orig = self._planted.pop(site, None)
        if orig is None:
            return None
        w = core.Write(site, orig, "late int3 taken: original first byte put back")
        _write(w)
        self._text_restore.pop(site, None)
        self.count += 1
        return self._did(f"late-int3: an int3 was planted at {site:#x} after its batch; byte put back on entry")

    def after_batch(self, batch: Batch) -> None:
        if self._gap_patch is not None and self._gap_patch[0].addr not in self._text_restore:
            patch, restore = self._gap_patch
            if bytes(mem.read(patch.addr, len(restore.data))) == restore.data:  # the kernel is in place
                _write(patch)
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
            if self._hits.get(site, 0) < 2 or symbols.site_kind(site, "") != "ftrace":
                continue
            now = mem.try_read(site, len(installed))
            if now is None or bytes(now) != installed:
                continue  # its batch has not finished yet
            _write(core.Write(site, bytes([INT3]), "late int3 planted"))
            self._planted[site] = installed[:1]
            self._text_restore[site] = core.Write(site, installed[:1], "late int3 removed")
            self.log.append(f"int3 planted at {site:#x} after its batch finished")
            del self._recent[site]
            break

    def at_return(self, ev, ret: int, ip_off: int, sp_off: int) -> Injection | None:
        """skip-call / wrong-return, at the handler's return, before the checker reads pt_regs."""
        if self.mode not in ("skip-call", "wrong-return"):
            return None
        if not core.is_emulated_call(ret, core.call_opcode(ev.loc, ev.ftrace)):
            return None
        if self.mode == "skip-call":
            for w in core.skip_call(ev.regs_addr, ip_off, sp_off, ev.site, ev.before["sp"]):
                _write(w)
            what = "skip-call: regs->ip = site+5, regs->sp restored (the call is skipped)"
        else:
            sp_after = mem.read_u64(ev.regs_addr + sp_off)
            corrupt, repair = core.wrong_return(sp_after, ev.site)
            _write(corrupt)
            self._repairs[ev.seq] = repair
            what = f"wrong-return: pushed site+5+{core.WRONG_RETURN_OFFSET}"
        self.count += 1
        self.log.append(what)
        return self._did(what)

    def after_landing(self, ev) -> Injection | None:
        repair = self._repairs.pop(ev.seq, None)
        if repair is None:
            return None
        _write(repair)
        return self._did("wrong-return: return address repaired after the landing was seen")

    def restore(self) -> list[str]:
        """Write back every byte of kernel text we changed. Safe to call twice."""
        done = []
        for w in list(self._text_restore.values()):
            try:
                _write(w)
                done.append(f"{w.why} at {w.addr:#x}")
            except gdb.error as e:
                done.append(f"could not restore {w.addr:#x}: {e}")
        self._text_restore.clear()
        self._planted.clear()
        for w in list(self._repairs.values()):
            try:
                _write(w)
            except gdb.error:
                pass
        self._repairs.clear()
        return done
