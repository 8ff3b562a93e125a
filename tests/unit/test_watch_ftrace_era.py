"""The watch engine on v5.2-v5.5 (issue 21): the word is modifying_ftrace_code, read by
do_int3 before it asks ftrace_int3_handler or poke_int3_handler; which handler takes the
int3 is decided from what do_int3 and ftrace_int3_handler read (facts.read_dispatch), the
return is do_int3's. On the fake guest of fakeguest.py, with do_int3 in place of the
handler; the live v5.4 run is replayed in test_replay.py."""

from __future__ import annotations

import dataclasses

import fakeguest as F

from gdb_ftrace.core import ftrace_era
from gdb_ftrace.core import tracker as T
from gdb_ftrace.core import watch as W
from gdb_ftrace.core.mode import CheckMode
from gdb_ftrace.core.watch import WatchEngine

DO_INT3 = 0xFFFFFFFF8101D000  # do_int3 in the v5.4.286 build; its first load is modifying_ftrace_code
ENTRY_RIP = DO_INT3 + 6
FTRACE_HANDLER_RIP = 0xFFFFFFFF81048990  # inside ftrace_int3_handler, called by do_int3
INT3_RETURN = 0xFFFFFFFF81A01234  # after the int3 entry's `call do_int3`
MODIFYING = 0xFFFFFFFF820D4A80
UPDATE_FUNC = 0xFFFFFFFF820D4A88
REGS_CALLER = 0xFFFFFFFF81E10000

FACTS = dataclasses.replace(
    F.FACTS, handlers=(("ftrace_int3_handler", 0xFFFFFFFF81048980), ("poke_int3_handler", F.HANDLER)),
    returns=(DO_INT3 + 0xC1, DO_INT3 + 0x1E), handler_range=(DO_INT3, DO_INT3 + 0xCE),
    exit_ranges=((DO_INT3, DO_INT3 + 0xCE), F.ENTRY_TEXT), keeps_last_batch=False,
    handler_code=((DO_INT3, 6, f"mov 0x10b7a7a(%rip),%eax        # {MODIFYING:#x} <modifying_ftrace_code>"),),
    ftrace={"modifying": MODIFYING, "update_func": UPDATE_FUNC, "update_func_call": UPDATE_FUNC + 8,
            "regs_caller": REGS_CALLER},
    watch_word="modifying_ftrace_code", watch_fn="do_int3", watch_returns=(INT3_RETURN,))


def _engine(modifying=1):
    w = F.World()
    w.put(MODIFYING, modifying.to_bytes(4, "little"))
    w.put(UPDATE_FUNC, bytes(16))
    t = T.Tracker(CheckMode.HANDLER, 0, "poke_int3_handler")
    e = WatchEngine(FACTS, CheckMode.HANDLER, t)
    e.arm(w.on(0))
    w.batch([(F.SITE_JMP, F.JMP8, 0x10)])
    return w, t, e


def _int3(w, cpu, site):
    """The CPU took the int3 and do_int3 did its first load: the vCPU in do_int3, whose
    return slot holds the int3 entry's return site."""
    r = w.int3(cpu, site)
    slot = r - 32
    w.put(slot, INT3_RETURN.to_bytes(8, "little"))
    w.regs[cpu] = {"rip": ENTRY_RIP, "rsp": slot, "rdi": r, "rax": 1}
    w.frames[cpu] = ("do_int3", r, slot + 8)
    return r, slot


def _returned(w, e, cpu, slot):
    w.regs[cpu] = {"rip": INT3_RETURN, "rsp": slot + 8, "rax": 0xDEAD}  # do_int3 returns nothing
    w.frames[cpu] = ("int3", None, None)
    e.stop("slot", w.on(cpu))


def test_the_word_is_modifying_ftrace_code_read_in_do_int3():
    assert W.watch_word(None, None, ftrace_handler=True) == ("modifying_ftrace_code", 4)
    assert W.watch_fn(True, ["do_int3"]) == "do_int3" and W.watch_fn(False, ["exc_int3"]) == ""
    assert W.no_watch(True, None) == ""  # v5.2's one-site patching too: do_int3 reads the word first
    assert W.no_watch(False, None)  # a v5.2 kernel without dynamic ftrace: nothing every int3 reads
    w, _, e = _engine()
    assert [p.addr for p in e.wants() if p.at == "word"] == [MODIFYING]


