"""The layers of CONTRIBUTING.md, checked on the source: each package imports only those below it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: lower number = lower layer; packages of one layer do not import each other
LAYER = {"common": 0, "hashing": 1, "rerank": 1, "retrieval": 2, "eval": 3}


def imported_packages(path: Path) -> set[str]:
    """Top-level packages a module imports anywhere in it (also inside functions), absolute or relative."""
    tree = ast.parse(path.read_text(), filename=str(path))
    own = path.relative_to(ROOT).parts[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(own if node.level else (node.module or "").split(".")[0])
    return names & set(LAYER)


def test_every_package_imports_only_lower_layers():
    offending = []
    for package, layer in LAYER.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for other in imported_packages(path) - {package}:
                if LAYER[other] >= layer:
                    offending.append(f"{rel} imports {other}")
    assert not offending, "imports against the layer order:\n" + "\n".join(offending)


def test_the_checker_sees_relative_and_function_level_imports(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "hashing").mkdir()
    module = tmp_path / "hashing" / "probe.py"
    module.write_text("import numpy\ndef f():\n    from retrieval import Retriever\n    from . import base\n")
    assert imported_packages(module) == {"retrieval", "hashing"}


@pytest.mark.parametrize("module", ["rerank.fusion", "rerank", "hashing", "hashing.index", "common.atomic",
                                    "common.hub", "common.images"])
def test_light_modules_do_not_load_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules, 'retrieval' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"], out.stdout + out.stderr


def test_model_rerankers_are_created_by_name_without_being_imported_first():
    code = ("import sys; from rerank import available_rerankers, reranker_class;"
            "assert 'rerank.cross_encoder' not in sys.modules and 'rerank.vlm' not in sys.modules;"
            "print(available_rerankers(), reranker_class('cross').__module__, reranker_class('vlm').__module__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['blip2', 'cross', 'float', 'rewrite', 'vlm'] rerank.cross_encoder rerank.vlm", \
        out.stderr


#: The old homes of common/'s modules (removed): nothing may import them again.
MOVED_TO_COMMON = {"retrieval.atomic", "retrieval.hub", "retrieval.images"}


def absolute_imports(path: Path) -> set[str]:
    """Dotted modules a file imports (relative imports resolved against its own package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = path.relative_to(ROOT).parent.parts
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_nothing_imports_the_old_homes_of_common():
    offending = []
    for folder in ("common", "hashing", "rerank", "retrieval", "eval", "scripts", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if absolute_imports(path) & MOVED_TO_COMMON:
                offending.append(path.relative_to(ROOT).as_posix())
    assert not offending, "import common.atomic / common.hub / common.images instead:\n" + "\n".join(offending)
    assert not any((ROOT / (m.replace(".", "/") + ".py")).exists() for m in MOVED_TO_COMMON), "the shims are gone"


def test_the_shim_checker_resolves_relative_imports(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "retrieval" / "encoders").mkdir(parents=True)
    module = tmp_path / "retrieval" / "encoders" / "probe.py"
    module.write_text("from ..hub import x\nfrom .. import images\ndef f():\n    import retrieval.atomic\n")
    assert MOVED_TO_COMMON <= absolute_imports(module)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def own_imports(path: Path, root: Path, modules: set[str]) -> set[str]:
    """Our modules that ``path`` imports at run time (also inside functions; ``if TYPE_CHECKING:`` is
    not an import); a module importing the package it lives in is the normal case and left out."""
    tree = ast.parse(path.read_text(), filename=str(path))
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
                   for n in ast.walk(node)}
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            within = parts[:len(parts) - node.level + 1] if node.level else []
            base = ".".join(within + ([node.module] if node.module else []))
            out.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
    return {m for m in out & modules if m != name and not name.startswith(m + ".")}


def import_cycles(root: Path, packages: list[str]) -> list[list[str]]:
    """Groups of our modules that import each other, directly or round a loop (Tarjan's SCCs)."""
    paths = {module_name(p, root): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}
    edges = {m: own_imports(p, root, set(paths)) for m, p in paths.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in paths:
        if v not in index:
            visit(v)
    return cycles


def test_no_two_modules_import_each_other():
    assert import_cycles(ROOT, list(LAYER)) == []


def test_the_cycle_checker_sees_function_level_cycles_and_skips_type_checking(tmp_path):
    (tmp_path / "hashing" / "index").mkdir(parents=True)
    (tmp_path / "hashing" / "__init__.py").write_text("")
    (tmp_path / "hashing" / "index" / "__init__.py").write_text("from .base import X\n")
    (tmp_path / "hashing" / "index" / "base.py").write_text("def save():\n    from .io import save_index\n")
    (tmp_path / "hashing" / "index" / "io.py").write_text("from .base import X\n")
    (tmp_path / "hashing" / "index" / "typed.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .io import save_index\n")
    assert import_cycles(tmp_path, ["hashing"]) == [["hashing.index.base", "hashing.index.io"]]
    (tmp_path / "hashing" / "index" / "io.py").write_text("from .typed import Y\n")
    assert import_cycles(tmp_path, ["hashing"]) == []
