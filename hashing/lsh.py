"""Linear hashers (``sign((t(x) - mean) @ W)``) and the random-projection LSH baseline.

Everything the linear hashers share lives here: input validation for ``fit``, the feature
transforms (a saved hasher carries its own preprocessing, so ``encode`` sees the same features as
``fit``), and the *shared space* that makes one set of hyperplanes meaningful for both modalities.

Shared space. A hyperplane only means the same thing for an image and a text if both live in one
space. CLIP-like embeddings already do (same dim, trained to align): there the shared space is the
features themselves, each modality centred on its own mean, which removes the constant
image/text offset ("modality gap") that would otherwise flip whole bits between modalities. When
the dims differ (Wiki: 128-d SIFT bag-of-words vs 10-d LDA topics) a random projection of each
modality would be two unrelated hash functions, so we first map both through CCA
(:func:`hashing.cca.fit_cca`, the one UDDH starts from too; Hotelling 1936;
the CCA step of CCA-ITQ, Gong & Lazebnik, CVPR 2011 / TPAMI 2013 §4): canonical variates of a
pair are maximally correlated, and scaling them by their correlation (``cca_power=1``) stresses
the directions the modalities agree on. CCA yields at most ``min(d_image, d_text)`` directions;
more bits than that are a redundant (over-complete) set of hyperplanes in that space.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from .base import Hasher, as_features, check_modality, register_hasher
from .cca import fit_cca

TRANSFORMS: tuple[str, ...] = ("auto", "none", "l2", "sqrt_l2")
SHARED_SPACES: tuple[str, ...] = ("auto", "none", "cca")
CENTERINGS: tuple[str, ...] = ("modality", "joint")


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return str(value)


def resolve_transform(how: str, x: np.ndarray) -> str:
    """``"auto"`` becomes ``"sqrt_l2"`` for non-negative training features (histograms, topic
    proportions, post-ReLU activations) and ``"l2"`` otherwise (signed embeddings such as CLIP).
    Resolved once at ``fit``; the saved config holds the resolved name."""
    if how != "auto":
        return how
    return "sqrt_l2" if x.size and x.min() >= 0 else "l2"


def apply_transform(x: np.ndarray, how: str, name: str) -> np.ndarray:
    """Row-wise feature transform; float32 in, float32 out.

    ``sqrt_l2`` is the Hellinger map for histograms such as SIFT bag-of-visual-words: the square
    root damps bursty visual words, then L2 makes dot products Bhattacharyya coefficients.
    """
    if how == "none":
        return x
    if how == "sqrt_l2":
        if x.size and x.min() < 0:
            raise ValueError(
                f"{name}: transform 'sqrt_l2' (Hellinger, for histograms) needs non-negative features, "
                f"got a minimum of {float(x.min()):.4g}; use 'l2' for signed embeddings"
            )
        x = np.sqrt(x)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def check_labels(labels: Any, n: int) -> np.ndarray:
    """Returns labels as a (n, c) float32 multi-hot matrix.

    Accepts (n,) integer class ids, (n, 1) integer class ids (the column vectors .mat files hold),
    or (n, c) multi-hot with values in {0, 1}.
    """
    arr = np.asarray(labels)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim not in (1, 2):
        raise ValueError(f"labels must be (n,) class ids or (n, c) multi-hot, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"labels has {arr.shape[0]} rows, expected {n} (one per image/text pair)")
    if arr.ndim == 1:
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
            raise TypeError(f"labels of shape (n,) must be integer class ids, got dtype {arr.dtype}")
        _, ids = np.unique(arr, return_inverse=True)
        onehot = np.zeros((n, int(ids.max()) + 1 if n else 0), np.float32)
        onehot[np.arange(n), ids] = 1.0
        return onehot
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"multi-hot labels must be numeric or bool, got dtype {arr.dtype}")
    if not np.isin(arr, (0, 1)).all():
        raise ValueError("multi-hot labels of shape (n, c) must hold only 0 and 1")
    return arr.astype(np.float32)


def check_pairs(
    image_features: Any, text_features: Any, labels: Any = None, min_rows: int = 2
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validates ``fit`` inputs: 2-D finite numeric features with one row per pair."""
    x = as_features(image_features, "image_features")
    y = as_features(text_features, "text_features")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"image_features has {x.shape[0]} rows but text_features has {y.shape[0]}; "
            "row i of each must describe the same item"
        )
    if x.shape[0] < min_rows:
        raise ValueError(f"need at least {min_rows} pairs to fit, got {x.shape[0]}")
    return x, y, None if labels is None else check_labels(labels, x.shape[0])


