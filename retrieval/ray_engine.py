"""Encoding a folder's images on Ray (``crossmodal index --engine ray``).

Ray Data's batch-inference shape (its ``batch_inference`` guide; clip-retrieval's reader ->
mapper -> writer split): a dataset of *shards* (lists of image paths, one per committed chunk of
the folder indexer) is mapped by an actor pool, each actor holding the encoder loaded once; the
driver writes every shard's output (vectors of the readable images, positions and reasons of the
broken ones) as one atomic file, then the folder indexer commits it into the index exactly as it
commits a chunk it encoded itself: the same hashing, dedup by SHA-256, file records, skipped-file
report. So the index is the same as the local engine's; only where the pixels were embedded differs.

Choices, written down:

* Images are read inside the actors by the encoder's own loader (``encode_images_skipping``), not
  by ``ray.data.read_images``: the same decoding and preprocessing as the local engine, and a
  broken file is skipped with the same reason, not a failed Ray task.
* The driver writes the shards (into ``INDEX.ray-shards/`` beside the index, removed after a
  complete run), so workers need no shared filesystem, only the images' paths.
* A shard's name is a hash of its paths, sizes and modification times. A run killed with
  ``kill -9`` and rerun encodes only shards not on disk: the rerun makes the same shards (the
  indexer's chunks count from the first file left), finds the ones written, and commits them.
* Without ``--ray-address`` a local Ray starts (``num_cpus`` = the machine's cores, no dashboard)
  and stops when the run ends; with one, the run joins that cluster and leaves it running.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from common.atomic import atomic_write_file

SHARD_SUFFIX = ".ray-shards"


def shard_folder(index: Path) -> Path:
    return index.parent / (index.name + SHARD_SUFFIX)


def shard_name(paths: Sequence[str], states: Sequence[Any]) -> str:
    digest = hashlib.sha256(json.dumps([[p, s.size, s.mtime_ns] for p, s in zip(paths, states)]).encode())
    return f"shard-{digest.hexdigest()[:32]}.npz"


def save_shard(path: Path, paths: Sequence[str], vectors: np.ndarray, kept: Sequence[int],
               failed: Sequence[tuple[int, str]]) -> None:
    """One shard's output, written atomically (a kill leaves it whole or absent)."""
    def write(fh: Any) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, vectors=np.asarray(vectors, np.float32), kept=np.asarray(kept, np.int64),
                 failed=np.asarray(json.dumps([[int(i), str(r)] for i, r in failed])),
                 paths=np.asarray(json.dumps(list(paths))))
        fh.write(buffer.getvalue())

    atomic_write_file(path, write)


def load_shard(path: Path) -> tuple[list[str], np.ndarray, list[int], list[tuple[int, str]]]:
    with np.load(path, allow_pickle=False) as z:
        failed = [(int(i), r) for i, r in json.loads(str(z["failed"]))]
        return json.loads(str(z["paths"])), z["vectors"], z["kept"].tolist(), failed


class EmbedShards:
    """Ray Data's callable class: loads the encoder once per actor, embeds whole shards."""

    def __init__(self, encoder: Any, batch_size: int) -> None:
        from .encoders import load_encoder

        self.encoder = load_encoder(encoder) if isinstance(encoder, str) else encoder
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {"name": [], "vectors": [], "kept": [], "failed": []}
        for name, paths in zip(batch["name"], batch["paths"]):
            vectors, kept, failed = self.encoder.encode_images_skipping(json.loads(str(paths)), self.batch_size)
            out["name"].append(str(name))
            out["vectors"].append(vectors.astype(np.float32).tobytes())
            out["kept"].append(json.dumps(list(map(int, kept))))
            out["failed"].append(json.dumps([[int(i), str(r)] for i, r in failed]))
        return {k: np.asarray(v, dtype=object) for k, v in out.items()}


class RayShards:
    """Embeds the indexer's chunks on Ray and hands them back in order, one shard per chunk."""

    def __init__(self, index: Path, encoder: Any, dim: int, batch_size: int, address: str | None = None,
                 concurrency: int | None = None) -> None:
        self.folder = shard_folder(Path(index))
        self.encoder, self.dim, self.batch_size = encoder, dim, batch_size
        self.address, self.concurrency = address, concurrency
        self.reused = 0
        self.encoded = 0

    def run(self, chunks: list[list[tuple[str, Any]]]) -> Iterator[tuple[list[str], np.ndarray, list[int],
                                                                        list[tuple[int, str]]]]:
        """(paths, vectors, kept, failed) of each chunk in order: from disk if a rerun finds its shard,
        else from Ray. A writer thread saves every shard as Ray hands it over, so the first chunks
        commit while later ones are embedded, and a kill keeps every shard already finished."""
        self.folder.mkdir(parents=True, exist_ok=True)
        names = [shard_name([p for p, _ in c], [s for _, s in c]) for c in chunks]
        todo = [(n, c) for n, c in zip(names, chunks) if not (self.folder / n).is_file()]
        self.reused = len(chunks) - len(todo)
        if not todo:
            for name in names:
                yield load_shard(self.folder / name)
            return
        import ray

        started = not ray.is_initialized()
        if started:
            if self.address:
                ray.init(address=self.address, log_to_driver=False)
            else:
                ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
        stop, failure = threading.Event(), []
        writer = threading.Thread(target=self._write_shards, args=(todo, stop, failure), daemon=True)
        writer.start()
        try:
            for name in names:
                path = self.folder / name
                while not path.is_file():
                    if failure:
                        raise RuntimeError(f"the Ray engine failed: {failure[0]}") from failure[0]
                    if not writer.is_alive() and not path.is_file():
                        raise RuntimeError(f"the Ray engine ended without shard {name}")
                    time.sleep(0.02)
                yield load_shard(path)
        finally:
            stop.set()
            writer.join(timeout=120)
            if started:
                ray.shutdown()

    def _write_shards(self, todo: list[tuple[str, list]], stop: threading.Event, failure: list) -> None:
        paths_of = {n: [p for p, _ in c] for n, c in todo}
        try:
            for name, vectors, kept, failed in self._embed(todo):
                save_shard(self.folder / name, paths_of[name], vectors, kept, failed)
                self.encoded += 1
                if stop.is_set():
                    return
        except BaseException as e:  # handed to the consuming thread
            failure.append(e)

    def _embed(self, todo: list[tuple[str, list]]) -> Iterator[tuple[str, np.ndarray, list[int], list]]:
        import ray

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        items = [{"name": n, "paths": json.dumps([p for p, _ in c])} for n, c in todo]
        pool = self.concurrency or max(1, int(ray.available_resources().get("CPU", 1)))
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            EmbedShards, fn_constructor_args=(self.encoder, self.batch_size), batch_size=1,
            concurrency=min(pool, len(items)), num_cpus=1)
        for row in dataset.iter_rows():
            vectors = np.frombuffer(row["vectors"], dtype=np.float32).reshape(-1, self.dim)
            yield row["name"], vectors, json.loads(row["kept"]), [tuple(f) for f in json.loads(row["failed"])]

    def clear(self) -> None:
        """After a complete run: the shards are committed into the index, so they go."""
        shutil.rmtree(self.folder, ignore_errors=True)
