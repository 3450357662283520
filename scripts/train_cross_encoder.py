"""Trains the offline cross-encoder (``rerank/cross_encoder.py``) on Flickr8K train.

Hard negatives come from stage 1 as the product runs it: an ITQ hasher (64 bits) fitted on the
train pairs, a faiss binary flat index, the Hamming top-``--candidates`` of every train query,
re-sorted by float cosine (the order a float-rescoring stage would show); a query's hard
negatives are drawn from the first ``--negatives-from`` of those. Half of each group's negatives
are random instead (``--hard-fraction``): a head trained from scratch on hard negatives alone did
not learn (VSE++ saw the same). Each step scores a group of one positive and ``--group - 1``
negatives per query, both directions (caption -> images, image -> captions), with a listwise
softmax loss.

Why the head reads the *frozen* token features and learns to match on its own (``--itc-in-loss
0``): the lite encoder was trained on these very captions, so its tuned features and its cosine are
over-confident on train. A first run on the tuned features with the ITC term inside the loss
(``--features tuned --itc-in-loss 15.8``) got worse on validation the longer it trained. The ITC
weight of the final score is chosen afterwards on the validation images (the lite trainer's own
held-out draw of 500 train images, never trained on by either model), and the best validation
checkpoint is kept.

The shipped reranker is four heads, two per attention direction, trained separately and scored
together (SCAN's t-i + i-t ensemble); ``--ensemble`` trains nothing, it scores saved heads together
and picks the ensemble's ITC weight on the same validation images (the model card has the four
training commands):

    python scripts/train_cross_encoder.py --attention t2i --output runs/cross-t2i
    python scripts/train_cross_encoder.py --attention i2t --output runs/cross-i2t
    python scripts/train_cross_encoder.py --ensemble runs/cross-t2i runs/cross-i2t --output rerank/weights/cross-encoder
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from eval.karpathy import load_karpathy
from eval.recall import retrieval_recall
from hashing import create_hasher
from hashing.index import create_index
from rerank.cross_encoder import (
    ATTENTION_DIRECTIONS, CONFIG_NAME, DEFAULT_HEAD_CONFIG, FEATURE_SETS, FORMAT_VERSION, WEIGHTS_NAME,
    CrossEncoderHead, HeadEnsemble, LiteTokenFeatures, States, lite_feature_source, load_head,
)
from common.atomic import atomic_write_dir
from retrieval.encoders.lite import WEIGHTS_DIR as LITE_DIR, load_lite_model
from eval.lite_training import embed_cached, image_trunk_features, text_trunk_features

ROOT = Path(__file__).resolve().parent.parent
LITE_VAL_SEED = 0  # scripts/train_lite.py's --seed: its validation draw is rng(seed).permutation[:500]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = ROOT.parent / "shared" / "data" / "flickr8k"
    p.add_argument("--annotations", type=Path, default=data / "dataset_flickr8k.json")
    p.add_argument("--images", type=Path, default=data / "images")
    p.add_argument("--output", type=Path, required=True,
                   help="a run directory (runs/...); the shipped head is rerank/weights/cross-encoder")
    p.add_argument("--cache", type=Path, default=ROOT / "cache")
    p.add_argument("--lite", type=Path, default=LITE_DIR, help="the lite encoder directory whose towers the head reads")
    p.add_argument("--val-images", type=int, default=500)
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--candidates", type=int, default=128)
    p.add_argument("--negatives-from", type=int, default=48)
    p.add_argument("--group", type=int, default=16, help="candidates per query in a training group (1 positive)")
    p.add_argument("--hard-fraction", type=float, default=0.5, help="share of a group's negatives from stage 1")
    p.add_argument("--hard-fraction-end", type=float, default=None,
                   help="ramp the hard share linearly to this by the last step (VSE++'s warm start: random "
                        "negatives get the head off the ground, hard ones teach the top of the list)")
    p.add_argument("--batch-size", type=int, default=32, help="queries per direction per step")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--features", choices=["tuned", "frozen"], default="frozen",
                   help="token features: the lite towers' tuned tops, or the frozen activations entering them")
    p.add_argument("--attention", choices=list(ATTENTION_DIRECTIONS), default="t2i",
                   help="t2i: caption tokens attend over image regions; i2t: regions attend over tokens")
    p.add_argument("--ensemble", nargs="+", type=Path, default=None, metavar="DIR",
                   help="no training: score these trained heads together (match logits summed, one ITC term; "
                        "SCAN ensembles its t-i and i-t models so), choose the ITC scale on validation, save "
                        "the ensemble to --output")
    p.add_argument("--itc-in-loss", type=float, default=0.0,
                   help="ITC scale inside the training loss (0: the head learns to match on its own; the "
                        "fusion scale is chosen on validation either way)")
    p.add_argument("--dim", type=int, default=DEFAULT_HEAD_CONFIG["dim"])
    p.add_argument("--heads", type=int, default=DEFAULT_HEAD_CONFIG["heads"])
    p.add_argument("--dropout", type=float, default=DEFAULT_HEAD_CONFIG["dropout"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args()


# -- features -----------------------------------------------------------------------------------
def cache_file(cache: Path, split: str, n: int, lite_dir: Path = LITE_DIR) -> Path:
    weights = (Path(lite_dir) / "model.safetensors").read_bytes()
    key = hashlib.sha1(weights + f"{split}:{n}".encode()).hexdigest()[:12]
    return cache / f"cross_features_{split}_{key}.pt"


@torch.inference_mode()
def split_features(model, split, cache: Path, lite_dir: Path = LITE_DIR) -> dict[str, torch.Tensor]:
    """Token features and ITC embeddings of one split, computed once (the lite weights key the cache)."""
    file = cache_file(cache, split.name, len(split.captions), lite_dir)
    if file.exists():
        return torch.load(file)
    features = LiteTokenFeatures(model, torch.device("cpu"))
    tok, emb = [], []
    for s in tqdm(range(0, split.n_images, 64), desc="image tokens"):
        t, e = features.images(split.image_paths[s:s + 64], batch_size=64)
        tok.append(t.half())
        emb.append(e)
    out = {"image_tokens": torch.cat(tok), "image_embedding": torch.cat(emb)}
    order = np.argsort([len(c) for c in split.captions])  # similar lengths per batch: little padding
    max_len = model.config["text_max_length"]
    n = len(split.captions)
    hidden = torch.zeros(n, max_len, model.text_tower.config.hidden_size, dtype=torch.float16)
    mask = torch.zeros(n, max_len, dtype=torch.long)
    text_emb = torch.zeros(n, model.config["embed_dim"])
    for s in tqdm(range(0, n, 256), desc="text tokens"):
        rows = order[s:s + 256]
        h, m, e = features.texts([split.captions[r] for r in rows], batch_size=256)
        hidden[rows, :h.shape[1]], mask[rows, :h.shape[1]], text_emb[rows] = h.half(), m, e
    length = int(mask.sum(1).max())
    out.update(text_tokens=hidden[:, :length].contiguous(), text_mask=mask[:, :length].contiguous(),
               text_embedding=text_emb)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(out, file)
    return out


# -- stage-1 candidates -------------------------------------------------------------------------
def stage1_candidates(image_emb: np.ndarray, text_emb: np.ndarray, caption_image: np.ndarray, bits: int,
                      k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """ITQ + Hamming top-k: (captions, k) image rows and (images, k) caption rows."""
    hasher = create_hasher("itq", bits, seed=seed)
    hasher.fit(image_emb[caption_image], text_emb)
    image_codes, text_codes = hasher.encode(image_emb, "image"), hasher.encode(text_emb, "text")
    out = []
    for queries, items in ((text_codes, image_codes), (image_codes, text_codes)):
        index = create_index("flat", bits)
        index.add(items)
        out.append(index.search(queries, min(k, len(items))).ids)
    return out[0], out[1]


def by_float(candidates: np.ndarray, queries: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Each row of candidates re-sorted by float cosine, as a float-rescoring stage would show them."""
    scores = np.einsum("qd,qkd->qk", queries, items[candidates])
    return np.take_along_axis(candidates, np.argsort(-scores, axis=1, kind="stable"), axis=1)


