"""MGSGH's ablation (its Table 5) in kind: Nothing / Only graph / Full, mean ± sd over seeds.

    HF_HUB_OFFLINE=1 python scripts/mgsgh_ablation.py --dataset wiki --data ../shared/data/wiki/wikiData.mat \\
        --supervised --bits 64 --seeds 0 1 2 --set k=5 --output runs/mgsgh_ablation_wiki.json

    HF_HUB_OFFLINE=1 python scripts/mgsgh_ablation.py --dataset flickr8k \\
        --data ../shared/data/flickr8k/dataset_flickr8k.json --fine cache/flickr8k-lite-fine.npz \\
        --bits 64 --seeds 0 1 2 --set k=5 --set epochs=5 --output runs/mgsgh_ablation_flickr8k.json

Variants (the paper's §IV-E definitions): **Nothing** = an MLP of the same width mapped to codes,
no graph and no hash loss (eq. 9); **Only graph** = the graphs, no hash loss; **Full** = graphs and
eq. 9, without and (Flickr8K, ``--fine``) with the fine-grained branch (``hashing/mgsgh_fine.py``).
``--fine`` names the cache of ``python -m eval.fine_features``, which also holds the lite global
embeddings (used when ``--embeddings`` is not given). ``--variants`` runs some of them and
``--output`` merges into the file's earlier results, so a long ablation can run in several jobs.
Wiki: MAP@50 (tie-aware, as ``eval.hashing``); Flickr8K-1K: hash-only R@1/5/10 (as ``eval.stage1``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json  # noqa: E402
import shlex  # noqa: E402
import time  # noqa: E402

from common.atomic import write_json  # noqa: E402
from common.settings_args import key_setting  # noqa: E402
from eval.datasets_hashing import flickr8k_embeddings, load_flickr8k, load_wiki  # noqa: E402
from eval.fine_features import check_aligned, load_flickr8k_fine  # noqa: E402
from eval.hashing import evaluate_method  # noqa: E402
from eval.machine import machine  # noqa: E402
from eval.stage1 import recalls  # noqa: E402
from eval.hash_metrics import hamming_distances  # noqa: E402
from hashing import create_hasher  # noqa: E402

NO_HASH_LOSS = {"quantization_weight": 0.0, "balance_weight": 0.0}
VARIANTS = {
    "Nothing": {"graph": False, **NO_HASH_LOSS},
    "Only graph": {"graph": True, **NO_HASH_LOSS},
    "Full (no fine branch)": {"graph": True},
    "Full (with fine branch)": {"graph": True, "fine": True},
}


def flickr8k_row(data, bits: int, seed: int, settings: dict, fine: dict | None = None) -> dict[str, float]:
    """Fit on Flickr8K train, hash-only R@K on the 1K test; ``fine``: the cache's splits when the
    variant has the fine branch (the train images' grids repeated per caption, as their features are)."""
    hasher = create_hasher("mgsgh", bits, seed=seed, progress=False, **settings)
    test = data.query
    began = time.perf_counter()
    if settings.get("fine"):
        owner = data.train.image_labels  # the image of every train caption (load_flickr8k)
        hasher.fit(data.train.image, data.train.text, image_fine=fine["train"].regions[owner],
                   text_fine=fine["train"].text_rows())
        ci = hasher.encode(test.image, "image", fine=fine["query"].regions)
        ct = hasher.encode(test.text, "text", fine=fine["query"].text_rows())
    else:
        hasher.fit(data.train.image, data.train.text)
        ci, ct = hasher.encode(test.image, "image"), hasher.encode(test.text, "text")
    seconds = time.perf_counter() - began  # fit and encode of the 1K test, one process under the lock
    rel = test.text_labels[None, :] == np.arange(len(test.image))[:, None]
    d = hamming_distances(ci, ct).astype(np.float64)
    return {**{f"i2t_{k}": v for k, v in recalls(-d, rel).items()},
            **{f"t2i_{k}": v for k, v in recalls(-d.T, rel.T).items()}, "fit_encode_s": seconds}


def fine_gain(table: dict) -> dict:
    """Per bit length, (with fine) - (without fine) for each metric, seed by seed (same seeds, same
    shared settings): mean and sd of the differences, and each one. Empty unless both were run."""
    with_fine, without = table.get("Full (with fine branch)"), table.get("Full (no fine branch)")
    if not with_fine or not without:
        return {}
    out = {}
    for bits in with_fine.keys() & without.keys():
        diffs = {m: np.subtract(with_fine[bits][m]["runs"], without[bits][m]["runs"])
                 for m in with_fine[bits] if m.startswith(("i2t", "t2i"))}
        out[bits] = {m: {"mean": float(d.mean()), "sd": float(d.std()), "runs": d.tolist()} for m, d in diffs.items()}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=("wiki", "flickr8k"), required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--embeddings", type=Path)
    p.add_argument("--model")
    p.add_argument("--bits", type=int, nargs="+", default=[64])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--supervised", action="store_true", help="wiki: fit with the class labels")
    p.add_argument("--fine", type=Path, help="flickr8k: the fine-feature cache (python -m eval.fine_features)")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), metavar="NAME",
                   help=f"run only these ({'; '.join(VARIANTS)}); default all that the data allow")
    p.add_argument("--set", type=key_setting, action="append", default=[], metavar="KEY=VALUE",
                   help="a setting shared by every variant, e.g. epochs=10")
    p.add_argument("--output", type=Path)
    args = p.parse_args(argv)
    fine = None
    if args.dataset == "wiki":
        if args.fine or (args.variants and any(VARIANTS[v].get("fine") for v in args.variants)):
            p.error("the fine branch needs pixels and words (region grids, word sequences); Wiki ships only "
                    "SIFT/LDA vectors, so only the global branch runs there")
        data = load_wiki(args.data)
    else:
        embeddings = args.embeddings or args.fine
        if embeddings is None:
            p.error("flickr8k needs --embeddings or --fine (whose cache holds the lite embeddings too)")
        flickr8k_embeddings(embeddings, args.model, args.data, None)
        data = load_flickr8k(embeddings, args.data)
        fine = load_flickr8k_fine(args.fine, args.data) if args.fine else None
        if fine is not None and embeddings != args.fine:
            check_aligned(args.fine, data)  # the fine rows must be the embeddings' rows
    names = args.variants or [v for v in VARIANTS if fine is not None or not VARIANTS[v].get("fine")]
    if fine is None and any(VARIANTS[v].get("fine") for v in names):
        p.error("a fine-branch variant needs --fine CACHE")
    shared = dict(args.set)
    table: dict = {}
    earlier = None
    if args.output and args.output.is_file():  # merge: earlier variants of the same ablation stay
        earlier = json.loads(args.output.read_text())
        if earlier.get("shared_settings") != shared or earlier.get("seeds") != args.seeds:
            p.error(f"{args.output} holds another ablation (settings {earlier.get('shared_settings')}, seeds "
                    f"{earlier.get('seeds')}); name another --output")
        table = {k: v for k, v in earlier["results"].items() if k not in names}
    for name in names:
        variant = VARIANTS[name]
        for bits in args.bits:
            runs = []
            for seed in args.seeds:
                settings = {**shared, **variant}
                if args.dataset == "wiki":
                    res = evaluate_method(data, "mgsgh", bits, supervised=args.supervised, seed=seed,
                                          hasher_args={**settings, "progress": False})
                    runs.append({d: res[d]["map@50"] for d in ("i2t", "t2i")})
                else:
                    runs.append(flickr8k_row(data, bits, seed, settings, fine))
            summary = {m: {"mean": float(np.mean([r[m] for r in runs])), "sd": float(np.std([r[m] for r in runs])),
                           "runs": [r[m] for r in runs]} for m in runs[0]}
            table.setdefault(name, {})[str(bits)] = summary
            print(name, bits, "  ".join(f"{m} {v['mean']:.4f}±{v['sd']:.4f}" for m, v in summary.items()), flush=True)
    table = {name: table[name] for name in VARIANTS if name in table}
    metric = "MAP@50 (tie-aware)" if args.dataset == "wiki" else "hash-only R@K (tie-aware)"
    columns = list(table[next(iter(table))][str(args.bits[0])])
    print("\n| variant | bits | " + " | ".join(columns) + " |")
    print("|" + "---|" * (2 + len(columns)))
    for name, by_bits in table.items():
        for bits, summary in by_bits.items():
            print(f"| {name} | {bits} | " + " | ".join(f"{v['mean']:.3f} ± {v['sd']:.3f}" for v in summary.values()) + " |")
    gain = fine_gain(table)
    if gain:
        print("\nfine branch's gain over Full without it, paired by seed (mean ± sd of the per-seed differences):")
        for bits, summary in gain.items():
            print(f"{bits} bits: " + "  ".join(f"{m} {v['mean']:+.4f} ± {v['sd']:.4f}" for m, v in summary.items()))
    command = shlex.join(["python", "scripts/mgsgh_ablation.py", *(argv if argv is not None else sys.argv[1:])])
    report = {"dataset": args.dataset, "supervised": args.supervised, "metric": metric, "seeds": args.seeds,
              "shared_settings": shared, "variants": VARIANTS, "results": table, "fine_gain": gain, "machine": machine(),
              "commands": [*(earlier.get("commands", [earlier.get("command")]) if earlier else []), command]}
    if args.output:
        write_json(args.output, report)
    return report


if __name__ == "__main__":
    main()
