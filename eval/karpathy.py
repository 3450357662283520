"""Karpathy-format caption datasets (Flickr8K, Flickr30K, COCO) with an image folder.

One loader reads ``dataset_flickr8k.json``, ``dataset_flickr30k.json`` and ``dataset_coco.json``
unchanged: ``{"images": [{"filename", "split", "sentences": [{"raw", "tokens"}...], "filepath"?}]}``.
COCO entries carry a ``filepath`` (``train2014`` / ``val2014``) below the image root; its splits
are ``train`` (82,783), ``restval`` (30,504), ``val`` (5,000) and ``test`` (5,000), Flickr30K's
``train`` / ``val`` / ``test`` (29,000 / 1,014 / 1,000).

:class:`CaptionDataset` is also what :mod:`eval.hf_datasets` returns, so its images may be paths
or images held by a Hugging Face dataset (decoded lazily, one at a time); encoders take both.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def take(items: Sequence[Any], indices: np.ndarray) -> Sequence[Any]:
    """``items`` at ``indices``; lazy image columns (anything with ``take``) stay lazy."""
    if hasattr(items, "take"):
        return items.take(indices)
    return [items[int(i)] for i in indices]


@dataclass(frozen=True)
class CaptionDataset:
    """Images and captions of one split; ``caption_image[j]`` is the image index of caption ``j``.

    ``image_paths`` holds what an encoder's ``encode_images`` accepts: paths for image folders,
    or a lazy sequence of PIL images for Hugging Face datasets (the name stays for compatibility;
    :attr:`images` is the same sequence).
    """

    name: str
    split: str
    image_paths: Sequence[Any]
    captions: list[str]
    caption_image: np.ndarray

    def __post_init__(self) -> None:
        owners = np.asarray(self.caption_image)
        if owners.ndim != 1 or len(owners) != len(self.captions):
            raise ValueError(f"caption_image must be 1-D with one entry per caption ({len(self.captions)}), "
                             f"got shape {owners.shape}")
        if len(owners) and not np.issubdtype(owners.dtype, np.integer):
            raise TypeError(f"caption_image must hold integer image indices, got dtype {owners.dtype}")
        if len(owners) and (owners.min() < 0 or owners.max() >= len(self.image_paths)):
            raise ValueError(f"caption_image holds indices outside 0..{len(self.image_paths) - 1}")
        object.__setattr__(self, "caption_image", owners.astype(np.int64, copy=False))

    @property
    def n_images(self) -> int:
        return len(self.image_paths)

    @property
    def images(self) -> Sequence[Any]:
        return self.image_paths

    def image_captions(self) -> list[np.ndarray]:
        """For each image, the indices of its captions (the Karpathy protocol's positives)."""
        order = np.argsort(self.caption_image, kind="stable")
        bounds = np.searchsorted(self.caption_image[order], np.arange(self.n_images + 1))
        return [order[bounds[i]:bounds[i + 1]] for i in range(self.n_images)]

    def select(self, image_indices: Sequence[int] | np.ndarray, split: str | None = None) -> "CaptionDataset":
        """The given images (in that order) with all their captions, captions grouped by image.

        :meth:`selected_captions` gives the kept captions' original indices, to slice precomputed
        text embeddings the same way.
        """
        idx = self._check_indices(image_indices)
        kept = self.selected_captions(idx)
        remap = np.full(self.n_images, -1, dtype=np.int64)
        remap[idx] = np.arange(len(idx))
        return CaptionDataset(
            self.name, split or self.split, take(self.image_paths, idx),
            [self.captions[int(j)] for j in kept], remap[self.caption_image[kept]],
        )

    def selected_captions(self, image_indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Indices of the captions of ``image_indices``, in the order :meth:`select` keeps them."""
        idx = self._check_indices(image_indices)
        remap = np.full(self.n_images, -1, dtype=np.int64)
        remap[idx] = np.arange(len(idx))
        new_owner = remap[self.caption_image]
        kept = np.flatnonzero(new_owner >= 0)
        return kept[np.argsort(new_owner[kept], kind="stable")]

    def subset(self, n_images: int) -> "CaptionDataset":
        """The first ``n_images`` images and their captions (quick runs, smoke tests)."""
        if n_images < 0:
            raise ValueError(f"n_images must be >= 0, got {n_images}")
        return self.select(np.arange(min(n_images, self.n_images)))

    def _check_indices(self, image_indices: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(image_indices)
        if idx.ndim != 1 or (len(idx) and not np.issubdtype(idx.dtype, np.integer)):
            raise TypeError(f"image_indices must be a 1-D integer array, got shape {idx.shape} dtype {idx.dtype}")
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n_images):
            raise ValueError(f"image_indices must lie in 0..{self.n_images - 1}")
        if len(np.unique(idx)) != len(idx):
            raise ValueError("image_indices must not repeat an image")
        return idx.astype(np.int64)


def one_caption_per_image(caption_image: np.ndarray, n_images: int, seed: int = 0) -> np.ndarray:
    """Index of one caption per image, in image order, drawn by ``default_rng(seed).integers`` per image.

    For query sets of one query per image (keyword queries, whose rewriting costs an LLM call each);
    the draw is fixed so that every script picks the same captions for a seed.
    """
    rng = np.random.default_rng(seed)
    caption_image = np.asarray(caption_image)
    picks = []
    for i in range(n_images):
        caps = np.flatnonzero(caption_image == i)
        if not len(caps):
            raise ValueError(f"image {i} has no caption")
        picks.append(caps[rng.integers(len(caps))])
    return np.asarray(picks, dtype=np.int64)


def caption_text(sentence: dict, where: str) -> str:
    raw = sentence.get("raw")
    if isinstance(raw, str) and raw.strip():
        return raw.strip()
    tokens = sentence.get("tokens")
    if isinstance(tokens, list) and tokens:
        return " ".join(map(str, tokens))
    raise ValueError(f"{where} has neither a non-empty 'raw' nor 'tokens'")


def load_karpathy(
    annotations: str | Path,
    images: str | Path,
    split: str = "test",
    max_captions_per_image: int | None = None,
    check_files: bool = True,
) -> CaptionDataset:
    """Reads one split. ``split`` may be any split name present in the file (train, val, restval, test).

    ``max_captions_per_image=5`` gives the fixed 5-captions protocol for COCO (a few COCO images
    have 6 or 7); the default keeps every caption, as LAVIS and CLIP_benchmark do.
    """
    annotations, images = Path(annotations), Path(images)
    try:
        data = json.loads(annotations.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file not found: {annotations}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{annotations} is not valid JSON: {e}") from e
    entries = data.get("images") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{annotations}: expected a top-level object with an 'images' list (Karpathy format)")
    splits = Counter(e.get("split") for e in entries)
    if split not in splits:
        raise ValueError(f"{annotations} has no split {split!r}; it has: {', '.join(f'{k} ({v})' for k, v in sorted(splits.items()))}")
    if not images.is_dir():
        raise FileNotFoundError(f"image folder not found: {images}")

    image_paths: list[Path] = []
    captions: list[str] = []
    owners: list[int] = []
    for i, entry in enumerate(entries):
        if entry.get("split") != split:
            continue
        where = f"{annotations}: images[{i}]"
        filename = entry.get("filename")
        if not isinstance(filename, str):
            raise ValueError(f"{where} has no 'filename'")
        path = images / entry.get("filepath", "") / filename
        sentences = entry.get("sentences") or []
        if not sentences:
            raise ValueError(f"{where} ({filename}) has no sentences")
        for j, sentence in enumerate(sentences[:max_captions_per_image]):
            captions.append(caption_text(sentence, f"{where}.sentences[{j}]"))
            owners.append(len(image_paths))
        image_paths.append(path)
    if check_files:
        missing = [p for p in image_paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(image_paths)} images of split {split!r} are missing below {images}, "
                f"e.g. {missing[0]}"
            )
    name = str(data.get("dataset") or annotations.stem.removeprefix("dataset_"))
    return CaptionDataset(name, split, image_paths, captions, np.asarray(owners, dtype=np.int64))