# -- training ----------------------------------------------------------------------------------
def prepare(head: CrossEncoderHead, feats: dict, image_rows: np.ndarray, text_rows: np.ndarray
            ) -> tuple[States, States]:
    tr, ir = torch.as_tensor(text_rows), torch.as_tensor(image_rows)
    length = max(int(feats["text_mask"][tr].sum(1).max()), 1)
    images = head.prepare_images(feats["image_tokens"][ir], feats["image_embedding"][ir])
    texts = head.prepare_texts(feats["text_tokens"][tr, :length], feats["text_mask"][tr, :length],
                               feats["text_embedding"][tr])
    return images, texts


def group_loss(head, feats, query_rows, groups, direction: str) -> torch.Tensor:
    """Listwise softmax over each group; column 0 of ``groups`` is the positive."""
    b, g = groups.shape
    flat = groups.reshape(-1)
    if direction == "t2i":
        uniq, inverse = np.unique(flat, return_inverse=True)
        images, texts = prepare(head, feats, uniq, query_rows)
        scores = head.pair_scores(texts[np.repeat(np.arange(b), g)], images[inverse])
    else:
        uniq, inverse = np.unique(flat, return_inverse=True)
        images, texts = prepare(head, feats, query_rows, uniq)
        scores = head.pair_scores(texts[inverse], images[np.repeat(np.arange(b), g)])
    return F.cross_entropy(scores.view(b, g), torch.zeros(b, dtype=torch.long))


