"""Atomic, versioned persistence of binary indexes.

A saved index is a directory::

    index.json         {"format_version", "type", "bits", "ntotal", "params"}
    index.faiss        the native faiss binary index (faiss.write_index_binary), when there is one
    arrays.safetensors extra arrays (ids, tombstones, codes of non-faiss indexes), when any

The directory is written into a temporary sibling and swapped in by
:func:`hashing.base.atomic_write_dir`, so a failed save leaves the previous one loadable and
unchanged. Loading checks the version, the type, the bit count and the item count against the files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from ..base import atomic_write_dir
from .registry import index_class

if TYPE_CHECKING:
    from .base import BinaryIndex

FORMAT_VERSION = 1
META_NAME = "index.json"
FAISS_NAME = "index.faiss"
ARRAYS_NAME = "arrays.safetensors"


def save_index(index: "BinaryIndex", path: str | os.PathLike) -> Path:
    from safetensors.numpy import save_file

    meta = {
        "format_version": FORMAT_VERSION,
        "type": index.kind,
        "bits": index.bits,
        "ntotal": index.ntotal,
        "params": index.get_params(),
    }
    native = index._faiss_index()
    arrays = {k: np.ascontiguousarray(v) for k, v in index._arrays().items()}

    def write(tmp: Path) -> None:
        if native is not None:
            faiss.write_index_binary(native, str(tmp / FAISS_NAME))
        if arrays:
            save_file(arrays, str(tmp / ARRAYS_NAME))
        # Written last: a directory with index.json is a complete one.
        (tmp / META_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True))

    return atomic_write_dir(path, write)


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The validated ``index.json`` of a saved index."""
    meta_file = Path(path) / META_NAME
    if not meta_file.is_file():
        raise FileNotFoundError(f"{path} is not a saved binary index: {META_NAME} is missing")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {meta_file}: {e}") from e
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{meta_file}: format_version {version!r} is not supported (expected {FORMAT_VERSION})")
    for field in ("type", "bits", "ntotal", "params"):
        if field not in meta:
            raise ValueError(f"{meta_file} lacks the field {field!r}")
    index_class(meta["type"])  # unknown types fail here, naming the available ones
    return meta


def load_index(path: str | os.PathLike) -> "BinaryIndex":
    from safetensors.numpy import load_file

    path = Path(path)
    meta = read_meta(path)
    bits = int(meta["bits"])
    native = None
    if (path / FAISS_NAME).is_file():
        native = faiss.read_index_binary(str(path / FAISS_NAME))
        if native.d != bits:
            raise ValueError(f"{path / FAISS_NAME} holds {native.d}-bit codes but {META_NAME} says bits={bits}")
    arrays = load_file(str(path / ARRAYS_NAME)) if (path / ARRAYS_NAME).is_file() else {}
    index = index_class(meta["type"])._restore(bits, dict(meta["params"]), native, arrays)
    if index.ntotal != int(meta["ntotal"]):
        raise ValueError(f"{path}: the files hold {index.ntotal} items but {META_NAME} says ntotal={meta['ntotal']}")
    return index
