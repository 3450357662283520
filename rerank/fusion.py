"""Fusing stage-1 and stage-2 scores.

Stage-1 scores (Hamming similarity) and stage-2 scores (cosine, ITM probability, logits) live on
different scales, so each is standardised over the candidate list before mixing::

    final = z(stage2) + weight * z(stage1),   z(s) = (s - mean(s)) / std(s)

``weight = 0`` (the default everywhere) ranks by stage 2 alone; ties in stage 2 then keep their
stage-1 order, because the caller sorts stably on ``final`` from stage-1 order. A constant list
(std 0) standardises to zeros, so it cannot dominate the other term.
"""

from __future__ import annotations

import numpy as np


def standardize(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(scores)
    out = np.full(scores.shape, -np.inf)
    if finite.any():
        s = scores[finite]
        std = s.std()
        out[finite] = (s - s.mean()) / std if std > 0 else 0.0
    return out


def fuse(stage1: np.ndarray | None, stage2: np.ndarray, weight: float = 0.0) -> np.ndarray:
    """``z(stage2) + weight * z(stage1)`` as float32; ``stage1`` may be None only when weight is 0."""
    if weight < 0:
        raise ValueError(f"fusion weight must be >= 0, got {weight}")
    if weight == 0:
        return np.asarray(stage2, dtype=np.float32)
    if stage1 is None:
        raise ValueError("fusion weight > 0 needs stage-1 scores (Candidates.stage1_scores)")
    if np.shape(stage1) != np.shape(stage2):
        raise ValueError(f"stage-1 scores {np.shape(stage1)} and stage-2 scores {np.shape(stage2)} differ in shape")
    return (standardize(stage2) + weight * standardize(stage1)).astype(np.float32)
