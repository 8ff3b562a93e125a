"""Verdict rules on events recorded from live Debian cloud kernels under QEMU
(tests/data/livepatch-trace-*.jsonl: `make check` default scenario on
6.12.117+deb12, which has IBT, on 6.1.0-56, which has not, and on
7.3.4+deb13 of the v6.16+ smp_text_poke_* era), and on copies of them with one fault injected each: every verdict class must be
reachable, and each injected fault must produce exactly its verdict."""

import copy
import os

import pytest
from conftest import DATA

from gdb_ftrace.core import report, verdict
from gdb_ftrace.core.event import Int3Event
from gdb_ftrace.core.verdict import finalize, judge

RECORDED = os.path.join(DATA, "livepatch-trace-6.12.117-cloud.jsonl")


@pytest.fixture(scope="module")
def recorded():
    events, meta = report.load_events(RECORDED)
    assert meta["kernel"]["handler"] == "poke_int3_handler"
    return events


def _fresh(ev: Int3Event) -> Int3Event:
    ev = copy.deepcopy(ev)
    ev.verdict, ev.reasons, ev.expected = "", [], None
    return finalize(ev)


def _first(events, pred):
    return copy.deepcopy(next(ev for ev in events if pred(ev)))


def _is_call(ev):
    return ev.verdict == "VERIFIED" and ev.expected.kind == "CALL"


RECORDINGS = {  # file, the livepatched function's fentry site, the boot int3 self-test's site
    "6.12.117": ("livepatch-trace-6.12.117-cloud.jsonl", "cmdline_proc_show+0x4", "int3_selftest+0x36"),
    "6.1.0-56": ("livepatch-trace-6.1.0-56-cloud.jsonl", "cmdline_proc_show", "int3_selftest+0x36"),
    # v6.16+ era (smp_text_poke_int3_handler, text_poke_array), MODE=full, entry records left out
    "7.3.4": ("livepatch-trace-7.3.4+deb13-cloud-amd64.jsonl", "cmdline_proc_show+0x4", "int3_selftest_asm"),
}


@pytest.fixture(scope="module", params=sorted(RECORDINGS))
def each_recording(request):
    name, site, selftest = RECORDINGS[request.param]
    return report.load_events(os.path.join(DATA, name))[0], site, selftest


def test_rejudging_recorded_events_gives_the_recorded_verdicts(each_recording):
    events = each_recording[0]
    for ev in events:
        assert _fresh(ev).verdict == ev.verdict, ev.seq


def test_recorded_run_has_the_seed_property(each_recording):
    recorded, site, selftest = each_recording
    calls = [ev for ev in recorded if _is_call(ev) and ev.site_sym == site]
    assert len(calls) >= 50
    assert {ev.target_sym for ev in calls} == {"ftrace_caller", "ftrace_ops trampoline (klp_ftrace_handler)"}
    for ev in calls:
        assert ev.pushed == ev.site + 5
        assert ev.after["sp"] == ev.before["sp"] - 8
    assert all(ev.verdict in ("VERIFIED", "OTHER") for ev in recorded)
    # The int3 self-test at boot is the one OTHER: not a text-patch int3.
    assert [ev.site_sym for ev in recorded if ev.verdict == "OTHER"] == [selftest]


def test_recorded_gap_words_mirror_the_hardware_frame(each_recording):
    # entry_64.S copies orig_ax, ip, cs, flags, sp, ss below the gap: at handler
    # entry the six words above pt_regs equal those pt_regs fields.
    for ev in each_recording[0]:
        b = ev.before
        assert ev.gap == [b["orig_ax"], b["ip"], b["cs"], b["flags"], b["sp"], b["ss"]]


def test_wrong_return_address(recorded):
    ev = _first(recorded, _is_call)
    ev.pushed += 3
    v, reasons, _ = judge(ev)
    assert v == "WRONG-RETURN" and f"{ev.site + 5:#x}" in reasons[0]


