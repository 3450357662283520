"""BLIP-2 reranking: the Q-Former's image-text matching (ITM) head fused with its contrastive (ITC) score.

What is summed follows LAVIS' BLIP-2 retrieval evaluation exactly
(``salesforce/LAVIS: lavis/models/blip2_models/blip2.py`` ``compute_sim_matrix`` and
``blip2_qformer.py`` ``compute_itm``; its Flickr30K config
``lavis/projects/blip2/eval/ret_flickr_eval.yaml`` reranks ``k_test: 128`` candidates)::

    final = itm + itc
    itc   = max over the 32 query tokens q of  <normalize(vision_proj(Z_q)), normalize(text_proj(t_CLS))>
    itm   = mean over the query tokens q of  itm_head(H_q)[1]          (itm="logit", LAVIS' choice)
          | softmax(mean over q of itm_head(H_q))[1]                   (itm="probability")

``Z`` is the Q-Former's output for the learned queries cross-attending to the image (no text),
``t_CLS`` its [CLS] output for the text alone, and ``H`` its output for queries and text together
(queries see the text through self-attention and the image through cross-attention). ``itc`` is
the raw cosine, not divided by the temperature. LAVIS adds the *positive-class logit*, not the
softmax probability and not the logit difference, so ``itm="logit"`` is the default. The issue's
"ITM probability" is ``itm="probability"``: the softmax that LAVIS' ITM demo and the transformers
docs apply to the same query-averaged two-class logits (``blip2_image_text_matching.py``
``Blip2ITM.forward(match_head="itm")``) to judge a single pair. The transformers model computes
the same two heads in ``Blip2ForImageTextRetrieval.forward`` (``use_image_text_matching_head``);
this module calls the same submodules (vision model, Q-Former, projections, ITM head) directly so
that each image's ViT pass can be reused across candidates and queries. Texts get LAVIS' caption
cleaning first (``text_preprocess="lavis"``: ``BlipCaptionProcessor.pre_caption`` in
``lavis/processors/blip_processors.py``: lower-case, ``.!"()*#:;~`` to spaces, at most 50 words)
and are tokenised to at most 35 tokens, as ``compute_sim_matrix`` does. Images get the
checkpoint's own image processor (size, resampling and normalisation saved with the weights).
Scores are per candidate; mixing them with stage-1 scores is :mod:`rerank.fusion`'s job.

Cost. ITC needs one ViT + Q-Former pass per image and one Q-Former pass per text, after which a
pair is a dot product; that is why it can rank a whole collection. ITM cannot be factored that
way: every (query, candidate) pair is a full Q-Former pass (32 queries + up to 35 text tokens,
12 layers, cross-attending to the ViT's 257 tokens every other layer), so ranking N items
for Q queries costs Q x N such passes. That is why it only sees the stage-1 top-k. The ViT-g
image encoder (~1B parameters) is the most expensive single pass, so each distinct image is
encoded once per call and kept in a small LRU cache across calls (``cache_size`` entries;
ViT-g output is 257 x 1408 values, ~0.7 MB per image in fp16).

Precision: weights stay fp32 and every pass runs under ``torch.autocast`` (fp16 on CUDA by
default, fp32 on CPU), so no pass ever mixes dtypes by hand; loading fp16 weights instead would
leave the Q-Former in fp32 anyway (transformers' ``_keep_in_fp32_modules``) beside an fp16 ViT.
"""

from __future__ import annotations

import hashlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Hashable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from common.checks import check_int
from common.images import load_image

from .base import Candidates, Query, Reranker, register_reranker
from .lru import FeatureCache

DEFAULT_MODEL_ID = "Salesforce/blip2-itm-vit-g"
ITM_MODES = ("logit", "probability")
TEXT_PREPROCESS = ("lavis", "none")
#: ``compute_sim_matrix`` tokenises with ``max_length=35``.
LAVIS_MAX_TOKENS = 35
#: ``BlipCaptionProcessor`` default ``max_words``.
LAVIS_MAX_WORDS = 50
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def lavis_caption(text: str, max_words: int = LAVIS_MAX_WORDS) -> str:
    """LAVIS' ``pre_caption``: the text cleaning its retrieval datasets apply before tokenising."""
    text = re.sub(r"([.!\"()*#:;~])", " ", text.lower())
    text = re.sub(r"\s{2,}", " ", text).rstrip("\n").strip(" ")
    words = text.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else text


