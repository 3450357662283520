"""Fine-tuning both lite towers end to end on Flickr8K train (issue 23's accelerator route), and its pack.

The shipped recipe (:mod:`eval.lite_training`) trains the top of each tower over cached frozen
trunks, which is what two CPU cores allow. The route to the Klein et al. bar is to let every
layer move, which needs the pixels in each step and an accelerator. The machine lent for that has
torch, timm and transformers but neither the pip packages that carry the towers nor the Flickr8K
folder, and takes at most 64 MiB per call, so :func:`build_pack` writes what the run needs:

- ``model.safetensors`` (fp16): the shipped lite model with the towers merged in, named as
  :class:`common.lite_model.LiteModel` names them, less the ImageNet classifier, with the text
  tower's word embeddings cut to the token ids the captions use (the ids are renumbered;
  ``pack.json`` keeps the original ids in order, so rows map back);
- ``captions.npz``: the captions tokenised as the encoder tokenises them, in those new ids;
- image parts (``NAME.bin`` bytes + ``NAME.npz`` offsets and pack ids): the held-out validation
  images (``images-val``) and the test images (``images-test``) as their original JPEG bytes, so
  the starting point's held-out rsum reproduces the CPU's; the images training fits as WebP
  (``fit_quality``, about half the size) in parts of at most ``fit_part_mib``, so that the pack
  can travel in calls under the limit.

Splits are the shipped recipe's: the held-out draw of :func:`eval.validation.held_out_train`
(500 train images never trained on, which pick the epoch and the setting) and the rest of train
to fit. Test is measured once, for the chosen setting, beside the starting point on the same pixels.
Nothing here ships: fine-tuned towers are tens of MB, and the package ships a few.
"""

from __future__ import annotations

import io
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.lite_model import ImageHead, TextHead

from .contrastive import captions_by_image, contrastive_loss, sample_captions, warmup_cosine
from .recall import retrieval_recall

PACK_VERSION = 1
WEIGHTS = "model.safetensors"
VAL_PART, TEST_PART = "images-val", "images-test"


# -- the pack (built on the CPU machine, where the pip towers and the data are) ------------------------------
def build_pack(out: Path, annotations: Path, images: Path, model_dir: Path | None = None, fit_quality: int = 75,
               fit_part_mib: float = 40.0, n_val: int = 500, seed: int = 0) -> dict[str, Any]:
    """Writes the pack to ``out`` (see the module docstring), atomically; returns its ``pack.json``.

    Every image must already be square at the model's ``image_size`` (``../shared/data/flickr8k``
    is stored at 224 x 224), so the run's evaluation view is the image itself; another size is an
    error naming the file, here rather than on the lease.
    """
    from common.atomic import atomic_write_dir
    from common.lite_files import WEIGHTS_DIR
    from common.lite_model import load_lite_model

    from .karpathy import load_karpathy
    from .validation import held_out_train

    model = load_lite_model(model_dir or WEIGHTS_DIR, concept_weight=0.0)
    train, test = load_karpathy(annotations, images, "train"), load_karpathy(annotations, images, "test")
    side = int(model.config["image_size"])
    captions = list(train.captions) + list(test.captions)
    caption_image = np.concatenate([train.caption_image, test.caption_image + train.n_images]).astype(np.int32)
    tokens = model.tokenizer(captions, padding="longest", truncation=True,
                             max_length=int(model.config["text_max_length"]), return_tensors="np")
    ids, mask = tokens["input_ids"], tokens["attention_mask"].astype(np.uint8)
    pad = model.tokenizer.pad_token_id
    vocab = np.unique(np.concatenate([ids[mask > 0], [pad]]))
    compact = np.searchsorted(vocab, ids).astype(np.int32)
    compact[mask == 0] = int(np.searchsorted(vocab, pad))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("image_tower.imagenet_classifier.")}
    key = "text_tower.embeddings.word_embeddings.weight"
    state[key] = state[key][torch.as_tensor(vocab)]
    bert = {**model.text_tower.config.to_dict(), "vocab_size": len(vocab), "pad_token_id": int(np.searchsorted(vocab, pad))}
    val = held_out_train(train.caption_image, train.n_images, n_val=n_val, seed=seed).val_images
    fit = np.setdiff1d(np.arange(train.n_images), val)
    test_ids = np.arange(train.n_images, train.n_images + test.n_images)
    paths = list(train.image_paths) + list(test.image_paths)
    meta = {"pack_version": PACK_VERSION, "lite_config": {**model.config, "concept_weight": 0.0},
            "bert_config": bert, "vocab": vocab.tolist(), "n_train": train.n_images, "n_test": test.n_images,
            "val_ids": val.tolist(), "fit_ids": fit.tolist(), "test_ids": test_ids.tolist(),
            "fit_format": f"WEBP quality {fit_quality}", "eval_format": "original JPEG bytes", "parts": {},
            "source": {"annotations": str(annotations), "model": str(model_dir or WEIGHTS_DIR), "seed": seed}}

    def write(tmp: Path) -> None:
        from safetensors.torch import save_file

        np.savez_compressed(tmp / "captions.npz", ids=compact, mask=mask, caption_image=caption_image)
        save_file({k: v.half().contiguous() if v.is_floating_point() else v.contiguous() for k, v in state.items()},
                  str(tmp / WEIGHTS))
        for name, part_ids in ((VAL_PART, val), (TEST_PART, test_ids)):
            meta["parts"][name] = _write_part(tmp / name, part_ids, [_square(paths[i], side, None) for i in part_ids])
        chunk: list[tuple[int, bytes]] = []
        size = 0
        for i in fit:
            blob = _square(paths[i], side, fit_quality)
            if chunk and size + len(blob) > fit_part_mib * 2**20:
                name = f"images-fit-{len(meta['parts']) - 2}"
                meta["parts"][name] = _write_part(tmp / name, *zip(*chunk))
                chunk, size = [], 0
            chunk.append((i, blob))
            size += len(blob)
        if chunk:
            name = f"images-fit-{len(meta['parts']) - 2}"
            meta["parts"][name] = _write_part(tmp / name, *zip(*chunk))
        (tmp / "pack.json").write_text(json.dumps(meta))

    atomic_write_dir(out, write)
    return meta


