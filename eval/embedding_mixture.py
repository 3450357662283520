"""Synthetic vectors shaped like real embeddings: Gaussian mixtures fitted to an encoder's Flickr8K embeddings.

The ann stage of :mod:`eval.bench` compares indexes at 1M items, and Flickr8K has 8,000 images.
Its two synthetic extremes (:class:`eval.bench.Mixture`: within-cluster variation in 16 random
directions, or isotropic in all 256) say nothing about where real embeddings lie between them.
This module fits one Gaussian mixture to the lite encoder's train-split image embeddings and one
to its train-split caption embeddings (``sklearn.mixture.GaussianMixture``), then draws as many
vectors as asked from them, normalised to unit length as the encoder's are:

* the database from the image mixture (what a store holds: photos);
* the queries from the caption mixture by default (what users type: text-to-image search, with
  the modality gap between the two clouds that real queries have, and that graph indexes built on
  the database alone are known to suffer from), or from the image mixture (``queries="image"``);
* the pairs the hasher fits on are the real train pairs (every caption with its image), as a
  deployment fits ITQ on its own image-caption pairs.

Why full covariances and few components (the default, 32): the point is the within-cluster
shape, which a diagonal or isotropic mixture would erase (that is the isotropic extreme again);
with 6,000 images a 256 x 256 covariance needs a few hundred points per component, and the
regulariser (``reg_covar``) keeps the small components positive definite. ``python -m
eval.embedding_mixture`` prints, per candidate, the held-out (test split) log-likelihood and how
near a drawn caption's nearest drawn images are, beside the real test split: the measurement
behind the choice.

Draws are chunked with a seed per chunk, like :class:`eval.bench.Mixture`, so every database size
is a prefix of a larger one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from common.checks import check_int

from .extras import require

QUERY_SIDES = ("text", "image")
COVARIANCES = ("full", "tied", "diag", "spherical")


@dataclass(frozen=True)
class GaussianMixtureParams:
    """What sampling needs from a fitted ``GaussianMixture``: weights, means and Cholesky factors."""

    weights: np.ndarray  # (K,)
    means: np.ndarray  # (K, d)
    chol: np.ndarray  # (K, d, d) lower triangular; tied mixtures repeat theirs, diag/spherical are diagonal

    def __post_init__(self) -> None:
        k, d = self.means.shape
        if self.weights.shape != (k,) or self.chol.shape != (k, d, d):
            raise ValueError(f"mixture shapes disagree: weights {self.weights.shape}, means {self.means.shape}, "
                             f"chol {self.chol.shape}")

    @classmethod
    def from_sklearn(cls, gm: Any) -> "GaussianMixtureParams":
        k, d = gm.means_.shape
        cov = np.asarray(gm.covariances_, dtype=np.float64)
        if gm.covariance_type == "full":
            full = cov
        elif gm.covariance_type == "tied":
            full = np.broadcast_to(cov, (k, d, d))
        elif gm.covariance_type == "diag":
            full = np.stack([np.diag(c) for c in cov])
        else:  # spherical
            full = np.stack([c * np.eye(d) for c in cov])
        chol = np.linalg.cholesky(full).astype(np.float32)
        return cls(np.asarray(gm.weights_, dtype=np.float64), gm.means_.astype(np.float32), chol)

    def sample(self, rng: np.random.Generator, m: int) -> np.ndarray:
        """m unit vectors: a component per row by weight, its mean plus correlated noise, normalised."""
        d = self.means.shape[1]
        comp = rng.choice(len(self.weights), size=m, p=self.weights / self.weights.sum())
        z = rng.standard_normal((m, d), dtype=np.float32)
        x = np.empty((m, d), dtype=np.float32)
        for c in np.unique(comp):
            rows = comp == c
            x[rows] = self.means[c] + z[rows] @ self.chol[c].T
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x


def fit_mixture(x: np.ndarray, components: int, covariance: str = "full", seed: int = 0,
                reg_covar: float = 1e-4) -> Any:
    """A ``sklearn.mixture.GaussianMixture`` fitted to the rows of ``x`` (k-means initialised)."""
    components = check_int("components", components)
    if covariance not in COVARIANCES:
        raise ValueError(f"covariance must be one of {COVARIANCES}, got {covariance!r}")
    if x.ndim != 2 or len(x) < components:
        raise ValueError(f"need a 2-d array with at least {components} rows to fit {components} components, "
                         f"got shape {x.shape}")
    mixture = require("sklearn.mixture", "eval.embedding_mixture")
    gm = mixture.GaussianMixture(components, covariance_type=covariance, reg_covar=reg_covar, random_state=seed,
                                 max_iter=100)
    return gm.fit(np.asarray(x, dtype=np.float64))


@dataclass
class EmbeddingMixture:
    """The ann stage's data (database, queries, hasher pairs), drawn from mixtures fitted to real embeddings.

    Same interface as :class:`eval.bench.Mixture`: ``dim``, ``database(n, chunk)``, ``queries(nq)``,
    ``pairs(n)``.
    """

    images: GaussianMixtureParams
    texts: GaussianMixtureParams
    pair_images: np.ndarray = field(repr=False)
    pair_texts: np.ndarray = field(repr=False)
    queries_from: str = "text"
    seed: int = 0
    description: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.queries_from not in QUERY_SIDES:
            raise ValueError(f"queries_from must be one of {QUERY_SIDES}, got {self.queries_from!r}")
        if self.pair_images.shape != self.pair_texts.shape:
            raise ValueError(f"pair arrays differ in shape: {self.pair_images.shape} vs {self.pair_texts.shape}")

    @property
    def dim(self) -> int:
        return int(self.images.means.shape[1])

    def database(self, n: int, chunk: int = 1 << 18) -> Iterator[np.ndarray]:
        """n image-side vectors in chunks; chunk i has its own seed, so any n is a prefix of a larger one."""
        for i, start in enumerate(range(0, n, chunk)):
            yield self.images.sample(np.random.default_rng([self.seed, 1, i]), chunk)[:min(chunk, n - start)]

    def queries(self, nq: int) -> np.ndarray:
        side = self.texts if self.queries_from == "text" else self.images
        return side.sample(np.random.default_rng([self.seed, 2]), nq)

    def pairs(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The first n real (image, caption) train pairs (all of them when n exceeds their number)."""
        return self.pair_images[:n], self.pair_texts[:n]