def sample_groups(rng, queries: np.ndarray, positives: list[np.ndarray], ranked: np.ndarray, group: int,
                  negatives_from: int, n_items: int, hard_fraction: float) -> np.ndarray:
    """Column 0 the positive; then hard negatives (stage-1 top) and random ones (a head trained
    from scratch on hard negatives alone does not get off the ground, as VSE++ observed)."""
    out = np.empty((len(queries), group), dtype=np.int64)
    n_hard = int(round((group - 1) * hard_fraction))
    for row, q in enumerate(queries):
        pos = positives[q]
        pool = ranked[q, :negatives_from]
        pool = pool[~np.isin(pool, pos)]
        out[row, 0] = rng.choice(pos)
        out[row, 1:1 + n_hard] = rng.choice(pool, n_hard, replace=len(pool) < n_hard)
        randoms = rng.choice(n_items, group - 1 - n_hard)
        clash = np.isin(randoms, pos)
        randoms[clash] = rng.choice(pool, int(clash.sum()))
        out[row, 1 + n_hard:] = randoms
    return out


def hard_fraction_at(step: int, steps: int, start: float, end: float | None) -> float:
    """The hard-negative share at ``step`` (1-based): ``start``, ramped linearly to ``end`` if given."""
    if end is None:
        return start
    return start + (end - start) * min(step, steps) / steps


# -- evaluation --------------------------------------------------------------------------------
@torch.no_grad()
def rerank_scores(head, feats, image_rows, text_rows, t2i_cand, i2t_cand):
    """Per direction, the (match logits, ITC cosines) of every query's candidates, each (queries, k).

    Kept apart so that :func:`recall_from` can fuse them at any ITC scale without re-running the head.
    """
    head.eval()
    images, texts = prepare(head, feats, image_rows, text_rows)
    out = {}
    for name, cand in (("t2i", t2i_cand), ("i2t", i2t_cand)):
        nq, k = cand.shape
        q = np.repeat(np.arange(nq), k)
        c = cand.reshape(-1)
        t_idx, i_idx = (q, c) if name == "t2i" else (c, q)
        match, cosine = [], []
        for s in range(0, len(q), 8192):
            t, i = texts[t_idx[s:s + 8192]], images[i_idx[s:s + 8192]]
            cos = (t.embedding * i.embedding).sum(-1)
            match.append(head.pair_scores(t, i) - head.itc_scale * cos)
            cosine.append(cos)
        out[name] = (torch.cat(match).view(nq, k).numpy(), torch.cat(cosine).view(nq, k).numpy())
    return out


def recall_from(parts, t2i_cand, i2t_cand, nt, ni, caption_image, itc_scale: float | None) -> dict[str, float]:
    """R@K of the reranked candidates (``itc_scale=None``: float rescoring only)."""
    sim_t2i = np.full((nt, ni), -np.inf, dtype=np.float32)
    sim_i2t = np.full((ni, nt), -np.inf, dtype=np.float32)
    for sim, name, cand in ((sim_t2i, "t2i", t2i_cand), (sim_i2t, "i2t", i2t_cand)):
        match, cosine = parts[name]
        score = cosine if itc_scale is None else match + itc_scale * cosine
        np.put_along_axis(sim, cand, score, axis=1)
    t2i = retrieval_recall(sim_t2i, caption_image)
    i2t = retrieval_recall(sim_i2t.T, caption_image)
    return {**{k: v for k, v in t2i.items() if k.startswith("image_")},
            **{k: v for k, v in i2t.items() if k.startswith("text_")}}


#: ITC scales tried: 0 and powers of 2 up to 256 while training; an ensemble (whose summed logits
#: want about twice a single head's scale, between two powers of 2) gets steps of sqrt(2).
ITC_SCALES = [0.0] + [2.0 ** e for e in range(9)]
ENSEMBLE_ITC_SCALES = [0.0] + [2.0 ** (e / 2) for e in range(17)]


