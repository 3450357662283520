"""The lite encoder's ImageNet concepts: each class name as a point of the joint image-text space.

Why: the lite heads learned their words from 30,000 Flickr8K captions, so a query such as "a cup of
coffee" lands almost at random among photos outside that world, while the image tower already
knows 1,000 ImageNet classes (coffee mug, espresso, tabby cat, space shuttle, daisy, ...). ConSE
(Norouzi et al., 2014, "Zero-shot learning by convex combination of semantic embeddings") bridges
the two: an image's concept embedding is the probability-weighted text embedding of its top
classes, so a query and an image meet through the class names (:meth:`LiteModel.image_features`).

This module builds the (1000, embed_dim) matrix of class text embeddings once, through the lite
text tower and head (the joint space the queries are embedded in), and saves it next to the
heads (``concepts.safetensors``, 0.5 MB in fp16). It must be rebuilt whenever the text side is
retrained (``python scripts/build_lite_concepts.py``). Class names and their WordNet synonyms come
from timm (``timm.data.ImageNetInfo``), in the order of the tower's classifier (sorted synsets).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

CONCEPTS_FILE = "concepts.safetensors"
N_CLASSES = 1000
#: Averaged per synonym; a few phrasings so that no single template's wording dominates. Four
#: templates and one ("a photo of a {}.") gave the same held-out numbers (issue 23, model card).
PROMPTS = ("a photo of a {}.", "a {}.", "a picture of the {}.", "a close-up photo of a {}.")


def imagenet_synonyms() -> list[list[str]]:
    """Per ImageNet-1k class (classifier order), its comma-separated WordNet lemmas: ``['tabby', 'tabby cat']``."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    if info.num_classes() != N_CLASSES:
        raise RuntimeError(f"timm's ImageNetInfo has {info.num_classes()} classes, expected {N_CLASSES}")
    return [[s.strip() for s in info.index_to_description(i).split(",") if s.strip()] for i in range(N_CLASSES)]


def class_prompts(prompts: tuple[str, ...] = PROMPTS) -> tuple[list[str], torch.Tensor]:
    """Every synonym of every class in every prompt, and the class index of each text."""
    if not prompts or any("{}" not in p for p in prompts):
        raise ValueError(f"prompts must be a non-empty tuple of templates with '{{}}', got {prompts!r}")
    texts, owner = [], []
    for c, names in enumerate(imagenet_synonyms()):
        for name in names:
            for p in prompts:
                texts.append(p.format(name))
                owner.append(c)
    return texts, torch.tensor(owner)


def center_concepts(embeddings: torch.Tensor) -> torch.Tensor:
    """The class embeddings less their mean, unit length again (``concept_center``).

    Why: the 1,000 class prompts share a common direction through the lite text side (mean cosine
    .29 between two classes), so adding ``p_c * t_c`` moves every confidently classified photo
    the same way and lifts them all for every query. Less the mean, what is added is what tells the
    classes apart: on the padded held-out galleries it gave 2.7-4.4 rsum more at the same weight
    (0.5-1.0, top-1; issue 23, the sweep in the model card).
    """
    if embeddings.ndim != 2 or embeddings.shape[0] < 2:
        raise ValueError(f"class embeddings must be (n_classes >= 2, dim), got {tuple(embeddings.shape)}")
    return F.normalize(embeddings - embeddings.mean(dim=0, keepdim=True), dim=-1)


def reweight_by_prior(embeddings: torch.Tensor, prior: torch.Tensor, strength: float) -> torch.Tensor:
    """Each class embedding scaled by 1 / (1 + strength * 1000 * prior_c) (``concept_prior``).

    Why: the Flickr8K head already places the classes Flickr8K photos are full of (dog breeds, a
    jersey, a swimming trunk): adding their class names moves every dog photo towards the same
    point and blurs what the head tells apart, while classes Flickr8K rarely shows (an espresso, a
    ladybug, a moped) are exactly where the head has no words. ``prior`` is the mean class
    probability over Flickr8K train photos (:func:`class_prior`); 1000 * prior_c is 1 for a class
    at the average rate. On the padded held-out galleries it gave several rsum more at the same
    dev-set score (issue 23; the sweep in the model card). Folded into the matrix, so the graph
    and the cost are unchanged.
    """
    if prior.shape != (embeddings.shape[0],) or not bool(torch.isfinite(prior).all()) or bool((prior < 0).any()):
        raise ValueError(f"class prior must be ({embeddings.shape[0]},) finite and >= 0, got shape {tuple(prior.shape)}")
    return embeddings / (1.0 + strength * embeddings.shape[0] * prior.to(embeddings.dtype))[:, None]


