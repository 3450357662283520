"""Text->image R@K with keyword queries: raw vs rewritten (prompted) vs rewritten (LoRA).

The evaluation behind ``scripts/eval_rewrite.py`` (its docstring: queries, gallery, rows, latency).
Queries: one caption per image, drawn with ``numpy.random.default_rng(seed)`` (``integers(5)`` per
image, in image order), turned into keywords by :func:`eval.keywords.caption_keywords`; the
relevant item is that caption's image. The gallery is scored exhaustively with the cached float
embeddings, which is what the two-stage pipeline's rerank does on its top-128. Tune the fusion on
the ``holdout`` split, never on test.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from rerank.base import Candidates, Query
from rerank.rewrite import SHIPPED_ADAPTER, QueryRewriter, RewriteReranker

from .karpathy import load_karpathy, one_caption_per_image
from .keywords import caption_keywords
from .recall import expected_hits

KS = (1, 5, 10)
#: system name -> adapter (None: the prompted base model)
SYSTEMS = {"prompted": None, "lora": SHIPPED_ADAPTER}


def keyword_queries(captions: list[str], caption_image: np.ndarray, n_images: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """(caption index per image, keyword query per image): one seeded caption of each image."""
    picks = one_caption_per_image(caption_image, n_images, seed)
    return picks, [caption_keywords(captions[j]) for j in picks]


def recall(scores: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Tie-aware text->image R@K (:func:`eval.recall.expected_hits`) with one relevant image per query."""
    relevant = np.zeros(scores.shape, dtype=bool)
    relevant[np.arange(len(targets)), targets] = True
    hits = expected_hits(scores, relevant, KS)
    return {f"image_retrieval_recall@{k}": float(hits[k].mean()) for k in KS}


def load_split(annotations: Path, embeddings: Path, split_name: str, holdout_images: int,
               max_images: int | None = None) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(captions, caption_image, image embeddings, caption embeddings) of the split, aligned.

    ``split_name`` "test" is the Karpathy test split; "holdout" the last ``holdout_images`` train
    images (which the LoRA adapter never trained on); ``max_images`` keeps the first N of it.
    """
    if split_name not in ("test", "holdout"):
        raise ValueError(f"split_name must be 'test' or 'holdout', got {split_name!r}")
    images = annotations.parent / "images"
    split = "test" if split_name == "test" else "train"
    ds = load_karpathy(annotations, images, split=split, check_files=False)
    with np.load(embeddings, allow_pickle=False) as z:
        image_emb, text_emb = z[f"{split}_image"], z[f"{split}_text"]
    if len(image_emb) != ds.n_images or len(text_emb) != len(ds.captions):
        raise ValueError(f"{embeddings}: {split} embeddings do not match {annotations}; re-encode the cache")
    first = ds.n_images - holdout_images if split_name == "holdout" else 0
    last = ds.n_images if max_images is None else min(ds.n_images, first + max_images)
    keep = (ds.caption_image >= first) & (ds.caption_image < last)
    captions = [c for c, k in zip(ds.captions, keep) if k]
    return captions, ds.caption_image[keep] - first, image_emb[first:last], text_emb[keep]


class MemoEncoder:
    """Remembers text embeddings, so the fusion grid encodes each rewrite once."""

    def __init__(self, encoder: Any) -> None:
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


def evaluate_rewrites(annotations: Path, embeddings: Path, split: str, *, holdout_images: int = 1000,
                      max_images: int | None = None, seed: int = 0, model: str = "lite",
                      systems: tuple[str, ...] | list[str] = ("prompted", "lora"), adapter: str = SHIPPED_ADAPTER,
                      llm: str = "smollm2", n_variants: int = 3, weights: tuple[float, ...] | list[float] = (0.5,),
                      batch_size: int = 16, chunk: int = 32, single: int = 5,
                      cache_dir: Path = Path("cache/rewrites")) -> dict[str, Any]:
    """R@K rows per query kind and fusion setting, rewrite latency and examples (``scripts/eval_rewrite.py``).

    Returns ``{"queries", "n_images", "recall": {row: {metric: value}}, "latency", "examples"}``;
    rewrites are cached in ``cache_dir/<system>.json`` so a killed run resumes.
    """
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        raise ValueError(f"systems must be among {sorted(SYSTEMS)}, got {unknown}")
    from retrieval import load_encoder

    from .datasets_hashing import check_made_by

    captions, caption_image, image_emb, text_emb = load_split(annotations, embeddings, split, holdout_images, max_images)
    n_images = len(image_emb)
    picks, queries = keyword_queries(captions, caption_image, n_images, seed)
    targets = caption_image[picks]
    encoder = load_encoder(model)
    check_made_by(embeddings, encoder)  # the queries are encoded now: the gallery must be the same model's
    query_emb = encoder.encode_texts(queries, progress=False)
    gallery = Candidates("image", ids=np.arange(n_images), embeddings=image_emb)
    rows: dict[str, dict] = {
        "caption": recall(text_emb[picks] @ image_emb.T, targets),
        "raw": recall(query_emb @ image_emb.T, targets),
    }
    print(f"{len(queries)} queries, e.g. {captions[picks[0]]!r} -> {queries[0]!r}", flush=True)
    latency, examples = {}, {}
    for system in systems:
        system_adapter = adapter if system == "lora" else SYSTEMS[system]
        reranker = RewriteReranker(llm=llm, adapter=system_adapter, n_variants=n_variants,
                                   batch_size=batch_size, encoder=MemoEncoder(encoder),
                                   cache_file=str(cache_dir / f"{system}.json"))
        rewriter = reranker.rewriter
        load_start = time.perf_counter()
        rewriter.load()
        load_seconds = time.perf_counter() - load_start
        per_query = timed_rewrites(rewriter, queries, chunk)
        single_s = []
        probe = QueryRewriter(llm=llm, adapter=system_adapter, n_variants=n_variants, progress=False)
        probe.model, probe.tokenizer = rewriter.model, rewriter.tokenizer
        for q in queries[: single]:
            start = time.perf_counter()
            probe.rewrite([q])
            single_s.append(time.perf_counter() - start)
        latency[system] = {
            "load_seconds": load_seconds,
            "batched_seconds_per_query_median": float(np.median(per_query)) if per_query else None,
            "batched_chunks_timed": len(per_query), "chunk_queries": chunk, "rows_per_generate": batch_size,
            "single_query_seconds_median": float(np.median(single_s)) if single_s else None,
        }
        examples[system] = {q: v for q, v in zip(queries[:8], rewriter.rewrite(queries[:8]))}
        qs = [Query("text", q, embedding=e) for q, e in zip(queries, query_emb)]
        for n in range(1, n_variants + 1):
            rewriter.config = replace(rewriter.config, n_variants=n)
            for w in weights:
                reranker.original_weight = w
                scores = np.stack(reranker.score_batch(qs, [gallery] * len(qs)))
                rows[f"{system} n={n} w={w:g}"] = recall(scores, targets)
        print(system, latency[system], flush=True)

    return {"queries": queries, "n_images": n_images, "recall": rows, "latency": latency, "examples": examples}
