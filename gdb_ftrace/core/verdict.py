"""One int3 event, and the rules that give it exactly one verdict.

An event (core.event.Int3Event) is what the checker saw for one entry into
the int3 text-patch handler. `judge()` compares it with
`insn.expected_effect()` for the batch's text_poke_loc at the site.

Verdicts and the summary class each one counts in:
  VERIFIED              verified  the emulation is exactly the installed instruction
  WRONG-TARGET          failed    regs->ip after the handler is not the destination
  WRONG-RETURN          failed    a CALL pushed another return address
  WRONG-STACK           failed    regs->sp moved by the wrong amount
  GAP-VIOLATION         failed    the emulated push's slot (regs->sp - 8) lies inside the live
                                  pt_regs/iret frame, or the frame the entry code copied into
                                  pt_regs differs from the one the CPU pushed
  WRONG-LANDING         failed    after iret the vCPU did not arrive at the emulated
                                  destination with the expected rsp and [rsp]
  UNEXPECTED-EMULATION  failed    the handler consumed an int3 the batch has no text_poke_loc for
  MISSED                missed    the handler returned 0 for an int3 of text patching: the
                                  site is in the live batch, or was in the batch that just
                                  finished, or its byte is no longer 0xcc (a stale int3)
  OTHER                 other     not a text-patch int3 (kprobe, selftest, gdb...)
  INCOMPLETE            other     the handler never returned (guest died or the run ended)
"""

from __future__ import annotations

from . import ftrace_era
from .event import DIE, KPROBE, Int3Event
from .insn import CALL_INSN_SIZE, MASK64, Expected, classify_bytes, expected_effect
from .layout import PT_REGS_X86_64

PT_REGS_SIZE = PT_REGS_X86_64.size
PT_REGS_IP = PT_REGS_X86_64.fields["ip"].offset  # where the copied iret frame starts

FAIL_VERDICTS = ("WRONG-TARGET", "WRONG-RETURN", "WRONG-STACK", "GAP-VIOLATION",
                 "UNEXPECTED-EMULATION", "WRONG-LANDING")
# Where the CPU's frame is relative to pt_regs->ip when the entry code made the
# gap: it pushed orig_ax and copied 6 words (entry_64.S), so 6 words higher.
GAP_BYTES = 48
IRET_FRAME = ("ip", "cs", "flags", "sp", "ss")
VERDICT_CLASS = {"VERIFIED": "verified", "MISSED": "missed", "OTHER": "other",
                 "INCOMPLETE": "other", **{v: "failed" for v in FAIL_VERDICTS}}


def verdict_class(verdict: str) -> str:
    return VERDICT_CLASS[verdict]


def _hex(v: int | None) -> str:
    return "none" if v is None else f"{v:#x}"


def judge(ev: Int3Event) -> tuple[str, list[str], Expected | None]:
    """The verdict for one event, the reasons (expected vs. seen), and the expectation."""
    verdict, reasons, exp = _judge(ev)
    if verdict not in FAIL_VERDICTS:  # the frame copy matters for every int3 from the kernel
        bad = frame_failures(ev)
        if bad:
            return "GAP-VIOLATION", [r for _, r in bad] + reasons, exp
    return verdict, reasons, exp


def _judge(ev: Int3Event) -> tuple[str, list[str], Expected | None]:
    if ev.ret is None:
        if ev.lost_return:
            return "INCOMPLETE", [LOST_RETURN_WORDS.get(ev.lost_return, ev.lost_return)], None
        return "INCOMPLETE", [ev.landing_note or "the handler had not returned when the run ended"], None
    if ev.ftrace is not None:
        return _judge_ftrace_era(ev)
    loc = ev.loc
    if loc is None:
        if ev.ret == 0 and ev.stale_loc is not None:
            st = ev.stale_loc
            if ev.seen_at == "oops_enter":  # the handler read no batch: none was in flight for it
                return "MISSED", [
                    f"the handler found no batch in flight (first seen at oops_enter: it never read the "
                    f"batch) and returned 0; the site is entry {st.index} of a batch not in flight then "
                    f"(installing {classify_bytes(st.installed)}): the int3 arrived late"], None
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

    exp = expected_effect(loc, ev.site, ev.before.get("flags", 0), ev.stack_top)
    if not exp.emulate:
        if ev.ret == 0:
            what = "an int3 is being installed there" if exp.kind == "INT3" else \
                f"opcode {loc.opcode:#x} is not emulated"
            return "OTHER", [f"site in the batch but {what}; handler correctly returned 0"], exp
        return "UNEXPECTED-EMULATION", [
            f"handler returned {ev.ret} although the batch installs {exp.kind} (must not emulate)"], exp
    if ev.ret == 0:
        why = [f"site is entry {loc.index} of {ev.batch_nr} in the batch, installing "
               f"{classify_bytes(loc.installed)}, but the handler returned 0"]
        if ev.cpu_refs == 0:
            why.append(f"text_poke_array_refs of cpu{ev.cpu} was already 0 when the handler ran: the "
                       f"batch was being finished (the June 2025 per-CPU refs race: an int3 taken after "
                       f"the last sync, before nr_entries was cleared)")
        return "MISSED", why, exp
    return _compare(ev, exp)


