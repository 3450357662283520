"""How long to train the contrastive hasher: doubling epochs until held-out recall stops rising.

    python scripts/tune_contrastive_hasher.py --cache-dir cache/emb --bits 64 --output runs/contrastive_tuning.json

Fits on the 27,500 (image, caption) pairs of the train images outside the held-out draw
(``eval/validation.py``), multi-positive (each pair labelled by its image, so the five captions of
an image are positives for each other), and measures on the held-out galleries the share of the
float top-10 inside the Hamming top-128, both directions, beside ITQ fitted on the same pairs.
The chosen epoch count (the last before the mean share drops, or the largest tried) is what
``python -m eval.stage1 --method contrastive --multi-positive --hasher-arg contrastive.epochs=E``
then trains on all 30,000 pairs for the test table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common.settings_args import key_setting

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flickr8k"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, default=DATA / "dataset_flickr8k.json")
    p.add_argument("--images", type=Path, default=DATA / "images")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--epochs", type=int, nargs="+", default=[5, 10, 20, 40, 80])
    p.add_argument("--candidates", type=int, default=128)
    p.add_argument("--hasher-arg", action="append", default=[], type=key_setting, metavar="KEY=VALUE",
                   help="ContrastiveHasher argument (JSON value), e.g. num_layers=1")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)

    from eval.validation import HeldOutGalleries
    from hashing import create_hasher
    from common.atomic import write_json

    held = HeldOutGalleries(args.dataset, args.images, args.cache_dir, args.candidates)
    fit_images, fit_texts, fit_labels = held.fit_pairs

    def measure(hasher) -> dict[str, float]:
        kept = held.kept(hasher)
        return {"t2i": kept["image"], "i2t": kept["text"]}

    extra = dict(args.hasher_arg)
    itq = measure(create_hasher("itq", args.bits).fit(fit_images, fit_texts))
    print(f"itq-{args.bits}: held-out float top-10 kept in Hamming top-{args.candidates}: "
          f"t2i {itq['t2i']:.3f}, i2t {itq['i2t']:.3f}", flush=True)
    rows, best = [], None
    for epochs in args.epochs:
        t0 = time.perf_counter()
        hasher = create_hasher("contrastive", args.bits, epochs=epochs, progress=False, **extra)
        hasher.fit(fit_images, fit_texts, fit_labels)
        row = {"epochs": epochs, **measure(hasher), "fit_seconds": time.perf_counter() - t0}
        row["mean"] = (row["t2i"] + row["i2t"]) / 2
        rows.append(row)
        print(f"contrastive-{args.bits}, {epochs} epochs: t2i {row['t2i']:.3f}, i2t {row['i2t']:.3f} "
              f"(fit {row['fit_seconds']:.0f} s)", flush=True)
        if best is not None and row["mean"] < best["mean"]:
            break  # validation stopped rising
        best = row
    print(f"chosen: {best['epochs']} epochs")
    if args.output:
        write_json(args.output, {"bits": args.bits, "hasher_args": extra, "itq": itq, "contrastive": rows, "chosen_epochs": best["epochs"],
                                 "fit_pairs": len(fit_texts), "multi_positive": True})


if __name__ == "__main__":
    main()
