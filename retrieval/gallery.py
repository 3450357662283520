"""One searchable collection of one modality: binary index, ids, optional float vectors, payloads.

A :class:`retrieval.Retriever` holds two of them (images and texts), since a text query searches
images and an image query searches texts. The binary index answers stage 1; the float vectors (kept
unless ``store_vectors=False``) feed float rescoring; ``items`` keep what rerankers that read raw
content need (image paths, caption strings); ``payloads`` are whatever the user attached.

Saved as a directory::

    index/                the binary index (hashing.index.io format)
    arrays.safetensors    ids (int64), and vectors (float32) when stored
    items.json            {"items": [...], "payloads": [...]}: JSON values; an image given as a PIL
                          image or an array is stored as null (it has no path to reopen)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hashing.base import as_features
from hashing.index import BinaryIndex, create_index, load_index

ARRAYS_NAME = "arrays.safetensors"
ITEMS_NAME = "items.json"


def storable_item(item: Any) -> str | None:
    """Paths and strings are kept (as strings); in-memory images cannot be reopened after a save."""
    if isinstance(item, (str, Path)):
        return str(item)
    return None


def check_payloads(payloads: Sequence[Any] | None, n: int) -> list[Any]:
    if payloads is None:
        return [None] * n
    if isinstance(payloads, (str, bytes)) or len(payloads) != n:
        raise ValueError(f"payloads must be a sequence with one entry per item ({n}), got "
                         f"{type(payloads).__name__} of length {len(payloads) if hasattr(payloads, '__len__') else '?'}")
    payloads = list(payloads)
    for i, p in enumerate(payloads):
        try:
            json.dumps(p)
        except (TypeError, ValueError) as e:
            raise TypeError(f"payloads[{i}] is not JSON-serialisable ({type(p).__name__}): {e}") from None
    return payloads


def check_add(modality: str, dim: int, codes: np.ndarray, vectors: Any, items: Sequence[Any],
              payloads: Sequence[Any] | None) -> tuple[np.ndarray, list[Any]]:
    """What every gallery's ``add`` validates before touching anything: (float32 vectors, payloads)."""
    n = len(codes)
    payloads = check_payloads(payloads, n)
    vectors = as_features(vectors, f"{modality} vectors", dim)
    if len(items) != n or len(vectors) != n:
        raise ValueError(f"{n} codes but {len(vectors)} vectors and {len(items)} items")
    return vectors, payloads