def _judge_ftrace_era(ev: Int3Event) -> tuple[str, list[str], Expected | None]:
    """v5.2-v5.5 ftrace_int3_handler: see core.ftrace_era."""
    st = ftrace_era.FtraceState(**ev.ftrace)
    exp = ftrace_era.expected_effect(ev.site, st)
    if not exp.emulate:
        if ev.ret == 0:
            return "OTHER", ["neither an fentry site nor the trampoline call being rewritten; "
                             "ftrace_int3_handler correctly returned 0"], exp
        return "UNEXPECTED-EMULATION", [
            f"ftrace_int3_handler returned {ev.ret} for {_hex(ev.site)}, which is neither an fentry site "
            f"nor ftrace_update_func {_hex(st.update_func)}"], exp
    if ev.ret == 0:
        what = "an fentry site (ftrace_location)" if st.is_location else "the trampoline call being rewritten"
        return "MISSED", [f"{_hex(ev.site)} is {what} while modifying_ftrace_code={st.modifying}, "
                          f"but ftrace_int3_handler returned 0"], exp
    if exp.ip is None:  # pre-series, the trampoline's call: its new target is known to no variable
        ip = (ev.after or {}).get("ip")
        if ip == (ev.site + CALL_INSN_SIZE) & MASK64:
            return "WRONG-TARGET", [f"ftrace_int3_handler skipped the trampoline call being rewritten at "
                                    f"{_hex(ev.site)} (regs->ip = site+5)", ftrace_era.PRE_SERIES], exp
        return "OTHER", [f"the trampoline call at {_hex(ev.site)} is being rewritten on a pre-series kernel, which "
                         f"records no new target; regs->ip {_hex(ip)}: not judged"], exp
    verdict, reasons, exp = _compare(ev, exp)
    if verdict == "WRONG-TARGET" and st.update_func_call is None:
        reasons = reasons + [ftrace_era.PRE_SERIES]
    return verdict, reasons, exp


def _compare(ev: Int3Event, exp: Expected) -> tuple[str, list[str], Expected | None]:
    """What the handler left in pt_regs (and the vCPU after iret) against `exp`."""
    failures = frame_failures(ev)
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
        if slot is None:
            slot = (sp0 - 8) & MASK64
        if ev.regs_addr <= slot < ev.regs_addr + PT_REGS_SIZE:
            failures.append(("GAP-VIOLATION", f"the emulated push writes {_hex(slot)} (regs->sp - 8), inside "
                                              f"the live pt_regs [{_hex(ev.regs_addr)}, "
                                              f"{_hex(ev.regs_addr + PT_REGS_SIZE)})"
                                              + _gap_words_note(ev)))
    failures += landing_failures(ev, exp, want_sp)
    if failures:
        order = {v: i for i, v in enumerate(("GAP-VIOLATION",) + FAIL_VERDICTS)}
        failures.sort(key=lambda f: order[f[0]])
        return failures[0][0], [r for _, r in failures], exp
    return "VERIFIED", [], exp


def hardware_frame(ev: Int3Event) -> tuple[dict[str, int] | None, str]:
    """The frame the CPU pushed for this int3 and where we know it from.

    From the entry stop when there was one; otherwise the six words above
    pt_regs, which are the CPU's frame when the entry code made the gap (the
    copy goes below it) and are nothing of the kind when it did not."""
    if ev.hw_frame is not None:
        return ev.hw_frame, ev.hw_source or "entry"
    if ev.gap and len(ev.gap) >= 6:
        words = dict(zip(IRET_FRAME, ev.gap[1:6]))
        return {"addr": (ev.regs_addr + PT_REGS_IP + GAP_BYTES) & MASK64, **words}, "gap"
    return None, ""


