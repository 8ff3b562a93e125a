"""Shell helpers that read a pipe must survive `set -o pipefail`.

A reader that stops early (grep -m1, head, grep -q) makes the writer die of
SIGPIPE once the writer has more to say than the pipe holds (64 KiB); under
pipefail that is the pipeline's status, and `set -e` ends the script. It hid
behind a cached VM for a whole release: on a fresh machine build-vm died with
"dpkg-deb: error: tar subprocess was killed by signal (Broken pipe)".
These tests give the helpers inputs larger than a pipe.
"""

import glob
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIB = os.path.join(ROOT, "vm-images", "lib", "deb.sh")

pytestmark = pytest.mark.skipif(not shutil.which("dpkg-deb"), reason="dpkg-deb not installed")


def bash(script: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f"set -euo pipefail; . {LIB}; {script}"],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})


@pytest.fixture(scope="module")
def big_deb(tmp_path_factory):
    """A .deb whose kernel image is listed first, followed by ~300 KiB of listing."""
    root = tmp_path_factory.mktemp("pkg")
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN" / "control").write_text(
        "Package: fake-image\nVersion: 1\nArchitecture: amd64\nMaintainer: t <t@t>\nDescription: t\n")
    (root / "boot").mkdir()
    (root / "boot" / "vmlinuz-6.0.0-test").write_bytes(b"\0" * 16)
    (root / "boot" / "config-6.0.0-test").write_text("CONFIG_X=y\n")
    many = root / "usr" / "lib" / "modules" / "6.0.0-test" / ("d" * 60)
    many.mkdir(parents=True)
    for i in range(4000):
        (many / f"module-with-a-long-name-{i:05d}.ko").write_bytes(b"")
    deb = tmp_path_factory.mktemp("deb") / "fake.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Znone", "--build", str(root), str(deb)],
                   check=True, capture_output=True, timeout=120)
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], check=True, capture_output=True).stdout
    assert len(listing) > 4 * 65536, "the listing must be larger than a pipe for this test to mean anything"
    return str(deb)


def test_deb_member_finds_first_match_in_a_listing_larger_than_a_pipe(big_deb):
    r = bash(f'm=$(deb_member {big_deb} "^\\./boot/vmlinuz-"); echo "got=$m"')
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "got=./boot/vmlinuz-6.0.0-test"
    assert "Broken pipe" not in r.stderr


def test_deb_member_regex_is_extended_and_dot_is_literal(big_deb):
    r = bash(f'deb_member {big_deb} "^\\./(boot/config-|nothing)"')
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "./boot/config-6.0.0-test"
    # "\." must stay a literal dot: "x" in place of the dot matches nothing.
    r = bash(f'deb_member {big_deb} "^\\.x?boot/vmlinuz\\.x"')
    assert r.returncode != 0 and r.stdout == ""


def test_deb_member_no_match_fails(big_deb):
    r = bash(f'deb_member {big_deb} "^\\./nonexistent/"')
    assert r.returncode != 0
    assert r.stdout == ""


def test_field_of_reads_all_of_a_long_input():
    # 'yes' writes forever would hang; a bounded, larger-than-a-pipe input instead.
    r = bash("{ echo 'Package: a'; echo 'Version: 1.2'; seq 1 100000 | sed 's/^/Description: /'; "
             "echo 'Version: 9'; } | field_of Version")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "1.2\n"


def test_build_vm_has_no_early_exit_reader_on_a_pipe():
    """The pattern itself, anywhere in the shell that runs under pipefail (build-vm and every lib it sources)."""
    bad = re.compile(r"\|\s*(grep\b[^|]*(-m\s*1|-q\b|--max-count)|head\b|sed -n [^|]*;q)")
    hits = []
    libs = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "vm-images", "lib", "*.sh")))
    assert {"vm-images/lib/deb.sh", "vm-images/lib/apt.sh", "vm-images/lib/kbuild.sh"} <= set(libs), libs
    for rel in ("vm-images/build-vm", *libs, "scripts/setup-host"):
        for n, line in enumerate(open(os.path.join(ROOT, rel)), 1):
            if not line.lstrip().startswith("#") and bad.search(line):
                hits.append(f"{rel}:{n}: {line.strip()}")
    assert not hits, "early-exit reader on a pipe under pipefail:\n" + "\n".join(hits)
