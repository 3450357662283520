"""Speed and memory of every stage, encoding to reranking, from 10K to 10M items.

    python -m eval.bench --sizes 10000 100000 1000000 10000000 --output docs/bench.json --plot docs/bench.png

Stages, each timed as the best of ``--repeats`` runs where it is cheap enough to repeat:

* **encode**: the lite encoder on ``--encode-images`` Flickr8K test images and ``--encode-texts``
  captions (real files; one warm-up batch first), images/s and texts/s.
* **hash**: fit time of each ``--hashers`` method on ``--fit-n`` synthetic (image, text) pairs and
  its encode throughput (vectors/s).
* per size n, on synthetic vectors: faiss float ``IndexFlatIP`` (the baseline of every ratio,
  measured in the same run on the same queries), then each binary index on the ``--index-hasher``
  codes of the same vectors: build time, memory (bytes of the saved index; the float baseline's is
  its ``n x dim x 4`` bytes of storage), QPS in batch and single-query mode, tie-aware recall@k
  against exact Hamming search, and the peak RSS of the size.
* **rerank**: :class:`rerank.FloatReranker` on ``--rerank-candidates`` Hamming candidates per query
  (the candidates' float vectors gathered from the baseline's storage, as a deployment reads them),
  time per query; and the vectorised :class:`hashing.index.Rescorer` over the same candidates.

The vectors come from :class:`Mixture`: a Gaussian mixture (bench_index's generator), drawn in
chunks so a 10M x 256 run holds the float baseline's 10 GB once, not twice; each chunk has its own
seed, so the 1M database is the first 1M items of the 10M one.

IVF cells and buckets number the power of two nearest sqrt(n), at most ``--max-nlist``. Each
approximate index's search parameter (IVF ``nprobe``, buckets ``e``, HNSW ``ef_search``) is the
first doubling step whose recall@k on the benchmark's queries reaches ``--target-recall``, so QPS
is compared at (about) equal recall; the tried steps are in the JSON.

Large sizes run fewer queries (``--nq`` scaled by ``--nq-ref-n / n``, not under ``--min-nq``), the
same queries for the baseline and every index, so each ratio compares like with like; the counts
are in the JSON. The floor matters: faiss 1.15 runs ``IndexFlatIP`` through BLAS only for batches
with nq x dim >= ``faiss.cvar.distance_compute_blas_threshold`` (128,000, i.e. 500 queries at
d = 256); below it a batch runs barely faster than its queries one at a time. The default floor
keeps the baseline's batches on BLAS.

HNSW is built only up to ``--hnsw-max-n``: its build is the slow part (355 s at 1M
in ``eval.bench_index``). Threads default to 1 (``--threads``): on shared cores, OpenMP's spinning
threads slow down by an order of magnitude under load; the load average is recorded per size.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import faiss
import numpy as np
from tqdm.auto import tqdm

from retrieval.atomic import write_json

from .bench_index import best_time, hamming, saved_size
from .machine import machine

FLICKR8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k"


# -- data ----------------------------------------------------------------------------------------
@dataclass
class Mixture:
    """Unit vectors from a Gaussian mixture; each role (database, queries, fit pairs) its own stream.

    The database depends only on the seed and ``chunk``, so every size is a prefix of the next;
    text-side vectors of the fit pairs are the image vectors plus ``text_noise`` Gaussian noise.
    """

    dim: int = 256
    clusters: int = 2000
    spread: float = 1.0
    text_noise: float = 0.5
    seed: int = 0
    centres: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("dim", "clusters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.centres = np.random.default_rng([self.seed, 0]).standard_normal((self.clusters, self.dim),
                                                                             dtype=np.float32)

    def _draw(self, rng: np.random.Generator, m: int, of: int | None = None) -> np.ndarray:
        """m vectors; with ``of``, the first m of the ``of`` this generator state would give."""
        x = self.centres[rng.integers(0, self.clusters, of or m)[:m]]
        x += self.spread * rng.standard_normal((m, self.dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    def database(self, n: int, chunk: int = 1 << 18) -> Iterator[np.ndarray]:
        """n vectors in chunks; chunk i has its own seed, so any n is a prefix of a larger one."""
        for i, start in enumerate(range(0, n, chunk)):
            yield self._draw(np.random.default_rng([self.seed, 1, i]), min(chunk, n - start), of=chunk)

    def queries(self, nq: int) -> np.ndarray:
        return self._draw(np.random.default_rng([self.seed, 2]), nq)

    def pairs(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, 3])
        images = self._draw(rng, n)
        texts = images + self.text_noise * rng.standard_normal(images.shape, dtype=np.float32) / math.sqrt(self.dim)
        texts /= np.linalg.norm(texts, axis=1, keepdims=True)
        return images, texts


# -- memory --------------------------------------------------------------------------------------
def _status(field_name: str) -> int:
    """VmRSS / VmHWM of this process in bytes (0 where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss() -> int:
    return _status("VmRSS")


def peak_rss() -> int:
    return _status("VmHWM")


def reset_peak_rss() -> None:
    """Linux resets VmHWM to the current RSS on ``5 > /proc/self/clear_refs``: a per-stage peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def limit_blas_threads(threads: int) -> list[dict[str, Any]] | None:
    """numpy's BLAS (ITQ's SVD, every projection) gets the same thread cap as faiss and torch.

    Needs threadpoolctl (scikit-learn's dependency); without it the BLAS keeps its own default,
    and the JSON says so (None).
    """
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        return None
    threadpool_limits(threads)
    return [{"library": i.get("internal_api"), "num_threads": i.get("num_threads")} for i in threadpool_info()]


def gib(b: float) -> float:
    return round(b / 2**30, 3)


# -- stages --------------------------------------------------------------------------------------
def bench_encode(model: str, n_images: int, n_texts: int, annotations: Path, images: Path,
                 batch_size: int, device: str | None) -> dict[str, Any]:
    """Encoder throughput on real Flickr8K test files (decode + preprocess + forward)."""
    from retrieval import load_encoder

    from .karpathy import load_karpathy

    dataset = load_karpathy(annotations, images, "test")
    paths = [dataset.image_paths[i % dataset.n_images] for i in range(n_images)]
    texts = [dataset.captions[i % len(dataset.captions)] for i in range(n_texts)]
    reset_peak_rss()
    t0 = time.perf_counter()
    encoder = load_encoder(model, device=device)
    load_s = time.perf_counter() - t0
    out: dict[str, Any] = {"model": model, "device": str(encoder.device), "load_s": round(load_s, 2)}
    if paths:
        encoder.encode_images(paths[:min(8, len(paths))], batch_size=batch_size, progress=False)  # warm-up
        t0 = time.perf_counter()
        encoder.encode_images(paths, batch_size=batch_size, progress=True)
        out.update(n_images=len(paths), images_per_s=len(paths) / (time.perf_counter() - t0))
    if texts:
        encoder.encode_texts(texts[:min(32, len(texts))], batch_size=4 * batch_size, progress=False)
        t0 = time.perf_counter()
        encoder.encode_texts(texts, batch_size=4 * batch_size, progress=True)
        out.update(n_texts=len(texts), texts_per_s=len(texts) / (time.perf_counter() - t0))
    out["peak_rss_gib"] = gib(peak_rss())
    del encoder
    gc.collect()
    return out


def bench_hashers(methods: list[str], bits: int, data: Mixture, fit_n: int, encode_n: int,
                  repeats: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Fit time and encode throughput of each method; returns the fitted hashers too."""
    from hashing import create_hasher

    images, texts = data.pairs(fit_n)
    sample = next(data.database(encode_n, chunk=encode_n))
    fitted, rows = {}, []
    for method in tqdm(methods, desc="hash fit + encode", unit="method"):
        t0 = time.perf_counter()
        hasher = create_hasher(method, bits=bits).fit(images, texts)
        fit_s = time.perf_counter() - t0
        enc_s, _ = best_time(lambda: hasher.encode(sample, "image"), repeats)
        fitted[method] = hasher
        rows.append({"method": method, "bits": bits, "fit_n": fit_n, "fit_s": round(fit_s, 3),
                     "encode_n": encode_n, "encode_per_s": encode_n / enc_s})
    return fitted, rows


@dataclass
class SizeData:
    """One size's database: the float baseline (which owns the float vectors) and the binary codes."""

    float_index: faiss.IndexFlatIP
    codes: np.ndarray
    float_add_s: float
    generate_s: float
    hash_encode_s: float

    @property
    def vectors(self) -> np.ndarray:
        """Zero-copy view of the baseline's storage: the float vectors rerankers read."""
        n, d = self.float_index.ntotal, self.float_index.d
        return faiss.rev_swig_ptr(self.float_index.get_xb(), n * d).reshape(n, d)


def build_size(n: int, data: Mixture, hasher: Any, chunk: int) -> SizeData:
    """Generates n vectors chunk by chunk into a pre-sized IndexFlatIP and encodes each chunk.

    The baseline's storage is sized once (faiss' vector would otherwise double and copy, briefly
    holding 3x the data), so the peak is the float vectors plus one chunk.
    """
    index = faiss.IndexFlatIP(data.dim)
    index.codes.resize(n * data.dim * 4)  # reserve: resizing down keeps the capacity
    index.codes.resize(0)
    codes = np.empty((n, hasher.bits // 8), dtype=np.uint8)
    gen_s = add_s = enc_s = 0.0
    bar = tqdm(total=n, desc=f"generate + encode {n:,}", unit="vec", unit_scale=True)
    t0 = time.perf_counter()
    start = 0
    for x in data.database(n, chunk):
        t1 = time.perf_counter()
        gen_s += t1 - t0
        index.add(x)
        t2 = time.perf_counter()
        codes[start:start + len(x)] = hasher.encode(x, "image")
        t0 = time.perf_counter()
        add_s, enc_s = add_s + t2 - t1, enc_s + t0 - t2
        start += len(x)
        bar.update(len(x))
    bar.close()
    return SizeData(index, codes, add_s, gen_s, enc_s)


def queries_for(n: int, nq: int, ref_n: int, minimum: int) -> int:
    """Fewer queries at large n: the float baseline's cost grows with n x nq."""
    return int(max(min(nq, minimum), min(nq, nq * ref_n // max(n, 1))))


def search_modes(search: Callable[[np.ndarray], Any], queries: np.ndarray, single: int,
                 repeats: int) -> tuple[float, float, Any]:
    """(batch QPS, single-query QPS, the batch result), each the best of ``repeats`` runs."""
    batch_s, res = best_time(lambda: search(queries), repeats)
    one = queries[:single]
    single_s, _ = best_time(lambda: [search(one[r:r + 1]) for r in range(len(one))], repeats)
    return len(queries) / batch_s, len(one) / single_s, res


def index_plan(n: int, args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """The binary indexes run at size n and their build parameters.

    IVF cells and buckets: the power of two nearest sqrt(n), within [16, --max-nlist]. The search
    parameter (nprobe, e, ef_search) is tuned per size by :func:`tune`.
    """
    nlist = int(np.clip(2 ** round(math.log2(math.sqrt(n))), 16, args.max_nlist))
    plan: list[tuple[str, dict[str, Any]]] = [("flat", {})]
    if "ivf" in args.indexes:
        plan.append(("ivf", {"nlist": nlist}))
    if "buckets" in args.indexes:
        plan.append(("buckets", {"nbuckets": nlist}))
    if "hnsw" in args.indexes and n <= args.hnsw_max_n:
        plan.append(("hnsw", {"M": args.hnsw_M, "ef_construction": args.hnsw_efc}))
    if "gpu_flat" in args.indexes and cuda_available():
        plan.append(("gpu_flat", {}))
    return plan


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


SearchFactory = Callable[[Any], Callable[[np.ndarray], Any]]


def build_index(kind: str, params: dict[str, Any], codes: np.ndarray, bits: int, queries: np.ndarray,
                k: int, args: argparse.Namespace) -> tuple[Any, str | None, list[Any], SearchFactory]:
    """Builds one index (training included).

    Returns the index, the name of its search parameter, the values :func:`tune` tries (doubling),
    and ``search_with(value)`` -> a search function at that value.
    """
    from hashing.index import assign_buckets, binary_kmeans, create_index

    rng = np.random.default_rng(args.seed)
    if kind in ("flat", "gpu_flat"):
        index = create_index(kind, bits)
        index.add(codes)
        if kind == "gpu_flat":
            index.search(queries[:1], k)  # the host-to-device copy belongs to the build
        return index, None, [None], lambda _: (lambda q: index.search(q, k))
    if kind in ("ivf", "buckets"):
        nlist = params.get("nlist", params.get("nbuckets"))
        sample = codes[rng.choice(len(codes), min(len(codes), nlist * args.train_per_list), replace=False)]
        values = doubling(max(1, nlist // 64), nlist)
        if kind == "ivf":
            index = create_index("ivf", bits, nlist=nlist).train(sample)
            index.add(codes)

            def search_with(nprobe: int) -> Callable[[np.ndarray], Any]:
                index.nprobe = nprobe
                return lambda q: index.search(q, k)

            return index, "nprobe", values, search_with
        centres = binary_kmeans(sample, nlist, iters=args.kmeans_iters, seed=args.seed)
        index = create_index("buckets", bits, nbuckets=nlist)
        index.add(codes, buckets=assign_buckets(codes, centres)[:, 0])
        return index, "e", values, lambda e: (lambda q: index.search(q, k, buckets=assign_buckets(q, centres, e)))
    if kind == "hnsw":
        index = create_index("hnsw", bits, **params)
        index.add(codes)

        def search_ef(ef: int) -> Callable[[np.ndarray], Any]:
            index.ef_search = ef
            return lambda q: index.search(q, k)

        return index, "ef_search", doubling(k, max(k, args.hnsw_max_ef)), search_ef
    raise ValueError(f"unknown index kind {kind!r}")


def doubling(start: int, stop: int) -> list[int]:
    values = [start]
    while values[-1] < stop:
        values.append(min(2 * values[-1], stop))
    return values


def recall_at(res: Any, q_codes: np.ndarray, codes: np.ndarray, kth: np.ndarray, what: str) -> float:
    """Tie-aware recall against exact Hamming search; also checks the returned distances are true."""
    true_d = hamming(q_codes, codes, res.ids)
    valid = res.ids >= 0
    if not np.array_equal(true_d[valid], res.distances[valid]):
        raise AssertionError(f"{what}: returned distances are not the items' Hamming distances")
    return float((true_d <= kth).sum() / true_d.size)


def tune(values: list[Any], search_with: SearchFactory, recall: Callable[[Any], float],
         queries: np.ndarray, target: float) -> tuple[Any, list[dict[str, Any]]]:
    """The cheapest value (first in ``values``) whose recall reaches ``target``, else the last one.

    Tuned on the benchmark's own queries, as a deployment would tune on held-out ones.
    """
    trace = []
    for value in values:
        r = recall(search_with(value)(queries))
        trace.append({"value": value, "recall": r})
        if r >= target:
            break
    return trace[-1]["value"], trace


def bench_rerank(vectors: np.ndarray, queries: np.ndarray, candidates: np.ndarray, n: int,
                 repeats: int) -> dict[str, Any]:
    """Stage-2 float rescoring per query: gather the candidates' vectors, score, sort."""
    from hashing.index import Rescorer
    from rerank.base import Candidates, Query
    from rerank.float_rescore import FloatReranker

    queries, candidates = queries[:n], candidates[:n]
    reranker = FloatReranker()

    def one_by_one() -> None:
        for q, ids in zip(queries, candidates):
            ids = ids[ids >= 0]
            scores = reranker.score(Query("text", "query", q), Candidates("image", ids, embeddings=vectors[ids]))
            _ = ids[np.argsort(-scores, kind="stable")]  # the ranking a caller would use

    per_query_s, _ = best_time(one_by_one, repeats)
    rescorer = Rescorer(vectors)
    batch_s, _ = best_time(lambda: rescorer.rescore(queries, candidates), repeats)
    return {"queries": len(queries), "candidates": int(candidates.shape[1]),
            "float_reranker_ms_per_query": 1e3 * per_query_s / len(queries),
            "rescorer_batch_ms_per_query": 1e3 * batch_s / len(queries)}


def bench_size(n: int, data: Mixture, hasher: Any, args: argparse.Namespace) -> dict[str, Any]:
    k, bits = args.k, hasher.bits
    gc.collect()
    reset_peak_rss()
    t_size = time.perf_counter()
    db = build_size(n, data, hasher, args.chunk)
    nq = queries_for(n, args.nq, args.nq_ref_n, args.min_nq)
    single = queries_for(n, args.single, args.nq_ref_n, args.min_single)
    xq = data.queries(nq)
    q_codes = hasher.encode(xq, "text")
    float_bytes = n * data.dim * 4
    f_batch, f_single, (_, f_ids) = search_modes(lambda q: db.float_index.search(q, k), xq, single, args.repeats)
    baseline = {"index": "float IndexFlatIP", "params": {"dim": data.dim}, "build_s": db.float_add_s,
                "bytes": float_bytes, "bytes_per_item": float_bytes / n, "batch_qps": f_batch, "single_qps": f_single}
    tqdm.write(f"[{n:,}] float IndexFlatIP d={data.dim}: batch {f_batch:.1f} qps, single {f_single:.1f} qps "
               f"({nq} / {single} queries), {gib(float_bytes)} GiB")
    rows, reference, kth = [], None, None
    for kind, params in tqdm(index_plan(n, args), desc=f"indexes at {n:,}", unit="index"):
        gc.collect()
        rss0 = rss()
        t0 = time.perf_counter()
        index, knob, values, search_with = build_index(kind, params, db.codes, bits, q_codes, k, args)
        build_s = time.perf_counter() - t0
        rss_delta = rss() - rss0
        if reference is None:  # the first index is exact flat search: the recall reference
            reference = search_with(None)(q_codes)
            kth = reference.distances[:, k - 1:k]
        what = f"{kind} {params}"
        value, trace = tune(values, search_with, lambda res: recall_at(res, q_codes, db.codes, kth, what),
                            q_codes, args.target_recall)
        batch, one, res = search_modes(search_with(value), q_codes, single, args.repeats)
        if knob:
            params = {**params, knob: value}
        size = saved_size(index)
        row = {"index": kind, "params": params, "bits": bits, "build_s": build_s, "bytes": size,
               "bytes_per_item": size / n, "rss_delta_bytes": rss_delta,
               "recall": recall_at(res, q_codes, db.codes, kth, what), "tuning": trace if knob else None,
               "scanned_fraction": res.scanned_fraction, "batch_qps": batch, "single_qps": one,
               "batch_x_float": batch / f_batch, "single_x_float": one / f_single,
               "memory_x_float": size / float_bytes}
        tqdm.write(f"[{n:,}] {kind:8s} {params}: recall {row['recall']:.3f} batch {batch:9.0f} qps "
                   f"({row['batch_x_float']:6.1f}x) single {one:8.0f} qps ({row['single_x_float']:7.1f}x) "
                   f"build {build_s:6.1f}s {row['bytes_per_item']:.0f} B/item")
        rows.append(row)
        del index, search_with
    top = min(10, k)
    kept = np.mean([np.isin(f, r).mean() for f, r in zip(f_ids[:, :top], reference.ids)])
    rerank = bench_rerank(db.vectors, xq, reference.ids[:, :args.rerank_candidates],
                          min(nq, args.rerank_queries), args.repeats)
    tqdm.write(f"[{n:,}] rerank {args.rerank_candidates} candidates: FloatReranker "
               f"{rerank['float_reranker_ms_per_query']:.3f} ms/query, Rescorer batch "
               f"{rerank['rescorer_batch_ms_per_query']:.3f} ms/query")
    out = {
        "n": n, "dim": data.dim, "data": "synthetic Gaussian mixture", "nq": nq, "single": single,
        "generate_s": db.generate_s, "hash_encode_s": db.hash_encode_s, "hash_encode_per_s": n / db.hash_encode_s,
        "float": baseline, "indexes": rows, "rerank": rerank,
        f"float_top{top}_in_hamming_top{k}": float(kept),
        "peak_rss_gib": gib(peak_rss()), "wall_s": time.perf_counter() - t_size, "loadavg": os.getloadavg(),
    }
    return out  # db (the float vectors) is freed here, before the next size is generated


# -- report --------------------------------------------------------------------------------------
def markdown(sizes: list[dict[str, Any]], k: int) -> str:
    head = (f"| n | index | params | recall@{k} | batch QPS | × float | single QPS | × float | build s | "
            "memory | × float memory |\n|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for s in sizes:
        f = s["float"]
        lines.append(f"| {s['n']:,} | float IndexFlatIP | dim={s['dim']}, {s['nq']}/{s['single']} queries | "
                     f"exact | {f['batch_qps']:.1f} | 1 | {f['single_qps']:.1f} | 1 | {f['build_s']:.1f} | "
                     f"{human(f['bytes'])} | 1 |")
        for r in s["indexes"]:
            params = ", ".join(f"{a}={b}" for a, b in r["params"].items()) or "-"
            lines.append(f"| {s['n']:,} | {r['index']} {r['bits']}b | {params} | {r['recall']:.3f} | "
                         f"{r['batch_qps']:.0f} | {r['batch_x_float']:.1f} | {r['single_qps']:.0f} | "
                         f"{r['single_x_float']:.1f} | {r['build_s']:.1f} | {human(r['bytes'])} | "
                         f"{r['memory_x_float']:.3f} |")
    return "\n".join(lines)


def human(b: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= scale:
            return f"{b / scale:.1f} {unit}"
    return f"{b:.0f} B"


def plot(sizes: list[dict[str, Any]], path: Path) -> Path:
    """Batch and single-query QPS, and memory, against n (log-log), one line per index."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from retrieval.atomic import atomic_write_file

    series: dict[str, dict[str, list[float]]] = {}
    for s in sizes:
        for r in [s["float"]] + s["indexes"]:
            name = r["index"] if r["index"].startswith("float") else f"{r['index']} {r['bits']}b"
            d = series.setdefault(name, {"n": [], "batch": [], "single": [], "bytes": []})
            d["n"].append(s["n"])
            d["batch"].append(r["batch_qps"])
            d["single"].append(r["single_qps"])
            d["bytes"].append(r["bytes"])
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    axes = axes.ravel()
    markers = iter("osD^vP*X")
    for name, d in series.items():
        style = {"color": "black", "linewidth": 2.5, "marker": "o"} if name.startswith("float") else \
            {"marker": next(markers), "alpha": 0.85}
        for ax, key in zip(axes, ("batch", "single", "bytes")):
            ax.plot(d["n"], d[key], label=name, **style)
        if not name.startswith("float"):
            base = series["float IndexFlatIP"]
            ratio = [q / base["batch"][base["n"].index(n)] for n, q in zip(d["n"], d["batch"])]
            axes[3].plot(d["n"], ratio, label=name, **style)
    titles = ("batch search", "single-query search", "index memory", "batch QPS / float IndexFlatIP QPS")
    for ax, title, ylabel in zip(axes, titles, ("queries / s", "queries / s", "bytes", "× float")):
        ax.set(xscale="log", yscale="log", title=title, xlabel="database items", ylabel=ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_file(path, lambda fh: fh.write(buf.getvalue()))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m eval.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000, 10_000_000])
    p.add_argument("--dim", type=int, default=256, help="vector dimension (the lite encoder's is 256)")
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--k", type=int, default=128, help="stage-1 candidates per query")
    p.add_argument("--nq", type=int, default=1000, help="batch queries at n <= --nq-ref-n")
    p.add_argument("--single", type=int, default=200, help="queries timed one at a time at n <= --nq-ref-n")
    p.add_argument("--nq-ref-n", type=int, default=1_000_000,
                   help="above this size, query counts shrink as nq x ref / n (float search costs n x nq)")
    p.add_argument("--min-nq", type=int, default=None,
                   help="floor of the batch size; default: the smallest batch faiss IndexFlatIP runs through BLAS "
                        "(nq x dim >= faiss.cvar.distance_compute_blas_threshold, 500 at d=256 in faiss 1.15)")
    p.add_argument("--min-single", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2, help="timed runs per measurement (best kept)")
    p.add_argument("--threads", type=int, default=1, help="faiss OpenMP and torch threads (1 on shared cores)")
    p.add_argument("--chunk", type=int, default=1 << 18, help="vectors generated and encoded at a time")
    p.add_argument("--clusters", type=int, default=2000)
    p.add_argument("--spread", type=float, default=1.0)
    p.add_argument("--hashers", nargs="+", default=["itq", "lsh"])
    p.add_argument("--index-hasher", default="itq", help="whose codes the indexes hold")
    p.add_argument("--fit-n", type=int, default=100_000, help="synthetic pairs the hashers fit on")
    p.add_argument("--encode-n", type=int, default=262_144, help="vectors for the hash encode throughput")
    p.add_argument("--indexes", nargs="+", default=["ivf", "buckets", "hnsw", "gpu_flat"],
                   help="besides exact flat (always run: it is the recall reference); gpu_flat only with CUDA")
    p.add_argument("--max-nlist", type=int, default=1024,
                   help="cap on IVF cells / buckets (assigning 10M codes to more cells dominates the run)")
    p.add_argument("--target-recall", type=float, default=0.95,
                   help="nprobe / e / ef_search: the smallest power-of-two step reaching this recall@k")
    p.add_argument("--train-per-list", type=int, default=64)
    p.add_argument("--kmeans-iters", type=int, default=10)
    p.add_argument("--hnsw-max-n", type=int, default=100_000, help="skip HNSW above this size (slow build)")
    p.add_argument("--hnsw-M", type=int, default=16)
    p.add_argument("--hnsw-efc", type=int, default=64)
    p.add_argument("--hnsw-max-ef", type=int, default=2048, help="ef_search tried from k, doubling, up to this")
    p.add_argument("--rerank-candidates", type=int, default=128)
    p.add_argument("--rerank-queries", type=int, default=200)
    p.add_argument("--encode-model", default="lite")
    p.add_argument("--encode-images", type=int, default=256, help="0 skips the encoder stage")
    p.add_argument("--encode-texts", type=int, default=1024)
    p.add_argument("--encode-batch-size", type=int, default=64)
    p.add_argument("--annotations", type=Path, default=FLICKR8K / "dataset_flickr8k.json")
    p.add_argument("--images", type=Path, default=FLICKR8K / "images")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=Path("runs/bench.json"))
    p.add_argument("--plot", type=Path, default=None, help="PNG of QPS and memory against size")
    args = p.parse_args(argv)
    if args.min_nq is None:
        args.min_nq = math.ceil(faiss.cvar.distance_compute_blas_threshold / args.dim)
    if args.index_hasher not in args.hashers:
        p.error(f"--index-hasher {args.index_hasher!r} must be one of --hashers {args.hashers}")
    if min(args.sizes) <= args.k:
        p.error(f"every size must exceed --k={args.k}, got {min(args.sizes)}")
    if args.rerank_candidates > args.k:
        p.error(f"--rerank-candidates ({args.rerank_candidates}) cannot exceed --k ({args.k})")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    faiss.omp_set_num_threads(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    info = machine()
    info["blas_threads"] = limit_blas_threads(args.threads)
    info["loadavg_start"] = os.getloadavg()
    print(f"machine: {info.get('cpu_model')}, {info['cpus_usable']} usable cores, {info.get('mem_gib')} GiB, "
          f"{args.threads} thread(s), load average {info['loadavg_start']}", flush=True)
    result: dict[str, Any] = {
        "command": "python -m eval.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": info,
        "config": {a: (str(v) if isinstance(v, Path) else v) for a, v in vars(args).items()},
        "conventions": {
            "qps": f"best of {args.repeats} runs; batch = nq queries in one call, single = one call per query; "
                   "nq and single per size in 'sizes'; the float baseline and every index use the same queries",
            "recall": f"recall@{args.k} vs exact Hamming search; an item tied with the exact k-th distance counts",
            "bytes": "binary indexes: size of the saved index directory; float: n x dim x 4 (IndexFlatIP storage)",
            "peak_rss": "VmHWM of the process, reset (clear_refs) at the start of each size",
            "threads": f"faiss.omp_set_num_threads({args.threads}), torch.set_num_threads({args.threads}), "
                       f"numpy BLAS threadpool_limits({args.threads}) (machine.blas_threads)",
            "faiss_blas_threshold": int(faiss.cvar.distance_compute_blas_threshold),
        },
        "complete": False,
    }
    if args.encode_images or args.encode_texts:
        result["encode"] = bench_encode(args.encode_model, args.encode_images, args.encode_texts, args.annotations,
                                        args.images, args.encode_batch_size, args.device)
        e = result["encode"]
        print(f"encode ({e['model']}, {e['device']}): {e.get('images_per_s', 0):.1f} images/s, "
              f"{e.get('texts_per_s', 0):.1f} texts/s", flush=True)
    data = Mixture(args.dim, args.clusters, args.spread, seed=args.seed)
    hashers, result["hash"] = bench_hashers(args.hashers, args.bits, data, args.fit_n, args.encode_n, args.repeats)
    for h in result["hash"]:
        print(f"hash {h['method']} {h['bits']}b: fit {h['fit_s']:.2f}s on {h['fit_n']:,} pairs, "
              f"encode {h['encode_per_s']:,.0f} vectors/s", flush=True)
    result["sizes"] = []
    for n in tqdm(sorted(args.sizes), desc="sizes", unit="size"):
        result["sizes"].append(bench_size(n, data, hashers[args.index_hasher], args))
        write_json(args.output, result)  # a killed run keeps the sizes it finished
    info["loadavg_end"] = os.getloadavg()
    result["complete"] = True
    table = markdown(result["sizes"], args.k)
    result["markdown"] = table
    print("\n" + table + "\n")
    for s in result["sizes"]:
        r = s["rerank"]
        print(f"n={s['n']:,}: peak RSS {s['peak_rss_gib']} GiB, wall {s['wall_s']:.0f}s, load {s['loadavg']}; "
              f"rerank {r['candidates']} candidates {r['float_reranker_ms_per_query']:.3f} ms/query "
              f"(Rescorer batch {r['rescorer_batch_ms_per_query']:.3f}); hash encode "
              f"{s['hash_encode_per_s']:,.0f}/s")
    print(f"load average start {info['loadavg_start']}, end {info['loadavg_end']} on {info['cpus_usable']} cores")
    write_json(args.output, result)
    print(f"wrote {args.output}")
    if args.plot:
        print(f"wrote {plot(result['sizes'], args.plot)}")
    return result


if __name__ == "__main__":
    main()
