"""Runs recorded live on the older eras, re-judged from their event logs and
replayed from their stop streams (tests/data/*-5.4.286-src-full*, *-5.10.0-32-*):

- v5.4.286 built from ../shared/kernels (the seed's own era): ftrace_int3_handler
  emulates `call ftrace_regs_caller` at every fentry site being patched, and
  poke_int3_handler sends jump-label int3s to their detour;
- the same kernel with INJECT=skip-call: the handler as it was before the
  series (9e298e860408), the call skipped, the livepatched function's old
  body run by the guest;
- Debian 11's 5.10.0-32-cloud-amd64 (bp_desc pointer era), whose 5-byte NOP
  is K8_NOP5_ATOMIC and whose int3 self-test is inlined."""

import copy
import os

import pytest
from conftest import DATA

from gdb_ftrace.core import report
from gdb_ftrace.core.verdict import finalize


def load(name):
    return report.load_events(os.path.join(DATA, f"events-{name}.jsonl.gz"))


V54 = "livepatch-trace-5.4.286-src-full"
V54_SKIP = "inject-skip-call-5.4.286-src-full"
V510 = "livepatch-trace-5.10.0-32-cloud-full"


@pytest.mark.parametrize("name", [V54, V54_SKIP, V510])
def test_rejudging_gives_the_recorded_verdicts(name):
    for ev in load(name)[0]:
        fresh = copy.deepcopy(ev)
        fresh.verdict, fresh.reasons, fresh.expected = "", [], None
        assert finalize(fresh).verdict == ev.verdict, ev.seq


def test_v54_fentry_int3s_are_calls_into_ftrace_regs_caller():
    events, meta = load(V54)
    assert meta["kernel"]["era"] == "v5.2-v5.5"
    fentry = [ev for ev in events if ev.site_sym == "cmdline_proc_show"]
    assert len(fentry) == 60
    for ev in fentry:
        assert ev.handler == "ftrace_int3_handler" and ev.verdict == "VERIFIED"
        assert ev.ftrace["is_location"] and ev.ftrace["modifying"] > 0
        assert ev.expected.ip == ev.ftrace["regs_caller"] and ev.target_sym == "ftrace_regs_caller"
        assert ev.pushed == ev.site + 5 and ev.after["sp"] == ev.before["sp"] - 8
        assert ev.landing == {"ip": ev.expected.ip, "sp": ev.before["sp"] - 8, "top": ev.site + 5}


def test_v54_jump_labels_are_detours_to_the_next_instruction():
    events, _ = load(V54)
    detours = [ev for ev in events if ev.expected is not None and ev.expected.kind == "DETOUR"]
    assert len(detours) >= 50
    for ev in detours:
        assert ev.handler == "poke_int3_handler" and ev.verdict == "VERIFIED"
        assert ev.site_kind.startswith("jump label")
        # jump_label.c: detour = site + JUMP_LABEL_NOP_SIZE, whatever is being installed
        assert ev.loc.detour == ev.site + 5 and ev.after["ip"] == ev.loc.detour
    assert {report.classify_bytes(ev.loc.installed) for ev in detours} == {"NOP5", "JMP32"}


def test_v54_a_wrong_detour_is_wrong_target():
    events, _ = load(V54)
    ev = copy.deepcopy(next(e for e in events if e.expected and e.expected.kind == "DETOUR"))
    ev.after["ip"] += 1
    ev.landing = None
    assert finalize(ev).verdict == "WRONG-TARGET"


def test_v54_skip_call_is_the_pre_series_behaviour():
    events, _ = load(V54_SKIP)
    bad = [ev for ev in events if ev.verdict == "WRONG-TARGET"]
    assert len(bad) == 60 and all(ev.site_sym == "cmdline_proc_show" for ev in bad)
    assert all(ev.after == {"ip": ev.site + 5, "sp": ev.before["sp"]} and ev.injected_by("skip-call") for ev in bad)
    assert {ev.verdict for ev in events} == {"VERIFIED", "WRONG-TARGET", "OTHER"}


def test_510_k8_nop5_and_the_inlined_self_test_are_named():
    events, meta = load(V510)
    assert meta["kernel"]["era"] == "v5.6-v5.19 (bp_desc struct backported from v6.0)"
    rows = report.group_rows(events)
    assert not [r for r in rows if r[2].startswith("?")]  # every installing column named
    assert any(r[2] == "NOP5" for r in rows)
    other = [ev for ev in events if ev.verdict == "OTHER"]
    assert len(other) == 1 and other[0].site_kind == "int3 self-test"
    assert report.summarize(events, None).failed == 0


def test_era_names_come_from_what_the_kernel_has():
    from gdb_ftrace.core.batch import DESC_V56_POINTER, DESC_V60_STRUCT, DESC_V616_ARRAY, era_name

    assert era_name(["ftrace_int3_handler", "poke_int3_handler"], None) == "v5.2-v5.5"
    assert era_name(["poke_int3_handler"], DESC_V56_POINTER, "5.10.13") == "v5.6-v5.19"
    assert era_name(["poke_int3_handler"], DESC_V60_STRUCT, "6.12.117+deb12-cloud-amd64") == "v6.0-v6.15"
    assert era_name(["poke_int3_handler"], DESC_V60_STRUCT, "5.10.0-32-cloud-amd64").startswith("v5.6-v5.19 (")
    assert era_name(["poke_int3_handler"], DESC_V60_STRUCT) == "v6.0-v6.15"  # no banner: the structure says
    assert era_name(["smp_text_poke_int3_handler"], DESC_V616_ARRAY) == "v6.16+"
