"""A bounded load test of ``crossmodal serve`` over loopback: N concurrent clients x M text queries,
for at most a fixed time per reranker, reporting QPS, p50/p99 latency and errors.

    python -m eval.load_test runs/flickr8k-test-index --clients 8 --queries-per-client 250 \\
        --duration 30 --rerank none float cross --output runs/load_test.json

Starts the server itself (``python -m retrieval serve INDEX --port P``, a separate process as in
use) unless ``--url`` names one already running; either way only loopback addresses are accepted,
and every loop is bounded in count and in time, so the script always stops by itself. Each client
is closed-loop (it sends its next query when the previous answer arrived), so the load rises with
the number of clients and latency includes any queueing in the server. Queries are captions of the
index's own text gallery (a seeded sample, read through ``GET /items``), or a built-in list when it
has none. Latency is measured by the client: request sent to the whole JSON body read.

Not a test: it asserts nothing and times on a shared machine vary; the README records one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlparse

import httpx
import numpy as np

from retrieval.server.cli import is_loopback

FALLBACK_QUERIES = [
    "a dog running on the beach", "two children playing in the snow", "a man riding a bicycle down a street",
    "a black dog catching a frisbee", "people sitting at a table in a restaurant", "a girl in a pink dress",
    "a surfer riding a wave", "a brown dog swimming in a lake", "a crowd watching a concert",
    "a boy jumping into a swimming pool", "a woman climbing a rock wall", "a skateboarder doing a trick",
    "two dogs playing in the grass", "a man in a red jacket on a mountain", "a child on a swing",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_loopback(url: str) -> str:
    host = urlparse(url).hostname or ""
    if not is_loopback(host):
        raise SystemExit(f"--url {url}: only loopback servers (127.0.0.0/8, ::1, localhost) may be load-tested")
    return url.rstrip("/")


def start_server(index: str, rerank: Sequence[str], workers: int | None, timeout: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "retrieval", "serve", index, "--host", "127.0.0.1", "--port", str(port),
               "--rerank", *rerank, "--log-level", "warning", "--no-access-log"]
    if workers:
        command += ["--workers", str(workers)]
    server = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode} during start-up")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    server.terminate()
    raise SystemExit(f"the server did not answer /health within {timeout:.0f} s")


def sample_queries(url: str, n: int, seed: int, headers: dict[str, str]) -> tuple[list[str], str]:
    texts = httpx.get(f"{url}/stats", headers=headers, timeout=30).json()["counts"].get("text", 0)
    if not texts:
        return FALLBACK_QUERIES, "built-in list"
    ids = random.Random(seed).sample(range(texts), min(n, texts))
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        queries = [client.get(f"/items/{i}", params={"modality": "text"}).json()["caption"] for i in ids]
    return queries, f"{len(queries)} captions of the index (seed {seed})"


async def run_level(url: str, queries: list[str], rerank: str, clients: int, per_client: int, duration: float,
                    k: int, headers: dict[str, str]) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as http:
        start = time.perf_counter()
        deadline = start + duration

        async def client(c: int) -> None:
            for j in range(per_client):
                if time.perf_counter() >= deadline:
                    return
                q = queries[(c * per_client + j) % len(queries)]
                sent = time.perf_counter()
                try:
                    response = await http.get("/search", params={"q": q, "k": k, "rerank": rerank})
                    body = response.json()
                    if response.status_code != 200 or "hits" not in body:
                        errors.append(f"{response.status_code}: {body.get('error', '')[:80]}")
                        continue
                except (httpx.HTTPError, ValueError) as e:
                    errors.append(f"{type(e).__name__}: {e}"[:100])
                    continue
                latencies.append(1e3 * (time.perf_counter() - sent))

        await asyncio.gather(*(client(c) for c in range(clients)))
        elapsed = time.perf_counter() - start
    times = np.asarray(latencies)
    return {
        "rerank": rerank, "clients": clients, "seconds": round(elapsed, 2), "ok": len(latencies), "errors": len(errors),
        "error_examples": sorted(set(errors))[:5],
        "qps": round(len(latencies) / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(float(np.percentile(times, 50)), 1) if len(times) else None,
        "p99_ms": round(float(np.percentile(times, 99)), 1) if len(times) else None,
        "max_ms": round(float(times.max()), 1) if len(times) else None,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| stage 2 | clients | requests | errors | QPS | p50 ms | p99 ms | p99 / p50 |",
             "|---|---|---|---|---|---|---|---|"]
    names = {"none": "hash only", "float": "+ float", "cross": "+ cross"}
    for r in rows:
        ratio = f"{r['p99_ms'] / r['p50_ms']:.2f}" if r["p50_ms"] else "-"
        lines.append(f"| {names.get(r['rerank'], r['rerank'])} | {r['clients']} | {r['ok'] + r['errors']:,} | "
                     f"{r['errors']} | {r['qps']} | {r['p50_ms']} | {r['p99_ms']} | {ratio} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("index", nargs="?", help="index directory to serve (omit with --url)")
    parser.add_argument("--url", default=None, help="a server already running on a loopback address")
    parser.add_argument("--token", default=os.environ.get("CROSSMODAL_TOKEN"), help="bearer token, if the server has one")
    parser.add_argument("--clients", type=int, nargs="+", default=[8], help="concurrent clients (one run per value)")
    parser.add_argument("--queries-per-client", type=int, default=250, help="M: the most queries each client sends")
    parser.add_argument("--duration", type=float, default=30.0, help="the most seconds of each run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of unmeasured load before each rerank level")
    parser.add_argument("--rerank", nargs="+", default=["none", "float", "cross"], help="stage-2 levels to run")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--queries", type=int, default=200, help="distinct captions to sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="the server's --workers (when started here)")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--output", default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if (args.index is None) == (args.url is None):
        parser.error("give an INDEX to serve, or --url of a running loopback server")
    if min(args.clients) < 1 or args.queries_per_client < 1 or not 0 < args.duration <= 600:
        parser.error("--clients and --queries-per-client must be >= 1, --duration in (0, 600] s")
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    server = None
    if args.url:
        url = check_loopback(args.url)
    else:
        server, url = start_server(args.index, args.rerank, args.workers, args.startup_timeout)
    try:
        queries, source = sample_queries(url, args.queries, args.seed, headers)
        rows = []
        for rerank in args.rerank:
            if args.warmup > 0:
                asyncio.run(run_level(url, queries, rerank, max(args.clients), 10**6, args.warmup, args.k, headers))
            for clients in args.clients:
                row = asyncio.run(run_level(url, queries, rerank, clients, args.queries_per_client, args.duration,
                                            args.k, headers))
                rows.append(row)
                print(f"{rerank:>6} x {clients:>2} clients: {row['qps']} QPS, p50 {row['p50_ms']} ms, "
                      f"p99 {row['p99_ms']} ms, {row['errors']} errors", file=sys.stderr)
        stats = httpx.get(f"{url}/stats", headers=headers, timeout=30).json()
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
    print(f"queries: {source}; k = {args.k}; at most {args.queries_per_client} queries per client and "
          f"{args.duration:g} s per run; server {stats['model']}, {stats['counts']}")
    print(table(rows))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"args": vars(args), "queries": source, "rows": rows,
                                                 "server_stats": stats}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
