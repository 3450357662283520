"""The held-out train images every tuning script of this project chooses on (never the test split).

They are the lite trainer's validation draw (``scripts/train_lite.py``: the first 500 of a seeded
permutation of the 6,000 Flickr8K train images). Stage-1 choices depend on gallery size, so the
galleries are padded to the test split's 1,000 images / 5,000 captions with the next 500 images of
the same permutation and their captions: distractors that are never queried.
"""

from __future__ import annotations

from dataclasses import dataclass

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
