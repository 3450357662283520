"""Training the offline cross-encoder's heads (``rerank/cross_encoder.py``; CLI: ``scripts/train_cross_encoder.py``).

Why a module: the group sampling, the validation scores and the recall they give are what the
tests check, and a script is no library. Why in eval/: it validates with eval.recall's R@K and
draws its hard negatives with hashing/'s ITQ and binary index; the library (rerank/) never trains.

Hard negatives come from stage 1 as the product runs it: an ITQ hasher fitted on the train pairs,
a faiss binary flat index, the Hamming top-k of every train query, re-sorted by float cosine (the
order a float-rescoring stage would show); a query's hard negatives are drawn from the first
``negatives_from`` of those. Part of each group's negatives are random instead (``hard_fraction``):
a head trained from scratch on hard negatives alone did not learn (VSE++ saw the same). Each step
scores a group of one positive and ``group - 1`` negatives per query, both directions (caption ->
images, image -> captions), with a listwise softmax loss.

The heads read the lite towers' *frozen* token features by default, because the lite encoder was
trained on these very captions and its tuned features are over-confident on train. The ITC weight
of the final score is chosen afterwards on the validation images (the lite trainer's own held-out
draw of train images, never trained on by either model), and the best validation checkpoint is kept.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from common.atomic import atomic_write_dir
from common.checks import check_int
from common.lite_model import WEIGHTS_DIR as LITE_DIR
from eval.contrastive import captions_by_image
from eval.lite_training import embed_cached, image_trunk_features, text_trunk_features
from eval.recall import retrieval_recall
from hashing import create_hasher
from hashing.index import create_index
from rerank.cross_encoder import (
    CONFIG_NAME, FORMAT_VERSION, WEIGHTS_NAME,
    CrossEncoderHead, HeadConfig, HeadEnsemble, LiteTokenFeatures, States, load_head,
)

#: ``scripts/train_lite.py``'s ``--seed``: its validation draw is ``rng(seed).permutation[:500]``,
#: and the heads are chosen on the same images, which neither model trained on.
LITE_VAL_SEED = 0

#: ITC scales tried: 0 and powers of 2 up to 256 while training; an ensemble (whose summed logits
#: want about twice a single head's scale, between two powers of 2) gets steps of sqrt(2).
ITC_SCALES = [0.0] + [2.0 ** e for e in range(9)]
ENSEMBLE_ITC_SCALES = [0.0] + [2.0 ** (e / 2) for e in range(17)]

Features = dict[str, torch.Tensor]


@dataclass(frozen=True)
class TrainOptions:
    """The defaults are the first two shipped heads' recipe; the model card has the commands of the others.

    Checked when made, so a bad setting fails before minutes of feature loading, not at step 1.
    """

    val_images: int = 500
    bits: int = 64
    candidates: int = 128
    negatives_from: int = 48
    group: int = 16  # candidates per query in a training group (1 positive)
    hard_fraction: float = 0.5  # share of a group's negatives drawn from stage 1
    hard_fraction_end: float | None = None  # ramp the hard share linearly to this by the last step
    batch_size: int = 32  # queries per direction per step
    steps: int = 1500
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    eval_every: int = 250
    features: str = HeadConfig.features  # "tuned": the lite towers' tuned tops; "frozen": the activations entering them
    attention: str = HeadConfig.attention
    itc_in_loss: float = 0.0  # ITC scale inside the loss (0: the head learns to match on its own)
    dim: int = HeadConfig.dim
    heads: int = HeadConfig.heads
    dropout: float = HeadConfig.dropout
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        positive = ("val_images", "bits", "candidates", "negatives_from", "batch_size", "steps", "warmup_steps",
                    "eval_every")
        for name in positive:
            check_int(name, getattr(self, name))
        check_int("group", self.group, low=2, note="(a positive and a negative at least)")
        for name in ("hard_fraction", "hard_fraction_end"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a share in [0, 1], got {value!r}")
        # the head's own settings are checked where they are declared
        HeadConfig(features=self.features, attention=self.attention, dim=self.dim, heads=self.heads,
                   dropout=self.dropout, init_itc_scale=self.itc_in_loss)


# -- features -----------------------------------------------------------------------------------
def cache_file(cache: Path, split: str, n: int, lite_dir: Path = LITE_DIR) -> Path:
    """Where :func:`split_features` keeps a split's tuned features: keyed by the lite weights, so a retrained
    lite model never reads another's tokens."""
    weights = (Path(lite_dir) / "model.safetensors").read_bytes()
    key = hashlib.sha1(weights + f"{split}:{n}".encode()).hexdigest()[:12]
    return cache / f"cross_features_{split}_{key}.pt"


