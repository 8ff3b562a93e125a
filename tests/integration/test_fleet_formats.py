"""`make matrix KTAP=… JUNIT=…`: one KTAP subtest (one JUnit testsuite) per kernel,
read by the kernel's own KTAP parser and by junitparser. One kernel here (6.12,
the VM the tests already have); the whole matrix is `make matrix`."""

import os
import subprocess

from .helpers import ROOT, junit_read, kunit_parse


def test_matrix_writes_one_ktap_subtest_per_kernel(vm_dir, tmp_path):
    p = subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "scripts", "matrix"), "--only", "6.12",
                        "--ktap", str(tmp_path / "m.ktap"), "--junit", str(tmp_path / "m.xml")],
                       capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL, cwd=ROOT)
    assert p.returncode == 0 and p.stdout.splitlines()[-1].startswith("ftrace-int3 matrix: PASS kernels=1"), \
        p.stdout[-2000:] + p.stderr[-2000:]
    k = kunit_parse(tmp_path / "m.ktap")
    assert k["status"] == "SUCCESS" and k["errors"] == 0, k
    assert len(k["subtests"]) == 1
    kernel = k["subtests"][0]
    assert kernel["name"].startswith("6.12.") and kernel["status"] == "SUCCESS"
    names = [t["name"] for t in kernel["subtests"]]
    assert "guest unpatched reads = 0" in names and any(" CALL -> ftrace_caller" in n for n in names), names
    j = junit_read(tmp_path / "m.xml")
    assert len(j) == 1 and j[0]["failures"] == 0 and j[0]["cases"] == len(names)
