"""Embeddings cached on disk in chunks, so a long encoding run resumes where it stopped.

A cache entry is one directory per (encoder, modality, ordered item list, chunk size), named by a
hash of all four (:func:`cache_key`):

    CACHE_DIR/lite-image-3f1c.../manifest.json               what the entry is (written once)
    CACHE_DIR/lite-image-3f1c.../chunk-000000.safetensors    rows [0, chunk_size)
    ...

Each chunk is written atomically (temporary sibling, fsync, rename) and carries its own metadata:
the entry key, its row range, a hash of its items and a SHA-256 of its embeddings. A chunk that is
missing, truncated, from another entry or whose bytes changed is simply encoded again, so an
interrupted run re-encodes only the chunks it had not finished. Because chunks are
self-describing and disjoint, several processes can fill one entry at once (each its own chunks:
``shard=(rank, world_size)``, see :mod:`eval.sharded`) without a shared manifest to fight over.

The encoder's identity (:func:`encoder_fingerprint`) covers its class, id, dimension, precision,
config and a digest of its weights, so retraining a model under the same id misses the cache.
Items are identified by their string form (image paths, caption texts); in-memory images need
explicit ``keys``. A file changed in place under the same path is *not* detected: key on content
hashes (``keys=``) where that matters.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from common.atomic import atomic_write_file, write_json
from common.checks import check_int

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TENSOR = "embeddings"
MODALITIES = ("image", "text")


def _sha256(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))  # length-prefixed: ("ab", "c") != ("a", "bc")
        h.update(part)
    return h.hexdigest()


def items_digest(identities: Sequence[str]) -> str:
    return _sha256(*(s.encode("utf-8") for s in identities))


def item_identities(items: Sequence[Any], keys: Sequence[str] | None = None) -> list[str]:
    """The string that stands for each item in the cache key: ``keys`` if given, else str(path/text)."""
    if keys is not None:
        if len(keys) != len(items):
            raise ValueError(f"keys has {len(keys)} entries but there are {len(items)} items")
        bad = next((i for i, k in enumerate(keys) if not isinstance(k, str)), None)
        if bad is not None:
            raise TypeError(f"keys[{bad}] is {type(keys[bad]).__name__}, expected str")
        return list(keys)
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"items[{i}] is {type(item).__name__}: only paths and texts identify themselves; "
                            f"pass keys= (e.g. content hashes) to cache in-memory images")
        out.append(os.fspath(item))
    return out


def state_digest(module: Any) -> str | None:
    """SHA-256 over a torch module's state dict (names, dtypes, shapes, bytes), or None."""
    state_dict = getattr(module, "state_dict", None)
    if not callable(state_dict):
        return None
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def encoder_fingerprint(encoder: Any, weights: bool = True) -> dict[str, Any]:
    """What makes two encoders' embeddings interchangeable, as JSON-able fields.

    ``weights=True`` hashes the weights of ``encoder.model`` (a torch module) when there is one:
    about a second per 100M parameters, once per run.
    """
    config = getattr(encoder, "config", None)
    fp: dict[str, Any] = {
        "class": f"{type(encoder).__module__}.{type(encoder).__qualname__}",
        "model_id": str(getattr(encoder, "model_id", "")),
        "dim": int(encoder.dim) if hasattr(encoder, "dim") else None,
        "precision": getattr(encoder, "precision", None),
        "config_sha256": _sha256(json.dumps(config, sort_keys=True, default=str).encode())
        if isinstance(config, dict) else None,
    }
    if weights and getattr(encoder, "model", None) is not None:
        fp["weights_sha256"] = state_digest(encoder.model)
    return fp


def cache_key(fingerprint: dict[str, Any], modality: str, identities: Sequence[str], chunk_size: int) -> str:
    blob = json.dumps({"format_version": FORMAT_VERSION, "encoder": fingerprint, "modality": modality,
                       "chunk_size": chunk_size, "items": items_digest(identities)}, sort_keys=True)
    return _sha256(blob.encode())[:24]