def _square(path: Path, side: int, webp_quality: int | None) -> bytes:
    """The image's file bytes (``webp_quality`` None) or its WebP re-encoding; a ValueError unless it is side x side."""
    from PIL import Image

    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        if im.size != (side, side):
            raise ValueError(f"{path}: {im.size[0]}x{im.size[1]}, the pack needs images stored at {side}x{side}")
        if webp_quality is None:
            return data
        buf = io.BytesIO()
        im.convert("RGB").save(buf, "WEBP", quality=webp_quality)
    return buf.getvalue()


def _write_part(stem: Path, ids: Sequence[int], blobs: Sequence[bytes]) -> dict[str, Any]:
    """One part: the images' bytes back to back in ``stem.bin``, offsets and pack ids in ``stem.npz``."""
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    stem.with_suffix(".bin").write_bytes(b"".join(blobs))
    np.savez(stem.with_suffix(".npz"), offsets=offsets, ids=np.asarray(ids, dtype=np.int64))
    return {"images": len(ids), "bytes": int(offsets[-1])}


def read_pack_images(pack: Path, parts: Sequence[str], side: int, threads: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(ids, uint8 (n, 3, side, side)) of the parts present under ``pack``; an image of another size is an error."""
    from PIL import Image

    def decode(blob: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(blob)) as im:
            a = np.asarray(im.convert("RGB"))
        if a.shape != (side, side, 3):
            raise ValueError(f"pack image of shape {a.shape}, expected ({side}, {side}, 3)")
        return a.transpose(2, 0, 1)

    ids, arrays = [], []
    for name in parts:
        index = np.load(pack / f"{name}.npz")
        data = (pack / f"{name}.bin").read_bytes()
        offsets = index["offsets"]
        blobs = [data[offsets[j]:offsets[j + 1]] for j in range(len(offsets) - 1)]
        with ThreadPoolExecutor(threads) as pool:
            arrays.extend(pool.map(decode, blobs))
        ids.append(index["ids"])
    if not arrays:
        raise FileNotFoundError(f"no image part of {list(parts)} found under {pack}")
    return np.concatenate(ids), np.stack(arrays)


# -- the model as the pack holds it -----------------------------------------------------------------------
class EndToEndLite(nn.Module):
    """The lite towers and heads built from configs alone (no pip tower packages), every layer trainable.

    Parameter names are :class:`common.lite_model.LiteModel`'s, so the pack's state loads as is and
    a fine-tuned state reads against the shipped one.
    """

    def __init__(self, lite_config: dict[str, Any], bert_config: dict[str, Any]) -> None:
        super().__init__()
        import timm
        from transformers import AutoModel, BertConfig

        c = lite_config
        self.config = c
        self.image_tower = timm.create_model(c["image_tower"], pretrained=False, num_classes=0, global_pool="")
        bert = {k: v for k, v in bert_config.items() if k not in ("architectures", "transformers_version", "model_type")}
        self.text_tower = AutoModel.from_config(BertConfig(**bert), attn_implementation="sdpa")
        self.image_head = ImageHead(self.image_tower.num_features, c["embed_dim"], c["image_pool"],
                                    c["image_pool_heads"], c["dropout"])
        self.text_head = TextHead(self.text_tower.config.hidden_size, c["embed_dim"], c["dropout"])
        self.logit_scale = nn.Parameter(torch.tensor(float(c["init_logit_scale"])))
        self.register_buffer("mean", torch.tensor(c["image_mean"]).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(c["image_std"]).view(1, 3, 1, 1) * 255, persistent=False)

    @classmethod
    def from_pack(cls, pack: Path) -> tuple["EndToEndLite", dict[str, Any]]:
        from safetensors.torch import load_file

        meta = json.loads((pack / "pack.json").read_text())
        if meta.get("pack_version") != PACK_VERSION:
            raise ValueError(f"{pack / 'pack.json'}: pack_version {meta.get('pack_version')!r}, expected {PACK_VERSION}")
        model = cls(meta["lite_config"], meta["bert_config"])
        state = {k: v.float() for k, v in load_file(str(pack / WEIGHTS)).items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ValueError(f"{pack / WEIGHTS} does not match the configs: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        return model, meta

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 or 0..255 float (B, 3, H, W) -> the tower's input."""
        return (pixels.float() - self.mean) / self.std

    def image_embedding(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image_head(self.image_tower.forward_features(self.normalise(pixels)))

    def text_embedding(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.text_tower(input_ids=ids, attention_mask=mask).last_hidden_state
        return self.text_head(hidden, mask)


def random_resized_crops(pixels: torch.Tensor, size: int, generator: torch.Generator,
                         scale: tuple[float, float] = (0.5, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                         flip: bool = True) -> torch.Tensor:
    """Per-image random resized crop (area fraction in ``scale``, aspect in ``ratio``) and horizontal flip
    of a (B, 3, S, S) batch, on its device, as one affine resampling (bilinear)."""
    b = pixels.shape[0]
    dev = pixels.device
    u = torch.rand(b, 4, generator=generator, device="cpu").to(dev)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    w = torch.sqrt(area * log_r.exp()).clamp(max=1.0)
    h = torch.sqrt(area / log_r.exp()).clamp(max=1.0)
    cx, cy = (2 * u[:, 2] - 1) * (1 - w), (2 * u[:, 3] - 1) * (1 - h)
    sign = torch.ones(b, device=dev)
    if flip:
        sign = torch.where(torch.rand(b, generator=generator, device="cpu").to(dev) < 0.5, -sign, sign)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * sign, cx, h, cy
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    return F.grid_sample(pixels.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def eval_pixels(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """The evaluation view: the whole (square) image at ``size`` (antialiased bicubic when it must resize)."""
    if pixels.shape[-1] == size and pixels.shape[-2] == size:
        return pixels.float()
    return F.interpolate(pixels.float(), size=(size, size), mode="bicubic", antialias=True,
                         align_corners=False).clamp(0, 255)


# -- training ---------------------------------------------------------------------------------------------
@dataclass
class EndToEndOptions:
    """One setting of the end-to-end run; the learning rates are per part (heads, image tower, text tower)."""

    epochs: int = 15
    batch_size: int = 256
    captions_per_image: int = 1
    head_lr: float = 1e-4
    image_lr: float = 1e-4
    text_lr: float = 2e-5
    weight_decay: float = 0.05
    warmup_steps: int = 50
    crop_scale: float = 0.5
    seed: int = 0
    max_seconds: float = math.inf  # stop after the epoch that passes this wall time (the lease is short)


class PackData:
    """The pack's captions and (whatever is present of) its image parts ``parts`` (default: all), on ``device``."""

    def __init__(self, pack: Path, meta: dict[str, Any], device: torch.device, require_all: bool = True,
                 parts: Sequence[str] | None = None) -> None:
        caps = np.load(pack / "captions.npz")
        self.ids = torch.as_tensor(caps["ids"].astype(np.int64), device=device)
        self.mask = torch.as_tensor(caps["mask"].astype(np.int64), device=device)
        self.caption_image = caps["caption_image"].astype(np.int64)
        wanted = list(meta["parts"]) if parts is None else list(parts)
        present = [p for p in wanted if (pack / f"{p}.bin").is_file()]
        if require_all and len(present) != len(wanted):
            raise FileNotFoundError(f"pack {pack} lacks parts {sorted(set(wanted) - set(present))}")
        side = meta["lite_config"]["image_size"]
        ids, pixels = read_pack_images(pack, present, side)
        self.slot = -np.ones(meta["n_train"] + meta["n_test"], dtype=np.int64)
        self.slot[ids] = np.arange(len(ids))
        self.pixels = torch.as_tensor(pixels, device=device)
        have = self.slot >= 0
        self.fit = np.array([i for i in meta["fit_ids"] if have[i]])
        self.val = np.array([i for i in meta["val_ids"] if have[i]])
        self.test = np.array([i for i in meta["test_ids"] if have[i]])
        self.caps_of = captions_by_image(self.caption_image, len(self.slot))

    def images(self, image_ids: np.ndarray) -> torch.Tensor:
        return self.pixels[torch.as_tensor(self.slot[image_ids], device=self.pixels.device)]


@torch.no_grad()
def evaluate(model: EndToEndLite, data: PackData, image_ids: np.ndarray, batch: int = 500) -> dict[str, float]:
    """R@1/5/10 both ways and rsum over ``image_ids`` and all their captions (eval.recall, tie-aware)."""
    model.eval()
    size = model.config["image_size"]
    dev_type = data.pixels.device.type
    with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=dev_type == "cuda"):
        img = torch.cat([model.image_embedding(eval_pixels(data.images(image_ids[s:s + batch]), size)).float()
                         for s in range(0, len(image_ids), batch)])
        caps = np.concatenate([data.caps_of[i] for i in image_ids])
        owner = np.concatenate([[j] * len(data.caps_of[i]) for j, i in enumerate(image_ids)])
        txt = []
        for s in range(0, len(caps), 1024):
            rows = torch.as_tensor(caps[s:s + 1024], device=data.ids.device)
            length = int(data.mask[rows].sum(1).max())
            txt.append(model.text_embedding(data.ids[rows, :length], data.mask[rows, :length]).float())
    img, txt = F.normalize(img, dim=-1), F.normalize(torch.cat(txt), dim=-1)
    return retrieval_recall((txt @ img.T).cpu().numpy(), owner)


def parameter_groups(model: EndToEndLite, o: EndToEndOptions) -> list[dict[str, Any]]:
    """Heads, image tower, text tower at their own rates; no weight decay on biases, norms and embeddings."""
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        part = "image" if name.startswith("image_tower.") else "text" if name.startswith("text_tower.") else "head"
        decay = p.ndim >= 2 and "embeddings" not in name
        groups.setdefault((part, decay), []).append(p)
    lr = {"head": o.head_lr, "image": o.image_lr, "text": o.text_lr}
    return [{"params": ps, "lr": lr[part], "weight_decay": o.weight_decay if decay else 0.0, "name": part}
            for (part, decay), ps in groups.items()]


def train_end_to_end(model: EndToEndLite, data: PackData, o: EndToEndOptions,
                     log: Any = print) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Symmetric InfoNCE on augmented pixels through every layer; returns the best held-out state and the history.

    The image tower's batch norms keep ImageNet's statistics (eval mode, as the shipped recipe),
    so a step does not depend on its batch; their scales and shifts train. bf16 autocast on CUDA.
    """
    device = data.pixels.device
    torch.manual_seed(o.seed)
    gen = torch.Generator().manual_seed(o.seed)
    rng = np.random.default_rng(o.seed + 1)
    optimizer = torch.optim.AdamW(parameter_groups(model, o))
    base = [g["lr"] for g in optimizer.param_groups]
    steps_per_epoch = max(len(data.fit) // o.batch_size, 1)
    total = steps_per_epoch * o.epochs
    size = model.config["image_size"]
    t0, step, history = time.time(), 0, []
    best, best_state = -1.0, None
    for epoch in range(o.epochs):
        model.train()
        model.image_tower.eval()
        perm = rng.permutation(data.fit)
        start, losses = time.time(), []
        for b in range(steps_per_epoch):
            images = perm[b * o.batch_size:(b + 1) * o.batch_size]
            caps, owner = sample_captions(images, data.caps_of, o.captions_per_image, rng)
            rows = torch.as_tensor(caps, device=device)
            factor = warmup_cosine(step, o.warmup_steps, total)
            for g, lr in zip(optimizer.param_groups, base):
                g["lr"] = lr * factor
            pixels = random_resized_crops(data.images(images), size, gen, scale=(o.crop_scale, 1.0))
            length = int(data.mask[rows].sum(1).max())
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                img = model.image_embedding(pixels)
                txt = model.text_embedding(data.ids[rows, :length], data.mask[rows, :length])
            loss = contrastive_loss(img.float(), txt.float(), torch.as_tensor(owner, device=device), model.logit_scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
            step += 1
        metrics = evaluate(model, data, data.val)
        history.append({"epoch": epoch + 1, "loss": float(torch.stack(losses).mean()), **metrics,
                        "seconds": round(time.time() - start, 1)})
        log(json.dumps(history[-1]))
        if metrics["rsum"] > best:
            best = metrics["rsum"]
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if time.time() - t0 > o.max_seconds:
            history.append({"stopped": f"after epoch {epoch + 1} of {o.epochs}: {o.max_seconds:.0f} s budget"})
            log(json.dumps(history[-1]))
            break
    assert best_state is not None
    return best_state, history


def run(pack: Path, options: EndToEndOptions, out: Path, device: str = "cuda", require_all: bool = True,
        log: Any = print) -> dict[str, Any]:
    """One setting: the starting point (the shipped heads, no concepts) and the fine-tuned best epoch on the
    held-out images; writes ``report.json`` and the best state (``best.safetensors``, fp16) to ``out``.
    Test is not looked at here (:func:`select_and_test`)."""
    from safetensors.torch import save_file

    dev = torch.device(device)
    model, meta = EndToEndLite.from_pack(pack)
    model.to(dev)
    if dev.type == "cuda":
        model.image_tower.to(memory_format=torch.channels_last)
    data = PackData(pack, meta, dev, require_all=require_all, parts=[p for p in meta["parts"] if p != TEST_PART])
    log(json.dumps({"images": {"fit": len(data.fit), "val": len(data.val)},
                    "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"}))
    report: dict[str, Any] = {"options": asdict(options), "start_val": evaluate(model, data, data.val)}
    log(json.dumps({"start_val": report["start_val"]}))
    t0 = time.time()
    state, history = train_end_to_end(model, data, options, log)
    report["train_seconds"] = round(time.time() - t0, 1)
    report["history"] = history
    best = max((h for h in history if "rsum" in h), key=lambda h: h["rsum"])
    report["best_epoch"], report["best_val"] = best["epoch"], {k: v for k, v in best.items() if k != "epoch"}
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() if v.is_floating_point() else v.contiguous() for k, v in state.items()},
              str(out / "best.safetensors"))
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def select_and_test(pack: Path, runs: Sequence[Path], device: str = "cuda", log: Any = print,
                    export: Path | None = None, shard_mib: int = 15) -> dict[str, Any]:
    """Picks the setting with the best held-out rsum (never test), then measures the starting point and
    that setting on the test images, on the same pixels: test is looked at once.

    ``export``: also write the chosen weights there (fp16, safetensors shards of at most
    ``shard_mib`` MiB with their index, as ``huggingface_hub.save_torch_state_dict`` lays them out,
    so they come back through the device tool's 16 MiB-a-file limit) and ``export.json`` (the
    configs, the kept token ids and the summary), which is how the weights leave a lease.
    """
    from safetensors.torch import load_file

    reports = {str(r): json.loads((r / "report.json").read_text()) for r in runs if (r / "report.json").is_file()}
    if not reports:
        raise FileNotFoundError(f"no report.json under any of {[str(r) for r in runs]}")
    chosen = max(reports, key=lambda r: reports[r]["best_val"]["rsum"])
    dev = torch.device(device)
    model, meta = EndToEndLite.from_pack(pack)
    model.to(dev)
    data = PackData(pack, meta, dev, parts=[TEST_PART])
    summary: dict[str, Any] = {
        "settings": {r: {"options": rep["options"], "start_val_rsum": rep["start_val"]["rsum"],
                         "best_epoch": rep["best_epoch"], "best_val": rep["best_val"],
                         "train_seconds": rep["train_seconds"]} for r, rep in reports.items()},
        "chosen": chosen, "test_images": len(data.test), "start_test": evaluate(model, data, data.test)}
    model.load_state_dict({k: v.float() for k, v in load_file(str(Path(chosen) / "best.safetensors")).items()})
    summary["chosen_test"] = evaluate(model, data, data.test)
    log(json.dumps({k: summary[k] for k in ("chosen", "start_test", "chosen_test")}))
    if export is not None:
        from huggingface_hub import save_torch_state_dict

        export.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().half().cpu().contiguous() for k, v in model.state_dict().items()}
        save_torch_state_dict(state, str(export), max_shard_size=shard_mib * 2**20)
        keep = ("lite_config", "bert_config", "vocab", "n_train", "n_test", "fit_format", "source")
        (export / "export.json").write_text(json.dumps({**{k: meta[k] for k in keep}, "summary": summary}))
    return summary
