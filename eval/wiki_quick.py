"""Wiki (SIFT 128-d / LDA 10-d) and the quick MAP@k of the development scripts.

``scripts/wiki_hash_sweep.py`` and ``scripts/wiki_uddh.py`` rank by Hamming distance with ties
broken by item index (a stable sort) because that is how the papers' code (DJSRH / JDSH / DGCPN's
``calc_map_k``, UDDH's Table III) scores, so their numbers sit beside the published ones. The
official, tie-aware numbers come from ``python -m eval.hashing``. Two normalisations, as papers differ:

* ``top50``: AP@k = sum_{i<=k} P@i rel_i / (#relevant in the top k), 0 when there are none;
* ``first50``: mean precision at the first k relevant items, wherever they rank.

Split (``../shared/data/wiki/README.md``): 2,173 training pairs, also the retrieval set, and 693
test pairs as queries; relevant = same label. Labels are used only to score (and by supervised fits).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hashing.hamming import hamming_distances

WIKI = Path(__file__).resolve().parents[2] / "shared" / "data" / "wiki" / "wikiData.mat"
#: UDDH (TPAMI 2024, ../shared/papers/003_*.txt Table III), Wiki MAP@50 at 32/64/128 bits
UDDH_TABLE_III = {"i2t": {32: 0.3908, 64: 0.4012, 128: 0.4224}, "t2i": {32: 0.6144, 64: 0.6305, 128: 0.6541}}


def load_wiki(path: Path = WIKI) -> dict[str, np.ndarray]:
    """The six arrays of wikiData.mat as stored (I/T features, L labels; _tr and _te)."""
    import scipy.io

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (expected ../shared/data/wiki/wikiData.mat)")
    d = scipy.io.loadmat(str(path))
    return {k: d[k] for k in ("I_tr", "T_tr", "L_tr", "I_te", "T_te", "L_te")}


def validation_split(data: dict[str, np.ndarray], n_val: int = 500, seed: int = 0) -> dict[str, np.ndarray]:
    """Held-out queries carved from the training pairs, for choosing settings without the test set."""
    perm = np.random.default_rng(seed).permutation(len(data["I_tr"]))
    val, fit = perm[:n_val], perm[n_val:]
    return {
        "I_tr": data["I_tr"][fit], "T_tr": data["T_tr"][fit], "L_tr": data["L_tr"][fit],
        "I_te": data["I_tr"][val], "T_te": data["T_tr"][val], "L_te": data["L_tr"][val],
    }


def ranked_map_at_k(ranks: np.ndarray, query_labels: np.ndarray, item_labels: np.ndarray, k: int = 50) -> float:
    """``top50`` MAP@k over ranked item ids per query (-1 = no item, never relevant)."""
    ranks = ranks[:, :k]
    valid = ranks >= 0
    rel = valid & (item_labels[np.where(valid, ranks, 0)] == query_labels[:, None])
    hits = np.cumsum(rel, axis=1)
    prec = hits / np.arange(1, ranks.shape[1] + 1)
    n_rel = rel.sum(axis=1)
    ap = np.where(n_rel > 0, (prec * rel).sum(axis=1) / np.maximum(n_rel, 1), 0.0)
    return float(ap.mean())


def hamming_map_at_k(query_codes: np.ndarray, item_codes: np.ndarray, query_labels: np.ndarray,
                     item_labels: np.ndarray, k: int = 50) -> dict[str, float]:
    """Both normalisations (module docstring) of a full Hamming ranking, ties by item index."""
    order = np.argsort(hamming_distances(query_codes, item_codes), axis=1, kind="stable")
    rel = item_labels[order] == query_labels[:, None]
    first = []
    for row in rel:
        ranks = np.flatnonzero(row)[:k] + 1.0
        first.append(np.mean(np.arange(1, len(ranks) + 1) / ranks) if len(ranks) else 0.0)
    return {"top50": ranked_map_at_k(order, query_labels, item_labels, k), "first50": float(np.mean(first))}


def bucket_hamming_rank(
    query_codes: np.ndarray,
    query_buckets: np.ndarray,
    item_codes: np.ndarray,
    item_buckets: np.ndarray,
    topk: int,
    outside: Literal["exclude", "after"] = "exclude",
) -> tuple[np.ndarray, np.ndarray]:
    """Ranks items by Hamming distance of packed codes, scanning only the query's buckets.

    ``query_buckets`` (nq, e) are the query's top-e buckets, ``item_buckets`` (n,) or (n, e') the
    items'. An item is scanned when any of its buckets is among the query's. ``outside="exclude"``
    drops unscanned items (the paper's hierarchical matching: lists may be shorter than topk and
    are padded with -1); ``"after"`` ranks them after every scanned item. Ties go to the lower index.
    Returns (ranked ids (nq, topk) int64, fraction of the items scanned per query (nq,)).
    A brute-force reference for evaluation-sized databases (O(128 n) memory per chunk of queries):
    the library searches buckets through ``UDDHHasher.bucket_index`` (a faiss ``BucketIndex``), which
    has no ``after`` mode and breaks distance ties its own way; tests/test_uddh.py checks the two agree.
    """
    if outside not in ("exclude", "after"):
        raise ValueError(f"outside must be 'exclude' or 'after', got {outside!r}")
    query_codes, item_codes = np.asarray(query_codes), np.asarray(item_codes)
    if query_codes.dtype != np.uint8 or item_codes.dtype != np.uint8:
        raise TypeError("query_codes and item_codes must be packed uint8 codes")
    if query_codes.shape[1] != item_codes.shape[1]:
        raise ValueError(
            f"query_codes have {query_codes.shape[1]} bytes per code, item_codes {item_codes.shape[1]}"
        )
    qb = np.asarray(query_buckets, dtype=np.int64).reshape(len(query_codes), -1)
    ib = np.asarray(item_buckets, dtype=np.int64).reshape(len(item_codes), -1)
    n = len(item_codes)
    topk = int(min(topk, n))
    if (qb < 0).any() or (ib < 0).any():
        raise ValueError("bucket ids must be >= 0")
    n_ids = int(max(qb.max(initial=0), ib.max(initial=0))) + 1
    ranks = np.full((len(query_codes), topk), -1, dtype=np.int64)
    scanned = np.zeros(len(query_codes), dtype=np.float64)
    chunk = 128
    for s in range(0, len(query_codes), chunk):
        qs = query_codes[s : s + chunk]
        dist = hamming_distances(qs, item_codes).astype(np.int64)
        wanted = np.zeros((len(qs), n_ids), dtype=bool)  # the query's buckets, one-hot
        np.put_along_axis(wanted, qb[s : s + chunk], True, axis=1)
        inside = wanted[:, ib].any(axis=2)  # (chunk, n): does any item bucket match?
        scanned[s : s + chunk] = inside.mean(axis=1)
        key = dist.astype(np.int64) + np.where(inside, 0, dist.max(initial=0) + 1)
        order = np.argsort(key, axis=1, kind="stable")[:, :topk]
        if outside == "exclude":
            keep = np.take_along_axis(inside, order, axis=1)
            order = np.where(keep, order, -1)
        ranks[s : s + chunk] = order
    return ranks, scanned


def uddh_bucket_maps(h: Any, q_feat: np.ndarray, q_mod: str, db_feat: np.ndarray, db_mod: str,
                     q_lab: np.ndarray, db_lab: np.ndarray, top_es: tuple[int, ...] = (1, 2)) -> dict[str, Any]:
    """MAP@50 of a fitted UDDH hasher: full Hamming ranking vs search restricted to buckets.

    Bucket-restricted search scans only the items whose bucket (top-1 head code of the item) is
    among the query's top-e buckets; ``exclude`` drops unscanned items, ``after`` ranks them after
    the scanned ones. Also the scanned share, the bucket sizes and their label purity.
    """
    qc, dc = h.encode(q_feat, q_mod), h.encode(db_feat, db_mod)
    db_b = h.assign_buckets(db_feat, db_mod, 1)[:, 0]
    everything = np.zeros(len(qc), np.int64)
    full, _ = bucket_hamming_rank(qc, everything[:, None], dc, np.zeros(len(dc), np.int64), 50)
    res: dict[str, Any] = {"full": ranked_map_at_k(full, q_lab, db_lab)}
    for e in top_es:
        qb = h.assign_buckets(q_feat, q_mod, e)
        for outside in ("exclude", "after"):
            ranks, scanned = bucket_hamming_rank(qc, qb, dc, db_b, 50, outside)
            res[f"e{e}_{outside}"] = ranked_map_at_k(ranks, q_lab, db_lab)
        res[f"e{e}_scanned"] = float(scanned.mean())
    res["bucket_sizes"] = np.bincount(db_b, minlength=h.n_buckets).tolist()
    # purity: share of each database bucket held by its most common label (labels only for scoring)
    pur = sum(np.bincount(db_lab[db_b == b]).max() for b in range(h.n_buckets) if np.any(db_b == b))
    res["purity"] = float(pur / len(db_b))
    return res


def uddh_wiki_run(bits: int, data: dict[str, np.ndarray], seed: int, **kwargs: Any) -> dict[str, Any]:
    """Fits UDDH on the training pairs and scores both directions with :func:`uddh_bucket_maps`."""
    from hashing.uddh import UDDHHasher

    h = UDDHHasher(bits=bits, seed=seed, progress=False, **kwargs)
    t0 = time.perf_counter()
    h.fit(data["I_tr"], data["T_tr"])
    fit_s = time.perf_counter() - t0
    ql, dbl = data["L_te"].ravel(), data["L_tr"].ravel()
    i2t = uddh_bucket_maps(h, data["I_te"], "image", data["T_tr"], "text", ql, dbl)
    t2i = uddh_bucket_maps(h, data["T_te"], "text", data["I_tr"], "image", ql, dbl)
    return {"bits": bits, "fit_s": fit_s, "i2t": i2t, "t2i": t2i, "history": h.history_}
