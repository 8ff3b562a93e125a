"""Holding the patching vCPU (issue 19): real kernel, real gdb, the real driver.
A hold makes every batch that patches the hold site take an int3 on the other vCPU,
one toggle verifies the CALL emulation into both targets, the guest shows no watchdog
warning, a hold no vCPU can satisfy ends at its bound, and an attached check with a
hold leaves the user's QEMU running."""

import json
import os
import re
import subprocess

from .helpers import CHECK, ROOT, qmp, summary, table_rows, wait_for
from .test_sessions import driver, toggles_seen, user_qemu

WARNINGS = re.compile(r"rcu: INFO: rcu_\w+ (self-)?detected stall|rcu_preempt detected stalls|"
                      r"soft lockup|clocksource.*(unstable|skew)|hung_task|BUG: workqueue lockup", re.I)
COVERAGE = re.compile(r"^coverage: (\d+) batches with live int3s, (\d+) with an int3 taken"
                      r"(?: \(\d+ seen only at their int3s[^)]*\))?; cmdline_proc_show: "
                      r"an int3 in (\d+)/(\d+) batches that patched it;.*held (\d+) batches up to (\d+) ms", re.M)


def check(vm_dir, out, *args, timeout=600):
    p = subprocess.run(["/usr/bin/python3", CHECK, "--vm", vm_dir, "--out", str(out), *args],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return p, (out / "serial.log").read_text(errors="replace") if (out / "serial.log").exists() else ""


def test_one_toggle_with_a_hold_verifies_both_call_targets_and_no_watchdog_fires(vm_dir, tmp_path):
    p, console = check(vm_dir, tmp_path / "out", "--toggles", "1", "--hold", "500")
    s = summary(p.stdout)
    assert p.returncode == 0 and s["status"] == "PASS", p.stdout[-3000:] + p.stderr[-2000:]
    m = COVERAGE.search(p.stdout)
    assert m, p.stdout
    # livepatch load + tracer on + tracer off: each batch that patched the site took an int3,
    # and each was held, unless QEMU 7.2 never reported its hold point (then the coverage line
    # counts it as seen only at its int3s: CI saw held 2 + unseen 1 once)
    unseen = json.load(open(tmp_path / "out" / "run.json"))["coverage"]["unseen"]
    assert int(m[4]) >= 3 and m[3] == m[4] and int(m[5]) + unseen >= 3 and m[6] == "500", m[0]
    targets = {r[4] for r in table_rows(p.stdout) if r[0].startswith("cmdline_proc_show+") and r[3] == "CALL"
               and r[5] == "VERIFIED"}
    assert "ftrace_caller" in targets or "ftrace_regs_caller" in targets, p.stdout
    assert any("trampoline" in t for t in targets), p.stdout
    assert not WARNINGS.search(console), WARNINGS.search(console)[0]
    run = json.load(open(tmp_path / "out" / "run.json"))
    assert run["hold_ms"] == 500 and run["coverage"]["hold_sites"]["cmdline_proc_show"]["hit"] >= 3


def test_a_hold_no_vcpu_can_satisfy_ends_at_its_bound_with_a_clear_line(vm_dir, tmp_path):
    """No hold sites: every batch is held until each of its sites took an int3, and most
    sites (jump labels of code nobody runs meanwhile) never do: the bound ends those."""
    p, console = check(vm_dir, tmp_path / "out", "--toggles", "1", "--hold", "200", "--hold-sites", "")
    s = summary(p.stdout)
    assert p.returncode == 0 and s["status"] == "PASS", p.stdout[-3000:] + p.stderr[-2000:]
    m = re.search(r"^hold: (\d+) held batches ended at a bound with a hold site not hit \(first: batch \d+ at "
                  r"[\d.]+ s, (.+): no other vCPU ran into it\)$", p.stdout, re.M)
    assert m and int(m[1]) >= 1, p.stdout
    cov = json.load(open(tmp_path / "out" / "run.json"))["coverage"]
    assert cov["ends"].get("time", 0) >= 1 and cov["held"] >= cov["ends"]["time"], cov
    assert not WARNINGS.search(console), WARNINGS.search(console)[0]


def test_attached_with_a_hold_leaves_the_users_qemu_running(vm_dir, tmp_path):
    qemu, port = user_qemu(vm_dir, tmp_path)
    try:
        p, took = driver("--attach", f"127.0.0.1:{port}", "--vmlinux", os.path.join(vm_dir, "vmlinux"),
                         "--duration", "15", "--hold", "300", "--hold-sites", "cmdline_proc_show",
                         "--out", str(tmp_path / "out"))
        s = summary(p.stdout)
        assert p.returncode == 0 and s["status"] == "PASS", p.stdout[-3000:] + p.stderr[-3000:]
        gdb_log = (tmp_path / "out" / "gdb.log").read_text()
        assert "hold: up to 300 ms per batch" in gdb_log and "detached; the guest keeps running" in gdb_log
        m = COVERAGE.search(p.stdout)
        assert m and int(m[5]) >= 1, p.stdout
        assert qemu.poll() is None
        assert qmp(str(tmp_path / "qmp.sock"), "query-status")["status"] == "running"
        before = toggles_seen(tmp_path)
        wait_for(lambda: toggles_seen(tmp_path) > before + 2, 60, "the guest to go on toggling (both vCPUs)")
    finally:
        qemu.kill()
        qemu.wait(timeout=30)