@torch.inference_mode()
def split_features(model: Any, split: Any, cache: Path, lite_dir: Path = LITE_DIR) -> Features:
    """Tuned token features and ITC embeddings of one split, computed once (the lite weights key the cache).

    The whole towers run once over the split; captions go in batches of similar length, so little is padding.
    """
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


def frozen_tokens(lite: Any, train: Any, cache: Path) -> Features:
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


def train_features(lite: Any, train: Any, features: str, cache: Path, lite_dir: Path = LITE_DIR) -> Features:
    """The token features ``features`` names, for every train image and caption.

    Frozen ones come from the lite trainer's trunk caches (the top runs once on them); tuned ones need
    the whole towers run once over the split.
    """
    if features == "frozen":
        return frozen_tokens(lite, train, cache)
    return split_features(lite, train, cache, lite_dir)


# -- the split and stage-1 candidates -----------------------------------------------------------
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


@dataclass
class Subset:
    """Train images of one side of the split, their captions, and each direction's stage-1 candidates.

    ``images``/``captions`` are rows of the train split (and of the features); ``owner`` and the
    candidates are positions within the subset, because stage 1 searches the subset alone.
    """

    images: np.ndarray
    captions: np.ndarray
    owner: np.ndarray  # each caption's position within ``images``
    t2i: np.ndarray  # (captions, k) positions within ``images``
    i2t: np.ndarray  # (images, k) positions within ``captions``

    @property
    def positives_t2i(self) -> list[np.ndarray]:
        return [np.array([o]) for o in self.owner]

    @property
    def positives_i2t(self) -> list[np.ndarray]:
        return [np.flatnonzero(self.owner == i) for i in range(len(self.images))]


def validation_images(n_images: int, val_images: int) -> tuple[np.ndarray, np.ndarray]:
    """(validation, fit) train image rows: the lite trainer's held-out draw, so no head is chosen on
    images the lite encoder trained on."""
    order = np.random.default_rng(LITE_VAL_SEED).permutation(n_images)
    return np.sort(order[:val_images]), np.sort(order[val_images:])


def subset(feats: Features, caption_image: np.ndarray, images: np.ndarray, options: TrainOptions,
           float_sorted: bool) -> Subset:
    """The captions of ``images`` and their stage-1 candidates (``float_sorted``: in float-cosine order,
    which the hard negatives are drawn from the top of; recall does not depend on the order)."""
    caption_image = np.asarray(caption_image)
    n_images = len(feats["image_embedding"])
    caps_of = captions_by_image(caption_image, n_images)
    caps = np.concatenate([caps_of[i] for i in images])
    position = -np.ones(n_images, dtype=np.int64)
    position[images] = np.arange(len(images))
    owner = position[caption_image[caps]]
    image_emb, text_emb = feats["image_embedding"].numpy()[images], feats["text_embedding"].numpy()[caps]
    t2i, i2t = stage1_candidates(image_emb, text_emb, owner, options.bits, options.candidates, options.seed)
    if float_sorted:
        t2i, i2t = by_float(t2i, text_emb, image_emb), by_float(i2t, image_emb, text_emb)
    return Subset(images, caps, owner, t2i, i2t)


# -- training ----------------------------------------------------------------------------------
def prepare(head: CrossEncoderHead | HeadEnsemble, feats: Features, image_rows: np.ndarray, text_rows: np.ndarray
            ) -> tuple[States, States]:
    """The head's image and text states of the given feature rows; captions cut to the longest of them,
    so a batch of short captions does not pay for the split's longest."""
    tr, ir = torch.as_tensor(text_rows), torch.as_tensor(image_rows)
    length = max(int(feats["text_mask"][tr].sum(1).max()), 1)
    images = head.prepare_images(feats["image_tokens"][ir], feats["image_embedding"][ir])
    texts = head.prepare_texts(feats["text_tokens"][tr, :length], feats["text_mask"][tr, :length],
                               feats["text_embedding"][tr])
    return images, texts


