"""Shared fixtures. Tests never touch the network: HF_HUB_OFFLINE is forced on here too."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The lite encoder's exported ONNX graphs (retrieval/encoders/onnx_cache.py): one cache per machine
# user for the tests, outside the user's own, so tests neither read nor leave files in ~/.cache.
os.environ.setdefault("CROSSMODAL_CACHE", os.path.join(tempfile.gettempdir(), f"crossmodal-tests-{os.getuid()}"))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FLICKR8K = SHARED_DATA / "flickr8k"
WIKI = SHARED_DATA / "wiki" / "wikiData.mat"


def load_script(name: str) -> Any:
    """``scripts/NAME.py`` as a module: the scripts are not a package, and their tests call ``main``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason=f"shared data not found at {SHARED_DATA}")
    if not SHARED_DATA.is_dir():
        for item in items:
            if "data" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache in tmp_path, with the Hub client forced offline."""
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache
