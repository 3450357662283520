"""Exact search on a GPU: faiss ``GpuIndexBinaryFlat`` when faiss-gpu is installed, else torch on CUDA.

The codes and ids live on the host (the source of truth, also what is saved); the device copy is
refreshed lazily after adds and removals, so bulk updates cost one transfer. The torch kernel
(:func:`hamming_knn_torch`) runs on any torch device, which is how it is tested without a GPU
(``GpuFlatIndex(bits, backend="torch", device="cpu")``).

Ties: the torch backend breaks them by insertion order, like :class:`~hashing.index.flat.FlatIndex`;
faiss-gpu's k-selection leaves their order undefined.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from .base import BinaryIndex, SearchResult, register_index

_INDEX_BITS = 40  # low bits of a sort key hold the row index, high bits the distance
_M1, _M2, _M4, _H01 = 0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F, 0x0101010101010101


def faiss_gpu_available() -> bool:
    return hasattr(faiss, "GpuIndexBinaryFlat") and faiss.get_num_gpus() > 0


def _popcount64(x: Any) -> Any:
    """Bit count of each int64 (SWAR). The masks clear the bits that arithmetic shifts smear in."""
    x = x - ((x >> 1) & _M1)
    x = (x & _M2) + ((x >> 2) & _M2)
    x = (x + (x >> 4)) & _M4
    return (x * _H01) >> 56


def _as_words(codes: Any) -> Any:
    """(n, bytes) uint8 tensor -> (n, ceil(bytes / 8)) int64 words, zero-padded (XOR of pads is 0)."""
    import torch

    pad = (-codes.shape[1]) % 8
    if pad:
        codes = torch.nn.functional.pad(codes, (0, pad))
    return codes.contiguous().view(torch.int64)


def hamming_knn_torch(queries: Any, database: Any, k: int, max_elements: int = 1 << 25) -> tuple[Any, Any]:
    """Exact top-k Hamming search of packed uint8 torch tensors on their device.

    Returns (distances int32 (nq, k'), rows int64 (nq, k')), k' = min(k, n), sorted by distance
    then row, so ties go to the lower row. ``max_elements`` bounds the (queries x rows x words)
    block held at once.
    """
    import torch

    n = database.shape[0]
    if n >= 1 << _INDEX_BITS:
        raise ValueError(f"hamming_knn_torch handles up to 2**{_INDEX_BITS} rows, got {n}")
    k = min(k, n)
    q, db = _as_words(queries), _as_words(database)
    chunk = max(1, max_elements // max(1, q.shape[0] * q.shape[1]))
    best = None
    for start in range(0, n, chunk):
        block = db[start:start + chunk]
        dist = _popcount64(q[:, None, :] ^ block[None, :, :]).sum(-1)
        rows = torch.arange(start, start + len(block), device=db.device, dtype=torch.int64)
        keys = (dist << _INDEX_BITS) | rows  # one int64 per pair: orders by (distance, row)
        if best is not None:
            keys = torch.cat([best, keys], dim=1)
        best = torch.topk(keys, min(k, keys.shape[1]), dim=1, largest=False, sorted=True).values
    return (best >> _INDEX_BITS).to(torch.int32), best & ((1 << _INDEX_BITS) - 1)


@register_index
class GpuFlatIndex(BinaryIndex):
    """``backend``: "auto" (faiss-gpu if present, else torch), "faiss" or "torch"; ``device`` for torch."""

    kind = "gpu_flat"

    def __init__(self, bits: int, backend: str = "auto", device: str = "cuda") -> None:
        super().__init__(bits)
        if backend not in ("auto", "faiss", "torch"):
            raise ValueError(f"backend must be 'auto', 'faiss' or 'torch', got {backend!r}")
        if backend == "auto":
            backend = "faiss" if faiss_gpu_available() else "torch"
        if backend == "faiss" and not faiss_gpu_available():
            raise RuntimeError("backend='faiss' needs faiss-gpu and a visible GPU (pip install faiss-gpu)")
        if backend == "torch":
            import torch

            if torch.device(device).type == "cuda" and not torch.cuda.is_available():
                raise RuntimeError(
                    "gpu_flat needs CUDA (faiss-gpu or torch with a GPU); none is available here. "
                    "Use create_index('flat', ...) on CPU, or backend='torch', device='cpu' for testing."
                )
        self.backend, self.device = backend, str(device)
        self._codes = np.empty((0, self.code_bytes), dtype=np.uint8)
        self._id_arr = np.empty(0, dtype=np.int64)
        self._on_device: Any = None  # torch tensor or faiss GPU index; None when stale

    @property
    def ntotal(self) -> int:
        return len(self._id_arr)

    def _ids(self) -> np.ndarray:
        return self._id_arr

    def _add(self, codes: np.ndarray, ids: np.ndarray) -> None:
        self._codes = np.concatenate([self._codes, codes])
        self._id_arr = np.concatenate([self._id_arr, ids])
        self._on_device = None

    def _remove(self, ids: np.ndarray) -> int:
        keep = ~np.isin(self._id_arr, ids)
        removed = int((~keep).sum())
        if removed:
            self._codes, self._id_arr = self._codes[keep], self._id_arr[keep]
            self._on_device = None
        return removed

    def _reset(self) -> None:
        self._remove(self._id_arr)

    def _device_index(self) -> Any:
        if self._on_device is None:
            if self.backend == "faiss":
                self._res = getattr(self, "_res", None) or faiss.StandardGpuResources()
                index = faiss.GpuIndexBinaryFlat(self._res, self.bits)
                index.add(self._codes)
                self._on_device = index
            else:
                import torch

                self._on_device = torch.from_numpy(self._codes).to(self.device)
        return self._on_device

    def _search(self, codes: np.ndarray, k: int) -> SearchResult:
        k = min(k, self.ntotal)
        index = self._device_index()
        if self.backend == "faiss":
            d, rows = index.search(codes, k)
        else:
            import torch

            d, rows = hamming_knn_torch(torch.from_numpy(codes).to(self.device), index, k)
            d, rows = d.cpu().numpy(), rows.cpu().numpy()
        ids = np.where(rows >= 0, self._id_arr[np.maximum(rows, 0)], -1)
        return SearchResult(ids, d, 1.0)

    def get_params(self) -> dict[str, Any]:
        return {"backend": self.backend, "device": self.device}

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"codes": self._codes, "ids": self._id_arr}

    @classmethod
    def _restore(cls, bits, params, faiss_index, arrays) -> "GpuFlatIndex":
        index = cls(bits, **params)
        index._codes = np.ascontiguousarray(arrays["codes"], dtype=np.uint8).reshape(-1, bits // 8)
        index._id_arr = np.asarray(arrays["ids"], dtype=np.int64)
        return index
