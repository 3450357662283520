"""The offline cross-encoder: a small image-text matching head over the lite towers' token features.

BLIP-2's ITM cannot be run here (no weights offline), so this is its embedded stand-in, built the
way LAVIS scores retrieval: an ITM-style matching logit on the stage-1 candidates, added to the
dual encoder's ITC similarity (``final = match + itc_scale * cos``). The head therefore learns a
*correction* to the dual-encoder ranking, which is what a reranker is for.

Architecture (one cross-attention layer, SCAN-style attention, Lee et al. 2018): with
``attention="t2i"`` every caption token attends over the 7x7 EfficientNet-Lite0 feature map; the
token's match feature is its elementwise product with what it attended to; a learned token
weighting pools the tokens, and an MLP maps the pooled match feature to a logit, to which SCAN's
relevance (the weighted cosine of each token with its attended image vector) is added. With
``attention="i2t"`` the roles swap: every image region attends over the caption's tokens and the
regions are pooled. SCAN's best results came from scoring a t-i and an i-t model together; a
:class:`HeadEnsemble` does that (match logits summed, one ITC term). Everything that depends on
only one side (projections, queries, keys, values, pooling weights) is computed once per item, so
a (query, candidate) pair costs only the attention itself and a small MLP: re-scoring 128
candidates is cheap enough for a CPU.

Features (:data:`FEATURE_SETS`): the shipped heads read the *frozen* activations inside the lite
towers (EfficientNet-Lite0's stage-6 output, 192 x 7 x 7, and MiniLM's layer-4 hidden states),
taken from the same forward passes that give the dual-encoder embeddings, so the reranker needs
nothing but the raw candidates.

Trained by ``scripts/train_cross_encoder.py`` on Flickr8K train with hard negatives from stage 1;
weights ship in ``rerank/weights/cross-encoder/`` (safetensors + config.json + model card).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Hashable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.checks import check_int

from .base import Candidates, Query, Reranker, other_modality, register_reranker
from .lru import FeatureCache

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights" / "cross-encoder"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

#: Which token features the head reads. ``tuned``: the outputs of the lite towers' tuned tops
#: (EfficientNet's last stage, MiniLM's last layer). ``frozen``: the activations entering them
#: (EfficientNet stage 6, 192 channels; MiniLM layer 4), which the lite training never changed, so
#: they look the same on the lite encoder's training images as on new ones.
FEATURE_SETS = {"tuned": {"image_dim": 320, "text_dim": 384}, "frozen": {"image_dim": 192, "text_dim": 384}}

#: Which side's tokens attend over the other's. ``t2i``: every caption token attends over the
#: image's 7x7 regions and the tokens are pooled (SCAN t-i); ``i2t``: every region attends over
#: the caption's tokens and the regions are pooled (SCAN i-t). SCAN found the two complementary.
ATTENTION_DIRECTIONS = ("t2i", "i2t")


@dataclass(frozen=True)
class HeadConfig:
    """One head's settings, declared and checked once and saved with ``asdict`` in its config.json.

    Saved heads name every field. The defaults are what ``eval/cross_encoder_training.py`` builds
    unless told otherwise, and the architecture of every shipped member: frozen features, whose
    widths (``image_dim`` / ``text_dim``, None) follow from :data:`FEATURE_SETS` for the shipped
    lite model; another lite image tower has other widths, so the trainer always records them.
    ``init_itc_scale`` only starts the head's ITC weight (the trainer's ``itc_in_loss``).
    """

    features: str = "frozen"
    attention: str = "t2i"
    image_dim: int | None = None
    text_dim: int | None = None
    image_tokens: int = 49
    dim: int = 192
    heads: int = 4
    mlp_ratio: int = 2
    dropout: float = 0.1
    init_itc_scale: float = 0.0

    def __post_init__(self) -> None:
        if self.features not in FEATURE_SETS:
            raise ValueError(f"features must be one of {sorted(FEATURE_SETS)}, got {self.features!r}")
        if self.attention not in ATTENTION_DIRECTIONS:
            raise ValueError(f"attention must be one of {ATTENTION_DIRECTIONS}, got {self.attention!r}")
        for name in ("image_dim", "text_dim"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, FEATURE_SETS[self.features][name])
        for name in ("image_dim", "text_dim", "image_tokens", "dim", "heads", "mlp_ratio"):
            object.__setattr__(self, name, check_int(name, getattr(self, name)))
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be divisible by heads {self.heads}")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "dropout", float(self.dropout))
        object.__setattr__(self, "init_itc_scale", float(self.init_itc_scale))




@dataclass
class States:
    """Per-item tensors a head reuses for every pair an item is in (images or captions).

    The attending side has ``tokens`` (n, T, d), ``queries`` (n, heads, T, dh) and pooling
    ``weights`` (n, T); the attended side has ``keys`` / ``values`` (n, heads, T, dh) and, for
    captions, a 0/1 mask in ``weights``. Unused fields are None. ``embedding``: unit ITC vectors.
    """

    embedding: torch.Tensor
    tokens: torch.Tensor | None = None
    queries: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None
    weights: torch.Tensor | None = None

    TOKEN_AXES = {"tokens": 1, "queries": 2, "keys": 2, "values": 2, "weights": 1}

    def _map(self, fn: Any) -> "States":
        """fn(field name, tensor) applied to every tensor present."""
        return States(fn("embedding", self.embedding),
                      **{f: None if getattr(self, f) is None else fn(f, getattr(self, f)) for f in self.TOKEN_AXES})

    def __getitem__(self, index: Any) -> "States":
        return self._map(lambda name, t: t[index])

    @property
    def token_mask(self) -> torch.Tensor:
        """(n, T) bool: a caption's real tokens (its padding is False)."""
        return self.weights > 0

    @property
    def length(self) -> int:
        """Tokens per item (the padded length for captions)."""
        return next(getattr(self, f).shape[a] for f, a in self.TOKEN_AXES.items() if getattr(self, f) is not None)

    def trim(self, length: int) -> "States":
        """The first ``length`` tokens: drops a caption's padding, so cached states do not depend on batch mates."""
        def cut(name: str, t: torch.Tensor) -> torch.Tensor:
            return t if name == "embedding" else t.narrow(self.TOKEN_AXES[name], 0, length)
        return self._map(cut)

    def pad(self, length: int) -> "States":
        def widen(name: str, t: torch.Tensor) -> torch.Tensor:
            if name == "embedding":
                return t
            axis = self.TOKEN_AXES[name]
            return F.pad(t, [0, 0] * (t.dim() - axis - 1) + [0, length - t.shape[axis]])
        return self._map(widen)


