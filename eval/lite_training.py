"""Training the lite encoder's tower tops and heads (``scripts/train_lite.py`` is its CLI).

Why a module: the frozen-trunk caches, the fast path on them and the loss are also what the
cross-encoder trainer and the tests need; a script is no library. Why in eval/: it validates
with eval.recall's R@K, and the library (retrieval/) never trains. Everything runs on CPU in
minutes because the frozen trunk of each tower (the split :class:`~common.lite_model.LiteModel`
exposes) runs once into an on-disk cache, and an epoch only runs the trainable top.

Augmentation without running the trunk per epoch: ``views`` augmented copies (random resized crop,
horizontal flip) of every training image go through the frozen trunk once; each step draws one of
an image's views (view 0 is the plain evaluation transform, which validation uses).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2 as T
from tqdm.auto import tqdm

from common.lite_model import IMAGE_STAGES, LiteModel, image_transform
from retrieval.encoders.lite import export, onnxruntime_available

from .contrastive import captions_by_image, contrastive_loss, sample_captions, warmup_cosine


def cache_key(*parts: object) -> str:
    return hashlib.sha1(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:12]


def augment_transform(config: dict[str, Any], scale: tuple[float, float] = (0.5, 1.0)) -> T.Compose:
    """Random resized crop (area ``scale``, aspect 3/4..4/3) and horizontal flip, then the encoder's normalisation."""
    size = config["image_size"]
    return T.Compose([
        T.ToImage(),
        T.RandomResizedCrop(size, scale=scale, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
        T.RandomHorizontalFlip(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(config["image_mean"], config["image_std"]),
    ])


class _Trunk(torch.nn.Module):
    def __init__(self, model: LiteModel, stages: int) -> None:
        super().__init__()
        self.model, self.stages = model, stages

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.image_trunk(pixels, self.stages)


class TrunkRunner:
    """The frozen image trunk as ONNX Runtime runs it (about 5x PyTorch on this CPU), else PyTorch channels_last."""

    def __init__(self, model: LiteModel, stages: int) -> None:
        self.model, self.stages, self.session = model, stages, None
        if onnxruntime_available():
            import onnxruntime as ort

            size = model.config["image_size"]
            graph = export(_Trunk(model, stages), (torch.zeros(2, 3, size, size),), ["pixels"], {"pixels": {0: "batch"}})
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        else:
            model.image_tower.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.session is not None:
            return torch.from_numpy(self.session.run(None, {"pixels": pixels.numpy()})[0])
        return self.model.image_trunk(pixels.contiguous(memory_format=torch.channels_last), self.stages)


@torch.inference_mode()
def image_trunk_features(model: LiteModel, paths: Sequence[Path], cache: Path, stages: int | None = None,
                         views: int = 0, seed: int = 0, progress: bool = True) -> torch.Tensor:
    """(1 + views, n, C, h, w) fp16: the frozen trunk's output for each image, view 0 un-augmented.

    The cache file is keyed by the tower, the split, the preprocessing, the image list and the
    augmentation seed, so a changed model never reads another model's activations.
    """
    from common.images import load_image

    stages = model.image_split if stages is None else stages
    c = model.config
    ends = [Path(paths[0]).resolve(), Path(paths[-1]).resolve()]  # relative or absolute, one cache
    key = cache_key(c["image_tower"], stages, c["image_size"], c["image_mean"], len(paths), *ends)
    cache.mkdir(parents=True, exist_ok=True)
    runner, out = None, []
    for v in range(1 + views):
        file = cache / (f"lite_image_trunk_{key}.pt" if v == 0 else f"lite_image_trunk_{key}_aug{seed}_{v}.pt")
        if file.exists():
            out.append(torch.load(file))
            continue
        runner = runner or TrunkRunner(model, stages)
        transform = image_transform(c) if v == 0 else augment_transform(c)
        torch.manual_seed(seed * 1000 + v)  # the crops and flips of view v
        chunks = []
        for start in tqdm(range(0, len(paths), 64), desc=f"image trunk view {v}", disable=not progress):
            pixels = torch.stack([transform(load_image(p)) for p in paths[start:start + 64]])
            chunks.append(runner(pixels).half().contiguous())
        features = torch.cat(chunks)
        torch.save(features, file)
        out.append(features)
    return torch.stack(out)


@torch.inference_mode()
def text_trunk_features(model: LiteModel, captions: Sequence[str], cache: Path, layers: int | None = None,
                        progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states after the frozen text layers, (n, L, 384) fp16, and the attention mask (n, L)."""
    layers = model.text_split if layers is None else layers
    max_len = model.config["text_max_length"]
    file = cache / f"lite_text_trunk_{cache_key(model.config['text_tower'], layers, max_len, len(captions), captions[0], captions[-1])}.pt"
    if file.exists():
        return torch.load(file)
    tokens = model.tokenizer(list(captions), padding="longest", truncation=True, max_length=max_len, return_tensors="pt")
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    hidden = torch.zeros(len(captions), ids.shape[1], model.text_tower.config.hidden_size, dtype=torch.float16)
    by_length = torch.argsort(mask.sum(1))  # batches of similar length waste little on padding
    for start in tqdm(range(0, len(captions), 256), desc="text trunk", disable=not progress):
        rows = by_length[start:start + 256]
        length = int(mask[rows].sum(1).max())
        hidden[rows, :length] = model.text_trunk(ids[rows, :length], mask[rows, :length], layers).half()
    cache.mkdir(parents=True, exist_ok=True)
    torch.save((hidden, mask), file)
    return hidden, mask


@torch.inference_mode()
def advance_frozen(model: LiteModel, trunk: torch.Tensor, image_from: int, hidden: torch.Tensor, mask: torch.Tensor,
                   text_from: int) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Runs caches taken below the model's split through the frozen layers above them, once.

    Returns the image activations and the stage they enter (``IMAGE_STAGES + 1``: the pooled final
    feature map, when no image stage trains) and the hidden states at ``model.text_split``.
    """
    pooled_already = image_from == IMAGE_STAGES + 1 and model.config["image_trainable_stages"] == 0
    if (image_from > model.image_split and not pooled_already) or text_from > model.text_split:
        raise ValueError(f"caches at image stage {image_from} / text layer {text_from} are above the model's split "
                         f"({model.image_split} / {model.text_split})")
    flat = trunk.flatten(0, 1)
    if model.config["image_trainable_stages"] == 0 and not pooled_already:
        pooled = torch.cat([model.image_feature_map(model.image_stages(flat[s:s + 256].float(), image_from)).mean((2, 3))
                            for s in range(0, len(flat), 256)])
        trunk, image_from = pooled.half().reshape(*trunk.shape[:2], -1, 1, 1), IMAGE_STAGES + 1
    elif image_from < model.image_split:
        x = torch.cat([model.image_stages(flat[s:s + 256].float(), image_from, model.image_split).half()
                       for s in range(0, len(flat), 256)])
        trunk, image_from = x.reshape(*trunk.shape[:2], *x.shape[1:]), model.image_split
    return trunk, image_from, advance_text(model, hidden, mask, text_from)


@torch.inference_mode()
def advance_text(model: LiteModel, hidden: torch.Tensor, mask: torch.Tensor, text_from: int) -> torch.Tensor:
    """Hidden states cached at layer ``text_from`` run through the frozen layers up to ``model.text_split``, once."""
    if text_from > model.text_split:
        raise ValueError(f"a text cache at layer {text_from} is above the model's split ({model.text_split})")
    if text_from == model.text_split:
        return hidden
    out = hidden.clone()
    for s in range(0, len(hidden), 512):
        length = max(int(mask[s:s + 512].sum(1).max()), 1)
        out[s:s + 512, :length] = model.text_layers(hidden[s:s + 512, :length].float(), mask[s:s + 512, :length],
                                                    range(text_from, model.text_split)).half()
    return out


# -- losses -----------------------------------------------------------------------------------------
def class_distill_loss(image: torch.Tensor, class_text: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """KL(teacher || student), averaged over images: the ImageNet classifier distilled into the joint space.

    student = softmax over classes of cos(image, class_text_c) / ``tau``: the joint space's own
    zero-shot classifier, whose class vectors are the class-name prompts through the trainable text
    top and head. ``teacher``: (B, C) probabilities over the same C classes, rows summing to 1. Why
    KL and not a hard label: most Flickr8K photos get no confident ImageNet class (median top
    probability about .2), and the spread is what the classifier knows.
    """
    if teacher.shape != (image.shape[0], class_text.shape[0]):
        raise ValueError(f"teacher must be (images={image.shape[0]}, classes={class_text.shape[0]}), "
                         f"got {tuple(teacher.shape)}")
    logits = F.normalize(image, dim=-1) @ F.normalize(class_text, dim=-1).T / tau
    return F.kl_div(F.log_softmax(logits, dim=-1), teacher, reduction="batchmean")


@dataclass
class ClassPrompts:
    """The ImageNet class-name prompts (:func:`common.lite_concepts.class_prompts`) as cached text trunk states.

    ``hidden``/``mask``: from :func:`text_trunk_features` at layer ``text_from``; ``owner``: the class
    of each text (every class must have at least one).
    """

    hidden: torch.Tensor
    mask: torch.Tensor
    owner: torch.Tensor
    text_from: int


@torch.inference_mode()
def teacher_logits(model: LiteModel, image_x: torch.Tensor, image_from: int) -> torch.Tensor:
    """(views, n, 1000) ImageNet classifier logits on the pooled final feature map of cached images.

    Taken from the model as it stands, so call it before training: the tower top still has the pip
    weights the classifier was trained with (training moves them, and the teacher must not move).
    """
    model.eval()
    flat = image_x.flatten(0, 1)
    out = []
    for s in range(0, len(flat), 256):
        x = flat[s:s + 256].float()
        if image_from <= IMAGE_STAGES:
            x = model.image_feature_map(model.image_stages(x, image_from))
        out.append(model.image_tower.imagenet_classifier(x.mean(dim=(2, 3))))
    return torch.cat(out).reshape(*image_x.shape[:2], -1)


def sample_classes(teacher: torch.Tensor, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` class indices for one step: the n // 2 classes the batch's teacher is surest of (its max
    probability over the batch), the rest drawn at random, so that the student's softmax over them
    sees where the teacher's mass is and enough other classes to push away from. All when n >= C."""
    n_classes = teacher.shape[1]
    if n >= n_classes:
        return np.arange(n_classes)
    sure = torch.argsort(teacher.max(dim=0).values, descending=True)[:n // 2].numpy()
    rest = np.setdiff1d(np.arange(n_classes), sure)
    return np.concatenate([sure, rng.choice(rest, size=n - len(sure), replace=False)])


@dataclass
class TrainOptions:
    """The defaults are the shipped model's recipe; the model card's table says what the other settings gave."""

    epochs: int = 12
    batch_size: int = 256
    captions_per_image: int = 1
    lr: float = 1e-3
    tower_lr: float = 5e-5
    weight_decay: float = 0.05
    warmup_steps: int = 50
    hard_weight: float = 0.0
    hard_start_epoch: int = 0
    margin: float = 0.2
    views: int = 0
    seed: int = 0
    # Class distillation (issue 23): weight of :func:`class_distill_loss` (0: off, the shipped recipe,
    # byte-identical), the teacher's softmax temperature, the student's cosine temperature and the
    # classes per step (one random prompt of each goes through the text top); ``text_only`` stops its
    # gradient at the image embedding, so only the text side learns where the class names sit.
    class_distill_weight: float = 0.0
    class_distill_temperature: float = 1.0
    class_distill_tau: float = 0.05
    class_distill_classes: int = 256
    class_distill_text_only: bool = False
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def embed_cached(model: LiteModel, image_x: torch.Tensor, image_from: int, hidden: torch.Tensor, mask: torch.Tensor,
                 text_from: int) -> tuple[torch.Tensor, torch.Tensor]:
    img = torch.cat([model.image_top(image_x[s:s + 256], image_from) for s in range(0, len(image_x), 256)])
    txt = []
    for s in range(0, len(hidden), 512):
        length = max(int(mask[s:s + 512].sum(1).max()), 1)
        txt.append(model.text_top(hidden[s:s + 512, :length], mask[s:s + 512, :length], text_from))
    return F.normalize(img, dim=-1), F.normalize(torch.cat(txt), dim=-1)


def select(caption_image: np.ndarray, image_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Caption indices of the given images, and each caption's position within ``image_ids``."""
    position = -np.ones(int(caption_image.max()) + 1, dtype=np.int64)
    position[image_ids] = np.arange(len(image_ids))
    captions = np.flatnonzero(position[caption_image] >= 0)
    return captions, position[caption_image[captions]]


def train(model: LiteModel, image_trunk: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor,
          caption_image: np.ndarray, val_ids: np.ndarray, fit_ids: np.ndarray, options: TrainOptions,
          image_from: int | None = None, text_from: int | None = None,
          classes: ClassPrompts | None = None) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Trains ``model``'s top on cached trunk outputs; returns the best-validation-rsum state and the history.

    ``image_trunk``: (views, n_images, C, h, w) from :func:`image_trunk_features` at stage ``image_from``
    (default ``model.image_split``); ``hidden``/``mask``: from :func:`text_trunk_features` at layer
    ``text_from`` (default ``model.text_split``). Caches below the split are advanced once.
    ``classes``: the class-name prompts, needed when ``options.class_distill_weight`` > 0 (the
    teacher is the tower's ImageNet classifier before the first step; the prompts draw from their
    own random stream, so the caption and view draws are those of the plain recipe).
    """
    from .recall import retrieval_recall

    o = options
    distill = o.class_distill_weight
    if distill < 0 or not math.isfinite(distill):
        raise ValueError(f"class_distill_weight must be a finite number >= 0, got {distill!r}")
    if distill and classes is None:
        raise ValueError("class_distill_weight > 0 needs the class prompts (classes=ClassPrompts(...))")
    if distill and (o.class_distill_temperature <= 0 or o.class_distill_tau <= 0 or o.class_distill_classes < 2):
        raise ValueError("class distillation needs temperature > 0, tau > 0 and at least 2 classes per step, got "
                         f"{o.class_distill_temperature}, {o.class_distill_tau}, {o.class_distill_classes}")
    torch.manual_seed(o.seed)
    rng = np.random.default_rng(o.seed + 1)
    image_from = model.image_split if image_from is None else image_from
    text_from = model.text_split if text_from is None else text_from
    if distill:
        assert classes is not None
        teacher = (teacher_logits(model, image_trunk, image_from) / o.class_distill_temperature).softmax(dim=-1)
        class_hidden = advance_text(model, classes.hidden, classes.mask, classes.text_from)
        texts_of = [np.flatnonzero(classes.owner.numpy() == c) for c in range(teacher.shape[-1])]
        if any(len(t) == 0 for t in texts_of):
            raise ValueError("every ImageNet class needs at least one prompt text")
        distill_rng = np.random.default_rng(o.seed + 2)
    image_trunk, image_from, hidden = advance_frozen(model, image_trunk, image_from, hidden, mask, text_from)
    caption_image = np.asarray(caption_image)
    val_caps, val_owner = select(caption_image, val_ids)
    caps_of = captions_by_image(caption_image, int(caption_image.max()) + 1)

    tower_params = model.trainable_tower_parameters()
    tower_ids = {id(p) for p in tower_params}
    head_params = [p for p in model.parameters() if p.requires_grad and id(p) not in tower_ids]
    optimizer = torch.optim.AdamW([{"params": head_params, "lr": o.lr}, {"params": tower_params, "lr": o.tower_lr}],
                                  weight_decay=o.weight_decay)
    steps_per_epoch = len(fit_ids) // o.batch_size
    total = steps_per_epoch * o.epochs
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    n_views = image_trunk.shape[0]
    best, best_state, history, step = -1.0, None, [], 0
    for epoch in range(o.epochs):
        model.train()
        model.image_tower.eval()  # BatchNorm statistics stay those of ImageNet
        perm = rng.permutation(fit_ids)
        hard = o.hard_weight if epoch >= o.hard_start_epoch else 0.0
        start_time, losses, class_kls = time.time(), [], []
        for b in tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{o.epochs}", leave=False, disable=not o.progress):
            images = perm[b * o.batch_size:(b + 1) * o.batch_size]
            caps, owner = sample_captions(images, caps_of, o.captions_per_image, rng)
            caps = torch.as_tensor(caps)
            view = torch.as_tensor(rng.integers(0, n_views, size=len(images)))
            factor = warmup_cosine(step, o.warmup_steps, total)
            for g, lr in zip(optimizer.param_groups, base_lrs):
                g["lr"] = lr * factor
            img = model.image_top(image_trunk[view, torch.as_tensor(images)], image_from)
            length = int(mask[caps].sum(1).max())
            txt = model.text_top(hidden[caps, :length], mask[caps, :length])
            loss = contrastive_loss(img, txt, torch.as_tensor(owner), model.logit_scale, hard, o.margin)
            if distill:
                batch_teacher = teacher[view, torch.as_tensor(images)]
                chosen = sample_classes(batch_teacher, o.class_distill_classes, distill_rng)
                rows = torch.as_tensor(np.array([distill_rng.choice(texts_of[c]) for c in chosen]))
                length = int(classes.mask[rows].sum(1).max())
                class_text = model.text_top(class_hidden[rows, :length], classes.mask[rows, :length])
                target = batch_teacher[:, torch.as_tensor(chosen)]
                student_img = img.detach() if o.class_distill_text_only else img
                kl = class_distill_loss(student_img, class_text, target / target.sum(1, keepdim=True), o.class_distill_tau)
                loss = loss + distill * kl
                class_kls.append(kl.item())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
        model.eval()
        img, txt = embed_cached(model, image_trunk[0, torch.as_tensor(val_ids)], image_from,
                                hidden[torch.as_tensor(val_caps)], mask[torch.as_tensor(val_caps)], model.text_split)
        metrics = retrieval_recall((txt @ img.T).numpy(), val_owner)
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), **metrics,
                        "seconds": round(time.time() - start_time, 1)})
        if distill:
            history[-1]["class_kl"] = float(np.mean(class_kls))
        print(json.dumps(history[-1]), flush=True)
        if metrics["rsum"] > best:
            best = metrics["rsum"]
            best_state = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    return best_state, history


def save_lite(directory: Path, config: dict[str, Any], state: dict[str, torch.Tensor], training: dict[str, Any]) -> None:
    """Writes ``model.safetensors`` (fp16) + ``config.json`` atomically; keeps a model card that is there."""
    from safetensors.torch import save_file

    from common.atomic import atomic_write_dir

    directory = Path(directory)
    card = directory / "README.md"
    card_text = card.read_text() if card.exists() else None

    def write(tmp: Path) -> None:
        # fp16 storage halves the shipped file; the encoder loads it into fp32 parameters.
        save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps({**config, "training": training}, indent=2))
        if card_text is not None:  # the model card is written by hand; keep it
            (tmp / card.name).write_text(card_text)

    atomic_write_dir(directory, write)


def options_record(options: TrainOptions) -> dict[str, Any]:
    """The options as ``config.json`` records them; the class-distillation ones only when it is on, so the
    shipped recipe's record is what it was before the option existed."""
    skip = {"progress", "extra"} | ({k for k in asdict(options) if k.startswith("class_distill_")}
                                    if not options.class_distill_weight else set())
    return {k: v for k, v in asdict(options).items() if k not in skip} | options.extra