class PendingImage:
    """One distinct image of a call: its cache key and, for in-memory inputs, the decoded RGB image.

    The key is what the image *is*, not the candidate id: a file's absolute path, size and mtime, or a
    digest of the decoded pixels. Two collections that reuse the same ids, or a file rewritten in
    place, therefore never receive each other's cached features.
    """

    def __init__(self, item: Any, index: int | None) -> None:
        self.item = item
        self.index = index
        self.image = None
        if isinstance(item, (str, os.PathLike)):
            try:
                stat = os.stat(item)
            except OSError:
                load_image(item, index)  # raises the toolkit's error naming the file
                raise
            self.key: Hashable = ("file", os.path.abspath(item), stat.st_size, stat.st_mtime_ns)
        else:
            self.image = load_image(item, index)
            digest = hashlib.blake2b(self.image.tobytes(), digest_size=16).hexdigest()
            self.key = ("pixels", self.image.size, digest)

    def decoded(self) -> Any:
        return self.image if self.image is not None else load_image(self.item, self.index)


@dataclass(frozen=True)
class Blip2Config:
    """What decides the scores, declared and checked once; :meth:`Blip2Reranker.config` saves it with ``asdict``.

    ``model_id``: a directory saved by ``save_pretrained`` (model + processor) or a Hub repo id;
    ``batch_size`` bounds both the images per ViT batch and the pairs per ITM batch;
    ``max_text_length`` is checked again on load against the checkpoint's Q-Former positions.
    """

    model_id: str = DEFAULT_MODEL_ID
    itm: str = "logit"
    batch_size: int = 32
    max_text_length: int = LAVIS_MAX_TOKENS
    text_preprocess: str = "lavis"
    revision: str | None = None

    def __post_init__(self) -> None:
        if self.itm not in ITM_MODES:
            raise ValueError(f"itm must be one of {ITM_MODES}, got {self.itm!r}")
        if self.text_preprocess not in TEXT_PREPROCESS:
            raise ValueError(f"text_preprocess must be one of {TEXT_PREPROCESS}, got {self.text_preprocess!r}")
        object.__setattr__(self, "batch_size", check_int("batch_size", self.batch_size))
        object.__setattr__(self, "max_text_length", check_int("max_text_length", self.max_text_length, low=2))
        if self.revision is not None and not isinstance(self.revision, str):
            raise ValueError(f"revision must be a string or None, got {self.revision!r}")
        object.__setattr__(self, "model_id", os.fspath(self.model_id))


