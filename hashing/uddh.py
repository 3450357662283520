"""UDDH: Unsupervised Dual Deep Hashing with Semantic-Index and Content-Code (TPAMI 2024).

Source: ``../shared/papers/003_26615b46db2c8eea.txt`` §III (notes: ``../shared/papers/NOTES.md`` §1.7).
Every item gets a *head* code, the id of its semantic-index bucket (binary k-means over the
modality-shared content code B^c), and a *tail* code ``[B^c | B_i^s]`` (shared content bits, then
modality-specific bits) that is ranked by Hamming distance inside the query's buckets.

Our inputs are precomputed features, not raw images, so the paper's ResNet18 becomes a small MLP
per modality; the text MLP is the encoder of an autoencoder whose reconstruction loss is part of
Net_2 (eq. 4). Training is Algorithm 1: networks regress onto the current codes, then the
closed-form code updates (eq. 12 for B^c, eq. 16 for the centres C, eq. 19 for H, eq. 22 for B_i^s).
What the paper leaves open, and what we chose, is written down in ``hashing/UDDH.md``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from common.device import torch_threads
from common.checks import check_int, check_optional_int

from .base import Hasher, as_features, check_bits, check_modality, pack_signs, register_hasher
from .binary_kmeans import binary_kmeans, kmeanspp_centres, lloyd_round, nearest_centres
from .cca import fit_cca

GraphMode = Literal["aligned", "paper"]
GRAPH_MODES: tuple[str, ...] = ("aligned", "paper")

_KMEANS_INIT_ROUNDS = 50  # Lloyd rounds of the initial semantic index
_POLISH_ROUNDS = 100  # and of the final one, on the final content codes
_ROW_CHUNK = 1024  # rows of one within-cluster affinity block; memory is _ROW_CHUNK x cluster size


# The semantic index is binary k-means in Hamming space: hashing/binary_kmeans.py (eqs. 15-19).
def _sign(x: np.ndarray) -> np.ndarray:
    """sign with sign(0) = +1, as int8 {-1, +1} (the convention of :func:`hashing.base.pack_signs`)."""
    return np.where(x >= 0, 1, -1).astype(np.int8)


# -- cluster-guided affinity (eq. 8), blockwise ------------------------------------------------------
def _cluster_members(primary: np.ndarray, k: int) -> list[np.ndarray]:
    order = np.argsort(primary, kind="stable")
    bounds = np.searchsorted(primary[order], np.arange(k + 1))
    return [order[bounds[r] : bounds[r + 1]] for r in range(k)]


def within_cluster_sigma2(features: np.ndarray, members: list[np.ndarray]) -> float:
    """Mean squared distance over all within-cluster pairs, in closed form (O(n d), no pairs).

    For one cluster, mean_{p,q} |f_p - f_q|^2 = 2 (mean |f|^2 - |mean f|^2); clusters are weighted by
    their number of pairs m^2, i.e. the mean over exactly the pairs that eq. 8 makes non-zero.
    """
    total, pairs = 0.0, 0.0
    for idx in members:
        m = len(idx)
        if m < 2:
            continue
        f = features[idx].astype(np.float64)
        msd = 2.0 * (np.mean(np.sum(f * f, axis=1)) - np.sum(f.mean(axis=0) ** 2))
        total += m * m * max(msd, 0.0)
        pairs += m * m
    return total / pairs if pairs > 0 and total > 0 else 1.0


def cluster_affinity_product(
    feats: tuple[np.ndarray, np.ndarray],
    sigma2: tuple[float, float],
    codes: np.ndarray,
    members: list[np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(codes^T (A_1 + A_2), degree of A_1 + A_2)`` without forming an n x n matrix.

    A_i^{pq} = exp(-|f_i(p) - f_i(q)|^2 / (2 sigma_i^2)) if p and q share a cluster, else 0 (eq. 8,
    with the minus sign the printed formula lacks). A is block diagonal over clusters, so the product
    costs O(sum_r m_r^2 (d + l)) and at most _ROW_CHUNK x m_r floats at a time. ``codes`` is (n, l).
    """
    n, l = codes.shape
    prod = np.zeros((n, l), dtype=np.float64)
    degree = np.zeros(n, dtype=np.float64)
    codes_f = codes.astype(np.float32)
    for idx in members:
        m = len(idx)
        if m == 0:
            continue
        fa = [f[idx].astype(np.float32) for f in feats]
        sq = [np.sum(f * f, axis=1) for f in fa]
        block_codes = codes_f[idx]
        for start in range(0, m, _ROW_CHUNK):
            stop = min(m, start + _ROW_CHUNK)
            s = np.zeros((stop - start, m), dtype=np.float32)
            for f, n2, s2 in zip(fa, sq, sigma2):
                d2 = n2[start:stop, None] + n2[None, :] - 2.0 * (f[start:stop] @ f.T)
                s += np.exp(-np.maximum(d2, 0.0) / (2.0 * s2))
            prod[idx[start:stop]] = s @ block_codes
            degree[idx[start:stop]] = s.sum(axis=1)
    return prod, degree


