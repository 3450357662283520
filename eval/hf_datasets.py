"""Flickr30K / COCO retrieval test sets from the Hugging Face Hub or a ``save_to_disk`` folder.

Each source becomes the :class:`eval.karpathy.CaptionDataset` a Karpathy JSON gives, so the
retrieval script treats them alike. Images stay inside the Arrow table and are decoded one at a
time as the encoder asks for them (:class:`ImageColumn`); a 5K COCO test set is never held
decoded in memory.

Supported Hub ids (:data:`HUB_DATASETS`), and where each schema was checked (public code that
loads it, read through the project's code search; nothing here was downloaded):

* ``nlphuji/flickr_1k_test_image_text_retrieval``: Flickr30K Karpathy 1K test; one HF split
  ``test``, columns ``image`` (PIL) and ``caption`` (list of 5 strings). Checked in DataComp's
  ``eval_utils/retr_eval.py`` (``RetrievalDataset`` reads ``["image"]`` / ``["caption"]``) and its
  dataset table, which pins revision ``c4a4cdc6...``.
* ``nlphuji/mscoco_2014_5k_test_image_text_retrieval``: COCO Karpathy 5K test, same schema and the
  same DataComp loader.
* ``nlphuji/flickr30k``: all 31,014 Flickr30K images in one HF split ``test``; the Karpathy split
  is the column ``split`` (train 29,000 / val 1,014 / test 1,000); columns ``image``, ``caption``
  (list), ``filename``, ``img_id``. Checked in several public loaders that filter on
  ``x["split"]``, one of which reads it from ``revision="refs/convert/parquet"``.
* ``yerevann/coco-karpathy``: parquet, HF splits ``train`` / ``validation`` / ``test`` /
  ``restval``; columns ``filepath``, ``filename``, ``sentences`` (list of strings), ``cocoid``,
  ``url``, no pixels, so ``images=`` must point at a COCO image root holding ``val2014/`` etc.
  Checked in public scripts reading ``select_columns(['filepath', 'sentids', 'filename', 'imgid',
  'sentences', 'cocoid', 'url'])`` and ``load_dataset(..., split="test")``.
* ``clip-benchmark/wds_flickr30k`` and ``clip-benchmark/wds_mscoco_captions``: CLIP_benchmark's
  WebDataset shards; columns ``jpg`` (image) and ``txt`` (the captions joined by ``"\\n"``),
  ``__key__``; split ``test``. Checked in public loaders doing ``row["txt"].split("\\n")``.

The three ``nlphuji`` repositories are built by a loading script, which ``datasets`` >= 4 no longer
runs; they are read from the Hub's parquet export (``refs/convert/parquet``), verified above for
``nlphuji/flickr30k`` and assumed for its two siblings (pass ``revision=`` to override).

Offline (``HF_HUB_OFFLINE=1`` or no network) a Hub id that is not in the local cache fails with
one :class:`DatasetUnavailableError` saying what to do instead.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .extras import require
from .karpathy import CaptionDataset, caption_text, load_karpathy


class DatasetUnavailableError(ConnectionError):
    """A Hub dataset that can be neither downloaded nor found in the local cache."""


@dataclass(frozen=True)
class HubSpec:
    """How one Hub dataset maps onto a :class:`CaptionDataset`."""

    name: str  # the dataset name results carry ("flickr30k", "coco")
    splits: dict[str, str]  # our split name -> HF split name
    caption_column: str
    image_column: str | None = None  # pixels (PIL, bytes or {"bytes", "path"})
    path_columns: tuple[str, ...] = ()  # joined below ``images=`` when there are no pixels
    split_column: str | None = None  # Karpathy split held in a column instead of an HF split
    caption_separator: str | None = None  # one string holding several captions
    revision: str | None = None
    checked_in: str = ""


_PARQUET = "refs/convert/parquet"
HUB_DATASETS: dict[str, HubSpec] = {
    "nlphuji/flickr_1k_test_image_text_retrieval": HubSpec(
        "flickr30k", {"test": "test"}, "caption", image_column="image", revision=_PARQUET,
        checked_in="mlfoundations/datacomp eval_utils/retr_eval.py"),
    "nlphuji/mscoco_2014_5k_test_image_text_retrieval": HubSpec(
        "coco", {"test": "test"}, "caption", image_column="image", revision=_PARQUET,
        checked_in="mlfoundations/datacomp eval_utils/retr_eval.py"),
    "nlphuji/flickr30k": HubSpec(
        "flickr30k", {"train": "test", "val": "test", "test": "test"}, "caption", image_column="image",
        split_column="split", revision=_PARQUET, checked_in="public loaders filtering x['split']"),
    "yerevann/coco-karpathy": HubSpec(
        "coco", {"train": "train", "restval": "restval", "val": "validation", "test": "test"}, "sentences",
        path_columns=("filepath", "filename"), checked_in="public loaders reading sentences/filepath/filename"),
    "clip-benchmark/wds_flickr30k": HubSpec(
        "flickr30k", {"train": "train", "test": "test"}, "txt", image_column="jpg", caption_separator="\n",
        checked_in="public loaders splitting row['txt'] on newlines"),
    "clip-benchmark/wds_mscoco_captions": HubSpec(
        "coco", {"train": "train", "test": "test"}, "txt", image_column="jpg", caption_separator="\n",
        checked_in="public loaders splitting row['txt'] on newlines"),
}

#: Column names tried, in order, for a ``save_to_disk`` folder that names no known Hub id.
IMAGE_COLUMNS = ("image", "jpg", "img", "png", "webp")
CAPTION_COLUMNS = ("caption", "captions", "sentences", "txt", "text", "raw")


class ImageColumn(Sequence):
    """Lazy view of an image column: indexing decodes one image, slicing returns another view.

    Encoders slice batches out of it (``images[start:start + batch]``) and load each item with
    :func:`common.images.load_image`, which takes the PIL images this yields.
    """

    def __init__(self, dataset: Any, column: str, rows: np.ndarray | None = None, where: str = "") -> None:
        self._dataset = dataset
        self._column = column
        self._rows = np.arange(len(dataset), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        self._where = where or column

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return ImageColumn(self._dataset, self._column, self._rows[index], self._where)
        row = int(self._rows[index])
        return decode_image(self._dataset[row][self._column], f"{self._where}[{row}]")

    def take(self, indices: np.ndarray) -> "ImageColumn":
        return ImageColumn(self._dataset, self._column, self._rows[np.asarray(indices, dtype=np.int64)], self._where)

    def __repr__(self) -> str:
        return f"ImageColumn({self._where!r}, {len(self)} images)"


def decode_image(value: Any, where: str) -> Any:
    """A PIL image (or a path) from what a ``datasets`` image cell holds."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        value = value.get("bytes") or value["path"]
    if isinstance(value, (bytes, bytearray)):
        return Image.open(io.BytesIO(value))
    if isinstance(value, str) and value:
        return Path(value)
    raise TypeError(f"{where}: expected an image (PIL, bytes or a path), got {type(value).__name__}")


