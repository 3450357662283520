"""Two-stage image-text retrieval, the top of the library: encoders, the Retriever over
:mod:`hashing` (stage 1) and :mod:`rerank` (stage 2), the on-disk store, the CLI and the server.

Nothing below it imports it back (the layers: CONTRIBUTING.md), so the public names are
imported here directly; code that needs only atomic saves, Hub resolution or image loading
imports :mod:`common` and never loads torch.
"""

from .encoders import Encoder, load_encoder
from .retriever import Hit, Retriever

__all__ = ["Encoder", "Hit", "Retriever", "load_encoder"]
