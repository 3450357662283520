"""Trains the lite encoder's tower tops and heads on Flickr8K train (symmetric InfoNCE).

Reproducible: seeded, deterministic data order, and the frozen parts of both towers run once
into an on-disk cache (``cache/``), so an epoch only runs the trainable tops. A validation set of
``--val-images`` train images (a fixed seeded draw) picks the best epoch; the test split is never
seen here. Writes ``model.safetensors`` + ``config.json`` to ``--output``.

    python scripts/train_lite.py --output retrieval/weights/lite
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

from eval.karpathy import CaptionDataset, load_karpathy
from eval.recall import retrieval_recall
from retrieval.encoders.lite import DEFAULT_CONFIG, IMAGE_STAGES, TEXT_LAYERS, LiteModel, image_transform
from retrieval.images import load_image

ROOT = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = ROOT.parent / "shared" / "data" / "flickr8k"
    p.add_argument("--annotations", type=Path, default=data / "dataset_flickr8k.json")
    p.add_argument("--images", type=Path, default=data / "images")
    p.add_argument("--output", type=Path, default=ROOT / "retrieval" / "weights" / "lite")
    p.add_argument("--cache", type=Path, default=ROOT / "cache")
    p.add_argument("--val-images", type=int, default=500)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3, help="heads")
    p.add_argument("--tower-lr", type=float, default=5e-5, help="trainable tower tops")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--image-trainable-stages", type=int, default=DEFAULT_CONFIG["image_trainable_stages"])
    p.add_argument("--text-trainable-layers", type=int, default=DEFAULT_CONFIG["text_trainable_layers"])
    p.add_argument("--image-pool", default=DEFAULT_CONFIG["image_pool"], choices=["avg", "attention"])
    p.add_argument("--embed-dim", type=int, default=DEFAULT_CONFIG["embed_dim"])
    p.add_argument("--dropout", type=float, default=DEFAULT_CONFIG["dropout"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args()


# -- frozen-trunk caches ------------------------------------------------------------------------
def cache_key(*parts: object) -> str:
    return hashlib.sha1(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:12]


#: Caches hold each tower's activations entering its last stage / last layers, so that every
#: configuration with at most this many trainable stages/layers reuses one cache.
IMAGE_CACHED_STAGES = 1
TEXT_CACHED_LAYERS = 2


@torch.inference_mode()
def image_trunk_features(model: LiteModel, paths: list[Path], cache: Path) -> torch.Tensor:
    """(n, C, h, w) fp16: the frozen trunk's output (input of the last stage) for each image."""
    file = cache / f"lite_image_trunk_{cache_key(IMAGE_CACHED_STAGES, len(paths), paths[0], paths[-1])}.pt"
    if file.exists():
        return torch.load(file)
    tower, transform = model.image_tower, image_transform(model.config)
    tower.to(memory_format=torch.channels_last)  # oneDNN's depthwise kernels need NHWC on CPU
    chunks = []
    for start in tqdm(range(0, len(paths), 64), desc="image trunk"):
        pixels = torch.stack([transform(load_image(p)) for p in paths[start:start + 64]])
        x = tower.bn1(tower.conv_stem(pixels.contiguous(memory_format=torch.channels_last)))
        chunks.append(tower.blocks[: IMAGE_STAGES - IMAGE_CACHED_STAGES](x).half().contiguous())
    features = torch.cat(chunks)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(features, file)
    return features


