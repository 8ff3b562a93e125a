"""core/watch.py: which watchpoint stop is which, on stops recorded from a real run.

The values are from a MODE=full run on 6.12.117+deb12-cloud-amd64 (KASLR slide
0xce00000, 2 vCPUs, QEMU 7.2): poke_int3_handler at 0xffffffff8ea91770 (0x1e6
bytes), its first read of bp_desc.nr_entries ends at +46, exc_int3's call to it
returns to 0xffffffff8ea908ae, exc_int3 is 0x124 bytes, the entry text
0xffffffff8ec00010-0xffffffff8ec0224b. Each stop below is one the debug log of
that run printed (vCPU, %rip, %rsp, the open events' handler %rsp).
"""

import dataclasses

import pytest

from gdb_ftrace.core import watch as W

SLIDE = 0xCE00000
HANDLER = 0xFFFFFFFF81C91770 + SLIDE
EXC_INT3 = 0xFFFFFFFF81C908A0 + SLIDE
PLACES = W.Places(
    handler=(HANDLER, HANDLER + 0x1E6),
    exit_path=((EXC_INT3, EXC_INT3 + 0x124), (0xFFFFFFFF81E00010 + SLIDE, 0xFFFFFFFF81E0224B + SLIDE)),
    entry_rips=frozenset({HANDLER + 46}),
    returns=frozenset({0xFFFFFFFF8EA908AE}),
)


@dataclasses.dataclass
class Ev:  # the fields of core.event.Int3Event the rules read
    handler_rsp: int
    seq: int = 1
    regs_addr: int = 0


def test_the_first_read_in_the_handler_is_an_entry():
    kind, ev = W.classify(PLACES, 0xFFFFFFFF8EA9179E, 0xFFFFCCFB000C3D38, [], None)
    assert (kind, ev) == ("entry", None)
    assert W.word_stop(True, 0xFFFFFFFF8EA9179E, None) == "entry"


def test_a_return_is_the_ret_site_with_rsp_just_above_the_slot():
    ev = Ev(0xFFFFCCFB000C3D38, regs_addr=0xFFFFCCFB000C3D58)
    assert W.classify(PLACES, 0xFFFFFFFF8EA908AE, 0xFFFFCCFB000C3D40, [ev], None) == ("return", ev)
    # Same place, another stack depth: a return of another call, not this one.
    assert W.classify(PLACES, 0xFFFFFFFF8EA908AE, 0xFFFFCCFB000C3D48, [ev], None)[0] == "late-return"


def test_a_report_after_exc_int3_returned_is_a_late_return():
    # Recorded: the handler's `ret` reported only after exc_int3's own ret (asm_exc_int3+57),
    # %rsp at pt_regs: still on the exception frame, pt_regs as the handler left it.
    ev = Ev(0xFFFFCCFB00100CA8, regs_addr=0xFFFFCCFB00100CC8)
    assert W.classify(PLACES, 0xFFFFFFFF8EC01279, 0xFFFFCCFB00100CC8, [ev], None) == ("late-return", ev)
    # In the entry text again but above regs->ip: another exception after the iretq, whose
    # frame may lie over this one's (a read there once found a heap pointer in regs->sp).
    assert W.classify(PLACES, 0xFFFFFFFF8EC01279, 0xFFFFCCFB00100D50, [ev], None) == ("lost-return", ev)


def test_a_report_far_away_means_the_return_was_lost():
    # Recorded: the slot read again by unrelated code, long after the int3 (stack reused).
    ev = Ev(0xFFFFCCFB00003CA8)
    assert W.classify(PLACES, 0xFFFFFFFF8DF25F60, 0xFFFFCCFB00003C10, [ev], None) == ("lost-return", ev)


@dataclasses.dataclass
class Landing:  # an emulated int3 waiting for its iretq: regs->ip at 0xffffccfb000c3dd8 (recorded)
    regs_addr: int = 0xFFFFCCFB000C3DD8 - 128


