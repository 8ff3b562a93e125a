"""The kernel developer's own kernel (issue 20), live:

- KBUILD=: a 5.4 tree built in place with a configuration of the test's own
  (CONFIG_PREEMPT=y; tests/data/kbuild-5.4-preempt.config) is checked as it
  is and PASSes, and nothing in it changed (sizes, mtimes, hashes);
- KCONFIG=: a fragment switching the livepatch off builds a second,
  differently keyed VM; the livepatch scenarios are refused with the reason,
  SCENARIO=ftrace-toggle runs and PASSes;
- KMAKE=: reaches the kernel build's make and the module builds;
- the livepatch module compiles against both livepatch APIs (v5.1+, and
  the pre-5.1 register/unregister API through tests/data/klp-pre-5.1/);
- a pre-series handler (5.4.286 with ftrace_int3_handler as before
  9e298e860408) FAILs with WRONG-TARGET and guest_unpatched > 0, no injection.

The trees come from ../shared/kernels/linux-5.4.*.tar.* (or KSRC); without
one these tests are skipped and say so. The in-place tree is built once
(about 10 minutes on 2 cores) and kept in $GDB_FTRACE_CACHE/test-trees/.
"""

import glob
import hashlib
import os
import subprocess

import pytest

from gdb_ftrace.core.shared import seed_era_tarball

from . import own_tree
from .helpers import ROOT, start_check, summary

BUILD_VM = os.path.join(ROOT, "vm-images", "build-vm")
DATA = os.path.join(ROOT, "tests", "data")
PREEMPT_CONFIG = os.path.join(DATA, "kbuild-5.4-preempt.config")
NO_LIVEPATCH = os.path.join(DATA, "kconfig-no-livepatch.config")
OLD_KLP = os.path.join(DATA, "klp-pre-5.1", "linux", "livepatch.h")


def _tarball() -> str:
    if os.environ.get("KSRC", "").endswith((".tar.xz", ".tar.gz")):
        return os.environ["KSRC"]
    found = seed_era_tarball(ROOT)
    if found is None:
        pytest.skip("no v5.4 release tarball: set KSRC=<linux-5.4.x.tar.xz> (or put one in ../shared/kernels/)")
    return found


def build_vm(*args, timeout=2700, cache=None):
    env = {**os.environ, **({"GDB_FTRACE_CACHE": str(cache)} if cache else {})}
    return subprocess.run([BUILD_VM, "--print-dir", *args], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout, env=env)


def snapshot(tree: str) -> dict:
    """Every file's size and mtime, and the hashes of what KBUILD reads."""
    out = {}
    for d, _, files in os.walk(tree):
        for f in files:
            p = os.path.join(d, f)
            st = os.lstat(p)
            out[os.path.relpath(p, tree)] = (st.st_size, st.st_mtime_ns)
    for f in ("vmlinux", "arch/x86/boot/bzImage", ".config", "Module.symvers"):
        with open(os.path.join(tree, f), "rb") as fh:
            out["sha256 " + f] = hashlib.file_digest(fh, "sha256").hexdigest()
    return out


@pytest.fixture(scope="module")
def preempt_tree():
    return own_tree.build(_tarball(), PREEMPT_CONFIG)


def _check(vm, out, *args, timeout=900):
    p = start_check(vm, out, *args)
    stdout, stderr = p.communicate(timeout=timeout)
    return p.returncode, stdout, stderr


def test_kbuild_checks_a_tree_built_in_place_and_leaves_it_as_it_was(preempt_tree, tmp_path):
    before = snapshot(preempt_tree)
    p = build_vm("--kbuild", preempt_tree)
    assert p.returncode == 0, p.stderr[-3000:]
    vm = p.stdout.strip().splitlines()[-1]
    assert os.path.basename(vm).startswith("kbuild-") and "your kernel: 5.4.286 built in" in p.stderr
    with open(os.path.join(vm, "config")) as f:
        assert "CONFIG_PREEMPT=y\n" in f.read()
    rc, stdout, stderr = _check(vm, tmp_path)
    s = summary(stdout)
    assert rc == 0 and s["status"] == "PASS" and s["verified"] > 0 and s["guest_unpatched"] == 0, stdout[-4000:]
    assert "ftrace_regs_caller" in stdout and "VERIFIED" in stdout
    assert snapshot(preempt_tree) == before  # nothing in the user's tree was written