def flickr8k_mixture(embeddings: str | Path, annotations: str | Path, components: int = 32,
                     covariance: str = "full", queries_from: str = "text", seed: int = 0) -> EmbeddingMixture:
    """Mixtures fitted to the train split of a Flickr8K embedding cache (:func:`eval.datasets_hashing.load_flickr8k`).

    The image mixture is fitted on the 6,000 distinct train images, the caption mixture on the
    first caption of each (6,000: a full-covariance fit on all 30,000 takes five times as long, and
    the 5 captions of a photo are near-duplicates for the mixture's purpose); the hasher pairs are
    all 30,000 (image, caption) train pairs.
    """
    from .datasets_hashing import load_flickr8k

    data = load_flickr8k(embeddings, annotations)
    train = data.train
    _, first = np.unique(train.image_labels, return_index=True)
    images, captions = train.image[np.sort(first)], train.text[np.sort(first)]
    gm_i = fit_mixture(images, components, covariance, seed)
    gm_t = fit_mixture(captions, components, covariance, seed)
    description = {"embeddings": str(embeddings), "components": components, "covariance": covariance,
                   "queries_from": queries_from, "fit_images": len(images), "fit_texts": len(captions),
                   "held_out_loglik_per_dim": {"image": float(gm_i.score(data.query.image) / images.shape[1]),
                                               "text": float(gm_t.score(data.query.text) / images.shape[1])}}
    return EmbeddingMixture(GaussianMixtureParams.from_sklearn(gm_i), GaussianMixtureParams.from_sklearn(gm_t),
                            train.image, train.text, queries_from, seed, description)


