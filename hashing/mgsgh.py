"""MGSGH: Multi-Granularity Semantic Graph Hashing (IEEE Access 2024), its global branch.

Source: ``../shared/papers/002_bb798a49befec461.txt`` §III-B..F and §IV-B (notes:
``../shared/papers/NOTES.md`` §1.6, errors §5). What the paper leaves open or gets wrong, and
what we chose, is written down in ``hashing/MGSGH.md``.

Per modality: a mutual-kNN graph over the training items on Euclidean distance (eqs. 2-3), one
GCN layer on it, the fusion layer of eq. 4 and a tanh hash layer; a decoder for the autoencoder
loss. Loss (eq. 10) = cross-modal triplet with labels (eqs. 5-7) + reconstruction (eq. 8) +
quantisation and bit balance (eq. 9); SGD with the §IV-B settings.

Graph and encoding rule. Identical feature rows are one node (Flickr8K repeats each image for its
five captions). Edge weights are ``exp(-d^2 / sigma^2)`` of the Euclidean distance ``d`` (sigma^2:
mean squared k-th-neighbour distance); the GCN layer sees ``D^-1/2 (A + I) D^-1/2 X``. Because
the graph and the inputs are fixed, that propagation is computed once, and training is
mini-batch SGD over rows. A new item (a query, a later addition) joins the training graph alone:
its neighbours are its k nearest training nodes of its modality (``new_item_neighbors="knn"``; or,
``"mutual"``, only those that would also hold it within their own k-th-neighbour radius), with the
training degrees left as they were; new items never see each other, so an item encoded alone gets
the code it gets in any batch. A row identical to a training row (same bytes, or within float
noise) *is* that node and gets exactly its training-time propagation, hence its trained code.

The hasher keeps the training nodes (their features, raw-row digests and edges): new items need
them to find their neighbours. The graph is built in row blocks and stored as edge lists
(memory O(block x n) while building, O(n k) after), never as an n x n matrix.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from common.device import torch_threads
from common.checks import check_int, check_optional_int

from .base import Hasher, as_features, check_modality, pack_signs, register_hasher
from .lsh import TRANSFORMS, apply_transform, check_choice, resolve_transform
from .mgsgh_fine import KINDS, FineInput, as_fine, build_fine_net, fine_statistics

MODALITIES = ("image", "text")
NEW_ITEM_RULES = ("knn", "mutual")  # how a new item picks its training neighbours (MGSGH.md)
OPTIMIZERS = ("sgd", "adam")  # sgd: the paper's §IV-B; adam: the held-out choice (MGSGH.md)
LR_SCHEDULES = ("constant", "cosine")
TRIPLET_MINING = ("all", "hardest")  # which in-batch negatives enter eqs. 5-7 (MGSGH.md)
TRIPLET_NEGATIVES = ("cross", "both")  # negatives of the other modality only, or of both (MGSGH.md)
SHORTCUT_INITS = ("zero", "ridge")  # the shortcut starts at zero, or at a class-code ridge fit (MGSGH.md)
TRIPLET_ACTIVATIONS = ("hinge", "softplus")  # eqs. 5-7's [x]_+, or its smooth soft-margin form (MGSGH.md)
_BLOCK = 2048
#: squared distance (relative to the mean squared norm of the nodes) under which a row is a training node
_SAME_NODE = 1e-8  # rows of one distance block while building the graph or encoding


def _check_number(value: Any, name: str, allow_zero: bool = True) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value)
            or value < 0 or (value == 0 and not allow_zero)):
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")
    return float(value)


# -- graph ---------------------------------------------------------------------------------------
def row_digests(x: np.ndarray) -> np.ndarray:
    """(n, 16) uint8 blake2b digests of each float32 row's bytes: how a training row is recognised."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return np.frombuffer(b"".join(hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in x),
                         dtype=np.uint8).reshape(len(x), 16)


