"""Iterative quantization (ITQ, Gong & Lazebnik, CVPR 2011 / TPAMI 2013), fitted on both modalities.

Same-dim features (CLIP-like): PCA of the stacked, per-modality centred image and text features,
then the ITQ rotation, so one set of hyperplanes serves both. Different dims (Wiki SIFT vs LDA):
CCA-ITQ (TPAMI 2013 §4): canonical variates of both modalities, scaled by their correlations, are
stacked and rotated. See :mod:`hashing.lsh` for the shared space.

More bits than shared dimensions (Wiki's CCA space has 10 dims; 16..128 bits are asked for): the
``k``-dim data are zero-padded to ``bits`` dims and a ``bits x bits`` rotation is learnt, i.e. an
over-complete frame of ``bits`` hyperplanes whose first ``k`` coordinates carry the data. The
Procrustes step is unchanged, and at ``bits <= k`` this is exactly ITQ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from common.checks import check_int

from .base import register_hasher
from .lsh import LinearConfig, LinearHasher, fit_shared_space


def pca_basis(z: np.ndarray, k: int) -> np.ndarray:
    """Top-``k`` principal directions (d, k) of already-centred rows ``z``, largest first."""
    w, v = np.linalg.eigh(np.asarray(z, np.float64).T @ z / max(len(z) - 1, 1))
    v = v[:, np.argsort(w)[::-1][:k]]
    # eigh's sign per vector is arbitrary; fix it so a basis does not depend on LAPACK details
    return v * np.where(v[np.abs(v).argmax(0), np.arange(v.shape[1])] < 0, -1.0, 1.0)


def itq_rotation(
    v: np.ndarray, n_iter: int = 50, seed: int = 0
) -> tuple[np.ndarray, list[float]]:
    """ITQ: the orthogonal ``R`` minimising ``||sign(VR) - VR||_F^2``, and the error per iteration.

    ``errors[0]`` is the error of the random initial rotation, ``errors[-1]`` of the returned one.
    """
    v = np.asarray(v, np.float64)
    rng = np.random.default_rng(seed)
    r, _ = np.linalg.qr(rng.standard_normal((v.shape[1], v.shape[1])))
    errors = []
    for _ in range(n_iter):
        vr = v @ r
        b = np.where(vr >= 0, 1.0, -1.0)
        errors.append(float(((b - vr) ** 2).sum()))
        u, _, wt = np.linalg.svd(b.T @ v)
        r = wt.T @ u.T
    vr = v @ r
    errors.append(float(((np.where(vr >= 0, 1.0, -1.0) - vr) ** 2).sum()))
    return r, errors


def quantization_error(v: np.ndarray) -> float:
    """``||sign(V) - V||_F^2``: the loss ITQ's rotation lowers (PCA-sign has no rotation)."""
    v = np.asarray(v, np.float64)
    return float(((np.where(v >= 0, 1.0, -1.0) - v) ** 2).sum())


@dataclass(frozen=True)
class ITQConfig(LinearConfig):
    """:class:`LinearConfig` and ``n_iter``, the ITQ rotation's alternating steps."""

    n_iter: int = 50

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "n_iter", check_int("n_iter", self.n_iter))


@register_hasher
class ITQHasher(LinearHasher):
    """PCA-ITQ (same dims) or CCA-ITQ (different dims), one rotation shared by both modalities.

    Unsupervised: ``labels`` are accepted for interface compatibility and ignored.
    """

    method = "itq"

    config_class = ITQConfig

    def __init__(self, bits: int = 64, seed: int = 0, **settings: Any) -> None:
        """``settings``: the fields of :class:`ITQConfig`."""
        super().__init__(bits, seed, **settings)
        #: quantisation error per ITQ iteration of the last fit (diagnostic, not saved)
        self.quantization_errors_: list[float] = []

    def fit(
        self, image_features: np.ndarray, text_features: np.ndarray, labels: np.ndarray | None = None
    ) -> "ITQHasher":
        x, y, _ = self._prepare(image_features, text_features, labels)
        means, maps, corr = fit_shared_space(
            x, y, self.config.shared_space, self.config.center, self.config.cca_reg, self.config.cca_power,
            max_dim=self.bits
        )
        z = np.concatenate([(x - means["image"]) @ maps["image"], (y - means["text"]) @ maps["text"]])
        if corr is None:  # same space: PCA of both modalities together
            basis = pca_basis(z, min(self.bits, z.shape[1]))
            maps = {m: maps[m] @ basis for m in maps}
            z = z @ basis
        k = z.shape[1]
        v = np.pad(z, ((0, 0), (0, self.bits - k)))  # over-complete when bits > k, see module doc
        r, self.quantization_errors_ = itq_rotation(v, self.config.n_iter, self.seed)
        for m in ("image", "text"):
            self._set(m, means[m], maps[m] @ r[:k])
        return self
