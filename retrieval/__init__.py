"""Two-stage image-text retrieval: encoders, binary hash recall, reranking.

Heavy submodules (torch, transformers, open_clip) load on first use, so that light utilities
such as :mod:`retrieval.atomic` and :mod:`retrieval.hub` import in milliseconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .encoders import Encoder, load_encoder
    from .retriever import Hit, Retriever

__all__ = ["Encoder", "Hit", "Retriever", "load_encoder"]
_SOURCES = {"Encoder": "encoders", "load_encoder": "encoders", "Hit": "retriever", "Retriever": "retriever"}


def __getattr__(name: str) -> Any:
    if name in _SOURCES:
        import importlib

        return getattr(importlib.import_module(f".{_SOURCES[name]}", __name__), name)
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")
