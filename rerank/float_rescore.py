"""Stage 2 at its cheapest: exact cosine of the query's float vector against the candidates'.

The binary-then-float recipe of sentence-transformers' ``quantization.py`` (and faiss' refine
step): Hamming search over-fetches, float vectors read only for the candidates restore most of the
float ranking. Needs the query embedding and the candidates' stored vectors.
"""

from __future__ import annotations

import numpy as np

from .base import Candidates, Query, Reranker, register_reranker


def cosine(query: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Cosine of one (dim,) query against (m, dim) vectors, exact even for non-unit inputs."""
    query = np.asarray(query, dtype=np.float32).ravel()
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.shape[1] != query.shape[0]:
        raise ValueError(f"query has dim {query.shape[0]} but candidate vectors have dim {vectors.shape[1]}")
    norms = np.maximum(np.linalg.norm(vectors, axis=1), 1e-12) * max(float(np.linalg.norm(query)), 1e-12)
    return (vectors @ query / norms).astype(np.float32)


@register_reranker
class FloatReranker(Reranker):
    """``create_reranker("float")``."""

    method = "float"
    requires = frozenset({"query_embedding", "embeddings"})
    same_modality = True

    def score(self, query: Query, candidates: Candidates) -> np.ndarray:
        self.check(query, candidates)
        return cosine(query.embedding, candidates.embeddings)