def select(embeddings: str | Path, annotations: str | Path, candidates: list[tuple[int, str]],
           seed: int = 0) -> list[dict[str, Any]]:
    """Per (components, covariance) candidate: the held-out (test split) mean log-likelihood per
    dimension of each side, and the neighbour profile of 1,000 caption draws searched among 1,000
    image draws beside that of 1,000 real test captions among 1,000 real train images (other
    photos than theirs, since a draw has no paired image either)."""
    from .datasets_hashing import load_flickr8k

    data = load_flickr8k(embeddings, annotations)
    _, first = np.unique(data.train.image_labels, return_index=True)
    images, captions = data.train.image[np.sort(first)], data.train.text[np.sort(first)]
    real_q = data.query.text[::5][:1000]
    gallery = images[:1000]
    rows = [{"components": "real (test captions, train images)", "covariance": "-",
             **similarity_profile(gallery, real_q)}]
    for components, covariance in candidates:
        row: dict[str, Any] = {"components": components, "covariance": covariance}
        fitted = {}
        for side, fit_x, test_x in (("image", images, data.query.image), ("text", captions, data.query.text)):
            fitted[side] = fit_mixture(fit_x, components, covariance, seed)
            row[f"{side}_loglik"] = float(fitted[side].score(test_x) / fit_x.shape[1])
        rng = np.random.default_rng(seed)
        drawn_i = GaussianMixtureParams.from_sklearn(fitted["image"]).sample(rng, len(gallery))
        drawn_t = GaussianMixtureParams.from_sklearn(fitted["text"]).sample(rng, len(real_q))
        rows.append({**row, **similarity_profile(drawn_i, drawn_t)})
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """``python -m eval.embedding_mixture``: the measurement behind the default mixture (see the module doc)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m eval.embedding_mixture", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--embeddings", type=Path, default=Path("cache/flickr8k-lite.npz"))
    p.add_argument("--annotations", type=Path,
                   default=Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k" / "dataset_flickr8k.json")
    p.add_argument("--candidates", nargs="+", default=["8:full", "32:full", "256:diag"],
                   help="COMPONENTS:COVARIANCE pairs")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    candidates = []
    for c in args.candidates:
        k, _, cov = c.partition(":")
        if not k.isdigit() or cov not in COVARIANCES:
            p.error(f"--candidates takes COMPONENTS:COVARIANCE with COVARIANCE in {COVARIANCES}, got {c!r}")
        candidates.append((int(k), cov))
    rows = select(args.embeddings, args.annotations, candidates, args.seed)
    print("| components | covariance | held-out log-lik/dim image | text | caption→image top-1 cos | top-10 cos | "
          "mean cos |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['components']} | {r['covariance']} | {r.get('image_loglik', float('nan')):.3f} | "
              f"{r.get('text_loglik', float('nan')):.3f} | {r['top1']:.3f} | {r['top10']:.3f} | {r['mean']:.3f} |")
    return rows


if __name__ == "__main__":
    main()


def similarity_profile(x: np.ndarray, q: np.ndarray, k: int = 10) -> dict[str, float]:
    """Summary of how neighbours look (mean top-1 and top-k cosine, mean cosine): to compare with real data."""
    s = q @ x.T
    top = -np.sort(-s, axis=1)[:, :k]
    return {"top1": float(top[:, 0].mean()), f"top{k}": float(top[:, -1].mean()), "mean": float(s.mean()),
            "gap_top1_topk": float((top[:, 0] - top[:, -1]).mean())}


__all__ = ["EmbeddingMixture", "GaussianMixtureParams", "fit_mixture", "flickr8k_mixture", "select",
           "similarity_profile", "QUERY_SIDES", "COVARIANCES"]
