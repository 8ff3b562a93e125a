"""Integration tests boot the real VM under QEMU and drive real gdb.

They need the VM folder made by vm-images/build-vm, passed as GDB_FTRACE_VM
(`make test` does that). Without it they are skipped with the reason, unless
GDB_FTRACE_REQUIRE_VM=1 (set by `make test`), where a missing VM fails.
"""

import os
import shutil

import pytest


@pytest.fixture(scope="session")
def vm_dir():
    vm = os.environ.get("GDB_FTRACE_VM", "")
    missing = [t for t in ("qemu-system-x86_64", "gdb") if not shutil.which(t)]
    why = None
    if missing:
        why = f"not installed: {', '.join(missing)} (run make setup)"
    elif not vm or not os.path.isfile(os.path.join(vm, "vmlinux")):
        why = "no VM: set GDB_FTRACE_VM to a folder made by vm-images/build-vm (make test does)"
    if why:
        if os.environ.get("GDB_FTRACE_REQUIRE_VM") == "1":
            pytest.fail(why)
        pytest.skip(why)
    return vm
