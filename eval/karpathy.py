"""Karpathy-format caption datasets (Flickr8K, Flickr30K, COCO) with an image folder.

One loader reads ``dataset_flickr8k.json``, ``dataset_flickr30k.json`` and ``dataset_coco.json``
unchanged: ``{"images": [{"filename", "split", "sentences": [{"raw", "tokens"}...], "filepath"?}]}``.
COCO entries carry a ``filepath`` (``train2014`` / ``val2014``) below the image root.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class CaptionDataset:
    """Images and captions of one split; ``caption_image[j]`` is the image index of caption ``j``."""

    name: str
    split: str
    image_paths: list[Path]
    captions: list[str]
    caption_image: np.ndarray

    @property
    def n_images(self) -> int:
        return len(self.image_paths)

    def image_captions(self) -> list[np.ndarray]:
        """For each image, the indices of its captions (the Karpathy protocol's positives)."""
        order = np.argsort(self.caption_image, kind="stable")
        bounds = np.searchsorted(self.caption_image[order], np.arange(self.n_images + 1))
        return [order[bounds[i]:bounds[i + 1]] for i in range(self.n_images)]

    def subset(self, n_images: int) -> "CaptionDataset":
        """The first ``n_images`` images and their captions (quick runs, smoke tests)."""
        keep = self.caption_image < n_images
        return CaptionDataset(
            self.name, self.split, self.image_paths[:n_images],
            [c for c, k in zip(self.captions, keep) if k], self.caption_image[keep],
        )


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
