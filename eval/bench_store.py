"""The on-disk store at scale: build, reopen in a fresh process, memory, and search equality.

    python -m eval.bench_store --sizes 1000 1000000 --output runs/bench_store.json

For each size, synthetic unit vectors (256-d, a seeded Gaussian mixture) go through
``Retriever.add_vectors`` into a retriever created on disk (``Retriever.create``, ITQ-64 fitted on
a 20K sample), for each vector dtype asked. A fresh Python process then opens it and reports the
resident memory the open added (``/proc/self/statm`` before and after ``Retriever.open``, the
encoder loaded first so that it is not counted), the open time, and p50/p99 of single
hash + float-rescored searches (faiss on one thread, as in eval.bench). The goal of issue 11 compares the largest size's memory with the
smallest's.

Stage-1 cost: in the same process, single queries through the cascade (Hamming top-384, float
rescoring down to 128, the default depth for caption galleries) beside exhaustive float search
(faiss ``IndexFlatIP`` over the same vectors as float32, one thread).

Equality: the same queries answered by an in-memory Retriever over the same float32 vectors and
by the reopened one: identical rankings are expected from fp32 storage; fp16/int8 report the
share of identical top-10 lists and of top-10 ids kept.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.atomic import write_json

from .bench import PROBE_OPEN
from .machine import machine

DIM = 256
CLUSTERS = 2000
CHUNK = 100_000

OPEN_PROBE = PROBE_OPEN + r"""
times = []
hits = []
for q in queries:
    t0 = time.perf_counter()
    h = r.search_embeddings(q[None], "text", k=10, rerank="float")[0]
    times.append(1e3 * (time.perf_counter() - t0))
    hits.append([[x.id, x.score] for x in h])
rss_after_search = rss() - before
# the stage-1 cascade (Hamming top-384, float-rescored to 128) against exhaustive float search, side by side
r.hamming_candidates = {"image": 384, "text": 384}
cascade = []
for q in queries:
    t0 = time.perf_counter()
    r.search_embeddings(q[None], "text", k=10, rerank=False)
    cascade.append(1e3 * (time.perf_counter() - t0))
flat = faiss.IndexFlatIP(queries.shape[1])
store = r.store
for ids, _ in store.live_codes("image"):
    flat.add(store.fetch_vectors("image", ids))
exhaustive = []
for q in queries:
    t0 = time.perf_counter()
    flat.search(q[None], 128)
    exhaustive.append(1e3 * (time.perf_counter() - t0))
print(json.dumps({"open_s": open_s, "rss_added": after_open - before, "rss_after_search": rss_after_search,
                  "p50_ms": float(np.percentile(times[1:], 50)), "p99_ms": float(np.percentile(times[1:], 99)),
                  "cascade_p50_ms": float(np.percentile(cascade[1:], 50)),
                  "float_exhaustive_p50_ms": float(np.percentile(exhaustive[1:], 50)),
                  "hits": hits}))
"""


def synthetic(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((CLUSTERS, DIM)).astype(np.float32)
    out = np.empty((n, DIM), dtype=np.float32)
    for s in range(0, n, CHUNK):
        m = min(CHUNK, n - s)
        x = centers[rng.integers(0, CLUSTERS, m)] + 0.7 * rng.standard_normal((m, DIM)).astype(np.float32)
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m eval.bench_store", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 1_000_000])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "fp16", "int8"])
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--workdir", type=Path, default=None, help="where the stores go (default: a temp dir)")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)

    from hashing import create_hasher
    from retrieval import Retriever, load_encoder

    encoder = load_encoder("lite")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_store."))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.sizes:
        vectors = synthetic(n)
        queries = synthetic(args.queries, seed=1)
        query_file = workdir / f"queries-{n}.npy"
        np.save(query_file, queries)
        sample = vectors[np.random.default_rng(0).choice(n, min(n, 20_000), replace=False)]
        hasher = create_hasher("itq", 64).fit(sample, sample)
        memory = Retriever(encoder, hasher)
        memory.add_vectors("image", vectors, [None] * n)
        expected = [[[h.id, h.score] for h in hits] for hits in
                    (memory.search_embeddings(q[None], "text", k=10, rerank="float")[0] for q in queries)]
        del memory
        for dtype in args.dtypes:
            directory = workdir / f"store-{n}-{dtype}"
            shutil.rmtree(directory, ignore_errors=True)
            t0 = time.perf_counter()
            r = Retriever.create(directory, encoder=encoder, hasher=hasher, vector_dtype=dtype)
            for s in range(0, n, CHUNK):
                r.add_vectors("image", vectors[s:s + CHUNK], [None] * len(vectors[s:s + CHUNK]))
            r.close()
            build_s = time.perf_counter() - t0
            probe = subprocess.run([sys.executable, "-c", OPEN_PROBE, str(directory), str(query_file)],
                                   capture_output=True, text=True, check=True)
            got = json.loads(probe.stdout.strip().splitlines()[-1])
            hits = got.pop("hits")
            same_lists = np.mean([[h[0] for h in a] == [h[0] for h in b] for a, b in zip(hits, expected)])
            kept = np.mean([len({h[0] for h in a} & {h[0] for h in b}) / 10 for a, b in zip(hits, expected)])
            max_score_diff = max(abs(x[1] - y[1]) for a, b in zip(hits, expected) for x, y in zip(a, b))
            row = {"n": n, "vector_dtype": dtype, "build_s": build_s, **got,
                   "disk_bytes": sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()),
                   "identical_top10_lists": float(same_lists), "top10_ids_kept": float(kept),
                   "max_score_diff": float(max_score_diff)}
            rows.append(row)
            print(f"n={n:>9} {dtype}: build {build_s:.1f} s, open {got['open_s']:.2f} s, "
                  f"+{got['rss_added'] / 2**20:.1f} MiB resident, p50 {got['p50_ms']:.2f} ms, p99 {got['p99_ms']:.2f} ms, "
                  f"disk {row['disk_bytes'] / 2**20:.0f} MiB, identical lists {same_lists:.3f}, "
                  f"top-10 kept {kept:.3f}; cascade p50 {got['cascade_p50_ms']:.2f} ms vs float exhaustive "
                  f"{got['float_exhaustive_p50_ms']:.2f} ms", flush=True)
    result = {"rows": rows, "dim": DIM, "bits": 64, "queries": args.queries, "machine": machine()}
    if args.output:
        write_json(args.output, result)
    return result


if __name__ == "__main__":
    main()
