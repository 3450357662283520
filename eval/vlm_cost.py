"""What the VLM stage costs per query: single ``VlmReranker.score`` calls, each rescoring ``vlm_k`` of
``--candidates`` stage-1 candidates, in both directions, over real photos and captions.

    python tests/tiny_models.py qwen3_vl /tmp/tiny-qwen3-vl     # or any image-text-to-text checkpoint
    python -m eval.vlm_cost --model /tmp/tiny-qwen3-vl --dataset ../shared/data/flickr8k/dataset_flickr8k.json \\
        --images ../shared/data/flickr8k/images --split test --queries 30 --vlm-k 8 32 \\
        --output runs/vlm_cost_tiny_qwen3_vl.json

Each timed call is what a search pays in stage 2 for one query (``first=None``: the candidates' own
stage-1 scores choose the ``vlm_k``, so the previous stage costs nothing here): decoding the images
(candidate files for a text query, the query image for an image query), rendering ``vlm_k`` prompts
with the checkpoint's chat template, the processor, and ``ceil(vlm_k / batch_size)`` forward passes.
The candidates of query ``i`` are its own image or captions plus a seeded random draw from the split;
their stage-1 scores are a seeded random permutation (the cost does not depend on which are chosen).
The configurations take turns query by query (one untimed warm-up call each first), so load on a
shared machine hits them alike. With a tiny random checkpoint the numbers
are the reranker's fixed costs around the model (image decoding, templating, processing, a 1-layer
forward), not what a 2B model costs; run it with the real checkpoint on its device for that.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from common.atomic import write_json

from .machine import machine


def interleaved_costs(reranker: Any, configs: list[tuple[str, int]], queries: dict[str, list[Any]],
                      candidates: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Median and mean wall ms of single ``score`` calls per (direction, vlm_k).

    The configurations take turns query by query, so a burst of load on a shared machine slows all of
    them alike and their ratios stay comparable; one untimed warm-up call per configuration comes first.
    """
    times: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
    for i in range(-1, len(next(iter(queries.values())))):
        for direction, k in configs:
            reranker.settings = replace(reranker.settings, vlm_k=k)
            query, cands = queries[direction][max(i, 0)], candidates[direction][max(i, 0)]
            start = time.perf_counter()
            reranker.score(query, cands)
            if i >= 0:
                times[(direction, k)].append(1e3 * (time.perf_counter() - start))
    rows = []
    for (direction, k), t in times.items():
        pairs = min(k, len(candidates[direction][0]))
        rows.append({"direction": direction, "vlm_k": k, "median_ms_per_query": statistics.median(t),
                     "mean_ms_per_query": statistics.fmean(t), "median_ms_per_pair": statistics.median(t) / pairs,
                     "queries": len(t), "pairs_per_query": pairs})
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m eval.vlm_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="VLM checkpoint: a Hub id or a save_pretrained directory")
    p.add_argument("--dataset", type=Path, required=True, help="Karpathy-style annotations JSON")
    p.add_argument("--images", type=Path, required=True, help="the image folder")
    p.add_argument("--split", default="test")
    p.add_argument("--queries", type=int, default=20, help="timed queries per direction")
    p.add_argument("--candidates", type=int, default=128, help="stage-1 candidates per query")
    p.add_argument("--vlm-k", type=int, nargs="+", default=[32], help="candidates the VLM rescores (several: compared)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per forward pass")
    p.add_argument("--device", default=None)
    p.add_argument("--precision", default=None, choices=["fp32", "fp16", "bf16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=None, help="results JSON")
    args = p.parse_args(argv)
    if args.queries < 1 or args.candidates < 1 or min(args.vlm_k) < 1:
        p.error("--queries, --candidates and --vlm-k must be positive")

    from rerank.base import Candidates, Query
    from rerank.vlm import VlmReranker

    from .karpathy import load_karpathy

    data = load_karpathy(args.dataset, args.images, args.split)
    rng = np.random.default_rng(args.seed)
    n_images = len(data.image_paths)
    if args.candidates > n_images:
        p.error(f"--candidates {args.candidates} exceeds the split's {n_images} images")
    first_caption = {int(i): j for j, i in reversed(list(enumerate(data.caption_image)))}
    query_images = rng.choice(n_images, size=args.queries, replace=False)

    def draw(own: int, pool: int) -> np.ndarray:
        others = rng.choice(np.setdiff1d(np.arange(pool), [own]), size=args.candidates - 1, replace=False)
        return rng.permutation(np.concatenate([[own], others]))

    t2i_queries, t2i_cands, i2t_queries, i2t_cands = [], [], [], []
    for i in query_images.tolist():
        ids = draw(i, n_images)
        t2i_queries.append(Query("text", data.captions[first_caption[i]]))
        t2i_cands.append(Candidates("image", ids, items=[Path(data.image_paths[j]) for j in ids],
                                    stage1_scores=rng.permutation(len(ids)).astype(np.float32)))
        ids = draw(first_caption[i], len(data.captions))
        i2t_queries.append(Query("image", Path(data.image_paths[i])))
        i2t_cands.append(Candidates("text", ids, items=[data.captions[j] for j in ids],
                                    stage1_scores=rng.permutation(len(ids)).astype(np.float32)))

    start = time.perf_counter()
    reranker = VlmReranker(args.model, first=None, device=args.device, precision=args.precision,
                           batch_size=args.batch_size, progress=False)
    load_seconds = time.perf_counter() - start
    configs = [(direction, k) for k in args.vlm_k for direction in ("text->image", "image->text")]
    rows = interleaved_costs(reranker, configs, {"text->image": t2i_queries, "image->text": i2t_queries},
                             {"text->image": t2i_cands, "image->text": i2t_cands})
    for row in rows:
        print(f"{row['direction']} vlm_k={row['vlm_k']}: {row['median_ms_per_query']:.1f} ms/query median "
              f"({row['median_ms_per_pair']:.2f} ms/pair)", flush=True)
    result = {"model": args.model, "model_type": reranker.model.config.model_type,
              "parameters": sum(t.numel() for t in reranker.model.parameters()), "device": str(reranker.device),
              "precision": reranker.precision, "batch_size": args.batch_size, "candidates": args.candidates,
              "split": args.split, "seed": args.seed, "load_seconds": load_seconds, "rows": rows, "machine": machine()}
    print("| direction | vlm_k | median ms/query | ms/pair |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['direction']} | {row['vlm_k']} | {row['median_ms_per_query']:.1f} | "
              f"{row['median_ms_per_pair']:.2f} |")
    if args.output is not None:
        write_json(args.output, result)
    return result


if __name__ == "__main__":
    main()