def group_loss(head: CrossEncoderHead, feats: Features, query_rows: np.ndarray, groups: np.ndarray,
               direction: str) -> torch.Tensor:
    """Listwise softmax over each group; column 0 of ``groups`` is the positive.

    Each distinct candidate is prepared once per step, however many groups it is in.
    """
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


def sample_groups(rng: np.random.Generator, queries: np.ndarray, positives: Sequence[np.ndarray], ranked: np.ndarray,
                  group: int, negatives_from: int, n_items: int, hard_fraction: float) -> np.ndarray:
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
    """The hard-negative share at ``step`` (1-based): ``start``, ramped linearly to ``end`` if given
    (VSE++'s warm start: random negatives get the head off the ground, hard ones teach the top of the list)."""
    if end is None:
        return start
    return start + (end - start) * min(step, steps) / steps


def head_config(lite: Any, feats: Features, options: TrainOptions) -> dict[str, Any]:
    """The config of a new head over ``lite``'s towers: its image width and token count are this lite
    model's, the rest the options'."""
    o = options
    image_dim = LiteTokenFeatures(lite, torch.device("cpu"), o.features).image_dim  # of this lite model's tower
    return asdict(HeadConfig(features=o.features, attention=o.attention, image_dim=image_dim,
                             image_tokens=feats["image_tokens"].shape[1], dim=o.dim, heads=o.heads,
                             dropout=o.dropout, init_itc_scale=o.itc_in_loss))


@dataclass
class TrainResult:
    state: dict[str, torch.Tensor]  # the best validation checkpoint, its chosen ``itc_scale`` included
    best: dict[str, Any]  # that evaluation's record
    float_rescoring: dict[str, float]  # validation recall of the candidates in float order, the baseline
    history: list[dict[str, Any]]


def train(head: CrossEncoderHead, feats: Features, fit: Subset, val: Subset, options: TrainOptions) -> TrainResult:
    """Trains ``head`` on the fit subset's groups; keeps the checkpoint with the best validation R@1 sum.

    The ITC scale is not learned: it stays ``itc_in_loss`` inside the loss, and each evaluation picks the
    fusion scale of :data:`ITC_SCALES` on validation. Group draws follow ``options.seed``; the head's
    init and dropout follow torch's generator as the caller left it (the script seeds it once, before
    loading the lite model, so one seed gives one run).
    """
    o = options
    rng = np.random.default_rng(o.seed)
    head.itc_scale.requires_grad_(False)
    params = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    fit_positives_t2i, fit_positives_i2t = fit.positives_t2i, fit.positives_i2t

    def val_view() -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return rerank_scores(head, feats, val.images, val.captions, val.t2i, val.i2t)

    base = recall_from(val_view(), val.t2i, val.i2t, len(val.captions), len(val.images), val.owner, None)
    print("val float rescoring:", json.dumps({k: round(v, 4) for k, v in base.items()}), flush=True)

    best, best_state, best_record, history = -1.0, None, None, []
    for step in tqdm(range(1, o.steps + 1), desc="train", disable=not o.progress):
        head.train()
        lr = o.lr * min(1.0, step / o.warmup_steps) * 0.5 * (1 + math.cos(math.pi * step / o.steps))
        for g in optimizer.param_groups:
            g["lr"] = lr
        q_caps = rng.choice(len(fit.captions), o.batch_size, replace=False)
        q_imgs = rng.choice(len(fit.images), o.batch_size, replace=False)
        hard = hard_fraction_at(step, o.steps, o.hard_fraction, o.hard_fraction_end)
        g_t2i = sample_groups(rng, q_caps, fit_positives_t2i, fit.t2i, o.group, o.negatives_from,
                              len(fit.images), hard)
        g_i2t = sample_groups(rng, q_imgs, fit_positives_i2t, fit.i2t, o.group, o.negatives_from,
                              len(fit.captions), hard)
        loss = (group_loss(head, feats, fit.captions[q_caps], fit.images[g_t2i], "t2i")
                + group_loss(head, feats, fit.images[q_imgs], fit.captions[g_i2t], "i2t")) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % o.eval_every == 0 or step == o.steps:
            scale, metrics = best_itc_scale(val_view(), val.t2i, val.i2t, len(val.captions), len(val.images),
                                            val.owner)
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
    return TrainResult(best_state, best_record, base, history)


