"""The seed's own era, live: a v5.4 kernel built from source (ftrace_int3_handler
emulating `call ftrace_regs_caller`, poke_int3_handler detouring jump labels).

The kernel comes from KSRC (a v5.2-v5.5 source tree or release tarball) or
from ../shared/kernels/linux-5.4.*.tar.* beside the checkout; without either
the tests are skipped and say so. The first build takes about 10 minutes on
2 cores, then the VM is cached like the Debian ones.
"""

import os
import subprocess

import pytest

from gdb_ftrace.core import report
from gdb_ftrace.core.shared import seed_era_tarball

from .helpers import ROOT, start_check, summary

BUILD_VM = os.path.join(ROOT, "vm-images", "build-vm")


def _ksrc() -> str | None:
    if os.environ.get("KSRC"):
        return os.environ["KSRC"]
    return seed_era_tarball(ROOT)


@pytest.fixture(scope="module")
def v54_vm():
    ksrc = _ksrc()
    if ksrc is None:
        pytest.skip("no v5.4 kernel source: set KSRC=<v5.2-v5.5 tree or tarball> "
                    "(or put linux-5.4.*.tar.* in ../shared/kernels/)")
    p = subprocess.run([BUILD_VM, "--print-dir", "--ksrc", ksrc], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=2700)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout.strip().splitlines()[-1]


def test_second_build_builds_nothing(v54_vm):
    p = subprocess.run([BUILD_VM, "--print-dir", "--ksrc", _ksrc()], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and p.stdout.strip() == v54_vm, p.stderr
    assert not [l for l in p.stderr.splitlines() if any(w in l for w in ("unpacking", "configuring", "building"))], \
        p.stderr


def _check(vm, out, *args):
    p = start_check(vm, out, *args)
    stdout, stderr = p.communicate(timeout=900)
    events, meta = report.load_events(os.path.join(out, "events.jsonl"))
    return p.returncode, stdout, summary(stdout), events, meta


@pytest.mark.parametrize("engine", ["watch", "breakpoints"])
def test_v54_check_verifies_the_emulated_calls_and_the_detours(v54_vm, tmp_path, engine):
    """Both engines: watch reads modifying_ftrace_code in do_int3 and poke_int3_handler's
    bp_patching; breakpoints stop at the int3 entry and both handlers."""
    rc, stdout, s, events, meta = _check(v54_vm, tmp_path, "--engine", engine)
    assert rc == 0 and s["status"] == "PASS", stdout[-4000:]
    assert meta["engine"] == engine and "fall" not in stdout, stdout[-4000:]
    assert meta["kernel"]["era"] == "v5.2-v5.5"
    assert [h for h, _ in meta["kernel"]["handlers"]] == ["ftrace_int3_handler", "poke_int3_handler"]
    assert s["guest_unpatched"] == 0 and s["failed"] == 0 and s["missed"] == 0
    # The seed's property: every int3 at the livepatched function's fentry site is a
    # CALL into ftrace_regs_caller, site+5 pushed, sp - 8, landing followed.
    fentry = [ev for ev in events if ev.site_sym == "cmdline_proc_show"]
    assert len(fentry) >= 10, stdout[-4000:]
    for ev in fentry:
        assert ev.handler == "ftrace_int3_handler" and ev.verdict == "VERIFIED", ev.reasons
        assert ev.expected.kind == "CALL" and ev.target_sym == "ftrace_regs_caller"
        assert ev.pushed == ev.site + 5 and ev.after["sp"] == ev.before["sp"] - 8
        assert ev.landing is not None and ev.landing["ip"] == ev.expected.ip
    # Jump labels go through poke_int3_handler's batch: detours, verified as such.
    detours = [ev for ev in events if ev.expected is not None and ev.expected.kind == "DETOUR"]
    assert detours and all(ev.handler == "poke_int3_handler" and ev.verdict == "VERIFIED" for ev in detours)
    hw = "gap" if engine == "watch" else "entry"  # where the hardware frame was read
    assert all(ev.hw_source == hw for ev in events if not ev.before["cs"] & 3)


def test_v54_skip_call_reproduces_the_pre_series_bug(v54_vm, tmp_path):
    """INJECT=skip-call makes ftrace_int3_handler behave as before 9e298e860408:
    the call is skipped, the livepatched function's old body runs."""
    rc, stdout, s, events, _ = _check(v54_vm, tmp_path, "--inject", "skip-call")
    assert rc == 1 and s["status"] == "FAIL", stdout[-4000:]
    assert s["guest_unpatched"] > 0
    bad = [ev for ev in events if ev.verdict == "WRONG-TARGET"]
    assert bad and all(ev.site_sym == "cmdline_proc_show" and ev.after["ip"] == ev.site + 5 for ev in bad)
    assert {ev.verdict for ev in events} <= {"VERIFIED", "WRONG-TARGET", "OTHER"}
