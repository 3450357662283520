"""Stage-1 index benchmark: QPS, recall, build time and size of the binary indexes vs float search.

    python -m eval.bench_index --n 1000000 --bits 64 128 --k 128 --output runs/bench_index.json

Synthetic data (no download): 256-d float vectors from a Gaussian mixture, L2-normalised; the
binary codes are the signs of random projections of the same vectors (LSH: clustered, correlated
bits like a learned hash's), so faiss ``IndexFlatIP`` on the floats, measured in the same run, is
the baseline of every ratio. Queries are fresh draws from the same mixture.

Measured per index configuration:

* QPS in two modes: one batch of ``--nq`` queries, and ``--single`` queries one at a time. Each is
  the best of ``--repeats`` runs: other processes share the cores, and the minimum time is the
  least disturbed estimate. The load average before and after is recorded beside the machine.
* recall@k against exact Hamming search, tie-aware: a returned item counts when its Hamming
  distance is at most the exact k-th distance (any of the items tied at the k-th distance is a
  correct answer; the convention of faiss' ``check_ref_knn_with_draws``).
* build time (training included), on-disk bytes per item (the saved directory / n), and the mean
  fraction of the database scanned per query where the index reports it.

Bucketed search ("buckets") gets its buckets from Hamming k-means centres on the codes
(:func:`hashing.index.binary_kmeans`, as many as IVF cells, on the same training sample), items in
their nearest bucket and queries in their top-e; assigning the queries is timed as part of the
search. It differs from IVF only in how centres are trained (majority vote in Hamming space vs
faiss' float k-means on the bits) and in taking buckets from the caller (UDDH's head codes).

The data has ``--clusters`` mixture components: an ``nlist`` above that lets cells follow the
generator's clusters, which flatters IVF and buckets; the default sweep shows both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import faiss
import numpy as np

from hashing.index import BinaryIndex, assign_buckets, binary_kmeans, create_index
from retrieval.atomic import write_json

from .machine import machine

GOALS = {"recall": 0.95, "batch_x_float": 20.0, "single_x_float": 100.0}


def make_data(n: int, nq: int, dim: int, clusters: int, spread: float, seed: int):
    """Gaussian-mixture vectors (unit norm): database and queries from the same mixture."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)

    def draw(m: int) -> np.ndarray:
        x = centres[rng.integers(0, clusters, m)]
        x += spread * rng.standard_normal((m, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    return draw(n), draw(nq), rng


def best_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def hamming(queries: np.ndarray, codes: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """True Hamming distances of the returned ids (padding -> a large value)."""
    d = np.unpackbits(queries[:, None, :] ^ codes[np.maximum(ids, 0)], axis=2).sum(axis=2)
    return np.where(ids >= 0, d, 1 << 30)


def saved_size(index: BinaryIndex) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench_index_"))
    try:
        path = index.save(tmp / "index")
        return sum(f.stat().st_size for f in path.iterdir())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def timed(build: Callable[[], BinaryIndex]) -> tuple[BinaryIndex, float]:
    t0 = time.perf_counter()
    index = build()
    return index, time.perf_counter() - t0


def measure(name: str, params: dict[str, Any], index: BinaryIndex, build_s: float, size: int,
            search: Callable[[np.ndarray], Any], ctx: dict[str, Any]) -> dict[str, Any]:
    """QPS in both modes and tie-aware recall of one configuration of a built index."""
    queries, codes, args, floats = ctx["queries"], ctx["codes"], ctx["args"], ctx["floats"]
    batch_s, res = best_time(lambda: search(queries), args.repeats)
    single = queries[: args.single]
    single_s, _ = best_time(lambda: [search(single[r:r + 1]) for r in range(len(single))], args.repeats)
    true_d = hamming(queries, codes, res.ids)
    if not np.array_equal(true_d[res.ids >= 0], res.distances[res.ids >= 0]):
        raise AssertionError(f"{name} {params}: returned distances are not the items' Hamming distances")
    row = {
        "index": name,
        "params": params,
        "bits": index.bits,
        "build_s": round(build_s, 2),
        "bytes_per_item": round(size / len(codes), 2),
        "recall": float((true_d <= ctx["kth"]).sum() / true_d.size),
        "scanned_fraction": res.scanned_fraction,
        "batch_qps": len(queries) / batch_s,
        "single_qps": len(single) / single_s,
    }
    row["batch_x_float"] = row["batch_qps"] / floats["batch_qps"]
    row["single_x_float"] = row["single_qps"] / floats["single_qps"]
    print(f"  {name:8s} {json.dumps(params):44s} recall {row['recall']:.3f}  batch {row['batch_qps']:8.0f} qps "
          f"({row['batch_x_float']:5.1f}x)  single {row['single_qps']:7.0f} qps ({row['single_x_float']:6.1f}x)  "
          f"build {build_s:6.1f}s", flush=True)
    return row


def bench_bits(bits: int, x: np.ndarray, xq: np.ndarray, rng: np.random.Generator, floats: dict[str, float],
               args: argparse.Namespace) -> list[dict[str, Any]]:
    proj = rng.standard_normal((x.shape[1], bits), dtype=np.float32)
    codes = np.packbits(x @ proj >= 0, axis=1)
    queries = np.packbits(xq @ proj >= 0, axis=1)
    k = args.k
    exact = create_index("flat", bits)
    exact.add(codes)
    ctx = {"queries": queries, "codes": codes, "args": args, "floats": floats,
           "kth": exact.search(queries, k).distances[:, -1:]}
    del exact
    rows: list[dict[str, Any]] = []

    def add_all(index: BinaryIndex) -> BinaryIndex:
        index.add(codes)
        return index

    for use_heap in (True, False):
        index, build_s = timed(lambda: add_all(create_index("flat", bits, use_heap=use_heap)))
        rows.append(measure("flat", {"use_heap": use_heap}, index, build_s, saved_size(index),
                            lambda q: index.search(q, k), ctx))
        del index

    for nlist in args.nlist:
        sample = codes[rng.choice(len(codes), min(len(codes), nlist * args.train_per_list), replace=False)]
        index, build_s = timed(lambda: add_all(create_index("ivf", bits, nlist=nlist).train(sample)))
        size = saved_size(index)
        for nprobe in args.nprobe:
            index.nprobe = nprobe
            rows.append(measure("ivf", {"nlist": nlist, "nprobe": nprobe}, index, build_s, size,
                                lambda q: index.search(q, k), ctx))
        del index

        t0 = time.perf_counter()
        centers = binary_kmeans(sample, nlist, iters=args.kmeans_iters, seed=args.seed)
        index = create_index("buckets", bits, nbuckets=nlist)
        index.add(codes, buckets=assign_buckets(codes, centers)[:, 0])
        build_s, size = time.perf_counter() - t0, saved_size(index)
        for e in args.nprobe:
            rows.append(measure("buckets", {"nbuckets": nlist, "e": e}, index, build_s, size,
                                lambda q: index.search(q, k, buckets=assign_buckets(q, centers, e)), ctx))
        del index

    if args.hnsw_M:
        index, build_s = timed(lambda: add_all(
            create_index("hnsw", bits, M=args.hnsw_M, ef_construction=args.hnsw_efc)))
        size = saved_size(index)
        for ef in args.hnsw_ef:
            index.ef_search = ef
            rows.append(measure("hnsw", {"M": args.hnsw_M, "ef_construction": args.hnsw_efc, "ef_search": ef},
                                index, build_s, size, lambda q: index.search(q, k), ctx))
        del index

    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if cuda:
        def build_gpu() -> BinaryIndex:
            index = add_all(create_index("gpu_flat", bits))
            index.search(queries[:1], k)  # the host-to-device copy belongs to the build
            return index

        index, build_s = timed(build_gpu)
        rows.append(measure("gpu_flat", {"backend": index.backend}, index, build_s, saved_size(index),
                            lambda q: index.search(q, k), ctx))
    return rows


def bench_float(x: np.ndarray, xq: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    build_s = time.perf_counter() - t0
    batch_s, _ = best_time(lambda: index.search(xq, args.k), args.repeats)
    single = xq[: args.single]
    single_s, _ = best_time(lambda: [index.search(single[r:r + 1], args.k) for r in range(len(single))],
                            args.repeats)
    row = {"index": "float IndexFlatIP", "params": {"dim": x.shape[1]}, "bits": None, "build_s": round(build_s, 2),
           "bytes_per_item": x.shape[1] * 4, "recall": None, "scanned_fraction": 1.0,
           "batch_qps": len(xq) / batch_s, "single_qps": len(single) / single_s,
           "batch_x_float": 1.0, "single_x_float": 1.0}
    print(f"  float IndexFlatIP d={x.shape[1]}: batch {row['batch_qps']:.1f} qps, single {row['single_qps']:.1f} qps",
          flush=True)
    return row


def markdown(rows: list[dict[str, Any]], k: int) -> str:
    head = (f"| bits | index | params | recall@{k} | scanned | batch QPS | x float | single QPS | x float | "
            "build s | bytes/item |\n|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        params = ", ".join(f"{k_}={v}" for k_, v in r["params"].items())
        recall = "exact ref" if r["recall"] is None else f"{r['recall']:.3f}"
        scanned = "-" if r["scanned_fraction"] is None else f"{r['scanned_fraction']:.3f}"
        lines.append(f"| {r['bits'] or 'float'} | {r['index']} | {params} | {recall} | {scanned} | "
                     f"{r['batch_qps']:.0f} | {r['batch_x_float']:.1f} | {r['single_qps']:.0f} | "
                     f"{r['single_x_float']:.1f} | {r['build_s']:.1f} | {r['bytes_per_item']:.1f} |")
    return "\n".join(lines)


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per bit length and mode, the fastest configuration that reaches the recall goal."""
    out = []
    for bits in sorted({r["bits"] for r in rows if r["bits"]}):
        ok = [r for r in rows if r["bits"] == bits and r["recall"] is not None and r["recall"] >= GOALS["recall"]]
        for mode in ("batch", "single"):
            best = max(ok, key=lambda r: r[f"{mode}_qps"], default=None)
            out.append({
                "bits": bits, "mode": mode, "goal_x_float": GOALS[f"{mode}_x_float"],
                "best": None if best is None else {"index": best["index"], "params": best["params"],
                                                   "recall": best["recall"], "x_float": best[f"{mode}_x_float"]},
                "goal_met": bool(best and best[f"{mode}_x_float"] >= GOALS[f"{mode}_x_float"]),
            })
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="database items")
    p.add_argument("--bits", type=int, nargs="+", default=[64, 128])
    p.add_argument("--k", type=int, default=128)
    p.add_argument("--nq", type=int, default=1000, help="queries in the batch mode")
    p.add_argument("--single", type=int, default=200, help="queries timed one at a time")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per measurement (best kept)")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--clusters", type=int, default=2000, help="Gaussian-mixture components")
    p.add_argument("--spread", type=float, default=1.0, help="within-component std (centres are N(0, I))")
    p.add_argument("--nlist", type=int, nargs="+", default=[1024, 4096],
                   help="IVF cells, and as many buckets (faiss' guideline for n=1M: 4 to 16 x sqrt(n))")
    p.add_argument("--nprobe", type=int, nargs="+", default=[64, 128, 192, 256],
                   help="cells scanned per IVF query, and buckets per bucketed query (e)")
    p.add_argument("--train-per-list", type=int, default=64,
                   help="training sample = nlist x this, for IVF k-means and the bucket centres")
    p.add_argument("--kmeans-iters", type=int, default=10)
    p.add_argument("--hnsw-M", type=int, default=16, help="0 skips HNSW (its build is the slow part)")
    p.add_argument("--hnsw-efc", type=int, default=64)
    p.add_argument("--hnsw-ef", type=int, nargs="+", default=[128, 256, 512])
    p.add_argument("--threads", type=int, default=1,
                   help="faiss OpenMP threads for every index, the float baseline included. On shared cores, "
                        "OpenMP's spinning threads slow down by an order of magnitude under load, so 1 is the default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=Path("runs/bench_index.json"))
    args = p.parse_args(argv)

    faiss.omp_set_num_threads(args.threads)
    info = machine()
    info["loadavg_start"] = os.getloadavg()
    print(f"machine: {info['cpu_model']}, {info['cpus_usable']} usable cores, {args.threads} faiss thread(s), "
          f"load average {info['loadavg_start']}")
    t0 = time.perf_counter()
    x, xq, rng = make_data(args.n, args.nq, args.dim, args.clusters, args.spread, args.seed)
    print(f"data: {args.n} x {args.dim} in {time.perf_counter() - t0:.1f}s", flush=True)
    floats = bench_float(x, xq, args)
    rows = [floats]
    for bits in args.bits:
        print(f"{bits} bits:", flush=True)
        rows += bench_bits(bits, x, xq, rng, floats, args)
    info["loadavg_end"] = os.getloadavg()
    result = {
        "command": "python -m eval.bench_index " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": info,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "conventions": {
            "recall": f"recall@{args.k} vs exact Hamming; an item tied with the exact k-th distance counts as a hit",
            "qps": f"best of {args.repeats} runs; batch = {args.nq} queries in one call, single = "
                   f"{args.single} queries one call each; ratios vs IndexFlatIP in the same run",
            "bytes_per_item": "size of the saved index directory / n (float: 4 x dim)",
            "threads": f"faiss.omp_set_num_threads({args.threads}) for all indexes and the baseline",
        },
        "goals": GOALS,
        "rows": rows,
        "summary": summary(rows),
    }
    table = markdown(rows, args.k)
    print("\n" + table + "\n")
    for s in result["summary"]:
        best = s["best"]
        print(f"{s['bits']} bits {s['mode']:6s}: " + ("no configuration reaches the recall goal" if best is None else
              f"{best['index']} {best['params']} recall {best['recall']:.3f} -> {best['x_float']:.1f}x float "
              f"(goal {s['goal_x_float']:.0f}x: {'met' if s['goal_met'] else 'MISSED'})"))
    print(f"load average start {info['loadavg_start']}, end {info['loadavg_end']} on {info['cpus_usable']} cores")
    write_json(args.output, {**result, "markdown": table})
    print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
