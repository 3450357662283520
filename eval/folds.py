"""COCO 1K: the 5,000 Karpathy test images cut into 5 folds of 1,000, R@K averaged over folds.

Two COCO numbers circulate and are not comparable. **COCO 5K** ranks against all 5,000 test images
and their ~25,000 captions; CLIP_benchmark (``clip_benchmark/datasets/builder.py`` reads
``coco_test_karpathy.json``, no folds) and open_clip's published retrieval table report this one.
**COCO 1K** is VSE++'s ``evalrank(..., fold5=True)`` (``fartashf/vsepp`` ``evaluation.py``): the
test images in Karpathy order are cut into 5 *consecutive* blocks of 1,000 (with their captions),
each block is evaluated on its own, and every metric is the mean over the 5 blocks. Evaluation
scripts derived from it (SGRAF, GSMN, CAMERA) keep the same ``fold5`` switch for "COCO 1K".

Each fold is a closed retrieval problem: a caption's candidates are the 1,000 images of its fold,
an image's candidates the captions of its fold. Averaging is per metric (rsum of the mean equals
the mean of the rsums, since rsum is a sum).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from common.checks import check_int

from .karpathy import CaptionDataset
from .recall import DEFAULT_KS, retrieval_recall

COCO_TEST_IMAGES = 5000
N_FOLDS = 5


def fold_indices(dataset: CaptionDataset, n_folds: int = N_FOLDS) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each fold, ``(image_indices, caption_indices)`` into ``dataset``: consecutive images,
    all their captions. Slice precomputed embeddings with these to evaluate folds without
    re-encoding."""
    n_folds = check_int("n_folds", n_folds)
    if dataset.n_images % n_folds:
        raise ValueError(
            f"{dataset.name} {dataset.split} has {dataset.n_images} images, not divisible into {n_folds} equal folds "
            f"(COCO 1K needs the {COCO_TEST_IMAGES} Karpathy test images)"
        )
    size = dataset.n_images // n_folds
    folds = []
    for k in range(n_folds):
        images = np.arange(k * size, (k + 1) * size, dtype=np.int64)
        folds.append((images, dataset.selected_captions(images)))
    return folds


def fold_subsets(dataset: CaptionDataset, n_folds: int = N_FOLDS) -> list[CaptionDataset]:
    """The folds as datasets of their own (split named ``"test fold 1/5"`` etc.)."""
    return [dataset.select(images, split=f"{dataset.split} fold {k + 1}/{n_folds}")
            for k, (images, _) in enumerate(fold_indices(dataset, n_folds))]


def average_metrics(per_fold: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The mean of each metric over folds; every fold must report the same metric names."""
    if not per_fold:
        raise ValueError("average_metrics needs at least one fold's metrics")
    keys = list(per_fold[0])
    for k, metrics in enumerate(per_fold):
        if set(metrics) != set(keys):
            missing = sorted(set(keys) ^ set(metrics))
            raise ValueError(f"fold {k} reports different metrics from fold 0: {', '.join(missing)}")
        for name, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise TypeError(f"fold {k} metric {name!r} is {type(value).__name__}, expected a number")
    return {name: float(np.mean([m[name] for m in per_fold])) for name in keys}


def fold_recall(
    image_embeddings: np.ndarray, text_embeddings: np.ndarray, dataset: CaptionDataset,
    n_folds: int = N_FOLDS, ks: tuple[int, ...] = DEFAULT_KS,
) -> dict[str, object]:
    """COCO 1K from embeddings of the whole split: ``{"folds": [metrics...], "mean": metrics}``.

    ``image_embeddings`` (n_images, d) and ``text_embeddings`` (n_captions, d) are in ``dataset``
    order; scores are dot products, as :func:`eval.retrieval.evaluate_embeddings` uses.
    """
    image_embeddings, text_embeddings = np.asarray(image_embeddings), np.asarray(text_embeddings)
    if image_embeddings.ndim != 2 or len(image_embeddings) != dataset.n_images:
        raise ValueError(f"image_embeddings must be ({dataset.n_images}, d), got {image_embeddings.shape}")
    if text_embeddings.ndim != 2 or len(text_embeddings) != len(dataset.captions):
        raise ValueError(f"text_embeddings must be ({len(dataset.captions)}, d), got {text_embeddings.shape}")
    folds = []
    for images, captions in fold_indices(dataset, n_folds):
        owner = dataset.caption_image[captions] - images[0]
        similarity = text_embeddings[captions] @ image_embeddings[images].T
        folds.append(retrieval_recall(similarity, owner, ks))
    return {"folds": folds, "mean": average_metrics(folds)}
