"""Trains the offline cross-encoder (``rerank/cross_encoder.py``) on Flickr8K train (the CLI of
``eval.cross_encoder_training``).

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
import json
import time
from pathlib import Path

import torch

from common.lite_model import WEIGHTS_DIR as LITE_DIR, load_lite_model
from eval.cross_encoder_training import (
    TrainOptions, ensemble_heads, head_config, save_model, subset, train, train_features, training_record,
    validation_images,
)
from eval.karpathy import load_karpathy
from rerank.cross_encoder import ATTENTION_DIRECTIONS, CrossEncoderHead, lite_feature_source

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = ROOT.parent / "shared" / "data" / "flickr8k"
    d = TrainOptions()
    p.add_argument("--annotations", type=Path, default=data / "dataset_flickr8k.json")
    p.add_argument("--images", type=Path, default=data / "images")
    p.add_argument("--output", type=Path, required=True,
                   help="a run directory (runs/...); the shipped head is rerank/weights/cross-encoder")
    p.add_argument("--cache", type=Path, default=ROOT / "cache")
    p.add_argument("--lite", type=Path, default=LITE_DIR, help="the lite encoder directory whose towers the head reads")
    p.add_argument("--val-images", type=int, default=d.val_images)
    p.add_argument("--bits", type=int, default=d.bits)
    p.add_argument("--candidates", type=int, default=d.candidates)
    p.add_argument("--negatives-from", type=int, default=d.negatives_from)
    p.add_argument("--group", type=int, default=d.group, help="candidates per query in a training group (1 positive)")
    p.add_argument("--hard-fraction", type=float, default=d.hard_fraction,
                   help="share of a group's negatives from stage 1")
    p.add_argument("--hard-fraction-end", type=float, default=d.hard_fraction_end,
                   help="ramp the hard share linearly to this by the last step (VSE++'s warm start: random "
                        "negatives get the head off the ground, hard ones teach the top of the list)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="queries per direction per step")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--features", choices=["tuned", "frozen"], default=d.features,
                   help="token features: the lite towers' tuned tops, or the frozen activations entering them")
    p.add_argument("--attention", choices=list(ATTENTION_DIRECTIONS), default=d.attention,
                   help="t2i: caption tokens attend over image regions; i2t: regions attend over tokens")
    p.add_argument("--ensemble", nargs="+", type=Path, default=None, metavar="DIR",
                   help="no training: score these trained heads together (match logits summed, one ITC term; "
                        "SCAN ensembles its t-i and i-t models so), choose the ITC scale on validation, save "
                        "the ensemble to --output")
    p.add_argument("--itc-in-loss", type=float, default=d.itc_in_loss,
                   help="ITC scale inside the training loss (0: the head learns to match on its own; the "
                        "fusion scale is chosen on validation either way)")
    p.add_argument("--dim", type=int, default=d.dim)
    p.add_argument("--heads", type=int, default=d.heads)
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # before the lite model is built: the head's init follows it, as it always has
    options = TrainOptions(
        val_images=args.val_images, bits=args.bits, candidates=args.candidates, negatives_from=args.negatives_from,
        group=args.group, hard_fraction=args.hard_fraction, hard_fraction_end=args.hard_fraction_end,
        batch_size=args.batch_size, steps=args.steps, lr=args.lr, weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps, eval_every=args.eval_every, features=args.features,
        attention=args.attention, itc_in_loss=args.itc_in_loss, dim=args.dim, heads=args.heads,
        dropout=args.dropout, seed=args.seed)
    lite = load_lite_model(args.lite)
    lite_features = lite_feature_source(lite)
    data = load_karpathy(args.annotations, args.images, "train")
    feats = train_features(lite, data, options.features, args.cache, args.lite)
    val_images, fit_images = validation_images(data.n_images, options.val_images)

    t0 = time.time()
    val = subset(feats, data.caption_image, val_images, options, float_sorted=False)
    if args.ensemble:
        result = ensemble_heads(args.ensemble, feats, val)
        print("val float rescoring:", json.dumps({k: round(v, 4) for k, v in result.float_rescoring.items()}))
        print(f"val ensemble (itc_scale {result.itc_scale}):",
              json.dumps({k: round(v, 4) for k, v in result.best.items()}))
        save_model(args.output, result.ensemble.state_dict(), result.config, result.training, lite_features)
        print(f"saved {args.output}")
        return
    fit = subset(feats, data.caption_image, fit_images, options, float_sorted=True)
    print(f"stage-1 candidates in {time.time() - t0:.0f}s", flush=True)

    config = head_config(lite, feats, options)
    head = CrossEncoderHead(**config)
    result = train(head, feats, fit, val, options)
    save_model(args.output, result.state, {**config, "init_itc_scale": float(result.state["itc_scale"])},
               training_record(options, result), lite_features)
    print(f"saved {args.output}: {json.dumps(result.best)}")


if __name__ == "__main__":
    main()
