"""Trains the lite encoder's tower tops and heads on Flickr8K train (the CLI of ``eval.lite_training``).

Reproducible: seeded, and the frozen trunks of both towers run once into an on-disk cache
(``--cache``), so an epoch only runs the trainable tops. A validation set of ``--val-images``
train images (a fixed seeded draw) picks the best epoch; the test split is never seen here.
Writes ``model.safetensors`` + ``config.json`` to ``--output`` (required: nothing here writes into
the package's shipped weights unless told to). The defaults are the shipped model's recipe:

    python scripts/train_lite.py --output runs/lite

``--class-distill-weight`` above 0 adds issue 23's class distillation
(``eval.lite_training.class_distill_loss``): the tower's ImageNet classifier is the teacher, the
joint space's cosine to the 1,000 class-name prompts (``common.lite_concepts.class_prompts``,
their text trunk cached like the captions') the student, so the text head learns where the class
names sit. Rebuild the concepts of such a model (``scripts/build_lite_concepts.py --model``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from common.lite_model import DEFAULT_CONFIG, IMAGE_TOWERS, LiteModel
from eval.karpathy import load_karpathy
from eval.lite_training import (ClassPrompts, TrainOptions, image_trunk_features, options_record, save_lite,
                                text_trunk_features, train)

ROOT = Path(__file__).resolve().parent.parent
CACHE_IMAGE_STAGE, CACHE_TEXT_LAYER = 6, 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = ROOT.parent / "shared" / "data" / "flickr8k"
    d = TrainOptions()
    p.add_argument("--annotations", type=Path, default=data / "dataset_flickr8k.json")
    p.add_argument("--images", type=Path, default=data / "images")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--cache", type=Path, default=ROOT / "cache")
    p.add_argument("--val-images", type=int, default=500)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per step")
    p.add_argument("--captions-per-image", type=int, default=d.captions_per_image,
                   help="captions of each image in a step (more than 1: multi-positive image->text loss)")
    p.add_argument("--lr", type=float, default=d.lr, help="heads")
    p.add_argument("--tower-lr", type=float, default=d.tower_lr, help="trainable tower tops")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--hard-weight", type=float, default=d.hard_weight, help="weight of VSE++'s max-of-hinges term")
    p.add_argument("--hard-start-epoch", type=int, default=d.hard_start_epoch, help="epochs of plain InfoNCE first")
    p.add_argument("--margin", type=float, default=d.margin)
    p.add_argument("--views", type=int, default=d.views, help="augmented views of each train image, cached once")
    p.add_argument("--class-distill-weight", type=float, default=d.class_distill_weight,
                   help="weight of the ImageNet class distillation term (0: off, the shipped recipe)")
    p.add_argument("--class-distill-temperature", type=float, default=d.class_distill_temperature,
                   help="softmax temperature of the teacher (the tower's ImageNet classifier)")
    p.add_argument("--class-distill-tau", type=float, default=d.class_distill_tau,
                   help="cosine temperature of the student (image vs class-name prompt)")
    p.add_argument("--class-distill-classes", type=int, default=d.class_distill_classes,
                   help="classes per step (half the batch's surest, half random; 1000: all)")
    p.add_argument("--class-distill-text-only", action="store_true",
                   help="the distillation term trains the text side only (no gradient into the image embedding)")
    p.add_argument("--image-tower", default=DEFAULT_CONFIG["image_tower"], choices=sorted(IMAGE_TOWERS))
    p.add_argument("--image-size", type=int, default=DEFAULT_CONFIG["image_size"],
                   help="input side (Lite0 224, Lite1 240, Lite2 260 natively)")
    p.add_argument("--image-trainable-stages", type=int, default=DEFAULT_CONFIG["image_trainable_stages"])
    p.add_argument("--text-trainable-layers", type=int, default=DEFAULT_CONFIG["text_trainable_layers"])
    p.add_argument("--image-pool", default=DEFAULT_CONFIG["image_pool"], choices=["avg", "attention"])
    p.add_argument("--embed-dim", type=int, default=DEFAULT_CONFIG["embed_dim"])
    p.add_argument("--dropout", type=float, default=DEFAULT_CONFIG["dropout"])
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = {**DEFAULT_CONFIG, "embed_dim": args.embed_dim, "image_tower": args.image_tower, "image_size": args.image_size,
              "image_pool": args.image_pool, "image_trainable_stages": args.image_trainable_stages,
              "text_trainable_layers": args.text_trainable_layers, "dropout": args.dropout}
    model = LiteModel(config)
    data = load_karpathy(args.annotations, args.images, "train")
    # Caches are taken at most at the shipped recipe's split (stage 6, layer 4), so that variants training
    # less share them; frozen layers above a cache run once before the first epoch.
    image_from, text_from = min(model.image_split, CACHE_IMAGE_STAGE), min(model.text_split, CACHE_TEXT_LAYER)
    trunk = image_trunk_features(model, data.image_paths, args.cache, image_from, views=args.views, seed=args.seed)
    hidden, mask = text_trunk_features(model, data.captions, args.cache, text_from)
    classes = None
    if args.class_distill_weight:
        from common.lite_concepts import class_prompts

        texts, owner = class_prompts()
        classes = ClassPrompts(*text_trunk_features(model, texts, args.cache, text_from), owner, text_from)
    order = np.random.default_rng(args.seed).permutation(data.n_images)  # eval.validation.held_out_train's draw
    val_ids, fit_ids = np.sort(order[:args.val_images]), np.sort(order[args.val_images:])
    options = TrainOptions(epochs=args.epochs, batch_size=args.batch_size, captions_per_image=args.captions_per_image,
                           lr=args.lr, tower_lr=args.tower_lr, weight_decay=args.weight_decay,
                           warmup_steps=args.warmup_steps, hard_weight=args.hard_weight,
                           hard_start_epoch=args.hard_start_epoch, margin=args.margin, views=args.views, seed=args.seed,
                           class_distill_weight=args.class_distill_weight,
                           class_distill_temperature=args.class_distill_temperature,
                           class_distill_tau=args.class_distill_tau, class_distill_classes=args.class_distill_classes,
                           class_distill_text_only=args.class_distill_text_only)
    state, history = train(model, trunk, hidden, mask, data.caption_image, val_ids, fit_ids, options,
                           image_from, text_from, classes)
    best = max(history, key=lambda h: h["rsum"])
    training = {"data": "Flickr8K train (Karpathy split), minus a seeded validation draw",
                "val_images": args.val_images, **options_record(options), "best_epoch": best["epoch"],
                "best_val_rsum": best["rsum"], "history": history}
    save_lite(args.output, config, state, training)
    print(f"saved {args.output} (best val rsum {best['rsum']:.2f} at epoch {best['epoch']})")
    return best


if __name__ == "__main__":
    main()
