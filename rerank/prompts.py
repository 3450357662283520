"""The query rewriter's prompt: one place, so training (``scripts/train_rewriter.py``) and
inference (:mod:`rerank.rewrite`) render exactly the same text.

Without an adapter the LLM is prompted few-shot: a system instruction, then three keyword ->
caption turns whose captions are Flickr8K *train* captions (captions 50, 1 and 1000 of Karpathy's
train split in ``load_karpathy`` order; never test) and whose keywords are :func:`eval.keywords.caption_keywords` of them.
A LoRA adapter is trained on the zero-shot form (system + the query), which it then expects:
shorter prompts are also cheaper, since prefilling the prompt dominates a 135M model's latency.

Tokenizers with a chat template get it applied (SmolLM2's ChatML); others get a plain
``Keywords: ... / Caption:`` layout.
"""

from __future__ import annotations

import re
from typing import Any

#: Bump when any text below changes: rewrite caches and trained adapters are keyed by it.
PROMPT_VERSION = 1

SYSTEM = (
    "You turn image-search keywords into one short, literal caption of a photo that matches them. "
    "Use every keyword and add only ordinary details."
)

#: (keywords, caption): Flickr8K train captions, tidied by :func:`tidy_caption`.
FEW_SHOT: tuple[tuple[str, str], ...] = (
    ("brown white dog running snow", "A brown and white dog is running through the snow."),
    ("girl going wooden building", "A girl going into a wooden building."),
    (
        "crowd people standing together sidewalk one man taking picture",
        "A crowd of people are standing together on a sidewalk, while one man is taking a picture.",
    ),
)


def tidy_caption(caption: str) -> str:
    """Karpathy's tokenised spacing (``"grass ."``, ``"jacket ,"``) back to prose, one final period."""
    text = re.sub(r"\s+([.,!?;:])", r"\1", " ".join(caption.split()))
    text = text.rstrip(" .")
    return f"{text[:1].upper()}{text[1:]}." if text else ""


def user_turn(keywords: str) -> str:
    return f"Keywords: {keywords}"


def messages(keywords: str, few_shot: bool) -> list[dict[str, str]]:
    turns = [{"role": "system", "content": SYSTEM}]
    if few_shot:
        for kw, caption in FEW_SHOT:
            turns += [{"role": "user", "content": user_turn(kw)}, {"role": "assistant", "content": caption}]
    turns.append({"role": "user", "content": user_turn(keywords)})
    return turns


def render_prompt(tokenizer: Any, keywords: str, few_shot: bool) -> str:
    """The prompt text up to where the caption starts; tokenise it with ``add_special_tokens=False``."""
    turns = messages(keywords, few_shot)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    parts = [SYSTEM]
    if few_shot:
        parts += [f"{user_turn(kw)}\nCaption: {caption}" for kw, caption in FEW_SHOT]
    parts.append(f"{user_turn(keywords)}\nCaption:")
    return "\n\n".join(parts)


def answer_suffix(tokenizer: Any) -> str:
    """What ends a caption in training targets, so generation learns to stop: the EOS token."""
    eos = getattr(tokenizer, "eos_token", None)
    return eos if eos else "\n"