def test_landing_before_and_after_the_iretq():
    land = Landing()
    # Recorded: past the iretq, on the interrupted stack, in the interrupted code.
    assert W.classify(PLACES, 0xFFFFFFFF8DFAC42D, 0xFFFFCCFB000C3E38, [], land) == ("landed", land)
    # In error_return / restore_regs_and_return_to_kernel, %rsp still at or below regs->ip:
    # the frame the iretq will load is in place.
    assert W.classify(PLACES, 0xFFFFFFFF8EC01279, 0xFFFFCCFB000C3DD0, [], land) == ("before-iret", land)
    # In the entry text again but above the frame: another exception after the landing.
    assert W.classify(PLACES, 0xFFFFFFFF8EC01279, 0xFFFFCCFB000C3E00, [], land) == ("landed", land)
    # A new int3's handler on that vCPU comes first: an entry.
    assert W.classify(PLACES, 0xFFFFFFFF8EA9179E, 0xFFFFCCFB000C3D38, [], land)[0] == "entry"


def test_nothing_of_ours():
    assert W.classify(PLACES, 0xFFFFFFFF8DF25F60, 0xFFFFCCFB00003C10, [], None) == ("pass", None)


@pytest.mark.parametrize("rip,open_rip,kind", [
    (HANDLER + 46, None, "entry"),
    (HANDLER + 109, None, "entry"),  # a late report, still before the emulation: regs decide
    (HANDLER + 109, HANDLER + 46, "same-call"),
    (HANDLER + 46, HANDLER + 46, "entry-missed-return"),
])
def test_word_stop(rip, open_rip, kind):
    assert W.word_stop(True, rip, open_rip) == kind


# seq 4 of the run: a NOP2 emulated at sched_clock_idle_wakeup_event+0x4.
GAP4 = (0xFFFFFFFFFFFFFFFF, 0xFFFFFFFF8DFA9385, 0x10, 0x87, 0xFFFFCCFB0009BD80, 0x18)
BEFORE4 = {"ip": 0xFFFFFFFF8DFA9385, "sp": 0xFFFFCCFB0009BD80, "cs": 0x10, "flags": 0x87, "ss": 0x18}
AFTER4 = {"ip": 0xFFFFFFFF8DFA938F, "sp": 0xFFFFCCFB0009BD80}


def test_regs_untouched_compares_with_the_cpu_frame_in_the_gap():
    assert W.regs_untouched(BEFORE4, GAP4)
    assert not W.regs_untouched({**BEFORE4, **AFTER4}, GAP4)
    assert W.regs_untouched(BEFORE4, ())  # no gap (from user mode, INJECT=no-gap): nothing to compare


def test_same_int3_by_the_frame_above_pt_regs():
    assert W.same_int3(GAP4, GAP4)
    pushed = GAP4[:5] + (0xFFFFFFFF8DFA938A,)  # an emulated CALL overwrites the ss slot only
    assert W.same_int3(GAP4, pushed)
    other = (GAP4[0], 0xFFFFFFFF8DFAC34F) + GAP4[2:]  # another int3 at the same depth
    assert not W.same_int3(GAP4, other)


def test_inferred_return():
    assert W.inferred_return(BEFORE4, AFTER4) == 1
    assert W.inferred_return(BEFORE4, {"ip": BEFORE4["ip"], "sp": BEFORE4["sp"]}) == 0


def test_exact_landing_is_the_frame_the_iretq_loaded():
    frame = (AFTER4["ip"], 0x10, 0x87, AFTER4["sp"], 0x18)
    assert W.exact_landing(AFTER4["ip"], AFTER4["sp"], frame)
    # Recorded late report: the vCPU had called on past the landing (rsp - 8, elsewhere).
    assert not W.exact_landing(0xFFFFFFFF8D24EA60, AFTER4["sp"] - 8, frame)


