"""The engines' rules on a small fake guest (fakeguest.py), one rule a test; each of the
three bugs of issue 18 has a test here that fails with the old behaviour put back."""

from __future__ import annotations

import fakeguest as F
import pytest

from gdb_ftrace.core import engine as E
from gdb_ftrace.core import report
from gdb_ftrace.core import tracker as T
from gdb_ftrace.core.inject import Injector
from gdb_ftrace.core.mode import CheckMode
from gdb_ftrace.core.status import StatusLine
from gdb_ftrace.core.watch import WatchEngine

JMP_DISP = 0x10
CALL_DISP = F.CALL_TARGET - (F.SITE_CALL + 5)


def _engine(mode=CheckMode.HANDLER, injector=None):
    w = F.World()
    t = T.Tracker(mode, 0, "poke_int3_handler")
    e = WatchEngine(F.FACTS, mode, t, injector)
    e.arm(w.on(0))
    w.batch([(F.SITE_JMP, F.JMP8, JMP_DISP), (F.SITE_CALL, F.CALL, CALL_DISP)])
    return w, t, e


def _return(w, e, cpu, regs_addr, rax=1):
    """The handler's `ret` read its return slot: the vCPU at the return site, %rsp above the slot."""
    w.regs[cpu] = {"rip": F.RETURN_SITE, "rsp": regs_addr - 32 + 8, "rax": rax}
    w.frames[cpu] = ("exc_int3", regs_addr, None)
    e.stop("slot", w.on(cpu))


def test_an_int3_entry_return_and_its_verdict():
    w, t, e = _engine()
    r = w.int3(0, F.SITE_JMP)
    e.stop("word", w.on(0))
    assert len(t.open_events()) == 1 and E.Point("slot", r - 32, "read", 8) in e.wants()
    w.emulate(r, F.SITE_JMP + 2 + JMP_DISP)
    _return(w, e, 0, r)
    [ev] = t.events
    assert ev.verdict == "VERIFIED" and ev.expected.kind == "JMP"
    assert not t.open_events() and not any(p.at == "slot" for p in e.wants())


def test_bug_entry_rip_goes_to_the_event_this_vcpu_opened():
    """Issue 18, bug 1: the entry's %rip was kept for open_events()[-1], the last open event
    over all vCPUs. With cpu0's stack listed first and an event open on cpu1, cpu0's new
    event got none, so a later read of the batch word in the same handler call on cpu0
    was taken for a new entry (a duplicate)."""
    w, t, e = _engine()
    r = w.int3(0, F.SITE_JMP)  # cpu0 first: its stack comes first in open_events()
    e.stop("word", w.on(0))
    w.emulate(r, F.SITE_JMP + 2 + JMP_DISP)
    _return(w, e, 0, r)
    w.int3(1, F.SITE_CALL)  # cpu1 opens an event and stays in its handler
    e.stop("word", w.on(1))
    w.int3(0, F.SITE_JMP)  # then cpu0 opens one
    e.stop("word", w.on(0))
    mine = t.innermost_open(0)
    assert e._entry_rip.get(mine.seq) == F.ENTRY_RIP
    w.regs[0]["rip"] = F.LATER_RIP  # the same call reads bp_desc again (the refcount's put)
    e.stop("word", w.on(0))
    assert t.stats.duplicate_stops == 0 and len(t.open_events()) == 2
    assert e.st.entries == 3 and e.st.word_stops == 4


@pytest.mark.parametrize("inject, verdict", [(None, "VERIFIED"), ("skip-call", "WRONG-TARGET")])
def test_bug_a_late_return_gets_the_injection_too(inject, verdict):
    """Issue 18, bug 2: a return reported late (in the exit path, the vCPU still on the
    exception frame) skipped injector.at_return, so INJECT=skip-call left those CALLs
    emulated and VERIFIED."""
    w, t, e = _engine(injector=Injector(inject) if inject else None)
    r = w.int3(1, F.SITE_CALL)
    e.stop("word", w.on(1))
    w.emulate(r, F.CALL_TARGET, push=F.SITE_CALL + 5)
    w.regs[1] = {"rip": F.EXIT_RIP, "rsp": r + 120, "rax": 0}  # error_return, below regs->ip
    e.stop("slot", w.on(1))
    [ev] = t.events
    assert e.st.late_returns == 1 and ev.verdict == verdict, ev.reasons
    assert any("reported late" in n for n in ev.notes)
    if inject:
        assert ev.injected_by("skip-call") and ev.after["ip"] == F.SITE_CALL + 5
        assert [a for a, _ in w.writes] == [r + 128, r + 152]  # regs->ip, regs->sp


def test_bug_status_line_stops_listening_when_closed():
    """Issue 18, bug 3: StatusLine.close() tested `self in listeners` while the list held
    `self.event`, so every `ftrace-int3 run` left one more listener on the checker."""
    listeners: list = []
    for _ in range(3):
        StatusLine(listeners, False, print, print).close()
    assert listeners == []


def test_a_late_entry_after_the_emulation_is_dropped():
    """A word stop reported after the handler already changed pt_regs is not an entry."""
    w, t, e = _engine()
    r = w.int3(0, F.SITE_JMP)
    w.emulate(r, F.SITE_JMP + 2 + JMP_DISP)
    e.stop("word", w.on(0))
    assert e.st.late_entries_dropped == 1 and not t.open_events()


