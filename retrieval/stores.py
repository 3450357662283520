"""Which kind of store an index folder holds, opened as that kind.

Why a module of its own: the Milvus store (retrieval/milvus_store.py) extends the local one
(retrieval/store.py), so the choice between them sits above both and neither imports the other
back (tests/test_layers.py finds no import cycle). Everything that opens an existing index opens
it here; ``Store.open`` itself opens only a local store.
"""

from __future__ import annotations

import os
from pathlib import Path

from .store import Store, store_backend


def open_store(directory: str | os.PathLike, writable: bool = False) -> Store:
    """The store in ``directory``: local (chunk files there) or Milvus (its meta names the URI)."""
    if store_backend(Path(directory)) == "milvus":
        from .milvus_store import MilvusStore

        return MilvusStore.open(directory, writable)
    return Store.open(directory, writable)
