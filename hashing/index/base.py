"""The interface every stage-1 binary index implements.

A binary index holds packed codes (``numpy.packbits`` bit order, uint8 ``(n, bits // 8)``) under
caller-chosen int64 ids and answers top-k Hamming queries with a :class:`SearchResult`: candidate
ids and their Hamming distances, ready for a reranker (or :func:`hashing.index.rescore.rescore`).

Conventions shared by all indexes:

* ids are non-negative int64 and unique within an index; ``-1`` is reserved for padding.
* A row with fewer than ``k`` hits is padded at the end with id ``-1`` and distance
  :data:`PAD_DISTANCE` (faiss' own padding), so padded slots sort last.
* Rows are sorted by increasing distance. **Ties**: the exact indexes (``flat``, ``gpu_flat``)
  break ties by insertion order (an earlier-added item first; removal keeps the order of the
  rest). The approximate ones (``hnsw``, ``ivf``, ``buckets``) keep faiss' heap order, which is
  not defined among equal distances. Either way, which of several items tied at the k-th
  distance is returned is arbitrary, so tests and recall compare tie-aware (see
  ``faiss.contrib.evaluation.check_ref_knn_with_draws``).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from common.checks import check_int

from ..base import check_bits
from .io import load_index, save_index
from .registry import available_indexes, index_class, register_index  # noqa: F401 - re-exported

PAD_ID = -1
PAD_DISTANCE = np.iinfo(np.int32).max


@dataclass(frozen=True, eq=False)
class SearchResult:
    """Stage-1 output. ``ids`` int64 (nq, k), ``distances`` int32 (nq, k), padded as documented above.

    ``scanned_fraction`` is the mean fraction of the database whose codes were compared per query
    (1.0 for exhaustive search), or ``None`` where the index cannot tell (HNSW).
    """

    ids: np.ndarray
    distances: np.ndarray
    scanned_fraction: float | None = None

    def __iter__(self):  # ``ids, distances = index.search(q, k)``
        return iter((self.ids, self.distances))


def check_codes(codes: Any, bits: int, name: str = "codes") -> np.ndarray:
    """Validates packed codes for a ``bits``-bit index; returns them C-contiguous."""
    if not isinstance(codes, np.ndarray):
        raise TypeError(f"{name} must be a numpy uint8 array of shape (n, {bits // 8}), got {type(codes).__name__}")
    if codes.dtype != np.uint8:
        raise TypeError(
            f"{name} must be packed uint8 codes (n, {bits // 8}) for a {bits}-bit index, got dtype {codes.dtype} "
            f"with shape {codes.shape} (pack bits with numpy.packbits)"
        )
    if codes.ndim != 2 or codes.shape[1] != bits // 8:
        raise ValueError(
            f"{name} has shape {codes.shape}, expected (n, {bits // 8}) packed uint8 codes for a {bits}-bit index"
            + (f" (these look like {codes.shape[1] * 8}-bit codes)" if codes.ndim == 2 else "")
        )
    return np.ascontiguousarray(codes)


def check_ids(ids: Any, n: int | None = None, name: str = "ids") -> np.ndarray:
    """Validates a 1-D array of non-negative, unique integer ids; returns int64."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be integers (int64), got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if n is not None and len(arr) != n:
        raise ValueError(f"{name} has {len(arr)} entries, expected {n} (one per code)")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} must be >= 0 (-1 marks padding), got {int(arr.min())}")
    ordered = np.sort(arr)  # not np.unique: in numpy 2 it imports numpy.ma (15 ms of a 1 s search, issue 22)
    if (ordered[1:] == ordered[:-1]).any():
        uniq, counts = np.unique(arr, return_counts=True)
        raise ValueError(f"{name} must be unique; repeated: {uniq[counts > 1][:5].tolist()}")
    return np.ascontiguousarray(arr)


def check_k(k: Any) -> int:
    return check_int("k", k)


