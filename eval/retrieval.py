"""Batch image-text retrieval evaluation: R@1/5/10 both directions on a Karpathy split.

    python -m eval.retrieval --model lite \\
        --annotations ../shared/data/flickr8k/dataset_flickr8k.json \\
        --images ../shared/data/flickr8k/images --split test --output results.json

Prints a markdown table and writes JSON with CLIP_benchmark's keys
(``image_retrieval_recall@K`` = text->image, ``text_retrieval_recall@K`` = image->text, in [0, 1]),
``rsum`` (percent, 0..600), the model id, split sizes and wall time per stage.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.atomic import write_json

from .karpathy import CaptionDataset, load_karpathy
from .machine import machine
from .recall import DEFAULT_KS, retrieval_recall


@dataclass
class Embeddings:
    images: np.ndarray
    texts: np.ndarray
    seconds: dict[str, float]


def embed_dataset(encoder: Any, dataset: CaptionDataset, batch_size: int = 64,
                  progress: bool | None = None) -> Embeddings:
    t0 = time.perf_counter()
    images = encoder.encode_images(dataset.image_paths, batch_size=batch_size, progress=progress)
    t1 = time.perf_counter()
    texts = encoder.encode_texts(dataset.captions, batch_size=4 * batch_size, progress=progress)
    t2 = time.perf_counter()
    return Embeddings(images, texts, {"encode_images": t1 - t0, "encode_texts": t2 - t1})


def evaluate_embeddings(emb: Embeddings, dataset: CaptionDataset, ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, float]:
    similarity = emb.texts @ emb.images.T
    return retrieval_recall(similarity, dataset.caption_image, ks)


def markdown_table(rows: list[tuple[str, dict[str, float]]], ks: tuple[int, ...] = DEFAULT_KS) -> str:
    """One row per model: image->text R@K, text->image R@K (percent), rsum."""
    head = ["model"] + [f"I→T R@{k}" for k in ks] + [f"T→I R@{k}" for k in ks] + ["rsum"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in rows:
        cells = [name] + [f"{100 * m[f'text_retrieval_recall@{k}']:.1f}" for k in ks]
        cells += [f"{100 * m[f'image_retrieval_recall@{k}']:.1f}" for k in ks] + [f"{m['rsum']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m eval.retrieval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lite", help="encoder id (see retrieval.encoders): lite, ViT-B-32/laion2b_s34b_b79k, hf-hub:org/repo, a local dir, a transformers Hub id")
    p.add_argument("--annotations", type=Path, required=True, help="Karpathy-format JSON (dataset_flickr8k.json, dataset_flickr30k.json, dataset_coco.json)")
    p.add_argument("--images", type=Path, required=True, help="image root folder")
    p.add_argument("--split", default="test", help="any split the annotation file holds: train, val, restval, test")
    p.add_argument("--max-images", type=int, default=None, help="only the first N images of the split (quick runs)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None)
    p.add_argument("--output", type=Path, default=None, help="write results JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from retrieval import load_encoder

    start = time.perf_counter()
    dataset = load_karpathy(args.annotations, args.images, args.split)
    if args.max_images:
        dataset = dataset.subset(args.max_images)
    t0 = time.perf_counter()
    encoder = load_encoder(args.model, device=args.device)
    load_seconds = time.perf_counter() - t0
    emb = embed_dataset(encoder, dataset, args.batch_size)
    t0 = time.perf_counter()
    metrics = evaluate_embeddings(emb, dataset)
    result = {
        **metrics,
        "model": args.model,
        "dataset": dataset.name,
        "split": args.split,
        "n_images": dataset.n_images,
        "n_captions": len(dataset.captions),
        "seconds": {"load_model": load_seconds, **emb.seconds, "score": time.perf_counter() - t0,
                    "total": time.perf_counter() - start},
        "device": str(encoder.device),
        "machine": machine(),
        "tie_convention": "expected value over random order of tied scores",
    }
    label = f"{args.model} on {dataset.name} {args.split} ({dataset.n_images} images, {len(dataset.captions)} captions)"
    print(markdown_table([(label, metrics)]))
    print(f"wall time {result['seconds']['total']:.1f}s")
    if args.output:
        write_json(args.output, result)
    return result


if __name__ == "__main__":
    main()
