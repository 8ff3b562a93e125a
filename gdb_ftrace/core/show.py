"""One event in full, for `ftrace-int3 show`: the site (what was there, what the
batch installs, the batch entry), pt_regs before and after, the gap and the
CPU's frame, the landing, the verdict with expected vs seen. Pure: an event and
a disassembler in, lines out; `highlight` colours assembly (pygments) when the
gdb layer says the output is a styled terminal."""

from __future__ import annotations

from typing import Callable

from . import style
from .event import Int3Event
from .layout import GAP_WORDS
from .report import followup_words
from .verdict import verdict_class

Disasm = Callable[[bytes, int], list[tuple[int, str, str]]]


# Int3Event.landing["source"] (core.tracker.SRC_*) in words.
LANDING_SOURCE_WORDS = {"iret-frame": "the frame the iretq loads", "registers": "the vCPU's registers after the iretq",
                        "late-frame": "the frame in memory, reported late"}


def _asm_lines(rows, highlight: Callable[[str], str] | None, indent: str = "    ") -> list[str]:
    return [f"{indent}{addr:#x}:  {hexb:<24} {highlight(text) if highlight else text}" for addr, hexb, text in rows]


def _hx(v) -> str:
    return "-" if v is None else f"{v:#x}"


def render(ev: Int3Event, row: int | None, disasm: Disasm, highlight: Callable[[str], str] | None = None,
           same_row: int = 1) -> list[str]:
    out = [style.paint("bold", f"event #{ev.seq}" + (f" (report row {row}, 1 of {same_row})" if row else "")
                       + f": cpu{ev.cpu} int3 at {ev.site_sym or hex(ev.site)} ({ev.site:#x})"
                       + (f", {ev.site_kind}" if ev.site_kind else "") + f", handled by {ev.handler or '?'}"
                       + f", {ev.time_s:.3f} s after arming")]
    first = ev.site_bytes[:1]
    out.append("site, as the handler found it: " + (
        "the int3 over the first byte, then what the batch has written so far" if first == b"\xcc" else
        "the patching CPU had already written the new first byte (the int3 fired before that)"
        if ev.site_bytes else "not read"))
    out += _asm_lines(disasm(ev.site_bytes, ev.site), highlight) or [f"    {ev.site_bytes.hex(' ') or '?'}"]
    loc = ev.loc or ev.stale_loc
    if loc is not None:
        which = "the batch entry" if ev.loc else "the batch that had just finished (stale)"
        out.append(f"being installed ({which}: index {loc.index} of {ev.batch_nr if ev.batch_nr is not None else '?'}, "
                   f"opcode {loc.opcode:#04x}, len {loc.length}, disp {loc.disp:#x}"
                   + (f", detour {loc.detour:#x}" if loc.detour is not None else "") + "):")
        out += _asm_lines(disasm(loc.installed, ev.site), highlight) or [f"    {loc.installed.hex(' ')}"]
    else:
        out.append("being installed: no batch covered this site")
    b, a = ev.before, ev.after or {}
    out.append("pt_regs at handler entry:   ip " + _hx(b.get("ip")) + "  sp " + _hx(b.get("sp"))
               + "  flags " + _hx(b.get("flags")) + "  cs " + _hx(b.get("cs")) + "  [sp] " + _hx(ev.stack_top))
    out.append("pt_regs at handler return:  ip " + _hx(a.get("ip")) + "  sp " + _hx(a.get("sp"))
               + "  [sp] " + _hx(ev.pushed) + f"   (handler returned {ev.ret if ev.ret is not None else '-'})")
    if ev.gap:
        out.append("words above pt_regs (the gap's copy of " + ", ".join(GAP_WORDS) + "): "
                   + " ".join(_hx(w) for w in ev.gap))
    if ev.hw_frame:
        hw = ev.hw_frame
        src = "read at the int3 entry" if ev.hw_source == "entry" else "from the words above pt_regs"
        out.append(f"CPU frame ({src}) at {_hx(hw.get('addr'))}: ip {_hx(hw.get('ip'))} cs {_hx(hw.get('cs'))} "
                   f"flags {_hx(hw.get('flags'))} sp {_hx(hw.get('sp'))} ss {_hx(hw.get('ss'))}")
    if ev.landing:
        ld = ev.landing
        src = LANDING_SOURCE_WORDS.get(ld.get("source"), "")
        out.append(f"landing after iret: ip {_hx(ld.get('ip'))}  sp {_hx(ld.get('sp'))}  [sp] "
                   + (_hx(ld.get("top")) if ld.get("top_known", True) else "not known") + (f"  ({src})" if src else ""))
    elif ev.landing_note:
        out.append(f"landing: not seen ({ev.landing_note})")
    for fu in ev.followups:
        out.append(f"then: {followup_words(fu)}")
    for inj in ev.injected:
        out.append(f"injected: {inj.mode}: {inj.what}")
    x = ev.expected
    if x is not None:
        out.append(f"expected: {x.kind}" + (f", ip {_hx(x.ip)}" if x.ip is not None else "")
                   + (f" ({ev.target_sym})" if ev.target_sym else "")
                   + f", sp {'+' if x.sp_delta >= 0 else '-'}{abs(x.sp_delta)}"
                   + (f", push {_hx(x.push)}" if x.push is not None else "")
                   + f", handler returns {1 if x.emulate else 0}")
    seen = a.get("ip"), a.get("sp"), ev.pushed
    out.append(f"seen:     ip {_hx(seen[0])}, sp {_hx(seen[1])}, [sp] {_hx(seen[2])}, returned "
               f"{ev.ret if ev.ret is not None else '-'}")
    role = style.verdict_role(verdict_class(ev.verdict)) if ev.verdict else "bold"
    out.append(style.paint(role, f"verdict: {ev.verdict or '(open)'}") + ("" if not ev.reasons else
                                                                        ": " + "; ".join(ev.reasons)))
    return out
