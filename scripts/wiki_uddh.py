"""UDDH on Wiki (SIFT 128-d / LDA 10-d): MAP@50, full Hamming ranking vs bucket-restricted search.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/wiki_uddh.py [--bits 16 32 64 128] [--json out.json]

Unsupervised: labels are used only to score. 2,173 retrieval/training pairs, 693 queries
(``../shared/data/wiki/README.md``). MAP@50 here is the quick metric: rank by Hamming distance, ties
broken by item index, AP@50 = mean of precision@i over the relevant hits among the top 50
(0 when there are none; eval/wiki_quick.py). The official tie-aware metric: ``python -m eval.hashing``.
Bucket-restricted search scans only the items whose bucket (top-1 head code of the item) is among
the query's top-e buckets; "excl" drops unscanned items, "after" ranks them after the scanned ones.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from eval.wiki_quick import UDDH_TABLE_III, load_wiki, uddh_wiki_run, validation_split


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
        r = uddh_wiki_run(bits, data, args.seed, **kw)
        rows.append(r)
        pub = tuple(UDDH_TABLE_III[d].get(bits, float("nan")) for d in ("i2t", "t2i"))
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
