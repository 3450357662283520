"""Encoders and the one factory that resolves an encoder id.

Ids, in the order they are tried:

- ``lite``: the embedded offline default (weights ship with the package); ``lite:int8`` the same
  with its text tower quantised to int8 (ONNX Runtime, approximate, opt-in). Since issue 23 ``lite``
  has ImageNet concepts in its image embedding; ``lite:concepts`` is kept as a name for the same
  vectors, and ``lite:heads`` gives the Flickr8K heads alone (the image vectors before issue 23).
- ``open_clip:ARCH[/PRETRAINED]``, ``hf-hub:org/repo``, ``local-dir:/path``: open_clip. A bare
  ``ARCH/PRETRAINED`` also works when ARCH is an open_clip architecture (``ViT-B-32/laion2b_s34b_b79k``);
  PRETRAINED may be a tag or a checkpoint file.
- a local directory: saved by open_clip (``open_clip_config.json``), by the lite trainer
  (``config.json`` with ``model_type: lite``) or by transformers (``config.json``).
- ``transformers:org/name`` or any other ``org/name``: a transformers CLIP/SigLIP from the Hub or its cache.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .base import Encoder
from .lite import LiteEncoder

__all__ = ["Encoder", "LiteEncoder", "OpenClipEncoder", "TransformersEncoder", "is_lite_id", "load_encoder"]

#: The lite encoder's names and the :class:`LiteEncoder` settings each stands for.
LITE_NAMES: dict[str, dict[str, bool]] = {
    "lite": {}, "lite:int8": {"int8": True}, "lite:concepts": {"concepts": True}, "lite:heads": {"heads": True},
}

#: Loaded on first use: both import torch, which the lite encoder's ONNX path never needs.
_LAZY = {"TransformersEncoder": ".hf_encoder", "OpenClipEncoder": ".open_clip_encoder"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_encoder(model_id: str = "lite", **kwargs: Any) -> Encoder:
    """Returns a ready encoder for ``model_id``; ``kwargs`` go to its constructor (device, precision...)."""
    if not isinstance(model_id, str) or not model_id:
        raise ValueError(f"model id must be a non-empty string, got {model_id!r}")
    if model_id in LITE_NAMES:
        return LiteEncoder(**LITE_NAMES[model_id], **kwargs)
    from .hf_encoder import TransformersEncoder
    from .open_clip_encoder import OpenClipEncoder, is_open_clip_id

    if model_id.startswith("transformers:"):
        return TransformersEncoder(model_id, **kwargs)
    path = Path(model_id).expanduser()
    if path.is_dir():
        if (path / "open_clip_config.json").is_file():
            return OpenClipEncoder(f"local-dir:{path}", **kwargs)
        if (path / "config.json").is_file():
            if _is_lite_dir(path):
                return LiteEncoder(path, **kwargs)
            return TransformersEncoder(str(path), **kwargs)
        raise FileNotFoundError(f"{path} holds neither open_clip_config.json nor config.json")
    if is_open_clip_id(model_id):
        return OpenClipEncoder(model_id, **kwargs)
    return TransformersEncoder(model_id, **kwargs)


def _is_lite_dir(path: Path) -> bool:
    """A directory the lite trainer saved: its ``config.json`` says ``model_type: lite``."""
    return json.loads((path / "config.json").read_text()).get("model_type") == "lite"


def is_lite_id(model_id: str) -> bool:
    """Whether :func:`load_encoder` resolves ``model_id`` to a :class:`LiteEncoder`, decided without
    loading anything: callers that need the lite model's insides (its feature map, its heads) can
    refuse another encoder before paying for a load or a Hub look-up."""
    if model_id in LITE_NAMES:
        return True
    path = Path(model_id).expanduser()
    return (path.is_dir() and not (path / "open_clip_config.json").is_file()
            and (path / "config.json").is_file() and _is_lite_dir(path))
