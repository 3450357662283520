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