def test_a_return_never_reported_is_lost_not_judged():
    """The vCPU took a new int3 on the same stack before its return was reported: the old
    event ends INCOMPLETE with lost_return set (data, not words)."""
    w, t, e = _engine()
    w.int3(0, F.SITE_JMP)
    e.stop("word", w.on(0))
    w.int3(0, F.SITE_JMP)
    e.stop("word", w.on(0))
    lost = [ev for ev in t.events if ev.verdict == "INCOMPLETE"]
    assert len(lost) == 1 and lost[0].lost_return == "not-reported" and "not judged" in lost[0].reasons[0]


def test_where_it_stops_is_one_function_of_mode_and_engine():
    assert E.stops(CheckMode.FULL, E.Engine.WATCH) == E.stops(CheckMode.LANDING, E.Engine.WATCH)
    assert E.stops(CheckMode.FULL, E.Engine.BREAKPOINTS).per_int3 == 4
    assert "int3 entry" in E.stops(CheckMode.FULL, E.Engine.BREAKPOINTS).frame_from
    assert "above pt_regs" in E.stops(CheckMode.FULL, E.Engine.WATCH).frame_from
    assert E.resolve("watch", F.FACTS) == (E.Engine.WATCH, "")
    import dataclasses
    old = dataclasses.replace(F.FACTS, no_watch="v5.2-v5.5")
    assert E.resolve("watch", old) == (E.Engine.BREAKPOINTS, "v5.2-v5.5")


def test_per_cpu_words_wait_for_the_per_cpu_offsets():
    """v6.16+ watches each CPU's text_poke_array_refs. Armed early in boot (KASLR), every CPU
    still had the boot offset: the words were watched at one wrong address and the run saw no
    int3 at all (make matrix, 7.3.4, before this rule). Now a write watchpoint on the last
    CPU's __per_cpu_offset waits for setup_per_cpu_areas, then the words move."""
    import dataclasses

    per_cpu_offset, refs = 0xFFFFFFFF82F00000, 0x2A0C0
    facts = dataclasses.replace(F.FACTS, desc=dataclasses.replace(F.FACTS.desc, refs_off=None),
                                percpu_refs=refs, per_cpu_offset=per_cpu_offset)
    w = F.World()
    boot = 0xFFFFFFFF83000000
    w.put(per_cpu_offset, boot.to_bytes(8, "little") * 2)
    e = WatchEngine(facts, CheckMode.HANDLER, T.Tracker(CheckMode.HANDLER, 0))
    e.arm(w.on(0))
    words = {p.addr for p in e.wants() if p.at == "word"}
    assert words == {boot + refs} and E.Point("percpu", per_cpu_offset + 8, "write", 8) in e.wants()
    w.put(per_cpu_offset, (0xFFFF888100000000).to_bytes(8, "little") + (0xFFFF888200000000).to_bytes(8, "little"))
    e.stop("percpu", w.on(0))
    assert {p.addr for p in e.wants() if p.at == "word"} == {0xFFFF888100000000 + refs, 0xFFFF888200000000 + refs}
    assert not any(p.at == "percpu" for p in e.wants())


class _Oopsing(F.FakeGuest):
    """A vCPU in oops_enter, called by die("int3", regs) (its arguments two frames up)."""

    def __init__(self, world, cpu, regs_addr):
        super().__init__(world, cpu)
        self.regs_addr = regs_addr

    def frame_names(self, depth):
        return ["oops_enter", "oops_begin", "die"][:depth]

    def die_args(self, depth):
        return "int3\0", self.regs_addr


def test_an_int3_first_seen_at_oops_with_a_batch_live_now_is_a_late_int3_on_v6_0_v6_15():
    """CI, tcg-multi on 6.12.118 (2026-12-07): cmdline_proc_show+0x4 oopsed on an int3 whose
    handler never read bp_desc.nr_entries, i.e. try_get_desc() found the refcount at 0; by
    oops_enter the next batch re-patching the same site was live. That was judged against the
    new batch ("site is entry 0 of 1 ... handler returned 0") and hinted as a handler bug.
    v6.0-v6.15 read the word only behind the refcount: such an int3 had no batch in flight."""
    w, t, e = _engine(CheckMode.FULL)
    r = w.int3(1, F.SITE_CALL)  # no word stop: the handler found no batch
    w.put(F.SITE_CALL, bytes.fromhex("cc076ab8ff53488b"))  # the new batch's int3 over the old CALL
    e.stop("oops", _Oopsing(w, 1, r))
    [ev] = t.events
    assert ev.verdict == "MISSED" and ev.loc is None and ev.stale_loc is not None, (ev.verdict, ev.reasons)
    assert "found no batch in flight" in ev.reasons[0] and ev.seen_at == "oops_enter"
    hints = report.missed_hints([ev], "tcg-multi")
    assert "came after the batch covering the site had finished" in hints[0]
    assert any("ACCEL=tcg-multi" in h for h in hints) and not any("handler bug" in h for h in hints)