def test_ksrc_on_a_built_tree_points_to_kbuild(preempt_tree, tmp_path):
    p = build_vm("--ksrc", preempt_tree, timeout=600, cache=tmp_path)
    assert p.returncode == 1
    assert f"check it as it is with KBUILD={preempt_tree}" in p.stderr, p.stderr[-2000:]


def test_kbuild_names_what_a_folder_lacks(tmp_path):
    p = build_vm("--kbuild", str(tmp_path), timeout=60, cache=tmp_path / "cache")
    assert p.returncode == 1 and f"KBUILD={tmp_path} has no vmlinux" in p.stderr, p.stderr


def test_kconfig_fragment_without_livepatch_refuses_its_scenarios_and_runs_the_rest(tmp_path):
    tarball = _tarball()
    p = build_vm("--ksrc", tarball, "--kconfig", NO_LIVEPATCH)
    assert p.returncode == 0, p.stderr[-3000:]
    vm = p.stdout.strip().splitlines()[-1]
    plain = build_vm("--ksrc", tarball)
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert plain.stdout.strip().splitlines()[-1] != vm  # the fragment is part of the key
    assert "refused: livepatch-trace: CONFIG_LIVEPATCH is not set" in p.stderr
    assert os.path.isfile(os.path.join(vm, "gdb_ftrace_lp.unavailable"))
    assert not os.path.exists(os.path.join(vm, "gdb_ftrace_lp.ko"))
    rc, stdout, stderr = _check(vm, tmp_path / "lp", "--scenario", "livepatch-trace", timeout=120)
    assert rc != 0 and "SCENARIO=livepatch-trace is not available on this kernel: CONFIG_LIVEPATCH is not set" \
        in stderr and "SCENARIO=ftrace-toggle" in stderr, stderr[-2000:]
    rc, stdout, stderr = _check(vm, tmp_path / "ft", "--scenario", "ftrace-toggle")
    s = summary(stdout)
    assert rc == 0 and s["status"] == "PASS" and s["verified"] > 0 and s["guest_unpatched"] == 0, stdout[-4000:]
    assert "cmdline_proc_show" in stdout and "ftrace_regs_caller" in stdout


def test_kmake_reaches_the_kernel_build(tmp_path):
    """A stand-in tree whose Makefile writes down the variables make got; build-vm's
    configure step is the first make of a KSRC build and gets the same KMAKE words
    as the build and the module builds."""
    tree = tmp_path / "tree"
    (tree / "arch" / "x86").mkdir(parents=True)
    (tree / "Makefile").write_text(
        "x86_64_defconfig:\n"
        "\t@echo 'PROBE=$(PROBE) HOSTCFLAGS=$(HOSTCFLAGS) origin=$(origin PROBE)' > $(O)/probe\n"
        "\t@exit 1\n")
    cache = tmp_path / "cache"
    p = subprocess.run([BUILD_VM, "--ksrc", str(tree), "--kmake", "PROBE=reached HOSTCFLAGS='-fcommon -O1'"],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "GDB_FTRACE_CACHE": str(cache)})
    assert p.returncode == 1 and "make x86_64_defconfig failed" in p.stderr, p.stderr
    [probe] = glob.glob(str(cache / "src-tree-*" / "build" / "probe"))
    with open(probe) as f:
        assert f.read() == "PROBE=reached HOSTCFLAGS=-fcommon -O1 origin=command line\n"
    bad = subprocess.run([BUILD_VM, "--ksrc", str(tree), "--kmake", "notavariable"], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=60, env={**os.environ, "GDB_FTRACE_CACHE": str(cache)})
    assert bad.returncode == 1 and "KMAKE must be make variables VAR=value, not 'notavariable'" in bad.stderr


