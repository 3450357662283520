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

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flickr8k"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, default=DATA / "dataset_flickr8k.json")
    p.add_argument("--images", type=Path, default=DATA / "images")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--epochs", type=int, nargs="+", default=[5, 10, 20, 40, 80])
    p.add_argument("--candidates", type=int, default=128)
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)

    import numpy as np

    from eval.karpathy import load_karpathy
    from eval.retrieval import embed_dataset
    from eval.two_stage import gallery_retriever, recall_ceiling
    from eval.validation import held_out_train
    from hashing import create_hasher
    from retrieval import load_encoder
    from retrieval.atomic import write_json

    train = load_karpathy(args.dataset, args.images, "train")
    encoder = load_encoder("lite")
    emb = embed_dataset(encoder, train, cache_dir=args.cache_dir)
    held = held_out_train(train.caption_image, train.n_images)
    owner = np.asarray(train.caption_image)
    fit_images, fit_texts = emb.images[owner[held.fit_captions]], emb.texts[held.fit_captions]

    def measure(hasher) -> dict[str, float]:
        r = gallery_retriever(encoder, hasher, [None] * len(held.gallery_images), emb.images[held.gallery_images],
                              [train.captions[j] for j in held.gallery_captions], emb.texts[held.gallery_captions],
                              args.candidates, hamming_candidates=None)
        return {"t2i": recall_ceiling(r, emb.texts[held.val_captions], "text", emb.images[held.gallery_images],
                                      args.candidates),
                "i2t": recall_ceiling(r, emb.images[held.val_images], "image", emb.texts[held.gallery_captions],
                                      args.candidates)}

    itq = measure(create_hasher("itq", args.bits).fit(fit_images, fit_texts))
    print(f"itq-{args.bits}: held-out float top-10 kept in Hamming top-{args.candidates}: "
          f"t2i {itq['t2i']:.3f}, i2t {itq['i2t']:.3f}", flush=True)
    rows, best = [], None
    for epochs in args.epochs:
        t0 = time.perf_counter()
        hasher = create_hasher("contrastive", args.bits, epochs=epochs, progress=False)
        hasher.fit(fit_images, fit_texts, owner[held.fit_captions])
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
        write_json(args.output, {"bits": args.bits, "itq": itq, "contrastive": rows, "chosen_epochs": best["epochs"],
                                 "fit_pairs": len(held.fit_captions), "multi_positive": True})


if __name__ == "__main__":
    main()