class Gallery:
    """Items of one modality under int64 ids; rows are insertion order."""

    def __init__(self, modality: str, index: BinaryIndex, dim: int, store_vectors: bool = True) -> None:
        self.modality = modality
        self.index = index
        self.dim = dim
        self.store_vectors = store_vectors
        self.ids = np.empty(0, dtype=np.int64)
        self.codes = np.empty((0, index.code_bytes), dtype=np.uint8)
        self.vectors = np.empty((0, dim), dtype=np.float32) if store_vectors else None
        self.items: list[Any] = []
        self.payloads: list[Any] = []
        self._row_of: dict[int, int] = {}

    @classmethod
    def create(cls, modality: str, bits: int, dim: int, index: str = "flat", index_params: dict | None = None,
               store_vectors: bool = True) -> "Gallery":
        return cls(modality, create_index(index, bits, **(index_params or {})), dim, store_vectors)

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, codes: np.ndarray, vectors: np.ndarray, items: Sequence[Any], payloads: Sequence[Any] | None,
            ids: np.ndarray | None = None) -> np.ndarray:
        """Adds items; returns their ids. Nothing is changed if any argument is invalid."""
        vectors, payloads = check_add(self.modality, self.dim, codes, vectors, items, payloads)
        if not self.index.is_trained:
            self.index.train(codes)
        new_ids = self.index.add(codes, ids)  # validates codes and ids before touching anything
        self.ids = np.concatenate([self.ids, new_ids])
        self.codes = np.concatenate([self.codes, codes])
        if self.vectors is not None:
            self.vectors = np.concatenate([self.vectors, vectors])
        start = len(self.items)
        self.items.extend(items)
        self.payloads.extend(payloads)
        self._row_of.update((int(i), start + r) for r, i in enumerate(new_ids))
        return new_ids

    def rows(self, ids: np.ndarray) -> np.ndarray:
        try:
            return np.fromiter((self._row_of[int(i)] for i in ids), dtype=np.int64, count=len(ids))
        except KeyError as e:
            raise KeyError(f"no {self.modality} with id {e.args[0]} in this retriever") from None

    def fetch(self, ids: Sequence[int], vectors: bool = True) -> tuple[list[Any], np.ndarray | None, list[Any]]:
        """Items, float vectors (None when not stored or not asked for) and payloads of ``ids``."""
        rows = self.rows(np.asarray(ids, dtype=np.int64))
        vecs = self.vectors[rows] if vectors and self.vectors is not None else None
        return [self.items[r] for r in rows], vecs, [self.payloads[r] for r in rows]

    def fetch_vectors(self, ids: Sequence[int]) -> np.ndarray:
        return self.vectors[self.rows(np.asarray(ids, dtype=np.int64))]

    def remove(self, ids: Sequence[int]) -> int:
        """Drops ``ids`` (absent ones ignored); returns how many were removed."""
        ids = np.asarray(ids, dtype=np.int64)
        keep = ~np.isin(self.ids, ids)
        removed = int((~keep).sum())
        if removed:
            self.index.remove(self.ids[~keep])
            self.ids, self.codes = self.ids[keep], self.codes[keep]
            if self.vectors is not None:
                self.vectors = self.vectors[keep]
            rows = np.flatnonzero(keep)
            self.items = [self.items[r] for r in rows]
            self.payloads = [self.payloads[r] for r in rows]
            self._row_of = {int(i): r for r, i in enumerate(self.ids)}
        return removed

    def export(self, batch: int = 65536) -> Any:
        """(ids, codes, vectors or None, items, payloads) in insertion order, ``batch`` rows at a time."""
        for start in range(0, len(self.ids), batch):
            end = start + batch
            yield (self.ids[start:end], self.codes[start:end],
                   self.vectors[start:end] if self.vectors is not None else None,
                   [storable_item(i) for i in self.items[start:end]], self.payloads[start:end])

    # -- persistence ------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """Writes into ``directory`` (the caller makes the whole retriever save atomic)."""
        from safetensors.numpy import save_file

        from hashing.index.io import save_index

        directory.mkdir(parents=True, exist_ok=True)
        save_index(self.index, directory / "index")
        arrays = {"ids": self.ids}
        if self.vectors is not None:
            arrays["vectors"] = np.ascontiguousarray(self.vectors)
        save_file(arrays, str(directory / ARRAYS_NAME))
        items = {"items": [storable_item(i) for i in self.items], "payloads": self.payloads}
        (directory / ITEMS_NAME).write_text(json.dumps(items))

    @classmethod
    def load(cls, directory: Path, modality: str, dim: int) -> "Gallery":
        from safetensors.numpy import load_file

        index = load_index(directory / "index")
        arrays = load_file(str(directory / ARRAYS_NAME))
        items = json.loads((directory / ITEMS_NAME).read_text())
        gallery = cls(modality, index, dim, store_vectors="vectors" in arrays)
        gallery.ids = arrays["ids"].astype(np.int64)
        n = len(gallery.ids)
        if gallery.store_vectors:
            gallery.vectors = arrays["vectors"].astype(np.float32)
        gallery.items, gallery.payloads = list(items["items"]), list(items["payloads"])
        sizes = {"index": index.ntotal, "items": len(gallery.items), "payloads": len(gallery.payloads)}
        if gallery.vectors is not None:
            sizes["vectors"] = len(gallery.vectors)
        if any(v != n for v in sizes.values()):
            raise ValueError(f"{directory}: inconsistent sizes, {n} ids but {sizes}")
        gallery._row_of = {int(i): r for r, i in enumerate(gallery.ids)}
        gallery.codes = np.full((n, index.code_bytes), 0, dtype=np.uint8)  # refilled by the Retriever
        return gallery
