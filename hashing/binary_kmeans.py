"""Binary k-means in Hamming space, the one implementation the package uses.

UDDH's semantic index (../shared/papers/003_*.txt §III-B, eqs. 15-19; notes:
../shared/papers/NOTES.md §1.7) and the bucketed index's trainer
(:class:`hashing.index.BucketIndex`) both cluster binary codes with it. Codes and centres are
``{-1, +1}`` int8 sign matrices ``(n, l)`` / ``(k, l)`` (the convention of
:func:`hashing.base.pack_signs`: bit 1 is +1); distances are computed on the packed codes by
:mod:`hashing.hamming`, the one Hamming distance.

The pieces, each one step of Lloyd's algorithm in Hamming space:

* :func:`kmeanspp_centres`: k-means++ seeding (D^2 sampling) over the distinct codes;
* :func:`nearest_centres`: the assignment H (eq. 19), the top-e centres for multi-label data;
* :func:`majority_vote_centres`: the centre update C (eq. 16), the members' bitwise majority for a
  one-hot H; a tied bit keeps the centre's previous bit;
* :func:`reseed_empty`: an empty cluster takes the code farthest from its own centre;
* :func:`lloyd_round`: centres, assignment, repair, assignment;
* :func:`binary_kmeans`: Lloyd rounds until the assignment stops changing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from common.checks import check_int

from .hamming import HammingDistances, hamming_distances_at

#: Lloyd rounds :func:`binary_kmeans` runs at most, unless told otherwise.
MAX_ROUNDS = 50
#: Code-centre pairs per distance block in :func:`nearest_centres` (bounds its memory).
_BLOCK_PAIRS = 1 << 22


def check_signs(codes: Any, name: str, length: int | None = None) -> np.ndarray:
    """Validates a 2-D ``{-1, +1}`` int8 sign matrix (``length`` columns, if given)."""
    arr = np.asarray(codes)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be a 2-D (n, l) sign matrix, got shape {arr.shape}")
    if length is not None and arr.shape[1] != length:
        raise ValueError(f"{name} has {arr.shape[1]} bits per row, expected {length}")
    if arr.dtype != np.int8 or not np.isin(arr, (-1, 1)).all():
        raise ValueError(f"{name} must be int8 -1/+1 signs (e.g. unpacked codes * 2 - 1), got dtype {arr.dtype}")
    return arr


def _pack(signs: np.ndarray) -> np.ndarray:
    return np.packbits(signs > 0, axis=1)


def nearest_centres(codes: np.ndarray, centres: np.ndarray, top_e: int = 1) -> np.ndarray:
    """(n, top_e) int64 ids of the nearest centres by Hamming distance; ties go to the lower id.

    UDDH's eq. 19 prints ``l^c - b^T c``, twice the distance (the argmin is the same).

    Computed a block of codes at a time, so a large training set never holds its full (n, k)
    distance matrix.
    """
    codes, centres = np.asarray(codes), np.asarray(centres)
    if codes.ndim != 2 or centres.ndim != 2 or codes.shape[1] != centres.shape[1]:
        raise ValueError(f"codes (n, l) and centres (k, l) must share l, got shapes {codes.shape} and {centres.shape}")
    k = len(centres)
    top_e = check_int("top_e", top_e, 1, k, note="(the number of centres)")
    out = np.empty((len(codes), top_e), dtype=np.int64)
    if len(codes) == 0:
        return out
    source = HammingDistances(_pack(codes), _pack(centres))
    step = max(1, _BLOCK_PAIRS // k)
    for s in range(0, len(codes), step):
        e = min(len(codes), s + step)
        dist = source.block(s, e)
        if top_e == 1:  # argmin takes the first minimum: the stable sort's first entry
            out[s:e, 0] = np.argmin(dist, axis=1)
        else:
            out[s:e] = np.argsort(dist, axis=1, kind="stable")[:, :top_e]
    return out


def majority_vote_centres(codes: np.ndarray, assignments: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """UDDH's eq. 16 (discrete cyclic coordinate descent on C) for a multi-hot H.

    ``assignments`` is (n, e): the e clusters of each sample (e = 1 for single-label data). Updating
    one centre at a time, c_r = sign(q_r - sum_{s != r} c_s (H H^T)_{s r}) with Q = B H^T.
    For one-hot H (e = 1) H H^T is diagonal, the cross term vanishes and c_r is the bitwise majority
    vote of the cluster's members. A tie (and an empty cluster) keeps the previous bit, which leaves
    the objective unchanged and keeps the update deterministic.
    """
    codes = np.asarray(codes)
    assignments = np.asarray(assignments, dtype=np.int64).reshape(len(codes), -1)
    centres = np.array(previous, dtype=np.int8, copy=True)
    k = centres.shape[0]
    q = np.zeros((k, codes.shape[1]), dtype=np.int64)  # Q^T = H B^T, one row per centre
    for col in assignments.T:  # per-bit bincounts: exact integer sums, ~10x faster than np.add.at
        for j in range(codes.shape[1]):
            q[:, j] += np.bincount(col, weights=codes[:, j], minlength=k).astype(np.int64)
    if assignments.shape[1] == 1:  # no cross term: every centre at once
        return np.where(q > 0, 1, np.where(q < 0, -1, centres)).astype(np.int8)
    gram = np.zeros((k, k), dtype=np.int64)  # H H^T: co-membership counts
    for a in assignments.T:
        for b in assignments.T:
            np.add.at(gram, (a, b), 1)
    for r in range(k):
        others = np.arange(k) != r
        score = q[r] - gram[r, others] @ centres[others].astype(np.int64)
        centres[r] = np.where(score > 0, 1, np.where(score < 0, -1, centres[r]))
    return centres


def reseed_empty(codes: np.ndarray, assignments: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Gives each empty cluster (by first assignment) the code of the sample farthest from its own
    centre, skipping codes that already are a centre (lowest index on ties): the usual k-means
    repair. UDDH's paper does not say what happens to an empty cluster. Clusters stay empty only
    when fewer distinct codes than clusters are left. Returns ``centres`` itself (not a copy) when
    no cluster is empty."""
    first = np.asarray(assignments, dtype=np.int64).reshape(len(codes), -1)[:, :1]
    counts = np.bincount(first[:, 0], minlength=len(centres))
    empty = np.flatnonzero(counts == 0)
    if len(empty) == 0:
        return centres
    centres = centres.copy()
    own = hamming_distances_at(_pack(codes), _pack(centres), first, pad_distance=0)[:, 0]
    order = np.argsort(-own, kind="stable")
    taken: set[bytes] = {c.tobytes() for c in centres}
    pos = 0
    for r in empty:
        while pos < len(order) and codes[order[pos]].tobytes() in taken:
            pos += 1
        if pos == len(order):
            break
        centres[r] = codes[order[pos]]
        taken.add(centres[r].tobytes())
        pos += 1
    return centres