def best_itc_scale(parts, val_t2i, val_i2t, n_caps, n_images, val_owner,
                   scales: list[float] = ITC_SCALES) -> tuple[float, dict[str, float]]:
    """The ITC scale (of ``scales``) with the best validation R@1 sum, and its recalls."""
    rows = {s: recall_from(parts, val_t2i, val_i2t, n_caps, n_images, val_owner, s) for s in scales}
    r1 = {s: m["image_retrieval_recall@1"] + m["text_retrieval_recall@1"] for s, m in rows.items()}
    scale = max(r1, key=r1.get)
    return scale, rows[scale]


def save_model(output: Path, state: dict[str, torch.Tensor], head_config: dict, training: dict,
               lite_features: dict) -> None:
    """Weights, config and (kept) model card, written atomically."""
    from safetensors.torch import save_file

    card = output / "README.md"

    def write(tmp: Path) -> None:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / WEIGHTS_NAME))
        config = {"format_version": FORMAT_VERSION, "model_type": "lite-cross-encoder", "head": head_config,
                  "encoder": None,  # the shipped lite encoder
                  "lite_features": lite_features,  # which tower and split the head's tokens came from
                  "training": training}
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        if card.exists():
            (tmp / card.name).write_text(card.read_text())

    atomic_write_dir(output, write)


def save_ensemble(args, feats, val_images, val_caps, val_owner, val_t2i, val_i2t) -> None:
    """``--ensemble``: the heads of ``args.ensemble`` scored together, ITC scale chosen on validation."""
    members, trainings = [], []
    for directory in args.ensemble:
        head, config = load_head(directory)
        members += list(head.members) if isinstance(head, HeadEnsemble) else [head]
        trainings += config["training"].get("members", [config["training"]])
    ensemble = HeadEnsemble(members, itc_scale=0.0)
    parts = rerank_scores(ensemble, feats, val_images, val_caps, val_t2i, val_i2t)
    base = recall_from(parts, val_t2i, val_i2t, len(val_caps), len(val_images), val_owner, None)
    scale, best = best_itc_scale(parts, val_t2i, val_i2t, len(val_caps), len(val_images), val_owner,
                                 ENSEMBLE_ITC_SCALES)
    print("val float rescoring:", json.dumps({k: round(v, 4) for k, v in base.items()}))
    print(f"val ensemble (itc_scale {scale}):", json.dumps({k: round(v, 4) for k, v in best.items()}))
    ensemble.itc_scale.fill_(scale)
    save_model(args.output, ensemble.state_dict(), {"members": ensemble.config["members"], "itc_scale": scale},
               {"ensemble_of": [str(d) for d in args.ensemble], "val_float_rescoring": base,
                "best": {"itc_scale": scale, **best}, "members": trainings}, args.lite_features)
    print(f"saved {args.output}")


