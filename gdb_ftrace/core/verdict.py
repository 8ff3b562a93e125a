"""One int3 event, and the rules that give it exactly one verdict.

An event is what the checker saw for one entry into the int3 text-patch
handler: the registers the CPU saved, the batch entry for the site (if any),
and, when the handler returned, its return value and the registers it left.
`judge()` compares that with `insn.expected_effect()`.

Verdicts and the summary class each one counts in:
  VERIFIED              verified  the emulation is exactly the installed instruction
  WRONG-TARGET          failed    regs->ip after the handler is not the destination
  WRONG-RETURN          failed    a CALL pushed another return address
  WRONG-STACK           failed    regs->sp moved by the wrong amount
  GAP-VIOLATION         failed    the emulated push wrote into the live pt_regs
  UNEXPECTED-EMULATION  failed    the handler consumed an int3 it had no entry for
  MISSED                missed    the handler returned 0 for an int3 of text patching: the
                                  site is in the live batch, or was in the batch that just
                                  finished, or its byte is no longer 0xcc (a stale int3)
  OTHER                 other     not a text-patch int3 (kprobe, selftest, gdb...)
  INCOMPLETE            other     the handler never returned (guest died or the run ended)
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .insn import MASK64, Expected, PokeEntry, classify_bytes, expected_effect

PT_REGS_SIZE = 168

FAIL_VERDICTS = ("WRONG-TARGET", "WRONG-RETURN", "WRONG-STACK", "GAP-VIOLATION",
                 "UNEXPECTED-EMULATION")
VERDICT_CLASS = {"VERIFIED": "verified", "MISSED": "missed", "OTHER": "other",
                 "INCOMPLETE": "other", **{v: "failed" for v in FAIL_VERDICTS}}


def verdict_class(verdict: str) -> str:
    return VERDICT_CLASS[verdict]


@dataclasses.dataclass
class Int3Event:
    """Everything seen for one entry into the handler (addresses are ints)."""

    seq: int
    cpu: int
    regs_addr: int  # struct pt_regs * passed to the handler
    before: dict[str, int]  # pt_regs fields at entry (ip, sp, flags, cs, ss, orig_ax)
    site: int  # regs->ip - 1
    site_bytes: bytes = b""  # guest text at the site at entry
    gap: list[int] | None = None  # the 6 words just above pt_regs at entry
    batch_nr: int | None = None  # entries in the in-flight batch (None: no batch)
    entry: PokeEntry | None = None  # the batch entry for the site
    stale_entry: PokeEntry | None = None  # the site's entry in the batch that just finished
    next: list[str] = dataclasses.field(default_factory=list)  # what happened after a return 0
    stack_top: int | None = None  # word at the interrupted sp (for RET)
    ret: int | None = None  # handler return value (None: did not return)
    after: dict[str, int] | None = None  # regs->ip / regs->sp at return
    pushed: int | None = None  # word at the new regs->sp at return
    site_sym: str = ""
    target_sym: str = ""
    t: float = 0.0  # seconds since the checker was armed
    handler: str = ""  # which kernel function handled it
    entry_rsp: int | None = None  # %rsp at the handler's first instruction (pairs the return)
    verdict: str = ""
    reasons: list[str] = dataclasses.field(default_factory=list)
    expected: Expected | None = None

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["site_bytes"] = self.site_bytes.hex()
        d["entry"] = self.entry.to_json() if self.entry else None
        d["stale_entry"] = self.stale_entry.to_json() if self.stale_entry else None
        d["expected"] = self.expected.to_json() if self.expected else None
        d["installed"] = classify_bytes(self.entry.installed) if self.entry else None
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Int3Event":
        d = dict(d)
        d.pop("installed", None)
        d.pop("class", None)
        d["site_bytes"] = bytes.fromhex(d.get("site_bytes") or "")
        d["entry"] = PokeEntry.from_json(d["entry"]) if d.get("entry") else None
        d["stale_entry"] = PokeEntry.from_json(d["stale_entry"]) if d.get("stale_entry") else None
        d["expected"] = Expected(**d["expected"]) if d.get("expected") else None
        return cls(**d)


def _hex(v: int | None) -> str:
    return "none" if v is None else f"{v:#x}"


def judge(ev: Int3Event) -> tuple[str, list[str], Expected | None]:
    """The verdict for one event, the reasons (expected vs. seen), and the expectation."""
    if ev.ret is None:
        return "INCOMPLETE", ["the handler had not returned when the run ended"], None
    entry = ev.entry
    if entry is None:
        if ev.ret == 0 and ev.stale_entry is not None:
            st = ev.stale_entry
            return "MISSED", [
                f"site was entry {st.index} of the batch that had just finished (installing "
                f"{classify_bytes(st.installed)}); the int3 arrived late and the handler returned 0"], None
        if ev.ret == 0 and ev.site_bytes and ev.site_bytes[0] != 0xCC:
            return "MISSED", [
                f"the byte at the site is {ev.site_bytes[0]:#04x}, no longer int3: a stale int3 was "
                f"executed after patching, and the handler returned 0"], None
        if ev.ret == 0:
            why = "no text-patch batch in flight" if not ev.batch_nr else \
                f"site not among the {ev.batch_nr} batch entries"
            return "OTHER", [why + "; handler returned 0 (kprobe, BUG/WARN, selftest or debugger int3)"], None
        return "UNEXPECTED-EMULATION", [
            f"handler returned {ev.ret} for {_hex(ev.site)}, which is not in the batch"], None

    exp = expected_effect(entry, ev.site, ev.before.get("flags", 0), ev.stack_top)
    if not exp.emulate:
        if ev.ret == 0:
            what = "an int3 is being installed there" if exp.kind == "INT3" else \
                f"opcode {entry.opcode:#x} is not emulated"
            return "OTHER", [f"site in the batch but {what}; handler correctly returned 0"], exp
        return "UNEXPECTED-EMULATION", [
            f"handler returned {ev.ret} although the batch installs {exp.kind} (must not emulate)"], exp
    if ev.ret == 0:
        return "MISSED", [
            f"site is entry {entry.index} of {ev.batch_nr} in the batch, installing "
            f"{classify_bytes(entry.installed)}, but the handler returned 0"], exp

    failures: list[tuple[str, str]] = []
    after = ev.after or {}
    sp0 = ev.before["sp"]
    if after.get("ip") != exp.ip:
        failures.append(("WRONG-TARGET", f"regs->ip: expected {_hex(exp.ip)}, seen {_hex(after.get('ip'))}"))
    want_sp = (sp0 + exp.sp_delta) & MASK64
    if after.get("sp") != want_sp:
        failures.append(("WRONG-STACK", f"regs->sp: expected {_hex(sp0)}{exp.sp_delta:+d} = {_hex(want_sp)}, "
                                        f"seen {_hex(after.get('sp'))}"))
    if exp.push is not None:
        if ev.pushed != exp.push:
            failures.append(("WRONG-RETURN", f"return address at new sp: expected {_hex(exp.push)} "
                                             f"(site+5), seen {_hex(ev.pushed)}"))
        slot = after.get("sp")
        if slot is not None and ev.regs_addr <= slot < ev.regs_addr + PT_REGS_SIZE:
            failures.append(("GAP-VIOLATION", f"the emulated push wrote {_hex(slot)}, inside the live "
                                              f"pt_regs [{_hex(ev.regs_addr)}, "
                                              f"{_hex(ev.regs_addr + PT_REGS_SIZE)})"))
    if failures:
        order = {v: i for i, v in enumerate(("GAP-VIOLATION",) + FAIL_VERDICTS)}
        failures.sort(key=lambda f: order[f[0]])
        return failures[0][0], [r for _, r in failures], exp
    return "VERIFIED", [], exp


def finalize(ev: Int3Event) -> Int3Event:
    """Fill in verdict, reasons and expectation; returns the same event."""
    ev.verdict, ev.reasons, ev.expected = judge(ev)
    return ev
