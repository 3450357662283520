"""Exact search: faiss IndexBinaryFlat under IndexBinaryIDMap (custom ids, removal by id).

IndexBinaryIDMap, not IDMap2: IDMap2's reverse map (an unordered_map, for reconstruct by id,
which nothing here calls) holds tens of bytes per item, more than a 64-bit code and its id, and
every reopened store rebuilds this index (the resident cost per item is in the README's scale
table, ``python -m eval.bench --stages scale``). Indexes saved with IDMap2 still load.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from .base import BinaryIndex, SearchResult, register_index


def idmap_ids(idmap: Any) -> np.ndarray:
    """The external ids of a faiss IndexBinaryIDMap(2), in internal (insertion) order."""
    return faiss.vector_to_array(idmap.id_map).astype(np.int64, copy=False)


@register_index
class FlatIndex(BinaryIndex):
    """Exhaustive Hamming search; the reference every other index is measured against.

    ``use_heap`` selects faiss' k-NN kernel: a heap (True, faiss' default) or counting by distance
    (False). Both return the same results; which is faster depends on k, the batch size and the
    machine. Ties: insertion order.
    """

    kind = "flat"

    def __init__(self, bits: int, use_heap: bool = True) -> None:
        super().__init__(bits)
        self.use_heap = bool(use_heap)
        # The faiss wrapper keeps the inner index alive (add_ref_in_constructor).
        self._idmap = faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(self.bits))

    @property
    def ntotal(self) -> int:
        return int(self._idmap.ntotal)

    def _flat(self) -> Any:
        return faiss.downcast_IndexBinary(self._idmap.index)

    def _ids(self) -> np.ndarray:
        return idmap_ids(self._idmap)

    def _add(self, codes: np.ndarray, ids: np.ndarray) -> None:
        self._idmap.add_with_ids(codes, ids)

    def _remove(self, ids: np.ndarray) -> int:
        return int(self._idmap.remove_ids(faiss.IDSelectorBatch(ids)))

    def _search(self, codes: np.ndarray, k: int) -> SearchResult:
        self._flat().use_heap = self.use_heap
        d, i = self._idmap.search(codes, min(k, self.ntotal))
        return SearchResult(i, d, 1.0)

    def _reset(self) -> None:
        self._idmap.reset()

    def get_params(self) -> dict[str, Any]:
        return {"use_heap": self.use_heap}

    def _faiss_index(self) -> Any:
        return self._idmap

    @classmethod
    def _restore(cls, bits, params, faiss_index, arrays) -> "FlatIndex":
        index = cls(bits, **params)
        if not isinstance(faiss_index, faiss.IndexBinaryIDMap):  # IDMap2 (saved before) is a subclass
            raise ValueError(f"a saved flat index must hold an IndexBinaryIDMap, got {type(faiss_index).__name__}")
        index._idmap = faiss_index
        return index
