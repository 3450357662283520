"""Two-stage evaluation through the product's own search path.

The test gallery goes into a :class:`retrieval.Retriever` (precomputed embeddings, a hasher fitted
elsewhere), and every query of both directions is answered by ``Retriever.search_embeddings`` with
``k = candidates``: stage 1 (Hamming top-``candidates``), then the reranker under test. Items
outside a query's candidates score ``-inf``, so R@K is that of the pipeline a user runs, computed
tie-aware (``eval.recall``). "Hash only" (``rerank="none"``) ranks candidates by Hamming
similarity, whose ties are frequent and are averaged over.

Timings: each stage's total wall time over the batch run, and, separately, the median latency of
single ``Retriever.search`` calls (query encoding included) on a seeded sample of queries: what one
user waiting on one query sees.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from .recall import DEFAULT_KS, two_way_recall


def gallery_retriever(encoder: Any, hasher: Any, image_items: Sequence[Any], image_vectors: np.ndarray,
                      captions: Sequence[str], text_vectors: np.ndarray, candidates: int = 128,
                      index: str = "flat", hamming_candidates: Any = "default") -> Any:
    """A Retriever over one evaluation split, from embeddings already computed.

    ``hamming_candidates``: the stage-1 cascade depth (``Retriever``'s argument); "default" keeps
    the Retriever's default.
    """
    from retrieval import Retriever

    extra = {} if hamming_candidates == "default" else {"hamming_candidates": hamming_candidates}
    retriever = Retriever(encoder, hasher, index=index, candidates=candidates, **extra)
    retriever.add_vectors("image", image_vectors, [str(p) if isinstance(p, Path) else p for p in image_items],
                          [{"row": i} for i in range(len(image_items))])
    retriever.add_vectors("text", text_vectors, list(captions), [{"row": j} for j in range(len(captions))])
    return retriever


def ranked_scores(retriever: Any, vectors: np.ndarray, modality: str, queries: Sequence[Any] | None,
                  n_items: int, candidates: int, rerank: Any, batch_size: int = 64,
                  progress: bool | None = None, desc: str = "") -> np.ndarray:
    """(n_queries, n_items) final scores of each query's candidates, -inf elsewhere."""
    out = np.full((len(vectors), n_items), -np.inf, dtype=np.float32)
    for s in tqdm(range(0, len(vectors), batch_size), desc=desc, disable=progress is False or len(vectors) <= batch_size):
        chunk = slice(s, s + batch_size)
        hits = retriever.search_embeddings(vectors[chunk], modality, None if queries is None else queries[chunk],
                                           k=candidates, candidates=candidates, rerank=rerank)
        for row, row_hits in enumerate(hits, s):
            for h in row_hits:
                out[row, h.id] = h.score
    return out


def evaluate_pipeline(retriever: Any, caption_image: np.ndarray, image_vectors: np.ndarray,
                      text_vectors: np.ndarray, image_queries: Sequence[Any], text_queries: Sequence[str],
                      rerank: Any, candidates: int = 128, ks: tuple[int, ...] = DEFAULT_KS,
                      text_query_vectors: np.ndarray | None = None, progress: bool | None = None,
                      text_query_rows: np.ndarray | None = None) -> dict[str, Any]:
    """R@K both directions and per-stage wall time for one pipeline (``rerank`` None/"none" = hash only).

    ``text_queries`` / ``text_query_vectors`` may replace the captions as text queries (keyword-style
    queries); the query of caption ``j`` still has caption ``j``'s image as its answer. With
    ``text_query_rows``, text query ``r`` stands for caption ``text_query_rows[r]`` (a subset of the
    captions, e.g. one per image); image queries always search all captions.
    """
    name = rerank if isinstance(rerank, str) or rerank is None else rerank.method
    rerank = False if rerank in (None, "none") else rerank
    t_vectors = text_vectors if text_query_vectors is None else text_query_vectors
    n_images, n_texts = len(image_vectors), len(text_vectors)
    t0 = time.perf_counter()
    t2i = ranked_scores(retriever, t_vectors, "text", text_queries, n_images, candidates, rerank,
                        progress=progress, desc=f"{name or 'hash'} text->image")
    t1 = time.perf_counter()
    i2t = ranked_scores(retriever, image_vectors, "image", image_queries, n_texts, candidates, rerank,
                        progress=progress, desc=f"{name or 'hash'} image->text")
    t2 = time.perf_counter()
    metrics = two_way_recall(t2i, i2t, caption_image, ks, text_query_rows=text_query_rows)
    ceiling = {"text_to_image": float_top_kept(t2i, t_vectors, image_vectors),
               "image_to_text": float_top_kept(i2t, image_vectors, text_vectors)}
    return {**metrics, "pipeline": name or "none", "candidates": candidates,
            "hamming_candidates": dict(retriever.hamming_candidates), "float_top10_kept": ceiling,
            "seconds": {"text_to_image": t1 - t0, "image_to_text": t2 - t1}}


def recall_ceiling(retriever: Any, query_vectors: np.ndarray, modality: str, gallery_vectors: np.ndarray,
                   candidates: int, top: int = 10) -> float:
    """Share of each query's exhaustive float top-``top`` among the candidates handed to the reranker.

    No reranker can rank first what stage 1 did not hand it, so this bounds every pipeline. The
    candidates are what ``search_embeddings(rerank=False, k=candidates)`` returns: the same lists a
    reranker receives (Hamming top-N, float-rescored to ``candidates`` when the cascade is on).
    """
    stage1 = ranked_scores(retriever, query_vectors, modality, None, len(gallery_vectors), candidates, False,
                           progress=False)
    return float_top_kept(stage1, query_vectors, gallery_vectors, top)


def float_top_kept(scores: np.ndarray, query_vectors: np.ndarray, gallery_vectors: np.ndarray,
                   top: int = 10) -> float:
    """The share of each query's exhaustive float top-``top`` that has a finite score in ``scores``
    (``ranked_scores`` output: -inf outside the candidates, whatever reranked them)."""
    kept = 0.0
    top = min(top, len(gallery_vectors))
    for start in range(0, len(query_vectors), 1024):
        sims = query_vectors[start:start + 1024] @ gallery_vectors.T
        best = np.argpartition(-sims, top - 1, axis=1)[:, :top]
        kept += float(np.isfinite(np.take_along_axis(scores[start:start + 1024], best, axis=1)).sum())
    return kept / (top * len(query_vectors))


def single_query_latency(retriever: Any, text_queries: Sequence[str], image_queries: Sequence[Any], rerank: Any,
                         candidates: int = 128, n: int = 50, seed: int = 0, k: int = 10) -> dict[str, float]:
    """Median and 90th-percentile milliseconds of one ``Retriever.search`` (encoding included).

    The first query of each direction is run once untimed (warm-up: lazy loads, caches of code).
    What a reranker cached for the timed query itself (its features, its LLM rewrites, perhaps from
    the batch run) is dropped first (``Reranker.forget``); what it cached for the gallery items is
    kept, as in a long-running service.
    """
    from rerank.base import Query, Reranker

    rng = np.random.default_rng(seed)
    rerank = False if rerank in (None, "none") else rerank
    out = {}
    directions = (("text_to_image", "text", text_queries), ("image_to_text", "image", image_queries))
    for direction, modality, pool in directions:
        picks = rng.choice(len(pool), min(n, len(pool)), replace=False)
        retriever.search(pool[picks[0]], k=k, candidates=candidates, rerank=rerank)
        times = []
        for i in picks:
            q = pool[i]
            if isinstance(rerank, Reranker):
                rerank.forget(Query(modality, q))
            t0 = time.perf_counter()
            retriever.search(q, k=k, candidates=candidates, rerank=rerank)
            times.append(1000 * (time.perf_counter() - t0))
        out[f"{direction}_median_ms"] = float(np.median(times))
        out[f"{direction}_p90_ms"] = float(np.percentile(times, 90))
    out["n_queries"] = int(min(n, len(text_queries)))
    return out
