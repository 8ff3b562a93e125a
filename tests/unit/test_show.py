"""`ftrace-int3 show`: one recorded event (6.12.117, an emulated CALL at the
livepatched function's fentry site) in full; objdump on the recorded bytes."""

import os

from conftest import DATA

from gdb_ftrace.core import report, show
from gdb_ftrace.core.disasm import objdump_bytes


def test_show_a_recorded_call_in_full():
    events, _meta = report.load_events(os.path.join(DATA, "events-livepatch-trace-6.12.117-cloud-full.jsonl.gz"))
    ev = next(e for e in events if e.expected and e.expected.kind == "CALL" and e.verdict == "VERIFIED")
    lines = show.render(ev, 2, objdump_bytes, None, 30)
    text = "\n".join(lines)
    assert lines[0].startswith(f"event #{ev.seq} (report row 2, 1 of 30): cpu{ev.cpu} int3 at {ev.site_sym}")
    # What was at the site (the int3 first) and what the batch installs, disassembled.
    assert f"{ev.site:#x}:  cc" in text and " int3" in text and "the int3 over the first byte" in text
    assert f"{ev.site:#x}:  e8 " in text and "call 0x" in text
    assert f"pt_regs at handler entry:   ip {ev.before['ip']:#x}" in text
    assert f"pt_regs at handler return:  ip {ev.after['ip']:#x}" in text and f"[sp] {ev.pushed:#x}" in text
    assert f"expected: CALL, ip {ev.expected.ip:#x}" in text and f"push {ev.expected.push:#x}" in text
    assert lines[-1] == "verdict: VERIFIED"


def test_show_a_failed_event_says_why():
    events, _meta = report.load_events(os.path.join(DATA, "events-inject-skip-call-6.12.117-cloud-full.jsonl.gz"))
    ev = next(e for e in events if e.verdict == "WRONG-TARGET")
    text = "\n".join(show.render(ev, None, lambda b, a: [], None))
    assert "verdict: WRONG-TARGET: " in text and ev.reasons[0] in text
    assert "injected: skip-call" in text


def test_objdump_disassembles_bytes_at_an_address():
    rows = objdump_bytes(bytes.fromhex("e80b4c9e00"), 0xFFFFFFFF81234560)
    assert rows == [(0xFFFFFFFF81234560, "e8 0b 4c 9e 00", "call 0xffffffff81c19170")]
    assert objdump_bytes(b"", 0) == []