def lloyd_round(
    codes: np.ndarray, centres: np.ndarray, assignments: np.ndarray, top_e: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """One round: centres from the assignment (eq. 16), the new assignment (eq. 19), the repair of
    the clusters that lost every member, and (when one was repaired) the assignment to the
    repaired centres. Returns ``(centres, assignments)``."""
    centres = majority_vote_centres(codes, assignments, centres)
    new = nearest_centres(codes, centres, top_e)
    repaired = reseed_empty(codes, new, centres)
    if repaired is centres:  # nothing was empty: the assignment already is to these centres
        return centres, new
    return repaired, nearest_centres(codes, repaired, top_e)


def binary_kmeans(
    codes: np.ndarray,
    centres: np.ndarray,
    assignments: np.ndarray | None = None,
    top_e: int = 1,
    max_rounds: int = MAX_ROUNDS,
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd rounds (:func:`lloyd_round`) from ``centres`` until the assignment stops changing, at
    most ``max_rounds`` of them. Returns ``(centres (k, l) int8, assignments (n, top_e) int64)``.

    ``assignments`` defaults to the nearest centres of ``codes``. On return the centres are the
    majority vote of the returned assignment whenever it converged (a tied bit keeps its previous
    value, so ties never oscillate).
    """
    codes = check_signs(codes, "codes")
    centres = check_signs(centres, "centres", codes.shape[1])
    max_rounds = check_int("max_rounds", max_rounds)
    if assignments is None:
        assignments = nearest_centres(codes, centres, top_e)
    for _ in range(max_rounds):
        centres, new = lloyd_round(codes, centres, assignments, top_e)
        if np.array_equal(new, assignments):
            break
        assignments = new
    return centres, assignments


def kmeanspp_centres(codes: np.ndarray, k: int, rng: np.random.Generator, *, name: str = "k",
                     hint: str = "") -> np.ndarray:
    """k-means++ seeding in Hamming space (D^2 sampling), restricted to distinct codes: (k, l) int8.

    Raises a ValueError naming ``name`` (the caller's argument for k) when the codes hold fewer
    than k distinct values; ``hint`` is appended to it (what else the caller can change).
    """
    codes = check_signs(codes, "codes")
    k = check_int(name, k)
    uniq = np.unique(codes, axis=0)
    if len(uniq) < k:
        raise ValueError(
            f"{name}={k} but the codes hold only {len(uniq)} distinct values (of {len(codes)}); "
            f"lower {name}{hint}"
        )
    between = HammingDistances(_pack(uniq), _pack(uniq))  # row i: distances of code i to every code
    first = int(rng.integers(len(uniq)))
    chosen = [first]
    dist = between.block(first, first + 1)[0].astype(np.float64)
    for _ in range(1, k):
        w = dist**2
        nxt = int(rng.choice(len(uniq), p=w / w.sum()))
        chosen.append(nxt)
        dist = np.minimum(dist, between.block(nxt, nxt + 1)[0])
    return uniq[chosen].astype(np.int8)
