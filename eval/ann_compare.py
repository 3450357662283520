"""Side-by-side summary of several ``eval.bench --stages ann`` runs (one per data shape).

    python -m eval.ann_compare docs/bench-ann-250k-*.json

For each JSON: its data, then the single-query QPS and recall of faiss HNSW, faiss IVF-RaBitQ with
refinement, ours (IVF) and, where the run has it, ours (IVF) with the asymmetric cut, and each of
ours' single-query QPS as a ratio to HNSW and RaBitQ, measured in that run.
Then each run's full table (``eval.bench.ann_markdown``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .bench import ann_markdown


def data_name(ann: dict[str, Any]) -> str:
    d = ann.get("data") or {"kind": "mixture", "intrinsic": ann.get("intrinsic")}
    if d["kind"] == "flickr8k-gmm":
        return f"fitted to lite Flickr8K ({d['components']} {d['covariance']} components, {d['queries_from']} queries)"
    return f"synthetic, intrinsic {d['intrinsic']}" if d.get("intrinsic") else "synthetic, isotropic"


def row(ann: dict[str, Any], prefix: str, asymmetric: bool = False) -> dict[str, Any] | None:
    """The first row of a system whose name starts with ``prefix``, with or without the asymmetric cut."""
    return next((r for r in ann["rows"] if r["system"].startswith(prefix)
                 and (" + asymmetric " in r["system"]) == asymmetric), None)


def summary(paths: list[Path]) -> str:
    lines = ["| data (n, machine load) | HNSW single QPS (recall) | IVF-RaBitQ + refine single QPS (recall) | "
             "ours IVF single QPS (recall) | ours / HNSW | ours / RaBitQ | ours IVF + asymmetric single QPS (recall) | "
             "asymmetric / HNSW | asymmetric / RaBitQ |", "|---|---|---|---|---|---|---|---|---|"]
    tables = []
    for path in paths:
        result = json.loads(Path(path).read_text())
        ann = result["ann"]
        h, q, o = row(ann, "faiss IndexHNSWFlat"), row(ann, "faiss IndexIVFRaBitQ"), row(ann, "ours: ivf")
        a = row(ann, "ours: ivf", asymmetric=True)

        def cell(r: dict[str, Any] | None) -> str:
            return "-" if r is None else f"{r['single_qps']:,.0f} ({r['recall']:.3f})"

        def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str:
            return "-" if a is None or b is None else f"{a['single_qps'] / b['single_qps']:.1f}x"

        load = ", ".join(f"{v:.1f}" for v in ann.get("loadavg", [])[:1])
        lines.append(f"| {data_name(ann)} ({ann['n']:,}, load {load}) | {cell(h)} | {cell(q)} | {cell(o)} | "
                     f"{ratio(o, h)} | {ratio(o, q)} | {cell(a)} | {ratio(a, h)} | {ratio(a, q)} |")
        tables.append(f"{data_name(ann)}, {ann['n']:,} items (`{result['runs']['ann']['command']}`):\n\n"
                      + ann_markdown(ann))
    return "\n".join(lines) + "\n\n" + "\n\n".join(tables)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(prog="python -m eval.ann_compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, nargs="+", help="eval.bench JSON files holding an ann stage")
    text = summary(p.parse_args(argv).results)
    print(text)
    return text


if __name__ == "__main__":
    main()
