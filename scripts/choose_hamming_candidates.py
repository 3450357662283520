"""Chooses the stage-1 cascade depth (Hamming top-N before float rescoring) on held-out train images.

    python scripts/choose_hamming_candidates.py --cache-dir cache/emb --output runs/hamming_candidates.json

Never on test. The validation set is the lite trainer's: the seeded draw of 500 Flickr8K train
images (``np.random.default_rng(0).permutation(6000)[:500]``, as scripts/train_lite.py draws it)
and their 2,500 captions. So that a depth N means what it will mean on a 1,000-image / 5,000-caption
test gallery, each gallery is padded to those sizes with the next 500 train images of the same
permutation and their captions (distractors that are never queried). The hasher is the one the
lite encoder ships (ITQ-64, retrieval/weights/lite/hasher).

For each N the share of each query's exhaustive float top-10 that survives into the 128 candidates
a reranker receives is measured, per direction; the chosen N per gallery is the smallest reaching
``--target`` (default 0.97: the goal on test is 0.95, the margin is for val-test drift).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flickr8k"
DEPTHS = (128, 192, 256, 384, 512, 768, 1024, 1536, 2048)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, default=DATA / "dataset_flickr8k.json")
    p.add_argument("--images", type=Path, default=DATA / "images")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--candidates", type=int, default=128)
    p.add_argument("--target", type=float, default=0.97)
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)

    from eval.karpathy import load_karpathy
    from eval.retrieval import embed_dataset
    from eval.two_stage import gallery_retriever, recall_ceiling
    from retrieval import load_encoder
    from retrieval.atomic import write_json
    from retrieval.retriever import shipped_hasher

    train = load_karpathy(args.dataset, args.images, "train")
    encoder = load_encoder("lite")
    emb = embed_dataset(encoder, train, cache_dir=args.cache_dir)
    order = np.random.default_rng(0).permutation(train.n_images)
    val, pad = np.sort(order[:500]), np.sort(order[500:1000])
    images = np.concatenate([val, pad])
    owner = np.asarray(train.caption_image)
    val_caps = np.flatnonzero(np.isin(owner, val))
    captions = np.concatenate([val_caps, np.flatnonzero(np.isin(owner, pad))])
    hasher = shipped_hasher(encoder, "itq", 64)
    rows = []
    for depth in DEPTHS:
        r = gallery_retriever(encoder, hasher, [None] * len(images), emb.images[images],
                              [train.captions[j] for j in captions], emb.texts[captions], args.candidates,
                              hamming_candidates=depth if depth > args.candidates else None)
        row = {"hamming_candidates": depth,
               "image": recall_ceiling(r, emb.texts[val_caps], "text", emb.images[images], args.candidates),
               "text": recall_ceiling(r, emb.images[val], "image", emb.texts[captions], args.candidates)}
        print(f"N={depth:>5}: float top-10 kept, text->image {row['image']:.3f}, image->text {row['text']:.3f}",
              flush=True)
        rows.append(row)
    chosen = {g: next((r["hamming_candidates"] for r in rows if r[g] >= args.target), DEPTHS[-1])
              for g in ("image", "text")}
    print(f"chosen (smallest N with >= {args.target} kept): image gallery {chosen['image']}, "
          f"text gallery {chosen['text']}")
    if args.output:
        write_json(args.output, {"rows": rows, "chosen": chosen, "target": args.target,
                                 "gallery": {"images": len(images), "captions": len(captions)},
                                 "queries": {"text": len(val_caps), "image": len(val)}})


if __name__ == "__main__":
    main()
