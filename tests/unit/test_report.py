"""Table, explanations, console parsing and the PASS/FAIL rule."""

import copy
import os

import pytest

from conftest import DATA

from gdb_ftrace.core import report
from gdb_ftrace.core.verdict import finalize, judge

RECORDED = os.path.join(DATA, "livepatch-trace-6.12.117-cloud.jsonl")
SERIAL = os.path.join(DATA, "serial-livepatch-trace-6.12.117-cloud.log")


def _events():
    return report.load_events(RECORDED)[0]


def test_table_groups_by_site_insn_target_verdict():
    rows = report.group_rows(_events())
    by_key = {(r[0], r[3], r[4], r[5]): r[6] for r in rows}
    assert by_key[("cmdline_proc_show+0x4", "CALL", "ftrace_caller", "VERIFIED")] == 29
    assert by_key[("cmdline_proc_show+0x4", "CALL", "ftrace_ops trampoline (klp_ftrace_handler)", "VERIFIED")] == 30
    assert sum(r[6] for r in rows) == len(_events())
    text = report.render_table(rows)
    assert text.splitlines()[0].split()[:7] == ["#", "site", "what", "installing", "emulated", "target", "verdict"]
    assert "int3_selftest+0x36" in text
    # Rows are numbered in table order, and row_events gives the events of row N.
    assert [int(line.split()[0]) for line in text.splitlines()[2:]] == list(range(1, len(rows) + 1))
    row, evs = report.row_events(_events(), 2)
    assert row == rows[1] and len(evs) == rows[1][6] and all(report.row_key(ev) == tuple(row[:6]) for ev in evs)
    with pytest.raises(IndexError):
        report.row_events(_events(), len(rows) + 1)


def test_parse_console_recorded():
    g = report.parse_console(open(SERIAL).read())
    assert g.booted and g.kernel == "6.12.117+deb12-cloud-amd64"
    assert (g.reads, g.unpatched, g.end_status) == (35172, 0, "ok")
    assert g.crashes == []


def test_summary_pass_and_each_way_to_fail():
    events = _events()
    guest = report.parse_console(open(SERIAL).read())
    s = report.summarize(events, guest)
    assert s.passed
    assert s.line() == "ftrace-int3 check: PASS verified=234 failed=0 missed=0 other=1 guest_unpatched=0"

    bad = copy.deepcopy(events)
    ev = next(e for e in bad if e.verdict == "VERIFIED" and e.expected.kind == "CALL")
    ev.pushed += 1
    ev.verdict, ev.reasons, ev.expected = judge(ev)
    s = report.summarize(bad, guest)
    assert not s.passed and s.failed == 1 and s.line().startswith("ftrace-int3 check: FAIL")
    assert report.explanations(bad)[0].startswith(f"WRONG-RETURN #{ev.seq} cpu{ev.cpu} at cmdline_proc_show+0x4")

    unpatched = copy.deepcopy(guest)
    unpatched.unpatched = 3
    assert not report.summarize(events, unpatched).passed

    crashed = report.parse_console(open(SERIAL).read().split("GDB_FTRACE: TOGGLE 3/30")[0] +
                                   "[   9.1] Kernel panic - not syncing: Fatal exception in interrupt\n")
    s = report.summarize(events, crashed)
    assert not s.passed and s.guest_unpatched is None
    assert "guest_unpatched=-1" in s.line()
    assert any("Kernel panic" in p for p in s.problems)

    assert not report.summarize([], guest).passed  # nothing verified is not a pass


def test_load_events_survives_a_cut_last_line(tmp_path):
    lines = open(RECORDED).read().splitlines()
    p = tmp_path / "cut.jsonl"
    p.write_text("\n".join(lines[:11]) + "\n" + lines[11][:40])
    events, meta = report.load_events(str(p))
    assert len(events) == 10 and meta["kernel"]["descriptor"] == "bp_desc"


