"""Real debugging sessions (issue 9): a QEMU the user started, KASLR, the wrong
vmlinux, a gdbstub that is not there, a QEMU that goes away. Real QEMU, real gdb,
the real driver; each asserts the message, the exit status, the partial report
and that no process of ours is left."""

import os
import re
import shutil
import signal
import socket
import subprocess
import time

from .helpers import CHECK, ROOT, alive, pids_matching, qmp, summary, wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def user_qemu(vm_dir, tmp_path, toggles=100000, kaslr=True):
    """QEMU as a developer starts it: their command line, running (no -S), KASLR on,
    gdbstub on a port of theirs, a QMP socket to ask it how it is."""
    port = free_port()
    qemu = subprocess.Popen(
        ["qemu-system-x86_64", "-accel", "tcg,thread=single", "-smp", "2", "-m", "1G",
         "-kernel", os.path.join(vm_dir, "bzImage"), "-initrd", os.path.join(vm_dir, "initramfs.cpio.gz"),
         "-append", f"console=ttyS0 {'' if kaslr else 'nokaslr '}panic=-1 "
         f"gdb_ftrace.scenario=livepatch-trace gdb_ftrace.toggles={toggles}",
         "-display", "none", "-monitor", "none", "-serial", f"file:{tmp_path}/user-serial.log",
         "-qmp", f"unix:{tmp_path}/qmp.sock,server=on,wait=off", "-no-reboot",
         "-gdb", f"tcp:127.0.0.1:{port}"], stdin=subprocess.DEVNULL)
    serial = tmp_path / "user-serial.log"
    wait_for(lambda: serial.exists() and "TOGGLE 2/" in serial.read_text(errors="replace"), 120,
             "the user's guest to start toggling")
    return qemu, port


def toggles_seen(tmp_path) -> int:
    got = re.findall(r"TOGGLE (\d+)/", (tmp_path / "user-serial.log").read_text(errors="replace"))
    return int(got[-1]) if got else 0


def driver(*args, timeout=300):
    t0 = time.monotonic()
    p = subprocess.run(["/usr/bin/python3", CHECK, *args], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=timeout, cwd=ROOT)
    return p, time.monotonic() - t0


def no_gdb_left(tmp_path):
    return not pids_matching(str(tmp_path), "gdb")


def test_attach_to_a_running_qemu_checks_for_the_duration_and_leaves_it_running(vm_dir, tmp_path):
    qemu, port = user_qemu(vm_dir, tmp_path)
    try:
        p, took = driver("--attach", f"127.0.0.1:{port}", "--vmlinux", os.path.join(vm_dir, "vmlinux"),
                         "--duration", "15", "--out", str(tmp_path / "out"))
        s = summary(p.stdout)
        assert p.returncode == 0 and s["status"] == "PASS", p.stdout[-3000:] + p.stderr[-3000:]
        assert s["verified"] > 0 and s["failed"] == 0 and s["missed"] == 0 and s["guest_unpatched"] == "n/a"
        assert took < 15 + 60, took
        gdb_log = (tmp_path / "out" / "gdb.log").read_text()
        # Stopped mid-run by the attach, located under KASLR, armed, ended by the duration, detached.
        m = re.search(r"kernel located: (\S+), slide (0x[0-9a-f]+) \(KASLR on", gdb_log)
        assert m and int(m[2], 16) != 0, gdb_log[-3000:]
        assert "the duration ended" in gdb_log and "detached; the guest keeps running" in gdb_log, gdb_log[-3000:]
        # QEMU: alive, not paused, and the guest still toggling afterwards.
        assert qemu.poll() is None
        assert qmp(str(tmp_path / "qmp.sock"), "query-status")["status"] == "running"
        before = toggles_seen(tmp_path)
        wait_for(lambda: toggles_seen(tmp_path) > before + 2, 60, "the guest to go on toggling")
        assert no_gdb_left(tmp_path / "out")
    finally:
        qemu.kill()
        qemu.wait(timeout=30)


