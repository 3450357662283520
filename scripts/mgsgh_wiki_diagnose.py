"""Why MGSGH's Wiki image->text lags: held-out MAP@50 plus how often codes land on their class.

    HF_HUB_OFFLINE=1 python scripts/mgsgh_wiki_diagnose.py --data ../shared/data/wiki/wikiData.mat \\
        --seeds 0 1 2 --set k=0 --set epochs=100
    HF_HUB_OFFLINE=1 python scripts/mgsgh_wiki_diagnose.py --data ../shared/data/wiki/wikiData.mat \\
        --seeds 0 1 2 --method contrastive

Same held-out folds, seeds and MAP@50 as ``scripts/mgsgh_choose.py`` (supervised, class labels),
so its i2t / t2i columns equal that script's. Added per fold: the fraction of images (texts), fitted
and held-out, whose ±1 code has its largest inner product with the mean fitted *text* code of its
own class, among all classes. With texts clustered by class, that is what image->text retrieval
asks of an image code; the fitted/held-out pair shows how much the image branch memorises.
Never touches the test split. ``hashing/MGSGH.md`` ("Wiki, session 10") holds the table.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common.atomic import write_json  # noqa: E402
from common.settings_args import key_setting  # noqa: E402
from eval.datasets_hashing import load_wiki  # noqa: E402
from hashing import create_hasher, hasher_class  # noqa: E402
from hashing.base import unpack_codes  # noqa: E402
from mgsgh_choose import score, split_rows  # noqa: E402


def class_hits(hasher, img, txt, classes, fit, held, bits: int) -> dict[str, float]:
    """Fraction of rows whose code is closest to its own class's mean fitted-text code."""
    texts = unpack_codes(hasher.encode(txt[fit], "text"), bits)
    centres = np.stack([texts[classes[fit] == c].mean(0) for c in range(classes.max() + 1)])
    out = {}
    for modality, feats in (("image", img), ("text", txt)):
        for name, rows in (("fitted", fit), ("held", held)):
            codes = unpack_codes(hasher.encode(feats[rows], modality), bits)
            out[f"{modality}_class_{name}"] = float((np.argmax(codes @ centres.T, 1) == classes[rows]).mean())
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--method", default="mgsgh")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--set", type=key_setting, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--output", type=Path)
    args = p.parse_args(argv)
    data = load_wiki(args.data)
    img, txt = data.train.image, data.train.text
    raw = np.asarray(data.train.image_labels).reshape(len(img), -1)
    raw = raw[:, 0] if raw.shape[1] == 1 else raw.argmax(1)
    classes = np.unique(raw, return_inverse=True)[1].reshape(-1)
    settings = dict(args.set)
    quiet = {"progress": False} if "progress" in inspect.signature(hasher_class(args.method)).parameters else {}
    folds = []
    for seed in args.seeds:
        fit, held = split_rows(np.arange(len(img)), seed)
        hasher = create_hasher(args.method, args.bits, seed=seed, **quiet, **settings)
        hasher.fit(img[fit], txt[fit], raw[fit])
        row = {"seed": seed, **score(hasher, img, txt, raw, fit, held, "wiki"),
               **class_hits(hasher, img, txt, classes, fit, held, args.bits)}
        folds.append(row)
        print(" ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    mean = {k: float(np.mean([f[k] for f in folds])) for k in folds[0] if k != "seed"}
    print("mean " + " ".join(f"{k} {v:.3f}" for k, v in mean.items()))
    report = {"method": args.method, "bits": args.bits, "settings": settings, "folds": folds, "mean": mean,
              "command": " ".join(sys.argv)}
    if args.output:
        write_json(args.output, report)
    return report


if __name__ == "__main__":
    main()
