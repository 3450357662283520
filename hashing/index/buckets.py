"""Bucketed search, UDDH's hierarchical matching (../shared/papers/003_*.txt §I, §III-C).

Every item carries a bucket id (UDDH's semantic index, the head code) and each query names the
buckets to scan; items are ranked by Hamming distance on their codes within those buckets only,
so a query costs O(l * n_a) instead of O(l * n), n_a the items in its buckets (§III-C).

Built on one faiss ``IndexBinaryIVF`` whose inverted lists are the buckets: items go in with
``add_core`` at their given bucket and queries run ``search_preassigned`` on their given buckets,
so a whole batch is one multi-threaded faiss call whatever the bucket sizes. An item lives in one
bucket; a query may name several (UDDH's top-e for multi-label queries).

Bucket ids come from the caller, e.g. ``UDDHHasher.assign_buckets`` (hashing/uddh.py). For
packed codes at database scale, :func:`binary_kmeans` and :func:`assign_buckets` do the same job
with faiss: Hamming k-means whose centre update is the bitwise majority of the members (UDDH
eqs 15-16 with one-hot H, ../shared/papers/NOTES.md §1.7) and the top-e nearest centres (eq. 19).
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from .base import SearchResult, check_codes, register_index
from .ivf import IVFIndex, _positive_int


def assign_buckets(codes: np.ndarray, centers: np.ndarray, e: int = 1) -> np.ndarray:
    """The ``e`` nearest centres of each code by Hamming distance, (n, e) int64, nearest first."""
    centers = np.asarray(centers)
    if centers.ndim != 2:
        raise ValueError(f"centers must be packed codes (n_centers, bytes), got shape {centers.shape}")
    bits = centers.shape[1] * 8
    codes = check_codes(codes, bits)
    e = min(_positive_int("e", e), len(centers))
    quantizer = faiss.IndexBinaryFlat(bits)
    quantizer.add(check_codes(centers, bits, "centers"))
    return quantizer.search(codes, e)[1]


def binary_kmeans(codes: np.ndarray, n_centers: int, iters: int = 10, seed: int = 0) -> np.ndarray:
    """Hamming k-means: assign to the nearest centre, then each centre bit = majority of its members.

    A bit tied within a cluster becomes 1 (sign(0) = +1, as :func:`hashing.base.pack_signs`);
    empty clusters are re-seeded with random codes. Returns (n_centers, bytes) packed centres.
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be packed codes (n, bytes), got shape {codes.shape}")
    codes = check_codes(codes, codes.shape[1] * 8)
    n_centers = _positive_int("n_centers", n_centers)
    if len(codes) < n_centers:
        raise ValueError(f"binary_kmeans needs at least n_centers={n_centers} codes, got {len(codes)}")
    rng = np.random.default_rng(seed)
    centers = codes[rng.choice(len(codes), n_centers, replace=False)].copy()
    unpacked = np.unpackbits(codes, axis=1)
    for _ in range(iters):
        assign = assign_buckets(codes, centers)[:, 0]
        order = np.argsort(assign, kind="stable")
        members, starts, counts = np.unique(assign[order], return_index=True, return_counts=True)
        ones = np.add.reduceat(unpacked[order].astype(np.int32), starts, axis=0)
        centers = np.empty_like(centers)
        centers[members] = np.packbits(2 * ones >= counts[:, None], axis=1)
        empty = np.setdiff1d(np.arange(n_centers), members)
        centers[empty] = codes[rng.choice(len(codes), len(empty), replace=False)]
    return centers


@register_index
class BucketIndex(IVFIndex):
    """``nbuckets`` buckets, ids in [0, nbuckets); nothing to train."""

    kind = "buckets"

    def __init__(self, bits: int, nbuckets: int = 1024) -> None:
        super().__init__(bits, nlist=nbuckets, nprobe=1)
        self._ivf.is_trained = True  # the lists are addressed directly; the quantizer stays empty
        self._sizes: np.ndarray | None = None  # list_sizes() cache for scanned_fraction

    @property
    def nbuckets(self) -> int:
        return self.nlist

    def _train(self, codes: np.ndarray) -> None:
        pass

    def _check_buckets(self, buckets: Any, n: int, name: str) -> np.ndarray:
        if buckets is None:
            raise TypeError(f"{name} are required: BucketIndex.add(codes, ids, buckets=...) and "
                            f"BucketIndex.search(codes, k, buckets=...)")
        arr = np.asarray(buckets)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"{name} must be integer bucket ids, got dtype {arr.dtype}")
        if arr.ndim not in (1, 2) or len(arr) != n:
            raise ValueError(f"{name} has shape {arr.shape}, expected ({n},) or ({n}, e): one row per code")
        return arr.astype(np.int64)

    def _add(self, codes: np.ndarray, ids: np.ndarray, buckets: Any = None) -> None:
        """``buckets``: (n,) bucket id of each item."""
        buckets = self._check_buckets(buckets, len(codes), "buckets")
        if buckets.ndim != 1 or buckets.min() < 0 or buckets.max() >= self.nbuckets:
            raise ValueError(f"item buckets must be one id in [0, {self.nbuckets}) per code, "
                             f"got shape {buckets.shape} with range [{buckets.min()}, {buckets.max()}]")
        buckets = np.ascontiguousarray(buckets)
        self._ivf.add_core(len(codes), faiss.swig_ptr(codes), faiss.swig_ptr(ids), faiss.swig_ptr(buckets))
        self._sizes = None

    def _remove(self, ids: np.ndarray) -> int:
        self._sizes = None
        return super()._remove(ids)

    def _reset(self) -> None:
        self._sizes = None
        super()._reset()

    def _search(self, codes: np.ndarray, k: int, buckets: Any = None) -> SearchResult:
        """``buckets``: (nq,) or (nq, e) bucket ids per query, best first; -1 entries and repeats are skipped."""
        qb = self._check_buckets(buckets, len(codes), "query buckets").reshape(len(codes), -1)
        if qb.shape[1] == 0:
            raise ValueError("query buckets must name at least one bucket per query, got shape (nq, 0)")
        if qb.max() >= self.nbuckets or qb.min() < -1:
            raise ValueError(f"query buckets must lie in [0, {self.nbuckets}) (or -1 for none), "
                             f"got range [{qb.min()}, {qb.max()}]")
        # Repeats become -1 (skipped) in place: the given order is kept, and it matters for speed,
        # since nearest-first fills faiss' top-k heap with close items early (~1.7x faster measured).
        order = np.argsort(qb, axis=1, kind="stable")
        sorted_qb = np.take_along_axis(qb, order, axis=1)
        repeat = np.zeros(qb.shape, dtype=bool)
        np.put_along_axis(repeat, order[:, 1:], sorted_qb[:, 1:] == sorted_qb[:, :-1], axis=1)
        qb[repeat] = -1
        if qb.shape[1] > self.nbuckets:  # faiss scans at most nlist lists: drop -1s from the tail
            qb = np.take_along_axis(qb, np.argsort(qb < 0, axis=1, kind="stable"), axis=1)[:, : self.nbuckets]
        qb = np.ascontiguousarray(qb)
        if self._sizes is None:
            self._sizes = self.list_sizes()
        scanned = self._sizes[qb[qb >= 0]].sum() / (len(codes) * self.ntotal)
        self._ivf.nprobe = qb.shape[1]
        d, i = self._ivf.search_preassigned(codes, k, qb, None)
        return SearchResult(i, d, float(scanned))

    def get_params(self) -> dict[str, Any]:
        return {"nbuckets": self.nbuckets}
