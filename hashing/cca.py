"""Regularised linear CCA (Hotelling 1936), the one implementation the hashers share.

The linear hashers map modalities of different dimension into one space with it
(:func:`hashing.lsh.fit_shared_space`), and UDDH draws its initial codes from the canonical
variates (:meth:`hashing.uddh.UDDHHasher.fit`). It lives here, below both, so that neither
hasher imports the other for it.
"""

from __future__ import annotations

import numpy as np

from common.checks import check_int


def fit_cca(
    x: np.ndarray, y: np.ndarray, k: int, reg: float = 1e-3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Regularised CCA in closed form: ``(A (dx, k), B (dy, k), correlations (k,))``, strongest first.

    Columns of ``x @ A`` and ``y @ B`` (x, y centred) are unit-variance canonical variates (sample
    covariance over n - 1). ``reg`` is a ridge relative to the mean eigenvalue, which keeps
    near-singular covariances (LDA topic proportions sum to one) invertible. At most
    ``min(dx, dy)`` directions exist, and only ``n - 1`` of them carry information.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x (n, dx) and y (n, dy) must be paired 2-D arrays, got shapes {x.shape} and {y.shape}")
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"CCA needs at least 2 paired rows, got {n}")
    k = check_int("k", k, 1, min(x.shape[1], y.shape[1]), high_name="min(dx, dy)")

    def inv_sqrt(c: np.ndarray) -> np.ndarray:
        c = c + reg * max(np.trace(c) / len(c), 1e-12) * np.eye(len(c))
        w, v = np.linalg.eigh(c)
        return (v / np.sqrt(np.maximum(w, 1e-12))) @ v.T

    wx = inv_sqrt(x.T @ x / (n - 1))
    wy = inv_sqrt(y.T @ y / (n - 1))
    u, s, vt = np.linalg.svd(wx @ (x.T @ y / (n - 1)) @ wy)
    return wx @ u[:, :k], wy @ vt.T[:, :k], s[:k]