def row_captions(value: Any, separator: str | None, where: str) -> list[str]:
    """The captions of one row: a list of strings or Karpathy ``{"raw"}`` dicts, or one string."""
    if isinstance(value, str):
        parts = value.split(separator) if separator else [value]
        out = [p.strip() for p in parts if p.strip()]
    elif isinstance(value, (list, tuple)):
        out = []
        for j, item in enumerate(value):
            if isinstance(item, dict):
                out.append(caption_text(item, f"{where}[{j}]"))
            elif isinstance(item, str) and item.strip():
                out.append(item.strip())
            else:
                raise ValueError(f"{where}[{j}] is not a non-empty caption string")
    else:
        raise TypeError(f"{where}: expected a caption string or a list of captions, got {type(value).__name__}")
    if not out:
        raise ValueError(f"{where} has no caption")
    return out


def hub_unavailable_message(hub_id: str, split: str, revision: str | None, cache_dir: str | Path | None,
                            reason: str) -> str:
    cache = cache_dir or os.environ.get("HF_DATASETS_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "datasets")
    call = f"datasets.load_dataset({hub_id!r}, split={split!r}" + (f", revision={revision!r})" if revision else ")")
    return (
        f"cannot load Hugging Face dataset {hub_id!r} (split {split!r}): the Hub is offline or unreachable "
        f"and the dataset is not in the local cache {cache} ({reason}). Fix one of: (1) on a machine with "
        f"network run {call} once with HF_HOME set to a folder, then copy that folder here and set HF_HOME "
        f"to it; (2) save it there with Dataset.save_to_disk(DIR) and pass DIR instead of the id; (3) pass a "
        f"Karpathy JSON (dataset_flickr30k.json / dataset_coco.json) and its image folder instead."
    )


def _load_from_hub(hub_id: str, hf_split: str, revision: str | None, cache_dir: str | Path | None) -> Any:
    datasets = require("datasets", f"loading the Hub dataset {hub_id!r}")

    try:
        return datasets.load_dataset(hub_id, split=hf_split, revision=revision,
                                     cache_dir=None if cache_dir is None else str(cache_dir))
    except ConnectionError as e:
        reason = f"{type(e).__name__}: {e}"
        raise DatasetUnavailableError(hub_unavailable_message(hub_id, hf_split, revision, cache_dir, reason)) from None


def _pick(columns: Sequence[str], wanted: str | None, candidates: Sequence[str], what: str, where: str) -> str | None:
    if wanted is not None:
        if wanted not in columns:
            raise ValueError(f"{where} has no {what} column {wanted!r}; it has: {', '.join(columns)}")
        return wanted
    return next((c for c in candidates if c in columns), None)


def load_hf(
    source: str | Path,
    split: str = "test",
    *,
    images: str | Path | None = None,
    name: str | None = None,
    image_column: str | None = None,
    caption_column: str | None = None,
    split_column: str | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    max_captions_per_image: int | None = None,
    check_files: bool = True,
) -> CaptionDataset:
    """A retrieval split from a supported Hub id or a local ``datasets.save_to_disk`` folder.

    ``split`` is the Karpathy split name (``test``, ``val``, ``train``, ``restval`` where the source
    has it). A local folder may hold a ``Dataset`` or a ``DatasetDict``; its columns are found by
    name (:data:`IMAGE_COLUMNS`, :data:`CAPTION_COLUMNS`, a ``split`` column) unless given.
    ``images`` is the image root for sources that store paths instead of pixels
    (``yerevann/coco-karpathy``: ``filepath/filename`` below it).
    """
    local = Path(source)
    if local.is_dir():
        datasets = require("datasets", f"loading the saved dataset {local}")

        try:
            loaded = datasets.load_from_disk(str(local))
        except FileNotFoundError as e:
            raise ValueError(f"{local} is not a datasets.save_to_disk folder: {e}") from None
        if isinstance(loaded, datasets.DatasetDict):
            if split in loaded:
                loaded = loaded[split]
            elif len(loaded) == 1:  # one table whose rows carry the split in a column
                loaded = next(iter(loaded.values()))
            else:
                raise ValueError(f"{local} has no split {split!r}; it has: {', '.join(loaded)}")
        spec = HubSpec(name or local.name, {split: split}, caption_column or "",
                       image_column=image_column, split_column=split_column)
        where = str(local)
    else:
        hub_id = str(source)
        if hub_id not in HUB_DATASETS:
            raise ValueError(
                f"{hub_id!r} is neither a local datasets.save_to_disk folder nor a supported Hub id; "
                f"supported: {', '.join(HUB_DATASETS)}")
        spec = HUB_DATASETS[hub_id]
        if split not in spec.splits:
            raise ValueError(f"{hub_id} has no split {split!r}; it has: {', '.join(spec.splits)}")
        loaded = _load_from_hub(hub_id, spec.splits[split], revision or spec.revision, cache_dir)
        where = hub_id
    return _to_caption_dataset(loaded, spec, split, where, images, name, image_column, caption_column,
                               split_column, max_captions_per_image, check_files, is_local=local.is_dir())


def _to_caption_dataset(
    table: Any, spec: HubSpec, split: str, where: str, images: str | Path | None, name: str | None,
    image_column: str | None, caption_column: str | None, split_column: str | None,
    max_captions_per_image: int | None, check_files: bool, is_local: bool,
) -> CaptionDataset:
    columns = list(table.column_names)
    image_col = _pick(columns, image_column or spec.image_column, IMAGE_COLUMNS if is_local else (), "image", where)
    caption_col = _pick(columns, caption_column or spec.caption_column or None,
                        CAPTION_COLUMNS if is_local else (), "caption", where)
    if caption_col is None:
        raise ValueError(f"{where}: no caption column among {', '.join(columns)}; pass caption_column=")
    split_col = _pick(columns, split_column or spec.split_column, ("split",) if is_local else (), "split", where)
    path_cols = spec.path_columns or (("filepath", "filename") if "filename" in columns else ())
    if image_col is None and not path_cols:
        raise ValueError(f"{where}: no image column among {', '.join(columns)}; pass image_column=")

    rows = np.arange(len(table), dtype=np.int64)
    if split_col is not None:
        values = list(table[split_col])
        rows = np.asarray([i for i, v in enumerate(values) if v == split], dtype=np.int64)
        if not len(rows):
            counts = Counter(values)
            raise ValueError(f"{where}: no row has {split_col} == {split!r}; it has: "
                             + ", ".join(f"{k} ({v})" for k, v in sorted(counts.items(), key=str)))
        table = table.select(rows)
    if not len(table):
        raise ValueError(f"{where} split {split!r} is empty")

    captions: list[str] = []
    owners: list[int] = []
    for i, cell in enumerate(table[caption_col]):
        texts = row_captions(cell, spec.caption_separator, f"{where}:{caption_col}[{i}]")
        texts = texts[:max_captions_per_image]
        captions.extend(texts)
        owners.extend([i] * len(texts))

    if image_col is not None:
        image_items: Sequence[Any] = ImageColumn(table.select_columns([image_col]), image_col,
                                                 where=f"{where}:{image_col}")
    else:
        image_items = _image_paths(table, path_cols, images, where, split, check_files)
    return CaptionDataset(name or spec.name, split, image_items, captions, np.asarray(owners, dtype=np.int64))


def _image_paths(table: Any, path_cols: Sequence[str], images: str | Path | None, where: str, split: str,
                 check_files: bool) -> list[Path]:
    if images is None:
        raise ValueError(f"{where} stores image paths ({'/'.join(path_cols)}), not pixels; pass images= "
                         "(the image root, e.g. the COCO folder holding val2014/)")
    root = Path(images)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    present = [c for c in path_cols if c in table.column_names]
    if not present:
        raise ValueError(f"{where} has none of the path columns {', '.join(path_cols)}")
    parts = [list(table[c]) for c in present]
    paths = [root.joinpath(*(str(p) for p in row if p)) for row in zip(*parts)]
    if check_files:
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} of {len(paths)} images of split {split!r} are missing below "
                                    f"{root}, e.g. {missing[0]}")
    return paths


def load_caption_dataset(
    source: str | Path, split: str = "test", images: str | Path | None = None, **kwargs: Any,
) -> CaptionDataset:
    """One entry for a retrieval script's dataset argument: a Karpathy ``.json`` (with ``images``,
    the image folder), a ``save_to_disk`` folder, or a supported Hub id."""
    if str(source).endswith(".json"):
        if images is None:
            raise ValueError(f"{source} is a Karpathy annotation file; pass images= (its image folder)")
        extra = sorted(set(kwargs) - {"max_captions_per_image", "check_files"})
        if extra:
            raise TypeError(f"{', '.join(extra)} do not apply to a Karpathy annotation file ({source})")
        return load_karpathy(source, images, split, **kwargs)
    return load_hf(source, split, images=images, **kwargs)

