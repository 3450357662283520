"""Two-stage image-text retrieval: encoders, binary hash recall, reranking.

Heavy submodules (torch, transformers, open_clip) load on first use, so that light utilities
such as :mod:`retrieval.atomic` and :mod:`retrieval.hub` import in milliseconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .encoders import Encoder, load_encoder

__all__ = ["Encoder", "load_encoder"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import encoders

        return getattr(encoders, name)
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")
