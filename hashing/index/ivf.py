"""Inverted-file search: faiss IndexBinaryIVF (Hamming k-means cells, ``nprobe`` cells scanned).

Ids are stored in the inverted lists themselves, so removal is native (a scan of the lists).
``scanned_fraction`` comes from faiss' global ``indexIVF_stats``, so it is only meaningful when
one thread searches at a time.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np
from faiss.contrib.inspect_tools import get_invlist

from common.checks import check_int

from .base import BinaryIndex, SearchResult, register_index

#: Training codes per list that faiss' k-means asks for ("please provide at least 39*k training points").
CODES_PER_LIST = 39


@register_index
class IVFIndex(BinaryIndex):
    """``nlist`` cells trained by :meth:`train` (faiss k-means on the bits); ``nprobe`` cells per query."""

    kind = "ivf"

    def __init__(self, bits: int, nlist: int = 1024, nprobe: int = 32) -> None:
        super().__init__(bits)
        self.nlist = check_int("nlist", nlist)
        self.nprobe = check_int("nprobe", nprobe)
        self._ivf = self._new_ivf(faiss.IndexBinaryFlat(self.bits))

    def _new_ivf(self, quantizer: Any) -> Any:
        return faiss.IndexBinaryIVF(quantizer, self.bits, self.nlist)  # the wrapper keeps quantizer alive

    @property
    def ntotal(self) -> int:
        return int(self._ivf.ntotal)

    @property
    def is_trained(self) -> bool:
        return bool(self._ivf.is_trained)

    @property
    def train_size(self) -> int:
        return 0 if self.is_trained else CODES_PER_LIST * self.nlist

    def _train(self, codes: np.ndarray) -> None:
        if len(codes) < self.nlist:
            raise ValueError(f"training {type(self).__name__} with nlist={self.nlist} needs at least "
                             f"{self.nlist} codes (ideally 30-256 per cell), got {len(codes)}")
        if self.ntotal:
            raise RuntimeError("cannot retrain an index that holds items: reset() it first")
        self._ivf.train(codes)

    def list_sizes(self) -> np.ndarray:
        """Items per inverted list (cell or bucket)."""
        invlists = self._ivf.invlists
        return np.array([invlists.list_size(i) for i in range(self._ivf.nlist)], dtype=np.int64)

    def _ids(self) -> np.ndarray:
        invlists = self._ivf.invlists
        parts = [get_invlist(invlists, i)[0] for i in range(self._ivf.nlist) if invlists.list_size(i)]
        return np.concatenate(parts).astype(np.int64, copy=False) if parts else np.empty(0, np.int64)

    def _add(self, codes: np.ndarray, ids: np.ndarray) -> None:
        self._ivf.add_with_ids(codes, ids)

    def _remove(self, ids: np.ndarray) -> int:
        return int(self._ivf.remove_ids(faiss.IDSelectorBatch(ids)))

    def _search(self, codes: np.ndarray, k: int) -> SearchResult:
        self._ivf.nprobe = min(self.nprobe, self.nlist)
        stats = faiss.cvar.indexIVF_stats
        stats.reset()
        d, i = self._ivf.search(codes, k)
        return SearchResult(i, d, stats.ndis / (len(codes) * self.ntotal))

    def _reset(self) -> None:
        self._ivf.reset()

    def get_params(self) -> dict[str, Any]:
        return {"nlist": self.nlist, "nprobe": self.nprobe}

    def _faiss_index(self) -> Any:
        return self._ivf

    @classmethod
    def _restore(cls, bits, params, faiss_index, arrays) -> "IVFIndex":
        index = cls(bits, **params)
        if not isinstance(faiss_index, faiss.IndexBinaryIVF) or faiss_index.nlist != index.nlist:
            raise ValueError(f"a saved {cls.kind} index must hold an IndexBinaryIVF with nlist={index.nlist}, "
                             f"got {type(faiss_index).__name__}")
        index._ivf = faiss_index
        return index
