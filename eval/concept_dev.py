"""Open-vocabulary development set (issue 23): plain queries over photos outside Flickr8K's world.

    python -m eval.concept_dev                    # the shipped lite encoder: right-first count and MRR
    python -m eval.concept_dev --explain          # and, per query, the tower's top ImageNet class and gate
    python -m eval.concept_dev --model ViT-B-32/openai
    python -m eval.concept_dev --sweep --prior 0 1 --weights 0 1 2 --top-k 1 3   # the lite concept settings
    python -m eval.concept_dev --sweep --gate 0 0.45 0.5 --gate-temperature 0.02 0.05   # and the gate

The photos are read at run time from packages that ship them (``eval/concept_dev.json`` names
each source, its package and its licence; no image is committed): scikit-image's and matplotlib's
sample data (the ``eval`` extra) and Debian's ``mate-backgrounds``. Each query has one right photo
(a few have two or three, e.g. "a flower"); every photo of the gallery is searched, and those
without a query are distractors. Right first = the best-ranked right photo is ranked 1; MRR = mean of
1 / that rank. Ties count against the query (a right photo tied with a wrong one ranks below it).

``--sweep`` chooses the lite model's ``concept_weight`` / ``concept_top_k`` / ``concept_center`` /
``concept_prior`` (and measures a text-side ConSE, ``--text-weights``): for each setting it prints this set's numbers
and the rsum on the padded held-out galleries of ``eval.validation.held_out_train`` (500 held-out
Flickr8K train images and their 2,500 captions queried against 1,000 images / 5,000 captions; the
test split is never read), from one pass of the towers.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
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
    scores = np.asarray(query_emb) @ np.asarray(image_emb).T
    ranks = ranks_of_right(scores, right)
    return {"right_first": int((ranks == 1).sum()), "queries": len(ranks), "mrr": float(np.mean(1.0 / ranks)),
            "ranks": ranks.tolist(), "first": scores.argmax(axis=1).tolist()}


def explain_concepts(dev: DevSet, first: list[int]) -> list[dict[str, Any]]:
    """Per query, what the shipped lite tower makes of its right photo and of the photo ranked first:
    the top ImageNet class with its probability, and the concept gate (1: the concepts count fully).

    Why: it tells a miss of the classifier (the right photo's top class is unrelated to the query,
    so no weighting of the concept term can help) from a miss of the weighting.
    """
    import torch

    from common.lite_concepts import flickr8k_gate, imagenet_synonyms
    from common.lite_model import load_lite_model

    model = load_lite_model()
    heads, pooled = lite_parts(model, list(dev.paths))
    with torch.inference_mode():
        probs = model.image_tower.imagenet_classifier(pooled.float()).softmax(dim=-1)
        gate = (flickr8k_gate(heads, model.concept_gate_bank, model.config["concept_gate"],
                              model.config["concept_gate_temperature"]).reshape(-1)
                if model.config["concept_gate"] > 0 else torch.ones(len(heads)))
    names = imagenet_synonyms()

    def seen(i: int) -> dict[str, Any]:
        top = int(probs[i].argmax())
        return {"photo": dev.names[i], "class": names[top][0], "p": float(probs[i, top]), "gate": float(gate[i])}

    return [{"query": q, "right": seen(r[0]), "first": seen(f)} for q, r, f in zip(dev.queries, dev.right, first)]


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


def minilm_sentences(texts: list[str], batch_size: int = 256) -> np.ndarray:
    """all-MiniLM-L6-v2's own unit sentence embeddings (the pip weights, no Flickr8K top or head)."""
    import torch
    from torch.nn import functional as F

    from common.lite_model import load_minilm

    minilm, tokenizer = load_minilm()
    out = []
    with torch.inference_mode():
        for s in range(0, len(texts), batch_size):
            tok = tokenizer(texts[s:s + batch_size], padding=True, truncation=True, max_length=64, return_tensors="pt")
            mask = tok["attention_mask"].unsqueeze(-1).float()
            out.append(F.normalize((minilm(**tok).last_hidden_state * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(out).numpy()


def padded_held_out_rsum(image_emb: np.ndarray, text_emb: np.ndarray, caption_image: np.ndarray,
                         n_val_images: int) -> dict[str, float]:
    """R@1/5/10 both ways on the padded held-out galleries (``eval.validation.held_out_train``).

    Text->image: the captions of the first ``n_val_images`` images query every image (1,000);
    image->text: those images query every caption (5,000). The padding is never queried.
    """
    from .recall import expected_hits

    caption_image = np.asarray(caption_image)
    queried = np.flatnonzero(caption_image < n_val_images)
    relevant = np.zeros((len(caption_image), len(image_emb)), dtype=bool)
    relevant[np.arange(len(caption_image)), caption_image] = True
    t2i = expected_hits(text_emb[queried] @ image_emb.T, relevant[queried], (1, 5, 10))
    i2t = expected_hits(image_emb[:n_val_images] @ text_emb.T, relevant.T[:n_val_images], (1, 5, 10))
    out = {f"image_retrieval_recall@{k}": float(t2i[k].mean()) for k in (1, 5, 10)}
    out.update({f"text_retrieval_recall@{k}": float(i2t[k].mean()) for k in (1, 5, 10)})
    out["rsum"] = 100.0 * sum(out.values())
    return out


def softmax_top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Softmax over classes, masked to the k most probable (not renormalised: the mass is the confidence)."""
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    if k < p.shape[1]:
        p = p * (p >= -np.partition(-p, k - 1, axis=1)[:, k - 1:k])
    return p


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def prior_images(annotations: str | Path, images: str | Path) -> list[Path]:
    """The Flickr8K photos the class prior is taken over: the padding images of ``held_out_train``.

    Train images outside the held-out draw (the set tuning may fit on), never queried, never test.
    """
    from .karpathy import load_karpathy
    from .validation import held_out_train

    train = load_karpathy(annotations, images, "train")
    held = held_out_train(train.caption_image, train.n_images)
    return [train.image_paths[i] for i in held.gallery_images[len(held.val_images):]]


def gate_bank_captions(annotations: str | Path, images: str | Path) -> list[str]:
    """The captions of the concept gate's bank (``common.lite_concepts.flickr8k_gate``): the first
    caption of each Flickr8K train image outside ``held_out_train``'s gallery (val + padding), so
    no image the held-out numbers query or search has its own caption in it (5,000 captions)."""
    from .karpathy import load_karpathy
    from .validation import held_out_train

    train = load_karpathy(annotations, images, "train")
    held = held_out_train(train.caption_image, train.n_images)
    first: dict[int, int] = {}
    for j, i in enumerate(np.asarray(train.caption_image)):
        first.setdefault(int(i), j)
    outside = np.setdiff1d(np.arange(train.n_images), held.gallery_images)
    return [train.captions[first[int(i)]] for i in outside]


def sweep(args: argparse.Namespace, dev: DevSet) -> list[dict[str, Any]]:
    """Every setting on the padded held-out galleries and the dev set, from one pass of the towers.

    Image side: the shipped ConSE (``concept_weight``, ``concept_top_k``, ``concept_center``,
    ``concept_prior``) and its per-image gate (``--gate`` centres, 0 = off, x ``--gate-temperature``;
    the caption bank is embedded here from :func:`gate_bank_captions`, as the build script does).
    Text side (``--text-weights`` above 0; measured, not shipped): ConSE on the query too, with
    class probabilities softmax(cos / ``--text-temperature``) between MiniLM's own sentence
    embedding of the query and of the class prompts, top ``--text-top-k``, through the same class
    embeddings, so that queries and photos meet in class space.
    """
    import torch

    from common.lite_concepts import center_concepts, class_prompts, flickr8k_gate, load_concepts, reweight_by_prior
    from common.lite_model import load_lite_model

    from .karpathy import load_karpathy
    from .validation import held_out_train

    model = load_lite_model(args.lite, concept_weight=0)
    classes = load_concepts(args.lite, model.config["embed_dim"])
    train = load_karpathy(args.annotations, args.images, "train")
    held = held_out_train(train.caption_image, train.n_images)
    gallery = [train.image_paths[i] for i in held.gallery_images]
    position = {int(g): i for i, g in enumerate(held.gallery_images)}
    owner = np.array([position[int(i)] for i in np.asarray(train.caption_image)[held.gallery_captions]])
    heads, pooled = lite_parts(model, gallery + list(dev.paths))
    with torch.inference_mode():
        logits = model.image_tower.imagenet_classifier(pooled.float()).numpy()
    heads = heads.numpy()
    captions = [train.captions[j] for j in held.gallery_captions]
    texts = lite_texts(model, captions + list(dev.queries))
    text_cos = None
    if any(w > 0 for w in args.text_weights):
        prompts, prompt_class = class_prompts()
        names = np.zeros((1000, 384))
        np.add.at(names, prompt_class.numpy(), minilm_sentences(prompts))
        text_cos = minilm_sentences(captions + list(dev.queries)) @ unit(names).T
    n = len(gallery)
    gate_settings = [(0.0, 0.0)] + [(g, t) for g in args.gate if g for t in args.gate_temperature]
    gates = {(0.0, 0.0): np.ones((len(heads), 1))}
    if len(gate_settings) > 1:
        bank = torch.from_numpy(lite_texts(model, gate_bank_captions(args.annotations, args.images)))
        for g, t in gate_settings[1:]:
            gates[g, t] = flickr8k_gate(torch.from_numpy(heads), bank, g, t).numpy()
    # the class prior over the padding images (gallery distractors from the fit set), as
    # scripts/build_lite_concepts.py computes it from prior_images()
    prior = torch.from_numpy(softmax_top_k(logits[len(held.val_images):n], 1000).mean(axis=0))
    text_settings = [(0.0, 0, 0.0)] + [(w, k, t) for w in args.text_weights if w > 0
                                       for k in args.text_top_k for t in args.text_temperature]
    rows = []
    for center, strength, top_k in itertools.product(map(bool, args.center), args.prior, args.top_k):
        t_c = center_concepts(classes) if center else classes
        t_c = (reweight_by_prior(t_c, prior.float(), strength) if strength else t_c).numpy()
        image_concept = softmax_top_k(logits, top_k) @ t_c
        for weight, (gc, gt), (tw, tk, tau) in itertools.product(args.weights, gate_settings, text_settings):
            if weight == 0 and gc:
                continue
            images = unit(heads + weight * gates[gc, gt] * image_concept)
            queries = texts if not tw else unit(texts + tw * softmax_top_k(text_cos / tau, tk) @ t_c)
            val = padded_held_out_rsum(images[:n], queries[:len(captions)], owner, len(held.val_images))
            m = dev_metrics(images[n:], queries[len(captions):], dev.right)
            rows.append({"concept_center": center, "concept_prior": strength, "concept_weight": weight,
                         "concept_top_k": top_k, "concept_gate": gc, "concept_gate_temperature": gt, "text_weight": tw, "text_top_k": tk, "text_temperature": tau,
                         "held_out": val, **m})
            text = f" text w={tw:g} k={tk} T={tau:g}" if tw else ""
            text += f" gate={gc:g} T={gt:g}" if gc else ""
            print(f"center={center:d} prior={strength:<4g} weight={weight:<4g} top_k={top_k:<2d}{text}  "
                  f"held-out rsum {val['rsum']:6.2f}   dev right first {m['right_first']}/{m['queries']}, "
                  f"MRR {m['mrr']:.3f}", flush=True)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lite", help="any load_encoder id (default: the shipped lite encoder)")
    p.add_argument("--dev-set", type=Path, default=DEV_SET)
    p.add_argument("--sweep", action="store_true", help="lite concept settings instead of one encoder")
    p.add_argument("--lite", type=Path, default=None, help="lite model directory for --sweep (default: shipped)")
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5])
    p.add_argument("--top-k", type=int, nargs="+", default=[1, 3])
    p.add_argument("--center", type=int, nargs="+", choices=(0, 1), default=[0, 1],
                   help="concept_center settings (1: class embeddings less their mean)")
    p.add_argument("--prior", type=float, nargs="+", default=[0.0, 0.5, 1.0],
                   help="concept_prior strengths (0: off; the prior is taken over prior_images())")
    p.add_argument("--gate", type=float, nargs="+", default=[0.0],
                   help="concept_gate centres (0: off; a cosine to the Flickr8K caption bank)")
    p.add_argument("--gate-temperature", type=float, nargs="+", default=[0.05],
                   help="concept_gate_temperature settings")
    p.add_argument("--text-weights", type=float, nargs="*", default=[],
                   help="text-side concept weights to measure (0: the query's head embedding alone)")
    p.add_argument("--text-top-k", type=int, nargs="+", default=[3, 10])
    p.add_argument("--text-temperature", type=float, nargs="+", default=[0.05, 0.1])
    p.add_argument("--annotations", type=Path, default=DATA / "dataset_flickr8k.json")
    p.add_argument("--images", type=Path, default=DATA / "images")
    p.add_argument("--explain", action="store_true",
                   help="also print the shipped lite tower's top ImageNet class and gate for each query's "
                        "right photo and first-ranked photo")
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
        if args.explain:
            result["explained"] = explain_concepts(dev, result["first"])
            for rank, e in zip(result["ranks"], result["explained"]):
                r, f = e["right"], e["first"]
                print(f"{rank:3d}  {e['query']:<36} right: {r['class']} p={r['p']:.2f} gate={r['gate']:.2f}"
                      + (f"  | first: {f['photo']} ({f['class']} p={f['p']:.2f})" if rank > 1 else ""))
        else:
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
