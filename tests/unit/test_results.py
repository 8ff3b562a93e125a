"""KTAP and JUnit from event logs and consoles recorded on real runs (6.12.117):
one test per site group and per whole-run condition; all ok exactly when the
summary line says PASS."""

import gzip
import os
import re
import xml.etree.ElementTree as ET

from conftest import DATA

from gdb_ftrace.core import report, results


def _run(events_file, serial_file=None, problems=()):
    events, meta = report.load_events(os.path.join(DATA, events_file))
    guest = report.parse_console(open(os.path.join(DATA, serial_file)).read()) if serial_file else None
    _lines, summary = report.render(events, guest, problems)
    return events, guest, summary


def _ktap_counts(lines):
    """Structural reading of a flat KTAP document: plan, results in order, SKIPs."""
    assert lines[0] == "KTAP version 1"
    plan = next(int(m[1]) for line in lines if (m := re.match(r"^1\.\.(\d+)$", line)))
    res = [re.match(r"^(ok|not ok) (\d+) ([^#]*?)( # SKIP .*)?$", line) for line in lines
           if re.match(r"^(ok|not ok) ", line)]
    assert all(res) and [int(m[2]) for m in res] == list(range(1, plan + 1))
    return {"plan": plan, "ok": sum(m[1] == "ok" and not m[4] for m in res),
            "not ok": sum(m[1] == "not ok" for m in res), "skip": sum(bool(m[4]) for m in res)}


def test_pass_run_is_all_ok_with_one_test_per_site_group():
    events, guest, summary = _run("events-livepatch-trace-6.12.117-cloud-full.jsonl.gz",
                                  "serial-livepatch-trace-6.12.117-cloud.log")
    cases = results.all_cases(events, summary, guest)
    assert results.passed(cases) == summary.passed
    groups = {(r[0], r[1], r[3], r[4]) for r in report.group_rows(events)}
    assert len([c for c in cases if c.group == "site"]) == len(groups)
    assert [c.name for c in cases if c.group == "run"] == [
        "run ended normally", "guest finished its scenario", "guest console free of crashes",
        "guest unpatched reads = 0", "no checker error", "emulations verified"]
    counts = _ktap_counts(results.ktap(cases, [summary.line()]))
    assert counts["not ok"] == 0 and counts["plan"] == len(cases)


def test_injected_skip_call_fails_the_call_group_with_expected_vs_seen():
    events, guest, summary = _run("events-inject-skip-call-6.12.117-cloud-full.jsonl.gz")
    assert not summary.passed
    cases = results.all_cases(events, summary, None)
    failed = [c for c in cases if not c.ok and not c.skip]
    assert failed and all(c.group == "site" for c in failed)
    assert any("CALL" in c.name and "cmdline_proc_show" in c.name for c in failed)
    # The first diagnostic is the explanation: what was expected, what was seen.
    assert all(c.message.startswith("WRONG-TARGET #") and "expected" in c.message for c in failed), failed[0]
    lines = results.ktap(cases)
    assert _ktap_counts(lines)["not ok"] == len(failed)
    assert not any("#" in re.sub(r" # SKIP .*$", "", line.split(" ", 2)[-1])
                   for line in lines if re.match(r"^(ok|not ok) ", line))
    # Without a console (--attach) the guest's conditions are SKIPs, not passes.
    skips = [c.name for c in cases if c.skip]
    assert "guest unpatched reads = 0" in skips and "guest finished its scenario" in skips


def test_every_whole_run_condition_can_fail():
    events, guest, summary = _run("events-livepatch-trace-6.12.117-cloud-full.jsonl.gz",
                                  "serial-livepatch-trace-6.12.117-cloud.log")
    guest.unpatched, guest.end_status, guest.crashes = 3, None, ["Oops: int3: 0000 [#1] SMP"]
    cases = results.run_cases(summary, guest, ["timeout after 600 s"], ["checker error: KeyError: 'x'"])
    bad = {c.name for c in cases if not c.ok}
    assert bad == {"run ended normally", "guest finished its scenario", "guest console free of crashes",
                   "guest unpatched reads = 0", "no checker error"}
    _e, _g, empty = _run("events-livepatch-trace-6.12.117-cloud-full.jsonl.gz")
    empty.verified = 0
    assert not results.run_cases(empty, None, [], [])[-1].ok


def test_junit_has_one_testcase_per_case_and_failures_with_the_explanation():
    events, _guest, summary = _run("events-inject-skip-call-6.12.117-cloud-full.jsonl.gz")
    cases = results.all_cases(events, summary, None)
    root = ET.fromstring(results.junit([("ftrace-int3 livepatch-trace", cases)], 12.5).split("\n", 1)[1])
    ts = root.find("testsuite")
    assert int(ts.get("tests")) == len(cases) == len(ts.findall("testcase"))
    fails = ts.findall("testcase/failure")
    assert int(ts.get("failures")) == len(fails) == sum(1 for c in cases if not c.ok and not c.skip)
    assert all(f.get("message").startswith("WRONG-TARGET #") for f in fails)


def test_matrix_document_nests_one_subtest_per_kernel():
    events, guest, summary = _run("events-livepatch-trace-6.12.117-cloud-full.jsonl.gz",
                                  "serial-livepatch-trace-6.12.117-cloud.log")
    good = results.all_cases(events, summary, guest)
    missing = [results.Case("kernel available", False, ["no kernel source"], group="run")]
    lines = results.ktap_suites([("6.12.117", good, ["a"]), ("v5.4", missing, [])])
    assert lines[:2] == ["KTAP version 1", "1..2"]
    assert lines[2:4] == ["  KTAP version 1", "  # Subtest: 6.12.117"]
    assert "ok 1 6.12.117" in lines and "not ok 2 v5.4" in lines
