"""Hamming distances between packed binary codes, the one implementation the package uses.

The binary k-means of UDDH's semantic index and of ``BucketIndex.train``
(:mod:`hashing.binary_kmeans`), the evaluation metrics and the reference rankings all call
:func:`hamming_distances` or :class:`HammingDistances`; faiss' own indexes (among them the
bucketed index's assigner, and the torch kernel of ``gpu_flat``) compute them inside their search. Codes are packed uint8 ``(n, bits // 8)``, ``numpy.packbits`` order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Query-item-word triples per XOR block: bounds the temporary (n_block, n_items, words) array.
BLOCK_ELEMENTS = 1 << 21


def check_packed_codes(codes: Any, name: str) -> np.ndarray:
    arr = np.asarray(codes)
    if arr.dtype != np.uint8:
        raise TypeError(f"{name} must be packed uint8 codes (numpy.packbits order), got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be 2-D (n, bits // 8), got shape {arr.shape}")
    return arr


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


class HammingDistances:
    """Hamming distances between packed query and item codes, a block of queries at a time.

    XOR of the codes viewed as uint64 words (zero-padded; padding XORs to 0) and a popcount:
    ``numpy.bitwise_count`` where numpy has it (>= 2.0), else a byte lookup table.
    """

    def __init__(self, query_codes: np.ndarray, item_codes: np.ndarray) -> None:
        q = check_packed_codes(query_codes, "query_codes")
        db = check_packed_codes(item_codes, "item_codes")
        if q.shape[1] != db.shape[1]:
            raise ValueError(
                f"query_codes have {q.shape[1] * 8} bits but item_codes have {db.shape[1] * 8}; "
                "both sides must come from the same hasher"
            )
        self.bits = 8 * q.shape[1]
        self.shape = (q.shape[0], db.shape[0])
        if hasattr(np, "bitwise_count"):
            pad = -q.shape[1] % 8
            self._q = np.ascontiguousarray(np.pad(q, ((0, 0), (0, pad)))).view(np.uint64)
            self._db = np.ascontiguousarray(np.pad(db, ((0, 0), (0, pad)))).view(np.uint64)
            self._count = np.bitwise_count
        else:  # pragma: no cover - numpy < 2
            self._q, self._db, self._count = q, db, _POPCOUNT.__getitem__

    def block(self, start: int, stop: int) -> np.ndarray:
        """(stop - start, n_items) uint16 distances."""
        n, words = self._db.shape
        out = np.empty((stop - start, n), dtype=np.uint16)
        step = max(1, BLOCK_ELEMENTS // max(1, n * words))
        for s in range(start, stop, step):
            e = min(stop, s + step)
            x = self._q[s:e, None, :] ^ self._db[None, :, :]
            out[s - start:e - start] = self._count(x).sum(axis=2, dtype=np.uint16)
        return out


def hamming_distances(query_codes: np.ndarray, item_codes: np.ndarray) -> np.ndarray:
    """The full (n_queries, n_items) Hamming distance matrix between packed codes."""
    source = HammingDistances(query_codes, item_codes)
    return source.block(0, source.shape[0])


def hamming_distances_at(query_codes: np.ndarray, item_codes: np.ndarray, rows: np.ndarray,
                         pad_distance: int) -> np.ndarray:
    """(n_queries, k) int64 distances of query i to the items at ``rows[i]`` only.

    For checking what an index returned without the full matrix (a benchmark's database has
    millions of rows). A negative row is an index's padding (id -1): it gets ``pad_distance``,
    which the caller picks to sort last (e.g. ``hashing.index.PAD_DISTANCE``).
    """
    q = check_packed_codes(query_codes, "query_codes")
    db = check_packed_codes(item_codes, "item_codes")
    rows = np.asarray(rows)
    if q.shape[1] != db.shape[1]:
        raise ValueError(f"query_codes have {q.shape[1] * 8} bits but item_codes have {db.shape[1] * 8}")
    if rows.ndim != 2 or rows.shape[0] != q.shape[0] or not np.issubdtype(rows.dtype, np.integer):
        raise ValueError(f"rows must be integer (n_queries={q.shape[0]}, k), got {rows.dtype} {rows.shape}")
    if rows.size and rows.max() >= db.shape[0]:
        raise ValueError(f"rows must be < the {db.shape[0]} items (negative for padding), got {int(rows.max())}")
    count = np.bitwise_count if hasattr(np, "bitwise_count") else _POPCOUNT.__getitem__
    d = count(q[:, None, :] ^ db[np.maximum(rows, 0)]).sum(axis=2, dtype=np.int64)
    return np.where(rows >= 0, d, np.int64(pad_distance))
