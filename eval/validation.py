"""The held-out train images every tuning script of this project chooses on (never the test split).

They are the lite trainer's validation draw (``scripts/train_lite.py``: the first 500 of a seeded
permutation of the 6,000 Flickr8K train images). Stage-1 choices depend on gallery size, so the
galleries are padded to the test split's 1,000 images / 5,000 captions with the next 500 images of
the same permutation and their captions: distractors that are never queried.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class HeldOut:
    val_images: np.ndarray     # train image indices queried (500)
    gallery_images: np.ndarray  # val + padding images (1,000)
    val_captions: np.ndarray   # caption indices of the val images (2,500), queried
    gallery_captions: np.ndarray  # captions of the gallery images (5,000)
    fit_captions: np.ndarray   # captions of every train image outside the val draw (27,500)


def held_out_train(caption_image: np.ndarray, n_images: int, n_val: int = 500, n_pad: int = 500,
                   seed: int = 0) -> HeldOut:
    owner = np.asarray(caption_image)
    order = np.random.default_rng(seed).permutation(n_images)
    val, pad = np.sort(order[:n_val]), np.sort(order[n_val:n_val + n_pad])
    val_caps = np.flatnonzero(np.isin(owner, val))
    return HeldOut(val, np.concatenate([val, pad]), val_caps,
                   np.concatenate([val_caps, np.flatnonzero(np.isin(owner, pad))]),
                   np.flatnonzero(~np.isin(owner, val)))


class HeldOutGalleries:
    """Flickr8K train embedded by the lite encoder, split as :func:`held_out_train`, ready to measure
    how much of the float top-10 a hasher keeps among the candidates handed to stage 2."""

    def __init__(self, dataset: Any, images: Any, cache_dir: Any = None, candidates: int = 128) -> None:
        from retrieval import load_encoder

        from .karpathy import load_karpathy
        from .retrieval import embed_dataset

        self.train = load_karpathy(dataset, images, "train")
        self.encoder = load_encoder("lite")
        self.emb = embed_dataset(self.encoder, self.train, cache_dir=cache_dir)
        self.held = held_out_train(self.train.caption_image, self.train.n_images)
        self.candidates = candidates
        owner = np.asarray(self.train.caption_image)
        #: the pairs a hasher may be fitted on (every train image outside the held-out draw)
        self.fit_pairs = (self.emb.images[owner[self.held.fit_captions]], self.emb.texts[self.held.fit_captions],
                          owner[self.held.fit_captions])

    def kept(self, hasher: Any, hamming_candidates: int | None = None) -> dict[str, float]:
        """Share of the float top-10 among the candidates, by gallery searched: "image" for text queries."""
        from .two_stage import gallery_retriever, recall_ceiling

        h, emb, n = self.held, self.emb, self.candidates
        r = gallery_retriever(self.encoder, hasher, [None] * len(h.gallery_images), emb.images[h.gallery_images],
                              [self.train.captions[j] for j in h.gallery_captions], emb.texts[h.gallery_captions], n,
                              hamming_candidates=hamming_candidates)
        return {"image": recall_ceiling(r, emb.texts[h.val_captions], "text", emb.images[h.gallery_images], n),
                "text": recall_ceiling(r, emb.images[h.val_images], "image", emb.texts[h.gallery_captions], n)}
