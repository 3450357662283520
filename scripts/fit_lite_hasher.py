"""Fits the hasher that ships with the lite encoder: ITQ on every Flickr8K train (image, caption) pair.

    python scripts/fit_lite_hasher.py --output retrieval/weights/lite/hasher --cache-dir cache/emb

A retriever built on ``lite`` with no captions (a photo folder) has no pairs to fit a hasher on;
this one is fitted once on Flickr8K train (30,000 pairs, the test split never seen) and loaded by
``retrieval.retriever.shipped_hasher``. Seeded and deterministic given the embeddings.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flickr8k"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, required=True, help="directory to save the fitted hasher into")
    p.add_argument("--dataset", type=Path, default=DATA / "dataset_flickr8k.json")
    p.add_argument("--images", type=Path, default=DATA / "images")
    p.add_argument("--split", default="train")
    p.add_argument("--method", default="itq")
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, default=None, help="embedding cache (eval/embedding_cache.py)")
    args = p.parse_args(argv)

    from eval.karpathy import load_karpathy
    from eval.retrieval import embed_dataset
    from hashing import create_hasher
    from retrieval import load_encoder

    dataset = load_karpathy(args.dataset, args.images, args.split)
    emb = embed_dataset(load_encoder("lite"), dataset, cache_dir=args.cache_dir)
    hasher = create_hasher(args.method, args.bits, seed=args.seed).fit(emb.images[dataset.caption_image], emb.texts)
    print(f"fitted {args.method}-{args.bits} on {len(emb.texts)} {args.split} pairs "
          f"({dataset.n_images} images); wrote {hasher.save_pretrained(args.output)}")


if __name__ == "__main__":
    main()
