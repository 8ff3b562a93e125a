"""Issue 4: each injected fault, on the live kernel, gives its verdict and no other FAIL class."""

import collections
import json
import os

import pytest

from gdb_ftrace.core import report, results
from gdb_ftrace.core.verdict import FAIL_VERDICTS

from .helpers import junit_read, kunit_parse, start_check, summary

EXPECTED = {  # mode -> the verdict it must produce (the watch engine, the default)
    "skip-call": "WRONG-TARGET",
    "wrong-return": "WRONG-RETURN",
    "no-gap": "GAP-VIOLATION",
    "late-int3": "MISSED",
    # The same fault seen by the breakpoint engine, which reads the CPU's frame at the int3 entry.
    "no-gap@breakpoints": "GAP-VIOLATION",
}


def run_injected(vm_dir, out, case):
    mode, _, engine = case.partition("@")
    p = start_check(vm_dir, out, "--toggles", "10", "--timeout", "300", "--inject", mode,
                    "--engine", engine or "watch",
                    "--ktap", os.path.join(out, "r.ktap"), "--junit", os.path.join(out, "r.xml"))
    stdout, stderr = p.communicate(timeout=420)
    events, meta = report.load_events(os.path.join(out, "events.jsonl"))
    run = json.load(open(os.path.join(out, "run.json")))
    return p.returncode, stdout, stderr, events, meta, run


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_injected_fault_gives_its_verdict(vm_dir, tmp_path, case):
    rc, stdout, stderr, events, meta, run = run_injected(vm_dir, tmp_path, case)
    mode, _, engine = case.partition("@")
    assert meta["engine"] == (engine or "watch")
    s = summary(stdout)
    assert rc != 0 and s["status"] == "FAIL", stdout[-2000:]
    assert run["inject"] == mode and meta["inject"] == mode
    assert f"inject: {mode}" in stdout
    want = EXPECTED[case]
    hit = [ev for ev in events if ev.verdict == want]
    assert hit, collections.Counter(ev.verdict for ev in events)
    # No other FAIL class anywhere, and the faulty events are the injected ones.
    fails = {ev.verdict for ev in events if ev.verdict in FAIL_VERDICTS}
    assert fails <= {want}, fails
    assert all(ev.injected for ev in hit if mode != "no-gap")
    if mode == "skip-call":
        # The pre-seed behaviour lets the livepatched function's old body run.
        assert s["guest_unpatched"] > 0
        # For a fleet: the kernel's KTAP parser and a JUnit reader see the same failures.
        k = kunit_parse(tmp_path / "r.ktap")
        assert k["status"] == "FAILURE" and k["errors"] == 0, k
        failed = {t["name"] for t in k["subtests"] if t["status"] == "FAILURE"}
        # Every CALL the injector skipped fails its case: the livepatched ftrace site, and
        # any static call (cond_resched -> klp_cond_resched) hit while the livepatch loads.
        injected = {c.name for c in results.site_cases([ev for ev in events if ev.injected])}
        assert any(n.startswith("cmdline_proc_show+0x4 ftrace CALL") for n in injected), injected
        assert failed == {"guest unpatched reads = 0"} | injected, failed
        assert k["counts"]["failed"] == len(failed) >= 2
        j = junit_read(tmp_path / "r.xml")[0]
        assert set(j["failed"]) == failed and j["failures"] == len(failed)
        assert all(m.startswith("WRONG-TARGET #") for n, m in j["failed"].items() if n.startswith("cmdline"))
        assert "cmdline_proc_show+0x4" in {ev.site_sym for ev in hit}
        assert all(ev.after["ip"] == ev.site + 5 for ev in hit)
    if mode == "wrong-return":
        # Caught at the handler's return and again at the landing; repaired after it.
        assert all(any(r.startswith("after iret") for r in ev.reasons) for ev in hit)
        assert s["guest_unpatched"] == 0
    if mode == "no-gap" and engine == "breakpoints":  # the frame read at the entry, and where it is
        assert any("a gap needs 48" in r for ev in hit for r in ev.reasons)
    if mode == "no-gap" and not engine:  # the words above pt_regs are not the CPU's frame
        assert any("not the CPU's frame in the 6 words above pt_regs" in r for ev in hit for r in ev.reasons)
    if mode == "no-gap":
        assert "guest console:" in stdout  # what the guest did next is reported
    if mode == "late-int3":
        assert s["failed"] == 0 and s["missed"] >= 1
        assert hit[0].injected_by("late-int3") and "planted" in hit[0].injected[0].what and hit[0].followups
    # The kernel text we changed was put back (or the guest was already gone).
    assert meta.get("restored") is not None
