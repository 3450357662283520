"""A vision-language model as stage 2: one prompt holds the query and a candidate, score = logit("yes") - logit("no").

How the field scores a pair. The open multimodal rerankers of 2025-2026 (Qwen3-VL-Reranker 2B/8B,
jina-reranker-m0, MonoQwen2-VL, LamRA, Lychee-rerank-mm) put the query and one candidate into one
chat prompt and read the next-token logits at the last position: the pair's score is
``logit(yes) - logit(no)`` (the log-odds; MonoQwen2-VL reads "True" against "False"). Qwen3-VL-Reranker's own
code folds the two ``lm_head`` rows into one linear layer ``w_yes - w_no`` and applies a sigmoid, which
is monotone in the same difference, so rankings agree. Any transformers image-text-to-text checkpoint
(``AutoModelForImageTextToText``: Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Idefics3/SmolVLM, ...) can score this
way; its own chat template renders the prompt, its own processor the images.

The prompt. The default is Qwen3-VL-Reranker's published one (``QwenLM/Qwen3-VL-Embedding``,
``Qwen3VLReranker.format_mm_instruction``; the same text is in vLLM's ``qwen3_vl_reranker.jinja``): a
system message (:data:`QWEN3_VL_RERANKER_SYSTEM`) and a user turn
``<Instruct>: {instruction}<Query>:{query}\\n<Document>:{document}``, where ``{query}`` and ``{document}``
become an image part or a text part of the message, in place. The instruction is the published
default for all three directions (text->image, image->text, image->image); each direction's template
is its own setting (``prompt_t2i``, ``prompt_i2t``, ``prompt_i2i``), as are the system message and the
two answer tokens, so a True/False checkpoint such as MonoQwen2-VL is a configuration
(:data:`MONOQWEN2_VL`), not code.

Why not sentence-transformers' multimodal CrossEncoder (>= 5.4; 6.2 is installed). Its
``Transformer(transformer_task="any-to-any") + LogitScore`` computes the same number, but it turns a
(query, document) pair into two chat messages with roles ``"query"`` and ``"document"``, which only a
chat template written for those roles (the ST-converted reranker repos ship one) renders as the
published prompt; stock templates print them as turns of unknown speakers (``<|im_start|>query`` in
Qwen's ChatML, ``Query:`` in SmolVLM's), and the per-direction templates above have no place in it.
And ``CrossEncoder(path)`` on a plain VLM directory takes its sequence-classification branch for any
architecture not named ``*ForCausalLM`` (every ``*ForConditionalGeneration`` VLM): with 6.2 a Qwen3-VL
directory fails there (no such class), and where a class exists the score comes from a newly
initialised head that transformers only logs a warning about; older releases had no ``LogitScore``
path at all. Here the scoring is a few lines of transformers, and the load refuses anything that would
score with random weights: every weight of the generation head must come from the checkpoint
(``missing_keys`` empty), a sequence-classification conversion is refused by name, and each answer
word must be a single known token of the checkpoint's vocabulary.

Batches. Pairs are left-padded, so the last position of every row is the real last prompt token and
``logits_to_keep=1`` computes only it; RoPE positions are relative, and the Qwen-VL models compute
their multimodal positions from the attention mask, so a pair's score does not depend on its batch
mates or their order (tested within 1e-3 in fp32). Weights load in ``precision``: bf16 on CUDA by
default (what Qwen3-VL was trained in; fp16 is offered, and a non-finite score is an error rather than
a ranking), fp32 on CPU; the logit difference is taken in fp32.

The cascade. Each pair is a full VLM forward pass over the prompt plus the image's tokens (a 500x375
Flickr photo is ~190 tokens for Qwen3-VL), so the VLM sees only the ``vlm_k`` best candidates of the
previous stage (``first``: the ``float`` reranker by default, or ``cross``, ``blip2``, any reranker, or
None for the stage-1 scores themselves). Over those, ``z(vlm) + fusion_weight * z(previous)``
(:func:`rerank.fusion.fuse`; weight 0, the default, ranks by the VLM alone); the other candidates
follow below all of them, in the previous stage's order (their scores say only that place). The
Retriever then fuses the result with stage 1 as for every reranker.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from common.checks import check_int
from common.images import load_image

from .base import Candidates, Query, Reranker, create_reranker, register_reranker, reranker_from_config
from .fusion import fuse

DEFAULT_MODEL = "Qwen/Qwen3-VL-Reranker-2B"
QWEN3_VL_RERANKER_SYSTEM = ('Judge whether the Document meets the requirements based on the Query and the Instruct '
                            'provided. Note that the answer can only be "yes" or "no".')
QWEN3_VL_RERANKER_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
QWEN3_VL_RERANKER_PROMPT = f"<Instruct>: {QWEN3_VL_RERANKER_INSTRUCTION}<Query>:{{query}}\n<Document>:{{document}}"
#: ``create_reranker("vlm", **MONOQWEN2_VL)``: lightonai/MonoQwen2-VL-v0.1's prompt (image document
#: first), answer words and base model; the checkpoint is a LoRA adapter on that base, merged at load.
MONOQWEN2_VL: dict[str, Any] = {
    "model": "Qwen/Qwen2-VL-2B-Instruct",
    "adapter": "lightonai/MonoQwen2-VL-v0.1",
    "system": "",
    "prompt_t2i": "{document}Assert the relevance of the previous image document to the following query, "
                  "answer True or False. The query is: {query}",
    "yes_token": "True",
    "no_token": "False",
}
PLACEHOLDERS = ("{query}", "{document}")
DIRECTIONS = {("text", "image"): "prompt_t2i", ("image", "text"): "prompt_i2t", ("image", "image"): "prompt_i2i"}
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def prompt_parts(template: str) -> list[str]:
    """``"a{query}b{document}c"`` -> ``["a", "{query}", "b", "{document}", "c"]`` (no str.format: braces
    in an instruction stay literal)."""
    parts: list[str] = []
    rest = template
    while True:
        found = [(rest.find(p), p) for p in PLACEHOLDERS if p in rest]
        if not found:
            parts.append(rest)
            return [p for p in parts if p]
        at, placeholder = min(found)
        parts += [rest[:at], placeholder]
        rest = rest[at + len(placeholder):]


@dataclass(frozen=True)
class VlmConfig:
    """What decides the scores, declared once; :meth:`VlmReranker.config` saves it with ``asdict``.

    ``model``: a Hub id or a directory saved with ``save_pretrained`` (model, processor with chat
    template); ``prompt_*``: the user turn per direction (text->image, image->text, image->image),
    each with one ``{query}`` and one ``{document}``; ``system``: the system message ("" for none);
    ``yes_token`` / ``no_token``: the answer words, each one token; ``vlm_k``: how many of the previous
    stage's best candidates the VLM rescores; ``fusion_weight``: of the previous stage's z-score among
    them; ``batch_size``: pairs per forward pass; ``max_pixels``: images larger than this are scaled
    down first (None: the checkpoint's processor alone decides); ``adapter``: a PEFT LoRA directory or
    Hub id merged into the model after loading (MonoQwen2-VL is published as one).
    """

    model: str = DEFAULT_MODEL
    system: str = QWEN3_VL_RERANKER_SYSTEM
    prompt_t2i: str = QWEN3_VL_RERANKER_PROMPT
    prompt_i2t: str = QWEN3_VL_RERANKER_PROMPT
    prompt_i2i: str = QWEN3_VL_RERANKER_PROMPT
    yes_token: str = "yes"
    no_token: str = "no"
    vlm_k: int = 32
    fusion_weight: float = 0.0
    batch_size: int = 8
    max_pixels: int | None = None
    adapter: str | None = None
    revision: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", os.fspath(self.model))
        for name in ("system", "yes_token", "no_token", "prompt_t2i", "prompt_i2t", "prompt_i2i"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a string, got {type(getattr(self, name)).__name__}")
        for name in ("prompt_t2i", "prompt_i2t", "prompt_i2i"):
            template = getattr(self, name)
            counts = [template.count(p) for p in PLACEHOLDERS]
            if counts != [1, 1]:
                raise ValueError(f"{name} must hold {{query}} and {{document}} once each, got {template!r}")
        for name in ("yes_token", "no_token"):
            if not getattr(self, name).strip():
                raise ValueError(f"{name} must be a non-empty word, got {getattr(self, name)!r}")
        if self.yes_token == self.no_token:
            raise ValueError(f"yes_token and no_token must differ, both are {self.yes_token!r}")
        object.__setattr__(self, "vlm_k", check_int("vlm_k", self.vlm_k))
        object.__setattr__(self, "batch_size", check_int("batch_size", self.batch_size))
        if self.max_pixels is not None:
            object.__setattr__(self, "max_pixels", check_int("max_pixels", self.max_pixels, low=64))
        if isinstance(self.fusion_weight, bool) or not isinstance(self.fusion_weight, (int, float)) or not (
                math.isfinite(self.fusion_weight) and self.fusion_weight >= 0):
            raise ValueError(f"fusion_weight must be a finite number >= 0, got {self.fusion_weight!r}")
        object.__setattr__(self, "fusion_weight", float(self.fusion_weight))
        if self.adapter is not None:
            object.__setattr__(self, "adapter", os.fspath(self.adapter))
        if self.revision is not None and not isinstance(self.revision, str):
            raise ValueError(f"revision must be a string or None, got {self.revision!r}")


class PendingImage:
    """An image of a pair, decoded only when its batch runs; ``index`` names it in errors."""

    __slots__ = ("item", "index")

    def __init__(self, item: Any, index: int | None) -> None:
        self.item, self.index = item, index

    def decoded(self) -> Any:
        return load_image(self.item, self.index)


def answer_token_id(tokenizer: Any, word: str, name: str, model: str) -> int:
    """The one vocabulary id of ``word`` as the model would write it first; a word of several tokens
    (or the unknown token) cannot be read off one logit, so it is an error."""
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1 or (tokenizer.unk_token_id is not None and ids[0] == tokenizer.unk_token_id):
        raise ValueError(f"{name}={word!r} is {len(ids)} token(s) {ids} for {model!r}'s tokenizer; the score "
                         f"reads one next-token logit per answer, so it must be exactly one known token")
    return int(ids[0])


@register_reranker
class VlmReranker(Reranker):
    """``create_reranker("vlm", model="Qwen/Qwen3-VL-Reranker-2B", first="float")``; see the module docstring.

    Scoring settings are a :class:`VlmConfig` (``model`` positional, the rest by name). ``first`` is the
    previous stage: a reranker, its name or saved config, or None for the stage-1 scores. The other
    arguments only change how it runs: ``device``, ``precision`` (bf16 on CUDA, fp32 elsewhere by default),
    ``progress``, and ``token`` / ``cache_dir`` for :func:`common.hub.resolve_pretrained_dir`.
    """

    method = "vlm"

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        first: Reranker | str | dict[str, Any] | None = "float",
        device: str | torch.device | None = None,
        precision: str | None = None,
        progress: bool | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        **settings: Any,
    ) -> None:
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        from common.device import default_device
        from common.hub import resolve_pretrained_dir

        self.settings = VlmConfig(**({} if model is None else {"model": model}), **settings)
        if isinstance(first, str):
            first = None if first in ("none", "stage1") else create_reranker(first)
        elif isinstance(first, dict):
            first = reranker_from_config(first)
        if first is not None and not isinstance(first, Reranker):
            raise TypeError(f"first must be a Reranker, a reranker name, a reranker config or None, "
                            f"got {type(first).__name__}")
        if isinstance(first, VlmReranker):
            raise ValueError("first must be a cheaper stage than the VLM itself, got another 'vlm' reranker")
        self.first = first
        self.requires = frozenset({"query", "items"}) | (first.requires if first is not None else frozenset())
        self.same_modality = first.same_modality if first is not None else True
        self.device = torch.device(device) if device is not None else default_device()
        precision = precision or ("bf16" if self.device.type == "cuda" else "fp32")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        self.progress = progress

        directory = resolve_pretrained_dir(self.settings.model, ["config.json"], revision=self.settings.revision,
                                           token=token, cache_dir=cache_dir)
        config = AutoConfig.from_pretrained(directory)
        heads = [a for a in (getattr(config, "architectures", None) or []) if a.endswith("ForSequenceClassification")]
        if heads:
            raise ValueError(f"{self.settings.model!r} is a sequence-classification conversion ({heads[0]}); the vlm "
                             "reranker reads the language-model head's yes/no logits: use the original checkpoint")
        try:
            loaded, info = AutoModelForImageTextToText.from_pretrained(
                directory, dtype=PRECISIONS[precision], output_loading_info=True)
        except ValueError as e:
            raise ValueError(f"{self.settings.model!r} ({config.model_type}) is not an image-text-to-text checkpoint "
                             f"that transformers can load: {e}") from e
        if info["missing_keys"]:
            missing = sorted(info["missing_keys"])
            raise ValueError(f"{self.settings.model!r} has no weights for {', '.join(missing[:5])}"
                             f"{' ...' if len(missing) > 5 else ''}; scoring would use random ones")
        if self.settings.adapter is not None:
            from .rewrite import apply_adapter

            loaded = apply_adapter(loaded, self.settings.adapter)
        self.model = loaded.to(self.device).eval()
        self.processor = AutoProcessor.from_pretrained(directory)
        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is None or getattr(self.processor, "image_processor", None) is None:
            raise ValueError(f"{self.settings.model!r} has no tokenizer or image processor; save its processor with it")
        if not (getattr(self.processor, "chat_template", None) or getattr(tokenizer, "chat_template", None)):
            raise ValueError(f"{self.settings.model!r} has no chat template; the prompt is rendered with the "
                             "checkpoint's own (save it with the processor)")
        tokenizer.padding_side = "left"
        self.yes_id = answer_token_id(tokenizer, self.settings.yes_token, "yes_token", self.settings.model)
        self.no_id = answer_token_id(tokenizer, self.settings.no_token, "no_token", self.settings.model)

    # -- settings and the interface ----------------------------------------------------------------
    model_id = property(lambda self: self.settings.model)
    vlm_k = property(lambda self: self.settings.vlm_k)
    batch_size = property(lambda self: self.settings.batch_size)

    def config(self) -> dict[str, Any]:
        return {"method": self.method, **asdict(self.settings),
                "first": self.first.config() if self.first is not None else None}

    def attach(self, encoder: Any) -> None:
        if self.first is not None:
            self.first.attach(encoder)

    def forget(self, query: Query) -> None:
        if self.first is not None:
            self.first.forget(query)

    def check(self, query: Query, candidates: Candidates) -> None:
        if query.modality == "text" and candidates.modality == "text":
            raise ValueError("the vlm reranker needs an image on one side: a text query searching texts cannot be "
                             "reranked with it")
        super().check(query, candidates)
        if self.first is None and candidates.stage1_scores is None:
            raise ValueError("reranker 'vlm' with first=None needs Candidates.stage1_scores to choose its vlm_k")

    # -- the prompt --------------------------------------------------------------------------------
    def messages(self, query: Query, query_item: Any, document: Any, document_is_text: bool,
                 ) -> tuple[list[dict[str, Any]], list[Any]]:
        """The chat for one pair and its images in the order the prompt shows them (``{"type": "image"}``
        parts; the processor puts the images' tokens there)."""
        template = getattr(self.settings, DIRECTIONS[(query.modality, "text" if document_is_text else "image")])
        content, images = [], []
        for part in prompt_parts(template):
            if part in PLACEHOLDERS:
                value, is_text = ((query_item, query.modality == "text") if part == "{query}"
                                  else (document, document_is_text))
                if is_text:
                    content.append({"type": "text", "text": value})
                else:
                    content.append({"type": "image"})
                    images.append(value)
            else:
                content.append({"type": "text", "text": part})
        system = [{"role": "system", "content": [{"type": "text", "text": self.settings.system}]}]
        return (system if self.settings.system else []) + [{"role": "user", "content": content}], images

    def _image(self, item: Any) -> Any:
        """A decoded RGB image (``item`` a :class:`PendingImage` or anything :func:`load_image` takes),
        scaled down to ``max_pixels`` if that is set."""
        image = item.decoded() if isinstance(item, PendingImage) else load_image(item)
        limit = self.settings.max_pixels
        if limit is not None and image.width * image.height > limit:
            scale = math.sqrt(limit / (image.width * image.height))
            image = image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))))
        return image

    # -- scoring -----------------------------------------------------------------------------------
    def score(self, query: Query, candidates: Candidates) -> np.ndarray:
        return self.score_batch([query], [candidates])[0]

    def score_batch(self, queries: Sequence[Query], candidates: Sequence[Candidates]) -> list[np.ndarray]:
        self.check_batch(queries, candidates)
        previous = (self.first.score_batch(queries, candidates) if self.first is not None
                    else [np.asarray(c.stage1_scores, dtype=np.float32) for c in candidates])
        heads = [np.argsort(-np.asarray(p, dtype=np.float64), kind="stable")[:self.vlm_k] for p in previous]
        pairs = []  # (query, position, chat, images); images stay paths/arrays until their batch runs
        for q, (query, cands, head) in enumerate(zip(queries, candidates, heads)):
            query_item = PendingImage(query.content, None) if query.modality == "image" else query.content
            for j in head.tolist():
                item = cands.items[j]
                if cands.modality == "text":
                    if not (isinstance(item, str) and item.strip()):
                        raise ValueError(f"candidates of query {q}: Candidates.items[{j}] must be a non-empty "
                                         f"caption string, got {type(item).__name__} {item!r:.60}")
                else:
                    item = PendingImage(item, j)
                pairs.append((q, j, *self.messages(query, query_item, item, cands.modality == "text")))
        vlm = self.score_pairs([p[2] for p in pairs], [p[3] for p in pairs], many_queries=len(queries) > 1)
        got: list[dict[int, float]] = [{} for _ in queries]
        for (q, j, _, _), value in zip(pairs, vlm.tolist()):
            got[q][j] = value
        out = []
        for q, (prev, head) in enumerate(zip(previous, heads)):
            final = np.empty(len(prev), dtype=np.float32)
            if len(head):
                head_scores = fuse(np.asarray(prev)[head], np.array([got[q][j] for j in head.tolist()]),
                                   self.settings.fusion_weight)
                final[head] = head_scores
                tail = np.argsort(-np.asarray(prev, dtype=np.float64), kind="stable")[self.vlm_k:]
                final[tail] = float(np.min(head_scores)) - 1.0 - np.arange(len(tail), dtype=np.float32)
            out.append(final)
        return out

    def score_pairs(self, chats: Sequence[list[dict[str, Any]]], images: Sequence[list[Any]],
                    many_queries: bool = False) -> np.ndarray:
        """``logit(yes) - logit(no)`` at the last position of each rendered chat, as float32.

        Images are decoded per batch (a query image once per batch), so a call over many queries holds
        one batch of pixels at a time.
        """
        texts = [self.processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
                 for chat in chats]
        scores = np.empty(len(texts), dtype=np.float32)
        show = many_queries and len(texts) > self.batch_size if self.progress is None else self.progress
        with torch.inference_mode(), tqdm(total=len(texts), desc="vlm rerank", unit="pair", disable=not show) as bar:
            for start in range(0, len(texts), self.batch_size):
                stop = start + self.batch_size
                decoded: dict[int, Any] = {}
                batch_images = [[decoded[id(i)] if id(i) in decoded else decoded.setdefault(id(i), self._image(i))
                                 for i in row] for row in images[start:stop]]
                inputs = self.processor(text=texts[start:stop], images=batch_images, padding=True, return_tensors="pt")
                if not bool(inputs["attention_mask"][:, -1].all()):
                    raise RuntimeError("the processor padded on the right; the score needs the last prompt token last")
                inputs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
                if "pixel_values" in inputs:
                    inputs["pixel_values"] = inputs["pixel_values"].to(PRECISIONS[self.precision])
                logits = self.model(**inputs, logits_to_keep=1).logits[:, -1].float()
                batch = (logits[:, self.yes_id] - logits[:, self.no_id]).cpu().numpy()
                if not np.isfinite(batch).all():
                    raise RuntimeError(f"the VLM gave non-finite yes/no logits in {self.precision}; "
                                       "run it in bf16 or fp32 (precision=...)")
                scores[start:stop] = batch
                bar.update(len(batch))
        return scores
