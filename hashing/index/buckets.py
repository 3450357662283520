"""Bucketed search, UDDH's hierarchical matching (../shared/papers/003_*.txt §I, §III-C).

Every item carries a bucket id (UDDH's semantic index, the head code) and each query names the
buckets to scan; items are ranked by Hamming distance on their codes within those buckets only,
so a query costs O(l * n_a) instead of O(l * n), n_a the items in its buckets (§III-C).

Built on one faiss ``IndexBinaryIVF`` whose inverted lists are the buckets: items go in with
``add_core`` at their given bucket and queries run ``search_preassigned`` on their given buckets,
so a whole batch is one multi-threaded faiss call whatever the bucket sizes. An item lives in one
bucket; a query may name several (UDDH's top-e for multi-label queries).

The buckets are centres in Hamming space that the index holds itself (see :class:`BucketIndex`):
fitted by :func:`hashing.binary_kmeans.binary_kmeans`, the Hamming k-means UDDH's semantic index
uses (centre update = bitwise majority of the members, UDDH eqs 15-16 with one-hot H,
../shared/papers/NOTES.md §1.7), or handed over by a fitted UDDH hasher; items and queries go to
their nearest centres (eq. 19, :func:`assign_buckets`).
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from common.checks import check_int

from ..base import pack_signs
from ..binary_kmeans import binary_kmeans, kmeanspp_centres
from .base import SearchResult, check_codes, register_index
from .ivf import IVFIndex


def assign_buckets(codes: np.ndarray, centers: np.ndarray, e: int = 1) -> np.ndarray:
    """The ``e`` nearest centres of each code by Hamming distance, (n, e) int64, nearest first."""
    centers = np.asarray(centers)
    if centers.ndim != 2:
        raise ValueError(f"centers must be packed codes (n_centers, bytes), got shape {centers.shape}")
    bits = centers.shape[1] * 8
    codes = check_codes(codes, bits)
    e = min(check_int("e", e), len(centers))
    quantizer = faiss.IndexBinaryFlat(bits)
    quantizer.add(check_codes(centers, bits, "centers"))
    return quantizer.search(codes, e)[1]


@register_index
class BucketIndex(IVFIndex):
    """``nbuckets`` buckets, each a centre in Hamming space; a query scans its ``e`` nearest buckets.

    The index owns its assigner, so it is built and searched like every other index:
    :meth:`train` fits the centres by binary k-means (:mod:`hashing.binary_kmeans`, the one UDDH's
    semantic index uses) on the codes' first ``prefix_bits`` bits: k-means++ seeding from ``seed``
    over the distinct codes (fewer distinct codes than ``nbuckets`` is an error), then Lloyd rounds
    until the assignment stops changing, at most ``kmeans_iters``. A centre bit tied among its
    members keeps its previous value; an empty bucket is re-seeded with the code farthest from its
    own centre. :meth:`add` files each item under its nearest centre and ``search(codes, k)`` scans the
    ``e`` nearest, and the next nearest while they hold fewer than ``k`` items (:meth:`probe`).
    Distances to the centres use the codes' first ``prefix_bits`` bits (all of them by default): UDDH files items by their content code, the prefix of its tail code, so
    :meth:`hashing.uddh.UDDHHasher.bucket_index` hands over its centres with
    ``prefix_bits=content_bits``. Ties between centres go to the lower bucket id.

    ``buckets=`` on :meth:`add` / :meth:`search` overrides the assigner with bucket ids chosen
    by the caller ((n,) per item; (nq,) or (nq, e) per query, best first, -1 for none); an index
    saved before it had centres, or never trained, takes only those.
    """

    kind = "buckets"

    def __init__(self, bits: int, nbuckets: int = 1024, e: int = 1, prefix_bits: int | None = None,
                 kmeans_iters: int = 10, seed: int = 0) -> None:
        super().__init__(bits, nlist=nbuckets, nprobe=1)
        self.e = check_int("e", e)
        self.prefix_bits = (self.bits if prefix_bits is None
                            else check_int("prefix_bits", prefix_bits, 1, self.bits, high_name="bits"))
        self.kmeans_iters = check_int("kmeans_iters", kmeans_iters)
        self.seed = check_int("seed", seed, low=None)
        self._ivf.is_trained = True  # the lists are addressed directly; faiss' quantizer stays empty
        self._mask = np.packbits(np.arange(self.bits) < self.prefix_bits)  # (bytes,) the prefix bits
        self._centres: np.ndarray | None = None  # (nbuckets, bytes) packed, zero beyond the prefix
        self._assigner: Any = None  # faiss IndexBinaryFlat over the centres
        self._sizes: np.ndarray | None = None  # list_sizes() cache for scanned_fraction

    @property
    def nbuckets(self) -> int:
        return self.nlist

    @property
    def centres(self) -> np.ndarray | None:
        """(nbuckets, bits // 8) packed centres (bits beyond ``prefix_bits`` zero), or None before training."""
        return self._centres

    @property
    def is_trained(self) -> bool:
        return self._centres is not None

    def set_centres(self, centres: np.ndarray) -> "BucketIndex":
        """Uses given centres ((nbuckets, bits // 8) packed codes; bits beyond the prefix are ignored)."""
        centres = check_codes(centres, self.bits, "centres")
        if len(centres) != self.nbuckets:
            raise ValueError(f"centres has {len(centres)} rows, expected nbuckets={self.nbuckets}")
        if self.ntotal:
            raise RuntimeError("cannot change the centres of an index that holds items: reset() it first")
        self._use_centres(centres)
        return self

    def _use_centres(self, centres: np.ndarray) -> None:
        self._centres = np.ascontiguousarray(centres & self._mask)
        self._assigner = faiss.IndexBinaryFlat(self.bits)
        self._assigner.add(self._centres)

    def _train(self, codes: np.ndarray) -> None:
        if self.ntotal:
            raise RuntimeError("cannot retrain an index that holds items: reset() it first")
        signs = np.unpackbits(codes, axis=1, count=self.prefix_bits).astype(np.int8) * 2 - 1
        seeds = kmeanspp_centres(signs, self.nbuckets, np.random.default_rng(self.seed), name="nbuckets",
                                 hint=" or train on more varied codes")
        centres, _ = binary_kmeans(signs, seeds, max_rounds=self.kmeans_iters)
        rest = -np.ones((self.nbuckets, self.bits - self.prefix_bits), np.int8)  # beyond the prefix: bit 0
        self.set_centres(pack_signs(np.concatenate([centres, rest], axis=1)))

    def assign(self, codes: np.ndarray, e: int = 1) -> np.ndarray:
        """(n, e) int64: the ``e`` nearest buckets of each code, nearest first."""
        codes = check_codes(codes, self.bits)
        if self._assigner is None:
            raise RuntimeError("BucketIndex has no centres: train(codes) or set_centres() first, "
                               "or pass buckets= with the bucket ids")
        return self._assigner.search(np.ascontiguousarray(codes & self._mask), min(e, self.nbuckets))[1]

    def _needs_training(self, **kwargs: Any) -> bool:
        return self._centres is None and kwargs.get("buckets") is None

    def _check_buckets(self, buckets: Any, n: int, name: str) -> np.ndarray:
        arr = np.asarray(buckets)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"{name} must be integer bucket ids, got dtype {arr.dtype}")
        if arr.ndim not in (1, 2) or len(arr) != n:
            raise ValueError(f"{name} has shape {arr.shape}, expected ({n},) or ({n}, e): one row per code")
        return arr.astype(np.int64)

    def _add(self, codes: np.ndarray, ids: np.ndarray, buckets: Any = None) -> None:
        """``buckets``: (n,) bucket id of each item, instead of its nearest centre."""
        if buckets is None:
            buckets = self.assign(codes)[:, 0]
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

    def probe(self, codes: np.ndarray, k: int) -> np.ndarray:
        """(nq, width) buckets each query scans, nearest first, -1 padded: its ``e`` nearest, and then
        the next nearest until they hold at least ``k`` items (or all there are).

        Why: UDDH scans the query's own buckets only (§III-C), which answers fewer than ``k`` hits
        whenever those hold fewer than ``k`` items; a caller asking for ``k`` from a gallery of at
        least ``k`` must get ``k``. Our choice, where the paper is silent: widen in order of centre
        distance, the same order that picked the first buckets, so the hits stay the nearest buckets'.
        """
        codes = check_codes(codes, self.bits)
        first = self.assign(codes, self.e)
        if self._sizes is None:
            self._sizes = self.list_sizes()
        need = min(int(k), self.ntotal)
        short = np.flatnonzero(self._sizes[first].sum(axis=1) < need)
        if not len(short):
            return first
        ranked = self.assign(codes[short], self.nbuckets)  # the rows that need more: every bucket, nearest first
        held = np.cumsum(self._sizes[ranked], axis=1)
        reach = np.maximum((held < need).sum(axis=1) + 1, first.shape[1])
        width = int(min(reach.max(), self.nbuckets))
        out = np.full((len(codes), width), -1, dtype=np.int64)
        out[:, :first.shape[1]] = first
        wide = ranked[:, :width].copy()
        wide[np.arange(width)[None, :] >= reach[:, None]] = -1
        out[short] = wide
        return out

    def _search(self, codes: np.ndarray, k: int, buckets: Any = None) -> SearchResult:
        """``buckets``: (nq,) or (nq, e) bucket ids per query, best first, instead of :meth:`probe`'s
        choice; -1 entries and repeats are skipped (and a caller's buckets are scanned as given)."""
        if buckets is None:
            buckets = self.probe(codes, k)
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
        return {"nbuckets": self.nbuckets, "e": self.e, "prefix_bits": self.prefix_bits,
                "kmeans_iters": self.kmeans_iters, "seed": self.seed}

    def _arrays(self) -> dict[str, np.ndarray]:
        return {} if self._centres is None else {"centres": self._centres}

    @classmethod
    def _restore(cls, bits, params, faiss_index, arrays) -> "BucketIndex":
        """Indexes saved before the index had centres hold ``{"nbuckets"}`` only and load without any."""
        index = super()._restore(bits, params, faiss_index, arrays)
        index._ivf.is_trained = True
        if "centres" in arrays:
            centres = check_codes(arrays["centres"], bits, "saved centres")
            if len(centres) != index.nbuckets:
                raise ValueError(f"saved centres have {len(centres)} rows, expected nbuckets={index.nbuckets}")
            index._use_centres(centres)
        return index