class EmbeddingCache:
    """One cache entry: the chunks of one (encoder, modality, item list, chunk size)."""

    def __init__(self, cache_dir: str | os.PathLike, fingerprint: dict[str, Any], modality: str,
                 identities: Sequence[str], chunk_size: int) -> None:
        if modality not in MODALITIES:
            raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
        chunk_size = check_int("chunk_size", chunk_size)
        self.fingerprint, self.modality, self.chunk_size = fingerprint, modality, chunk_size
        self.identities = list(identities)
        self.n = len(self.identities)
        self.key = cache_key(fingerprint, modality, self.identities, chunk_size)
        label = re.sub(r"[^A-Za-z0-9._-]+", "_", fingerprint.get("model_id") or "encoder")[-40:].strip("_.")
        self.directory = Path(cache_dir) / f"{label or 'encoder'}-{modality}-{self.key}"

    @property
    def n_chunks(self) -> int:
        return -(-self.n // self.chunk_size)

    def bounds(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_size
        return start, min(start + self.chunk_size, self.n)

    def path(self, chunk: int) -> Path:
        return self.directory / f"chunk-{chunk:06d}.safetensors"

    def ensure_manifest(self) -> None:
        """Writes the manifest once; an existing one must describe this same entry."""
        path = self.directory / MANIFEST
        if path.is_file():
            try:
                manifest = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise ValueError(f"{path} is not valid JSON ({e}); delete the directory to rebuild it") from e
            if manifest.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"{path} has format_version {manifest.get('format_version')!r}, this code reads "
                                 f"{FORMAT_VERSION}; delete the directory to rebuild it")
            if manifest.get("key") != self.key:
                raise ValueError(f"{path} belongs to cache key {manifest.get('key')!r}, not {self.key!r}")
            return
        write_json(path, {
            "format_version": FORMAT_VERSION, "key": self.key, "encoder": self.fingerprint,
            "modality": self.modality, "n": self.n, "chunk_size": self.chunk_size, "n_chunks": self.n_chunks,
            "items_sha256": items_digest(self.identities), "first_items": self.identities[:3],
        })

    def load(self, chunk: int) -> np.ndarray | None:
        """The chunk's embeddings, or None when it is missing or fails any check (then re-encode)."""
        from safetensors import safe_open

        path = self.path(chunk)
        if not path.is_file():
            return None
        start, stop = self.bounds(chunk)
        try:
            with safe_open(str(path), framework="np") as f:
                meta = f.metadata() or {}
                array = f.get_tensor(TENSOR)
        except Exception:  # truncated or garbled file: safetensors raises its own error types
            return None
        expected = {"key": self.key, "chunk": str(chunk), "start": str(start), "stop": str(stop),
                    "items_sha256": items_digest(self.identities[start:stop])}
        if any(meta.get(k) != v for k, v in expected.items()):
            return None
        if array.dtype != np.float32 or array.ndim != 2 or len(array) != stop - start:
            return None
        if meta.get("sha256") != hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest():
            return None
        return array

    def save(self, chunk: int, embeddings: np.ndarray) -> Path:
        from safetensors.numpy import save

        start, stop = self.bounds(chunk)
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or len(embeddings) != stop - start:
            raise ValueError(f"chunk {chunk} needs ({stop - start}, dim) embeddings, got shape {embeddings.shape}")
        meta = {"format_version": str(FORMAT_VERSION), "key": self.key, "chunk": str(chunk), "start": str(start),
                "stop": str(stop), "items_sha256": items_digest(self.identities[start:stop]),
                "sha256": hashlib.sha256(embeddings.tobytes()).hexdigest()}
        blob = save({TENSOR: embeddings}, metadata=meta)
        return atomic_write_file(self.path(chunk), lambda fh: fh.write(blob))


def encode_function(encoder: Any, modality: str, batch_size: int | None) -> Callable[[list[Any]], np.ndarray]:
    """The encoder's own ``encode_images`` / ``encode_texts``, without its progress bar."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
    method = encoder.encode_images if modality == "image" else encoder.encode_texts
    kwargs: dict[str, Any] = {"progress": False}
    if batch_size is not None:
        kwargs["batch_size"] = batch_size
    return lambda items: method(items, **kwargs)


def cached_encode(
    encoder: Any,
    items: Sequence[Any],
    modality: str,
    cache_dir: str | os.PathLike,
    chunk_size: int = 4096,
    progress: bool | None = None,
    *,
    batch_size: int | None = None,
    keys: Sequence[str] | None = None,
    encoder_id: str | None = None,
    shard: tuple[int, int] = (0, 1),
    barrier: Callable[[], None] | None = None,
) -> np.ndarray:
    """``encoder.encode_images(items)`` / ``encode_texts(items)``, through the chunked disk cache.

    Chunks already on disk (and valid) are read; the others are encoded one chunk at a time and
    saved before the next starts, so an interruption loses at most one chunk of work.

    ``encoder_id`` replaces :func:`encoder_fingerprint` (skipping the weights digest): the caller
    then vouches that the id changes whenever the embeddings would. ``shard=(rank, world_size)``
    makes this process encode only chunks ``rank, rank + world_size, ...``; ``barrier`` is then
    called before every process reads all chunks back (``PartialState().wait_for_everyone``).
    A chunk size that is a multiple of the batch size keeps the encoder's batches, and so its
    outputs, the same as one uncached call.
    """
    rank, world = shard
    if not (isinstance(rank, int) and isinstance(world, int) and 0 <= rank < world):
        raise ValueError(f"shard must be (rank, world_size) with 0 <= rank < world_size, got {shard!r}")
    fingerprint = {"model_id": encoder_id} if encoder_id is not None else encoder_fingerprint(encoder)
    cache = EmbeddingCache(cache_dir, fingerprint, modality, item_identities(items, keys), chunk_size)
    encode = encode_function(encoder, modality, batch_size)
    if rank == 0:
        cache.ensure_manifest()
    if cache.n == 0:
        return np.empty((0, int(getattr(encoder, "dim", 0))), dtype=np.float32)
    arrays: dict[int, np.ndarray] = {}
    todo = []
    for c in range(rank, cache.n_chunks, world):
        array = cache.load(c)
        if array is None:
            todo.append(c)
        else:
            arrays[c] = array
    rows = {c: cache.bounds(c)[1] - cache.bounds(c)[0] for c in range(cache.n_chunks)}
    show = progress if progress is not None else bool(todo)
    bar = tqdm(total=sum(rows[c] for c in range(rank, cache.n_chunks, world)), initial=sum(rows[c] for c in arrays),
               desc=f"encode {modality}s (cache {cache.directory.name})",
               unit="img" if modality == "image" else "txt", disable=not show)
    for c in todo:
        start, stop = cache.bounds(c)
        arrays[c] = np.ascontiguousarray(encode(list(items[start:stop])), dtype=np.float32)
        cache.save(c, arrays[c])
        bar.update(rows[c])
    bar.close()
    if barrier is not None:
        barrier()
    for c in range(cache.n_chunks):
        if c not in arrays:
            array = cache.load(c)
            if array is None:
                raise RuntimeError(f"{cache.path(c)} is missing or invalid after encoding: another process "
                                   f"sharing {cache.directory} failed or wrote a different entry")
            arrays[c] = array
    return np.concatenate([arrays[c] for c in range(cache.n_chunks)])
