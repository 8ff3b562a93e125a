"""A kernel tree built in place the way a developer builds theirs, for the
KBUILD= tests: unpacked from a release tarball, x86_64_defconfig plus a
configuration of the test's own, then `make bzImage modules` in the tree
itself (no O=). Kept in $GDB_FTRACE_CACHE/test-trees/ under a key of the
tarball and the configuration, so it is built once (about 15-20 minutes on
2 cores) and reused; `python3 tests/integration/own_tree.py TARBALL CONFIG`
builds it ahead of the tests, with progress.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import time


def cache_dir() -> str:
    return os.environ.get("GDB_FTRACE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gdb_ftrace")


def tree_dir(tarball: str, config: str) -> str:
    h = hashlib.sha256()
    with open(tarball, "rb") as f:
        h.update(f.read(1 << 20))  # the tarball's start names its version; its size the rest
    h.update(str(os.path.getsize(tarball)).encode())
    with open(config, "rb") as f:
        h.update(f.read())
    name = os.path.basename(tarball).split(".tar")[0]
    return os.path.join(cache_dir(), "test-trees", f"{name}-{os.path.basename(config).split('.')[0]}-{h.hexdigest()[:12]}")


def _run(cmd, cwd, log, timeout):
    with open(log, "a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        p = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        t0 = time.monotonic()
        while True:
            try:
                rc = p.wait(timeout=60)
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() - t0 > timeout:
                    p.kill()
                    p.wait()
                    raise RuntimeError(f"{' '.join(cmd)}: no end after {timeout} s (log: {log})")
                print(f"[own-tree]   {' '.join(cmd[:2])}: {int(time.monotonic() - t0)} s", file=sys.stderr, flush=True)
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with {rc} (log: {log})")


def build(tarball: str, config: str) -> str:
    """The built tree's path (built now unless a finished build is there)."""
    tree = tree_dir(tarball, config)
    if os.path.isfile(os.path.join(tree, ".gdb_ftrace_test_built")):
        return tree
    if os.path.isdir(tree):
        shutil.rmtree(tree)
    os.makedirs(tree)
    log = tree + ".log"
    if os.path.exists(log):
        os.unlink(log)
    print(f"[own-tree] building {os.path.basename(tarball)} in place in {tree} (once; log {log})", file=sys.stderr, flush=True)
    _run(["tar", "-xf", tarball, "-C", tree, "--strip-components=1"], tree, log, 900)
    _run(["make", "x86_64_defconfig"], tree, log, 300)
    with open(config) as src, open(os.path.join(tree, ".config"), "a") as dst:
        dst.write(src.read())
    _run(["make", "olddefconfig"], tree, log, 300)
    _run(["make", f"-j{os.cpu_count() or 2}", "bzImage", "modules"], tree, log, 3600)
    with open(os.path.join(tree, ".gdb_ftrace_test_built"), "w") as f:
        f.write("built\n")
    return tree


if __name__ == "__main__":
    print(build(sys.argv[1], sys.argv[2]))
