"""MGSGH's fine-grained branch: a relational GCN over each item's own graph, pooled into G of eq. 4.

Source: ``../shared/papers/002_bb798a49befec461.txt`` §III-B (local semantic relationship graphs)
and eq. 4, ``xi = sigma(M_f [g ⋈ G] + beta)``, where g is the global branch's node representation and
G the fine one. The paper's per-item graphs are scene graphs (Faster R-CNN objects and predicted
relations; words and predicted relations); offline we substitute (``hashing/MGSGH.md``):

* images: a grid of regions, (n, h, w, d) (the lite tower's 7 x 7 feature map cells,
  :mod:`common.lite_fine`), with four relation types, the neighbour to the left / right / above /
  below;
* texts: a word sequence, ragged as ``(words (total, d), offsets (n + 1,))``, with two relation
  types, the previous and the next word (no dependency parser is installable offline).

The layer is R-GCN's (Schlichtkrull et al. 2018): ``h_i' = relu(W_0 h_i + sum_r W_r h_{N_r(i)} + b)``;
each relation has at most one neighbour here, so its normaliser 1 / |N_r(i)| is 1. Relation
weights carry no bias, so a missing neighbour (the grid's border, the sequence's ends, padding)
sends exactly zero: an item's output depends on its own graph only, and an item encoded alone gets
the same G as in any batch. G = the mean of the last layer over the item's nodes.

Torch is imported inside the builder only: ``import hashing`` stays torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

KINDS = {"image": "grid", "text": "sequence"}
RELATIONS = {"grid": ("left", "right", "above", "below"), "sequence": ("previous", "next")}


@dataclass(frozen=True)
class FineInput:
    """One modality's per-item graphs for ``len(self)`` items (see the module docstring).

    ``nodes``: (n, h, w, d) for a grid, (total, d) for sequences; ``offsets``: (n + 1,) int64 for
    sequences (item i's words are ``nodes[offsets[i]:offsets[i + 1]]``), None for a grid.
    Node features are kept in their given float dtype (float16 halves the memory of a data set)
    and made float32 batch by batch.
    """

    kind: str
    nodes: np.ndarray
    offsets: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.nodes) if self.kind == "grid" else len(self.offsets) - 1

    @property
    def dim(self) -> int:
        return int(self.nodes.shape[-1])

    def batch(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(x, mask)`` of the items ``rows``: a grid's (b, h, w, d) and None; sequences padded to the
        longest, (b, L, d) with zeros and a (b, L) bool mask of the real words."""
        rows = np.asarray(rows, np.int64)
        if self.kind == "grid":
            return self.nodes[rows].astype(np.float32), None
        starts, lengths = self.offsets[rows], np.diff(self.offsets)[rows]
        width = int(lengths.max()) if len(rows) else 0
        mask = np.arange(width)[None, :] < lengths[:, None]
        x = np.zeros((len(rows), width, self.dim), np.float32)
        x[mask] = self.nodes[(starts[:, None] + np.arange(width)[None, :])[mask]]
        return x, mask

    def node_rows(self) -> np.ndarray:
        """Every node's features as (total, d), in their stored dtype (a view where possible)."""
        return self.nodes.reshape(-1, self.dim)


def as_fine(value: Any, modality: str, n: int, dim: int | None = None) -> FineInput:
    """Checks one modality's fine input for ``n`` items (ValueError/TypeError naming what is wrong).

    Images: an (n, h, w, d) array (or a grid :class:`FineInput`); texts: a ``(words, offsets)``
    pair (or a sequence :class:`FineInput`), offsets starting at 0, non-decreasing by at least 1
    (every item has a node), ending at ``len(words)``. ``dim``: the node width fitted, if any.
    """
    name = f"{modality}_fine"
    kind = KINDS.get(modality)
    if kind is None:
        raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
    if isinstance(value, FineInput):
        if value.kind != kind:
            raise ValueError(f"{name} must be a {kind} (FineInput kind {kind!r}), got kind {value.kind!r}")
        nodes, offsets = value.nodes, value.offsets
    elif kind == "grid":
        if isinstance(value, tuple):
            raise TypeError(f"{name} must be an (n, h, w, d) array of region features, got a tuple")
        nodes, offsets = value, None
    else:
        if not (isinstance(value, (tuple, list)) and len(value) == 2):
            raise TypeError(f"{name} must be a (words (total, d), offsets (n + 1,)) pair, got {type(value).__name__}")
        nodes, offsets = value
    nodes = np.asarray(nodes)
    if not np.issubdtype(nodes.dtype, np.floating):
        raise TypeError(f"{name} node features must be floating point, got dtype {nodes.dtype}")
    want_ndim = 4 if kind == "grid" else 2
    if nodes.ndim != want_ndim:
        shape = "(n, h, w, d)" if kind == "grid" else "(total words, d)"
        raise ValueError(f"{name} node features must be {shape}, got shape {nodes.shape}")
    if dim is not None and nodes.shape[-1] != dim:
        raise ValueError(f"{name} nodes have dimension {nodes.shape[-1]}, expected {dim} (as fitted)")
    if nodes.shape[-1] < 1 or (kind == "grid" and min(nodes.shape[1:3]) < 1):
        raise ValueError(f"{name} has an empty dimension: shape {nodes.shape}")
    if not np.isfinite(nodes).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if kind == "sequence":
        offsets = np.asarray(offsets)
        if offsets.ndim != 1 or not np.issubdtype(offsets.dtype, np.integer):
            raise ValueError(f"{name} offsets must be a 1-D integer array (n + 1,), got shape {offsets.shape} "
                             f"dtype {offsets.dtype}")
        if len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(nodes) or (np.diff(offsets) < 1).any():
            raise ValueError(f"{name} offsets must start at 0, grow by at least 1 per item (every text has a "
                             f"word) and end at the number of words ({len(nodes)})")
        offsets = offsets.astype(np.int64)
    fine = FineInput(kind, nodes, offsets)
    if len(fine) != n:
        raise ValueError(f"{name} describes {len(fine)} items, expected {n} (one per feature row)")
    return fine


def build_fine_net(kind: str, in_dim: int, width: int, layers: int):
    """The per-item relational GCN for ``kind`` ("grid" or "sequence"): ``forward(x, mask) -> (b, width)``.

    Buffers ``mean``/``std`` hold the standardisation of the node features (set by the fitter).
    """
    import torch
    from torch import nn
    from torch.nn import functional as F

    relations = len(RELATIONS[kind])

    class FineGCN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.zeros(in_dim))
            self.register_buffer("std", torch.ones(in_dim))
            dims = [in_dim] + [width] * layers
            self.own = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))  # W_0, b
            self.rel = nn.ModuleList(nn.Linear(a, b * relations, bias=False) for a, b in zip(dims, dims[1:]))  # W_r

        def messages(self, y: torch.Tensor) -> torch.Tensor:
            """Sum over relations of each node's neighbour's W_r h (zero where there is none)."""
            parts = y.chunk(relations, dim=-1)
            if kind == "grid":  # y: (b, h, w, c); F.pad pads the last dims first: (c, c, w, w, h, h)
                left, right, above, below = parts
                return (F.pad(left[:, :, :-1], (0, 0, 1, 0)) + F.pad(right[:, :, 1:], (0, 0, 0, 1))
                        + F.pad(above[:, :-1], (0, 0, 0, 0, 1, 0)) + F.pad(below[:, 1:], (0, 0, 0, 0, 0, 1)))
            previous, following = parts  # y: (b, L, c)
            return F.pad(previous[:, :-1], (0, 0, 1, 0)) + F.pad(following[:, 1:], (0, 0, 0, 1))

        def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
            keep = None if mask is None else mask.unsqueeze(-1).to(x.dtype)
            h = (x - self.mean) / self.std
            if keep is not None:
                h = h * keep  # padding holds zeros, so with bias-free W_r it sends nothing
            for own, rel in zip(self.own, self.rel):
                h = torch.relu(own(h) + self.messages(rel(h)))
                if keep is not None:
                    h = h * keep
            if kind == "grid":
                return h.mean(dim=(1, 2))
            if keep is None:
                return h.mean(dim=1)
            return h.sum(1) / keep.sum(1).clamp_min(1.0)

    return FineGCN()


def fine_statistics(fine: FineInput) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and standard deviation (floored at 1e-6) of every node of the training items."""
    x = fine.node_rows()
    total, square = np.zeros(x.shape[1]), np.zeros(x.shape[1])
    for start in range(0, len(x), 1 << 16):  # chunks: Flickr8K's 30,000 region grids are 1.5M nodes
        chunk = x[start:start + (1 << 16)].astype(np.float64)
        total += chunk.sum(0)
        square += (chunk * chunk).sum(0)
    mean = total / max(len(x), 1)
    std = np.sqrt(np.maximum(square / max(len(x), 1) - mean * mean, 0.0))
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)
