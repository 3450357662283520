"""Open-vocabulary development set (issue 23): plain queries over photos outside Flickr8K's world.

    python -m eval.concept_dev                    # the shipped lite encoder: right-first count and MRR
    python -m eval.concept_dev --model ViT-B-32/openai
    python -m eval.concept_dev --sweep --weights 0 0.5 0.7 --top-k 1 3   # the lite concept settings

The photos are read at run time from packages that ship them (``eval/concept_dev.json`` names
each source, its package and its licence; no image is committed): scikit-image's and matplotlib's
sample data (the ``eval`` extra) and Debian's ``mate-backgrounds``. Each query has one right photo
(a few have two or three, e.g. "a flower"); every photo of the gallery is searched, and those
without a query are distractors. Right first = the best-ranked right photo is ranked 1; MRR = mean of
1 / that rank. Ties count against the query (a right photo tied with a wrong one ranks below it).

``--sweep`` chooses the lite model's ``concept_weight`` / ``concept_top_k``: for each setting it
prints this set's numbers and the rsum on the 500 held-out Flickr8K train images
(``eval.validation.held_out_train``; the test split is never read), from one pass of the towers.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEV_SET = Path(__file__).resolve().parent / "concept_dev.json"
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flickr8k"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class DevSet:
    names: list[str]          # gallery items as "source:relative/path"
    paths: list[Path]         # where they were found
    queries: list[str]
    right: list[list[int]]    # per query, gallery indices of its right photos


def source_root(name: str, source: dict[str, Any]) -> Path:
    if "python_package" in source:
        spec = importlib.util.find_spec(source["python_package"])
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"dev-set source {name!r} needs {source['package']}")
        return Path(list(spec.submodule_search_locations)[0]) / source["subdir"]
    if "directory" in source:
        return Path(source["directory"])
    raise ValueError(f"dev-set source {name!r} names neither 'python_package' nor 'directory'")


def load_dev_set(path: str | Path = DEV_SET) -> DevSet:
    """Reads the query list and resolves every photo in its installed package; a missing one is an error."""
    path = Path(path)
    spec = json.loads(path.read_text())
    if spec.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version must be {FORMAT_VERSION}, got {spec.get('format_version')!r}")
    names = list(spec["gallery"])
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: the gallery lists a photo twice")
    roots, paths, missing = {}, [], []
    for item in names:
        source, _, rel = item.partition(":")
        if source not in spec["sources"] or not rel:
            raise ValueError(f"{path}: gallery item {item!r} must be 'source:path' with a source of {sorted(spec['sources'])}")
        if source not in roots:
            roots[source] = source_root(source, spec["sources"][source])
        paths.append(roots[source] / rel)
        if not paths[-1].is_file():
            missing.append(f"{item} ({spec['sources'][source]['package']})")
    if missing:
        raise FileNotFoundError(f"{len(missing)} dev-set photos are not installed: {', '.join(missing[:5])}")
    index = {n: i for i, n in enumerate(names)}
    queries, right = [], []
    for q in spec["queries"]:
        unknown = [r for r in q["right"] if r not in index]
        if unknown or not q["right"] or not q["text"].strip():
            raise ValueError(f"{path}: query {q!r} needs a text and right photos from the gallery (unknown: {unknown})")
        queries.append(q["text"])
        right.append([index[r] for r in q["right"]])
    return DevSet(names, paths, queries, right)


def ranks_of_right(scores: np.ndarray, right: list[list[int]]) -> np.ndarray:
    """Per query (row of ``scores``, (n_queries, n_gallery)), the rank of its best-scored right photo (1 = first)."""
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[0] != len(right):
        raise ValueError(f"scores must be (n_queries={len(right)}, n_gallery), got {scores.shape}")
    out = np.empty(len(right), dtype=np.int64)
    for i, r in enumerate(right):
        wrong = np.ones(scores.shape[1], dtype=bool)
        wrong[r] = False
        out[i] = 1 + int((scores[i, wrong] >= scores[i, r].max()).sum())
    return out


def dev_metrics(image_emb: np.ndarray, query_emb: np.ndarray, right: list[list[int]]) -> dict[str, Any]:
    ranks = ranks_of_right(np.asarray(query_emb) @ np.asarray(image_emb).T, right)
    return {"right_first": int((ranks == 1).sum()), "queries": len(ranks), "mrr": float(np.mean(1.0 / ranks)),
            "ranks": ranks.tolist()}


def evaluate_encoder(encoder: Any, dev: DevSet) -> dict[str, Any]:
    return dev_metrics(encoder.encode_images(dev.paths), encoder.encode_texts(dev.queries), dev.right)


# -- the lite concept settings, chosen on held-out data --------------------------------------------
def lite_parts(model: Any, items: list[Any], batch_size: int = 50) -> tuple[Any, Any]:
    """Unit head embeddings and pooled tower features of images, once, so every setting is a cheap mix."""
    import torch
    from torch.nn import functional as F

    from common.images import load_image
    from common.lite_model import image_transform

    transform = image_transform(model.config)
    heads, pooled = [], []
    with torch.inference_mode():
        for s in range(0, len(items), batch_size):
            pixels = torch.stack([transform(load_image(p, s + i)) for i, p in enumerate(items[s:s + batch_size])])
            fmap = model.image_tower.forward_features(pixels)
            heads.append(F.normalize(model.image_head(fmap), dim=-1))
            pooled.append(fmap.mean(dim=(2, 3)))
    return torch.cat(heads), torch.cat(pooled)


def lite_texts(model: Any, texts: list[str], batch_size: int = 256) -> np.ndarray:
    import torch
    from torch.nn import functional as F

    out = []
    with torch.inference_mode():
        for s in range(0, len(texts), batch_size):
            tok = model.tokenizer(texts[s:s + batch_size], padding=True, truncation=True,
                                  max_length=model.config["text_max_length"], return_tensors="pt")
            out.append(F.normalize(model.text_features(tok["input_ids"], tok["attention_mask"]), dim=-1))
    return torch.cat(out).numpy()


def sweep(args: argparse.Namespace, dev: DevSet) -> list[dict[str, Any]]:
    import torch
    from torch.nn import functional as F

    from common.lite_concepts import load_concepts
    from common.lite_model import load_lite_model

    from .karpathy import load_karpathy
    from .recall import retrieval_recall
    from .validation import held_out_train

    model = load_lite_model(args.lite, concept_weight=0)
    model.concept_embeddings = load_concepts(args.lite, model.config["embed_dim"])
    train = load_karpathy(args.annotations, args.images, "train")
    held = held_out_train(train.caption_image, train.n_images)
    val_items = [train.image_paths[i] for i in held.val_images]
    heads, pooled = lite_parts(model, val_items + list(dev.paths))
    val_texts = lite_texts(model, [train.captions[j] for j in held.val_captions])
    owner = np.searchsorted(held.val_images, np.asarray(train.caption_image)[held.val_captions])
    queries = lite_texts(model, dev.queries)
    rows = []
    for top_k in args.top_k:
        model.concept_top_k = top_k
        with torch.inference_mode():
            concept = model.concept_embedding(pooled)
        for weight in args.weights:
            images = F.normalize(heads + weight * concept, dim=-1).numpy()
            val = retrieval_recall(val_texts @ images[:len(val_items)].T, owner)
            rsum = 100 * sum(v for k, v in val.items() if "recall@" in k)
            m = dev_metrics(images[len(val_items):], queries, dev.right)
            rows.append({"concept_weight": weight, "concept_top_k": top_k, "val_rsum": rsum, **m})
            print(f"concept_weight={weight:<5g} concept_top_k={top_k:<3d} held-out val rsum {rsum:6.2f}   "
                  f"dev right first {m['right_first']}/{m['queries']}, MRR {m['mrr']:.3f}", flush=True)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lite", help="any load_encoder id (default: the shipped lite encoder)")
    p.add_argument("--dev-set", type=Path, default=DEV_SET)
    p.add_argument("--sweep", action="store_true", help="lite concept settings instead of one encoder")
    p.add_argument("--lite", type=Path, default=None, help="lite model directory for --sweep (default: shipped)")
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7, 0.9, 1.2])
    p.add_argument("--top-k", type=int, nargs="+", default=[1, 3, 10])
    p.add_argument("--annotations", type=Path, default=DATA / "dataset_flickr8k.json")
    p.add_argument("--images", type=Path, default=DATA / "images")
    p.add_argument("--output", type=Path, default=None, help="write the result JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Any:
    args = parse_args(argv)
    dev = load_dev_set(args.dev_set)
    if args.sweep:
        from common.lite_model import WEIGHTS_DIR

        args.lite = args.lite or WEIGHTS_DIR
        result: Any = sweep(args, dev)
    else:
        from retrieval import load_encoder

        result = evaluate_encoder(load_encoder(args.model), dev)
        result["model"] = args.model
        for query, rank in zip(dev.queries, result["ranks"]):
            print(f"{rank:3d}  {query}")
        print(f"{args.model}: right photo first for {result['right_first']} of {result['queries']} queries, "
              f"MRR {result['mrr']:.3f} ({len(dev.paths)} photos)")
    if args.output:
        from common.atomic import write_json

        write_json(args.output, result)
    return result


if __name__ == "__main__":
    main()