def test_wrong_target(recorded):
    ev = _first(recorded, _is_call)
    ev.after["ip"] = ev.site + 5  # the pre-seed behaviour: the call site acts as a NOP
    v, reasons, _ = judge(ev)
    assert v == "WRONG-TARGET"
    assert "expected" in reasons[0] and f"{ev.site + 5:#x}" in reasons[0]


def test_wrong_stack(recorded):
    ev = _first(recorded, lambda e: e.verdict == "VERIFIED" and e.expected.kind in ("JMP", "NOP"))
    ev.after["sp"] -= 8
    assert judge(ev)[0] == "WRONG-STACK"


def test_gap_violation_when_push_lands_in_pt_regs(recorded):
    ev = _first(recorded, _is_call)
    # Without the gap pt_regs ends where the interrupted stack begins: the push
    # at sp-8 lands on regs->ss.
    ev.regs_addr = ev.before["sp"] - verdict.PT_REGS_SIZE
    v, reasons, _ = judge(ev)
    assert v == "GAP-VIOLATION" and "inside the live pt_regs" in reasons[0]


def test_missed_when_handler_leaves_a_batch_site(recorded):
    ev = _first(recorded, _is_call)
    ev.ret = 0
    ev.after = dict(ev.before)
    v, reasons, _ = judge(ev)
    assert v == "MISSED" and "returned 0" in reasons[0]


def test_unexpected_emulation_without_batch_entry(recorded):
    ev = _first(recorded, lambda e: e.verdict == "OTHER")
    ev.ret = 1
    assert judge(ev)[0] == "UNEXPECTED-EMULATION"


def test_incomplete_when_handler_never_returned(recorded):
    ev = _first(recorded, _is_call)
    ev.ret, ev.after, ev.pushed = None, None, None
    assert judge(ev)[0] == "INCOMPLETE"
    assert verdict.verdict_class("INCOMPLETE") == "other"


def test_every_verdict_has_a_class():
    for v in verdict.FAIL_VERDICTS + ("VERIFIED", "MISSED", "OTHER", "INCOMPLETE"):
        assert verdict.verdict_class(v) in ("verified", "failed", "missed", "other")


def test_json_round_trip(recorded):
    for ev in recorded[:20]:
        back = Int3Event.from_json(ev.to_json())
        assert back == ev


# --- MODE=full: the CPU's frame from the int3 entry stop and the landing after iret ---

FULL = os.path.join(DATA, "livepatch-trace-6.12.117-cloud-full.jsonl")


@pytest.fixture(scope="module")
def full():
    events, meta = report.load_events(FULL)
    assert meta["mode"] == "full"
    return events


def test_full_recording_has_entry_frames_and_landings(full):
    emulated = [ev for ev in full if ev.ret == 1]
    assert len(emulated) >= 100
    kinds = {ev.expected.kind for ev in emulated}
    assert {"CALL", "NOP", "JMP"} <= kinds
    for ev in full:
        assert ev.hw_source == "entry"
        # asm_exc_int3 pushed orig_ax and copied 6 words: the CPU's frame is
        # 48 bytes above the copy in pt_regs.
        assert ev.hw_frame["addr"] - (ev.regs_addr + 128) == verdict.GAP_BYTES
    for ev in emulated:
        assert ev.landing is not None, ev.seq
        assert ev.landing["ip"] == ev.expected.ip
        assert _fresh(ev).verdict == "VERIFIED"
    calls = [ev for ev in emulated if ev.expected.kind == "CALL"]
    assert calls and all(ev.landing["top"] == ev.site + 5 for ev in calls)


def test_gap_violation_when_the_copied_frame_differs(full):
    ev = _first(full, lambda e: e.ret == 1 and e.expected.kind == "NOP")
    ev.hw_frame["flags"] ^= 0x200  # the entry code copied a frame with another IF
    v, reasons, _ = judge(ev)
    assert v == "GAP-VIOLATION" and "not the CPU's frame" in reasons[0] and "flags" in reasons[0]


def test_gap_violation_for_an_other_int3_too(full):
    ev = _first(full, lambda e: e.verdict == "OTHER")
    ev.hw_frame["ip"] += 1
    assert judge(ev)[0] == "GAP-VIOLATION"


