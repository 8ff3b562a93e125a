"""Rules of the source tree that hold at every commit (DEVELOPERS.md, issue 18): the gdb
layer's reader stays small and has no import cycles; core never imports gdb; the landing's
"top known" is a field, never a comparison with a display string."""

from __future__ import annotations

import ast
import os
import re

from conftest import ROOT

PKG = os.path.join(ROOT, "gdb_ftrace")


def _imports(path: str, package: str) -> set[str]:
    """Modules of gdb_ftrace that the module at path imports (relative imports resolved)."""
    tree = ast.parse(open(path).read())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            mod = ".".join(base + ([node.module] if node.module else []))
            names = [mod + "." + a.name for a in node.names] if not node.module else [mod]
            out.update(names)
    return {m for m in out if m.startswith("gdb_ftrace.")}


def _graph(sub: str) -> dict[str, set[str]]:
    folder = os.path.join(PKG, sub)
    mods = {f[:-3] for f in os.listdir(folder) if f.endswith(".py") and f != "__init__.py"}
    g = {}
    for m in mods:
        deps = _imports(os.path.join(folder, m + ".py"), f"gdb_ftrace.{sub}")
        g[m] = {d.split(".")[2] for d in deps if d.startswith(f"gdb_ftrace.{sub}.") and d.split(".")[2] in mods}
    return g


def _cycles(g: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(n, path):
        state[n] = 1
        for d in sorted(g[n]):
            if state.get(d) == 1:
                found.append(path[path.index(d):] + [d])
            elif d not in state:
                visit(d, path + [d])
        state[n] = 2

    for n in sorted(g):
        if n not in state:
            visit(n, [n])
    return found


def test_gdb_layer_has_no_import_cycle():
    g = _graph("gdb_layer")
    assert "symtab" in g and not g["symtab"] - {"cache"}, g["symtab"]
    assert _cycles(g) == []


def test_checker_is_small():
    assert len(open(os.path.join(PKG, "gdb_layer", "checker.py")).read().splitlines()) <= 150


def test_core_never_imports_gdb():
    for f in os.listdir(os.path.join(PKG, "core")):
        if f.endswith(".py"):
            text = open(os.path.join(PKG, "core", f)).read()
            assert not re.search(r"^\s*(import gdb\b|from gdb\b)", text, re.M), f


def test_no_decision_by_display_string():
    """Landings and lost returns are data: nothing compares a display text."""
    for root, _dirs, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                text = open(os.path.join(root, f)).read()
                assert "LATE_FRAME" not in text, f
                assert not re.search(r"""["']from["']\]""", text), f  # landing["from"]
