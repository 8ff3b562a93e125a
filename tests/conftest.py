import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DATA = os.path.join(ROOT, "tests", "data")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "documented_layout: built from a kernel era's documented layout/semantics, "
        "not recorded from a kernel of that era")
