"""Region and word features of the lite towers: the nodes of MGSGH's fine-grained branch.

MGSGH's fine branch (``../shared/papers/002_bb798a49befec461.txt`` §III-B, "local semantic
relationship graphs") builds a scene graph per item: Faster R-CNN objects and predicted relations for
an image, words and predicted relations for a text. Neither a detector nor a relation predictor can
be had offline, so this is the offline substitute (``hashing/MGSGH.md``, "The fine-grained branch"):

* image nodes = the cells of the image tower's final feature map (7 x 7 at 224 px for
  EfficientNet-Lite0), each passed through the trained image head's projection. The head is a
  linear map of the mean cell (``ImageHead`` with ``pool="avg"``), so the mean of the projected
  cells *is* the head's embedding before normalisation: regions and the global vector live in one
  space (the default ``lite`` adds a per-image ImageNet concept vector to the global one, issue 23;
  the regions do not change with it). The relations are the grid's (left, right, up, down), which the hasher reads from the shape.
* text nodes = the words of the caption (the tokenizer's pre-tokenised words: whitespace and
  punctuation), each the mean of its word pieces' last hidden states passed through the trained text
  head's projection (also linear, so the same remark holds up to [CLS]/[SEP], which are not words).
  The relations are word adjacency (previous, next): no spaCy English pipeline from its authors is
  on PyPI (``pip download en_core_web_sm`` finds none), so there are no dependency arcs.

Both functions run the whole tower (no split): they are for caching features of a data set.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .lite_model import LiteModel


@torch.no_grad()
def region_features(model: LiteModel, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(regions (B, H, W, embed_dim), global (B, embed_dim))`` for preprocessed pixels.

    ``global`` is ``model``'s image embedding, unnormalised: the head on the mean cell, plus the
    ImageNet concept term when the model has it on (issue 23; ``LiteModel.image_features``), so that
    a fine cache's global vectors are the encoder's. ``regions.mean((1, 2))`` equals the head part
    (``model.image_head``) up to float rounding: the concepts are one vector per image, not per cell,
    so the regions are the same with or without them.
    """
    if model.config["image_pool"] != "avg":
        raise ValueError("region features need the lite image head with image_pool='avg' (a linear map of the "
                         f"mean cell), got image_pool={model.config['image_pool']!r}")
    fmap = model.image_tower.forward_features(pixels)  # (B, C, H, W): conv head + BN + activation
    regions = model.image_head.proj(fmap.permute(0, 2, 3, 1))
    return regions, model.image_features_from_map(fmap)


@torch.no_grad()
def word_features(model: LiteModel, tokenizer: Any, texts: Sequence[str]) -> tuple[list[np.ndarray], torch.Tensor]:
    """``(words, global)``: per text an (n_words, embed_dim) float32 array, and the (B, embed_dim)
    text embeddings (unnormalised), from one forward pass.

    ``tokenizer`` is a ``tokenizers.Tokenizer`` with padding and truncation set
    (:func:`retrieval.encoders.lite.text_tokenizer` builds it); a word cut by truncation keeps the
    pieces that remain. A text with no word (all punctuation is still a word) gets one node: the
    mean of its tokens, so no item is left without a graph.
    """
    encodings = tokenizer.encode_batch(list(texts))
    ids = torch.tensor([e.ids for e in encodings], dtype=torch.int64)
    mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.int64)
    hidden = model.text_tower(input_ids=ids, attention_mask=mask).last_hidden_state
    projected = model.text_head.proj(hidden).numpy()
    words = []
    for i, e in enumerate(encodings):
        word_ids = np.array([-1 if w is None else w for w in e.word_ids], dtype=np.int64)
        valid = (word_ids >= 0) & (np.asarray(e.attention_mask) > 0)
        if not valid.any():
            words.append(projected[i, np.asarray(e.attention_mask) > 0].mean(0, keepdims=True))
            continue
        _, inverse = np.unique(word_ids[valid], return_inverse=True)  # words in order of appearance
        sums = np.zeros((inverse.max() + 1, projected.shape[-1]), np.float64)
        np.add.at(sums, inverse, projected[i, valid])
        words.append((sums / np.bincount(inverse)[:, None]).astype(np.float32))
    return words, model.text_head(hidden, mask)
