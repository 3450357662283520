"""Text->image search over an images-only index: which hasher, when there are no captions to fit on?

    python -m eval.images_only --dataset ../shared/data/flickr8k/dataset_flickr8k.json \\
        --images ../shared/data/flickr8k/images --split test --cache-dir cache/emb \\
        --rerank float cross --output runs/images_only_flickr8k.json

A photo folder has images and nothing else, so a Retriever over it is built from images only.
Three hashers are compared, each behind the same Retriever (image gallery only, Hamming top-128,
then the reranker), answering every caption of the split as a text query:

* ``shipped``: the ITQ-64 that ships with the lite encoder (fitted on Flickr8K train pairs);
* ``images-only``: ITQ-64 fitted on the indexed images alone (``retrieval.retriever.fit_on_images``),
  what any other encoder gets;
* ``pairs``: ITQ-64 fitted on the split's own (image, caption) pairs, what ``Retriever.from_dataset``
  does when captions exist (the reference).

R@K is tie-aware (``eval.recall``); items outside a query's candidates score -inf.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from common.atomic import write_json

from .machine import machine
from .recall import DEFAULT_KS, expected_hits

HASHERS = ("shipped", "images-only", "pairs")


def text_to_image_recall(scores: np.ndarray, caption_image: np.ndarray, ks=DEFAULT_KS) -> dict[str, float]:
    positives = np.zeros(scores.shape, dtype=bool)
    positives[np.arange(len(caption_image)), caption_image] = True
    hits = expected_hits(scores, positives, ks)
    return {f"image_retrieval_recall@{k}": float(hits[k].mean()) for k in ks}


def make_hasher(name: str, encoder: Any, images: np.ndarray, texts: np.ndarray, caption_image: np.ndarray,
                bits: int) -> Any:
    from hashing import create_hasher
    from retrieval.retriever import fit_on_images, shipped_hasher

    if name == "shipped":
        hasher = shipped_hasher(encoder, "itq", bits)
        if hasher is None:
            raise SystemExit(f"no itq-{bits} hasher ships with encoder {encoder.model_id!r}")
        return hasher
    if name == "images-only":
        return fit_on_images(create_hasher("itq", bits), images)
    return create_hasher("itq", bits).fit(images[caption_image], texts)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m eval.images_only", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lite")
    p.add_argument("--dataset", required=True, help="Karpathy-format JSON")
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--hashers", nargs="+", default=list(HASHERS), choices=HASHERS)
    p.add_argument("--rerank", nargs="+", default=["float", "cross"], help="none, float, cross, ...")
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--candidates", type=int, default=128)
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--one-caption-per-image", action="store_true",
                   help="text queries: one seeded caption per image (eval.karpathy.one_caption_per_image), "
                        "e.g. to afford the cross-encoder on 2 CPU cores")
    p.add_argument("--query-seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)

    from rerank import create_reranker
    from retrieval import Retriever, load_encoder

    from .karpathy import load_karpathy
    from .retrieval import embed_dataset
    from .two_stage import ranked_scores

    start = time.perf_counter()
    dataset = load_karpathy(args.dataset, args.images, args.split)
    encoder = load_encoder(args.model)
    emb = embed_dataset(encoder, dataset, cache_dir=args.cache_dir)
    caption_image = np.asarray(dataset.caption_image)
    rows = np.arange(len(caption_image))
    if args.one_caption_per_image:
        from .karpathy import one_caption_per_image

        rows = one_caption_per_image(caption_image, dataset.n_images, args.query_seed)
    queries, query_vectors, query_image = [dataset.captions[j] for j in rows], emb.texts[rows], caption_image[rows]
    rerankers = {name: None if name == "none" else create_reranker(name) for name in args.rerank}
    table = []
    for hasher_name in args.hashers:
        hasher = make_hasher(hasher_name, encoder, emb.images, emb.texts, caption_image, args.bits)
        retriever = Retriever(encoder, hasher, candidates=args.candidates)
        retriever.add_vectors("image", emb.images, [str(x) for x in dataset.image_paths])
        for rerank_name, reranker in rerankers.items():
            t0 = time.perf_counter()
            scores = ranked_scores(retriever, query_vectors, "text", queries, dataset.n_images,
                                   args.candidates, reranker if reranker is not None else False,
                                   desc=f"{hasher_name} + {rerank_name}")
            row = {"hasher": hasher_name, "rerank": rerank_name, **text_to_image_recall(scores, query_image),
                   "seconds": time.perf_counter() - t0}
            print(f"{hasher_name:12s} + {rerank_name:6s}: " + " / ".join(
                f"{100 * row[f'image_retrieval_recall@{k}']:.1f}" for k in DEFAULT_KS), flush=True)
            table.append(row)
    exhaustive = text_to_image_recall(query_vectors @ emb.images.T, query_image)
    result = {"model": args.model, "dataset": dataset.name, "split": args.split, "n_images": dataset.n_images,
              "n_queries": len(rows), "one_caption_per_image": args.one_caption_per_image,
              "bits": args.bits, "candidates": args.candidates, "float_exhaustive": exhaustive, "rows": table, "machine": machine(),
              "seconds": time.perf_counter() - start,
              "tie_convention": "expected value over random order of tied scores"}
    print("| hasher | rerank | T->I R@1 | R@5 | R@10 |\n|---|---|---|---|---|")
    for row in table:
        print(f"| {row['hasher']} | {row['rerank']} | " + " | ".join(
            f"{100 * row[f'image_retrieval_recall@{k}']:.1f}" for k in DEFAULT_KS) + " |")
    print("| float, exhaustive | - | " + " | ".join(f"{100 * exhaustive[f'image_retrieval_recall@{k}']:.1f}"
                                                  for k in DEFAULT_KS) + " |")
    if args.output:
        write_json(args.output, result)
    return result


if __name__ == "__main__":
    main()
