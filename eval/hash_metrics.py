"""Ranking metrics for hashing: MAP@all, MAP@K, P@K, precision within a Hamming radius, the PR
curve over radii and the precision-topK curve, for label relevance or paired relevance.

Inputs are a distance source (smaller is better) and a relevance source, each either a dense
(n_queries, n_items) array or a lazy object computed a block of queries at a time:
:class:`HammingDistances` over packed codes, :class:`Relevance` over labels or pair ids. Float
scores work too: pass ``-similarity`` as a dense distance matrix.

Conventions (every table built on these functions names them, see ``describe_conventions``):

``ties="random"`` (default)
    Every metric is the expectation over a uniformly random order of the items that share a
    distance. Hamming distances tie constantly (2,173 Wiki items over 33 distances at 32 bits),
    so a fixed tie-break is an arbitrary choice that moves MAP. AP uses the per-tie-group closed
    form of McSherry & Najork, "Computing information retrieval performance measures efficiently
    in the presence of tied scores" (ECIR 2008): inside a group of ``n`` items, ``r`` relevant,
    place ``p`` is relevant with probability ``r/n`` and, given that, holds ``(p-1)(r-1)/(n-1)``
    relevant items before it in expectation; summing ``(hits so far)/rank`` over the places then
    needs only harmonic numbers.
``ties="index"``
    Ties broken by item index (stable sort by distance, then index): what most hashing code does,
    for comparison. (DeepHash-pytorch / DJSRH call ``np.argsort``, whose default quicksort is not
    even stable, so their tie order is an implementation detail.)

``map_k_norm`` (how MAP@K normalises; MAP@all is the same under both)
    ``"in_top_k"`` (default): AP@K = (1/X) sum_{k<=K} rel_k P@k with X the relevant items
    retrieved in the top K, and 0 when X = 0: DeepHash-pytorch ``CalcTopMap``, DJSRH
    ``calculate_top_map``, the MAP@50 of UDDH (``../shared/papers/003_*.txt`` §IV).
    ``"min_k_r"``: divide by min(K, R), R the relevant items in the whole retrieval set, a proper
    truncated AP that is never larger than ``"in_top_k"``.
    Not offered: DCMH/MITH ``calc_map_k``, which averages the precision at the first min(K, R)
    relevant items wherever they rank. The three are not comparable across papers.
    Under ``ties="random"`` items tied across the K boundary count fractionally: the result is the
    exact expectation of AP@K, with the number of relevant items that fall inside the boundary
    group hypergeometric (for ``"in_top_k"`` the denominator is random too, so this is not the
    ratio of expectations).

Queries without any relevant item count as AP 0 and stay in the mean (as DeepHash-pytorch
does). P@K with K beyond the retrieval set uses K = n_items. Precision within radius ``r``
retrieves the items at distance <= r; a query that retrieves nothing has precision 0 by default
(``empty="zero"``); ``empty="skip"`` averages over the queries that retrieve something, as the
DCMH-family PR-curve code does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Literal, Protocol, Sequence

import numpy as np
from scipy.stats import hypergeom
from tqdm.auto import tqdm

from common.checks import check_optional_int
from hashing.hamming import HammingDistances, hamming_distances  # noqa: F401  (part of this module's API)

Ties = Literal["random", "index"]
MapKNorm = Literal["in_top_k", "min_k_r"]
Empty = Literal["zero", "skip"]

TIE_CONVENTIONS: dict[str, str] = {
    "random": "expected value over a uniformly random order of tied items",
    "index": "ties broken by item index (stable sort)",
}
MAP_K_CONVENTIONS: dict[str, str] = {
    "in_top_k": "AP@K normalised by the relevant items retrieved in the top K (DeepHash/DJSRH)",
    "min_k_r": "AP@K normalised by min(K, relevant items in the retrieval set)",
}
EMPTY_CONVENTIONS: dict[str, str] = {
    "zero": "a query retrieving nothing within the radius has precision 0",
    "skip": "queries retrieving nothing within the radius are left out of the precision mean",
}

# Elements of one (queries x items) block; bounds the memory of every intermediate array.
_BLOCK_ELEMENTS = 1 << 21


def describe_conventions(ties: str = "random", map_k_norm: str = "in_top_k", empty: str = "zero") -> dict[str, str]:
    """The conventions a result was computed under, in words, for tables and JSON output."""
    return {
        "ties": f"{_check_choice(ties, 'ties', TIE_CONVENTIONS)}: {TIE_CONVENTIONS[ties]}",
        "map_k_norm": f"{_check_choice(map_k_norm, 'map_k_norm', MAP_K_CONVENTIONS)}: {MAP_K_CONVENTIONS[map_k_norm]}",
        "empty": f"{_check_choice(empty, 'empty', EMPTY_CONVENTIONS)}: {EMPTY_CONVENTIONS[empty]}",
    }


def _check_choice(value: Any, name: str, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# Sources: dense arrays or lazy blocks
# --------------------------------------------------------------------------------------------
class BlockSource(Protocol):
    shape: tuple[int, int]

    def block(self, start: int, stop: int) -> np.ndarray: ...


def _as_label_array(labels: Any, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim == 2 and arr.shape[1] == 1:  # .mat files store class ids as a column
        arr = arr[:, 0]
    if arr.ndim == 1:
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
            raise TypeError(f"{name} of shape (n,) must be integer ids, got dtype {arr.dtype}")
        return arr.astype(np.int64)
    if arr.ndim == 2:
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise TypeError(f"{name} of shape (n, c) must be numeric multi-hot, got dtype {arr.dtype}")
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} of shape (n, c) must be multi-hot with values in {{0, 1}}")
        return arr.astype(np.float32)
    raise ValueError(f"{name} must be (n,) ids, (n, 1) ids or (n, c) multi-hot, got shape {arr.shape}")


class Relevance:
    """Which items are relevant to which queries, a block of queries at a time.

    ``kind="label"``: relevant when query and item share at least one label; labels are (n,) class
    ids, (n, 1) class ids (the .mat column layout) or (n, c) multi-hot. ``kind="paired"``: ids are
    pair ids (for Flickr8K image ``i`` has id ``i`` and each of its captions carries ``i``), so an
    image is relevant exactly to its own captions and a caption to its own image.
    """

    def __init__(self, query_labels: Any, item_labels: Any, kind: Literal["label", "paired"] = "label") -> None:
        self.kind = _check_choice(kind, "kind", ("label", "paired"))
        self.query_labels = _as_label_array(query_labels, "query_labels")
        self.item_labels = _as_label_array(item_labels, "item_labels")
        if self.query_labels.ndim != self.item_labels.ndim or (
            self.query_labels.ndim == 2 and self.query_labels.shape[1] != self.item_labels.shape[1]
        ):
            raise ValueError(
                f"query_labels {self.query_labels.shape} and item_labels {self.item_labels.shape} must both be "
                "(n,) ids or both (n, c) multi-hot over the same c classes"
            )
        if kind == "paired" and self.query_labels.ndim != 1:
            raise ValueError("paired relevance needs (n,) integer pair ids on both sides")
        self.shape = (len(self.query_labels), len(self.item_labels))

    def block(self, start: int, stop: int) -> np.ndarray:
        """(stop - start, n_items) bool."""
        q = self.query_labels[start:stop]
        if q.ndim == 1:
            return q[:, None] == self.item_labels[None, :]
        return (q @ self.item_labels.T) > 0


def label_relevance(query_labels: Any, item_labels: Any) -> Relevance:
    """Relevant when sharing at least one label (the cross-modal hashing protocol)."""
    return Relevance(query_labels, item_labels, "label")


def paired_relevance(query_pair_ids: Any, item_pair_ids: Any) -> Relevance:
    """Relevant when describing the same pair, e.g. an image and its captions (Karpathy protocol)."""
    return Relevance(query_pair_ids, item_pair_ids, "paired")


def captions_per_image_ids(n_images: int, per_image: int = 5) -> np.ndarray:
    """Pair ids of captions stored image by image: captions ``5i .. 5i+4`` belong to image ``i``."""
    return np.repeat(np.arange(n_images, dtype=np.int64), per_image)


class _Dense:
    def __init__(self, arr: np.ndarray) -> None:
        self.arr = arr
        self.shape = arr.shape

    def block(self, start: int, stop: int) -> np.ndarray:
        return self.arr[start:stop]


def _distance_source(distances: Any) -> BlockSource:
    if hasattr(distances, "block"):
        return distances
    arr = np.asarray(distances)
    if arr.ndim != 2:
        raise ValueError(f"distances must be a 2-D (n_queries, n_items) array, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"distances must be numeric, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise ValueError("distances contain NaN or infinite values")
    return _Dense(arr)


def _relevance_source(relevance: Any) -> BlockSource:
    if hasattr(relevance, "block"):
        return relevance
    arr = np.asarray(relevance)
    if arr.ndim != 2:
        raise ValueError(f"relevance must be a 2-D (n_queries, n_items) array or a Relevance, got shape {arr.shape}")
    if arr.dtype != bool:
        if not np.isin(arr, (0, 1)).all():
            raise ValueError("a relevance matrix must be bool or hold only 0 and 1")
        arr = arr.astype(bool)
    return _Dense(arr)


def _blocks(
    distances: Any, relevance: Any, chunk_size: int | None, progress: bool
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    dist, rel = _distance_source(distances), _relevance_source(relevance)
    if tuple(dist.shape) != tuple(rel.shape):
        raise ValueError(f"distances are {tuple(dist.shape)} but relevance is {tuple(rel.shape)} (n_queries, n_items)")
    nq, n = dist.shape
    if n == 0:
        raise ValueError("the retrieval set is empty")
    step = chunk_size or max(1, _BLOCK_ELEMENTS // n)
    if step < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    for start in tqdm(range(0, nq, step), desc="metrics", unit="block", disable=not progress):
        stop = min(nq, start + step)
        yield dist.block(start, stop), rel.block(start, stop)


# --------------------------------------------------------------------------------------------
# Tie groups: every metric below is a function of (items, relevant items) per group, in rank order
# --------------------------------------------------------------------------------------------
@dataclass
class _Groups:
    """Per query, the tie groups in rank order: ``size`` items of which ``hits`` relevant.

    Groups of size 0 may appear (unused Hamming distances) and contribute nothing.
    """

    size: np.ndarray  # (m, G) float64
    hits: np.ndarray  # (m, G) float64

    def __post_init__(self) -> None:
        self.before = np.cumsum(self.size, axis=1) - self.size  # items ranked ahead of the group
        self.hits_before = np.cumsum(self.hits, axis=1) - self.hits
        self.total_hits = self.hits.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            self.rate = np.where(self.size > 0, self.hits / self.size, 0.0)

    def taken(self, k: int) -> np.ndarray:
        """How many items of each group fall inside the top ``k``."""
        return np.clip(k - self.before, 0.0, self.size)


def _tie_groups(d: np.ndarray, rel: np.ndarray, ties: str) -> _Groups:
    m, n = d.shape
    if ties == "index":
        order = np.argsort(d, axis=1, kind="stable")
        hits = np.take_along_axis(rel, order, axis=1).astype(np.float64)
        return _Groups(np.ones_like(hits), hits)
    rows = np.arange(m, dtype=np.int64)[:, None]
    if np.issubdtype(d.dtype, np.integer) and d.size and d.min() >= 0 and int(d.max()) < n:
        width = int(d.max()) + 1  # Hamming: one bin per distance, no sort needed
        keys = (rows * width + d).ravel()
    else:
        order = np.argsort(d, axis=1, kind="stable")
        ds = np.take_along_axis(d, order, axis=1)
        rel = np.take_along_axis(rel, order, axis=1)
        gid = np.zeros((m, n), dtype=np.int64)
        np.cumsum(ds[:, 1:] != ds[:, :-1], axis=1, out=gid[:, 1:])
        width = n
        keys = (rows * width + gid).ravel()
    size = np.bincount(keys, minlength=m * width).reshape(m, width).astype(np.float64)
    hits = np.bincount(keys, weights=rel.ravel().astype(np.float64), minlength=m * width).reshape(m, width)
    return _Groups(size, hits)


def _harmonic(n: int) -> np.ndarray:
    """H[i] = 1 + 1/2 + ... + 1/i, H[0] = 0."""
    return np.concatenate(([0.0], np.cumsum(1.0 / np.arange(1, n + 1))))


def _precision_sum(start: np.ndarray, hits_before: np.ndarray, size: np.ndarray, hits: np.ndarray,
                   taken: np.ndarray, harmonic: np.ndarray) -> np.ndarray:
    """Expected sum of precision@rank over the relevant items among the first ``taken`` places of
    groups of ``size`` items (``hits`` relevant, in random order) starting after ``start`` items of
    which ``hits_before`` are relevant. Elementwise; McSherry & Najork (2008) in closed form:

    sum_{p=1..t} (h/s) (B + 1 + (p-1)(h-1)/(s-1)) / (N + p)
      = (h/s) [(B + 1) dH + (h-1)/(s-1) (t - (N + 1) dH)],   dH = H[N+t] - H[N].
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(size > 0, hits / size, 0.0)
        slope = np.where(size > 1, (hits - 1) / (size - 1), 0.0)
    n0 = start.astype(np.int64)
    dh = harmonic[n0 + taken.astype(np.int64)] - harmonic[n0]
    return rate * ((hits_before + 1) * dh + slope * (taken - (start + 1) * dh))