# -- networks ----------------------------------------------------------------------------------------
def _build_net(in_dim: int, hidden: int, content_bits: int, specific_bits: int, autoencoder: bool):
    import torch.nn as nn

    class ModalityNet(nn.Module):
        """Shared trunk (the "last hidden FC layer" of eq. 8), a content head N^c, a specific head
        N^s (both tanh-relaxed, eqs. 3-4), and for text the decoder of the autoencoder."""

        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Sequential(
                nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
            )
            self.content = nn.Linear(hidden, content_bits)
            self.specific = nn.Linear(hidden, specific_bits) if specific_bits else None
            self.decoder = (
                nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, in_dim))
                if autoencoder
                else None
            )

        def forward(self, x):
            import torch

            z = self.encoder(x)
            nc = torch.tanh(self.content(z))
            ns = torch.tanh(self.specific(z)) if self.specific is not None else None
            rec = self.decoder(z) if self.decoder is not None else None
            return z, nc, ns, rec

    return ModalityNet()


def _random_rotation(r: int, l: int, rng: np.random.Generator) -> np.ndarray:
    """(r, l) projection: an orthogonal rotation of the top l dims when l <= r, else r-dim
    Gaussian hyperplanes (LSH in the shared space)."""
    if l <= r:
        q, _ = np.linalg.qr(rng.standard_normal((l, l)))
        proj = np.zeros((r, l))
        proj[:l] = q
        return proj
    return rng.standard_normal((r, l))


