"""The fresh-machine path: vm-images/build-vm into an empty cache, for real.

Every other test reuses a cached VM, so a bug on the way from Debian's archive
to a VM folder hides until someone runs on a new machine (issue 9: a reader
that stopped early on a pipe killed `dpkg-deb` with SIGPIPE, and build-vm died
"no kernel image in ..." on every fresh machine). This test downloads the
default kernel's packages from Debian's archive (about 1 GB, about a minute),
builds the modules and the initramfs into an empty GDB_FTRACE_CACHE, checks
the folder, runs build-vm again and checks that it rebuilt nothing, and
deletes the cache. It needs network access to deb.debian.org, not a VM.
"""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD_VM = os.path.join(ROOT, "vm-images", "build-vm")
HANDLERS = ("poke_int3_handler", "smp_text_poke_int3_handler")  # the latter since v6.16
PRODUCTS = ("bzImage", "vmlinux", "initramfs.cpio.gz", "gdb_ftrace_lp.ko")


def build_vm(cache: str, timeout: float = 900) -> tuple[subprocess.CompletedProcess, float]:
    """build-vm --print-dir into cache; on timeout its whole process group (apt-get, make, ...) is killed."""
    t0 = time.monotonic()
    p = subprocess.Popen([BUILD_VM, "--print-dir"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True,
                         env={**os.environ, "GDB_FTRACE_CACHE": cache})
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail(f"build-vm took over {timeout:.0f} s; stderr:\n{err[-4000:]}")
    return subprocess.CompletedProcess(p.args, p.returncode, out, err), time.monotonic() - t0


@pytest.fixture(scope="module")
def two_builds():
    """build-vm twice into one empty cache: (first run, its seconds, products' mtimes, second run, its seconds)."""
    missing = [t for t in ("apt-get", "dpkg-deb", "make", "nm") if not shutil.which(t)]
    if missing:
        why = f"not installed: {', '.join(missing)} (run make setup)"
        if os.environ.get("GDB_FTRACE_REQUIRE_VM") == "1":
            pytest.fail(why)
        pytest.skip(why)
    cache = tempfile.mkdtemp(prefix="gdb_ftrace-fresh-cache-")
    try:
        assert os.listdir(cache) == []
        first, t1 = build_vm(cache)
        vm = first.stdout.strip()
        mtimes = {f: os.stat(os.path.join(vm, f)).st_mtime_ns
                  for f in PRODUCTS if vm and os.path.isfile(os.path.join(vm, f))}
        second, t2 = build_vm(cache) if first.returncode == 0 else (None, 0.0)
        yield cache, first, t1, mtimes, second, t2
    finally:
        shutil.rmtree(cache, ignore_errors=True)  # about 1 GB


def test_empty_cache_builds_a_complete_vm(two_builds):
    cache, first, t1, _, _, _ = two_builds
    why = f"build-vm from an empty cache (exit {first.returncode}, {t1:.0f} s), stderr:\n{first.stderr[-4000:]}"
    assert first.returncode == 0, why
    assert "Broken pipe" not in first.stderr, why
    vm = first.stdout.strip()
    assert vm.count("\n") == 0 and os.path.dirname(vm) == cache, f"--print-dir printed {first.stdout!r}"
    for f in PRODUCTS + ("kernel.release",):
        path = os.path.join(vm, f)
        assert os.path.isfile(path) and os.path.getsize(path) > 0, f"{path} missing or empty; {why}"
    assert open(os.path.join(vm, "kernel.release")).read().strip() == os.path.basename(vm)
    # Direct-call module: built, or the reason it does not build for this kernel.
    assert any(os.path.isfile(os.path.join(vm, f))
               for f in ("gdb_ftrace_direct.ko", "gdb_ftrace_direct.unavailable")), os.listdir(vm)
    # The vmlinux is the kernel with the text-patch int3 handler the checker arms on.
    nm = subprocess.run(["nm", os.path.join(vm, "vmlinux")], capture_output=True, text=True, timeout=300)
    assert nm.returncode == 0, nm.stderr
    names = {line.split()[-1] for line in nm.stdout.splitlines() if line.strip()}
    assert names & set(HANDLERS), f"vmlinux has none of {HANDLERS}"
    assert "cmdline_proc_show" in names


def test_second_run_rebuilds_nothing(two_builds):
    _, first, _, mtimes, second, t2 = two_builds
    assert second is not None, "the first build failed (see the other test)"
    assert second.returncode == 0, second.stderr[-4000:]
    assert second.stdout == first.stdout
    steps = [l for l in second.stderr.splitlines() if re.search(r"download|build|extract|fetch|refresh", l)]
    assert not steps, f"the second run redid work ({t2:.0f} s):\n" + "\n".join(steps)
    vm_lines = [l for l in second.stderr.splitlines() if l.startswith("[vm] ")]
    assert all(l.startswith(("[vm] resolving ", "[vm] kernel ", "[vm] VM ready: ")) for l in vm_lines), vm_lines
    vm = first.stdout.strip()
    assert {f: os.stat(os.path.join(vm, f)).st_mtime_ns for f in mtimes} == mtimes