def _ap_at(g: _Groups, k: int | None, norm: str, harmonic: np.ndarray) -> np.ndarray:
    n = int(g.size[0].sum()) if len(g.size) else 0
    k = n if k is None else min(int(k), n)
    taken = g.taken(k)
    if norm == "min_k_r" or k >= n:
        denom = g.total_hits if k >= n else np.minimum(k, g.total_hits)
        num = _precision_sum(g.before, g.hits_before, g.size, g.hits, taken, harmonic).sum(axis=1)
        return np.divide(num, denom, out=np.zeros_like(num), where=denom > 0)
    # "in_top_k": the denominator (relevant items retrieved) is random only through the group
    # that straddles rank K, whose relevant count inside the top K is hypergeometric.
    boundary = (taken > 0) & (taken < g.size)
    full = np.where(boundary, 0.0, taken)
    inside = _precision_sum(g.before, g.hits_before, g.size, g.hits, full, harmonic).sum(axis=1)
    hits_inside = (g.rate * full).sum(axis=1)
    ap = np.divide(inside, hits_inside, out=np.zeros_like(inside), where=hits_inside > 0)
    rows = np.flatnonzero(boundary.any(axis=1))
    if len(rows):
        b = boundary[rows].argmax(axis=1)
        size, hits, t = g.size[rows, b], g.hits[rows, b], taken[rows, b]
        start, before_hits = g.before[rows, b], hits_inside[rows]
        y = np.arange(int(np.minimum(hits, t).max()) + 1, dtype=np.float64)[None, :]
        pmf = hypergeom.pmf(y, size[:, None], hits[:, None], t[:, None])
        # given y relevant among the t places taken, they are uniformly placed among them
        part = _precision_sum(start[:, None], before_hits[:, None], t[:, None], y, t[:, None], harmonic)
        denom = before_hits[:, None] + y
        value = np.divide(inside[rows, None] + part, denom, out=np.zeros_like(part), where=denom > 0)
        ap[rows] = (pmf * value).sum(axis=1)
    return ap


