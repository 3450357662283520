"""The README's first command: index Flickr8K-1K test with the embedded lite encoder, offline.

    python -m eval.demo [--data ../shared/data/flickr8k]

Prints the R@K table of exhaustive float search, then builds a two-stage
:class:`retrieval.Retriever` over the same embeddings (ITQ 64-bit codes, Hamming top-128, the
shipped cross-encoder as reranker) and answers a few text queries (text->image) and one image
query (image->text) through ``Retriever.search``; then indexes the same photos as a folder with
no captions, as ``crossmodal index`` does, and searches it.
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
    p = argparse.ArgumentParser(prog="python -m eval.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path(os.environ.get("FLICKR8K_DIR", DEFAULT_DATA)),
                   help="folder with dataset_flickr8k.json and images/ (default: ../shared/data/flickr8k)")
    p.add_argument("--model", default="lite")
    p.add_argument("--top", type=int, default=3)
    p.add_argument("--rerank", default="cross", help="reranker of the demo retriever: none, float, cross")
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

    from retrieval import Retriever

    retriever = Retriever.build(
        images=[str(p) for p in dataset.image_paths], texts=dataset.captions, encoder=encoder,
        image_vectors=emb.images, text_vectors=emb.texts,
        fit_pairs=(dataset.caption_image, np.arange(len(dataset.captions))),
        image_payloads=[p.name for p in dataset.image_paths], text_payloads=list(dataset.captions),
        hasher="itq", bits=64, reranker=args.rerank,
    )
    print(f"\n{retriever!r}\n(hasher fitted on the indexed pairs, as a user of Retriever.build would)")
    print("\ntext -> image  (score after reranking | Hamming distance of stage 1 | image)")
    for text in QUERIES:
        print(f'  "{text}"')
        for hit in retriever.search(text, k=args.top):
            first_caption = dataset.captions[int(np.flatnonzero(dataset.caption_image == hit.id)[0])]
            print(f"    {hit.score:7.3f} | {hit.hamming:2d} | {hit.payload}  ({first_caption})")

    query_image = 0
    print(f"\nimage -> text  (query: {dataset.image_paths[query_image].name})")
    for hit in retriever.search(Path(dataset.image_paths[query_image]), k=args.top):
        mark = "*" if dataset.caption_image[hit.id] == query_image else " "
        print(f"   {mark}{hit.score:7.3f} | {hit.hamming:2d} | {hit.payload}")
    print("  (* = one of the query image's own captions)")
    folder_demo(dataset.image_paths, QUERIES[0], args.top)
    print(f"\ndone in {time.perf_counter() - start:.0f}s")


def folder_demo(image_paths: list[Path], query: str, top: int) -> None:
    """The same photos as a person's folder, no captions: what `crossmodal index` / `search` do."""
    import tempfile

    from retrieval import Retriever
    from retrieval.collection import FolderIndexer

    with tempfile.TemporaryDirectory(prefix="crossmodal-demo.") as tmp:
        album = Path(tmp) / "album"
        album.mkdir()
        for path in image_paths:
            (album / path.name).symlink_to(path.resolve())
        (album / "broken.jpg").write_bytes(b"not a photo")
        print(f"\n$ crossmodal index {album} --out {tmp}/photos.index   (the same images as a folder, no captions)")
        report = FolderIndexer(Path(tmp) / "photos.index", progress=False).run([album])
        print(f"  {report.summary()}")
        for path, reason in report.skipped:
            print(f"  skipped {Path(path).name}: {reason}")
        retriever = Retriever.open(Path(tmp) / "photos.index")
        print(f'$ crossmodal search {tmp}/photos.index "{query}" -k {top}')
        for rank, hit in enumerate(retriever.search(query, k=top, rerank="float"), 1):  # the CLI default
            print(f"  {rank}  {hit.score:.4f}  hamming {hit.hamming:2d}  {Path(hit.item).name}")
        retriever.close()


if __name__ == "__main__":
    main()
