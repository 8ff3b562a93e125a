"""End to end: an ftrace direct call (vm-images/directcall, scenario direct-call)
switched on and off while CPU1 runs through vfs_read; the checker must verify
the emulated CALLs into the module's trampoline and name it."""

import os
import re

from .helpers import pids_matching, start_check, summary, table_rows

DIRECT_NAME = "direct call gdb_ftrace_direct_tramp [gdb_ftrace_direct] (ftrace_ops direct)"


def test_direct_call_scenario_passes_with_calls_into_the_direct_trampoline(vm_dir, tmp_path):
    """About 30 s on 2 cores (tcg-single, MODE=full, 20 loads/unloads)."""
    p = start_check(vm_dir, tmp_path, "--scenario", "direct-call", "--toggles", "20", "--timeout", "400",
                    "--rows", "0")
    try:
        stdout, stderr = p.communicate(timeout=600)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    s = summary(stdout)
    assert p.returncode == 0 and s["status"] == "PASS", stdout[-3000:] + stderr[-2000:]
    assert s["failed"] == 0 and s["missed"] == 0 and s["guest_unpatched"] == 0
    # The table: a VERIFIED CALL at vfs_read's fentry site into the direct trampoline.
    rows = [r for r in table_rows(stdout) if r[0].startswith("vfs_read+")]
    calls = [r for r in rows if r[2] == "CALL" and r[3] == "CALL" and r[5] == "VERIFIED"]
    assert calls and {r[4] for r in calls} == {DIRECT_NAME}, stdout
    # The guest saw the direct call run on every load (the scenario fails otherwise).
    serial = (tmp_path / "serial.log").read_text(errors="replace")
    m = re.search(r"GDB_FTRACE: RESULT scenario=direct-call toggles=20 reads=(\d+) unpatched=0 direct_calls=(\d+)",
                  serial)
    assert m and int(m[1]) > 0 and int(m[2]) >= 20, serial[-2000:]
    # In the event log: each such CALL pushed site+5 and landed at the trampoline.
    from gdb_ftrace.core import report

    events, _ = report.load_events(os.path.join(tmp_path, "events.jsonl"))
    direct = [ev for ev in events if ev.target_sym == DIRECT_NAME and ev.verdict == "VERIFIED"]
    assert direct
    for ev in direct:
        assert ev.pushed == ev.site + 5 and ev.after["ip"] == ev.expected.target
    assert any(ev.landing and ev.landing["ip"] == ev.expected.target for ev in direct)
    assert pids_matching(str(tmp_path), "qemu-system-x86_64") == []
    assert pids_matching(str(tmp_path), "gdb") == []