def _precision_at(g: _Groups, k: int) -> np.ndarray:
    n = int(g.size[0].sum()) if len(g.size) else 0
    k = min(int(k), n)
    return (g.rate * g.taken(k)).sum(axis=1) / k


def _within_radius(d: np.ndarray, rel: np.ndarray, radii: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Items and relevant items at distance <= r, (m, len(radii)) each."""
    m, n = d.shape
    if np.issubdtype(d.dtype, np.integer) and d.size and d.min() >= 0 and int(d.max()) < 4 * n:
        width = int(d.max()) + 1
        keys = (np.arange(m, dtype=np.int64)[:, None] * width + d).ravel()
        size = np.cumsum(np.bincount(keys, minlength=m * width).reshape(m, width), axis=1)
        hits = np.cumsum(np.bincount(keys, weights=rel.ravel().astype(np.float64),
                                     minlength=m * width).reshape(m, width), axis=1)
        idx = np.floor(radii).astype(np.int64)
        idx_c = np.clip(idx, 0, width - 1)
        below = (idx < 0)[None, :]
        return np.where(below, 0, size[:, idx_c]), np.where(below, 0, hits[:, idx_c])
    size = np.empty((m, len(radii)), dtype=np.int64)
    hits = np.empty((m, len(radii)), dtype=np.int64)
    for j, r in enumerate(radii):
        inside = d <= r
        size[:, j] = inside.sum(axis=1)
        hits[:, j] = (inside & rel).sum(axis=1)
    return size, hits


def _radius_precision_recall(d: np.ndarray, rel: np.ndarray, radii: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query precision (NaN where nothing is retrieved) and recall at each radius."""
    retrieved, hits = _within_radius(d, rel, radii)
    total = rel.sum(axis=1, dtype=np.float64)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(retrieved > 0, hits / retrieved, np.nan)
        recall = np.where(total > 0, hits / total, 0.0)
    return precision, recall


def _mean_precision(precision: np.ndarray, empty: str) -> np.ndarray:
    if empty == "zero":
        return np.nan_to_num(precision, nan=0.0).mean(axis=0)
    answered = (~np.isnan(precision)).sum(axis=0)
    return np.divide(np.nansum(precision, axis=0), answered, out=np.zeros(precision.shape[1]), where=answered > 0)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
def _check_k(k: int | None, name: str) -> int | None:
    return check_optional_int(name, k, note="(all items)")


def _per_query(distances: Any, relevance: Any, compute: Any, chunk_size: int | None, progress: bool) -> np.ndarray:
    parts = [compute(d, rel) for d, rel in _blocks(distances, relevance, chunk_size, progress)]
    return np.concatenate(parts) if parts else np.zeros(0)


def average_precision(
    distances: Any,
    relevance: Any,
    k: int | None = None,
    *,
    ties: Ties = "random",
    map_k_norm: MapKNorm = "in_top_k",
    chunk_size: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Per-query AP over the whole ranking (``k=None``) or its top ``k``; see the module docstring."""
    k = _check_k(k, "k")
    _check_choice(ties, "ties", TIE_CONVENTIONS)
    _check_choice(map_k_norm, "map_k_norm", MAP_K_CONVENTIONS)
    harmonic: dict[int, np.ndarray] = {}

    def compute(d: np.ndarray, rel: np.ndarray) -> np.ndarray:
        h = harmonic.setdefault(d.shape[1], _harmonic(d.shape[1]))
        return _ap_at(_tie_groups(d, rel, ties), k, map_k_norm, h)

    return _per_query(distances, relevance, compute, chunk_size, progress)


def mean_average_precision(distances: Any, relevance: Any, k: int | None = None, **kwargs: Any) -> float:
    """MAP@all (``k=None``) or MAP@k; keyword arguments as :func:`average_precision`."""
    return float(average_precision(distances, relevance, k, **kwargs).mean())


def precision_at_k(
    distances: Any, relevance: Any, k: int, *, ties: Ties = "random",
    chunk_size: int | None = None, progress: bool = False,
) -> np.ndarray:
    """Per-query precision of the top ``k`` (expected value under random tie order by default)."""
    k = _check_k(k, "k")
    if k is None:
        raise ValueError("precision_at_k needs an integer k")
    _check_choice(ties, "ties", TIE_CONVENTIONS)
    return _per_query(distances, relevance, lambda d, r: _precision_at(_tie_groups(d, r, ties), k),
                      chunk_size, progress)


def precision_at_radius(
    distances: Any, relevance: Any, radius: float = 2, *, chunk_size: int | None = None, progress: bool = False,
) -> np.ndarray:
    """Per-query precision of the items within ``radius`` (Hamming radius 2 by default); NaN for a
    query that retrieves nothing (counted as 0 by :func:`evaluate` unless ``empty="skip"``)."""
    radii = np.array([radius], dtype=np.float64)
    return _per_query(distances, relevance, lambda d, r: _radius_precision_recall(d, r, radii)[0][:, 0],
                      chunk_size, progress)


def _default_radii(distances: Any) -> np.ndarray:
    if isinstance(distances, HammingDistances):
        return np.arange(distances.bits + 1, dtype=np.float64)
    arr = np.asarray(distances)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError("radii are required for float distances (the default is 0..bits for Hamming)")
    return np.arange(int(arr.max(initial=0)) + 1, dtype=np.float64)


def pr_curve(
    distances: Any, relevance: Any, radii: Sequence[float] | None = None, *, empty: Empty = "zero",
    chunk_size: int | None = None, progress: bool = False,
) -> dict[str, np.ndarray]:
    """Mean precision and recall of the items within each radius (default 0..bits)."""
    _check_choice(empty, "empty", EMPTY_CONVENTIONS)
    radii = _default_radii(distances) if radii is None else np.asarray(radii, dtype=np.float64)
    precision, recall = [], []
    for d, rel in _blocks(distances, relevance, chunk_size, progress):
        p, r = _radius_precision_recall(d, rel, radii)
        precision.append(p)
        recall.append(r)
    return {"radius": radii, "precision": _mean_precision(np.concatenate(precision), empty),
            "recall": np.concatenate(recall).mean(axis=0)}


def default_topk(n_items: int, stop: int = 1000, step: int = 50) -> np.ndarray:
    """K values for the precision-topK curve: 1, 5, 10, 20, then every ``step`` up to ``stop``."""
    ks = np.concatenate(([1, 5, 10, 20], np.arange(step, stop + 1, step)))
    return np.unique(ks[ks <= n_items])


def precision_topk_curve(
    distances: Any, relevance: Any, ks: Sequence[int] | None = None, *, ties: Ties = "random",
    chunk_size: int | None = None, progress: bool = False,
) -> dict[str, np.ndarray]:
    """Mean P@K for each K (default :func:`default_topk`)."""
    _check_choice(ties, "ties", TIE_CONVENTIONS)
    if ks is None:
        ks = default_topk(_distance_source(distances).shape[1])
    ks = np.asarray([_check_k(k, "ks") for k in ks], dtype=np.int64)
    rows = []
    for d, rel in _blocks(distances, relevance, chunk_size, progress):
        g = _tie_groups(d, rel, ties)
        rows.append(np.stack([_precision_at(g, int(k)) for k in ks], axis=1))
    return {"k": ks, "precision": np.concatenate(rows).mean(axis=0)}


def evaluate(
    distances: Any,
    relevance: Any,
    *,
    map_at: Sequence[int | None] = (None, 50),
    p_at: Sequence[int] = (10,),
    radius: float | None = 2,
    pr_radii: Sequence[float] | Literal["auto"] | None = None,
    topk: Sequence[int] | Literal["auto"] | None = None,
    ties: Ties = "random",
    map_k_norm: MapKNorm = "in_top_k",
    empty: Empty = "zero",
    chunk_size: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Every metric in one pass over the query blocks.

    Returns ``{"map@all", "map@50", "p@10", "p@h<=2"}`` (floats, per the arguments) and, when asked,
    ``"pr_curve": {"radius", "precision", "recall"}`` and ``"topk_curve": {"k", "precision"}``
    (lists). ``"auto"`` curves use radii 0..bits and :func:`default_topk`.
    """
    _check_choice(ties, "ties", TIE_CONVENTIONS)
    _check_choice(map_k_norm, "map_k_norm", MAP_K_CONVENTIONS)
    _check_choice(empty, "empty", EMPTY_CONVENTIONS)
    map_at = [_check_k(k, "map_at") for k in map_at]
    p_at = [_check_k(k, "p_at") for k in p_at]
    if any(k is None for k in p_at):
        raise ValueError("p_at needs integer K values")
    n_items = _distance_source(distances).shape[1]
    if isinstance(pr_radii, str):
        pr_radii = _default_radii(distances) if _check_choice(pr_radii, "pr_radii", ("auto",)) else None
    if isinstance(topk, str):
        topk = default_topk(n_items) if _check_choice(topk, "topk", ("auto",)) else None
    radii = [] if radius is None else [float(radius)]
    if pr_radii is not None:
        radii += [float(r) for r in pr_radii]
    radii = np.asarray(radii, dtype=np.float64)
    ks = None if topk is None else np.asarray([_check_k(k, "topk") for k in topk], dtype=np.int64)

    harmonic = _harmonic(n_items)
    acc: dict[str, list[np.ndarray]] = {}
    for d, rel in _blocks(distances, relevance, chunk_size, progress):
        g = _tie_groups(d, rel, ties)
        for k in map_at:
            acc.setdefault(_map_key(k), []).append(_ap_at(g, k, map_k_norm, harmonic))
        for k in p_at:
            acc.setdefault(f"p@{k}", []).append(_precision_at(g, k))
        if ks is not None:
            acc.setdefault("topk", []).append(np.stack([_precision_at(g, int(k)) for k in ks], axis=1))
        if len(radii):
            p, r = _radius_precision_recall(d, rel, radii)
            acc.setdefault("radius_p", []).append(p)
            acc.setdefault("radius_r", []).append(r)

    full = {key: np.concatenate(parts) for key, parts in acc.items()}
    out: dict[str, Any] = {}
    for k in map_at:
        out[_map_key(k)] = float(full[_map_key(k)].mean())
    for k in p_at:
        out[f"p@{k}"] = float(full[f"p@{k}"].mean())
    if len(radii):
        precision = _mean_precision(full["radius_p"], empty)
        recall = full["radius_r"].mean(axis=0)
        offset = 0
        if radius is not None:
            out[f"p@h<={radius:g}"] = float(precision[0])
            offset = 1
        if pr_radii is not None:
            out["pr_curve"] = {"radius": radii[offset:].tolist(), "precision": precision[offset:].tolist(),
                               "recall": recall[offset:].tolist()}
    if ks is not None:
        out["topk_curve"] = {"k": ks.tolist(), "precision": full["topk"].mean(axis=0).tolist()}
    return out


def _map_key(k: int | None) -> str:
    return "map@all" if k is None else f"map@{k}"