def flickr8k_gate(head: torch.Tensor, bank: torch.Tensor, center: float, temperature: float) -> torch.Tensor:
    """(n, 1) per-image weight of the concept term: sigmoid((center - max_j cos(head, bank_j)) / temperature).

    Why: the concepts are for photos the Flickr8K head has no words for. How well the head already
    places a photo is its best cosine to a bank of Flickr8K captions (``gate_bank``: one caption of
    each train image outside the held-out draw and its padding, so no evaluated image has its own
    caption in it). Held-out Flickr8K photos score about .47-.63, the dev set's photos .33-.53
    (issue 23, model card). The ImageNet classifier's own confidence (max probability, entropy) does
    not tell the two apart (the same spread on both), so it is not the gate. ``head`` must be unit rows.
    """
    best = (head @ bank.to(head.dtype).T).max(dim=-1, keepdim=True).values
    return torch.sigmoid((center - best) / temperature)


@torch.inference_mode()
def class_prior(model: Any, images: list[Any], transform: Any, batch_size: int = 50,
                progress: bool = True) -> torch.Tensor:
    """(1000,) the tower's mean ImageNet class probabilities over ``images`` (paths or PIL images).
    ``transform``: the tower's pixel transform (``lite_model.image_transform(model.config)``), passed
    in because :mod:`.lite_model` imports this module."""
    from tqdm.auto import tqdm

    from .images import load_image

    if not images:
        raise ValueError("class_prior needs at least one image")
    total = torch.zeros(N_CLASSES)
    for s in tqdm(range(0, len(images), batch_size), desc="class prior", disable=not progress):
        pixels = torch.stack([transform(load_image(p, s + i)) for i, p in enumerate(images[s:s + batch_size])])
        pooled = model.image_tower.forward_features(pixels).mean(dim=(2, 3))
        total += model.image_tower.imagenet_classifier(pooled.float()).softmax(dim=-1).sum(0)
    return total / len(images)


@torch.inference_mode()
def build_concept_embeddings(model: Any, prompts: tuple[str, ...] = PROMPTS, batch_size: int = 256,
                             progress: bool = True) -> torch.Tensor:
    """(1000, embed_dim) unit vectors: per class, the mean of its unit text embeddings (every synonym x prompt)."""
    from tqdm.auto import tqdm

    texts, owner = class_prompts(prompts)
    device = next(model.text_head.parameters()).device
    out = []
    for s in tqdm(range(0, len(texts), batch_size), desc="class prompts", disable=not progress):
        tok = model.tokenizer(texts[s:s + batch_size], padding=True, truncation=True,
                              max_length=model.config["text_max_length"], return_tensors="pt").to(device)
        out.append(F.normalize(model.text_features(tok["input_ids"], tok["attention_mask"]).float(), dim=-1).cpu())
    emb = torch.cat(out)
    sums = torch.zeros(N_CLASSES, emb.shape[1]).index_add_(0, owner, emb)
    return F.normalize(sums, dim=-1)


