"""Past one machine, measured on one: the Ray engine beside the local one, Milvus beside the local store.

    python -m eval.bench_scale_out --stages engine --engine-n 1000      # Flickr8K photos, lite encoder
    python -m eval.bench_scale_out --stages milvus --milvus-n 1000000   # synthetic 256-d vectors

``engine``: ``crossmodal index`` of the same N photos by each engine into a fresh index (local
engine, then ``--engine ray`` with a local Ray on this machine's cores), wall seconds each, then
10 text queries on both indexes: top-10 paths and scores compared.

``milvus``: the same N vectors (``eval.bench.Mixture``, 256-d, the lite encoder's size; ITQ
codes of ``--bits``) added to a local-store retriever and to a Milvus-store one (Milvus Lite) in
chunks: insert rate; then stage-1 p50 per query on both (Hamming top-384, float16 rescoring,
keep 128, as the caption cascade runs) over the same queries, and the top-10 compared.
Both run in this one process, one after the other, so their ratio is measured side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from common.atomic import write_json

QUERIES = ["a dog running on the grass", "two children playing in the water", "a man riding a bike",
           "a group of people standing in the street", "a black and white dog", "a girl in a pink dress",
           "a surfer on a wave", "people sitting on a bench", "a brown dog jumping", "a climber on a rock"]


def crossmodal(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "retrieval", *args], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def top10(index: Path) -> list[list[tuple[str, float]]]:
    from retrieval import Retriever

    r = Retriever.open(index)
    try:
        return [[(h.item, h.score) for h in r.search(q, k=10, rerank="float")] for q in QUERIES]
    finally:
        r.close()


def bench_engine(n: int, images: Path, workdir: Path) -> dict[str, Any]:
    photos = workdir / "photos"
    shutil.rmtree(photos, ignore_errors=True)
    photos.mkdir(parents=True)
    for path in sorted(images.glob("*.jpg"))[:n]:
        os.symlink(path, photos / path.name)
    seconds = {}
    for engine in ("local", "ray"):
        out = workdir / f"index-{engine}"
        shutil.rmtree(out, ignore_errors=True)
        seconds[engine] = crossmodal("index", str(photos), "--out", str(out), "--engine", engine, "-q")
        print(f"[engine] {engine}: {n} images in {seconds[engine]:.1f} s", flush=True)
    local, ray = top10(workdir / "index-local"), top10(workdir / "index-ray")
    same_paths = float(np.mean([[p for p, _ in a] == [p for p, _ in b] for a, b in zip(local, ray)]))
    diff = max(abs(x[1] - y[1]) for a, b in zip(local, ray) for x, y in zip(a, b))
    return {"n": n, "local_s": seconds["local"], "ray_s": seconds["ray"], "queries": len(QUERIES),
            "identical_top10_paths": same_paths, "max_score_diff": float(diff)}


def bench_milvus(n: int, bits: int, chunk: int, n_queries: int, workdir: Path,
                 stores: tuple[str, ...] = ("local", "milvus")) -> dict[str, Any]:
    from eval.bench import Mixture, scale_encoder
    from hashing import create_hasher
    from retrieval import Retriever

    data = Mixture(256, 2000, 1.0, seed=0)
    hasher = create_hasher("itq", bits=bits).fit(*data.pairs(20_000))
    queries = data.queries(n_queries)
    rows: dict[str, Any] = {}
    hits: dict[str, list] = {}
    for store in stores:
        directory = workdir / f"retriever-{store}"
        shutil.rmtree(directory, ignore_errors=True)
        for leftover in workdir.glob("milvus.db*"):
            leftover.unlink() if leftover.is_file() else shutil.rmtree(leftover)
        kw = {"store": "milvus", "milvus_uri": str(workdir / "milvus.db")} if store == "milvus" else {}
        r = Retriever.create(directory, encoder=scale_encoder(), hasher=hasher, **kw)
        start = time.perf_counter()
        for x in data.database(n, chunk):
            r.add_vectors("image", x, [None] * len(x))
        insert_s = time.perf_counter() - start
        r.close()
        r = Retriever.open(directory, encoder=scale_encoder())
        r.hamming_candidates = {"image": 384, "text": 384}
        times, found = [], []
        for q in queries:
            t0 = time.perf_counter()
            h = r.search_embeddings(q[None], "text", k=10, rerank=False)[0]
            times.append(1e3 * (time.perf_counter() - t0))
            found.append([(x.id, x.score) for x in h])
        if store == "milvus":  # where the time goes: Milvus' search, then the two gets by id
            parts: dict[str, list[float]] = {"search_ms": [], "get_vectors_ms": [], "get_items_ms": []}
            for code in r.hasher.encode(queries, "text"):
                t0 = time.perf_counter()
                ids, _ = r.store.search_codes("image", code[None], 384)
                t1 = time.perf_counter()
                r.store.fetch_vectors("image", ids[0])
                t2 = time.perf_counter()
                r.store.fetch("image", ids[0][:128], vectors=False)
                t3 = time.perf_counter()
                for key, value in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
                    parts[key].append(1e3 * value)
            breakdown = {f"p50_{k}": float(np.percentile(v[1:], 50)) for k, v in parts.items()}
            print(f"[milvus] stage-1 parts, p50: {breakdown}", flush=True)
        r.close()
        hits[store] = found
        rows[store] = {**(breakdown if store == "milvus" else {}), "insert_s": insert_s, "insert_per_s": n / insert_s,
                       "stage1_p50_ms": float(np.percentile(times[1:], 50)),
                       "stage1_p99_ms": float(np.percentile(times[1:], 99))}
        print(f"[milvus] {store}: {n:,} items inserted at {rows[store]['insert_per_s']:,.0f}/s, stage-1 p50 "
              f"{rows[store]['stage1_p50_ms']:.2f} ms, p99 {rows[store]['stage1_p99_ms']:.2f} ms", flush=True)
        shutil.rmtree(directory, ignore_errors=True)
    # ties: compare scores (cosines of the kept candidates), not ids
    same = float(np.mean([np.allclose([s for _, s in a], [s for _, s in b], atol=1e-6)
                          for a, b in zip(hits["local"], hits["milvus"])])) if len(hits) == 2 else None
    return {"n": n, "bits": bits, "chunk": chunk, "queries": n_queries, **{f"{k}_{m}": v for k, row in rows.items()
                                                                          for m, v in row.items()},
            "identical_top10_scores": same}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", nargs="+", choices=["engine", "milvus"], default=["engine", "milvus"])
    p.add_argument("--engine-n", type=int, default=1000)
    p.add_argument("--images", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
                   / "flickr8k" / "images")
    p.add_argument("--milvus-n", type=int, default=1_000_000)
    p.add_argument("--bits", type=int, default=256)
    p.add_argument("--stores", nargs="+", choices=["local", "milvus"], default=["local", "milvus"])
    p.add_argument("--chunk", type=int, default=65536, help="items per add_vectors call (one commit each)")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--output", type=Path, default=Path("runs/bench_scale_out.json"))
    args = p.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_scale_out."))
    workdir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = json.loads(args.output.read_text()) if args.output.is_file() else {}
    machine = {"cpus": os.cpu_count(), "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
               "command": "python -m eval.bench_scale_out " + " ".join(argv if argv is not None else sys.argv[1:])}
    if "engine" in args.stages:
        result["engine"] = {**bench_engine(args.engine_n, args.images.resolve(), workdir), **machine}
        print(json.dumps(result["engine"]), flush=True)
        write_json(args.output, result)
    if "milvus" in args.stages:
        result["milvus" if len(args.stores) == 2 else "milvus_" + args.stores[0]] = {**bench_milvus(args.milvus_n, args.bits, args.chunk, args.queries, workdir,
                                                     tuple(args.stores)), **machine,
                            "loadavg_end": os.getloadavg()}
        print(json.dumps(result.get("milvus" if len(args.stores) == 2 else "milvus_" + args.stores[0])), flush=True)
        write_json(args.output, result)
    shutil.rmtree(workdir, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