def test_gap_violation_without_the_gap_on_an_aligned_stack(full):
    # No gap: pt_regs->ip sits where the CPU pushed its frame. The CPU aligns
    # its frame to 16 bytes, so when the interrupted sp was aligned the push
    # at sp-8 hits regs->ss.
    ev = _first(full, lambda e: e.ret == 1 and e.expected.kind == "CALL" and e.before["sp"] % 16 == 0)
    ev.regs_addr = ev.hw_frame["addr"] - 128
    v, reasons, _ = judge(ev)
    assert v == "GAP-VIOLATION"
    assert any("inside the live pt_regs" in r and "0 bytes above regs->ip" in r for r in reasons)


def test_gap_words_stand_in_for_the_entry_stop(full):
    # MODE=handler: no entry stop; the words above pt_regs are the CPU's frame.
    for ev in full[:50]:
        ev = copy.deepcopy(ev)
        ev.hw_frame, ev.hw_source = None, ""
        assert verdict.hardware_frame(ev)[1] == "gap"
        assert _fresh(ev).verdict in ("VERIFIED", "OTHER")


def test_wrong_landing_ip(full):
    ev = _first(full, lambda e: e.ret == 1 and e.expected.kind == "CALL")
    ev.landing["ip"] = ev.site + 5  # iret went back to the call site's end
    v, reasons, _ = judge(ev)
    assert v == "WRONG-LANDING" and f"arrived at {ev.site + 5:#x}" in reasons[0]


def test_wrong_landing_return_address(full):
    ev = _first(full, lambda e: e.ret == 1 and e.expected.kind == "CALL")
    ev.landing["top"] += 2
    v, reasons, _ = judge(ev)
    assert v == "WRONG-LANDING" and "[rsp]" in reasons[0]


def test_late_landing_from_the_frame_does_not_judge_rsp_top(full):
    # The watch engine, a report QEMU made late: rip and rsp from the frame still in memory,
    # [rsp] unknown. Its rip is still judged.
    ev = _first(full, lambda e: e.ret == 1 and e.expected.kind == "CALL")
    ev.landing["top"] = None
    ev.landing["top_known"], ev.landing["source"] = False, "late-frame"
    assert judge(ev)[0] == "VERIFIED"
    ev.landing["ip"] = ev.site + 5
    assert judge(ev)[0] == "WRONG-LANDING"
    line = report.coverage([ev])
    assert "(1 of them reported late: rip and rsp from the frame the iretq loaded, not [rsp])" in line


def test_handler_fault_outranks_landing(full):
    ev = _first(full, lambda e: e.ret == 1 and e.expected.kind == "CALL")
    ev.pushed += 2
    ev.landing["top"] += 2
    v, reasons, _ = judge(ev)
    assert v == "WRONG-RETURN" and any(r.startswith("after iret") for r in reasons)


def test_coverage_line(full):
    line = report.coverage(full)
    assert "from the int3 entry for" in line and "landing after iret for" in line
    n = sum(1 for ev in full if ev.ret == 1)
    assert f"{n}/{n} emulations" in line


def test_trace_all_excerpt_rejudges_and_covers_the_kinds():
    """An excerpt of `make check SCENARIO=trace-all` on 6.12.117 (MODE=full,
    SAMPLE=4, 31429 int3s, PASS): fentry CALL<->NOP5 into the function
    tracer's trampoline, jump labels, landings and gap-word frames."""
    events, meta = report.load_events(os.path.join(DATA, "trace-all-6.12.117-cloud-excerpt.jsonl"))
    assert meta["sample"] == 4
    for ev in events:
        assert _fresh(ev).verdict == ev.verdict, ev.seq
    kinds = {ev.expected.kind for ev in events if ev.expected}
    assert {"CALL", "NOP", "JMP"} <= kinds
    assert any(ev.target_sym == "ftrace_ops trampoline (function_trace_call)" for ev in events)
    assert {ev.hw_source for ev in events} == {"entry", "gap"}
    assert any(not ev.in_sample for ev in events) and any(ev.landing for ev in events)
