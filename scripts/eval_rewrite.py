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
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from eval.karpathy import load_karpathy, one_caption_per_image
from eval.keywords import KEYWORD_RULE_VERSION, caption_keywords
from eval.machine import machine
from eval.recall import expected_hits
from rerank.base import Candidates, Query
from rerank.rewrite import SHIPPED_ADAPTER, QueryRewriter, RewriteReranker
from common.atomic import write_json

ROOT = Path(__file__).resolve().parent.parent
KS = (1, 5, 10)
SYSTEMS = {"prompted": None, "lora": SHIPPED_ADAPTER}


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


def keyword_queries(captions: list[str], caption_image: np.ndarray, n_images: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """(caption index per image, keyword query per image): one seeded caption of each image."""
    picks = one_caption_per_image(caption_image, n_images, seed)
    return picks, [caption_keywords(captions[j]) for j in picks]


def recall(scores: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    relevant = np.zeros(scores.shape, dtype=bool)
    relevant[np.arange(len(targets)), targets] = True
    hits = expected_hits(scores, relevant, KS)
    return {f"image_retrieval_recall@{k}": float(hits[k].mean()) for k in KS}


def load_split(args: argparse.Namespace) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(captions, caption_image, image embeddings, caption embeddings) of the split, aligned."""
    images = args.annotations.parent / "images"
    split = "test" if args.split == "test" else "train"
    ds = load_karpathy(args.annotations, images, split=split, check_files=False)
    with np.load(args.embeddings, allow_pickle=False) as z:
        image_emb, text_emb = z[f"{split}_image"], z[f"{split}_text"]
    if len(image_emb) != ds.n_images or len(text_emb) != len(ds.captions):
        raise ValueError(f"{args.embeddings}: {split} embeddings do not match {args.annotations}; re-encode the cache")
    first = ds.n_images - args.holdout_images if args.split == "holdout" else 0
    last = ds.n_images if args.max_images is None else min(ds.n_images, first + args.max_images)
    keep = (ds.caption_image >= first) & (ds.caption_image < last)
    captions = [c for c, k in zip(ds.captions, keep) if k]
    return captions, ds.caption_image[keep] - first, image_emb[first:last], text_emb[keep]


class MemoEncoder:
    """Remembers text embeddings, so the fusion grid encodes each rewrite once."""

    def __init__(self, encoder) -> None:
        self.encoder, self.memo = encoder, {}

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        new = [t for t in dict.fromkeys(texts) if t not in self.memo]
        if new:
            self.memo.update(zip(new, self.encoder.encode_texts(new, progress=False)))
        return np.stack([self.memo[t] for t in texts])


def timed_rewrites(rewriter: QueryRewriter, queries: list[str], chunk: int) -> list[float]:
    """Rewrites every query (through the cache); per-query seconds of each chunk that generated."""
    per_query = []
    chunks = [queries[i:i + chunk] for i in range(0, len(queries), chunk)]
    for part in tqdm(chunks, desc=f"rewrite ({rewriter.adapter or 'prompted'})"):
        cached = rewriter.cache.get(rewriter.settings_key(), {})
        missing = any(len(cached.get(q, [])) < rewriter.n_variants for q in part)
        start = time.perf_counter()
        rewriter.rewrite(part)
        if missing:
            per_query.append((time.perf_counter() - start) / len(part))
    return per_query


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from retrieval import load_encoder

    captions, caption_image, image_emb, text_emb = load_split(args)
    n_images = len(image_emb)
    picks, queries = keyword_queries(captions, caption_image, n_images, args.seed)
    targets = caption_image[picks]
    encoder = load_encoder(args.model)
    query_emb = encoder.encode_texts(queries, progress=False)
    gallery = Candidates("image", ids=np.arange(n_images), embeddings=image_emb)
    rows: dict[str, dict] = {
        "caption": recall(text_emb[picks] @ image_emb.T, targets),
        "raw": recall(query_emb @ image_emb.T, targets),
    }
    print(f"{len(queries)} queries, e.g. {captions[picks[0]]!r} -> {queries[0]!r}", flush=True)
    latency, examples = {}, {}
    for system in args.systems:
        adapter = args.adapter if system == "lora" else SYSTEMS[system]
        reranker = RewriteReranker(llm=args.llm, adapter=adapter, n_variants=args.n_variants,
                                   batch_size=args.batch_size, encoder=MemoEncoder(encoder),
                                   cache_file=str(args.cache_dir / f"{system}.json"))
        rewriter = reranker.rewriter
        load_start = time.perf_counter()
        rewriter.load()
        load_seconds = time.perf_counter() - load_start
        per_query = timed_rewrites(rewriter, queries, args.chunk)
        single = []
        probe = QueryRewriter(llm=args.llm, adapter=adapter, n_variants=args.n_variants, progress=False)
        probe.model, probe.tokenizer = rewriter.model, rewriter.tokenizer
        for q in queries[: args.single]:
            start = time.perf_counter()
            probe.rewrite([q])
            single.append(time.perf_counter() - start)
        latency[system] = {
            "load_seconds": load_seconds,
            "batched_seconds_per_query_median": float(np.median(per_query)) if per_query else None,
            "batched_chunks_timed": len(per_query), "chunk_queries": args.chunk, "rows_per_generate": args.batch_size,
            "single_query_seconds_median": float(np.median(single)) if single else None,
        }
        examples[system] = {q: v for q, v in zip(queries[:8], rewriter.rewrite(queries[:8]))}
        qs = [Query("text", q, embedding=e) for q, e in zip(queries, query_emb)]
        for n in range(1, args.n_variants + 1):
            rewriter.config = replace(rewriter.config, n_variants=n)
            for w in args.weights:
                reranker.original_weight = w
                scores = np.stack(reranker.score_batch(qs, [gallery] * len(qs)))
                rows[f"{system} n={n} w={w:g}"] = recall(scores, targets)
        print(system, latency[system], flush=True)

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