def test_ftrace_claims_fentry_sites_and_the_trampoline_call_while_modifying():
    st = ftrace_era.FtraceState(1, True, 0, 0, REGS_CALLER)
    assert ftrace_era.claims(F.SITE_CALL, st)
    assert not ftrace_era.claims(F.SITE_CALL, dataclasses.replace(st, modifying=0))  # do_int3 does not ask it
    other = dataclasses.replace(st, is_location=False, update_func=F.SITE_JMP)
    assert ftrace_era.claims(F.SITE_JMP, other) and not ftrace_era.claims(F.SITE_JMP + 1, other)


def test_an_fentry_int3_goes_to_ftrace_int3_handler_and_its_call_is_verified():
    w, t, e = _engine(modifying=1)
    r, slot = _int3(w, 0, F.SITE_CALL)
    e.stop("word", w.on(0))
    [ev] = t.open_events()
    assert ev.handler == "ftrace_int3_handler" and ev.ftrace["modifying"] == 1 and ev.handler_rsp == slot
    w.emulate(r, REGS_CALLER, push=F.SITE_CALL + 5)
    _returned(w, e, 0, slot)
    [ev] = t.events
    assert ev.verdict == "VERIFIED" and ev.expected.kind == "CALL" and ev.expected.ip == REGS_CALLER
    assert ev.ret == 1 and any("inferred from regs->ip" in n for n in ev.notes)


def test_a_skip_at_an_fentry_site_is_wrong_target():
    """The pre-series behaviour (regs->ip += 4) seen through the watch engine."""
    w, t, e = _engine(modifying=1)
    r, slot = _int3(w, 0, F.SITE_CALL)
    e.stop("word", w.on(0))
    w.emulate(r, F.SITE_CALL + 5)
    _returned(w, e, 0, slot)
    [ev] = t.events
    assert ev.verdict == "WRONG-TARGET"


def test_other_sites_go_to_the_text_patch_handler():
    w, t, e = _engine(modifying=1)  # ftrace is patching, but this site is not one of its
    r, slot = _int3(w, 1, F.SITE_JMP)
    e.stop("word", w.on(1))
    [ev] = t.open_events()
    assert ev.handler == "poke_int3_handler" and ev.ftrace is None
    w.emulate(r, F.SITE_JMP + 2 + 0x10)
    _returned(w, e, 1, slot)
    [ev] = t.events
    assert ev.verdict == "VERIFIED" and ev.expected.kind == "JMP"


def test_a_stop_inside_a_handler_do_int3_called_is_not_its_return():
    """A hit reported while the vCPU is in ftrace_int3_handler (below do_int3's return
    slot): still in do_int3's call tree. Without calls_out it would be taken for a late
    return, pt_regs judged before the handler wrote it."""
    w, t, e = _engine(modifying=1)
    r, slot = _int3(w, 0, F.SITE_CALL)
    e.stop("word", w.on(0))
    [ev] = t.open_events()
    places = e.places
    assert W.classify(places, FTRACE_HANDLER_RIP, slot - 0x40, [ev], None, calls_out=True) == ("pass", None)
    assert W.classify(places, FTRACE_HANDLER_RIP, slot - 0x40, [ev], None)[0] in ("late-return", "lost-return")
    w.regs[0] = {"rip": FTRACE_HANDLER_RIP, "rsp": slot - 0x40}
    e.stop("stray", w.on(0))
    assert t.open_events() == [ev] and not t.events


def test_a_site_no_handler_claims_returned_0_even_when_a_notifier_moved_regs_ip():
    """The boot int3 self-test on 5.4: not in a batch, not ftrace's; its die notifier moves
    regs->ip after poke_int3_handler returned 0. OTHER, not UNEXPECTED-EMULATION (the first
    v5.4 watch run), and no kprobe breakpoint is wanted afterwards."""
    w, t, e = _engine(modifying=0)
    selftest = 0xFFFFFFFF8280269A
    r, slot = _int3(w, 0, selftest)
    e.stop("word", w.on(0))
    w.emulate(r, selftest + 0x40)  # the notifier sends it on
    _returned(w, e, 0, slot)
    [ev] = t.events
    assert ev.ret == 0 and ev.verdict == "OTHER" and any("a kprobe or a die notifier" in n for n in ev.notes)
    assert not t.has_unhandled() and not any(p.at == "kprobe" for p in e.wants())