def test_kmake_reaches_the_module_builds(preempt_tree):
    """gcc writes the switches it got into the object (-frecord-gcc-switches)."""
    p = build_vm("--kbuild", preempt_tree, "--kmake", "KCFLAGS='-frecord-gcc-switches -falign-functions=64'")
    assert p.returncode == 0, p.stderr[-3000:]
    vm = p.stdout.strip().splitlines()[-1]
    switches = subprocess.run(["readelf", "-p", ".GCC.command.line", os.path.join(vm, "build-lp", "gdb_ftrace_lp.o")],
                              capture_output=True, text=True, timeout=60).stdout
    assert "-falign-functions=64" in switches, switches[-2000:]


def _module(kdir: str, out, *make_args) -> tuple[subprocess.CompletedProcess, str]:
    src = os.path.join(ROOT, "vm-images", "livepatch")
    os.makedirs(out)
    for f in os.listdir(src):
        with open(os.path.join(src, f)) as a, open(os.path.join(out, f), "w") as b:
            b.write(a.read())
    p = subprocess.run(["make", "-C", kdir, f"M={out}", *make_args, "modules"], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=300)
    nm = subprocess.run(["nm", "-u", os.path.join(out, "gdb_ftrace_lp.o")], capture_output=True, text=True)
    return p, nm.stdout


def test_the_livepatch_module_compiles_against_both_livepatch_apis(preempt_tree, tmp_path):
    new, undef = _module(preempt_tree, tmp_path / "v5.1")
    assert new.returncode == 0, new.stderr[-2000:]
    assert "klp_enable_patch" in undef and "klp_register_patch" not in undef
    # The pre-5.1 API: the module registers, enables, and unregisters on exit. 5.4 exports
    # neither klp_register_patch nor klp_unregister_patch, so modpost names exactly those.
    old, undef = _module(preempt_tree, tmp_path / "v5.0", f"KCFLAGS=-include {OLD_KLP}",
                         f"GDB_FTRACE_KLP_HEADER={OLD_KLP}")
    assert {"klp_register_patch", "klp_enable_patch", "klp_unregister_patch"} <= set(undef.split()[1::2]), undef
    missing = sorted(l.split('"')[1] for l in old.stderr.splitlines() if "undefined!" in l)
    assert missing == ["klp_register_patch", "klp_unregister_patch"], old.stderr[-2000:]


def test_a_pre_series_kernel_fails_with_wrong_target_and_the_guest_sees_the_old_body(tmp_path):
    """5.4.286 with ftrace_int3_handler as it was before 9e298e860408 (own_tree.PRE_SERIES_EDITS):
    nothing is injected; the kernel's own handler skips the call, the guest reads the
    unpatched /proc/cmdline, and the checker says the era is the cause."""
    tree = own_tree.build(_tarball(), os.path.join(ROOT, "vm-images", "kconfig", "gdb-ftrace.config"), "pre-series")
    p = build_vm("--kbuild", tree)
    assert p.returncode == 0, p.stderr[-3000:]
    rc, stdout, stderr = _check(p.stdout.strip().splitlines()[-1], tmp_path)
    s = summary(stdout)
    assert rc == 1 and s["status"] == "FAIL" and s["failed"] > 0 and s["guest_unpatched"] > 0, stdout[-4000:]
    assert "note: kernel era v4.x-v5.1 (ftrace_int3_handler skips the call" in stdout
    wrong = [l for l in stdout.splitlines() if l.startswith("WRONG-TARGET #")]
    assert wrong and all(" at cmdline_proc_show " in l and "it skips the call site" in l for l in wrong), wrong[:3]
    rows = [l for l in stdout.splitlines() if "jump label" in l]
    assert rows and all("VERIFIED" in l for l in rows)  # the rest of the series still emulates
    assert "inject" not in stdout.lower()