@torch.inference_mode()
def text_trunk_features(model: LiteModel, captions: list[str], cache: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states entering the last layers, (n, L, 384) fp16, and the attention mask (n, L)."""
    max_len = model.config["text_max_length"]
    file = cache / f"lite_text_trunk_{cache_key(TEXT_CACHED_LAYERS, max_len, len(captions), captions[0], captions[-1])}.pt"
    if file.exists():
        return torch.load(file)
    tokens = model.tokenizer(captions, padding="longest", truncation=True, max_length=max_len, return_tensors="pt")
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    hidden = torch.zeros(len(captions), ids.shape[1], model.text_tower.config.hidden_size, dtype=torch.float16)
    by_length = torch.argsort(mask.sum(1))  # batches of similar length waste little on padding
    for start in tqdm(range(0, len(captions), 256), desc="text trunk"):
        rows = by_length[start:start + 256]
        length = int(mask[rows].sum(1).max())
        out = model.text_tower(input_ids=ids[rows, :length], attention_mask=mask[rows, :length], output_hidden_states=True)
        hidden[rows, :length] = out.hidden_states[TEXT_LAYERS - TEXT_CACHED_LAYERS].half()
    cache.mkdir(parents=True, exist_ok=True)
    torch.save((hidden, mask), file)
    return hidden, mask


# -- the trainable tops on cached inputs ----------------------------------------------------------
def image_top(model: LiteModel, x: torch.Tensor, cached_stages: int = IMAGE_CACHED_STAGES) -> torch.Tensor:
    """The last ``cached_stages`` stages, conv head and image head on cached activations.

    ``cached_stages=0`` means ``x`` is already the final feature map. Frozen parts run without grad.
    """
    tower, trainable = model.image_tower, model.config["image_trainable_stages"]
    x = x.float()
    if cached_stages:
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable > 0):
            x = tower.bn2(tower.conv_head(tower.blocks[IMAGE_STAGES - cached_stages:](x)))
    return model.image_head(x)


def text_layers(model: LiteModel, hidden: torch.Tensor, mask: torch.Tensor, layers: range) -> torch.Tensor:
    """Runs BERT layers ``layers`` on hidden states (transformers 4.x returns tuples, 5.x tensors)."""
    additive = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    trainable_from = TEXT_LAYERS - model.config["text_trainable_layers"]
    for i in layers:
        with torch.set_grad_enabled(torch.is_grad_enabled() and i >= trainable_from):
            out = model.text_tower.encoder.layer[i](hidden, attention_mask=additive)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def text_top(model: LiteModel, hidden: torch.Tensor, mask: torch.Tensor,
             cached_layers: int = TEXT_CACHED_LAYERS) -> torch.Tensor:
    """The last ``cached_layers`` text layers and the text head on cached hidden states."""
    length = int(mask.sum(1).max())
    hidden, mask = hidden[:, :length].float(), mask[:, :length]
    hidden = text_layers(model, hidden, mask, range(TEXT_LAYERS - cached_layers, TEXT_LAYERS))
    return model.text_head(hidden, mask)


@torch.inference_mode()
def advance_frozen(model: LiteModel, image_x: torch.Tensor, hidden: torch.Tensor,
                   mask: torch.Tensor) -> tuple[torch.Tensor, int, torch.Tensor, int]:
    """Runs the cached activations through every frozen layer once, so epochs only run trainable ones."""
    image_stages, text_cached = IMAGE_CACHED_STAGES, TEXT_CACHED_LAYERS
    tower = model.image_tower
    if model.config["image_trainable_stages"] == 0:
        image_x = torch.cat([
            tower.bn2(tower.conv_head(tower.blocks[IMAGE_STAGES - image_stages:](image_x[s:s + 256].float()))).half()
            for s in tqdm(range(0, len(image_x), 256), desc="frozen image top")
        ])
        image_stages = 0
    trainable = model.config["text_trainable_layers"]
    if trainable < text_cached:
        frozen = range(TEXT_LAYERS - text_cached, TEXT_LAYERS - trainable)
        out = hidden.clone()
        for s in tqdm(range(0, len(hidden), 512), desc="frozen text layers"):
            length = max(int(mask[s:s + 512].sum(1).max()), 1)
            out[s:s + 512, :length] = text_layers(
                model, hidden[s:s + 512, :length].float(), mask[s:s + 512, :length], frozen).half()
        hidden, text_cached = out, trainable
    return image_x, image_stages, hidden, text_cached


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    logits = logit_scale.clamp(max=math.log(100)).exp() * image @ text.T
    target = torch.arange(len(image))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


@torch.no_grad()
def evaluate(model: LiteModel, image_x: torch.Tensor, image_stages: int, hidden: torch.Tensor, mask: torch.Tensor,
             text_cached: int, caption_image: np.ndarray) -> dict[str, float]:
    model.eval()
    img = torch.cat([image_top(model, image_x[s:s + 256], image_stages) for s in range(0, len(image_x), 256)])
    txt = torch.cat([text_top(model, hidden[s:s + 512], mask[s:s + 512], text_cached)
                     for s in range(0, len(hidden), 512)])
    sim = (F.normalize(txt, dim=-1) @ F.normalize(img, dim=-1).T).numpy()
    return retrieval_recall(sim, caption_image)


def select(ds: CaptionDataset, image_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Caption indices of the given images, and each caption's position within ``image_ids``."""
    position = -np.ones(ds.n_images, dtype=np.int64)
    position[image_ids] = np.arange(len(image_ids))
    captions = np.flatnonzero(position[ds.caption_image] >= 0)
    return captions, position[ds.caption_image[captions]]


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    config = {
        **DEFAULT_CONFIG,
        "embed_dim": args.embed_dim,
        "image_pool": args.image_pool,
        "image_trainable_stages": args.image_trainable_stages,
        "text_trainable_layers": args.text_trainable_layers,
        "dropout": args.dropout,
    }
    if args.image_trainable_stages > IMAGE_CACHED_STAGES or args.text_trainable_layers > TEXT_CACHED_LAYERS:
        raise SystemExit(f"at most {IMAGE_CACHED_STAGES} image stage(s) and {TEXT_CACHED_LAYERS} text layers can be trained")
    model = LiteModel(config)
    train = load_karpathy(args.annotations, args.images, "train")
    image_trunk = image_trunk_features(model, train.image_paths, args.cache)
    hidden, mask = text_trunk_features(model, train.captions, args.cache)
    advanced = args.cache / f"lite_advanced_{cache_key(len(train.captions), config['image_trainable_stages'], config['text_trainable_layers'])}.pt"
    if advanced.exists():
        image_trunk, image_stages, hidden, text_cached = torch.load(advanced)
    else:
        image_trunk, image_stages, hidden, text_cached = advance_frozen(model, image_trunk, hidden, mask)
        torch.save((image_trunk, image_stages, hidden, text_cached), advanced)

    order = rng.permutation(train.n_images)
    val_ids, fit_ids = np.sort(order[: args.val_images]), np.sort(order[args.val_images:])
    val_caps, val_owner = select(train, val_ids)
    fit_caps_by_image = [np.flatnonzero(train.caption_image == i) for i in range(train.n_images)]

    tower_params = model.trainable_tower_parameters()
    tower_ids = {id(p) for p in tower_params}
    head_params = [p for p in model.parameters() if p.requires_grad and id(p) not in tower_ids]
    optimizer = torch.optim.AdamW(
        [{"params": head_params, "lr": args.lr}, {"params": tower_params, "lr": args.tower_lr}],
        weight_decay=args.weight_decay,
    )
    steps_per_epoch = len(fit_ids) // args.batch_size
    total = steps_per_epoch * args.epochs
    base_lrs = [g["lr"] for g in optimizer.param_groups]

    best, best_state, history = -1.0, None, []
    step = 0
    for epoch in range(args.epochs):
        model.train()
        model.image_tower.eval()  # BatchNorm statistics stay those of ImageNet
        perm = rng.permutation(fit_ids)
        picks = rng.integers(0, 1 << 30, size=len(perm))
        start_time, losses = time.time(), []
        for b in tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", leave=False):
            sl = slice(b * args.batch_size, (b + 1) * args.batch_size)
            images = perm[sl]
            caps = np.array([fit_caps_by_image[i][p % len(fit_caps_by_image[i])] for i, p in zip(images, picks[sl])])
            warm = min(1.0, (step + 1) / args.warmup_steps)
            decay = 0.5 * (1 + math.cos(math.pi * step / total))
            for g, lr in zip(optimizer.param_groups, base_lrs):
                g["lr"] = lr * warm * decay
            img = image_top(model, image_trunk[torch.as_tensor(images)], image_stages)
            txt = text_top(model, hidden[torch.as_tensor(caps)], mask[torch.as_tensor(caps)], text_cached)
            loss = clip_loss(img, txt, model.logit_scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
        metrics = evaluate(model, image_trunk[torch.as_tensor(val_ids)], image_stages, hidden[torch.as_tensor(val_caps)],
                           mask[torch.as_tensor(val_caps)], text_cached, val_owner)
        score = metrics["rsum"]
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), **metrics,
                        "seconds": round(time.time() - start_time, 1)})
        print(json.dumps(history[-1]), flush=True)
        if score > best:
            best = score
            best_state = {k: v.clone() for k, v in model.trainable_state_dict().items()}

    from safetensors.torch import save_file

    from hashing.base import atomic_write_dir

    def write(tmp: Path) -> None:
        # fp16 storage halves the shipped file; the encoder loads it into fp32 parameters.
        save_file({k: v.half() if v.is_floating_point() else v for k, v in best_state.items()},
                  str(tmp / "model.safetensors"))
        record = {**config, "training": {
            "data": "Flickr8K train (Karpathy split), minus a seeded validation draw",
            "val_images": args.val_images, "epochs": args.epochs, "batch_size": args.batch_size,
            "lr": args.lr, "tower_lr": args.tower_lr, "weight_decay": args.weight_decay,
            "seed": args.seed, "best_val_rsum": best, "history": history,
        }}
        (tmp / "config.json").write_text(json.dumps(record, indent=2))
        if card.exists():  # the model card is written by hand; keep it
            (tmp / card.name).write_text(card.read_text())

    card = args.output / "README.md"
    atomic_write_dir(args.output, write)
    print(f"saved {args.output} (best val rsum {best:.2f})")


if __name__ == "__main__":
    main()
