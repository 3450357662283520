"""Encoding sharded over processes with accelerate, gathered back into one process's result.

    accelerate launch --multi_gpu --num_processes 4 -m eval.retrieval ...   # 4 GPUs, or 4 CPU processes
    torchrun --nproc_per_node 4 -m eval.retrieval ...                        # the same, without accelerate's CLI

On a machine without a visible GPU, :func:`get_state` makes those processes CPU processes over
gloo. (``accelerate launch --cpu --num_processes N`` starts N processes only through MPI, with
``--mpirun_hostfile``; without it, it starts one.)

Under ``accelerate launch`` every process runs the same script; :func:`encode_sharded` gives each
one a contiguous run of *whole batches* (``PartialState.split_between_processes`` over batch
indices), so every batch holds exactly the items it would hold in a one-process run (texts are
padded per batch: the same batches give the same padding, and the same numbers). The shards are
gathered with one padded tensor all-gather and concatenated in rank order, which is the original
order, and **every** process returns the full (n, dim) array. Without a launcher (a plain
``python``), ``PartialState`` is a single process and this is one ordinary ``encode_*`` call.

:func:`encode` adds the disk cache of :mod:`eval.embedding_cache`: with a cache directory, the
processes split the cache's chunks instead (rank r encodes chunks r, r + world, ...), write them,
wait for each other and read all chunks back, which needs a filesystem every process sees.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from common.checks import check_int

from .embedding_cache import cached_encode
from .extras import require


#: Where torchrun and MPI launchers put the process count (the variables accelerate reads).
WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def get_state() -> Any:
    """accelerate's ``PartialState``, on CPU processes (gloo) when no GPU is visible.

    A plain ``PartialState()`` under torchrun on a CPU-only machine reports one process in each
    of the N, and every process would silently encode everything; that is an error here.
    Scripts should call this (not ``PartialState()``) first, e.g. for ``is_main_process``.
    """
    import torch

    require("accelerate", "encoding sharded over processes")
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    world = max(int(os.environ.get(v, "1")) for v in WORLD_SIZE_VARS)
    if state.num_processes != world:
        raise RuntimeError(f"{world} processes were launched ({'/'.join(WORLD_SIZE_VARS)}) but accelerate's state "
                           f"has {state.num_processes} (was a PartialState created before eval.sharded.get_state()?)")
    return state


def encode_sharded(encoder: Any, items: Sequence[Any], modality: str, batch_size: int = 64,
                   progress: bool | None = None, state: Any = None) -> np.ndarray:
    """``encoder.encode_images/texts(items)`` with the work split over the accelerate processes.

    Returns the same (n, dim) float32 array on every process; with one process it *is* the
    single call. Progress bars show on the local main process only.
    """
    import torch
    from accelerate.utils import gather

    state = state or get_state()
    batch_size = check_int("batch_size", batch_size)
    encode = _encode(encoder, modality, batch_size, progress if state.is_local_main_process else False)
    if state.num_processes == 1:
        return encode(list(items))
    n = len(items)
    batch_ids = list(range(-(-n // batch_size)))
    with state.split_between_processes(batch_ids) as mine:
        start, stop = (mine[0] * batch_size, min((mine[-1] + 1) * batch_size, n)) if mine else (0, 0)
    local = encode(list(items[start:stop])) if stop > start else np.empty((0, int(encoder.dim)), np.float32)
    local = np.ascontiguousarray(local, dtype=np.float32)
    dim = local.shape[1]
    max_rows = -(-len(batch_ids) // state.num_processes) * batch_size  # the largest shard, padded
    padded = torch.zeros((max_rows, dim), dtype=torch.float32, device=state.device)
    padded[: len(local)] = torch.from_numpy(local).to(state.device)
    counts = gather(torch.tensor([len(local)], device=state.device)).cpu().tolist()
    everything = gather(padded).cpu().numpy().reshape(state.num_processes, max_rows, dim)
    out = np.concatenate([everything[r, :c] for r, c in enumerate(counts)])
    if len(out) != n:
        raise RuntimeError(f"gathered {len(out)} embeddings for {n} items (per-process counts {counts})")
    return out


def _encode(encoder: Any, modality: str, batch_size: int, progress: bool | None):
    if modality not in ("image", "text"):
        raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
    fn = encoder.encode_images if modality == "image" else encoder.encode_texts
    return lambda items: fn(items, batch_size=batch_size, progress=progress)


def encode(encoder: Any, items: Sequence[Any], modality: str, batch_size: int = 64,
           progress: bool | None = None, cache_dir: str | os.PathLike | None = None,
           chunk_size: int | None = None, keys: Sequence[str] | None = None) -> np.ndarray:
    """The one call for scripts: sharded over accelerate processes, cached when ``cache_dir`` is set.

    ``chunk_size`` (cache only) defaults to 64 batches; keeping it a multiple of ``batch_size``
    keeps batches, and so embeddings, identical to an uncached one-process run.
    """
    state = get_state()
    if cache_dir is None:
        return encode_sharded(encoder, items, modality, batch_size, progress, state)
    return cached_encode(
        encoder, items, modality, cache_dir, chunk_size or 64 * batch_size,
        progress if state.is_local_main_process else False, batch_size=batch_size, keys=keys,
        shard=(state.process_index, state.num_processes), barrier=state.wait_for_everyone,
    )


__all__ = ["encode", "encode_sharded", "get_state"]
