"""The package's shape stays as the README's Architecture section says: no import circles, small modules
and classes, no package code that finds repository files, tests on the public API."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import ROOT

PKG = ROOT / "recognizer"
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 320


def _modules() -> dict[str, Path]:
    mods = {}
    for p in PKG.rglob("*.py"):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = p
    return mods


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, counting each imported module's parent packages (importing
    ``a.b.c`` runs ``a.b``'s ``__init__`` first, which is where circles between subpackages hide)."""
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for n in names:
                parts = n.split(".")
                for t in {".".join(parts[:i]) for i in range(1, len(parts) + 1)}:
                    if t in mods and t != m and not m.startswith(t + "."):
                        edges[m].add(t)
    return edges


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    edges = _import_graph()
    assert sum(map(len, edges.values())) > 100  # the graph really was read
    assert _circles(edges) == []


def test_circle_detection_finds_a_planted_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_modules_and_classes_stay_small():
    long_modules, long_classes = [], []
    for p in PKG.rglob("*.py"):
        text = p.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(p.name)
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                long_classes.append(f"{p.name}:{node.name}")
    assert long_modules == [] and long_classes == []


def test_package_code_finds_no_repository_files():
    """Benchmarks and tools know where the repository's data is; the package is given paths."""
    offenders = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in PKG.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"__file__", line)
    ]
    assert offenders == []


def test_tests_and_tools_use_no_private_names_of_the_package():
    """``from recognizer... import _x`` or ``obj._x`` of a package object would couple tests to internals."""
    pat = re.compile(r"from recognizer[\w.]* import [^\n]*\b_[a-z]|\b(?:g|gallery|store|reader)\._[a-z]")
    offenders = [
        f"{p.relative_to(ROOT)}:{i}"
        for d in ("tests", "tools", "benchmarks")
        for p in (ROOT / d).rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pat.search(line) and p.name != "test_architecture.py"
    ]
    assert offenders == []