def test_an_entry_without_its_return_becomes_incomplete(tmp_path):
    """gdb writes a 'handler_entry' record at the handler entry and the 'event' at its return;
    a run cut between the two still reports the entry."""
    import json

    lines = [l for l in open(RECORDED).read().splitlines() if '"record": "event"' in l]
    last = json.loads(lines[-1])
    entry = dict(last, record="handler_entry", ret=None, after=None, pushed=None, verdict="", reasons=[], expected=None)
    p = tmp_path / "cut.jsonl"
    p.write_text("\n".join(lines[:-1] + [json.dumps(entry)]) + "\n")
    events, _ = report.load_events(str(p))
    assert len(events) == len(lines)
    assert events[-1].seq == last["seq"] and events[-1].verdict == "INCOMPLETE"
    assert report.summarize(events, None).other == 2


def test_table_limit_keeps_every_fail_row():
    rows = [(f"f{i}+0x4", "ftrace", "CALL", "CALL", "ftrace_caller", "VERIFIED", 100 - i, "0") for i in range(50)]
    rows.append(("bad+0x4", "ftrace", "CALL", "CALL", "ftrace_caller", "WRONG-TARGET", 1, "1"))
    out = report.render_table(rows, limit=10)
    assert "bad+0x4" in out and "WRONG-TARGET" in out
    assert "f8+0x4" in out and "f9+0x4" not in out
    assert out.splitlines()[-1].startswith("... 41 more rows")
    assert "f49+0x4" in report.render_table(rows)


def test_missed_hints_name_the_class():
    from gdb_ftrace.core.event import DIE, KPROBE, FollowUp, Int3Event
    from gdb_ftrace.core.verdict import finalize

    stale = Int3Event(seq=1, cpu=1, regs_addr=0x1000, before={"ip": 0x2001, "sp": 0x3000, "cs": 0x10},
                      site=0x2000, site_bytes=b"\xe8\x00\x00\x00\x00", ret=0, after={"ip": 0x2001, "sp": 0x3000})
    stale.followups = [FollowUp(KPROBE, {"ret": 0, "ip": 0x2001, "rewound": False}), FollowUp(DIE)]
    finalize(stale)
    assert stale.verdict == "MISSED"
    hints = report.missed_hints([stale], "tcg-multi")
    assert "after the batch covering the site had finished" in hints[0] and "die()" in hints[0]
    assert "multi-threaded TCG" in hints[1]
    assert report.missed_hints([stale], "tcg-single")[1:] == []


def test_no_verdict_or_hint_depends_on_the_words(monkeypatch):
    """Follow-ups and injections are data: rewording them changes no verdict, kind or hint."""
    from gdb_ftrace.core import verdict
    from gdb_ftrace.core.event import DIE, KPROBE, FollowUp, Injection, Int3Event

    def late(*followups, injected=()):
        ev = Int3Event(seq=1, cpu=1, regs_addr=0x1000, before={"ip": 0x2001, "sp": 0x3000, "cs": 0x10},
                       site=0x2000, site_bytes=b"\xe8\x00\x00\x00\x00", ret=0,
                       after={"ip": 0x2001, "sp": 0x3000}, followups=list(followups), injected=list(injected))
        return finalize(ev)

    cases = [late(FollowUp(KPROBE, {"ret": 1, "ip": 0x2000, "rewound": True})),
             late(FollowUp(KPROBE, {"ret": 0, "ip": 0x2001, "rewound": False}), FollowUp(DIE)),
             late(injected=[Injection("late-int3", "planted")])]
    before = [(verdict.other_kind(e), report.missed_hints([e])) for e in cases]
    monkeypatch.setattr(report, "followup_words", lambda fu: "reworded")
    for e in cases:
        e.injected = [Injection(i.mode, "reworded") for i in e.injected]
    assert [(verdict.other_kind(e), report.missed_hints([e])) for e in cases] == before
    assert "rewound regs->ip" in before[0][1][0] and "died on it" in before[1][1][0]
    assert "INJECT=late-int3" in before[2][1][0]
    ok = late(FollowUp(KPROBE, {"ret": 1, "ip": 0x2000, "rewound": False}))
    ok.ret, ok.site_bytes = 0, b"\xcc"
    finalize(ok)
    assert ok.verdict == "OTHER" and verdict.other_kind(ok) == "kprobe"