def frozen_tokens(lite, train, cache: Path) -> dict[str, torch.Tensor]:
    """The frozen trunk activations of the train split and the ITC embeddings computed from them.

    From the lite trainer's caches (``eval.lite_training``) at the lite model's own
    split; the top runs once on them, so nothing runs a whole tower again.
    """
    image = image_trunk_features(lite, train.image_paths, cache)[0]
    hidden, mask = text_trunk_features(lite, train.captions, cache)
    image_emb, text_emb = embed_cached(lite.eval(), image, lite.image_split, hidden, mask, lite.text_split)
    length = int(mask.sum(1).max())
    return {"image_tokens": image.flatten(2).transpose(1, 2).contiguous(), "image_embedding": image_emb,
            "text_tokens": hidden[:, :length].contiguous(), "text_mask": mask[:, :length].contiguous(),
            "text_embedding": text_emb}


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    lite = load_lite_model(args.lite)
    args.lite_features = lite_feature_source(lite)
    train = load_karpathy(args.annotations, args.images, "train")
    # frozen features: tokens and ITC embeddings both from the lite trainer's trunk caches (the
    # top runs once on them); tuned features need the whole towers run once over the split
    if args.features == "frozen":
        feats = frozen_tokens(lite, train, args.cache)
    else:
        feats = split_features(lite, train, args.cache, args.lite)

    order = np.random.default_rng(LITE_VAL_SEED).permutation(train.n_images)
    val_images = np.sort(order[: args.val_images])
    fit_images = np.sort(order[args.val_images:])
    caps_of = [np.flatnonzero(train.caption_image == i) for i in range(train.n_images)]
    image_emb, text_emb = feats["image_embedding"].numpy(), feats["text_embedding"].numpy()

    def subset(images: np.ndarray):
        caps = np.concatenate([caps_of[i] for i in images])
        position = -np.ones(train.n_images, dtype=np.int64)
        position[images] = np.arange(len(images))
        return caps, position[train.caption_image[caps]]

    fit_caps, fit_owner = subset(fit_images)
    val_caps, val_owner = subset(val_images)
    t0 = time.time()
    val_t2i, val_i2t = stage1_candidates(image_emb[val_images], text_emb[val_caps], val_owner, args.bits,
                                         args.candidates, args.seed)
    if args.ensemble:
        return save_ensemble(args, feats, val_images, val_caps, val_owner, val_t2i, val_i2t)
    fit_t2i, fit_i2t = stage1_candidates(image_emb[fit_images], text_emb[fit_caps], fit_owner, args.bits,
                                         args.candidates, args.seed)
    fit_t2i = by_float(fit_t2i, text_emb[fit_caps], image_emb[fit_images])
    fit_i2t = by_float(fit_i2t, image_emb[fit_images], text_emb[fit_caps])
    print(f"stage-1 candidates in {time.time() - t0:.0f}s", flush=True)
    # rows of feats: fit-local positions -> global train rows
    fit_positives_t2i = [np.array([o]) for o in fit_owner]
    fit_positives_i2t = [np.flatnonzero(fit_owner == i) for i in range(len(fit_images))]

    image_dim = LiteTokenFeatures(lite, torch.device("cpu"), args.features).image_dim  # of this lite model's tower
    head_config = {**DEFAULT_HEAD_CONFIG, **FEATURE_SETS[args.features], "image_dim": image_dim,
                   "image_tokens": feats["image_tokens"].shape[1], "features": args.features,
                   "attention": args.attention, "dim": args.dim, "heads": args.heads, "dropout": args.dropout,
                   "init_itc_scale": args.itc_in_loss}
    head = CrossEncoderHead(**head_config)
    head.itc_scale.requires_grad_(False)
    params = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)

    val_view = lambda: rerank_scores(head, feats, val_images, val_caps, val_t2i, val_i2t)  # noqa: E731
    parts = val_view()
    base = recall_from(parts, val_t2i, val_i2t, len(val_caps), len(val_images), val_owner, None)
    print("val float rescoring:", json.dumps({k: round(v, 4) for k, v in base.items()}), flush=True)

    best, best_state, history = -1.0, None, []
    fit_img_global, fit_cap_global = fit_images, fit_caps
    for step in tqdm(range(1, args.steps + 1), desc="train"):
        head.train()
        lr = args.lr * min(1.0, step / args.warmup_steps) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for g in optimizer.param_groups:
            g["lr"] = lr
        q_caps = rng.choice(len(fit_caps), args.batch_size, replace=False)
        q_imgs = rng.choice(len(fit_images), args.batch_size, replace=False)
        hard = hard_fraction_at(step, args.steps, args.hard_fraction, args.hard_fraction_end)
        g_t2i = sample_groups(rng, q_caps, fit_positives_t2i, fit_t2i, args.group, args.negatives_from,
                              len(fit_images), hard)
        g_i2t = sample_groups(rng, q_imgs, fit_positives_i2t, fit_i2t, args.group, args.negatives_from,
                              len(fit_caps), hard)
        loss = (group_loss(head, feats, fit_cap_global[q_caps], fit_img_global[g_t2i], "t2i")
                + group_loss(head, feats, fit_img_global[q_imgs], fit_cap_global[g_i2t], "i2t")) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % args.eval_every == 0 or step == args.steps:
            parts = val_view()
            scale, metrics = best_itc_scale(parts, val_t2i, val_i2t, len(val_caps), len(val_images), val_owner)
            record = {"step": step, "loss": float(loss.detach()), "itc_scale": scale,
                      **{k: round(v, 4) for k, v in metrics.items()}}
            history.append(record)
            print(json.dumps(record), flush=True)
            r1 = metrics["image_retrieval_recall@1"] + metrics["text_retrieval_recall@1"]
            if r1 > best:
                best = r1
                best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
                best_state["itc_scale"] = torch.tensor(scale)
                best_record = record

    training = {"data": "Flickr8K train (Karpathy split) minus the lite trainer's 500 validation images",
                "negatives": f"ITQ {args.bits}-bit Hamming top-{args.candidates}, float-sorted, first {args.negatives_from}",
                **{k: getattr(args, k) for k in ("attention", "group", "hard_fraction", "hard_fraction_end", "batch_size",
                                                 "steps", "lr", "weight_decay", "warmup_steps", "seed", "val_images")},
                "val_float_rescoring": base, "best": best_record, "history": history}
    save_model(args.output, best_state, {**head_config, "init_itc_scale": float(best_state["itc_scale"])}, training,
               args.lite_features)
    print(f"saved {args.output}: {json.dumps(best_record)}")


if __name__ == "__main__":
    main()