def training_record(options: TrainOptions, result: TrainResult) -> dict[str, Any]:
    """What a trained head's config.json says about its training: the data, the negatives, the settings,
    the validation baseline, the chosen checkpoint and every evaluation."""
    o = options
    return {"data": "Flickr8K train (Karpathy split) minus the lite trainer's 500 validation images",
            "negatives": f"ITQ {o.bits}-bit Hamming top-{o.candidates}, float-sorted, first {o.negatives_from}",
            **{k: getattr(o, k) for k in ("attention", "group", "hard_fraction", "hard_fraction_end", "batch_size",
                                          "steps", "lr", "weight_decay", "warmup_steps", "seed", "val_images")},
            "val_float_rescoring": result.float_rescoring, "best": result.best, "history": result.history}


# -- evaluation --------------------------------------------------------------------------------
@torch.no_grad()
def rerank_scores(head: CrossEncoderHead | HeadEnsemble, feats: Features, image_rows: np.ndarray,
                  text_rows: np.ndarray, t2i_cand: np.ndarray, i2t_cand: np.ndarray
                  ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
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


def recall_from(parts: dict[str, tuple[np.ndarray, np.ndarray]], t2i_cand: np.ndarray, i2t_cand: np.ndarray,
                nt: int, ni: int, caption_image: np.ndarray, itc_scale: float | None) -> dict[str, float]:
    """R@K of the reranked candidates (``itc_scale=None``: float rescoring only).

    Items outside a query's candidates score -inf, so recall is what a two-stage search would give.
    """
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


def best_itc_scale(parts: dict[str, tuple[np.ndarray, np.ndarray]], val_t2i: np.ndarray, val_i2t: np.ndarray,
                   n_caps: int, n_images: int, val_owner: np.ndarray,
                   scales: Sequence[float] = ITC_SCALES) -> tuple[float, dict[str, float]]:
    """The ITC scale (of ``scales``) with the best validation R@1 sum, and its recalls."""
    rows = {s: recall_from(parts, val_t2i, val_i2t, n_caps, n_images, val_owner, s) for s in scales}
    r1 = {s: m["image_retrieval_recall@1"] + m["text_retrieval_recall@1"] for s, m in rows.items()}
    scale = max(r1, key=r1.get)
    return scale, rows[scale]


# -- ensembles and saving ----------------------------------------------------------------------
@dataclass
class EnsembleResult:
    ensemble: HeadEnsemble  # its ``itc_scale`` set to the chosen one
    config: dict[str, Any]  # the head config to save
    training: dict[str, Any]  # the config's training record: the members' records kept whole
    float_rescoring: dict[str, float]
    best: dict[str, float]  # validation recall at the chosen scale
    itc_scale: float


def ensemble_heads(directories: Sequence[Path], feats: Features, val: Subset) -> EnsembleResult:
    """The heads saved in ``directories`` scored together (match logits summed, one ITC term, as SCAN
    ensembles its t-i and i-t models), the ITC scale of :data:`ENSEMBLE_ITC_SCALES` chosen on validation.

    A saved ensemble counts as its members, so ensembles can grow one head at a time.
    """
    members, trainings = [], []
    for directory in directories:
        head, config = load_head(directory)
        members += list(head.members) if isinstance(head, HeadEnsemble) else [head]
        trainings += config["training"].get("members", [config["training"]])
    ensemble = HeadEnsemble(members, itc_scale=0.0)
    parts = rerank_scores(ensemble, feats, val.images, val.captions, val.t2i, val.i2t)
    base = recall_from(parts, val.t2i, val.i2t, len(val.captions), len(val.images), val.owner, None)
    scale, best = best_itc_scale(parts, val.t2i, val.i2t, len(val.captions), len(val.images), val.owner,
                                 ENSEMBLE_ITC_SCALES)
    ensemble.itc_scale.fill_(scale)
    training = {"ensemble_of": [str(d) for d in directories], "val_float_rescoring": base,
                "best": {"itc_scale": scale, **best}, "members": trainings}
    return EnsembleResult(ensemble, {"members": ensemble.config["members"], "itc_scale": scale}, training, base,
                          best, scale)


def save_model(output: Path, state: dict[str, torch.Tensor], head_config: dict[str, Any], training: dict[str, Any],
               lite_features: dict[str, Any]) -> None:
    """Weights, config and (kept) model card, written atomically: a failed save leaves the old head.

    ``lite_features`` records which tower and split the head's tokens came from, so that loading it
    over another lite model is an error (:mod:`rerank.cross_encoder`), not noise.
    """
    from safetensors.torch import save_file

    output = Path(output)
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