def test_entry_rips_from_the_disassembly():
    code = [(HANDLER + 16, 6, "mov    0x1a53e66(%rip),%eax        # 0xffffffff904e55ec <bp_desc+12>"),
            (HANDLER + 39, 7, "movslq 0x1a53e4a(%rip),%rcx        # 0xffffffff904e55e8 <bp_desc+8>")]
    assert W.entry_rips_from(code, 0xFFFFFFFF904E55E8) == {HANDLER + 46}
    assert W.entry_rips_from(code, 0xFFFFFFFF904E0000) == frozenset()


def test_frame_kept_when_memory_still_holds_what_the_handler_left():
    frame = (AFTER4["ip"], 0x10, 0x87, AFTER4["sp"], 0x18)
    assert W.frame_kept(frame, AFTER4)
    # The vCPU ran on and pushed over the frame: not what the iretq loaded any more.
    assert not W.frame_kept((0xFFFFFFFF8DF25F60,) + frame[1:], AFTER4)
    assert not W.frame_kept(frame, None)


def _stack(extra_below: tuple = ()):
    """The stack at the handler's %rsp as seq 4 of the run had it: the return slot, exc_int3's
    three words, pt_regs (orig_ax -1, then the CPU's frame), the gap holding the same frame."""
    regs = [0x1111 * (i + 1) for i in range(15)] + [0xFFFFFFFFFFFFFFFF] + list(GAP4[1:6])
    return extra_below + (0xFFFFFFFF8EA908AE, 0, 0xFFFFCCFB0009BD30, 0) + tuple(regs) + GAP4 + (0,) * 60


def test_find_frames_reads_pt_regs_and_the_return_slot_off_the_stack():
    rsp = 0xFFFFCCFB0009BC88
    assert W.find_frames(_stack(), rsp, PLACES.returns) == (rsp + 32, rsp)
    # A report after the handler pushed %rbx: one word lower, same answer.
    assert W.find_frames(_stack((0x42,)), rsp - 8, PLACES.returns) == (rsp + 32, rsp)
    # No return site on the stack, or no gap repeating the frame: not the handler's stack.
    assert W.find_frames(_stack()[1:], rsp + 8, PLACES.returns) is None
    broken = list(_stack())
    broken[4 + 21 + 1] ^= 1  # the gap's ip differs from pt_regs->ip
    assert W.find_frames(tuple(broken), rsp, PLACES.returns) is None


def test_without_dwarf_an_int3_near_the_top_of_its_stack_is_still_an_entry():
    """The no-DWARF path reads 96 words from %rsp (find_frames). Above a task stack's top
    nothing is mapped, so near the top one read of 96 words fails; what is left of the page
    holds pt_regs and the gap (a 6.12 run on this path lost 21 of 74 int3s so)."""
    import fakeguest as F
    from gdb_ftrace.core import tracker as T
    from gdb_ftrace.core.mode import CheckMode

    w = F.World()
    t = T.Tracker(CheckMode.HANDLER, 0, "poke_int3_handler")
    e = W.WatchEngine(dataclasses.replace(F.FACTS, dwarf=False), CheckMode.HANDLER, t)
    e.arm(w.on(0))
    w.batch([(F.SITE_CALL, F.CALL, F.CALL_TARGET - (F.SITE_CALL + 5))])
    regs = w.int3(1, F.SITE_CALL)
    rsp, top = w.regs[1]["rsp"], F.STACK[1]  # the stack's top is a page boundary; above it: nothing
    for a in range(rsp, top):
        w.mem.setdefault(a, 0)
    assert w.get(rsp, 8 * W.STACK_SCAN_WORDS) is None and top - rsp < 8 * W.STACK_SCAN_WORDS
    e.stop("word", w.on(1))
    [ev] = t.open_events()
    assert (ev.regs_addr, ev.handler_rsp) == (regs, rsp + 8)
