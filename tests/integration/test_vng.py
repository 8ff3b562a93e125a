"""virtme-ng (issue 20): a developer's tree booted the way many boot theirs, with
`vng --run`, and checked with `ftrace-int3-check --attach` while the guest
patches text.

The tree: 5.4.286 from ../shared/kernels (or KSRC=<tarball>) configured with
`vng --kconfig` plus what the check needs (tests/data/vng-5.4.config), built
in place once (about 15 minutes on 2 cores: vng's config has DRM and sound)
and kept in $GDB_FTRACE_CACHE/test-trees/. vng comes from PyPI through
scripts/setup-vng; where that cannot install it, the test is skipped and says
why. vng runs under single-threaded TCG (--disable-kvm, -accel
tcg,thread=single) with QEMU's gdbstub on loopback on a free port (-gdb
tcp:127.0.0.1:PORT; vng 1.42's --debug opens localhost:1234 and adds nokaslr,
one fixed port for every run on the machine).
"""

import os
import re
import signal
import subprocess
import time

import pytest

from . import own_tree
from .helpers import ROOT, listening_addrs, pids_matching, summary, wait_for
from .test_own_kernel import _tarball
from .test_sessions import driver, free_port, no_gdb_left

VNG_CONFIG = os.path.join(ROOT, "tests", "data", "vng-5.4.config")

# The guest's workload, run by vng --exec in the host's root filesystem: CPU1
# reads /proc/cmdline in a loop while CPU0 switches ftrace on and off at
# cmdline_proc_show, so CPU1 runs into the call site while it is patched.
TOGGLE = r"""
T=/sys/kernel/tracing
[ -e $T/current_tracer ] || mount -t tracefs nodev $T
taskset -p 1 $$ > /dev/null
taskset 2 sh -c 'while :; do cat /proc/cmdline > /dev/null; done' &
echo cmdline_proc_show > $T/set_ftrace_filter
i=0
while :; do
  i=$((i+1))
  echo function > $T/current_tracer
  echo nop > $T/current_tracer
  echo "TOGGLE $i"
done
"""


@pytest.fixture(scope="module")
def vng_bin():
    p = subprocess.run([os.path.join(ROOT, "scripts", "setup-vng")], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        pytest.skip(f"virtme-ng cannot be installed here (scripts/setup-vng): {p.stderr.strip()[-500:]}")
    return p.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def vng_tree(vng_bin):
    path = os.environ["PATH"]
    os.environ["PATH"] = f"{vng_bin}:{path}"
    try:
        return own_tree.build(_tarball(), VNG_CONFIG, "vng")
    finally:
        os.environ["PATH"] = path


def toggles(*paths) -> int:
    """The last TOGGLE line: on vng's stdout (its virtio-serial script port), or where a
    host without udev puts it (no /dev/virtio-ports links in the guest, so vng's init
    runs the script on the console, which --verbose sends to vng's stderr)."""
    got = [int(n) for p in paths for n in re.findall(r"^TOGGLE (\d+)\r?$", p.read_text(errors="replace"), re.M)]
    return max(got, default=0)


def test_attach_checks_a_kernel_that_vng_booted_and_leaves_it_running(vng_bin, vng_tree, tmp_path):
    port = free_port()
    out, err = tmp_path / "vng.out", tmp_path / "vng.err"
    with open(out, "w") as o, open(err, "w") as e:
        vng = subprocess.Popen(
            [os.path.join(vng_bin, "vng"), "--run", os.path.join(vng_tree, "arch/x86/boot/bzImage"),
             "--disable-kvm", "--verbose", "--cpus", "2", "--memory", "1G",
             f"--qemu-opts=-accel tcg,thread=single -gdb tcp:127.0.0.1:{port}", "--exec", TOGGLE],
            stdin=subprocess.DEVNULL, stdout=o, stderr=e, cwd=str(tmp_path), start_new_session=True,
            env={**os.environ, "PATH": f"{vng_bin}:{os.environ['PATH']}"})
    try:
        wait_for(lambda: vng.poll() is not None or toggles(out, err) >= 3, 300, "the vng guest to start toggling")
        assert vng.poll() is None, err.read_text()[-3000:]
        assert listening_addrs(port) == {"127.0.0.1"}
        p, took = driver("--attach", f"127.0.0.1:{port}", "--vmlinux", os.path.join(vng_tree, "vmlinux"),
                         "--duration", "20", "--out", str(tmp_path / "check"))
        s = summary(p.stdout)
        assert p.returncode == 0 and s["status"] == "PASS", p.stdout[-3000:] + p.stderr[-3000:]
        assert s["verified"] > 0 and s["failed"] == 0 and s["missed"] == 0, p.stdout[-3000:]
        assert "cmdline_proc_show" in p.stdout and "ftrace_regs_caller" in p.stdout
        # Detached: vng's guest goes on toggling, and no gdb of ours is left.
        before = toggles(out, err)
        wait_for(lambda: toggles(out, err) > before + 2, 120, "the vng guest to go on toggling")
        assert vng.poll() is None and no_gdb_left(tmp_path / "check")
    finally:
        if vng.poll() is None:
            os.killpg(vng.pid, signal.SIGTERM)
            try:
                vng.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(vng.pid, signal.SIGKILL)
                vng.wait(timeout=30)
        deadline = time.monotonic() + 30
        while pids_matching(f"127.0.0.1:{port}", "qemu-system-x86_64") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not pids_matching(f"127.0.0.1:{port}", "qemu-system-x86_64")
