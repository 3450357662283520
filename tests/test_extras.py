"""eval/extras.py: a package of the eval extra that is missing says which extra brings it."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval.extras import require

ROOT = Path(__file__).resolve().parents[1]


def test_missing_eval_package_names_the_package_the_use_and_the_extra():
    with pytest.raises(ImportError, match=r"plotting needs the package 'no_such_pkg', part of the eval extra: "
                                          r"pip install 'crossmodal-retrieval\[eval\]'"):
        require("no_such_pkg.sub", "plotting")
    assert require("json", "anything").dumps([1]) == "[1]"


def test_eval_only_packages_are_in_the_eval_extra_and_dev_installs_it():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {r.split(">")[0].split("=")[0].strip() for r in project["dependencies"]}
    extra = {r.split(">")[0].strip() for r in project["optional-dependencies"]["eval"]}
    assert {"datasets", "h5py", "matplotlib", "accelerate", "threadpoolctl"} <= extra
    assert not core & extra
    self_extras = [r for r in project["optional-dependencies"]["dev"] if r.startswith("crossmodal-retrieval[")]
    assert len(self_extras) == 1 and "eval" in self_extras[0].split("[")[1].rstrip("]").split(",")