def test_ctrl_c_ends_an_attached_check_and_detaches(vm_dir, tmp_path):
    qemu, port = user_qemu(vm_dir, tmp_path)
    try:
        out = tmp_path / "out"
        d = subprocess.Popen(["/usr/bin/python3", CHECK, "--attach", f"127.0.0.1:{port}", "--vmlinux",
                              os.path.join(vm_dir, "vmlinux"), "--out", str(out)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=ROOT, start_new_session=True)
        wait_for(lambda: (out / "gdb.log").exists() and "armed on" in (out / "gdb.log").read_text(), 120,
                 "the checker to arm")
        time.sleep(8)
        os.killpg(d.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        stdout, stderr = d.communicate(timeout=60)
        s = summary(stdout)
        assert d.returncode == 0 and s["status"] == "PASS" and s["verified"] > 0, stdout[-3000:] + stderr[-3000:]
        assert "detached; the guest keeps running" in (out / "gdb.log").read_text()
        assert qmp(str(tmp_path / "qmp.sock"), "query-status")["status"] == "running"
        assert no_gdb_left(out)
    finally:
        qemu.kill()
        qemu.wait(timeout=30)


def test_wrong_vmlinux_is_refused_naming_both_releases(vm_dir, tmp_path):
    """A vmlinux whose banner differs from the running kernel's (the same build with
    another release string: same layout, so the slide matches and only the banner
    tells) is refused before anything is armed."""
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    for f in ("bzImage", "initramfs.cpio.gz"):
        os.symlink(os.path.join(vm_dir, f), wrong / f)
    shutil.copyfile(os.path.join(vm_dir, "vmlinux"), wrong / "vmlinux")
    data = (wrong / "vmlinux").read_bytes()
    m = re.search(rb"Linux version (\d+)\.(\d+)\.(\d+)", data)
    assert m
    bad = m[0][:-len(m[3])] + b"9" * len(m[3])  # e.g. 6.12.117 -> 6.12.999
    (wrong / "vmlinux").write_bytes(data.replace(m[0], bad))
    p, took = driver("--vm", str(wrong), "--out", str(tmp_path / "out"), timeout=300)
    assert p.returncode != 0 and took < 120, (took, p.stdout[-2000:])
    assert summary(p.stdout)["status"] == "FAIL"
    msg = re.search(r"this vmlinux is not the running kernel: the guest runs (\S+), the vmlinux is (\S+);", p.stdout)
    assert msg, p.stdout[-3000:]
    assert msg[1].startswith(m[0][14:].decode()) and msg[2].startswith(bad[14:].decode()), msg.groups()
    assert "armed on" not in (tmp_path / "out" / "gdb.log").read_text()
    assert not pids_matching(str(tmp_path), "qemu-system-x86_64") and no_gdb_left(tmp_path)


def test_unreachable_gdbstub_ends_in_bounded_time_with_a_clear_message(vm_dir, tmp_path):
    port = free_port()  # nothing listens there
    p, took = driver("--attach", f"127.0.0.1:{port}", "--vmlinux", os.path.join(vm_dir, "vmlinux"),
                     "--duration", "5", "--out", str(tmp_path / "out"), timeout=120)
    assert p.returncode != 0 and took < 40, (took, p.stdout[-2000:], p.stderr[-2000:])
    assert f"cannot connect to the gdbstub at 127.0.0.1:{port}" in p.stdout, p.stdout[-2000:]
    assert summary(p.stdout)["status"] == "FAIL"
    assert no_gdb_left(tmp_path)


def test_qemu_gone_mid_run_keeps_the_events_and_says_so(vm_dir, tmp_path):
    qemu, port = user_qemu(vm_dir, tmp_path)
    out = tmp_path / "out"
    try:
        d = subprocess.Popen(["/usr/bin/python3", CHECK, "--attach", f"127.0.0.1:{port}", "--vmlinux",
                              os.path.join(vm_dir, "vmlinux"), "--duration", "120", "--out", str(out)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=ROOT, start_new_session=True)
        events = out / "events.jsonl"
        wait_for(lambda: events.exists() and events.read_text().count('"record": "event"') >= 10, 120,
                 "ten events")
        t0 = time.monotonic()
        qemu.kill()
        stdout, stderr = d.communicate(timeout=90)
        took = time.monotonic() - t0
    finally:
        qemu.kill()
        qemu.wait(timeout=30)
    assert d.returncode != 0 and took < 45, (took, stdout[-2000:], stderr[-2000:])
    assert re.search(r"problem: .*(target gone|connection closed|Remote connection closed)", stdout, re.I), \
        stdout[-3000:]
    assert re.search(r"VERIFIED", stdout), stdout[-3000:]  # the events so far are reported
    assert no_gdb_left(out) and not alive(qemu.pid)


def test_vmlinux_without_dwarf_checks_with_the_documented_layouts(vm_dir, tmp_path):
    """objcopy --strip-debug: symbols only. The check still verifies every emulation,
    from the era's documented layouts, and says what is unavailable without DWARF."""
    bare = tmp_path / "nodwarf"
    bare.mkdir()
    for f in ("bzImage", "initramfs.cpio.gz"):
        os.symlink(os.path.join(vm_dir, f), bare / f)
    subprocess.run(["objcopy", "--strip-debug", os.path.join(vm_dir, "vmlinux"), str(bare / "vmlinux")],
                   check=True, timeout=120)
    info = subprocess.run(["gdb", "-batch", "-nx", str(bare / "vmlinux"), "-x", os.path.join(ROOT, "gdb-ftrace.py"),
                           "-ex", "ftrace-int3 info"], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL).stdout
    assert re.search(r"^batch element\s+struct text_poke_loc \(v5\.17\+ documented layout, no DWARF\)", info, re.M), info
    assert re.search(r"^DWARF\s+no: .*unavailable: which sites are ftrace's", info, re.M), info
    p, _ = driver("--vm", str(bare), "--out", str(tmp_path / "out"), "--toggles", "10")
    s = summary(p.stdout)
    assert p.returncode == 0 and s["status"] == "PASS" and s["verified"] >= 20, p.stdout[-3000:] + p.stderr[-2000:]
    assert "note: the vmlinux has no DWARF" in p.stdout
    # The livepatched site's CALLs are verified all the same (their targets unnamed without DWARF).
    assert re.search(r"^ *\d+  cmdline_proc_show\+0x4 .* CALL +CALL +ftrace_caller +VERIFIED", p.stdout, re.M), p.stdout


def test_arm_in_a_session_stopped_mid_run_keeps_the_users_breakpoints(vm_dir, tmp_path):
    """A developer's own gdb: attached to a running KASLR guest (stopped wherever it was),
    with a breakpoint of their own. arm finds the slide and moves the symbols (their
    breakpoint follows), run checks, disarm leaves nothing of ours in."""
    qemu, port = user_qemu(vm_dir, tmp_path)
    # Ctrl-C as a user gives it: again while the guest still runs. QEMU drops an interrupt
    # that arrives while gdb steps over a breakpoint (runner._Ender repeats its own for that);
    # a single one hung this test in CI (180 s). Daemon timers: gdb's exit must not wait.
    interrupt_later = ("python import threading; "
                       "poke = lambda: (gdb.selected_thread() is not None and gdb.selected_thread().is_running() "
                       "and gdb.execute('interrupt')); "
                       "ts = [threading.Timer(d, lambda: gdb.post_event(poke)) for d in (12, 16, 20, 26, 34, 44)]; "
                       "[setattr(t, 'daemon', True) or t.start() for t in ts]")
    probe = ("python from gdb_ftrace.gdb_layer import kernel; k = kernel.info(); "
             "print('OURS', ' '.join(hex(a) for a in [k.handler, k.int3_entry, k.iret] + [r for _, r in k.returns]))")
    try:
        p = subprocess.run(
            ["gdb", "-batch", "-nx", os.path.join(vm_dir, "vmlinux"), "-x", os.path.join(ROOT, "gdb-ftrace.py"),
             "-ex", f"target remote 127.0.0.1:{port}", "-ex", "break panic",
             "-ex", f"ftrace-int3 arm --mode full --json {tmp_path}/ev.jsonl", "-ex", "info breakpoints",
             "-ex", "p/x (unsigned long)&panic", "-ex", "p/x (unsigned long)&__per_cpu_start", "-ex", probe, "-ex", interrupt_later, "-ex", "ftrace-int3 run",
             "-ex", "ftrace-int3 disarm", "-ex", "info breakpoints", "-ex", "maint info breakpoints",
             "-ex", "ftrace-int3 report", "-ex", "detach"],
            capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
        out = p.stdout + p.stderr
        assert re.search(r"ftrace-int3: kernel located, slide 0x[0-9a-f]+ \(KASLR on", out), out[-3000:]
        panic = re.search(r"^\$1 = (0x[0-9a-f]+)", out, re.M)[1]
        # Per-CPU symbols are offsets (linked at 0): they must not move with the slide.
        assert re.search(r"^\$2 = 0x0$", out, re.M), out[-3000:]
        user_bp = re.findall(r"^1\s+breakpoint\s+keep\s+y\s+(0x[0-9a-f]+)\s+in panic ", out, re.M)
        assert len(user_bp) >= 2 and set(user_bp) == {panic}, (user_bp, panic)  # moved with the symbols, still there after disarm
        assert re.search(r"ftrace-int3 report: PASS events=\d+ verified=[1-9]", out), out[-3000:]
        ours = re.search(r"^OURS (.*)$", out, re.M)[1].split()
        after = out[out.index("disarmed;"):]
        for addr in ours:
            assert addr not in after.split("ftrace-int3 report")[0], (addr, after[:3000])
        assert qmp(str(tmp_path / "qmp.sock"), "query-status")["status"] == "running"
    finally:
        qemu.kill()
        qemu.wait(timeout=30)
