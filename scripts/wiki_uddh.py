"""UDDH on Wiki (SIFT 128-d / LDA 10-d): MAP@50, full Hamming ranking vs bucket-restricted search.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/wiki_uddh.py [--bits 16 32 64 128] [--json out.json]

Unsupervised: labels are used only to score. 2,173 retrieval/training pairs, 693 queries
(``../shared/data/wiki/README.md``). MAP@50 here is the quick metric: rank by Hamming distance, ties
broken by item index, AP@50 = mean of precision@i over the relevant hits among the top 50
(0 when there are none). The official tie-aware metric lives elsewhere (eval/).
Bucket-restricted search scans only the items whose bucket (top-1 head code of the item) is among
the query's top-e buckets; "excl" drops unscanned items, "after" ranks them after the scanned ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.io

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hashing.uddh import UDDHHasher, bucket_hamming_rank  # noqa: E402

WIKI = Path(__file__).resolve().parents[2] / "shared" / "data" / "wiki" / "wikiData.mat"
PUBLISHED = {  # UDDH Table III, MAP@50 (i2t, t2i)
    32: (0.3908, 0.6144),
    64: (0.4012, 0.6305),
    128: (0.4224, 0.6541),
}


def load_wiki(path: Path = WIKI) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (expected ../shared/data/wiki/wikiData.mat)")
    d = scipy.io.loadmat(str(path))
    return {k: d[k] for k in ("I_tr", "T_tr", "L_tr", "I_te", "T_te", "L_te")}


def map_at_k(ranks: np.ndarray, query_labels: np.ndarray, item_labels: np.ndarray, k: int = 50) -> float:
    """Quick MAP@k over ranked ids (-1 = no item): AP normalised by the relevant hits in the top k."""
    ranks = ranks[:, :k]
    valid = ranks >= 0
    rel = valid & (item_labels[np.where(valid, ranks, 0)] == query_labels[:, None])
    hits = np.cumsum(rel, axis=1)
    prec = hits / np.arange(1, ranks.shape[1] + 1)
    n_rel = rel.sum(axis=1)
    ap = np.where(n_rel > 0, (prec * rel).sum(axis=1) / np.maximum(n_rel, 1), 0.0)
    return float(ap.mean())


def evaluate(h: UDDHHasher, q_feat, q_mod, db_feat, db_mod, q_lab, db_lab, top_es=(1, 2)) -> dict:
    qc, dc = h.encode(q_feat, q_mod), h.encode(db_feat, db_mod)
    db_b = h.assign_buckets(db_feat, db_mod, 1)[:, 0]
    everything = np.zeros(len(qc), np.int64)
    full, _ = bucket_hamming_rank(qc, everything[:, None], dc, np.zeros(len(dc), np.int64), 50)
    res = {"full": map_at_k(full, q_lab, db_lab)}
    for e in top_es:
        qb = h.assign_buckets(q_feat, q_mod, e)
        for outside in ("exclude", "after"):
            ranks, scanned = bucket_hamming_rank(qc, qb, dc, db_b, 50, outside)
            res[f"e{e}_{outside}"] = map_at_k(ranks, q_lab, db_lab)
        res[f"e{e}_scanned"] = float(scanned.mean())
    res["bucket_sizes"] = np.bincount(db_b, minlength=h.n_buckets).tolist()
    # purity: share of each database bucket held by its most common label (labels only for scoring)
    pur = sum(np.bincount(db_lab[db_b == b]).max() for b in range(h.n_buckets) if np.any(db_b == b))
    res["purity"] = float(pur / len(db_b))
    return res


def validation_split(data: dict, n_val: int = 500, seed: int = 0) -> dict:
    """Held-out queries carved from the training pairs, for choosing settings without the test set."""
    perm = np.random.default_rng(seed).permutation(len(data["I_tr"]))
    val, fit = perm[:n_val], perm[n_val:]
    return {
        "I_tr": data["I_tr"][fit], "T_tr": data["T_tr"][fit], "L_tr": data["L_tr"][fit],
        "I_te": data["I_tr"][val], "T_te": data["T_tr"][val], "L_te": data["L_tr"][val],
    }


def run(bits: int, data: dict, seed: int, **kwargs) -> dict:
    h = UDDHHasher(bits=bits, seed=seed, progress=False, **kwargs)
    t0 = time.perf_counter()
    h.fit(data["I_tr"], data["T_tr"])
    fit_s = time.perf_counter() - t0
    ql, dbl = data["L_te"].ravel(), data["L_tr"].ravel()
    i2t = evaluate(h, data["I_te"], "image", data["T_tr"], "text", ql, dbl)
    t2i = evaluate(h, data["T_te"], "text", data["I_tr"], "image", ql, dbl)
    return {"bits": bits, "fit_s": fit_s, "i2t": i2t, "t2i": t2i, "history": h.history_}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-buckets", type=int, default=10)
    p.add_argument("--n-iter", type=int, default=10)
    p.add_argument("--epochs-per-iter", type=int, default=5)
    p.add_argument("--graph-mode", default="aligned", choices=["aligned", "paper"])
    p.add_argument("--graph-weight", type=float, default=1.0)
    p.add_argument("--content-bits", type=int, default=None, help="default bits // 2")
    p.add_argument("--hidden-dim", type=int, default=512)
    p.add_argument("--sigma", type=float, default=None)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--validation", action="store_true",
                   help="score 500 held-out training pairs against the other 1,673 (for tuning)")
    p.add_argument("--json", type=Path, default=None, help="write every number here")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    data = load_wiki()
    if args.validation:
        data = validation_split(data)
    rows = []
    for bits in args.bits:
        kw = dict(
            n_buckets=args.n_buckets,
            n_iter=args.n_iter,
            epochs_per_iter=args.epochs_per_iter,
            graph_mode=args.graph_mode,
            graph_weight=args.graph_weight,
            hidden_dim=args.hidden_dim,
            sigma=args.sigma,
        )
        if args.content_bits is not None:
            kw["content_bits"] = min(args.content_bits, bits)
        r = run(bits, data, args.seed, **kw)
        rows.append(r)
        pub = PUBLISHED.get(bits, (float("nan"), float("nan")))
        print(
            f"{bits:4d} bits | i2t full {r['i2t']['full']:.4f} e1 {r['i2t']['e1_exclude']:.4f}/"
            f"{r['i2t']['e1_after']:.4f} e2 {r['i2t']['e2_exclude']:.4f} (pub {pub[0]:.4f}) | "
            f"t2i full {r['t2i']['full']:.4f} e1 {r['t2i']['e1_exclude']:.4f}/{r['t2i']['e1_after']:.4f} "
            f"e2 {r['t2i']['e2_exclude']:.4f} (pub {pub[1]:.4f}) | scanned e1 i2t {r['i2t']['e1_scanned']:.3f} "
            f"t2i {r['t2i']['e1_scanned']:.3f} e2 {r['i2t']['e2_scanned']:.3f}/{r['t2i']['e2_scanned']:.3f} | "
            f"purity {r['i2t']['purity']:.2f} | fit {r['fit_s']:.0f}s",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