def _frame_distance(ev: Int3Event, hw: dict[str, int]) -> int:
    """Bytes from the copied frame (pt_regs->ip) up to the CPU's frame: GAP_BYTES with the gap."""
    return hw["addr"] - ((ev.regs_addr + PT_REGS_IP) & MASK64)


def _gap_words_note(ev: Int3Event) -> str:
    hw, src = hardware_frame(ev)
    if hw is None or src != "entry":
        return ""
    return f"; the CPU's frame is {_frame_distance(ev, hw)} bytes above regs->ip (a gap needs {GAP_BYTES})"


def frame_failures(ev: Int3Event) -> list[tuple[str, str]]:
    """GAP-VIOLATION when pt_regs does not hold a faithful copy of the CPU's frame."""
    if ev.before.get("cs", 0) & 3:  # from user mode: no gap is made, nothing is emulated
        return []
    hw, src = hardware_frame(ev)
    if hw is None:
        return []
    diff = [f"{f}: CPU pushed {_hex(hw.get(f))}, pt_regs has {_hex(ev.before.get(f))}"
            for f in IRET_FRAME if f in ev.before and hw.get(f) != ev.before[f]]
    if not diff:
        return []
    where = "at the int3 entry" if src == "entry" else f"in the {len(IRET_FRAME) + 1} words above pt_regs"
    return [("GAP-VIOLATION", f"the frame in pt_regs is not the CPU's frame {where} "
                              f"({_frame_distance(ev, hw)} bytes above regs->ip): " + "; ".join(diff))]


# Int3Event.lost_return (core.watch.LOST_*) in words.
LOST_RETURN_WORDS = {
    "regs-gone": "QEMU reported its handler's return only after the vCPU had left the exception frame "
                 "(past the iretq), where pt_regs may already be reused (watch engine): not judged",
    "not-reported": "its handler's return was not reported by QEMU's watchpoint before the handler ran "
                    "again on that stack (watch engine): not judged",
}


def top_known(land: dict) -> bool:
    """Whether a landing carries the word at its rsp (False: read from the frame after a late report)."""
    return bool(land.get("top_known", True))


def landing_failures(ev: Int3Event, exp: Expected, want_sp: int) -> list[tuple[str, str]]:
    """WRONG-LANDING when the first instruction after iret is not the emulated one's result."""
    land = ev.landing
    if land is None:
        return []
    bad = []
    if land.get("ip") != exp.ip:
        bad.append(f"rip: expected {_hex(exp.ip)}, arrived at {_hex(land.get('ip'))}")
    if land.get("sp") != want_sp:
        bad.append(f"rsp: expected {_hex(want_sp)}, seen {_hex(land.get('sp'))}")
    if exp.push is not None and land.get("top") != exp.push and top_known(land):
        bad.append(f"[rsp]: expected the return address {_hex(exp.push)}, seen {_hex(land.get('top'))}")
    if not bad:
        return []
    return [("WRONG-LANDING", f"after iret on cpu{ev.cpu}: " + "; ".join(bad))]


def finalize(ev: Int3Event) -> Int3Event:
    """Fill in verdict, reasons and expectation; returns the same event."""
    ev.verdict, ev.reasons, ev.expected = judge(ev)
    ev.reasons += ev.notes
    if ev.seen_at:
        ev.reasons.append(f"first seen at {ev.seen_at}: die(\"int3\") follows only a 0 from every int3 handler "
                          "(the watch engine sees this kernel's handler only while a batch is live)")
    return ev


def other_kind(ev: Int3Event) -> str:
    """What an OTHER int3 was, from what was seen (never a FAIL)."""
    if ev.before.get("cs", 0) & 3:
        return "user-mode int3"
    if ev.site_sym.startswith(("int3_selftest", "int3_magic")) or ev.site_kind == "int3 self-test":
        return "int3 self-test"
    if ev.expected is not None and ev.expected.kind == "INT3":
        return "int3 being installed"
    kp = ev.followup(KPROBE)
    if kp is not None and kp["ret"]:
        return "kprobe"
    if ev.has_followup(DIE) or (kp is not None and not kp["ret"]):
        return "no owner (die)"
    if ev.ftrace is not None:
        return "not ftrace's"
    return "not text patching"
