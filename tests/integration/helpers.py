import os
import re
import signal
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECK = os.path.join(ROOT, "scripts", "ftrace-int3-check")
SUMMARY = re.compile(r"^ftrace-int3 check: (PASS|FAIL) verified=(\d+) failed=(\d+) missed=(\d+) "
                     r"other=(\d+) guest_unpatched=(-?\d+|n/a)$")


def summary(stdout: str) -> dict:
    last = stdout.rstrip("\n").splitlines()[-1]
    m = SUMMARY.match(last)
    assert m, f"last line is not the summary line: {last!r}"
    keys = ("status", "verified", "failed", "missed", "other", "guest_unpatched")
    return {k: (v if k == "status" or v == "n/a" else int(v)) for k, v in zip(keys, m.groups())}


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def start_check(vm, out, *args):
    return subprocess.Popen(["/usr/bin/python3", CHECK, "--vm", vm, "--out", str(out), *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def pid_from_log(stderr_text_or_path, name):
    m = re.search(rf"{name} pid (\d+)", stderr_text_or_path)
    return int(m.group(1)) if m else None


def kill(pid, sig=signal.SIGKILL):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def pids_matching(substr: str, exe: str) -> list[int]:
    """Live processes whose argv[0] ends with exe and whose command line contains substr."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].decode(errors="replace").endswith(exe) and \
                substr.encode() in b" ".join(argv) and alive(int(d)):
            out.append(int(d))
    return out


def listening_addrs(port: int) -> set[str]:
    """Local addresses listening on TCP `port` (IPv4 and IPv6), from /proc/net."""
    addrs = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            local, state = f[1], f[3]
            hexaddr, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:
                if width == 8:
                    addrs.add(".".join(str(b) for b in reversed(bytes.fromhex(hexaddr))))
                else:
                    addrs.add(hexaddr)
    return addrs


def qmp(sock_path: str, command: str) -> dict:
    """One QMP command on QEMU's -qmp unix socket; its "return" value."""
    import json
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(sock_path)
        f = s.makefile("rw")
        json.loads(f.readline())  # greeting
        for cmd in ("qmp_capabilities", command):
            f.write(json.dumps({"execute": cmd}) + "\n")
            f.flush()
            while True:
                reply = json.loads(f.readline())
                if "return" in reply or "error" in reply:
                    break
        return reply.get("return", reply)


def kunit_parse(path) -> dict:
    """Parse a KTAP file with the kernel's own tools/testing/kunit/kunit_parser.py (from
    Debian's linux-source-6.*, scripts/get-kunit-parser): its counts, status, errors and
    the names and statuses of the tests (one level of subtests)."""
    import json

    d = subprocess.run([os.path.join(ROOT, "scripts", "get-kunit-parser")], capture_output=True, text=True,
                       timeout=900, stdin=subprocess.DEVNULL)
    assert d.returncode == 0, d.stderr
    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {d.stdout.strip()!r})\n"
        "import kunit_parser\n"
        f"t = kunit_parser.parse_run_tests(open({str(path)!r}).read().splitlines())\n"
        "def one(x): return {'name': x.name, 'status': x.status.name, 'counts': vars(x.counts),\n"
        "                    'errors': x.counts.errors, 'subtests': [one(s) for s in x.subtests]}\n"
        "print('RESULT ' + json.dumps(one(t)))\n")
    p = subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, text=True, timeout=120)
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    assert p.returncode == 0 and line, p.stdout[-2000:] + p.stderr[-2000:]
    return json.loads(line[-1][len("RESULT "):])


def junit_read(path) -> list[dict]:
    """Load a JUnit file with junitparser (a real consumer): per suite, the tests and the
    failed cases with their failure messages."""
    from junitparser import Failure, JUnitXml, Skipped

    out = []
    for suite in JUnitXml.fromfile(str(path)):
        cases = list(suite)
        failed = {c.name: r.message for c in cases for r in c.result if isinstance(r, Failure)}
        skipped = [c.name for c in cases if any(isinstance(r, Skipped) for r in c.result)]
        out.append({"name": suite.name, "tests": suite.tests, "failures": suite.failures, "cases": len(cases),
                    "failed": failed, "skipped": skipped})
    return out


def table_rows(stdout: str) -> list[list[str]]:
    """The report table's rows as columns, without the row number: site, what, installing,
    emulated, target, verdict, count, cpus."""
    return [re.split(r"\s{2,}", m[1]) for m in re.finditer(r"^\s*\d+  (\S.*)$", stdout, re.M)
            if re.search(r"  [A-Z][A-Z-]+ +\d+  ", m[1])]