@dataclass(frozen=True)
class UDDHConfig:
    """UDDH's settings, declared and checked once; :meth:`UDDHHasher.get_config` saves them with ``asdict``.

    ``content_bits`` (default ``bits // 2``) of the ``bits``-bit tail code are the shared content
    code, the rest modality-specific; ``n_buckets`` is k, the semantic index's size; ``n_iter``
    alternating rounds of ``epochs_per_iter`` network epochs; ``sigma=None`` picks the affinity
    bandwidth from the data; ``train_top_e`` buckets per training sample (multi-label).
    """

    bits: int = 64
    content_bits: int | None = None
    n_buckets: int = 10
    n_iter: int = 10
    epochs_per_iter: int = 5
    batch_size: int = 20
    lr_image: float = 3e-4
    lr_text: float = 3e-3
    lr_decay_epochs: int = 3
    weight_decay: float = 1e-4
    hidden_dim: int = 512
    sigma: float | None = None
    graph_weight: float = 1.0
    graph_mode: GraphMode = "aligned"
    train_top_e: int = 1
    standardize: bool = True

    def __post_init__(self) -> None:
        bits = check_bits(self.bits)
        lc = bits // 2 if self.content_bits is None else self.content_bits
        lc = check_int("content_bits", lc, 1, bits, high_name="bits")
        ints = {name: check_int(name, getattr(self, name), low)
                for name, low in (("n_buckets", 1), ("n_iter", 1), ("epochs_per_iter", 0), ("batch_size", 1),
                                  ("lr_decay_epochs", 1), ("hidden_dim", 1), ("train_top_e", 1))}
        if self.train_top_e > self.n_buckets:
            raise ValueError(f"train_top_e={self.train_top_e} exceeds n_buckets={self.n_buckets}")
        for name in ("lr_image", "lr_text"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not self.weight_decay >= 0 or not self.graph_weight >= 0:
            raise ValueError(f"weight_decay and graph_weight must be >= 0, got {self.weight_decay!r}, "
                             f"{self.graph_weight!r}")
        if self.sigma is not None and not (isinstance(self.sigma, (int, float)) and self.sigma > 0
                                           and math.isfinite(self.sigma)):
            raise ValueError(f"sigma must be None (automatic) or a positive float, got {self.sigma!r}")
        if self.graph_mode not in GRAPH_MODES:
            raise ValueError(f"graph_mode must be one of {GRAPH_MODES}, got {self.graph_mode!r}")
        coerced = {**ints, "bits": bits, "content_bits": lc, "lr_image": float(self.lr_image),
                   "lr_text": float(self.lr_text), "weight_decay": float(self.weight_decay),
                   "graph_weight": float(self.graph_weight), "standardize": bool(self.standardize),
                   "sigma": None if self.sigma is None else float(self.sigma)}
        for name, value in coerced.items():
            object.__setattr__(self, name, value)


# -- the hasher --------------------------------------------------------------------------------------
@register_hasher
class UDDHHasher(Hasher):
    """UDDH: head code = semantic-index bucket, tail code = [shared content | modality-specific].

    ``encode`` returns the packed tail code (``content_bits`` shared bits first, then
    ``bits - content_bits`` modality-specific bits); ``assign_buckets`` the head code.
    ``graph_mode="paper"`` applies eq. 22 as printed (image codes only, unnormalised Laplacians),
    ``"aligned"`` (default) the sign-corrected cross-modal affinity term; see ``hashing/UDDH.md``.
    """

    method = "uddh"

    def __init__(self, bits: int = 64, seed: int = 0, *, progress: bool = True, num_threads: int | None = 1,
                 **settings: Any) -> None:
        """``settings``: the fields of :class:`UDDHConfig`. ``progress`` and ``num_threads`` are runtime
        only (not saved): batch-20 MLP steps gain nothing from more threads, and on a shared CPU
        OpenMP spin-waiting made them ~20x slower with 2 threads than with 1."""
        super().__init__(bits=bits, seed=seed)
        self.config = UDDHConfig(bits=self.bits, **settings)
        self.num_threads = check_optional_int("num_threads", num_threads)
        self.progress = bool(progress)
        self.centres: np.ndarray | None = None  # (k, content_bits) int8 {-1, +1}
        self._nets: dict[str, Any] = {}
        self._norm: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.history_: list[dict[str, float]] = []

    @property
    def content_bits(self) -> int:
        return self.config.content_bits

    @property
    def specific_bits(self) -> int:
        return self.bits - self.config.content_bits

    @property
    def n_buckets(self) -> int:
        return self.config.n_buckets

    # -- config / persistence ---------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self.config).items() if k != "bits"}

    def state_dict(self) -> dict[str, np.ndarray]:
        if self.centres is None:
            raise RuntimeError("UDDHHasher is not fitted: nothing to save")
        state: dict[str, np.ndarray] = {"centres": self.centres.astype(np.int8)}
        for mod, net in self._nets.items():
            for name, tensor in net.state_dict().items():
                state[f"{mod}.{name}"] = tensor.detach().cpu().numpy().astype(np.float32)
            mean, std = self._norm[mod]
            state[f"{mod}.input_mean"] = mean
            state[f"{mod}.input_std"] = std
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        import torch

        if not self.input_dims:
            raise RuntimeError("set input_dims before load_state_dict (from_pretrained does this)")
        if "centres" not in state:
            raise ValueError("UDDH state is missing 'centres'")
        centres = np.asarray(state["centres"])
        if centres.shape != (self.n_buckets, self.content_bits) or not np.isin(centres, (-1, 1)).all():
            raise ValueError(
                f"'centres' must be ({self.n_buckets}, {self.content_bits}) of -1/+1, got {centres.shape}"
            )
        nets, norm = {}, {}
        for mod in ("image", "text"):
            if mod not in self.input_dims:
                raise ValueError(f"input_dims has no {mod!r} entry")
            net = self._new_net(mod)
            own = net.state_dict()
            loaded = {}
            for name, ref in own.items():
                key = f"{mod}.{name}"
                if key not in state:
                    raise ValueError(f"UDDH state is missing {key!r}")
                arr = np.asarray(state[key], dtype=np.float32)
                if tuple(arr.shape) != tuple(ref.shape):
                    raise ValueError(f"UDDH state {key!r} has shape {arr.shape}, expected {tuple(ref.shape)}")
                loaded[name] = torch.from_numpy(arr.copy())
            net.load_state_dict(loaded)
            net.eval()
            nets[mod] = net
            d = self.input_dims[mod]
            for key in (f"{mod}.input_mean", f"{mod}.input_std"):
                if key not in state or np.asarray(state[key]).shape != (d,):
                    raise ValueError(f"UDDH state {key!r} is missing or not of shape ({d},)")
            norm[mod] = (
                np.asarray(state[f"{mod}.input_mean"], dtype=np.float32),
                np.asarray(state[f"{mod}.input_std"], dtype=np.float32),
            )
        self.centres = centres.astype(np.int8)
        self._nets, self._norm = nets, norm

    def _new_net(self, modality: str):
        return _build_net(
            self.input_dims[modality],
            self.config.hidden_dim,
            self.content_bits,
            self.specific_bits,
            autoencoder=(modality == "text"),
        )

    # -- inference --------------------------------------------------------------------------------
    def _forward_all(self, x: np.ndarray, modality: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(hidden features, N^c, N^s) for already-standardised float32 input, in eval mode."""
        import torch

        net = self._nets[modality]
        net.eval()
        zs, ncs, nss = [], [], []
        with torch.no_grad(), torch_threads(self.num_threads):
            for s in range(0, len(x), 8192):
                z, nc, ns, _ = net(torch.from_numpy(np.ascontiguousarray(x[s : s + 8192])))
                zs.append(z.numpy())
                ncs.append(nc.numpy())
                if ns is not None:
                    nss.append(ns.numpy())
        cat = lambda parts, w: np.concatenate(parts) if parts else np.zeros((0, w), np.float32)  # noqa: E731
        return (
            cat(zs, self.config.hidden_dim),
            cat(ncs, self.content_bits),
            cat(nss, self.specific_bits) if self.specific_bits else None,
        )

    def _standardise(self, x: np.ndarray, modality: str) -> np.ndarray:
        mean, std = self._norm[modality]
        return ((x - mean) / std).astype(np.float32)

    def _project(self, features: np.ndarray, modality: str) -> np.ndarray:
        _, nc, ns = self._forward_all(self._standardise(features, modality), modality)
        return nc if ns is None else np.concatenate([nc, ns], axis=1)

    def _check_fitted(self, what: str) -> None:
        if self.centres is None or not self.input_dims:
            raise RuntimeError(f"UDDHHasher is not fitted: call fit() before {what}()")

    def content_codes(self, features: np.ndarray, modality: str) -> np.ndarray:
        """(n, content_bits) int8 {-1, +1}: the shared content code sign(N^c(x)) of new samples."""
        check_modality(modality)
        self._check_fitted("content_codes")
        x = as_features(features, f"{modality} features", self.input_dims[modality])
        _, nc, _ = self._forward_all(self._standardise(x, modality), modality)
        return _sign(nc)

    def assign_buckets(self, features: np.ndarray, modality: str, top_e: int = 1) -> np.ndarray:
        """(n, top_e) int64 bucket ids: the nearest centres by Hamming distance of the content code.

        The paper does not say how a new sample gets its head code; we use eq. 19 on
        B^c = sign(N^c(x)), with the top-e centres for multi-label (§III-B). Ties: lower bucket id.
        """
        top_e = check_int("top_e", top_e, 1, self.n_buckets, high_name="n_buckets")
        codes = self.content_codes(features, modality)
        return nearest_centres(codes, self.centres, top_e)

    def bucket_index(self, e: int = 1) -> Any:
        """An empty :class:`hashing.index.BucketIndex` over this hasher's semantic index.

        Its centres are this hasher's, over the content prefix of the tail code (the first
        ``content_bits`` bits that :meth:`encode` packs), so ``index.add(encode(x))`` files each
        item in ``assign_buckets(x)`` and ``index.search(codes, k)`` scans the query's top-``e``
        buckets: UDDH's hierarchical matching (§III-C) through the one index interface.
        """
        from .index import BucketIndex

        self._check_fitted("bucket_index")
        e = check_int("e", e, 1, self.n_buckets, high_name="n_buckets")
        rest = np.ones((self.n_buckets, self.specific_bits), np.float32)  # ignored: beyond prefix_bits
        centres = pack_signs(np.concatenate([self.centres.astype(np.float32), rest], axis=1))
        index = BucketIndex(self.bits, nbuckets=self.n_buckets, e=e, prefix_bits=self.content_bits)
        return index.set_centres(centres)

    # -- learning ---------------------------------------------------------------------------------
    def fit(
        self,
        image_features: np.ndarray,
        text_features: np.ndarray,
        labels: np.ndarray | None = None,
    ) -> "UDDHHasher":
        """Algorithm 1 on paired rows. Unsupervised: ``labels`` is accepted and ignored."""
        with torch_threads(self.num_threads):
            return self._fit(image_features, text_features)

    def _fit(self, image_features: np.ndarray, text_features: np.ndarray) -> "UDDHHasher":
        import torch
        from tqdm.auto import trange

        x_img = as_features(image_features, "image_features")
        x_txt = as_features(text_features, "text_features")
        n = len(x_img)
        if len(x_txt) != n:
            raise ValueError(f"image_features has {n} rows but text_features has {len(x_txt)}; rows must be pairs")
        k = self.n_buckets
        if n < max(2, k):
            raise ValueError(f"need at least max(2, n_buckets={k}) training pairs, got {n}")

        rng = np.random.default_rng(self.seed)
        self.input_dims = {}
        norm = {}
        xs = {}
        for mod, x in (("image", x_img), ("text", x_txt)):
            if self.config.standardize:
                mean = x.mean(axis=0).astype(np.float32)
                std = x.std(axis=0).astype(np.float32)
                std = np.where(std > 1e-8, std, 1.0).astype(np.float32)
            else:
                mean = np.zeros(x.shape[1], np.float32)
                std = np.ones(x.shape[1], np.float32)
            norm[mod] = (mean, std)
            xs[mod] = ((x - mean) / std).astype(np.float32)
        dims = {"image": x_img.shape[1], "text": x_txt.shape[1]}

        # Initial codes (unspecified by the paper): sign of random rotations of the CCA variates.
        # Only the signs of linear maps of z1, z2 are used, so the variates' overall scale is moot.
        x1, x2 = xs["image"] - xs["image"].mean(0), xs["text"] - xs["text"].mean(0)
        r = min(x1.shape[1], x2.shape[1], n - 1)
        a, b, _ = fit_cca(x1, x2, r)
        z1, z2 = x1 @ a, x2 @ b
        b_c = _sign(((z1 + z2) / 2.0) @ _random_rotation(r, self.content_bits, rng))
        b_s: dict[str, np.ndarray] = {}
        if self.specific_bits:
            rot = _random_rotation(r, self.specific_bits, rng)
            b_s = {"image": _sign(z1 @ rot), "text": _sign(z2 @ rot)}
        centres = kmeanspp_centres(b_c, k, rng, name="n_buckets",
                                   hint=" or raise content_bits (the initial content codes are too coarse)")
        centres, assign = binary_kmeans(b_c, centres, None, self.config.train_top_e, _KMEANS_INIT_ROUNDS)

        torch_gen = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.input_dims = dims
            nets = {mod: self._new_net(mod) for mod in ("image", "text")}
        self._nets, self._norm = nets, norm
        lrs = {"image": self.config.lr_image, "text": self.config.lr_text}
        opts = {
            mod: torch.optim.Adam(nets[mod].parameters(), lr=lrs[mod], betas=(0.9, 0.999), weight_decay=self.config.weight_decay)
            for mod in nets
        }
        tx = {mod: torch.from_numpy(xs[mod]) for mod in xs}
        self.history_ = []
        try:
            for it in trange(self.config.n_iter, desc="UDDH", disable=not self.progress):
                # 1. networks regress onto the current codes (eqs. 3-4)
                tb_c = torch.from_numpy(b_c.astype(np.float32))
                tb_s = {mod: torch.from_numpy(v.astype(np.float32)) for mod, v in b_s.items()}
                for epoch in range(self.config.epochs_per_iter):
                    decay = 0.1 ** (epoch // self.config.lr_decay_epochs)
                    for mod in nets:
                        nets[mod].train()
                        for g in opts[mod].param_groups:
                            g["lr"] = lrs[mod] * decay
                    perm = torch.randperm(n, generator=torch_gen)
                    for s in range(0, n, self.config.batch_size):
                        idx = perm[s : s + self.config.batch_size]
                        for mod in nets:
                            _, nc, ns, rec = nets[mod](tx[mod][idx])
                            loss = ((nc - tb_c[idx]) ** 2).sum(1).mean()
                            if ns is not None:
                                loss = loss + ((ns - tb_s[mod][idx]) ** 2).sum(1).mean()
                            if rec is not None:
                                loss = loss + ((rec - tx[mod][idx]) ** 2).sum(1).mean()
                            opts[mod].zero_grad()
                            loss.backward()
                            opts[mod].step()
                out = {mod: self._forward_all(xs[mod], mod) for mod in nets}
                # 2. shared content code, eq. 12: B^c = sign(CH + sum_i N_i^c)
                ch = np.zeros((n, self.content_bits), dtype=np.float32)
                for col in assign.T:
                    ch += centres[col]
                b_c = _sign(ch + out["image"][1] + out["text"][1])
                # 3-4. centres (eq. 16, a majority vote for one-hot H) and semantic index (eq. 19)
                centres, assign = lloyd_round(b_c, centres, assign, self.config.train_top_e)
                # 5. modality-specific codes with the cluster-guided affinity (eqs. 8, 22)
                graph = 0.0
                if self.specific_bits:
                    b_s, graph = self._update_specific(out, b_s, assign[:, 0])
                self.history_.append(self._objective(it, out, xs, b_c, b_s, centres, assign, graph))
            # Final consistency of the head code on the final B^c (a fixed point of eqs. 16/19).
            centres, assign = binary_kmeans(b_c, centres, assign, self.config.train_top_e, _POLISH_ROUNDS)
        except BaseException:
            self.input_dims, self._nets, self._norm, self.centres = {}, {}, {}, None
            raise
        for net in nets.values():
            net.eval()
        self.centres = centres.astype(np.int8)
        self.train_content_codes_ = b_c
        self.train_specific_codes_ = b_s
        self.train_buckets_ = assign
        return self

    def _update_specific(
        self, out: dict[str, tuple], b_s: dict[str, np.ndarray], primary: np.ndarray
    ) -> tuple[dict[str, np.ndarray], float]:
        """Eq. 22 with the within-cluster affinities of eq. 8 on the last hidden layer.

        ``"paper"``: B_1^s = sign(2 N_1^s - B_2^s (L_1 + L_2)) and B_2^s = sign(N_2^s) (the printed
        sum over j > i is empty for the text side), unnormalised Laplacians, weight graph_weight.
        ``"aligned"``: each modality in turn, B_i^s = sign(2 N_i^s + (lambda / d) B_j^s (A_1 + A_2)),
        the exact minimiser of |N_i^s - B_i^s|^2 - (lambda / d) Tr(B_i^s (A_1 + A_2) B_j^s^T), i.e.
        of sum_pq A_pq |b_i(p) - b_j(q)|^2 (d = mean degree, so lambda is scale free).
        Returns the new codes and the graph term of the objective at them.
        """
        members = _cluster_members(primary, self.n_buckets)
        feats = (out["image"][0], out["text"][0])
        if self.config.sigma is not None:
            sigma2 = (self.config.sigma**2, self.config.sigma**2)
        else:
            sigma2 = tuple(within_cluster_sigma2(f, members) for f in feats)
        ns = {"image": out["image"][2], "text": out["text"][2]}
        lam = self.config.graph_weight
        new = dict(b_s)
        if self.config.graph_mode == "paper":
            prod, degree = cluster_affinity_product(feats, sigma2, new["text"], members)
            lap = degree[:, None] * new["text"] - prod  # rows of (L_1 + L_2) B_2^T
            new["image"] = _sign(2.0 * ns["image"] - lam * lap)
            new["text"] = _sign(ns["text"])
            prod, degree = cluster_affinity_product(feats, sigma2, new["text"], members)
            lap = degree[:, None] * new["text"] - prod
            graph = lam * float(np.sum(new["image"] * lap))
        else:
            for mod, other in (("image", "text"), ("text", "image")):
                prod, degree = cluster_affinity_product(feats, sigma2, new[other], members)
                scale = lam / max(float(degree.mean()), 1e-12)
                new[mod] = _sign(2.0 * ns[mod] + scale * prod)
            graph = -scale * float(np.sum(new["text"] * prod))
        return new, graph

    def _objective(self, it, out, xs, b_c, b_s, centres, assign, graph) -> dict[str, float]:
        """Eq. 9 at the current iterate (sums over samples and bits), plus diagnostics."""
        ch = np.zeros_like(b_c, dtype=np.float32)
        for col in assign.T:
            ch += centres[col]
        kmeans = float(np.sum((b_c - ch) ** 2))
        reg = 0.0
        for mod in ("image", "text"):
            reg += float(np.sum((out[mod][1] - b_c) ** 2))
            if self.specific_bits:
                reg += float(np.sum((out[mod][2] - b_s[mod]) ** 2))
        import torch

        with torch.no_grad():
            _, _, _, rec = self._nets["text"](torch.from_numpy(xs["text"]))
        ae = float(((rec.numpy() - xs["text"]) ** 2).sum())
        img = np.concatenate([_sign(out["image"][1])] + ([_sign(out["image"][2])] if self.specific_bits else []), 1)
        txt = np.concatenate([_sign(out["text"][1])] + ([_sign(out["text"][2])] if self.specific_bits else []), 1)
        sizes = np.bincount(assign[:, 0], minlength=self.n_buckets)
        return {
            "iter": it + 1,
            "objective": kmeans + reg + ae + graph,
            "kmeans": kmeans,
            "regression": reg,
            "autoencoder": ae,
            "graph": graph,
            # fraction of equal bits between sign(N_1(x)) and sign(N_2(y)) of the same pair
            "pair_agreement": float(np.mean(img == txt)),
            "content_agreement": float(np.mean(_sign(out["image"][1]) == _sign(out["text"][1]))),
            "largest_bucket": float(sizes.max() / len(assign)),
        }

    def __repr__(self) -> str:
        return (
            f"UDDHHasher(bits={self.bits}, content_bits={self.content_bits}, n_buckets={self.n_buckets}, "
            f"graph_mode={self.config.graph_mode!r})"
        )
