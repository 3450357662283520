"""Graph search: faiss IndexBinaryHNSW under IndexBinaryIDMap2, with removal by tombstones.

faiss HNSW cannot unlink nodes (faiss issue #3339: "the graph has to be re-linked"), so
:meth:`HNSWIndex.remove` records the ids as tombstones that every search filters out with an
``IDSelectorNot``; the codes stay in the graph as waypoints. :meth:`HNSWIndex.compact` rebuilds
the graph from the live codes; it runs by itself when a removed id is added again. Many tombstones
slow filtered search and lower its recall: compact after large removals.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from common.checks import check_int

from .base import BinaryIndex, SearchResult, register_index
from .flat import idmap_ids


@register_index
class HNSWIndex(BinaryIndex):
    """``M`` graph degree, ``ef_construction`` build beam, ``ef_search`` query beam (raised to k)."""

    kind = "hnsw"

    def __init__(self, bits: int, M: int = 16, ef_construction: int = 64, ef_search: int = 128) -> None:
        super().__init__(bits)
        self.M = check_int("M", M)
        self.ef_construction = check_int("ef_construction", ef_construction)
        self.ef_search = check_int("ef_search", ef_search)
        self._idmap = self._new_idmap()
        self._deleted = np.empty(0, dtype=np.int64)  # sorted tombstoned ids

    def _new_idmap(self) -> Any:
        hnsw = faiss.IndexBinaryHNSW(self.bits, self.M)
        hnsw.hnsw.efConstruction = self.ef_construction
        return faiss.IndexBinaryIDMap2(hnsw)  # the wrapper keeps `hnsw` alive

    @property
    def ntotal(self) -> int:
        return int(self._idmap.ntotal) - len(self._deleted)

    @property
    def n_deleted(self) -> int:
        return len(self._deleted)

    def _ids(self) -> np.ndarray:
        return np.setdiff1d(idmap_ids(self._idmap), self._deleted, assume_unique=True)

    def _first_free_id(self, stored: np.ndarray) -> int:
        # also past the tombstones: reusing one would force a compact()
        return max(super()._first_free_id(stored), int(self._deleted.max()) + 1 if len(self._deleted) else 0)

    def _add(self, codes: np.ndarray, ids: np.ndarray) -> None:
        if len(self._deleted) and np.isin(ids, self._deleted).any():
            self.compact()  # the graph still holds those ids; IDMap2 ids must stay unique
        self._idmap.add_with_ids(codes, ids)

    def _remove(self, ids: np.ndarray) -> int:
        live = ids[np.isin(ids, self._ids())]
        self._deleted = np.union1d(self._deleted, live)
        return len(live)

    def _search(self, codes: np.ndarray, k: int) -> SearchResult:
        ef = max(self.ef_search, k)
        if len(self._deleted):
            sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(self._deleted))
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=ef)
        else:
            params = faiss.SearchParametersHNSW(efSearch=ef)
        d, i = self._idmap.search(codes, k, params=params)
        return SearchResult(i, d, None)

    def compact(self) -> None:
        """Rebuilds the graph without the tombstoned items (a full HNSW build of the live codes)."""
        if not len(self._deleted):
            return
        ids = idmap_ids(self._idmap)
        storage = faiss.downcast_IndexBinary(faiss.downcast_IndexBinary(self._idmap.index).storage)
        codes = faiss.vector_to_array(storage.xb).reshape(-1, self.code_bytes)
        keep = ~np.isin(ids, self._deleted)
        self._idmap = self._new_idmap()
        self._deleted = np.empty(0, dtype=np.int64)
        if keep.any():
            self._idmap.add_with_ids(np.ascontiguousarray(codes[keep]), np.ascontiguousarray(ids[keep]))

    def _reset(self) -> None:
        self._idmap = self._new_idmap()
        self._deleted = np.empty(0, dtype=np.int64)

    def get_params(self) -> dict[str, Any]:
        return {"M": self.M, "ef_construction": self.ef_construction, "ef_search": self.ef_search}

    def _faiss_index(self) -> Any:
        return self._idmap

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"deleted_ids": self._deleted}

    @classmethod
    def _restore(cls, bits, params, faiss_index, arrays) -> "HNSWIndex":
        index = cls(bits, **params)
        if not isinstance(faiss_index, faiss.IndexBinaryIDMap2) or not isinstance(
            faiss.downcast_IndexBinary(faiss_index.index), faiss.IndexBinaryHNSW
        ):
            raise ValueError(f"a saved hnsw index must hold an IndexBinaryIDMap2 of IndexBinaryHNSW, "
                             f"got {type(faiss_index).__name__}")
        index._idmap = faiss_index
        index._deleted = np.sort(arrays.get("deleted_ids", np.empty(0, dtype=np.int64)).astype(np.int64))
        return index
