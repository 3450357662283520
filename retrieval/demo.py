"""The README's first command: index Flickr8K-1K test with the embedded lite encoder, offline.

    python -m retrieval.demo [--data ../shared/data/flickr8k]

Prints the R@K table, then answers a few text queries (text->image) and one image query
(image->text) with their top hits.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from eval.karpathy import load_karpathy
from eval.retrieval import embed_dataset, evaluate_embeddings, markdown_table

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k"
QUERIES = [
    "a dog running through the grass",
    "two children playing in the snow",
    "a man riding a bicycle on a dirt path",
    "a surfer riding a wave",
]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m retrieval.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path(os.environ.get("FLICKR8K_DIR", DEFAULT_DATA)),
                   help="folder with dataset_flickr8k.json and images/ (default: ../shared/data/flickr8k)")
    p.add_argument("--model", default="lite")
    p.add_argument("--top", type=int, default=3)
    args = p.parse_args(argv)

    from retrieval import load_encoder

    start = time.perf_counter()
    dataset = load_karpathy(args.data / "dataset_flickr8k.json", args.data / "images", "test")
    encoder = load_encoder(args.model)
    print(f"{encoder!r}\nindexing {dataset.n_images} images and {len(dataset.captions)} captions "
          f"of Flickr8K {dataset.split} ...")
    emb = embed_dataset(encoder, dataset, progress=True)
    metrics = evaluate_embeddings(emb, dataset)
    print("\nFlickr8K-1K test, R@K in percent (tie-aware):\n")
    print(markdown_table([(args.model, metrics)]))

    queries = encoder.encode_texts(QUERIES)
    print("\ntext -> image")
    for text, q in zip(QUERIES, queries):
        scores = emb.images @ q
        print(f'  "{text}"')
        for i in np.argsort(-scores)[: args.top]:
            first_caption = dataset.captions[int(np.flatnonzero(dataset.caption_image == i)[0])]
            print(f"    {scores[i]:.3f}  {dataset.image_paths[i].name}  ({first_caption})")

    query_image = 0
    scores = emb.texts @ emb.images[query_image]
    print(f"\nimage -> text  (query: {dataset.image_paths[query_image].name})")
    for j in np.argsort(-scores)[: args.top]:
        mark = "*" if dataset.caption_image[j] == query_image else " "
        print(f"   {mark}{scores[j]:.3f}  {dataset.captions[j]}")
    print("  (* = one of the query image's own captions)")
    print(f"\ndone in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
