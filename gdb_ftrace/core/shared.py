"""The kernels a machine keeps beside the checkout: ../shared/kernels holds release
tarballs, among them the seed's era (v5.2-v5.5, which no registry serves: a v5.4
release tarball, built from source by vm-images/build-vm --ksrc). One home for
where make bench, the matrix, record-streams and the v5.4 tests look."""

from __future__ import annotations

import glob
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEED_ERA = "linux-5.4.*.tar.*"


def _version(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", os.path.basename(path)))


def seed_era_tarball(root: str = REPO) -> str | None:
    """The newest ../shared/kernels/linux-5.4.*.tar.* beside the checkout at root (by
    version, 5.4.286 after 5.4.99), as a real path; None when there is none."""
    found = glob.glob(os.path.join(root, "..", "shared", "kernels", SEED_ERA))
    return os.path.realpath(max(found, key=_version)) if found else None
