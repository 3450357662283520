"""Batch image-text retrieval evaluation: R@1/5/10 both directions on a Karpathy split.

    python -m eval.retrieval --model lite \\
        --annotations ../shared/data/flickr8k/dataset_flickr8k.json \\
        --images ../shared/data/flickr8k/images --split test --output results.json

    # two-stage pipelines: Hamming top-128 (ITQ 64 bits fitted on the train split), then rerankers
    python -m eval.retrieval --model lite --annotations ... --images ... \\
        --rerank none float cross --candidates 128 --output results.json

Prints a markdown table and writes JSON with CLIP_benchmark's keys
(``image_retrieval_recall@K`` = text->image, ``text_retrieval_recall@K`` = image->text, in [0, 1]),
``rsum`` (percent, 0..600), the model id, split sizes and wall time per stage. With ``--rerank``,
exhaustive float search is reported beside each pipeline (``eval/two_stage.py``), with per-stage
times and the median latency of single queries.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.atomic import write_json
from common.settings_args import by_name, named_setting

from .karpathy import CaptionDataset
from .machine import machine
from .recall import DEFAULT_KS, retrieval_recall


@dataclass
class Embeddings:
    images: np.ndarray
    texts: np.ndarray
    seconds: dict[str, float]


def embed_dataset(encoder: Any, dataset: CaptionDataset, batch_size: int = 64, progress: bool | None = None,
                  cache_dir: str | Path | None = None, chunk_size: int | None = None,
                  image_keys: list[str] | None = None) -> Embeddings:
    """Both modalities of a split, sharded over ``accelerate launch`` processes when there are several,
    and cached in ``cache_dir`` chunk by chunk (a rerun or an interrupted run encodes only what is
    missing; ``eval/embedding_cache.py``). One process without a cache is a plain encoder call."""
    from .sharded import encode

    t0 = time.perf_counter()
    images = encode(encoder, dataset.image_paths, "image", batch_size, progress, cache_dir, chunk_size,
                    keys=image_keys)
    t1 = time.perf_counter()
    texts = encode(encoder, dataset.captions, "text", 4 * batch_size, progress, cache_dir,
                   4 * chunk_size if chunk_size else None)
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
    p.add_argument("--retriever", default=None,
                   help="a saved Retriever (directory or Hub id): its encoder and hasher are evaluated")
    p.add_argument("--dataset", "--annotations", dest="dataset", required=True,
                   help="Karpathy-format JSON (dataset_flickr8k.json, dataset_flickr30k.json, dataset_coco.json), "
                        "a datasets.save_to_disk folder, or a supported Hub id (eval/hf_datasets.py)")
    p.add_argument("--images", type=Path, default=None, help="image root folder (Karpathy JSON, yerevann/coco-karpathy)")
    p.add_argument("--hf-revision", default=None, help="revision of a Hub dataset")
    p.add_argument("--folds", type=int, default=None, help="also report the mean over N consecutive folds (COCO 5x1K: 5)")
    p.add_argument("--reference", type=Path, default=None,
                   help="published results to compare with (open_clip's retrieval csv, or JSON rows)")
    p.add_argument("--reference-model", default=None, help="model name/pretrained in --reference (default: --model)")
    p.add_argument("--split", default="test", help="any split the annotation file holds: train, val, restval, test")
    p.add_argument("--max-images", type=int, default=None, help="only the first N images of the split (quick runs)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None)
    p.add_argument("--output", type=Path, default=None, help="write results JSON here")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="cache embeddings here, chunk by chunk: reruns and interrupted runs reuse them")
    p.add_argument("--cache-chunk-size", type=int, default=None, help="images per cache chunk (captions: 4x)")
    two = p.add_argument_group("two-stage pipelines (eval/two_stage.py)")
    two.add_argument("--rerank", nargs="+", default=None, metavar="NAME",
                     help="pipelines to run after Hamming recall: none (hash only), float, cross, blip2, rewrite, vlm")
    two.add_argument("--candidates", type=int, default=128, help="stage-1 candidates per query (the reranker's depth)")
    two.add_argument("--hamming-candidates", nargs="+", default=None, metavar="N|GALLERY=N",
                     help="stage-1 cascade: Hamming top-N, float-rescored down to --candidates; one N for both "
                          "galleries or image=N text=M (by the gallery searched); 0 turns it off "
                          "(default: the Retriever's)")
    two.add_argument("--hasher", default="itq", help="hash method to fit, or a saved hasher directory / Hub id")
    two.add_argument("--bits", type=int, default=64)
    two.add_argument("--fit-split", default="train", help="split whose (image, caption) pairs fit the hasher")
    two.add_argument("--fit-embeddings", type=Path, default=None,
                     help=".npz holding {split}_image / {split}_text embeddings of --fit-split (else encoded now)")
    two.add_argument("--queries", choices=["captions", "keywords"], default="captions",
                     help="text queries: the captions, or keyword queries derived from them (eval/keywords.py)")
    two.add_argument("--one-caption-per-image", action="store_true",
                     help="text queries from one seeded caption per image only (eval.karpathy.one_caption_per_image; "
                          "as scripts/eval_rewrite.py draws them), e.g. when each query costs an LLM call")
    two.add_argument("--query-seed", type=int, default=0, help="seed of --one-caption-per-image's draw")
    two.add_argument("--reranker-arg", action="append", default=[], type=named_setting, metavar="NAME.KEY=VALUE",
                     help="reranker constructor argument, e.g. cross.model_id=runs/cross (JSON value or string)")
    two.add_argument("--vector-dtype", choices=["fp32", "fp16", "int8"], default=None,
                     help="run the pipelines through a retriever saved with these stored vectors and reopened "
                          "from disk (default: in memory, float32)")
    two.add_argument("--fusion-weight", type=float, default=0.0, help="weight of z(stage 1) added to z(stage 2)")
    two.add_argument("--latency-queries", type=int, default=50, help="single queries timed per direction")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from .sharded import get_state

    state = get_state()  # first: under `accelerate launch`, every process runs this script
    main_process = state.is_main_process
    if args.device is None and state.num_processes > 1:
        args.device = str(state.device)
    from retrieval import Retriever, load_encoder

    from .hf_datasets import DatasetUnavailableError

    start = time.perf_counter()
    try:
        dataset = load_dataset_arg(args, args.split)
    except (ValueError, FileNotFoundError, DatasetUnavailableError) as e:
        raise SystemExit(f"error: {e}") from None
    if args.max_images:
        dataset = dataset.subset(args.max_images)
    t0 = time.perf_counter()
    saved = None
    if args.retriever:
        saved = Retriever.from_pretrained(args.retriever, device=args.device)
        encoder, args.model = saved.encoder, f"{args.retriever} ({saved.encoder.model_id})"
    else:
        encoder = load_encoder(args.model, device=args.device)
    args.saved_hasher = saved.hasher if saved is not None else None
    load_seconds = time.perf_counter() - t0
    image_keys = None
    if dataset.image_paths and not isinstance(dataset.image_paths[0], (str, Path)):  # in-memory (HF datasets)
        image_keys = [f"{args.dataset}@{args.hf_revision}:{args.split}:{i}" for i in range(dataset.n_images)]
    emb = embed_dataset(encoder, dataset, args.batch_size, progress=None if main_process else False,
                        cache_dir=args.cache_dir, chunk_size=args.cache_chunk_size, image_keys=image_keys)
    args.fit_emb = None
    if args.rerank and needs_fit_embeddings(args):  # every process takes part in sharded encoding
        args.fit_emb = embed_dataset(encoder, load_dataset_arg(args, args.fit_split), args.batch_size,
                                     progress=None if main_process else False, cache_dir=args.cache_dir,
                                     chunk_size=args.cache_chunk_size)
    if not main_process:
        return {}
    t0 = time.perf_counter()
    metrics = evaluate_embeddings(emb, dataset)
    result = {
        **metrics,
        "model": args.model,
        "dataset": dataset.name,
        "dataset_source": str(args.dataset),
        "split": args.split,
        "n_images": dataset.n_images,
        "n_captions": len(dataset.captions),
        "seconds": {"load_model": load_seconds, **emb.seconds, "score": time.perf_counter() - t0,
                    "total": time.perf_counter() - start},
        "device": str(encoder.device),
        "processes": state.num_processes,
        "cache_dir": None if args.cache_dir is None else str(args.cache_dir),
        "machine": machine(),
        "tie_convention": "expected value over random order of tied scores",
    }
    label = f"{args.model} on {dataset.name} {args.split} ({dataset.n_images} images, {len(dataset.captions)} captions)"
    rows = [("float, exhaustive", metrics)]
    if args.folds:
        from .folds import fold_recall

        folds = fold_recall(emb.images, emb.texts, dataset, n_folds=args.folds)
        result["folds"] = {"n": args.folds, "per_fold": folds["folds"], "mean": folds["mean"]}
    if args.reference:
        from .reference import deltas, delta_table, load_reference

        ref = load_reference(args.reference, args.reference_model or args.model, dataset.name)
        result["reference"] = {"source": ref.source, "model": ref.model, "pretrained": ref.pretrained,
                               "deltas": deltas(metrics, ref)}
    if args.rerank:
        result["pipelines"] = run_pipelines(args, encoder, dataset, emb)
        rows += [(pipeline_label(r), r) for r in result["pipelines"]]
        print(label)
        print(latency_table(result["pipelines"]))
    else:
        rows = [(label, metrics)]
    if args.folds:
        rows.append((f"mean of {args.folds} folds", result["folds"]["mean"]))
    print(markdown_table(rows))
    if args.reference:
        print(delta_table(metrics, ref, label=args.model))
    result["seconds"]["total"] = time.perf_counter() - start
    print(f"wall time {result['seconds']['total']:.1f}s")
    if args.output:
        write_json(args.output, result)
    return result


def pipeline_label(result: dict[str, Any]) -> str:
    depth = result.get("hamming_candidates") or {}
    shown = {m: depth.get(m) or result["candidates"] for m in ("image", "text")}
    cascade = (f"Hamming top-{shown['image']}/{shown['text']} (T→I/I→T) -> float "
               if any(depth.values()) else "")
    stage1 = f"{result['hasher']} {result['bits']}-bit {cascade}top-{result['candidates']}"
    return stage1 if result["pipeline"] == "none" else f"{stage1} + {result['pipeline']}"


def latency_table(results: list[dict[str, Any]]) -> str:
    """Per pipeline: the recall ceiling (float top-10 kept among the reranker's candidates) and timings."""
    lines = ["| pipeline | T→I float top-10 kept | I→T float top-10 kept | T→I median ms/query | "
             "I→T median ms/query | T→I batch s | I→T batch s |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lat, sec, kept = r["latency"], r["seconds"], r["float_top10_kept"]
        lines.append(f"| {pipeline_label(r)} | {kept['text_to_image']:.3f} | {kept['image_to_text']:.3f} "
                     f"| {lat['text_to_image_median_ms']:.1f} | {lat['image_to_text_median_ms']:.1f}"
                     f" | {sec['text_to_image']:.1f} | {sec['image_to_text']:.1f} |")
    return "\n".join(lines)


def parse_hamming_candidates(values: list[str] | None) -> Any:
    """``--hamming-candidates`` as the Retriever takes it ("default" when not given)."""
    if not values:
        return "default"
    if len(values) == 1 and "=" not in values[0]:
        n = int(values[0])
        return n or None
    out: dict[str, int | None] = {}
    for value in values:
        gallery, _, n = value.partition("=")
        if gallery not in ("image", "text") or not n.isdigit():
            raise SystemExit(f"--hamming-candidates: expected N or image=N text=M, got {value!r}")
        out[gallery] = int(n) or None
    return out


def load_dataset_arg(args: argparse.Namespace, split: str) -> CaptionDataset:
    from .hf_datasets import load_caption_dataset

    kwargs = {"revision": args.hf_revision} if args.hf_revision else {}
    return load_caption_dataset(args.dataset, split, args.images, **kwargs)


def needs_fit_embeddings(args: argparse.Namespace) -> bool:
    from hashing import available_methods

    return not args.retriever and not args.fit_embeddings and args.hasher in available_methods()


def check_cache_encoder(path: Path, encoder: Any) -> None:
    """Refuses a ``--fit-embeddings`` cache another encoder made (a fingerprint-less one is trusted, with a word)."""
    from .datasets_hashing import check_made_by

    try:
        check_made_by(path, encoder)
    except ValueError as e:
        raise SystemExit(str(e)) from None


def fit_hasher(args: argparse.Namespace, encoder: Any) -> Any:
    """The saved retriever's hasher, a saved hasher, or one fitted on every pair of ``--fit-split``."""
    from hashing import Hasher, available_methods, create_hasher

    if getattr(args, "saved_hasher", None) is not None:
        return args.saved_hasher
    if args.hasher not in available_methods():
        return Hasher.from_pretrained(args.hasher)
    fit = load_dataset_arg(args, args.fit_split)
    if args.fit_embeddings:
        check_cache_encoder(args.fit_embeddings, encoder)
        with np.load(args.fit_embeddings) as z:
            images, texts = z[f"{args.fit_split}_image"], z[f"{args.fit_split}_text"]
        if len(images) != fit.n_images or len(texts) != len(fit.captions):
            raise SystemExit(f"{args.fit_embeddings}: {len(images)} images / {len(texts)} captions, but split "
                             f"{args.fit_split!r} has {fit.n_images} / {len(fit.captions)}")
    else:
        images, texts = args.fit_emb.images, args.fit_emb.texts
    return create_hasher(args.hasher, args.bits).fit(images[fit.caption_image], texts)


def run_pipelines(args: argparse.Namespace, encoder: Any, dataset: CaptionDataset, emb: Embeddings) -> list[dict]:
    from rerank import create_reranker

    from .two_stage import evaluate_pipeline, gallery_retriever, single_query_latency

    t0 = time.perf_counter()
    hasher = fit_hasher(args, encoder)
    fit_seconds = time.perf_counter() - t0
    retriever = gallery_retriever(encoder, hasher, dataset.image_paths, emb.images, dataset.captions, emb.texts,
                                  args.candidates, hamming_candidates=parse_hamming_candidates(args.hamming_candidates))
    retriever.fusion_weight = args.fusion_weight
    if args.vector_dtype:
        import tempfile

        from retrieval import Retriever

        retriever.vector_dtype = args.vector_dtype
        saved = retriever.save_pretrained(Path(tempfile.mkdtemp(prefix="eval-retriever.")) / "retriever")
        retriever = Retriever.from_pretrained(saved, encoder=encoder)
    rows = np.arange(len(dataset.captions))
    if args.one_caption_per_image:
        from .karpathy import one_caption_per_image

        rows = one_caption_per_image(dataset.caption_image, dataset.n_images, args.query_seed)
    text_queries, text_vectors = [dataset.captions[j] for j in rows], emb.texts[rows]
    if args.queries == "keywords":
        from .keywords import keyword_queries

        text_queries = keyword_queries(text_queries)
        text_vectors = encoder.encode_texts(text_queries, batch_size=4 * args.batch_size)
    # a str would be read as a text query by Retriever.search: image files go in as Paths
    image_queries = [Path(p) if isinstance(p, str) else p for p in dataset.images]
    extra = by_name(args.reranker_arg)
    results = []
    for name in args.rerank:
        t0 = time.perf_counter()
        reranker = None if name == "none" else create_reranker(name, **extra.get(name, {}))
        load_seconds = time.perf_counter() - t0
        result = evaluate_pipeline(retriever, dataset.caption_image, emb.images, emb.texts, image_queries,
                                   text_queries, reranker, args.candidates, text_query_vectors=text_vectors,
                                   text_query_rows=rows)
        result["latency"] = single_query_latency(retriever, text_queries, image_queries, reranker,
                                                 args.candidates, args.latency_queries)
        result.update(hasher=args.hasher, bits=hasher.bits, queries=args.queries, fusion_weight=args.fusion_weight,
                      vector_dtype=args.vector_dtype or "in-memory fp32",
                      text_queries=len(text_queries),
                      query_seed=args.query_seed if args.one_caption_per_image else None)
        result["seconds"].update(hasher_fit=fit_seconds, load_reranker=load_seconds)
        print(f"{pipeline_label(result)}: rsum {result['rsum']:.1f}", flush=True)
        results.append(result)
    return results


if __name__ == "__main__":
    main()
