"""The README agrees with the code that prints what it shows (issue 18): its size, its
transcript's numbers with each other and with the report's formats, the test totals it
states, and no build machine's paths in it or in docs/."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

from conftest import ROOT

from gdb_ftrace.core import report
from gdb_ftrace.core.verdict import VERDICT_CLASS

README = open(os.path.join(ROOT, "README.md")).read()


def _blocks(text: str) -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```", text, re.S | re.M)


def test_readme_is_at_most_20_kb_and_opens_with_the_two_commands():
    assert len(README.encode()) <= 20 * 1024
    first = README[:README.index("### ")]
    assert "make check" in first and "make test" in first


def test_the_transcript_adds_up():
    block = next(b for b in _blocks(README) if "$ GDB_FTRACE_CACHE=" in b)
    lines = block.splitlines()
    header = next(line for line in lines if line.startswith("kernel: "))
    last = lines[-1]
    m = re.match(r"ftrace-int3 check: (PASS|FAIL) verified=(\d+) failed=(\d+) missed=(\d+) other=(\d+) "
                 r"guest_unpatched=(\d+)$", last)
    assert m, last
    counts = {"verified": 0, "failed": 0, "missed": 0, "other": 0}
    for line in lines:
        cols = line.split()
        if len(cols) > 3 and cols[0].isdigit() and cols[-3] in VERDICT_CLASS:
            counts[VERDICT_CLASS[cols[-3]]] += int(cols[-2])
    assert [counts[k] for k in ("verified", "failed", "missed", "other")] == [int(x) for x in m.groups()[1:5]]
    assert f"events: {sum(counts.values())} " in header and "engine: " in header
    cov = next(line for line in lines if line.startswith("checked: "))
    # The coverage line as report.coverage words it, with the transcript's numbers.
    c = re.match(r"checked: CPU frame from the (?:words above pt_regs|int3 entry) for (\d+)/(\d+) kernel int3s; "
                 r"landing after iret for (\d+)/(\d+) emulations", cov)
    assert c and int(c[2]) <= sum(counts.values()), cov
    assert report.coverage([]).startswith("checked: CPU frame from the ")


def test_the_test_totals_are_what_pytest_collects():
    m = re.search(r"`make test` runs (\d+) tests \((\d+) unit, (\d+) integration\)", README)
    assert m, "the README states the test totals"
    got = []
    for part in ("unit", "integration"):
        out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", f"tests/{part}"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120).stdout
        got.append(int(re.search(r"^(\d+) tests? collected", out, re.M)[1]))
    assert [int(m[2]), int(m[3])] == got and int(m[1]) == sum(got)


def test_no_build_machine_paths_in_readme_and_docs():
    for path in [os.path.join(ROOT, "README.md")] + glob.glob(os.path.join(ROOT, "docs", "*.md")):
        for block in _blocks(open(path).read()):
            bad = re.findall(r"(?:^|[\s'\"=(])(/work/|/root/|/tmp/record|/home/\w+/)", block, re.M)
            assert not bad, (os.path.basename(path), bad, block[:300])
