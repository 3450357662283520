"""Float rescoring of stage-1 candidates: exact cosine against stored float vectors, then re-sort.

The binary-search-then-rescore recipe of sentence-transformers' ``quantization.py``: Hamming
search over-fetches candidates cheaply, and the float vectors, read only for those candidates,
restore most of the float ranking. Candidates with equal cosine keep their stage-1 (Hamming)
order (a stable sort); padding (id -1) sorts last with score ``-inf``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..base import as_features
from .base import check_k


@dataclass(frozen=True, eq=False)
class RescoreResult:
    ids: np.ndarray  # int64 (nq, k), -1 padded
    scores: np.ndarray  # float32 cosine (nq, k), -inf padded

    def __iter__(self):
        return iter((self.ids, self.scores))


class Rescorer:
    """Holds the float vectors of the indexed items: ``vectors[j]`` belongs to ``ids[j]``.

    ``ids=None`` means the id of a vector is its row. The vectors are referenced, not copied
    (when already float32), and normalised per candidate at rescore time: cosine is exact even
    for vectors that are not unit-length.
    """

    def __init__(self, vectors: np.ndarray, ids: np.ndarray | None = None) -> None:
        self.vectors = as_features(vectors, "vectors")
        if ids is None:
            self._sorted_ids = self._order = None
        else:
            ids = np.asarray(ids)
            if ids.shape != (len(vectors),) or not np.issubdtype(ids.dtype, np.integer):
                raise ValueError(f"ids must be {len(vectors)} integers (one per vector), "
                                 f"got dtype {ids.dtype} with shape {ids.shape}")
            self._order = np.argsort(ids, kind="stable")
            self._sorted_ids = ids.astype(np.int64)[self._order]
            if len(ids) > 1 and (np.diff(self._sorted_ids) == 0).any():
                raise ValueError("ids must be unique")

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ``ids`` in :attr:`vectors` (-1 stays -1); unknown ids are a KeyError."""
        ids = np.asarray(ids, dtype=np.int64)
        valid = ids >= 0
        if self._sorted_ids is None:
            rows = ids.copy()
            missing = valid & (ids >= len(self.vectors))
        else:
            pos = np.searchsorted(self._sorted_ids, ids).clip(max=len(self._sorted_ids) - 1)
            missing = valid & (self._sorted_ids[pos] != ids)
            rows = np.where(valid, self._order[pos], -1)
        if missing.any():
            raise KeyError(f"candidate ids without a stored vector: {ids[missing][:5].tolist()}")
        return rows

    def rescore(self, queries: np.ndarray, candidate_ids: np.ndarray, k: int | None = None,
                batch_size: int = 256) -> RescoreResult:
        """Cosine of each query with each of its candidates, sorted descending; top ``k`` kept."""
        if k is not None:
            k = check_k(k)
        queries = as_features(queries, "queries", self.vectors.shape[1])
        candidate_ids = np.asarray(candidate_ids)
        if candidate_ids.ndim != 2 or len(candidate_ids) != len(queries):
            raise ValueError(f"candidate_ids must be (nq={len(queries)}, m), got shape {candidate_ids.shape}")
        queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        rows = self.rows(candidate_ids)
        scores = np.full(rows.shape, -np.inf, dtype=np.float32)
        for s in range(0, len(queries), batch_size):  # bounds the (batch, m, d) gather
            r = rows[s:s + batch_size]
            cand = self.vectors[np.maximum(r, 0)]
            sc = np.matmul(cand, queries[s:s + batch_size, :, None])[..., 0]
            sc /= np.maximum(np.linalg.norm(cand, axis=2), 1e-12)
            scores[s:s + batch_size] = np.where(r >= 0, sc, -np.inf)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        ids = np.take_along_axis(candidate_ids.astype(np.int64), order, axis=1)
        out_scores = np.take_along_axis(scores, order, axis=1)
        ids[~np.isfinite(out_scores)] = -1
        return RescoreResult(ids, out_scores)


def rescore(queries: np.ndarray, candidate_ids: np.ndarray, vectors: np.ndarray,
            ids: np.ndarray | None = None, k: int | None = None) -> RescoreResult:
    """One-off :meth:`Rescorer.rescore`; build a :class:`Rescorer` once when rescoring repeatedly."""
    return Rescorer(vectors, ids).rescore(queries, candidate_ids, k)
