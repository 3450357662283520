"""Chooses the stage-1 cascade depth (Hamming top-N before float rescoring) on held-out train images.

    python scripts/choose_hamming_candidates.py --cache-dir cache/emb --output runs/hamming_candidates.json

Never on test: on the held-out train images of ``eval/validation.py`` (the lite trainer's 500
validation images, galleries padded to the test split's 1,000 images / 5,000 captions). The hasher
is the one the lite encoder ships (ITQ-64, retrieval/weights/lite/hasher).

For each N the share of each query's exhaustive float top-10 that survives into the 128 candidates
a reranker receives is measured, per direction; the chosen N per gallery is the smallest reaching
``--target`` (default 0.97: the goal on test is 0.95, the margin is for val-test drift).
"""

from __future__ import annotations

import argparse
from pathlib import Path

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

    from eval.validation import HeldOutGalleries
    from common.atomic import write_json
    from retrieval.retriever import shipped_hasher

    held = HeldOutGalleries(args.dataset, args.images, args.cache_dir, args.candidates)
    hasher = shipped_hasher(held.encoder, "itq", 64)
    rows = []
    for depth in DEPTHS:
        row = {"hamming_candidates": depth, **held.kept(hasher, depth if depth > args.candidates else None)}
        print(f"N={depth:>5}: float top-10 kept, text->image {row['image']:.3f}, image->text {row['text']:.3f}",
              flush=True)
        rows.append(row)
    chosen = {g: next((r["hamming_candidates"] for r in rows if r[g] >= args.target), DEPTHS[-1])
              for g in ("image", "text")}
    print(f"chosen (smallest N with >= {args.target} kept): image gallery {chosen['image']}, "
          f"text gallery {chosen['text']}")
    if args.output:
        write_json(args.output, {"rows": rows, "chosen": chosen, "target": args.target,
                                 "gallery": {"images": len(held.held.gallery_images),
                                             "captions": len(held.held.gallery_captions)},
                                 "queries": {"text": len(held.held.val_captions), "image": len(held.held.val_images)}})


if __name__ == "__main__":
    main()
