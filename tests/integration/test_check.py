"""End to end: the real kernel under QEMU, real gdb, the real driver."""

import os
import re
import signal
import subprocess
import time

from .helpers import (ROOT, alive, junit_read, kunit_parse, listening_addrs, pids_matching, start_check, summary,
                      table_rows, wait_for)


def test_make_check_default_scenario_passes_and_reuses_the_vm(vm_dir, tmp_path):
    """Issue 2 acceptance, as the user types it: `make check` with 30 toggles; and
    issue 12's: KTAP=/JUNIT= files that the kernel's KTAP parser and a JUnit reader
    read with the right counts."""
    env = dict(os.environ, KERNEL=os.path.basename(vm_dir.rstrip("/")),
               KTAP=str(tmp_path / "check.ktap"), JUNIT=str(tmp_path / "check.xml"))
    t0 = time.monotonic()
    p = subprocess.run(["make", "check"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=900)
    took = time.monotonic() - t0
    s = summary(p.stdout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert s["status"] == "PASS"
    assert s["verified"] >= 50 and s["failed"] == 0 and s["missed"] == 0 and s["guest_unpatched"] == 0
    # Emulated CALLs at the livepatched function's fentry site, into two targets.
    call_rows = [r for r in table_rows(p.stdout)
                 if r[0].startswith("cmdline_proc_show+") and r[3] == "CALL" and r[5] == "VERIFIED"]
    targets = {r[4] for r in call_rows}
    assert "ftrace_caller" in targets and len(targets) >= 2, p.stdout
    # MODE=full and ENGINE=watch are the defaults: every kernel int3's CPU frame read above
    # pt_regs (no entry stop), every emulation followed past its iretq; those QEMU reported
    # late are said (README, Modes), and are few.
    m = re.search(r"CPU frame from the words above pt_regs for (\d+)/(\d+) kernel int3s; "
                  r"landing after iret for (\d+)/(\d+)", p.stdout)
    assert m and m[1] == m[2] and int(m[4]) >= 50 and int(m[3]) >= 0.9 * int(m[4]), p.stdout
    if m[3] != m[4]:
        assert "landing(s) not seen: " in p.stdout, p.stdout
    assert "engine: watch" in p.stdout.splitlines()[0], p.stdout  # the report header names the engine
    # The VM was built before the tests ran: this run must neither download nor build.
    assert not re.search(r"\[vm\] (downloading|extracting|building|adding)", p.stderr), p.stderr
    assert "[vm] VM ready" in p.stderr
    print(f"make check: {took:.1f}s; {p.stdout.splitlines()[-1]}")
    groups = {(r[0], r[1], r[3], r[4]) for r in table_rows(p.stdout)}
    k = kunit_parse(tmp_path / "check.ktap")
    assert k["status"] == "SUCCESS" and k["counts"]["failed"] == 0 and k["errors"] == 0, k
    # One test per site group (the int3 self-test's group is a SKIP), six whole-run ones, the coverage.
    assert k["counts"]["passed"] + k["counts"]["skipped"] == len(groups) + 7, (k["counts"], groups)
    j = junit_read(tmp_path / "check.xml")
    assert len(j) == 1 and j[0]["failures"] == 0 and j[0]["cases"] == len(groups) + 7, j
    # Without HOLD the coverage line says what chance gave (issue 19).
    assert re.search(r"^coverage: \d+ batches with live int3s, \d+ with an int3 taken"
                     r"(?: \(\d+ seen only at their int3s[^)]*\))?; cmdline_proc_show: an int3 "
                     r"in \d+/\d+ batches that patched it; .*no hold", p.stdout, re.M), p.stdout
    # One report: `ftrace-int3 report --json` in gdb prints what the driver printed,
    # from the same event log, line for line (all but the guest's counts in the last line).
    logs = re.search(r"^logs: (\S+)$", p.stdout, re.M)[1]
    driver = p.stdout.split("\n", 1)[1].split(f"logs: {logs}")[0].rstrip("\n").splitlines()
    g = subprocess.run(["gdb", "-batch", "-nx", "-x", os.path.join(ROOT, "gdb-ftrace.py"),
                        "-ex", f"ftrace-int3 report --json {logs}/events.jsonl"],
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    in_gdb = g.stdout.rstrip("\n").splitlines()
    assert in_gdb[:-1] == driver, (in_gdb, driver)
    assert in_gdb[-1] == "ftrace-int3 report: PASS events=%d verified=%d failed=0 missed=0 other=%d" % (
        s["verified"] + s["other"], s["verified"], s["other"])


def test_gdbstub_on_loopback_and_no_qemu_left_when_gdb_is_killed(vm_dir, tmp_path):
    p = start_check(vm_dir, tmp_path, "--toggles", "200")
    try:
        gdb_log = tmp_path / "gdb.log"
        wait_for(lambda: gdb_log.exists() and "armed on" in gdb_log.read_text(), 120, "the checker to arm")
        qemu = pids_matching(str(tmp_path), "qemu-system-x86_64")
        gdbs = pids_matching(str(tmp_path), "gdb")
        assert len(qemu) == 1 and len(gdbs) == 1, (qemu, gdbs)
        port = int(re.search(r"tcp:127\.0\.0\.1:(\d+)", (tmp_path / "qemu.log").read_text()).group(1))
        assert listening_addrs(port) == {"127.0.0.1"}
        # Let the guest get going, then kill gdb the hard way.
        wait_for(lambda: "TOGGLE" in (tmp_path / "serial.log").read_text(errors="replace"), 120, "toggling")
        os.kill(gdbs[0], signal.SIGKILL)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 1
    s = summary(out)
    assert s["status"] == "FAIL"
    assert "problem: gdb was killed by signal 9 (SIGKILL)" in out, out
    assert not alive(qemu[0]), "QEMU survived the check"
    assert pids_matching(str(tmp_path), "qemu-system-x86_64") == []
    # The events seen before the kill are still reported.
    assert int(re.search(r"events: (\d+)", out).group(1)) > 0


def test_timeout_ends_the_run_with_a_partial_report_and_no_stray_process(vm_dir, tmp_path):
    t0 = time.monotonic()
    p = start_check(vm_dir, tmp_path, "--toggles", "100000", "--timeout", "25")
    out, err = p.communicate(timeout=180)
    took = time.monotonic() - t0
    assert p.returncode == 1
    assert took < 90, took
    assert "problem: timeout after 25 s" in out
    s = summary(out)
    assert s["status"] == "FAIL" and s["guest_unpatched"] == -1
    assert pids_matching(str(tmp_path), "qemu-system-x86_64") == []
    assert pids_matching(str(tmp_path), "gdb") == []


def test_driver_killed_takes_qemu_and_gdb_with_it(vm_dir, tmp_path):
    p = start_check(vm_dir, tmp_path, "--toggles", "200")
    try:
        gdb_log = tmp_path / "gdb.log"
        wait_for(lambda: gdb_log.exists() and "armed on" in gdb_log.read_text(), 120, "the checker to arm")
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 1 and "interrupted" in out
    wait_for(lambda: not pids_matching(str(tmp_path), "qemu-system-x86_64"), 10, "QEMU to go")
    assert pids_matching(str(tmp_path), "gdb") == []


def test_bad_make_variables_are_refused_with_a_clear_error(vm_dir):
    for var, msg in (("TOGGLES=abc", "TOGGLES='abc' must be a whole number"),
                     ("ACCEL=hvf", "ACCEL='hvf' must be one of tcg-single, tcg-multi, kvm"),
                     ("SCENARIO=nope", "SCENARIO='nope' does not exist"),
                     ("KASLR=2", "KASLR='2' must be 0 or 1")):
        env = dict(os.environ, KERNEL=os.path.basename(vm_dir.rstrip("/")))
        p = subprocess.run(["make", "check", var], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=120, stdin=subprocess.DEVNULL)
        assert p.returncode != 0 and msg in p.stderr, (var, p.stderr[-500:])


def test_tcg_multi_ends_with_missed_and_explains_it(vm_dir, tmp_path):
    """Issue 3: under multi-threaded TCG the check ends in bounded time with a MISSED
    int3 and words for it, not a timeout. The race is probabilistic (measured: 7 of 8
    runs within 300 s, median 29 s), so up to three boots; never a false FAIL."""
    seen = []
    for attempt in range(3):
        out = tmp_path / f"try{attempt}"
        t0 = time.monotonic()
        p = start_check(vm_dir, out, "--accel", "tcg-multi", "--timeout", "240")
        stdout, _ = p.communicate(timeout=400)
        took = time.monotonic() - t0
        s = summary(stdout)
        seen.append((round(took), stdout.splitlines()[-1]))
        assert took < 330, seen
        assert s["failed"] == 0, stdout[-3000:]
        if s["missed"]:
            assert "MISSED #" in stdout and "hint: ACCEL=tcg-multi" in stdout
            assert "after the batch covering the site had finished" in stdout
            print(f"tcg-multi: {seen}")
            return
    raise AssertionError(f"no MISSED in 3 tcg-multi runs: {seen}")


def test_trace_all_passes_with_jump_labels_and_calls(vm_dir, tmp_path):
    """Issue 3: `make check SCENARIO=trace-all` (every traceable function, one toggle,
    MODE=full with the scenario's per-batch sample). About 1-2 minutes.

    Known flake (2 of about 10 runs on 2026-11-26): the guest itself double-faults or
    WARNs with corrupt RFLAGS in code far from any int3 (e.g. __d_alloc), every verdict
    VERIFIED until then; suspected QEMU TCG running breakpointed pages one instruction
    at a time while 40 000 sites are rewritten. Such a run (a guest crash, no FAIL
    verdict, nothing MISSED) is retried once and its console lines printed; a FAIL or
    MISSED verdict, or a second crash, fails the test."""
    for attempt in (1, 2):
        out = tmp_path / f"try{attempt}"
        p = start_check(vm_dir, out, "--scenario", "trace-all")
        stdout, stderr = p.communicate(timeout=3000)
        s = summary(stdout)
        guest_crash = "problem: guest console:" in stdout and s["failed"] == 0 and s["missed"] == 0
        if attempt == 1 and s["status"] == "FAIL" and guest_crash:
            print("trace-all: the guest crashed with no FAIL verdict; retrying once:\n" +
                  "\n".join(l for l in stdout.splitlines() if l.startswith("problem:")))
            continue
        break
    tmp_path = out
    assert p.returncode == 0 and s["status"] == "PASS", stdout[-3000:] + stderr[-2000:]
    assert s["verified"] > 5000
    from gdb_ftrace.core import report

    events, _ = report.load_events(os.path.join(tmp_path, "events.jsonl"))
    from gdb_ftrace.core.insn import classify_bytes

    verified = [ev for ev in events if ev.verdict == "VERIFIED"]
    assert {"CALL", "NOP"} <= {ev.expected.kind for ev in verified}
    # Jump labels (JMP8/JMP32 <-> NOP2/NOP5 outside fentry sites) flip too.
    assert any(ev.loc and classify_bytes(ev.loc.installed) in ("JMP8", "JMP32", "NOP2")
               for ev in verified)
    # The watch engine: landings read before the iretq from the frame it loads (or after it,
    # from the vCPU's registers), every kernel int3's CPU frame above pt_regs.
    landed = [ev for ev in events if ev.landing]
    assert landed and all(ev.landing["source"] in ("iret-frame", "registers") for ev in landed)
    assert all(ev.gap for ev in events if not ev.before.get("cs", 0) & 3)


def test_guest_panic_mid_run_ends_with_a_partial_report(vm_dir, tmp_path):
    """Issue 9: the guest panics while armed (scenario panic-mid-run: sysrq-trigger c after
    5 toggles). The check ends in bounded time, FAIL, names the panic, keeps the events
    seen before it, and leaves no QEMU or gdb behind."""
    t0 = time.monotonic()
    p = start_check(vm_dir, tmp_path, "--scenario", "panic-mid-run", "--timeout", "300")
    out, err = p.communicate(timeout=400)
    took = time.monotonic() - t0
    s = summary(out)
    assert p.returncode == 1 and s["status"] == "FAIL", out[-3000:]
    assert took < 120, took
    assert "problem: guest console: " in out and "Kernel panic - not syncing: sysrq triggered crash" in out
    assert "the guest did not finish its scenario" in out
    assert s["verified"] > 0 and s["failed"] == 0 and s["guest_unpatched"] == -1  # the events before the panic
    from gdb_ftrace.core import report

    events, _ = report.load_events(os.path.join(tmp_path, "events.jsonl"))
    assert len(events) == s["verified"] + s["other"]
    assert not pids_matching(str(tmp_path), "qemu-system-x86_64") and not pids_matching(str(tmp_path), "gdb")


import pytest  # noqa: E402


@pytest.mark.parametrize("engine", ["watch", "breakpoints"])
def test_a_recorded_stop_stream_replays_to_the_live_events(vm_dir, tmp_path, engine):
    """--stops records what each engine decided from (issue 18): the stream of a live run,
    replayed through core.engine without gdb, gives the events gdb logged, field for field."""
    import json

    from gdb_ftrace.core import engine as E
    from gdb_ftrace.core import report

    stops = tmp_path / "stops.jsonl"
    p = start_check(vm_dir, tmp_path / "out", "--toggles", "5", "--engine", engine, "--stops", str(stops))
    out, err = p.communicate(timeout=600)
    assert summary(out)["status"] == "PASS", out + err
    with open(stops) as f:
        r = E.replay(json.loads(line) for line in f)
    live, meta = report.load_events(str(tmp_path / "out" / "events.jsonl"))
    assert meta["engine"] == engine and meta["armed"]["engine"] == engine
    names = ("site_sym", "site_kind", "target_sym")
    got = [{k: v for k, v in e.to_json().items() if k not in names} for e in r.tracker.events]
    want = [{k: v for k, v in e.to_json().items() if k not in names} for e in live]
    assert got == want and len(got) > 10
    assert r.engine.stats() == meta["engine_stats"]