def unique_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first row of each distinct row, node id of every row), nodes in order of first appearance."""
    _, first, inverse = np.unique(row_digests(x), axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # node ids follow first appearance, not digest order
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return first[order], rank[inverse.reshape(-1)]


def knn_euclidean(queries: np.ndarray, nodes: np.ndarray, k: int, *, exclude_self: bool = False,
                  block: int = _BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """(indices, squared distances) of each query's k nearest nodes, (n, k) each, nearest first.

    Computed in query blocks (memory O(block x len(nodes))). ``exclude_self``: the queries are the
    nodes themselves and a node is not its own neighbour.
    """
    import torch

    q, z = torch.from_numpy(np.ascontiguousarray(queries)), torch.from_numpy(np.ascontiguousarray(nodes))
    zz = (z * z).sum(1)
    idx = np.empty((len(q), k), np.int64)
    dist = np.empty((len(q), k), np.float32)
    for start in range(0, len(q), block):
        stop = min(start + block, len(q))
        qb = q[start:stop]
        d2 = ((qb * qb).sum(1, keepdim=True) + zz[None, :] - 2.0 * (qb @ z.T)).clamp_min(0.0)
        if exclude_self:
            d2[torch.arange(stop - start), torch.arange(start, stop)] = math.inf
        val, ind = d2.topk(k, dim=1, largest=False)
        idx[start:stop], dist[start:stop] = ind.numpy(), val.numpy()
    return idx, dist


@dataclass
class Graph:
    """A mutual-kNN graph over one modality's training nodes, as CSR edge lists.

    ``radius2[j]``: squared distance of node j's k-th neighbour (the mutual test for a new item);
    ``degree[j]``: 1 + sum of j's edge weights (the self-loop of A + I included).
    """

    indptr: np.ndarray
    indices: np.ndarray
    weights: np.ndarray
    radius2: np.ndarray
    degree: np.ndarray
    sigma2: float

    @classmethod
    def build(cls, nodes: np.ndarray, k: int) -> "Graph":
        n = len(nodes)
        k = min(k, n - 1)
        if k < 1:
            empty = np.zeros(0, np.int64)
            return cls(np.zeros(n + 1, np.int64), empty, np.zeros(0, np.float32),
                       np.zeros(n, np.float32), np.ones(n, np.float32), 1.0)
        idx, d2 = knn_euclidean(nodes, nodes, k, exclude_self=True)
        rows = np.repeat(np.arange(n, dtype=np.int64), k)
        cols, dist = idx.reshape(-1), d2.reshape(-1)
        keys = rows * n + cols
        mutual = np.isin(keys, cols * n + rows)  # j in kNN(i) and i in kNN(j)  (eqs. 2-3)
        sigma2 = float(d2[:, -1].mean()) or 1.0
        rows, cols, dist = rows[mutual], cols[mutual], dist[mutual]
        order = np.lexsort((cols, rows))
        rows, cols, dist = rows[order], cols[order], dist[order]
        weights = np.exp(-dist / sigma2).astype(np.float32)
        indptr = np.zeros(n + 1, np.int64)
        np.add.at(indptr, rows + 1, 1)
        indptr = np.cumsum(indptr)
        degree = 1.0 + np.bincount(rows, weights=weights, minlength=n).astype(np.float32)
        return cls(indptr, cols, weights, d2[:, -1].astype(np.float32), degree, sigma2)

    def propagate(self, x: np.ndarray) -> np.ndarray:
        """``D^-1/2 (A + I) D^-1/2 x`` for the training nodes (the GCN layer's aggregation)."""
        from scipy.sparse import csr_matrix

        n = len(self.degree)
        rows = np.repeat(np.arange(n), np.diff(self.indptr))
        inv = 1.0 / np.sqrt(self.degree.astype(np.float64))
        a = csr_matrix((self.weights * inv[rows] * inv[self.indices], self.indices, self.indptr), shape=(n, n))
        x = np.asarray(x, np.float64)
        return (a @ x + x * (inv * inv)[:, None]).astype(np.float32)

    def propagate_new(self, queries: np.ndarray, nodes: np.ndarray, k: int, mutual: bool = False,
                      neighbours: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """The same aggregation for items that are not training nodes (module docstring's rule):
        their k nearest training nodes, or with ``mutual`` only those that would hold the item
        within their own k-th-neighbour radius."""
        k = min(k, len(nodes))
        if k < 1:
            return queries.copy()
        idx, d2 = knn_euclidean(queries, nodes, k) if neighbours is None else neighbours
        idx, d2 = idx[:, :k], d2[:, :k]
        keep = d2 <= self.radius2[idx] if mutual else np.ones(d2.shape, bool)
        w = np.where(keep, np.exp(-d2 / self.sigma2), 0.0).astype(np.float32)
        deg = 1.0 + w.sum(1)
        coef = w / np.sqrt(deg[:, None] * self.degree[idx])
        return (queries / deg[:, None] + np.einsum("nk,nkd->nd", coef, nodes[idx])).astype(np.float32)


# -- labels --------------------------------------------------------------------------------------
def positive_groups(labels: Any, n: int, fallback: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(ids, multi_hot)``: one of them set. (n,) or (n, 1) integer ids stay ids (Flickr8K's image
    ids: never expanded to a one-hot matrix over all items); (n, c) {0, 1} is multi-hot (positives
    share a label). No labels: ``fallback`` ids (the rows' image nodes: pairs sharing an image)."""
    if labels is None:
        return np.asarray(fallback, np.int64), None
    arr = np.asarray(labels)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.shape[:1] != (n,):
        raise ValueError(f"labels must have one row per pair ({n}), got shape {arr.shape}")
    if arr.ndim == 1:
        if not np.issubdtype(arr.dtype, np.integer):
            if not (np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr))):
                raise TypeError(f"labels as a vector must be integer ids, got dtype {arr.dtype}")
        return arr.astype(np.int64), None
    if arr.ndim == 2:
        if not np.isin(arr, (0, 1)).all():
            raise ValueError("labels as a matrix must be multi-hot (values 0 or 1)")
        return None, arr.astype(np.float32)
    raise ValueError(f"labels must be (n,) ids or (n, c) multi-hot, got shape {arr.shape}")


# -- networks ------------------------------------------------------------------------------------
def _optimizer(params, config: "MGSGHConfig"):
    """SGD with momentum (§IV-B) or Adam (decoupled weight decay); see MGSGH.md for the choice."""
    import torch

    if config.optimizer == "adam":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def _build_branch(in_dim: int, out_dim: int, hidden: int, bits: int, dropout: float, fine: Any = None,
                  shortcut: bool = False):
    """One modality: GCN layer on the propagated input, fusion layer (eq. 4), tanh-relaxed hash
    layer, and the decoder of the autoencoder (eq. 8). Buffers hold the input standardisation.
    ``fine``: the per-item GCN of the fine branch (:mod:`.mgsgh_fine`) and its width, or None.
    ``shortcut``: the hash layer also sees the standardised GCN input through a linear map,
    zero at the start (a residual path; MGSGH.md, "shortcut")."""
    import torch
    from torch import nn

    fine_net, fine_width = fine if fine is not None else (None, 0)

    class Branch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.zeros(in_dim))
            self.register_buffer("std", torch.ones(in_dim))
            self.gcn = nn.Linear(in_dim, hidden)  # W of sigma(A_hat X W): A_hat X (or [X | A_hat X]) is the input
            self.fine = fine_net  # G of eq. 4 (None: the global branch alone)
            self.fusion = nn.Linear(hidden + fine_width, hidden)  # M_f, beta of eq. 4 on [g ⋈ G]
            self.hash = nn.Linear(hidden, bits)
            self.decoder = nn.Linear(hidden, out_dim)  # back to the item's own features
            self.drop = nn.Dropout(dropout)
            self.shortcut = nn.Linear(in_dim, bits, bias=False) if shortcut else None
            if self.shortcut is not None:
                nn.init.zeros_(self.shortcut.weight)

        def forward(self, x: torch.Tensor, *fine: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            """(relaxed code in [-1, 1], fused representation xi / zeta); ``fine``: (nodes, mask)."""
            xs = (x - self.mean) / self.std
            g = self.drop(torch.relu(self.gcn(xs)))
            if self.fine is not None:
                g = torch.cat([g, self.drop(self.fine(*fine))], dim=1)
            fused = self.drop(torch.relu(self.fusion(g)))
            z = self.hash(fused) if self.shortcut is None else self.hash(fused) + self.shortcut(xs)
            return torch.tanh(z), fused

    return Branch()


@dataclass(frozen=True)
class MGSGHConfig:
    """MGSGH's settings, declared and checked once; saved with ``asdict``.

    ``k``: neighbours of the mutual-kNN graphs (the paper gives none; chosen on held-out rows,
    ``scripts/mgsgh_choose.py``); ``graph=False`` drops the propagation (the "Nothing" ablation:
    an MLP of the same width). ``fine=True`` adds the fine-grained branch (:mod:`.mgsgh_fine`:
    a per-item relational GCN of ``fine_layers`` layers of width ``fine_dim`` over region grids and
    word sequences, fused with the global branch in eq. 4); it needs those inputs in ``fit`` and
    ``encode``. ``margin`` is the triplet's alpha, ``quantization_weight`` gamma,
    ``balance_weight`` eta, ``reconstruction_weight`` the weight of eq. 8 (1 in eq. 10).
    Optimiser: SGD with ``lr``, ``momentum``, ``weight_decay``, ``batch_size`` of §IV-B by default;
    ``optimizer``, ``lr_schedule``, ``triplet_mining`` and ``shortcut`` are the held-out choices
    for pairs-only training on aligned embeddings (MGSGH.md, "Tuning the training").
    ``triplet_negatives="both"`` also takes negatives from the anchor's own modality (§III-D's
    "distinction between dissimilar items within the same modality"), and ``class_triplet_weight``
    adds eqs. 5-7 with the whole class as positive and every other class as negative (the other
    modality's class centres, recomputed each epoch; needs class ids): two readings of the paper
    tried on Wiki and left off, since neither beat the defaults on held-out rows.
    ``triplet_activation="softplus"`` replaces eqs. 5-7's hinge ``[x]_+`` by ``log(1 + e^x)`` (the
    soft-margin triplet), which keeps pulling after the margin is met; ``class_softmax_weight`` adds
    a deviation from the paper: a softmax over the other modality's class centres at temperature
    ``class_softmax_temperature`` (cross-entropy towards the anchor's class; MGSGH.md, "Wiki,
    session 11"). Both are off by default, and so is ``shortcut_init="ridge"`` (with ``shortcut``
    and class ids: the shortcut starts as a ridge regression of each modality's standardised input
    onto seeded random ±1 codes of its class, shared by both modalities). ``k = 0``
    by default: every graph lowered held-out retrieval on Wiki and Flickr8K (MGSGH.md, "Choosing k").
    """

    k: int = 0
    graph: bool = True
    self_features: bool = True
    hidden_dim: int = 512
    dropout: float = 0.0
    epochs: int = 50
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: str = "sgd"
    lr_schedule: str = "constant"
    triplet_mining: str = "all"
    triplet_negatives: str = "cross"
    class_triplet_weight: float = 0.0
    triplet_activation: str = "hinge"
    class_softmax_weight: float = 0.0
    class_softmax_temperature: float = 0.4
    shortcut: bool = False
    shortcut_init: str = "zero"
    margin: float = 1.0
    triplet_weight: float = 1.0
    reconstruction_weight: float = 1.0
    quantization_weight: float = 0.1
    balance_weight: float = 1.0
    new_item_neighbors: str = "knn"
    fine: bool = False
    fine_dim: int = 64
    fine_layers: int = 2
    image_transform: str = "auto"
    text_transform: str = "auto"

    def __post_init__(self) -> None:
        checked: dict[str, Any] = {
            "new_item_neighbors": check_choice(self.new_item_neighbors, "new_item_neighbors", NEW_ITEM_RULES),
            "k": check_int("k", self.k, 0),
            "hidden_dim": check_int("hidden_dim", self.hidden_dim),
            "fine_dim": check_int("fine_dim", self.fine_dim),
            "fine_layers": check_int("fine_layers", self.fine_layers),
            "epochs": check_int("epochs", self.epochs, 0),
            "batch_size": check_int("batch_size", self.batch_size, 2, note="(a positive and a negative at least)"),
            "lr": _check_number(self.lr, "lr", allow_zero=False),
            "image_transform": check_choice(self.image_transform, "image_transform", TRANSFORMS),
            "text_transform": check_choice(self.text_transform, "text_transform", TRANSFORMS),
            "optimizer": check_choice(self.optimizer, "optimizer", OPTIMIZERS),
            "lr_schedule": check_choice(self.lr_schedule, "lr_schedule", LR_SCHEDULES),
            "triplet_mining": check_choice(self.triplet_mining, "triplet_mining", TRIPLET_MINING),
            "triplet_negatives": check_choice(self.triplet_negatives, "triplet_negatives", TRIPLET_NEGATIVES),
            "shortcut_init": check_choice(self.shortcut_init, "shortcut_init", SHORTCUT_INITS),
            "triplet_activation": check_choice(self.triplet_activation, "triplet_activation", TRIPLET_ACTIVATIONS),
            "class_softmax_temperature": _check_number(self.class_softmax_temperature, "class_softmax_temperature",
                                                       allow_zero=False),
        }
        for name in ("graph", "self_features", "fine"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("dropout", "momentum", "weight_decay", "margin", "triplet_weight", "reconstruction_weight",
                     "quantization_weight", "balance_weight", "class_triplet_weight", "class_softmax_weight"):
            checked[name] = _check_number(getattr(self, name), name)
        for name in ("dropout", "momentum"):
            if checked[name] >= 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not isinstance(self.shortcut, bool):
            raise TypeError(f"shortcut must be a bool, got {self.shortcut!r}")
        if self.shortcut_init != "zero" and not self.shortcut:
            raise ValueError(f"shortcut_init={self.shortcut_init!r} needs shortcut=True")
        for name, value in checked.items():
            object.__setattr__(self, name, value)


def _fine_batch(fine: FineInput | None, rows: np.ndarray) -> tuple:
    """The branch's extra arguments for ``rows``: () without the fine branch, else (nodes, mask) tensors."""
    if fine is None:
        return ()
    import torch

    x, mask = fine.batch(rows)
    return torch.from_numpy(x), None if mask is None else torch.from_numpy(mask)


@register_hasher
class MGSGHHasher(Hasher):
    """MGSGH's global branch (module docstring). ``fit(..., labels)`` takes class ids or multi-hot
    labels; without labels, pairs that share an image (identical image rows) are the positives.

    Seeded and deterministic on CPU (own RNG streams; the global torch RNG is left as it was).
    ``progress`` and ``num_threads`` are runtime settings, not saved: batch-32 steps gain nothing
    from more threads on a shared CPU (as for UDDH).
    """

    method = "mgsgh"

    def __init__(self, bits: int = 64, seed: int = 0, *, progress: bool = True, num_threads: int | None = 1,
                 **settings: Any) -> None:
        """``settings``: the fields of :class:`MGSGHConfig`."""
        super().__init__(bits=bits, seed=seed)
        self.config = MGSGHConfig(**settings)
        self.transforms = {"image": self.config.image_transform, "text": self.config.text_transform}
        self.progress = bool(progress)
        self.num_threads = check_optional_int("num_threads", num_threads)
        self.branches: dict[str, Any] = {}
        self.nodes: dict[str, np.ndarray] = {}  # transformed training node features
        self.digests: dict[str, np.ndarray] = {}  # raw-row digests of the nodes
        self.graphs: dict[str, Graph] = {}
        self.fine_dims: dict[str, int] = {}  # node width of each modality's fine input (fine=True)
        self._lookup: dict[str, dict[bytes, int]] = {}
        self._inference: dict[str, list] = {}  # folded numpy weights for encoding (_inference_weights)
        #: mean training loss per epoch of the last fit (diagnostic, not saved)
        self.loss_history_: list[float] = []

    # -- learning -------------------------------------------------------------------------------
    def fit(self, image_features: np.ndarray, text_features: np.ndarray,
            labels: np.ndarray | None = None, *, image_fine: Any = None, text_fine: Any = None) -> "MGSGHHasher":
        """``image_fine`` / ``text_fine`` (only with ``fine=True``): one per-item graph per row,
        region grids and word sequences (:func:`.mgsgh_fine.as_fine`)."""
        import torch
        from tqdm.auto import tqdm

        raw = {"image": as_features(image_features, "image_features"), "text": as_features(text_features, "text_features")}
        n = len(raw["image"])
        if len(raw["text"]) != n:
            raise ValueError(f"image_features has {n} rows but text_features has {len(raw['text'])}; "
                             "row i of each must describe the same item")
        if n < 2:
            raise ValueError(f"need at least 2 pairs to fit, got {n}")
        self.fine_dims = {}  # a refit may change the node width
        fine = self._check_fine({"image": image_fine, "text": text_fine}, n)
        row_node, inputs = {}, {}
        for m in MODALITIES:
            first, row_node[m] = unique_rows(raw[m])
            self.transforms[m] = resolve_transform(getattr(self.config, f"{m}_transform"), raw[m])
            self.nodes[m] = apply_transform(raw[m][first], self.transforms[m], f"{m}_features")
            self.digests[m] = row_digests(raw[m][first])
            self.graphs[m] = Graph.build(self.nodes[m], self.config.k if self.config.graph else 0)
            inputs[m] = self._with_self(self.nodes[m], self.graphs[m].propagate(self.nodes[m]))
        ids, multi_hot = positive_groups(labels, n, row_node["image"])
        by_class = self._uses_class_centres()
        if self.config.shortcut_init == "ridge" and ids is None:
            raise ValueError("shortcut_init='ridge' needs one class id per pair (labels of shape (n,), or none: "
                             "pairs sharing an image); multi-hot labels have no single class code")
        if by_class and ids is None:
            raise ValueError(f"{by_class} > 0 needs one class id per pair (labels of shape (n,)); "
                             "multi-hot labels have no single class centre")
        self._index_digests()

        with torch_threads(self.num_threads), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            data = {m: torch.from_numpy(inputs[m]) for m in MODALITIES}
            target = {m: torch.from_numpy(self.nodes[m]) for m in MODALITIES}
            rows = {m: torch.from_numpy(row_node[m]) for m in MODALITIES}
            branches = {m: _build_branch(data[m].shape[1], target[m].shape[1], self.config.hidden_dim, self.bits,
                                         self.config.dropout, self._fine_net(m, fine[m].dim) if fine else None,
                                         shortcut=self.config.shortcut)
                        for m in MODALITIES}
            for m in fine:
                mean, std = fine_statistics(fine[m])
                branches[m].fine.mean.copy_(torch.from_numpy(mean))
                branches[m].fine.std.copy_(torch.from_numpy(std))
            stats = {}
            for m in MODALITIES:
                x = data[m][rows[m]]
                branches[m].mean.copy_(x.mean(0))
                branches[m].std.copy_(x.std(0).clamp_min(1e-6))
                t = target[m][rows[m]]
                stats[m] = (t.mean(0), t.std(0).clamp_min(1e-6))
            if self.config.shortcut_init == "ridge":
                self._ridge_shortcut(branches, data, rows, ids)
            params = [p for b in branches.values() for p in b.parameters()]
            opt = _optimizer(params, self.config)
            bs = min(self.config.batch_size, n)
            steps = self.config.epochs * math.ceil(n / bs)
            sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
                     if self.config.lr_schedule == "cosine" else None)
            lab_ids = None if ids is None else torch.from_numpy(ids)
            lab_hot = None if multi_hot is None else torch.from_numpy(multi_hot)
            group, n_groups = None, 0
            if by_class:
                uniq, inverse = np.unique(ids, return_inverse=True)
                group, n_groups = torch.from_numpy(inverse.reshape(-1).astype(np.int64)), len(uniq)
            gen = torch.Generator().manual_seed(self.seed)
            self.loss_history_ = []
            for b in branches.values():
                b.train()
            bar = tqdm(range(self.config.epochs), desc=f"{self.method} {self.bits} bits", disable=not self.progress)
            for _ in bar:
                perm = torch.randperm(n, generator=gen)
                total = 0.0
                centres = (self._class_centres(branches, data, rows, fine, group, n_groups)
                           if by_class else None)
                for start in range(0, n, bs):
                    idx = perm[start:start + bs]
                    if len(idx) < 2:
                        continue
                    if lab_ids is not None:
                        same = lab_ids[idx][:, None] == lab_ids[idx][None, :]
                    else:
                        same = (lab_hot[idx] @ lab_hot[idx].T) > 0
                    out = {m: branches[m](data[m][rows[m][idx]], *_fine_batch(fine.get(m), idx.numpy()))
                           for m in MODALITIES}
                    recon = {m: ((branches[m].decoder(out[m][1]) - (target[m][rows[m][idx]] - stats[m][0]) / stats[m][1])
                                 ** 2).mean() for m in MODALITIES}
                    loss = self._loss(out["image"][0], out["text"][0], same, recon["image"] + recon["text"])
                    if centres is not None and self.config.class_triplet_weight > 0:
                        loss = loss + self.config.class_triplet_weight * self._class_triplet(
                            out["image"][0], out["text"][0], group[idx], centres)
                    if centres is not None and self.config.class_softmax_weight > 0:
                        loss = loss + self.config.class_softmax_weight * self._class_softmax(
                            out["image"][0], out["text"][0], group[idx], centres)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if sched is not None:
                        sched.step()
                    total += float(loss.detach()) * len(idx)
                self.loss_history_.append(total / n)
                bar.set_postfix(loss=f"{self.loss_history_[-1]:.4f}")
        for b in branches.values():
            b.eval()
        self.branches = branches
        self._inference = {}
        self.input_dims = {m: int(raw[m].shape[1]) for m in MODALITIES}
        self.fine_dims = {m: fine[m].dim for m in fine}
        return self

    # -- the fine-grained branch's seam (the branch itself: hashing/mgsgh_fine.py) -------------
    def _check_fine(self, given: dict[str, Any], n: int) -> dict[str, FineInput]:
        """The fine inputs checked against ``config.fine`` and the rows: ``{}`` without the branch."""
        if not self.config.fine:
            extra = [f"{m}_fine" for m, v in given.items() if v is not None]
            if extra:
                raise ValueError(f"{', '.join(extra)} given, but this mgsgh hasher has fine=False (global branch only)")
            return {}
        missing = [f"{m}_fine" for m, v in given.items() if v is None]
        if missing:
            raise ValueError(f"mgsgh with fine=True needs {' and '.join(missing)}: per-item region grids and word "
                             "sequences (hashing/mgsgh_fine.py). Data sets that ship only feature vectors (Wiki's "
                             "SIFT/LDA) have none: use fine=False there")
        return {m: as_fine(v, m, n, self.fine_dims.get(m)) for m, v in given.items()}

    def _fine_net(self, modality: str, in_dim: int) -> tuple[Any, int]:
        return build_fine_net(KINDS[modality], in_dim, self.config.fine_dim, self.config.fine_layers), self.config.fine_dim

    def encode(self, features: np.ndarray, modality: str, fine: Any = None) -> np.ndarray:
        """Packed codes (``Hasher.encode``); with ``fine=True``, ``fine`` is the items' region grids
        (images) or word sequences (texts), one per row."""
        return pack_signs(self._checked_project(features, modality, fine, "encode"))

    def project(self, features: np.ndarray, modality: str, fine: Any = None) -> np.ndarray:
        """Real-valued codes before the sign (``Hasher.project``), taking ``fine`` as :meth:`encode` does."""
        return self._checked_project(features, modality, fine, "project")

    def _checked_project(self, features: np.ndarray, modality: str, fine: Any, caller: str) -> np.ndarray:
        x = self._checked(features, modality, caller)
        checked = self._check_fine({modality: fine}, len(x))
        return self._project(x, modality, checked.get(modality))

    def _class_centres(self, branches, data, rows, fine, group, n_groups):
        """Each class's mean relaxed code per modality, (n_groups, bits), under the network as it is
        at the start of the epoch (eval mode, no gradient): the whole class as the triplet's positive
        and negatives (MGSGH.md, "class-level triplet"). Held fixed during the epoch."""
        import torch

        out = {}
        with torch.no_grad():
            for m in MODALITIES:
                branches[m].eval()
                h = torch.cat([branches[m](data[m][rows[m][s:s + 4096]],
                                           *_fine_batch(fine.get(m), np.arange(s, min(s + 4096, len(group)))))[0]
                               for s in range(0, len(group), 4096)])
                branches[m].train()
                total = torch.zeros(n_groups, h.shape[1]).index_add_(0, group, h)
                count = torch.bincount(group, minlength=n_groups).clamp_min(1)
                out[m] = total / count[:, None]
        return out

    def _class_triplet(self, hi, ht, batch_groups, centres):
        """Eqs. 5-7 with the other modality's class centres as positive (the anchor's class) and
        negatives (every other class): image anchors against text centres, text anchors against image
        centres; mean hinge, the in-batch triplet's distance and margin."""
        import torch

        loss = 0.0
        for h, other in ((hi, centres["text"]), (ht, centres["image"])):
            d = torch.cdist(h, other) ** 2 / self.bits  # (b, classes)
            pos = d.gather(1, batch_groups[:, None])
            neg = torch.ones_like(d, dtype=torch.bool)
            neg[torch.arange(len(h)), batch_groups] = False
            loss = loss + self._hinge(pos - d + self.config.margin)[neg].mean()
        return loss

    def _ridge_shortcut(self, branches, data, rows, ids) -> None:
        """``shortcut_init="ridge"`` (not in the paper; MGSGH.md, "Wiki, session 11"): each class gets
        a seeded random ±1 code, shared by both modalities, and each modality's shortcut starts as
        the ridge regression (lambda 1 on standardised inputs) of its training rows onto their
        class's code, so the hash layer begins from a supervised linear hash, the form that the
        contrastive hasher's head can reach and an MLP started at random must find."""
        import torch

        classes = np.unique(ids, return_inverse=True)[1].reshape(-1)
        gen = torch.Generator().manual_seed(self.seed)
        codes = torch.where(torch.randn(int(classes.max()) + 1, self.bits, generator=gen) >= 0, 1.0, -1.0)
        y = codes[torch.from_numpy(classes.astype(np.int64))]  # (n, bits)
        with torch.no_grad():
            for m in MODALITIES:
                b = branches[m]
                xs = (data[m][rows[m]] - b.mean) / b.std
                gram = xs.T @ xs / len(xs) + torch.eye(xs.shape[1])
                b.shortcut.weight.copy_(torch.linalg.solve(gram, xs.T @ y / len(xs)).T)

    def _uses_class_centres(self) -> str:
        """The name of the first class-centre loss in use ("" if none): those need class ids."""
        for name in ("class_triplet_weight", "class_softmax_weight"):
            if getattr(self.config, name) > 0:
                return name
        return ""

    def _class_softmax(self, hi, ht, batch_groups, centres):
        """Not in the paper (MGSGH.md, "Wiki, session 11"): cross-entropy of a softmax over the other
        modality's class centres, logits ``-d / temperature`` with eqs. 5-7's distance ``d``, target
        the anchor's class; image anchors against text centres and text anchors against image
        centres, averaged. Unlike the hinge it never stops pulling an anchor towards its class."""
        import torch.nn.functional as F

        loss = 0.0
        for h, other in ((hi, centres["text"]), (ht, centres["image"])):
            d = self._distance(h, other)
            loss = loss + F.cross_entropy(-d / self.config.class_softmax_temperature, batch_groups)
        return loss / 2

    def _distance(self, a, b):
        """Eqs. 5-7's d: squared Euclidean / bits (4 x Hamming / bits once codes are binary)."""
        import torch

        return torch.cdist(a, b) ** 2 / self.bits

    def _hinge(self, x):
        """Eqs. 5-7's ``[x]_+``, or its smooth form ``log(1 + e^x)`` (``triplet_activation``)."""
        import torch.nn.functional as F

        return F.relu(x) if self.config.triplet_activation == "hinge" else F.softplus(x)

    def _loss(self, hi, ht, same, reconstruction):
        """Eq. 10 on a batch: triplet (eqs. 5-7) + reconstruction (eq. 8) + L_HS (eq. 9), as means."""
        import torch

        c = self.config
        loss = c.reconstruction_weight * reconstruction
        if c.triplet_weight > 0:
            # d = squared Euclidean / bits: 4 x (Hamming / bits) once codes are binary, so margin 1
            # asks a negative to lie a quarter of the bits further than a positive
            d = torch.cdist(hi, ht) ** 2 / self.bits
            neg = ~same
            trip = 0.0
            # image anchors vs texts (L_i), text anchors vs images (L_t); with triplet_negatives="both"
            # the anchor's own modality supplies negatives too (d_own: anchor to same-modality items)
            for anchors, dist in ((hi, d), (ht, d.T)):
                negatives = [dist]
                if c.triplet_negatives == "both":
                    negatives.append(torch.cdist(anchors, anchors) ** 2 / self.bits)
                if c.triplet_mining == "hardest":
                    # each (anchor, positive) against its batch's closest negative
                    closest = torch.stack([dn.masked_fill(~neg, math.inf).min(1).values
                                           for dn in negatives]).min(0).values[:, None]  # (a, 1)
                    valid = same & torch.isfinite(closest)
                    if valid.any():
                        trip = trip + self._hinge(dist - closest + c.margin)[valid].mean()
                    continue
                t = torch.cat([self._hinge(dist[:, :, None] - dn[:, None, :] + c.margin) for dn in negatives],
                              dim=2)  # [a, p, n (, n own)]
                valid = (same[:, :, None] & neg[:, None, :]).repeat(1, 1, len(negatives))
                if valid.any():
                    trip = trip + t[valid].mean()
            loss = loss + c.triplet_weight * trip
        h = torch.cat([hi, ht])
        if c.quantization_weight > 0:
            loss = loss + c.quantization_weight * ((h - torch.sign(h).detach()) ** 2).mean()
        if c.balance_weight > 0:
            loss = loss + c.balance_weight * ((hi.mean(0) ** 2).mean() + (ht.mean(0) ** 2).mean())
        return loss

    # -- encoding -------------------------------------------------------------------------------
    def _index_digests(self) -> None:
        self._lookup = {m: {bytes(d): i for i, d in enumerate(self.digests[m])} for m in self.digests}
        self._scale = {m: float(np.mean(np.sum(self.nodes[m].astype(np.float64) ** 2, axis=1))) or 1.0
                       for m in self.nodes}

    def propagated(self, features: np.ndarray, modality: str) -> np.ndarray:
        """The GCN layer's input for any rows: a training row's own aggregation, else the new-item rule."""
        check_modality(modality)
        x = as_features(features, f"{modality} features", self.input_dims.get(modality))
        z = apply_transform(x, self.transforms[modality], f"{modality} features")
        graph, nodes = self.graphs[modality], self.nodes[modality]
        k = self.config.k if self.config.graph else 0
        if k == 0:
            return self._with_self(z, z)  # no edges: training and new rows alike are their own aggregate
        known = np.array([self._lookup[modality].get(bytes(d), -1) for d in row_digests(x)], np.int64)
        if (known < 0).any():
            # a row within float noise of a training node is that node: an encoder run on one item
            # or on a batch differs in the last bits, and the training row must keep its trained code
            rows = np.flatnonzero(known < 0)
            idx, d2 = knn_euclidean(z[rows], nodes, max(1, min(k, len(nodes))))
            same = d2[:, 0] <= _SAME_NODE * self._scale[modality]
            known[rows[same]] = idx[same, 0]
            neighbours = (idx[~same], d2[~same])
        out = np.empty_like(z)
        new = known < 0
        if new.any():
            out[new] = graph.propagate_new(z[new], nodes, k, mutual=self.config.new_item_neighbors == "mutual",
                                           neighbours=neighbours)
        if (~new).any():
            out[~new] = self._train_rows(modality, known[~new])
        return self._with_self(z, out)

    def _with_self(self, own: np.ndarray, aggregated: np.ndarray) -> np.ndarray:
        """``[X | A_hat X]`` with ``self_features`` and a graph (GraphSAGE-style: the network weighs an
        item's own features against its neighbourhood's), else ``A_hat X`` (Kipf-Welling's layer)."""
        if self._concatenates():
            return np.concatenate([own, aggregated], axis=1)
        return aggregated

    def _concatenates(self) -> bool:
        """k = 0 or ``graph=False`` leave no neighbourhood to set beside the own features."""
        return self.config.self_features and self.config.graph and self.config.k > 0

    def _net_in(self, modality: str) -> int:
        d = self.input_dims[modality]
        return 2 * d if self._concatenates() else d

    def _train_rows(self, modality: str, node_ids: np.ndarray) -> np.ndarray:
        g, x = self.graphs[modality], self.nodes[modality]
        out = x[node_ids] / g.degree[node_ids, None]
        for r, j in enumerate(node_ids):
            nb = g.indices[g.indptr[j]:g.indptr[j + 1]]
            w = g.weights[g.indptr[j]:g.indptr[j + 1]] / np.sqrt(g.degree[j] * g.degree[nb])
            out[r] += w @ x[nb]
        return out.astype(np.float32)

    def _project(self, features: np.ndarray, modality: str, fine: FineInput | None = None) -> np.ndarray:
        if self.config.fine:
            return self._project_fine(features, modality, fine)
        return self._forward(modality, self.propagated(features, modality))

    # -- inference path ---------------------------------------------------------------------------
    def _forward(self, modality: str, p: np.ndarray) -> np.ndarray:
        """The branch's relaxed code for GCN inputs ``p``, as three float32 numpy products.

        Encoding is the hot path of indexing and search: the same network as ``Branch.forward``
        in eval mode, with the input standardisation folded into the GCN layer and no autograd or
        module dispatch (MGSGH.md, "Cost"). tanh is left out: the bit is the sign of its argument.
        """
        (w1, b1), (w2, b2), (w3, b3), *shortcut = self._inference_weights(modality)
        p = np.ascontiguousarray(p, dtype=np.float32)
        h = p @ w1
        h += b1
        np.maximum(h, 0, out=h)
        g = h @ w2
        g += b2
        np.maximum(g, 0, out=g)
        out = g @ w3
        out += b3
        for ws, bs in shortcut:
            out += p @ ws
            out += bs
        return out

    def _inference_weights(self, modality: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """(weight^T, bias) of the GCN, fusion and hash layers, the GCN's folding in (x - mean) / std;
        computed once per fitted or loaded network."""
        cached = self._inference.get(modality)
        if cached is None:
            if getattr(self.branches[modality], "fine", None) is not None:
                # a fine-grained branch feeds the fusion layer too: only Branch.forward computes that
                raise RuntimeError("the numpy encoding path covers the global branch only; use Branch.forward "
                                   "when the fine branch is on")
            b = {k: v.detach().cpu().numpy().astype(np.float64)
                 for k, v in self.branches[modality].state_dict().items()}
            w1 = b["gcn.weight"] / b["std"][None, :]
            layers = [(w1, b["gcn.bias"] - w1 @ b["mean"]), (b["fusion.weight"], b["fusion.bias"]),
                      (b["hash.weight"], b["hash.bias"])]
            if "shortcut.weight" in b:
                ws = b["shortcut.weight"] / b["std"][None, :]
                layers.append((ws, -ws @ b["mean"]))
            cached = [(np.ascontiguousarray(w.T, np.float32), b_.astype(np.float32)) for w, b_ in layers]
            self._inference[modality] = cached
        return cached

    def _project_fine(self, features: np.ndarray, modality: str, fine: FineInput | None) -> np.ndarray:
        """With the fine branch the whole network runs in torch (its per-item GCN over padded graphs);
        whatever faster path the global branch alone takes does not apply."""
        import torch

        if fine is None:
            self._check_fine({modality: None}, len(features))
        p = self.propagated(features, modality)
        with torch_threads(self.num_threads), torch.no_grad():
            return self.branches[modality](torch.from_numpy(np.ascontiguousarray(p)),
                                           *_fine_batch(fine, np.arange(len(p))))[0].numpy()

    # -- persistence ----------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {**asdict(self.config), "image_transform": self.transforms["image"],
                "text_transform": self.transforms["text"]}

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {f"{m}.net.{k}": v.detach().cpu().numpy().copy()
                 for m, b in self.branches.items() for k, v in b.state_dict().items()}
        for m in MODALITIES:
            g = self.graphs[m]
            state.update({f"{m}.nodes": self.nodes[m], f"{m}.digests": self.digests[m],
                          f"{m}.graph.indptr": g.indptr, f"{m}.graph.indices": g.indices,
                          f"{m}.graph.weights": g.weights, f"{m}.graph.radius2": g.radius2,
                          f"{m}.graph.degree": g.degree, f"{m}.graph.sigma2": np.array([g.sigma2], np.float64)})
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        import torch

        branches = {}
        for m in MODALITIES:
            if m not in self.input_dims:
                raise ValueError(f"config has no input dim for {m!r}")
            missing = [k for k in ("nodes", "digests", "graph.indptr", "graph.indices", "graph.weights",
                                   "graph.radius2", "graph.degree", "graph.sigma2") if f"{m}.{k}" not in state]
            if missing:
                raise ValueError(f"mgsgh weights lack {', '.join(f'{m}.{k}' for k in missing)}")
            nodes = np.asarray(state[f"{m}.nodes"], np.float32)
            if nodes.ndim != 2 or nodes.shape[1] != self.input_dims[m]:
                raise ValueError(f"{m}.nodes has shape {nodes.shape}, expected (n, {self.input_dims[m]})")
            fine = None
            if self.config.fine:
                if f"{m}.net.fine.mean" not in state:
                    raise ValueError(f"mgsgh weights lack {m}.net.fine.mean: the config says fine=True")
                self.fine_dims[m] = int(np.asarray(state[f"{m}.net.fine.mean"]).shape[0])
                fine = self._fine_net(m, self.fine_dims[m])
            branch = _build_branch(self._net_in(m), self.input_dims[m], self.config.hidden_dim, self.bits,
                                   self.config.dropout, fine, shortcut=self.config.shortcut)
            prefix = f"{m}.net."
            sub = {k[len(prefix):]: torch.from_numpy(np.array(v)) for k, v in state.items() if k.startswith(prefix)}
            expected = branch.state_dict()
            if set(sub) != set(expected):
                raise ValueError(f"{m} network weights do not match the config: missing "
                                 f"{sorted(set(expected) - set(sub))}, unexpected {sorted(set(sub) - set(expected))}")
            for k, v in sub.items():
                if v.shape != expected[k].shape:
                    raise ValueError(f"{m}.net.{k} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}")
            branch.load_state_dict(sub)
            branch.eval()
            branches[m] = branch
            self.nodes[m] = nodes
            self.digests[m] = np.asarray(state[f"{m}.digests"], np.uint8)
            self.graphs[m] = Graph(*(np.asarray(state[f"{m}.graph.{k}"]) for k in
                                     ("indptr", "indices", "weights", "radius2", "degree")),
                                   sigma2=float(np.asarray(state[f"{m}.graph.sigma2"])[0]))
        self.branches = branches
        self._inference = {}
        self._index_digests()