def save_concepts(directory: str | Path, embeddings: torch.Tensor, prompts: tuple[str, ...] = PROMPTS,
                  prior: torch.Tensor | None = None, prior_source: str = "",
                  gate_bank: torch.Tensor | None = None, gate_bank_source: str = "") -> Path:
    """Atomic write of ``concepts.safetensors`` (fp16) with the prompts in its metadata, the
    Flickr8K class prior (fp32, :func:`class_prior`) and the gate's caption bank (fp16,
    :func:`flickr8k_gate`) when given."""
    from safetensors.torch import save

    from .atomic import atomic_write_file

    if embeddings.ndim != 2 or embeddings.shape[0] != N_CLASSES:
        raise ValueError(f"concept embeddings must be ({N_CLASSES}, dim), got {tuple(embeddings.shape)}")
    target = Path(directory) / CONCEPTS_FILE
    meta = {"format_version": "1", "classes": "imagenet-1k (timm ImageNetInfo order)", "prompts": json.dumps(list(prompts))}

    tensors = {"text_embeddings": embeddings.detach().to(torch.float16).contiguous()}
    if prior is not None:
        if prior.shape != (N_CLASSES,):
            raise ValueError(f"class prior must be ({N_CLASSES},), got {tuple(prior.shape)}")
        tensors["class_prior"] = prior.detach().float().contiguous()
        meta["class_prior"] = prior_source
    if gate_bank is not None:
        if gate_bank.ndim != 2 or gate_bank.shape[0] == 0 or gate_bank.shape[1] != embeddings.shape[1]:
            raise ValueError(f"gate bank must be (n >= 1, {embeddings.shape[1]}), got {tuple(gate_bank.shape)}")
        tensors["gate_bank"] = gate_bank.detach().to(torch.float16).contiguous()
        meta["gate_bank"] = gate_bank_source

    def write(f: Any) -> None:
        f.write(save(tensors, metadata=meta))

    return atomic_write_file(target, write)


def load_concepts(directory: str | Path, embed_dim: int) -> torch.Tensor:
    """The saved (1000, embed_dim) class embeddings as fp32; a clear error when missing or of another shape."""
    from safetensors import safe_open

    path = Path(directory) / CONCEPTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the config sets concept_weight > 0, which needs the ImageNet "
                                f"class embeddings; build them with `python scripts/build_lite_concepts.py "
                                f"--model {directory}` or set concept_weight to 0")
    with safe_open(str(path), framework="pt") as f:
        if "text_embeddings" not in f.keys():
            raise ValueError(f"{path} has no tensor 'text_embeddings' (found {list(f.keys())})")
        emb = f.get_tensor("text_embeddings").float()
    if tuple(emb.shape) != (N_CLASSES, embed_dim):
        raise ValueError(f"{path}: text_embeddings must be ({N_CLASSES}, {embed_dim}) for this model, got {tuple(emb.shape)}")
    return emb


def _saved_tensor(directory: str | Path, name: str, needed_by: str) -> tuple[Path, torch.Tensor]:
    """Tensor ``name`` of the concepts file as fp32; a clear error naming the setting that needs it."""
    from safetensors import safe_open

    path = Path(directory) / CONCEPTS_FILE
    with safe_open(str(path), framework="pt") as f:
        if name not in f.keys():
            raise ValueError(f"{path} has no tensor {name!r}, which {needed_by} needs: rebuild it "
                             f"with `python scripts/build_lite_concepts.py --model {Path(directory)}`")
        return path, f.get_tensor(name).float()


def load_gate_bank(directory: str | Path, embed_dim: int) -> torch.Tensor:
    """The saved (n, embed_dim) Flickr8K caption bank of the gate (``concept_gate`` > 0 needs it), fp32 unit rows."""
    path, bank = _saved_tensor(directory, "gate_bank", "concept_gate > 0")
    if bank.ndim != 2 or bank.shape[0] == 0 or bank.shape[1] != embed_dim:
        raise ValueError(f"{path}: gate_bank must be (n >= 1, {embed_dim}), got {tuple(bank.shape)}")
    return F.normalize(bank, dim=-1)


def load_class_prior(directory: str | Path) -> torch.Tensor:
    """The saved (1000,) Flickr8K class prior (``concept_prior`` > 0 needs it)."""
    path, prior = _saved_tensor(directory, "class_prior", "concept_prior > 0")
    if tuple(prior.shape) != (N_CLASSES,):
        raise ValueError(f"{path}: class_prior must be ({N_CLASSES},), got {tuple(prior.shape)}")
    return prior
