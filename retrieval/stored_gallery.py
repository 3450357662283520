"""A gallery whose items live in a :class:`retrieval.store.Store` on disk.

Same interface as the in-memory :class:`retrieval.gallery.Gallery` (``index``, ``add``, ``fetch``,
``remove``, ``export``), so the Retriever searches either the same way. Only the binary index is in
memory (it is derived data, rebuilt from the stored codes on open: ``bits / 8`` bytes per item plus
faiss' id map); float vectors are memory-mapped and items/payloads are read from SQLite for the
candidates of each query only.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

from hashing.base import as_features
from hashing.index import BinaryIndex, create_index

from .gallery import check_payloads, storable_item
from .store import Store


class StoredGallery:
    def __init__(self, store: Store, modality: str, bits: int, index: str = "flat",
                 index_params: dict | None = None) -> None:
        self.store = store
        self.modality = modality
        self.dim = store.dim
        self.store_vectors = store.codecs[modality].dtype != "none"
        self.index: BinaryIndex = create_index(index, bits, **(index_params or {}))
        self._fill_index()

    def _fill_index(self) -> None:
        parts = list(self.store.live_codes(self.modality))
        if not parts:
            return
        ids = np.concatenate([p[0] for p in parts])
        codes = np.concatenate([p[1] for p in parts])
        if not self.index.is_trained:
            self.index.train(codes)
        self.index.add(codes, ids)

    def __len__(self) -> int:
        return self.index.ntotal

    @property
    def ids(self) -> np.ndarray:
        return self.store.ids(self.modality)

    def add(self, codes: np.ndarray, vectors: np.ndarray, items: Sequence[Any], payloads: Sequence[Any] | None,
            ids: np.ndarray | None = None) -> np.ndarray:
        """Appends one committed chunk, then makes it searchable."""
        n = len(codes)
        payloads = check_payloads(payloads, n)
        vectors = as_features(vectors, f"{self.modality} vectors", self.dim)
        if len(items) != n or len(vectors) != n:
            raise ValueError(f"{n} codes but {len(vectors)} vectors and {len(items)} items")
        codes = np.ascontiguousarray(codes)
        with self.store.transaction() as tx:
            new_ids = tx.append(self.modality, codes, vectors, [storable_item(i) for i in items], payloads, ids)
        if len(new_ids):
            if not self.index.is_trained:
                self.index.train(codes)
            self.index.add(codes, new_ids)
        return new_ids

    def fetch(self, ids: Sequence[int], vectors: bool = True) -> tuple[list[Any], np.ndarray | None, list[Any]]:
        return self.store.fetch(self.modality, ids, vectors and self.store_vectors)

    def fetch_vectors(self, ids: Sequence[int]) -> np.ndarray:
        return self.store.fetch_vectors(self.modality, ids)

    def remove(self, ids: Sequence[int]) -> int:
        with self.store.transaction() as tx:
            removed = tx.remove(self.modality, ids)
        self.index.remove(np.asarray(ids, dtype=np.int64))
        return removed

    def export(self, batch: int = 65536) -> Iterator[tuple]:
        """(ids, codes, vectors, items, payloads) of live items, one stored chunk at a time."""
        for chunk_ids, codes in self.store.live_codes(self.modality):
            for start in range(0, len(chunk_ids), batch):
                ids = chunk_ids[start:start + batch]
                items, vectors, payloads = self.fetch(ids)
                yield ids, codes[start:start + batch], vectors, items, payloads