@dataclass(frozen=True)
class LinearConfig:
    """The settings of every linear hasher (the module docstring explains each), declared and checked
    once and saved with ``asdict``; ``image_transform`` / ``text_transform`` as requested (``"auto"``
    is resolved per fit, and the hasher saves the resolved ones)."""

    shared_space: str = "auto"
    center: str = "modality"
    cca_reg: float = 1e-3
    cca_power: float = 1.0
    image_transform: str = "auto"
    text_transform: str = "auto"

    def __post_init__(self) -> None:
        checked = {
            "shared_space": check_choice(self.shared_space, "shared_space", SHARED_SPACES),
            "center": check_choice(self.center, "center", CENTERINGS),
            "image_transform": check_choice(self.image_transform, "image_transform", TRANSFORMS),
            "text_transform": check_choice(self.text_transform, "text_transform", TRANSFORMS),
        }
        for name in ("cca_reg", "cca_power"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            checked[name] = float(value)
        for name, value in checked.items():
            object.__setattr__(self, name, value)


class LinearHasher(Hasher):
    """Base of hashers whose code is ``sign((t(x) - mean_m) @ W_m)`` for modality ``m``.

    Subclasses fill ``self._mean`` and ``self._weight`` (float32) in ``fit``; projection,
    persistence, validation and the shared-space settings (see the module docstring) are shared.
    ``config_class`` is the subclass's settings dataclass (a :class:`LinearConfig`).
    """

    config_class: ClassVar[type[LinearConfig]] = LinearConfig

    def __init__(self, bits: int = 64, seed: int = 0, **settings: Any) -> None:
        """``settings``: the fields of :attr:`config_class`."""
        super().__init__(bits=bits, seed=seed)
        self.config = self.config_class(**settings)
        # "auto" is resolved again at every fit; the resolved ones are what is saved
        self.transforms = {"image": self.config.image_transform, "text": self.config.text_transform}
        self._mean: dict[str, np.ndarray] = {}
        self._weight: dict[str, np.ndarray] = {}

    def _prepare(self, image_features: Any, text_features: Any, labels: Any = None):
        x, y, labels = check_pairs(image_features, text_features, labels)
        self.transforms = {"image": resolve_transform(self.config.image_transform, x),
                           "text": resolve_transform(self.config.text_transform, y)}
        x = apply_transform(x, self.transforms["image"], "image_features")
        y = apply_transform(y, self.transforms["text"], "text_features")
        return x, y, labels

    def _set(self, modality: str, mean: np.ndarray, weight: np.ndarray) -> None:
        self._mean[modality] = np.asarray(mean, np.float32).reshape(-1)
        self._weight[modality] = np.ascontiguousarray(weight, np.float32)
        self.input_dims[modality] = int(self._weight[modality].shape[0])

    def _project(self, features: np.ndarray, modality: str) -> np.ndarray:
        check_modality(modality)
        z = apply_transform(features, self.transforms[modality], f"{modality} features")
        return (z - self._mean[modality]) @ self._weight[modality]

    def get_config(self) -> dict[str, Any]:
        return {**asdict(self.config), "image_transform": self.transforms["image"],
                "text_transform": self.transforms["text"]}

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {}
        for m in self._weight:
            state[f"{m}.mean"] = self._mean[m]
            state[f"{m}.weight"] = self._weight[m]
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        for m in ("image", "text"):
            d = self.input_dims.get(m)
            mean, weight = state.get(f"{m}.mean"), state.get(f"{m}.weight")
            if mean is None or weight is None:
                raise ValueError(f"state is missing {m}.mean / {m}.weight")
            if weight.shape != (d, self.bits) or mean.shape != (d,):
                raise ValueError(
                    f"{m}.weight has shape {weight.shape} and {m}.mean {mean.shape}; "
                    f"expected ({d}, {self.bits}) and ({d},) from the config"
                )
            self._set(m, mean, weight)


def fit_shared_space(
    x: np.ndarray,
    y: np.ndarray,
    mode: str,
    center: str,
    cca_reg: float,
    cca_power: float,
    max_dim: int | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray | None]:
    """Means and linear maps into a space both modalities share.

    Returns ``(means, maps, None)`` for ``mode="none"`` (identity maps) and
    ``(means, maps, correlations)`` for ``"cca"`` (maps already scaled by ``corr ** cca_power``).
    """
    if mode == "auto":
        mode = "none" if x.shape[1] == y.shape[1] else "cca"
    if mode == "none":
        if x.shape[1] != y.shape[1]:
            raise ValueError(
                f"shared_space='none' needs equal dims, got image {x.shape[1]} vs text {y.shape[1]}; "
                "use shared_space='cca' (or 'auto') for features from different spaces"
            )
        if center == "joint":
            mu = np.concatenate([x, y]).mean(0)
            means = {"image": mu, "text": mu}
        else:
            means = {"image": x.mean(0), "text": y.mean(0)}
        eye = np.eye(x.shape[1])
        return means, {"image": eye, "text": eye}, None
    k = min(x.shape[1], y.shape[1], x.shape[0] - 1, max_dim or np.inf)
    a, b, corr = fit_cca(x - x.mean(0), y - y.mean(0), int(k), cca_reg)
    scale = np.maximum(corr, 1e-6) ** cca_power
    return {"image": x.mean(0), "text": y.mean(0)}, {"image": a * scale, "text": b * scale}, corr


@register_hasher
class LSHHasher(LinearHasher):
    """Sign of random Gaussian projections in the shared space (SimHash, Charikar 2002).

    Data-independent apart from the means (and the CCA map when dims differ): the floor every
    learned hasher must beat. See the module docstring for ``shared_space``.
    """

    method = "lsh"

    def fit(
        self, image_features: np.ndarray, text_features: np.ndarray, labels: np.ndarray | None = None
    ) -> "LSHHasher":
        x, y, _ = self._prepare(image_features, text_features, labels)
        c = self.config
        means, maps, _ = fit_shared_space(x, y, c.shared_space, c.center, c.cca_reg, c.cca_power)
        rng = np.random.default_rng(self.seed)
        planes = rng.standard_normal((maps["image"].shape[1], self.bits))
        for m in ("image", "text"):
            self._set(m, means[m], maps[m] @ planes)
        return self

