"""Asymmetric scores: a real-valued query against stored binary codes.

Symmetric Hamming search binarises the query too, so a coordinate barely past its sign flip counts
as much as one far from it. Asymmetric distances (Dong et al. 2008; Gordo, Perronnin, Gong and
Lazebnik, TPAMI 2014) keep the query real: a stored code ``b`` (bits ``s(b)`` in {-1, +1}) scores
``<p(q), s(b)>``, where ``p(q)`` is the hasher's projection before the sign
(:meth:`hashing.base.Hasher.project`). The stored side is unchanged (packed codes, numpy bit
order as :func:`hashing.base.pack_signs` writes them), so this re-ranks the candidates of any
binary index: Hamming top-D1 -> asymmetric top-D2 -> float rescoring.

The scorer is the classic lookup-table trick (ADC): for each byte position of the code, a
256-entry table of the query's partial sums over that byte's 8 bits, so a candidate costs
``bits / 8`` table look-ups instead of ``bits`` multiply-adds on unpacked signs
(:func:`asymmetric_scores_reference`, the definition, kept for tests and checks).
"""

from __future__ import annotations

import numpy as np

from ..base import as_features
from .base import check_k

#: (256, 8) float32: row v holds the {-1, +1} signs of byte value v's bits, most significant first
#: (``np.packbits``' order, the order of :func:`hashing.base.pack_signs`)
_BYTE_SIGNS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.float32) * 2.0 - 1.0


def _check(projected: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(projected float32 (nq, bits), codes uint8 (nq, m, bits // 8)), or a ValueError naming the shapes."""
    projected = as_features(projected, "projected queries")
    nq, bits = projected.shape
    if bits % 8:
        raise ValueError(f"projected queries have {bits} columns: the code length must be a whole number of "
                         "bytes (bits a multiple of 8)")
    codes = np.asarray(codes)
    if codes.dtype != np.uint8:
        raise ValueError(f"codes must be packed uint8 ({bits // 8} bytes for {bits} bits), got dtype {codes.dtype}")
    if codes.ndim != 3 or codes.shape[0] != nq or codes.shape[2] != bits // 8:
        raise ValueError(f"codes must be (nq={nq}, m, {bits // 8}) for {bits}-bit projected queries "
                         f"(each query's m candidates), got shape {codes.shape}")
    return projected, codes


def byte_tables(projected: np.ndarray) -> np.ndarray:
    """(nq, bits // 8, 256) float32: ``[q, j, v]`` is the score byte ``j`` holding value ``v``
    contributes, ``<projected[q, 8j:8j+8], signs(v)>``. Built once per query (``bits * 256`` flops)."""
    projected = as_features(projected, "projected queries")
    nq, bits = projected.shape
    if bits % 8:
        raise ValueError(f"projected queries have {bits} columns: bits must be a multiple of 8")
    return projected.reshape(nq, bits // 8, 8) @ _BYTE_SIGNS.T


def asymmetric_scores(projected: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """(nq, m) float32 ``<projected[q], s(codes[q, i])>`` through per-byte look-up tables.

    ``projected``: (nq, bits) real-valued queries (``Hasher.project``); ``codes``: (nq, m, bits // 8)
    packed uint8, each query's candidates. Higher is closer. Equal to
    :func:`asymmetric_scores_reference` up to float32 summation order (exactly, for inputs whose
    sums are exact).
    """
    projected, codes = _check(projected, codes)
    nq, m, nbytes = codes.shape
    tables = byte_tables(projected).reshape(nq, nbytes * 256)
    offsets = np.arange(nbytes, dtype=np.intp) * 256  # byte j's table starts at 256 j
    out = np.empty((nq, m), dtype=np.float32)
    for q in range(nq):  # one query's gather at a time: bounded memory, and the single-query path
        flat = codes[q].astype(np.intp)
        flat += offsets
        out[q] = tables[q].take(flat).sum(axis=1)
    return out


def asymmetric_scores_reference(projected: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """The definition: unpack the codes to {-1, +1} and take the dot product (float64, returned as
    float32). It materialises ``m x bits`` floats a query where the tables gather ``m x bits / 8``;
    for tests and checks."""
    projected, codes = _check(projected, codes)
    nq, m, nbytes = codes.shape
    signs = np.unpackbits(codes, axis=2).astype(np.float64) * 2.0 - 1.0
    return np.einsum("qmb,qb->qm", signs, projected.astype(np.float64)).astype(np.float32)


def asymmetric_top(projected: np.ndarray, candidate_ids: np.ndarray, codes: np.ndarray, k: int,
                   rows: np.ndarray | None = None) -> np.ndarray:
    """The ``k`` best of each query's candidates by asymmetric score: (nq, k) int64 ids, -1 padded.

    ``candidate_ids``: (nq, m) ids from a binary index, best first, -1 for padding; ``codes``: the
    stored codes, (n, bits // 8) uint8, ``codes[rows[q, i]]`` the code of ``candidate_ids[q, i]``
    (``rows=None``: an id is its row). Equal scores keep the candidates' order (a stable sort), so
    ties fall back on the index's (Hamming) ranking; padding sorts last.
    """
    k = check_k(k)
    candidate_ids = np.asarray(candidate_ids)
    if candidate_ids.ndim != 2 or not np.issubdtype(candidate_ids.dtype, np.integer):
        raise ValueError(f"candidate_ids must be a 2-D integer array (nq, m), got dtype {candidate_ids.dtype} "
                         f"with shape {candidate_ids.shape}")
    rows = candidate_ids if rows is None else np.asarray(rows)
    if rows.shape != candidate_ids.shape:
        raise ValueError(f"rows must match candidate_ids' shape {candidate_ids.shape}, got {rows.shape}")
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be the stored (n, bytes) code table, got shape {codes.shape}")
    valid = candidate_ids >= 0
    if valid.any() and rows[valid].max() >= len(codes):
        raise ValueError(f"candidate rows reach {rows[valid].max()}, but only {len(codes)} codes are stored")
    scores = asymmetric_scores(projected, codes[np.where(valid, rows, 0)])
    scores[~valid] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    out = np.full((len(candidate_ids), k), -1, dtype=np.int64)
    top = np.take_along_axis(candidate_ids.astype(np.int64), order, axis=1)
    top[~np.isfinite(np.take_along_axis(scores, order, axis=1))] = -1
    out[:, :top.shape[1]] = top
    return out
