"""The symmetric contrastive loss, its batches and its schedule, as both lite trainers use them
(:mod:`eval.lite_training` on cached trunks, :mod:`eval.lite_end_to_end` on pixels).

Its own module because the end-to-end trainer runs on an accelerator machine that has torch but
not this toolkit's search stack (faiss, ONNX export): importing it must pull in nothing else.
"""

from __future__ import annotations

import math

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, owner: torch.Tensor, logit_scale: torch.Tensor,
                     hard_weight: float = 0.0, margin: float = 0.2) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of images and the captions ``text`` (caption j is of image ``owner[j]``).

    With several captions per image the image->text side is multi-positive: the log of the softmax
    mass on all of its captions. ``hard_weight`` adds VSE++'s max-of-hinges (Faghri et al. 2018):
    per positive pair, the hinge against the hardest negative caption and the hardest negative image.
    """
    image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    sim = image @ text.T  # (B, M)
    positive = owner[None, :] == torch.arange(len(image), device=image.device)[:, None]
    logits = logit_scale.clamp(max=math.log(100)).exp() * sim
    i2t = (torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~positive, -torch.inf), 1)).mean()
    t2i = F.cross_entropy(logits.T, owner)
    loss = (i2t + t2i) / 2
    if hard_weight:
        pos = sim.T[torch.arange(len(owner), device=owner.device), owner]  # (M,)
        neg_caption = sim.masked_fill(positive, -torch.inf).max(1).values[owner]  # hardest other caption of the image
        neg_image = sim.T.masked_fill(positive.T, -torch.inf).max(1).values  # hardest other image of the caption
        hinge = (margin - pos + neg_caption).clamp(min=0) + (margin - pos + neg_image).clamp(min=0)
        loss = loss + hard_weight * hinge.mean()
    return loss


def captions_by_image(caption_image: np.ndarray, n_images: int) -> list[np.ndarray]:
    """Each image's caption indices, ascending (``caption_image[j]`` is caption j's image), by one stable
    sort instead of a scan of every caption per image."""
    caption_image = np.asarray(caption_image)
    order = np.argsort(caption_image, kind="stable")
    return np.split(order, np.cumsum(np.bincount(caption_image, minlength=n_images))[:-1])


def sample_captions(images: np.ndarray, caps_of: Sequence[np.ndarray], per_image: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """A step's captions: ``per_image`` of each image's (all it has, if fewer), drawn without replacement,
    and each caption's position in ``images`` (the ``owner`` of :func:`contrastive_loss`)."""
    caps: list[int] = []
    owner: list[int] = []
    for j, i in enumerate(images):
        mine = caps_of[i]
        k = min(per_image, len(mine))
        caps.extend(rng.choice(mine, size=k, replace=False))
        owner.extend([j] * k)
    return np.array(caps), owner


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """The learning-rate factor at ``step``: linear warm-up over ``warmup_steps``, times a cosine from 1 to 0."""
    warm = min(1.0, (step + 1) / warmup_steps)
    return warm * (0.5 * (1 + math.cos(math.pi * step / total_steps)))  # the trainers' product, bit for bit
