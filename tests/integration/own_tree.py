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
import re
import shutil
import subprocess
import sys
import time


def cache_dir() -> str:
    return os.environ.get("GDB_FTRACE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gdb_ftrace")


# The pre-series handler, made from a 5.4 tree: ftrace_int3_handler as it was before
# 9e298e860408 (it skips the call site) and no ftrace_update_func_call, the variable
# the series added and the checker tells the era by. The rest of the series (the
# entry gap, int3_emulate_*) stays: the skip is what the check is about.
PRE_SERIES_EDITS = ("arch/x86/kernel/ftrace.c", (
    (re.compile(r"^static unsigned long ftrace_update_func_call;\n", re.M), ""),
    (re.compile(r"^\s*ftrace_update_func_call = [^;]*;\n", re.M), ""),
    (re.compile(r"(int ftrace_int3_handler\(struct pt_regs \*regs\)\n\{.*?ip = regs->ip - INT3_INSN_SIZE;\n)"
                r".*?\n\treturn 0;\n\}\nNOKPROBE_SYMBOL\(ftrace_int3_handler\);", re.S),
     r"\1\n\tif (!ftrace_location(ip) && !is_ftrace_caller(ip))\n\t\treturn 0;\n\n"
     r"\tregs->ip += MCOUNT_INSN_SIZE - 1;\n\treturn 1;\n}\nNOKPROBE_SYMBOL(ftrace_int3_handler);"),
))


def pre_series(tree: str) -> None:
    path, edits = PRE_SERIES_EDITS
    with open(os.path.join(tree, path)) as f:
        text = f.read()
    for pat, rep in edits:
        text, n = pat.subn(rep, text)
        if n == 0:
            raise RuntimeError(f"{path}: no match for {pat.pattern[:60]!r}: not a v5.2-v5.5 ftrace.c")
    with open(os.path.join(tree, path), "w") as f:
        f.write(text)


def tree_dir(tarball: str, config: str, edit: str = "") -> str:
    h = hashlib.sha256()
    h.update(edit.encode())
    with open(tarball, "rb") as f:
        h.update(f.read(1 << 20))  # the tarball's start names its version; its size the rest
    h.update(str(os.path.getsize(tarball)).encode())
    with open(config, "rb") as f:
        h.update(f.read())
    name = os.path.basename(tarball).split(".tar")[0]
    return os.path.join(cache_dir(), "test-trees", f"{name}-{os.path.basename(config).split('.')[0]}"
                        f"{'-' + edit if edit else ''}-{h.hexdigest()[:12]}")


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


def build(tarball: str, config: str, edit: str = "") -> str:
    """The built tree's path (built now unless a finished build is there). edit:
    "pre-series" applies PRE_SERIES_EDITS before configuring; "vng" configures with
    `vng --kconfig` (the vng found on PATH) instead of x86_64_defconfig."""
    tree = tree_dir(tarball, config, edit)
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
    if edit == "pre-series":
        pre_series(tree)
    if edit == "vng":
        _run(["vng", "--kconfig"], tree, log, 300)
    else:
        _run(["make", "x86_64_defconfig"], tree, log, 300)
    with open(config) as src, open(os.path.join(tree, ".config"), "a") as dst:
        dst.write(src.read())
    _run(["make", "olddefconfig"], tree, log, 300)
    _run(["make", f"-j{os.cpu_count() or 2}", "bzImage", "modules"], tree, log, 3600)
    with open(os.path.join(tree, ".gdb_ftrace_test_built"), "w") as f:
        f.write("built\n")
    return tree


if __name__ == "__main__":
    print(build(sys.argv[1], sys.argv[2], *sys.argv[3:4]))
