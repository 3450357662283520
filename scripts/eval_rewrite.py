"""Text->image R@K on Flickr8K with keyword queries: raw vs rewritten (prompted) vs rewritten (LoRA).

Queries: one caption per image, drawn with ``numpy.random.default_rng(--seed)`` (``integers(5)`` per
image, in image order), turned into keywords by :func:`eval.keywords.caption_keywords`; the
relevant item is that caption's image. Gallery: all images of the split, scored exhaustively with
the float embeddings (the cache ``--embeddings``, lite encoder), which is what the two-stage
pipeline's rerank does on its top-128. ``--split test`` is Flickr8K-1K test (1,000 queries x 1,000
images); ``--split holdout`` is the last ``--holdout-images`` train images, which the LoRA adapter
never trained on: tune the fusion there, never on test.

Rows: ``caption`` (the full caption's embedding from the cache: what a caption-style query
reaches), ``raw`` (the keyword query encoded as is), and per system in ``--systems`` the
:class:`rerank.rewrite.RewriteReranker` scores (``score_batch`` over all images) for every
(n_variants <= --n-variants, original_weight in --weights). Rewrites are cached in
``--cache-dir/<system>.json``, so a killed run resumes and a re-run only re-scores. Latency: wall
seconds of each ``rewrite`` call of ``--chunk`` uncached queries divided by its query count
(median over chunks; model loading excluded), plus the median of ``--single`` one-query calls.

    python scripts/eval_rewrite.py --split test --systems prompted lora --output runs/rewrite_flickr8k_test.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.atomic import write_json
from eval.keywords import KEYWORD_RULE_VERSION
from eval.machine import machine
from eval.rewrite_eval import KS, SYSTEMS, evaluate_rewrites
from rerank.rewrite import SHIPPED_ADAPTER

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = ROOT.parent / "shared" / "data" / "flickr8k"
    p.add_argument("--annotations", type=Path, default=data / "dataset_flickr8k.json")
    p.add_argument("--embeddings", type=Path, default=ROOT / "cache" / "flickr8k-lite.npz")
    p.add_argument("--model", default="lite", help="encoder of the cache; encodes queries and rewrites")
    p.add_argument("--split", choices=["test", "holdout"], default="test")
    p.add_argument("--holdout-images", type=int, default=1000, help="as in scripts/train_rewriter.py")
    p.add_argument("--max-images", type=int, default=None, help="first N images of the split only (quick runs)")
    p.add_argument("--seed", type=int, default=0, help="which caption of each image becomes the query")
    p.add_argument("--systems", nargs="*", default=["prompted", "lora"], choices=sorted(SYSTEMS))
    p.add_argument("--adapter", default=SHIPPED_ADAPTER, help="adapter of the 'lora' system")
    p.add_argument("--llm", default="smollm2")
    p.add_argument("--n-variants", type=int, default=3)
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.6, 0.75, 0.9])
    p.add_argument("--batch-size", type=int, default=16, help="rows per generate call")
    p.add_argument("--chunk", type=int, default=32, help="queries per timed rewrite call")
    p.add_argument("--single", type=int, default=5, help="one-query latency probes (uncached, not stored)")
    p.add_argument("--cache-dir", type=Path, default=ROOT / "cache" / "rewrites")
    p.add_argument("--output", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = evaluate_rewrites(
        args.annotations, args.embeddings, args.split, holdout_images=args.holdout_images,
        max_images=args.max_images, seed=args.seed, model=args.model, systems=args.systems, adapter=args.adapter,
        llm=args.llm, n_variants=args.n_variants, weights=args.weights, batch_size=args.batch_size,
        chunk=args.chunk, single=args.single, cache_dir=args.cache_dir,
    )
    queries, n_images, rows, latency, examples = (out[k] for k in ("queries", "n_images", "recall", "latency",
                                                                   "examples"))
    print(f"\nFlickr8K {args.split}: text->image, {len(queries)} keyword queries x {n_images} images (R@K, %)")
    print("| query | R@1 | R@5 | R@10 |\n|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{100 * r[f'image_retrieval_recall@{k}']:.1f}" for k in KS) + " |")
    result = {
        "split": args.split, "n_queries": len(queries), "n_images": n_images, "seed": args.seed,
        "keyword_rule_version": KEYWORD_RULE_VERSION, "llm": args.llm, "adapter": args.adapter,
        "model": args.model, "recall": rows, "latency": latency, "examples": examples, "machine": machine(),
    }
    if args.output is not None:
        write_json(args.output, result)
    return result


if __name__ == "__main__":
    main()
