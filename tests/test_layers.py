"""The library's layers: the engine owns every forward pass; analyses, outputs, the CLI and the app reach it only
through its public names; the engine never reaches up; one name per function."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "iclviz"


def _sources(*folders):
    for folder in folders:
        yield from sorted((ROOT / folder).rglob("*.py"))


def _imports(path: Path):
    """(absolute module, imported names) of every from-import of an iclviz module in ``path``."""
    tree = ast.parse(path.read_text())
    rel = path.relative_to(ROOT)
    pkg = list(rel.parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module == "iclviz" or module.startswith("iclviz."):
                yield module, [a.name for a in node.names], node.lineno


def test_nothing_outside_the_engine_imports_its_private_names():
    bad = []
    for path in _sources("iclviz", "pages", "benchmarks"):
        if (LIB / "engine") in path.parents:
            continue
        for module, names, line in _imports(path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:  # private names of any iclviz module, the engine's above all
                bad.append(f"{path.relative_to(ROOT)}:{line}: from {module} import {', '.join(private)}")
    assert not bad, "\n".join(bad)


def test_the_engine_never_imports_analyses_outputs_or_the_cli():
    bad = []
    for path in _sources("iclviz/engine"):
        for module, _, line in _imports(path):
            if module.startswith(("iclviz.analyses", "iclviz.outputs", "iclviz.cli")):
                bad.append(f"{path.relative_to(ROOT)}:{line}: {module}")
    assert not bad, "\n".join(bad)


def test_analyses_never_import_outputs_or_the_cli():
    bad = [f"{p.relative_to(ROOT)}:{line}: {m}" for p in _sources("iclviz/analyses") for m, _, line in _imports(p)
           if m.startswith(("iclviz.outputs", "iclviz.cli"))]
    assert not bad, "\n".join(bad)


def test_the_library_never_imports_streamlit():
    hits = [str(p.relative_to(ROOT)) for p in _sources("iclviz") if any(
        isinstance(n, (ast.Import, ast.ImportFrom)) and any(
            (a.name if isinstance(n, ast.Import) else (n.module or "")).split(".")[0] == "streamlit" for a in n.names)
        for n in ast.walk(ast.parse(p.read_text())))]
    assert not hits, hits


def test_one_name_per_function():
    where = defaultdict(list)
    for path in _sources("iclviz"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                where[node.name].append(str(path.relative_to(ROOT)))
    assert not {k: v for k, v in where.items() if len(v) > 1}


def test_the_checker_sees_a_private_import(tmp_path, monkeypatch):
    """The scan above finds what it is meant to find (a test that cannot fail is a defect)."""
    fake = ROOT / "iclviz" / "analyses" / "_layers_probe.py"
    fake.write_text("from ..engine.capture import _private_thing\n")
    try:
        found = [(m, n) for m, n, _ in _imports(fake)]
    finally:
        fake.unlink()
    assert found == [("iclviz.engine.capture", ["_private_thing"])]