def pad_result(distances: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Widens faiss output to ``k`` columns and normalises its padding to (PAD_DISTANCE, PAD_ID)."""
    nq, kk = ids.shape
    out_i = np.full((nq, k), PAD_ID, dtype=np.int64)
    out_d = np.full((nq, k), PAD_DISTANCE, dtype=np.int32)
    out_i[:, :kk] = ids
    out_d[:, :kk] = distances
    out_d[out_i < 0] = PAD_DISTANCE
    return out_d, out_i


class BinaryIndex(ABC):
    """Top-k Hamming search over packed codes under custom ids.

    Subclasses set ``kind`` and implement the ``_``-prefixed hooks; validation, id bookkeeping,
    padding and persistence live here so every index fails the same way on bad input.
    """

    kind: ClassVar[str] = ""

    def __init__(self, bits: int) -> None:
        self.bits = check_bits(bits)

    @property
    def code_bytes(self) -> int:
        return self.bits // 8

    # -- hooks ----------------------------------------------------------------------------------
    @property
    @abstractmethod
    def ntotal(self) -> int:
        """Number of searchable items."""

    @property
    def is_trained(self) -> bool:
        return True

    @property
    def train_size(self) -> int:
        """Codes an untrained index wants for :meth:`train` (0: it needs none). A collection that is
        still smaller is better served exactly (``retrieval.stored_gallery`` does so)."""
        return 0

    def _train(self, codes: np.ndarray) -> None:
        pass

    def _needs_training(self, **kwargs: Any) -> bool:
        """Whether :meth:`add` with these keyword arguments must wait for :meth:`train`."""
        return not self.is_trained

    @abstractmethod
    def _ids(self) -> np.ndarray:
        """Every id currently stored (any order)."""

    def _first_free_id(self, stored: np.ndarray) -> int:
        """Where default ids start: after the largest stored id."""
        return int(stored.max()) + 1 if len(stored) else 0

    @abstractmethod
    def _add(self, codes: np.ndarray, ids: np.ndarray, **kwargs: Any) -> None: ...

    @abstractmethod
    def _remove(self, ids: np.ndarray) -> int: ...

    @abstractmethod
    def _search(self, codes: np.ndarray, k: int, **kwargs: Any) -> SearchResult:
        """May return fewer than k columns or faiss padding; :meth:`search` normalises both."""

    @abstractmethod
    def _reset(self) -> None: ...

    def get_params(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments other than ``bits``."""
        return {}

    # Persistence hooks (see hashing/index/io.py): a native faiss index and/or named arrays.
    def _faiss_index(self) -> Any | None:
        return None

    def _arrays(self) -> dict[str, np.ndarray]:
        return {}

    @classmethod
    @abstractmethod
    def _restore(cls, bits: int, params: dict[str, Any], faiss_index: Any | None,
                 arrays: dict[str, np.ndarray]) -> "BinaryIndex": ...

    # -- public API -----------------------------------------------------------------------------
    def train(self, codes: np.ndarray) -> "BinaryIndex":
        """Learns what the index needs from representative codes (IVF centroids); a no-op elsewhere."""
        codes = check_codes(codes, self.bits)
        if len(codes) == 0:
            raise ValueError("train needs at least one code, got 0")
        self._train(codes)
        return self

    def add(self, codes: np.ndarray, ids: np.ndarray | None = None, **kwargs: Any) -> np.ndarray:
        """Adds codes under ``ids`` (default: consecutive ids after the largest stored one).

        Returns the ids used. ids already in the index are an error, not an overwrite: remove
        them first. Each call checks ids against the whole index (O(ntotal)), so add in bulk.
        """
        codes = check_codes(codes, self.bits)
        if self._needs_training(**kwargs):
            raise RuntimeError(f"{type(self).__name__} is not trained: call train(codes) before add()")
        stored = self._ids()
        if ids is None:
            start = self._first_free_id(stored)
            ids = np.arange(start, start + len(codes), dtype=np.int64)
        else:
            ids = check_ids(ids, len(codes))
            present = np.isin(ids, stored)
            if present.any():
                raise ValueError(
                    f"ids already in the index: {ids[present][:5].tolist()} "
                    f"({int(present.sum())} in all); remove them first"
                )
        if len(codes):
            self._add(codes, ids, **kwargs)
        return ids

    def remove(self, ids: np.ndarray) -> int:
        """Removes the given ids (absent ones are ignored); returns how many were removed."""
        arr = np.asarray(ids)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise TypeError(f"ids must be a 1-D integer array, got dtype {arr.dtype} with shape {arr.shape}")
        arr = np.unique(arr.astype(np.int64, copy=False))
        arr = arr[arr >= 0]
        return int(self._remove(np.ascontiguousarray(arr))) if len(arr) and self.ntotal else 0

    def search(self, codes: np.ndarray, k: int, **kwargs: Any) -> SearchResult:
        """Top-``k`` nearest codes by Hamming distance, as documented in the module docstring."""
        codes = check_codes(codes, self.bits, "query codes")
        k = check_k(k)
        if self.ntotal == 0 or len(codes) == 0:
            d, i = pad_result(np.empty((len(codes), 0), np.int32), np.empty((len(codes), 0), np.int64), k)
            return SearchResult(i, d, 0.0)
        res = self._search(codes, k, **kwargs)
        d, i = pad_result(res.distances, res.ids, k)
        return SearchResult(i, d, res.scanned_fraction)

    def reset(self) -> None:
        """Removes every item, keeping parameters and training."""
        self._reset()

    def save(self, path: str | os.PathLike) -> Path:
        """Atomic, versioned save to a directory (see :mod:`hashing.index.io`)."""
        return save_index(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BinaryIndex":
        """Loads a saved index; on :class:`BinaryIndex` itself it dispatches on the saved type."""
        index = load_index(path)
        if cls is not BinaryIndex and not isinstance(index, cls):
            raise ValueError(f"{path} holds a {index.kind!r} index, not {cls.kind!r}")
        return index

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}(bits={self.bits}{', ' + params if params else ''}, ntotal={self.ntotal})"
