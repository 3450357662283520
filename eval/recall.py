"""Recall@K for image-text retrieval, Karpathy protocol, tie-aware.

A query counts a hit at K when any relevant item ranks in its top K (image->text: any of the
image's captions; text->image: the caption's image). Where the best relevant item's score ties
with others, the order inside the tie is taken as uniformly random and the *expected* hit rate
is returned, so results never depend on an arbitrary tie-break. With continuous float scores
there are no ties and this equals the usual count (and CLIP_benchmark's ``recall_at_k``).

Keys follow CLIP_benchmark: ``image_retrieval_recall@K`` is text->image, ``text_retrieval_recall@K``
is image->text, in [0, 1]. ``rsum`` is the sum of the six recalls in percent (0..600), as in the
VSE++/SCAN line of papers.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

DEFAULT_KS = (1, 5, 10)


def expected_hits(scores: np.ndarray, relevant: np.ndarray, ks: Iterable[int]) -> dict[int, np.ndarray]:
    """Per-query probability that a relevant item is in the top K under random tie order.

    ``scores`` and ``relevant`` are (n_queries, n_items); higher scores rank first. With ``g`` items
    strictly above the best relevant score and ``t`` items tied with it, ``r`` of them relevant,
    the first relevant item lands among the first ``m = K - g`` tied places with probability
    ``1 - C(t - r, m) / C(t, m)``.
    """
    scores = np.asarray(scores)
    relevant = np.asarray(relevant, dtype=bool)
    if scores.shape != relevant.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and relevant {relevant.shape} must be equal 2-D shapes")
    if not relevant.any(axis=1).all():
        bad = int(np.flatnonzero(~relevant.any(axis=1))[0])
        raise ValueError(f"query {bad} has no relevant item")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    best = np.where(relevant, scores, -np.inf).max(axis=1, keepdims=True)
    above = (scores > best).sum(axis=1)
    tied = scores == best
    n_tied = tied.sum(axis=1)
    r_tied = (tied & relevant).sum(axis=1)
    out = {}
    for k in ks:
        if k < 1:
            raise ValueError(f"K must be >= 1, got {k}")
        m = np.clip(k - above, 0, n_tied)
        miss = np.ones(len(scores))
        for j in range(int(m.max(initial=0))):
            active = j < m
            ratio = np.clip(n_tied - r_tied - j, 0, None) / np.maximum(n_tied - j, 1)
            miss = np.where(active, miss * ratio, miss)
        out[int(k)] = 1.0 - miss
    return out


def retrieval_recall(
    similarity: np.ndarray, caption_image: np.ndarray, ks: Iterable[int] = DEFAULT_KS
) -> dict[str, float]:
    """R@K both directions from a (n_captions, n_images) similarity matrix.

    ``caption_image[j]`` is the index of the image that caption ``j`` describes.
    """
    similarity = np.asarray(similarity)
    return two_way_recall(similarity, similarity.T, caption_image, ks)


def two_way_recall(
    text_to_image: np.ndarray, image_to_text: np.ndarray, caption_image: np.ndarray, ks: Iterable[int] = DEFAULT_KS,
    text_query_rows: np.ndarray | None = None,
) -> dict[str, float]:
    """R@K when each direction has its own scores: (n_queries, n_images) and (n_images, n_captions).

    A reranked pipeline scores only each query's candidates, so the two directions no longer share
    one matrix (use ``-inf`` for items outside a query's candidates). Text queries are all captions
    in order, or the captions ``text_query_rows`` (e.g. one per image).
    """
    text_to_image, image_to_text = np.asarray(text_to_image), np.asarray(image_to_text)
    caption_image = np.asarray(caption_image)
    rows = np.arange(len(caption_image)) if text_query_rows is None else np.asarray(text_query_rows)
    if rows.ndim != 1 or (len(rows) and (rows.min() < 0 or rows.max() >= len(caption_image))):
        raise ValueError(f"text_query_rows must be caption indices in [0, {len(caption_image)})")
    if text_to_image.ndim != 2 or text_to_image.shape[0] != len(rows):
        rows_name = "n_captions" if text_query_rows is None else "len(text_query_rows)"
        raise ValueError(
            f"text->image scores must be ({rows_name}, n_images) = ({len(rows)}, n_images), got {text_to_image.shape}"
        )
    if image_to_text.shape != (text_to_image.shape[1], len(caption_image)):
        raise ValueError(f"image->text scores must be {(text_to_image.shape[1], len(caption_image))}, "
                         f"got {image_to_text.shape}")
    if caption_image.min(initial=0) < 0 or caption_image.max(initial=0) >= text_to_image.shape[1]:
        raise ValueError("caption_image holds image indices outside the similarity matrix")
    ks = tuple(ks)
    positives = np.zeros(image_to_text.shape[::-1], dtype=bool)
    positives[np.arange(len(caption_image)), caption_image] = True
    t2i = expected_hits(text_to_image, positives[rows], ks)
    i2t = expected_hits(image_to_text, positives.T, ks)
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = float(t2i[k].mean())
        metrics[f"text_retrieval_recall@{k}"] = float(i2t[k].mean())
    metrics["rsum"] = 100.0 * sum(metrics[f"{d}_retrieval_recall@{k}"] for d in ("image", "text") for k in ks)
    return metrics