@dataclass
class EnsembleStates:
    """One item's (or a batch's) States for each member of a :class:`HeadEnsemble`, in member order."""

    parts: tuple[States, ...]

    def __getitem__(self, index: Any) -> "EnsembleStates":
        return EnsembleStates(tuple(p[index] for p in self.parts))

    @property
    def embedding(self) -> torch.Tensor:
        return self.parts[0].embedding

    @property
    def token_mask(self) -> torch.Tensor:
        return self.parts[0].token_mask

    def trim(self, length: int) -> "EnsembleStates":
        return EnsembleStates(tuple(p.trim(length) for p in self.parts))


def cat_states(states: Sequence[States | EnsembleStates]) -> States | EnsembleStates:
    """Concatenates states along the item axis; captions are padded to the longest."""
    if isinstance(states[0], EnsembleStates):
        return EnsembleStates(tuple(cat_states([s.parts[m] for s in states]) for m in range(len(states[0].parts))))
    length = max(s.length for s in states)
    padded = [s if s.length == length else s.pad(length) for s in states]
    return padded[0]._map(lambda name, _: torch.cat([getattr(s, name) for s in padded]))


class CrossEncoderHead(nn.Module):
    """Scores (caption, image) pairs from token features; see the module docstring."""

    def __init__(self, **config: Any) -> None:
        super().__init__()
        unknown = set(config) - {f.name for f in fields(HeadConfig)}
        if unknown:
            raise ValueError(f"unknown cross-encoder settings: {sorted(unknown)}")
        #: the :class:`HeadConfig` as a dict, as saved (the ensemble and the reranker read it by key)
        self.config = asdict(HeadConfig(**config))
        c = self.config
        d, self.heads = c["dim"], c["heads"]
        self.text_attends = c["attention"] == "t2i"
        self.image_proj = nn.Sequential(nn.Linear(c["image_dim"], d), nn.LayerNorm(d))
        self.image_pos = nn.Parameter(torch.zeros(1, c["image_tokens"], d))
        self.text_proj = nn.Sequential(nn.Linear(c["text_dim"], d), nn.LayerNorm(d))
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.token_weight = nn.Linear(d, 1)
        self.dropout = nn.Dropout(c["dropout"])
        self.mlp = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, c["mlp_ratio"] * d), nn.GELU(),
                                 nn.Linear(c["mlp_ratio"] * d, 1))
        self.align_scale = nn.Parameter(torch.tensor(10.0))
        self.itc_scale = nn.Parameter(torch.tensor(float(c["init_itc_scale"])))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        n, length, d = x.shape
        return x.view(n, length, self.heads, d // self.heads).transpose(1, 2)

    def _attending(self, x: torch.Tensor, mask: torch.Tensor | None, embedding: torch.Tensor) -> States:
        logits = self.token_weight(x).squeeze(-1)
        if mask is not None:
            logits = logits.masked_fill(mask == 0, float("-inf"))
        return States(embedding, tokens=x, queries=self._split(self.q(x)), weights=logits.softmax(-1))

    def _attended(self, x: torch.Tensor, mask: torch.Tensor | None, embedding: torch.Tensor) -> States:
        return States(embedding, keys=self._split(self.k(x)), values=self._split(self.v(x)),
                      weights=None if mask is None else mask.float())

    def prepare_images(self, tokens: torch.Tensor, embedding: torch.Tensor) -> States:
        """tokens (n, P, image_dim), embedding (n, e) -> the image side's reusable states."""
        x = self.image_proj(tokens.float()) + self.image_pos
        side = self._attended if self.text_attends else self._attending
        return side(x, None, F.normalize(embedding.float(), dim=-1))

    def prepare_texts(self, tokens: torch.Tensor, mask: torch.Tensor, embedding: torch.Tensor) -> States:
        """tokens (m, L, text_dim), mask (m, L) -> the caption side's reusable states."""
        x = self.text_proj(tokens.float())
        side = self._attending if self.text_attends else self._attended
        return side(x, mask, F.normalize(embedding.float(), dim=-1))

    def match_logits(self, text: States, image: States) -> torch.Tensor:
        """Matching logits of aligned pairs (text[i], image[i]) -> (n,), without the ITC term."""
        attending, attended = (text, image) if self.text_attends else (image, text)
        mask = None if attended.weights is None else (attended.weights > 0)[:, None, None, :]
        out = F.scaled_dot_product_attention(attending.queries, attended.keys, attended.values, attn_mask=mask)
        n, h, length, dh = out.shape
        out = out.transpose(1, 2).reshape(n, length, h * dh)
        weights = attending.weights.unsqueeze(-1)
        match = (self.dropout(attending.tokens) * out * weights).sum(1)
        # SCAN's relevance (cosine of each token with what it attended to), an easy path to learn first
        alignment = (F.normalize(attending.tokens, dim=-1) * F.normalize(out, dim=-1) * weights).sum((1, 2))
        return self.mlp(match).squeeze(-1) + self.align_scale * alignment

    def pair_scores(self, text: States, image: States) -> torch.Tensor:
        """Scores of aligned pairs (text[i], image[i]) -> (n,): match logit + itc_scale * cosine."""
        return self.match_logits(text, image) + self.itc_scale * (text.embedding * image.embedding).sum(-1)


class HeadEnsemble(nn.Module):
    """Heads trained separately (e.g. one per attention direction, as SCAN ensembles t-i and i-t),
    scored together: the sum of their match logits plus one ITC term, ``itc_scale * cosine``.

    Members must read the same token features, since the reranker computes one set per item.
    """

    def __init__(self, members: Sequence[CrossEncoderHead], itc_scale: float) -> None:
        super().__init__()
        features = {(m.config["features"], m.config["image_dim"]) for m in members}
        if len(members) < 1 or len(features) != 1:
            raise ValueError(f"an ensemble needs at least one head, all on the same features; got {sorted(features)}")
        (features, image_dim), = features
        self.members = nn.ModuleList(members)
        self.itc_scale = nn.Parameter(torch.tensor(float(itc_scale)), requires_grad=False)
        self.config = {"features": features, "image_dim": image_dim, "members": [m.config for m in members],
                       "itc_scale": float(itc_scale)}

    def prepare_images(self, tokens: torch.Tensor, embedding: torch.Tensor) -> EnsembleStates:
        return EnsembleStates(tuple(m.prepare_images(tokens, embedding) for m in self.members))

    def prepare_texts(self, tokens: torch.Tensor, mask: torch.Tensor, embedding: torch.Tensor) -> EnsembleStates:
        return EnsembleStates(tuple(m.prepare_texts(tokens, mask, embedding) for m in self.members))

    def match_logits(self, text: EnsembleStates, image: EnsembleStates) -> torch.Tensor:
        return sum(m.match_logits(t, i) for m, t, i in zip(self.members, text.parts, image.parts))

    def pair_scores(self, text: EnsembleStates, image: EnsembleStates) -> torch.Tensor:
        return self.match_logits(text, image) + self.itc_scale * (text.embedding * image.embedding).sum(-1)


# -- token features from the lite towers ---------------------------------------------------------
def image_stage_outputs(lite_model: Any, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The lite image tower's activations leaving its frozen trunk and leaving its last block stage."""
    frozen = lite_model.image_trunk(pixels.contiguous(memory_format=torch.channels_last))
    return frozen, lite_model.image_stages(frozen, lite_model.image_split)


class LiteTokenFeatures:
    """Runs the lite towers once per item and keeps both the token features and the ITC embedding."""

    def __init__(self, lite_model: Any, device: torch.device, features: str = "tuned") -> None:
        from common.lite_model import image_transform

        self.frozen = features == "frozen"
        self.model = lite_model
        self.device = device
        lite_model.image_tower.to(memory_format=torch.channels_last)  # oneDNN's depthwise convs want NHWC on CPU
        self.transform = image_transform(lite_model.config)
        #: channels of the image tokens this yields (the head's ``image_dim`` must match)
        self.image_dim = lite_model.image_trunk_channels if self.frozen else lite_model.image_stage_channels

    @torch.inference_mode()
    def images(self, items: Sequence[Any], batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        from common.images import load_image

        tokens, embeddings = [], []
        for s in range(0, len(items), batch_size):
            pixels = torch.stack([self.transform(load_image(item, s + i)) for i, item in enumerate(items[s:s + batch_size])])
            frozen, stage = image_stage_outputs(self.model, pixels.to(self.device))
            embeddings.append(self.model.image_embedding_from_stages(stage))
            tokens.append((frozen if self.frozen else stage).flatten(2).transpose(1, 2))
        return torch.cat(tokens), torch.cat(embeddings)

    @torch.inference_mode()
    def texts(self, texts: Sequence[str], batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from common.texts import check_texts

        texts = check_texts(texts)
        tok = self.model.tokenizer(texts, padding="longest", truncation=True,
                                   max_length=self.model.config["text_max_length"], return_tensors="pt")
        ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
        hidden, embeddings = [], []
        for s in range(0, len(texts), batch_size):
            out = self.model.text_tower(input_ids=ids[s:s + batch_size], attention_mask=mask[s:s + batch_size],
                                        output_hidden_states=self.frozen)
            hidden.append(out.hidden_states[self.model.text_split] if self.frozen else out.last_hidden_state)
            embeddings.append(self.model.text_head(out.last_hidden_state, mask[s:s + batch_size]))
        return torch.cat(hidden), mask, torch.cat(embeddings)


def take(states: States | EnsembleStates, index: torch.Tensor) -> States | EnsembleStates:
    """``states[index]``, without the copy when the index is every item in order (one query's candidates)."""
    if len(index) == len(states.embedding) and torch.equal(index, torch.arange(len(index))):
        return states
    return states[index]


def cache_key(modality: str, item: Any) -> Hashable | None:
    """Texts by their string; images by their path (in-memory images are not cached)."""
    if modality == "text":
        return ("text", item)
    if isinstance(item, (str, Path)):
        return ("image", os.path.abspath(item))  # not Path.resolve: that stats every path component
    return None


#: What the heads shipped before the lite model recorded its split were trained on.
LEGACY_FEATURE_SOURCE = {"image_tower": "efficientnet_lite0", "image_split": 6, "text_split": 4}


def lite_feature_source(lite_model: Any) -> dict[str, Any]:
    """The lite image tower and the split whose frozen activations a head reads: a head only fits the model it was trained on."""
    return {"image_tower": lite_model.config["image_tower"], "image_split": lite_model.image_split,
            "text_split": lite_model.text_split}


def read_head_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_NAME
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: not a cross-encoder saved by scripts/train_cross_encoder.py") from None
    if config.get("format_version") != FORMAT_VERSION or config.get("model_type") != "lite-cross-encoder":
        raise ValueError(f"{path} is not a lite cross-encoder config of format_version {FORMAT_VERSION}")
    return config


def build_head(config: dict[str, Any]) -> CrossEncoderHead | HeadEnsemble:
    """A head, or an ensemble of heads (``{"members": [head configs], "itc_scale": s}``), from its config."""
    if "members" in config:
        return HeadEnsemble([CrossEncoderHead(**c) for c in config["members"]], config.get("itc_scale", 0.0))
    return CrossEncoderHead(**config)


def load_head(path_or_repo_id: str | Path = WEIGHTS_DIR) -> tuple[CrossEncoderHead | HeadEnsemble, dict[str, Any]]:
    """The trained head (or ensemble) from a local directory or a Hub repo id (through the shared resolver)."""
    from safetensors.torch import load_file

    from common.hub import resolve_pretrained_dir

    directory = resolve_pretrained_dir(path_or_repo_id, [CONFIG_NAME, WEIGHTS_NAME])
    config = read_head_config(directory)
    head = build_head(config["head"])
    state = load_file(str(directory / WEIGHTS_NAME))
    missing, unexpected = head.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    if missing or unexpected:
        raise ValueError(f"{directory / WEIGHTS_NAME} does not match its config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return head.eval(), config


@register_reranker
class CrossEncoderReranker(Reranker):
    """``create_reranker("cross")``: the shipped head on the shipped lite towers.

    ``model_id``: a directory or Hub repo id holding a head trained by ``scripts/train_cross_encoder.py``;
    its config names the lite encoder directory the head was trained on (``encoder``; default the
    shipped one). Prepared states are cached by content (caption string, image path; ``cache_size``
    items), so a gallery that is searched repeatedly is featurised once.
    """

    method = "cross"
    requires = frozenset({"query", "items"})

    def __init__(self, model_id: str | Path | None = None, device: str | torch.device | None = None,
                 cache_size: int = 20000, batch_size: int = 64, lite_model: Any = None) -> None:
        from common.device import default_device
        from common.lite_model import WEIGHTS_DIR as LITE_DIR, load_lite_model

        self.model_id = str(model_id) if model_id is not None else None
        self.device = torch.device(device) if device is not None else default_device()
        self.head, self.saved_config = load_head(model_id if model_id is not None else WEIGHTS_DIR)
        self.head.to(self.device)
        if lite_model is None:
            lite_model = load_lite_model(self.saved_config.get("encoder") or LITE_DIR).to(self.device)
        self.features = LiteTokenFeatures(lite_model, self.device, self.head.config["features"])
        trained_on = self.saved_config.get("lite_features", LEGACY_FEATURE_SOURCE)
        if self.head.config["features"] == "frozen" and trained_on != lite_feature_source(lite_model):
            raise ValueError(f"the cross-encoder {model_id or WEIGHTS_DIR} was trained on lite features {trained_on}; "
                             f"this lite model has {lite_feature_source(lite_model)}: retrain it on this model "
                             f"(scripts/train_cross_encoder.py)")
        if self.features.image_dim != self.head.config["image_dim"]:
            raise ValueError(f"the cross-encoder {model_id or WEIGHTS_DIR} reads {self.head.config['image_dim']}-channel "
                             f"image tokens; the lite model's {self.head.config['features']} tokens have "
                             f"{self.features.image_dim}: retrain it on this lite model (scripts/train_cross_encoder.py)")
        self.batch_size = batch_size
        self.cache = FeatureCache(cache_size)

    def config(self) -> dict[str, Any]:
        return {"method": self.method, "model_id": self.model_id, "cache_size": self.cache.capacity,
                "batch_size": self.batch_size}

    # -- states, cached by content---------------------------------------------------------------
    def _states(self, modality: str, items: Sequence[Any]) -> Any:
        # Keyed by content (the caption, the image path), not by id alone: two galleries reusing ids,
        # or an id re-used for another item, can never be served each other's states.
        keys = [cache_key(modality, item) for item in items]
        found = [self.cache.get(k) if k is not None else None for k in keys]
        todo = [j for j, s in enumerate(found) if s is None]
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            fresh = self._compute(modality, [items[j] for j in chunk])
            for pos, j in enumerate(chunk):
                state = fresh[pos:pos + 1]
                if modality == "text":  # drop padding so cached states do not depend on batch mates
                    state = state.trim(int(state.token_mask.sum()))
                found[j] = state
                if keys[j] is not None:
                    self.cache.put(keys[j], state)
        return cat_states(found)

    def _compute(self, modality: str, items: Sequence[Any]) -> Any:
        if modality == "image":
            tokens, embedding = self.features.images(items)
            return self.head.prepare_images(tokens, embedding)
        tokens, mask, embedding = self.features.texts(items)
        return self.head.prepare_texts(tokens, mask, embedding)

    def forget(self, query: Query) -> None:
        key = cache_key(query.modality, query.content)
        if key is not None:
            self.cache.pop(key)

    # -- scoring -----------------------------------------------------------------------------
    @torch.inference_mode()
    def score_pairs(self, text: States, text_index: torch.Tensor, image: States,
                    image_index: torch.Tensor, chunk: int = 4096) -> np.ndarray:
        """Scores of the pairs (text[text_index[p]], image[image_index[p]]), in chunks."""
        out = [self.head.pair_scores(take(text, text_index[s:s + chunk]), take(image, image_index[s:s + chunk]))
               for s in range(0, len(text_index), chunk)]
        return torch.cat(out).float().cpu().numpy() if out else np.empty(0, dtype=np.float32)

    def score(self, query: Query, candidates: Candidates) -> np.ndarray:
        return self.score_batch([query], [candidates])[0]

    @torch.inference_mode()
    def score_batch(self, queries: Sequence[Query], candidates: Sequence[Candidates]) -> list[np.ndarray]:
        """Featurises all queries of a modality in one batch, then scores each candidate list."""
        self.check_batch(queries, candidates)
        out: list[np.ndarray] = [np.empty(0, dtype=np.float32) for _ in queries]
        for modality in ("text", "image"):
            rows = [i for i, q in enumerate(queries) if q.modality == modality and len(candidates[i])]
            if not rows:
                continue
            query_states = self._states(modality, [queries[i].content for i in rows])
            # every distinct candidate of the batch is featurised (or fetched) once, then all
            # (query, candidate) pairs are scored together
            keys: dict[Any, int] = {}
            unique: list[Any] = []
            pair_query, pair_item = [], []
            for j, i in enumerate(rows):
                for item in candidates[i].items:
                    key = cache_key(other_modality(modality), item)
                    if key is None or key not in keys:
                        keys[key if key is not None else ("object", len(unique))] = len(unique)
                        unique.append(item)
                        pair_item.append(len(unique) - 1)
                    else:
                        pair_item.append(keys[key])
                    pair_query.append(j)
            item_states = self._states(other_modality(modality), unique)
            q_idx, i_idx = torch.as_tensor(pair_query), torch.as_tensor(pair_item)
            if modality == "text":
                scores = self.score_pairs(query_states, q_idx, item_states, i_idx)
            else:
                scores = self.score_pairs(item_states, i_idx, query_states, q_idx)
            start = 0
            for i in rows:
                out[i] = scores[start:start + len(candidates[i])]
                start += len(candidates[i])
        return out
