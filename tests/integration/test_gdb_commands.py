"""The ftrace-int3 commands inside real gdb with the real vmlinux (no guest running)."""

import os
import re
import subprocess

from gdb_ftrace.core import report

from .helpers import ROOT

LOADER = os.path.join(ROOT, "gdb-ftrace.py")


def gdb(vmlinux, *cmds):
    argv = ["gdb", "-batch", "-nx"] + ([vmlinux] if vmlinux else []) + ["-x", LOADER]
    for c in cmds:
        argv += ["-ex", c]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    return p.stdout + p.stderr


def start_qemu(vm_dir, tmp_path, toggles):
    """The VM halted (-S) with its gdbstub on a free loopback port, for a gdb session of our own."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    qemu = subprocess.Popen(
        ["qemu-system-x86_64", "-accel", "tcg,thread=single", "-smp", "2", "-m", "1G",
         "-kernel", os.path.join(vm_dir, "bzImage"), "-initrd", os.path.join(vm_dir, "initramfs.cpio.gz"),
         "-append", f"console=ttyS0 nokaslr panic=-1 gdb_ftrace.scenario=livepatch-trace "
         f"gdb_ftrace.toggles={toggles}",
         "-display", "none", "-monitor", "none", "-serial", f"file:{tmp_path}/serial.log", "-no-reboot",
         "-gdb", f"tcp:127.0.0.1:{port}", "-S"], stdin=subprocess.DEVNULL)
    return qemu, port


def test_info_names_what_was_found(vm_dir):
    out = gdb(os.path.join(vm_dir, "vmlinux"), "ftrace-int3 info")
    assert "poke_int3_handler at 0xffffffff" in out
    assert "exc_int3+0x" in out
    # bp_desc (v6.0-v6.15) or text_poke_array (v6.16+), the entry layout from DWARF
    assert ("bp_desc" in out or "text_poke_array" in out) and "rel_addr@0" in out and "len@8" in out


def test_every_subcommand_has_help_with_usage(vm_dir):
    for sub in ("", " info", " arm", " run", " inject", " disarm", " report", " check"):
        out = gdb(None, f"help ftrace-int3{sub}")
        lines = out.strip().splitlines()
        assert lines and lines[0].strip(), sub
        assert any(l.startswith("Usage: ftrace-int3") for l in lines), (sub, out)


def test_arm_help_lists_every_option_with_its_help_and_default(vm_dir):
    """The help is built from the command's argparse parser: nothing restated by hand."""
    from gdb_ftrace.core import engine, mode

    out = gdb(None, "help ftrace-int3 arm")
    for opt in ("--mode {handler,landing,full}", "--sample N", "--json FILE", "--stops FILE", "--echo"):
        assert re.search(rf"^  {re.escape(opt)}", out, re.M), (opt, out)
    assert f"(default: {mode.DEFAULT.value})" in out
    for m in mode.CheckMode:  # every mode with each engine, its stops per int3 (core.engine.stops)
        for e in engine.Engine:
            n = engine.stops(m, e).per_int3
            assert re.search(rf"^  {m.value}\s+{e.value}\s+{n} stops/int3: ", out, re.M), out
    out = gdb(None, "help ftrace-int3 inject")
    assert all(m in out for m in ("skip-call", "wrong-return", "no-gap", "late-int3", "off"))


def test_user_mistakes_are_gdb_errors_with_a_hint(vm_dir):
    out = gdb(None, "ftrace-int3 info")
    assert "no int3 text-patch handler found" in out and "vmlinux" in out
    out = gdb(os.path.join(vm_dir, "vmlinux"), "ftrace-int3 arm --bogus", "ftrace-int3 disarm",
              "ftrace-int3 report", "ftrace-int3 report --json /nonexistent/x.jsonl")
    assert "unrecognized arguments: --bogus" in out
    assert "ftrace-int3 is not armed" in out
    assert "no events: run 'ftrace-int3 arm' first" in out
    assert "cannot read /nonexistent/x.jsonl" in out


def test_report_from_a_recorded_event_log(vm_dir):
    log = os.path.join(ROOT, "tests", "data", "livepatch-trace-6.12.117-cloud.jsonl")
    out = gdb(None, f"ftrace-int3 report --json {log}")
    assert "cmdline_proc_show+0x4" in out
    assert "ftrace-int3 report: PASS events=235 verified=234 failed=0 missed=0 other=1" in out
    assert "checked: CPU frame from the " in out  # the coverage line, as the driver prints it


def test_interactive_session_arm_full_and_run(vm_dir, tmp_path):
    """What a developer types: target remote, arm --mode full, run, report; with the breakpoint
    engine, whose int3 entry stop reads the CPU's frame (the watch engine is the make check's)."""
    qemu, port = start_qemu(vm_dir, tmp_path, toggles=10)
    try:
        log = tmp_path / "ev.jsonl"
        out = gdb(os.path.join(vm_dir, "vmlinux"), f"target remote 127.0.0.1:{port}",
                  f"ftrace-int3 arm --mode full --engine breakpoints --json {log}", "ftrace-int3 run",
                  "ftrace-int3 report")
    finally:
        qemu.kill()
        qemu.wait(timeout=30)
    assert "armed (full)" in out and "resume with 'ftrace-int3 run'" in out
    assert "ftrace-int3: guest exited" in out, out[-3000:]
    m = re.search(r"ftrace-int3 report: PASS events=(\d+) verified=(\d+) failed=0 missed=0", out)
    assert m and int(m[2]) >= 20, out[-3000:]
    events, meta = report.load_events(str(log))
    assert meta["mode"] == "full"
    emulated = [ev for ev in events if ev.ret == 1]
    assert emulated and all(ev.landing is not None and ev.hw_source == "entry" for ev in emulated)


def test_inject_patches_the_live_entry_and_off_restores_it(vm_dir, tmp_path):
    """ftrace-int3 inject no-gap changes the guest's asm_exc_int3 (after boot) and
    'inject off' puts the original bytes back; checked by reading guest memory."""
    qemu, port = start_qemu(vm_dir, tmp_path, toggles=3)
    show = "python print('BYTES', bytes(gdb.selected_inferior().read_memory(0x{:x}, 2)).hex())"
    try:
        vmlinux = os.path.join(vm_dir, "vmlinux")
        # Where the entry's `jnz` is, from vmlinux (the guest has not booted yet).
        probe = gdb(vmlinux, "python from gdb_ftrace.gdb_layer import kernel, symtab; from gdb_ftrace.core import inject; "
                    "k = kernel.info(); p, r = inject.gap_branch(symtab.disassemble(k.int3_entry_name), symtab.read_text); "
                    "print('JNZ', hex(p.addr), r.data.hex())")
        m = re.search(r"JNZ (0x[0-9a-f]+) ([0-9a-f]+)", probe)
        assert m, probe
        addr, orig = int(m[1], 16), m[2]
        out = gdb(vmlinux, f"target remote 127.0.0.1:{port}", "ftrace-int3 arm --mode handler",
                  "ftrace-int3 inject no-gap", "tbreak cmdline_proc_show", "continue",
                  show.format(addr), "ftrace-int3 inject off", show.format(addr), "kill")
    finally:
        qemu.kill()
        qemu.wait(timeout=30)
    got = re.findall(r"BYTES ([0-9a-f]+)", out)
    assert got == ["eb" + orig[2:], orig], out[-3000:]
    assert "int3 entry: gap restored" in out
