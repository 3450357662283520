"""Chooses MGSGH's settings (k of the mutual-kNN graphs first) on held-out training rows, never on test.

    HF_HUB_OFFLINE=1 python scripts/mgsgh_choose.py --dataset wiki --data ../shared/data/wiki/wikiData.mat \\
        --bits 64 --supervised --grid k=0,5,10 --output runs/mgsgh_choose_wiki.json

    HF_HUB_OFFLINE=1 python scripts/mgsgh_choose.py --dataset flickr8k \\
        --data ../shared/data/flickr8k/dataset_flickr8k.json --embeddings cache/flickr8k-lite.npz --model lite \\
        --bits 64 --grid k=0,5 --set epochs=5 --output runs/mgsgh_choose_flickr8k.json

Held-out split: a seeded fifth of the training *groups* (Wiki: training pairs; Flickr8K: train
images with all their captions) becomes validation queries; the hasher fits on the other four
fifths, which are also the gallery. Wiki scores MAP@50 (same class relevant, tie-aware), Flickr8K
hash-only R@1 (an image's own captions relevant), each the mean of i2t and t2i. ``k=0`` is no
graph edge at all (each node only its self-loop). Every other setting is fixed by ``--set``.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.atomic import write_json  # noqa: E402
from common.settings_args import key_setting, setting_value  # noqa: E402
from eval import hash_metrics as hm  # noqa: E402
from eval.datasets_hashing import flickr8k_embeddings, load_flickr8k, load_wiki  # noqa: E402
from eval.recall import expected_hits  # noqa: E402
from hashing import create_hasher, hasher_class  # noqa: E402


def grid_setting(text: str) -> tuple[str, list]:
    key, value = key_setting(text)
    return key, [setting_value(v) for v in str(value).split(",")] if not isinstance(value, list) else value


def split_rows(groups: np.ndarray, seed: int, fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, held-out rows): whole groups held out, so no held-out caption's image is fitted on."""
    unique = np.unique(groups)
    held = np.random.default_rng(seed).choice(unique, int(round(fraction * len(unique))), replace=False)
    mask = np.isin(groups, held)
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def score(hasher, img, txt, groups, fit, held, dataset: str) -> dict[str, float]:
    """Held-out queries against the fitted rows' other modality."""
    out = {}
    for direction, (q, r, qm, rm) in {"i2t": (img, txt, "image", "text"), "t2i": (txt, img, "text", "image")}.items():
        if dataset == "flickr8k" and direction == "i2t":
            # one query per held-out image; gallery = held-out captions (Flickr8K-style), likewise t2i
            qi = held[np.unique(groups[held], return_index=True)[1]]
            qc, rc = hasher.encode(img[qi], "image"), hasher.encode(txt[held], "text")
            rel = groups[qi][:, None] == groups[held][None, :]
        elif dataset == "flickr8k":
            qi = held[np.unique(groups[held], return_index=True)[1]]
            qc, rc = hasher.encode(txt[held], "text"), hasher.encode(img[qi], "image")
            rel = groups[held][:, None] == groups[qi][None, :]
        else:
            qc, rc = hasher.encode(q[held], qm), hasher.encode(r[fit], rm)
            rel = groups[held][:, None] == groups[fit][None, :]
        d = hm.hamming_distances(qc, rc).astype(np.float64)
        if dataset == "flickr8k":
            out[direction] = float(expected_hits(-d, rel, (1,))[1].mean())
        else:
            out[direction] = float(hm.evaluate(d, hm.Relevance(groups[held], groups[fit], "label"), map_at=(50,),
                                               p_at=(), radius=None)["map@50"])
    out["mean"] = (out["i2t"] + out["t2i"]) / 2
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=("wiki", "flickr8k"), required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--embeddings", type=Path)
    p.add_argument("--model")
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--supervised", action="store_true", help="wiki: fit with the class labels")
    p.add_argument("--grid", type=grid_setting, action="append", default=[], metavar="KEY=V1,V2,...")
    p.add_argument("--set", type=key_setting, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--method", default="mgsgh",
                   help="the hasher to fit (default mgsgh); another one (contrastive) scores a reference on the same rows")
    p.add_argument("--output", type=Path)
    args = p.parse_args(argv)
    if args.dataset == "wiki":
        data = load_wiki(args.data)
        img, txt = data.train.image, data.train.text
        groups = np.asarray(data.train.image_labels).reshape(len(img), -1)
        groups = groups[:, 0] if groups.shape[1] == 1 else groups.argmax(1)
        units = np.arange(len(img))  # held out by pair; relevance by class
    else:
        flickr8k_embeddings(args.embeddings, args.model, args.data, None)
        data = load_flickr8k(args.embeddings, args.data)
        img, txt, groups = data.train.image, data.train.text, np.asarray(data.train.text_labels)
        units = groups
    fixed = dict(args.set)
    keys = [k for k, _ in args.grid]
    rows = []
    for values in itertools.product(*[v for _, v in args.grid]) if args.grid else [()]:
        settings = {**fixed, **dict(zip(keys, values))}
        per_seed = []
        for seed in args.seeds:
            fit, held = split_rows(units, seed)
            # Flickr8K: MGSGH's positives are the captions of one image (its default without labels);
            # a reference hasher is fitted from the pairs alone, as eval.stage1 fits it
            labels = (groups[fit] if args.supervised or (args.dataset == "flickr8k" and args.method == "mgsgh")
                      else None)
            quiet = {"progress": False} if "progress" in inspect.signature(hasher_class(args.method)).parameters else {}
            t0 = time.perf_counter()
            hasher = create_hasher(args.method, args.bits, seed=seed, **quiet, **settings)
            hasher.fit(img[fit], txt[fit], labels)
            res = score(hasher, img, txt, groups, fit, held, args.dataset)
            res["fit_s"] = time.perf_counter() - t0
            per_seed.append(res)
        row = {"settings": settings, **{m: float(np.mean([r[m] for r in per_seed])) for m in per_seed[0]},
               "sd": float(np.std([r["mean"] for r in per_seed]))}
        rows.append(row)
        print(f"{settings}: i2t {row['i2t']:.4f} t2i {row['t2i']:.4f} mean {row['mean']:.4f} "
              f"(sd {row['sd']:.4f}, fit {row['fit_s']:.0f}s)", flush=True)
    best = max(rows, key=lambda r: r["mean"])
    print(f"best on held-out: {best['settings']}")
    report = {"dataset": args.dataset, "method": args.method, "bits": args.bits, "supervised": args.supervised, "seeds": args.seeds,
              "metric": "wiki: MAP@50 (tie-aware); flickr8k: hash-only R@1; mean of i2t and t2i",
              "rows": rows, "best": best["settings"], "command": " ".join(sys.argv)}
    if args.output:
        write_json(args.output, report)
    return report


if __name__ == "__main__":
    main()
