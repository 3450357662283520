"""Quick Wiki sweep of the stage-1 hashers: MAP@50 for i2t and t2i at 16/32/64/128 bits.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/wiki_hash_sweep.py \\
        --data ../shared/data/wiki/wikiData.mat --seeds 0 1 2 --output runs/wiki_hash_sweep.json

    # tuning: override any constructor argument of one method (repeatable)
    ... --methods contrastive --bits 64 --set contrastive.temperature=0.3 --set contrastive.dropout=0.5

Split: hashers fit on the 2,173 training pairs (I_tr, T_tr), which are also the retrieval set; the
693 test pairs are the queries; relevant = same label. ``contrastive-sup`` passes L_tr to fit().

This is a *quick* metric for development: Hamming ranking with ties broken by item index (stable
sort). Two MAP@50 normalisations are printed because papers differ:
  * ``top50``: AP@50 = sum_{k<=50} P@k rel_k / (#relevant in the top 50);
  * ``first50``: mean precision at the first 50 relevant items, wherever they rank (``calc_map_k``
    in the DJSRH / JDSH / DGCPN code, which the UDDH table's baselines come from).
The official, tie-aware numbers come from ``python -m eval.hashing``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from common.settings_args import by_name, named_setting
from eval.wiki_quick import UDDH_TABLE_III, WIKI, hamming_map_at_k, load_wiki
from hashing import create_hasher

# name -> (registered method, constructor overrides, supervised)
METHODS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "lsh": ("lsh", {}, False),
    "itq": ("itq", {}, False),
    "contrastive": ("contrastive", {}, False),
    "contrastive-sup": ("contrastive", {}, True),
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=WIKI)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--set", dest="overrides", action="append", default=[], type=named_setting,
                   metavar="METHOD.ARG=VALUE", help="hasher constructor argument (JSON value or string)")
    p.add_argument("--threads", type=int, default=1, help="torch/BLAS threads (small models: 1 is fastest)")
    p.add_argument("--output", type=Path, help="JSON file for the results")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    try:  # comes with scikit-learn (dev extra); without it BLAS keeps its own thread count
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    except ImportError:
        pass
    overrides = by_name(args.overrides)
    d = load_wiki(args.data)
    train_i, train_t, query_i, query_t = (d[k].astype(np.float32) for k in ("I_tr", "T_tr", "I_te", "T_te"))
    lab_tr, lab_te = d["L_tr"].ravel().astype(np.int64), d["L_te"].ravel().astype(np.int64)

    results: dict[str, Any] = {}
    for name in args.methods:
        method, kwargs, supervised = METHODS[name]
        kwargs = {**kwargs, **overrides.get(name, {})}
        if method == "contrastive":
            kwargs.setdefault("progress", args.progress)
        for bits in args.bits:
            runs = []
            for seed in args.seeds:
                t0 = time.perf_counter()
                h = create_hasher(method, bits, seed=seed, **kwargs)
                h.fit(train_i, train_t, lab_tr if supervised else None)
                fit_s = time.perf_counter() - t0
                runs.append({
                    "seed": seed, "fit_s": round(fit_s, 2),
                    "i2t": hamming_map_at_k(h.encode(query_i, "image"), h.encode(train_t, "text"), lab_te, lab_tr),
                    "t2i": hamming_map_at_k(h.encode(query_t, "text"), h.encode(train_i, "image"), lab_te, lab_tr),
                })
            summary = {
                f"{direction}_{norm}": [float(np.mean([r[direction][norm] for r in runs])),
                                        float(np.std([r[direction][norm] for r in runs]))]
                for direction in ("i2t", "t2i") for norm in ("top50", "first50")
            }
            results.setdefault(name, {})[bits] = {"config": h.get_config(), "runs": runs, "mean_std": summary}
            s = summary
            print(f"{name:16s} {bits:4d} bits  i2t {s['i2t_top50'][0]:.4f}±{s['i2t_top50'][1]:.4f} "
                  f"(first50 {s['i2t_first50'][0]:.4f})  t2i {s['t2i_top50'][0]:.4f}±{s['t2i_top50'][1]:.4f} "
                  f"(first50 {s['t2i_first50'][0]:.4f})  fit {np.mean([r['fit_s'] for r in runs]):.1f}s",
                  flush=True)

    print("\nMAP@50 on Wiki (quick metric: Hamming ranking, ties by index; top50 / first50 "
          f"normalisation; mean over seeds {args.seeds})\n")
    print("| method | bits | i2t top50 | i2t first50 | t2i top50 | t2i first50 |")
    print("|---|---|---|---|---|---|")
    for name, per_bits in results.items():
        for bits, r in per_bits.items():
            s = r["mean_std"]
            print(f"| {name} | {bits} | {s['i2t_top50'][0]:.4f} | {s['i2t_first50'][0]:.4f} | "
                  f"{s['t2i_top50'][0]:.4f} | {s['t2i_first50'][0]:.4f} |")
    print("| UDDH (paper) | 32/64/128 | " + "/".join(f"{v:.4f}" for v in UDDH_TABLE_III["i2t"].values()) + " | | "
          + "/".join(f"{v:.4f}" for v in UDDH_TABLE_III["t2i"].values()) + " | |")
    out = {"metric": "MAP@50, ties broken by index", "seeds": args.seeds, "data": str(args.data),
           "results": results}
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