def test_render_is_the_one_report():
    events = _events()
    guest = report.parse_console(open(SERIAL).read())
    lines, s = report.render(events, guest, rows=5)
    assert lines[0].splitlines()[0].split()[:3] == ["#", "site", "what"]
    assert lines[1].startswith("checked: CPU frame from the ")
    assert s.line() == "ftrace-int3 check: PASS verified=234 failed=0 missed=0 other=1 guest_unpatched=0"
    lines_gdb, s_gdb = report.render(events, rows=5)  # inside gdb: no guest console
    assert lines_gdb == lines
    assert s_gdb.line() == "ftrace-int3 report: PASS events=235 verified=234 failed=0 missed=0 other=1"
    _, bad = report.render(events, problems=["checker error: boom"])
    assert bad.line().startswith("ftrace-int3 report: FAIL")


def test_tools_line_names_qemu_gdb_and_python_or_says_what_is_missing():
    """As a QEMU 7.2 run of Debian 12 logs it (gdb_layer/guest.tools); a stub that is not
    QEMU answers no `monitor info version`; a log from before the record has no line."""
    meta = {"tools": {"gdb": "13.1", "python": "3.11.2", "qemu": "7.2.22Debian 1:7.2+dfsg-7+deb12u18+b3"}}
    assert report.tools_line(meta) == "tools: QEMU 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3), gdb 13.1, Python 3.11.2"
    meta["tools"]["qemu"] = "10.0.2"  # a QEMU built without a package version
    assert report.tools_line(meta).startswith("tools: QEMU 10.0.2, gdb")
    meta["tools"]["qemu"] = ""
    assert report.tools_line(meta).startswith("tools: QEMU ? (the stub did not say), gdb 13.1")
    assert report.tools_line({}) == ""


def test_a_return_qemu_10_reported_past_the_iretq_is_incomplete_and_named():
    """An excerpt of `make check SCENARIO=trace-all SAMPLE=0` on QEMU 10.0.13 (Debian 13,
    6.12.118+deb13, PASS, 38845 int3s): the one event whose handler return QEMU reported only
    after the vCPU had passed the iretq (on the patching CPU, at a function the batch itself
    was patching) and the 40 events on either side. It is INCOMPLETE, never judged, and the
    report says which QEMU ran and how the return was lost."""
    from gdb_ftrace.core.verdict import LOST_RETURN_WORDS
    events, meta = report.load_events(os.path.join(DATA, "trace-all-qemu10-6.12.118+deb13-excerpt.jsonl"))
    assert report.tools_line(meta).startswith("tools: QEMU 10.0.13 (Debian 1:10.0.13+ds-0+deb13u1), gdb 16.3")
    lost = [ev for ev in events if ev.verdict == "INCOMPLETE"]
    assert [ev.lost_return for ev in lost] == ["regs-gone"] and lost[0].ret is None and lost[0].after is None
    again = copy.deepcopy(lost[0])
    again.verdict, again.reasons, again.expected = "", [], None
    again = finalize(again)  # judged again by today's code: the same verdict, today's words
    assert again.verdict == "INCOMPLETE" and again.reasons == [LOST_RETURN_WORDS["regs-gone"]]
    assert {ev.verdict for ev in events} == {"VERIFIED", "INCOMPLETE"}
    line = report.coverage(events)
    assert "1 handler return(s) reported by QEMU only past the iretq (INCOMPLETE, not judged)" in line
    s = report.summarize(events, None)
    assert s.failed == 0 and s.verified == len(events) - 1