@register_reranker
class Blip2Reranker(Reranker):
    """``create_reranker("blip2", model_id="Salesforce/blip2-itm-vit-g")``; see the module docstring.

    The scoring settings are a :class:`Blip2Config` (``model_id`` positional, the rest by name);
    the other arguments only change how it runs: ``device``, ``precision`` (default fp16 on CUDA,
    fp32 elsewhere), ``cache_size`` (images), ``num_workers`` (image decoding threads),
    ``progress``, and ``token`` / ``cache_dir`` for :func:`common.hub.resolve_pretrained_dir`
    (cache, ``HF_HUB_OFFLINE``, tokens).
    """

    method = "blip2"
    requires = frozenset({"items"})

    def __init__(
        self,
        model_id: str | os.PathLike | None = None,
        *,
        device: str | torch.device | None = None,
        precision: str | None = None,
        cache_size: int = 256,
        num_workers: int = 4,
        progress: bool | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        **settings: Any,
    ) -> None:
        from transformers import AutoConfig, AutoProcessor, Blip2ForImageTextRetrieval

        from common.device import default_device
        from common.hub import resolve_pretrained_dir

        self.settings = Blip2Config(**({} if model_id is None else {"model_id": model_id}), **settings)
        num_workers = check_int("num_workers", num_workers)
        self.device = torch.device(device) if device is not None else default_device()
        precision = precision or ("fp16" if self.device.type == "cuda" else "fp32")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        self.num_workers = num_workers
        self.progress = progress
        self.cache = FeatureCache(cache_size)

        directory = resolve_pretrained_dir(self.model_id, ["config.json"], revision=self.revision, token=token,
                                           cache_dir=cache_dir)
        model_type = AutoConfig.from_pretrained(directory).model_type
        if model_type != "blip-2":
            raise ValueError(f"{self.model_id!r} is a {model_type!r} checkpoint; the blip2 reranker needs a "
                             f"BLIP-2 image-text retrieval one such as {DEFAULT_MODEL_ID!r}")
        model, info = Blip2ForImageTextRetrieval.from_pretrained(directory, dtype=torch.float32,
                                                                 output_loading_info=True)
        if info["missing_keys"]:
            # e.g. a blip2-opt checkpoint: its ITM/ITC heads would be silently random.
            missing = sorted(info["missing_keys"])
            raise ValueError(f"{self.model_id!r} is not a BLIP-2 retrieval checkpoint: no weights for "
                             f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        self.model = model.to(self.device).eval()
        self.processor = AutoProcessor.from_pretrained(directory)
        for part in ("image_processor", "tokenizer"):
            if getattr(self.processor, part, None) is None:
                raise ValueError(f"{self.model_id!r} has no {part}; save the model with its Blip2Processor")
        limit = int(self.model.config.qformer_config.max_position_embeddings)
        if self.max_text_length > limit:
            raise ValueError(f"max_text_length must be an int in [2, {limit}] for {self.model_id!r}, "
                             f"got {self.max_text_length!r}")

    # the settings, read through the config (one declaration, in Blip2Config)
    model_id = property(lambda self: self.settings.model_id)
    itm = property(lambda self: self.settings.itm)
    batch_size = property(lambda self: self.settings.batch_size)
    max_text_length = property(lambda self: self.settings.max_text_length)
    text_preprocess = property(lambda self: self.settings.text_preprocess)
    revision = property(lambda self: self.settings.revision)

    def config(self) -> dict[str, Any]:
        return {"method": self.method, **asdict(self.settings)}

    def forget(self, query: Query) -> None:
        if query.modality == "image" and query.content is not None:  # texts are not cached
            self.cache.pop(PendingImage(query.content, None).key)

    def cache_info(self) -> dict[str, int]:
        return {"size": len(self.cache), "capacity": self.cache.capacity, "hits": self.cache.hits,
                "misses": self.cache.misses}

    # -- the model's parts, as Blip2ForImageTextRetrieval.forward uses them -----------------------
    def autocast(self) -> Any:
        if self.precision == "fp32":
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    def encode_images(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, 3, H, W) -> ViT patch features (n, P, C) and unit ITC query embeddings (n, Q, D)."""
        m = self.model
        vit = m.vision_model(pixel_values=pixels).last_hidden_state
        query = m.query_tokens.expand(vit.shape[0], -1, -1)
        hidden = m.qformer(query_embeds=query, encoder_hidden_states=vit,
                           encoder_attention_mask=torch.ones(vit.shape[:2], dtype=torch.long, device=vit.device))
        itc = F.normalize(m.vision_projection(hidden.last_hidden_state).float(), dim=-1)
        return vit, itc

    def encode_texts(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token ids (n, L) -> unit ITC text embeddings (n, D) from the [CLS] output."""
        m = self.model
        hidden = m.qformer(query_embeds=m.embeddings(input_ids=ids), query_length=0, attention_mask=mask)
        return F.normalize(m.text_projection(hidden.last_hidden_state[:, 0, :]).float(), dim=-1)

    def itm_logits(self, vit: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Aligned pairs (vit[i], text[i]) -> (n, 2) ITM logits averaged over the query tokens."""
        m = self.model
        query = m.query_tokens.expand(vit.shape[0], -1, -1)
        n_query = query.shape[1]
        attention = torch.cat([torch.ones((len(ids), n_query), dtype=mask.dtype, device=mask.device), mask], dim=1)
        hidden = m.qformer(query_embeds=m.embeddings(input_ids=ids, query_embeds=query), query_length=n_query,
                           attention_mask=attention, encoder_hidden_states=vit,
                           encoder_attention_mask=torch.ones(vit.shape[:2], dtype=torch.long, device=vit.device))
        return m.itm_head(hidden.last_hidden_state[:, :n_query, :]).float().mean(dim=1)

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.text_preprocess == "lavis":
            texts = [lavis_caption(t) for t in texts]
        # The tokenizer, not the processor: Blip2Processor may prepend <image> placeholders that the
        # retrieval model would slice off again; queries are concatenated explicitly in itm_logits.
        tokens = self.processor.tokenizer(texts, padding="longest", truncation=True,
                                          max_length=self.max_text_length, return_tensors="pt")
        return tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)

    # -- images, each encoded once per call and cached across calls -------------------------------
    def _pixels(self, pending: PendingImage) -> torch.Tensor:
        return self.processor.image_processor(images=pending.decoded(), return_tensors="pt")["pixel_values"][0]

    def _image_features(self, pending: Sequence[PendingImage],
                        pool: ThreadPoolExecutor) -> tuple[torch.Tensor, torch.Tensor]:
        found = [self.cache.get(p.key) for p in pending]
        todo = [j for j, f in enumerate(found) if f is None]
        if todo:
            pixels = torch.stack(list(pool.map(self._pixels, [pending[j] for j in todo])))
            with self.autocast():
                vit, itc = self.encode_images(pixels.to(self.device))
            vit = vit.to(PRECISIONS[self.precision])  # what autocast would cast it to in the Q-Former anyway
            for row, j in enumerate(todo):
                # clone(): a cached row must not keep the whole batch tensor alive.
                found[j] = (vit[row].clone(), itc[row].clone())
                self.cache.put(pending[j].key, found[j])
        return torch.stack([f[0] for f in found]), torch.stack([f[1] for f in found])

    # -- scoring -----------------------------------------------------------------------------------
    def score(self, query: Query, candidates: Candidates) -> np.ndarray:
        return self.score_batch([query], [candidates])[0]

    def score_batch(self, queries: Sequence[Query], candidates: Sequence[Candidates]) -> list[np.ndarray]:
        """All pairs of all queries, grouped by image so that each distinct image is encoded once."""
        self.check_batch(queries, candidates)
        texts: dict[str, int] = {}
        images: dict[Hashable, int] = {}
        pending: list[PendingImage] = []
        pairs: list[tuple[int, int, int, int]] = []  # (image, text, query, position)

        def add_text(text: str) -> int:
            return texts.setdefault(text, len(texts))

        def add_image(item: Any, index: int | None) -> int:
            image = PendingImage(item, index)
            if image.key not in images:
                images[image.key] = len(pending)
                pending.append(image)
            return images[image.key]

        for q, (query, cands) in enumerate(zip(queries, candidates)):
            if query.modality == "text":
                t = add_text(query.content)
                pairs += [(add_image(item, j), t, q, j) for j, item in enumerate(cands.items)]
            else:
                i = add_image(query.content, None)
                for j, caption in enumerate(cands.items):
                    if not isinstance(caption, str) or not caption.strip():
                        raise ValueError(f"candidates of query {q}: Candidates.items[{j}] must be a non-empty caption "
                                         f"string for an image query, got {type(caption).__name__} {caption!r:.60}")
                    pairs.append((i, add_text(caption), q, j))

        out = [np.empty(len(c), dtype=np.float32) for c in candidates]
        if not pairs:
            return out
        with torch.inference_mode():
            self._score_pairs(list(texts), pending, np.asarray(pairs, dtype=np.int64), out, len(queries) > 1)
        return out

    def _score_pairs(self, texts: list[str], pending: list[PendingImage], pairs: np.ndarray,
                     out: list[np.ndarray], many_queries: bool) -> None:
        ids, mask = self.tokenize(texts)
        with self.autocast():
            text_itc = torch.cat([self.encode_texts(ids[s:s + self.batch_size], mask[s:s + self.batch_size])
                                  for s in range(0, len(texts), self.batch_size)])
        pairs = pairs[np.argsort(pairs[:, 0], kind="stable")]
        bounds = np.searchsorted(pairs[:, 0], np.arange(0, len(pending) + self.batch_size, self.batch_size))
        # By default a bar only for calls over many queries: score() in a caller's loop stays quiet.
        show = many_queries and len(pairs) > self.batch_size if self.progress is None else self.progress
        bar = tqdm(total=len(pairs), desc="blip2 rerank", unit="pair", disable=not show)
        with ThreadPoolExecutor(max_workers=self.num_workers) as pool:
            for chunk, start in enumerate(range(0, len(pending), self.batch_size)):
                vit, image_itc = self._image_features(pending[start:start + self.batch_size], pool)
                chunk_pairs = pairs[bounds[chunk]:bounds[chunk + 1]]
                for s in range(0, len(chunk_pairs), self.batch_size):
                    batch = chunk_pairs[s:s + self.batch_size]
                    rows = torch.as_tensor(batch[:, 0] - start, device=self.device)
                    cols = torch.as_tensor(batch[:, 1], device=self.device)
                    with self.autocast():
                        logits = self.itm_logits(vit[rows], ids[cols], mask[cols])
                    itm = logits[:, 1] if self.itm == "logit" else logits.softmax(dim=-1)[:, 1]
                    itc = torch.einsum("bqd,bd->bq", image_itc[rows], text_itc[cols]).max(dim=1).values
                    scores = (itm.float() + itc.float()).cpu().numpy()
                    for (_, _, q, position), value in zip(batch.tolist(), scores):
                        out[q][position] = value
                    bar.update(len(batch))
        bar.close()
