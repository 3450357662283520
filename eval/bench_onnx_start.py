"""How long ONNX Runtime takes to start the lite text graph, in each form it could be stored in.

    python -m eval.bench_onnx_start --repeats 5 --output runs/bench_onnx_start.json

A command-line text search creates one session and runs one query, so what counts is the time to
create the session plus that first run, each in a fresh process (the page cache warm: every form
is read once before timing). The forms, all made from the cached export of the shipped weights:

* ``onnx``: the exported single-file graph (90 MB, weights inside), at ORT's "all" level (before issue 22);
* ``onnx-no-opt``: the same at optimisation level "disabled";
* ``ort-format``: ORT's own ``.ort`` format (optimised at "extended"), loaded from its file with
  the session config entries ``session.use_ort_model_bytes_directly`` and
  ``session.use_ort_model_bytes_for_initializers``;
* ``optimised-onnx``: ORT's optimised graph as one file, loaded at level "disabled";
* ``external``: ORT's optimised graph with its weights as external data, loaded at "all" (what
  :mod:`retrieval.encoders.onnx_cache` keeps since issue 22); ``external-1-thread``: the same with
  one intra-op thread; ``external-no-prepack``: the same with ``session.disable_prepacking``;
  ``external-no-spin``: the same with ``session.intra_op.allow_spinning`` off;
* ``int8``, ``int8-external``: the dynamically quantised text graph (``lite:int8``) in one file and
  with external data.

Forms are timed in turn (one of each, then the next round), so a change of machine load hits all.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common.atomic import write_json

from .machine import machine

PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import onnxruntime as ort
imported = time.perf_counter() - t0
path, level, entries, threads = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
ort.set_default_logger_severity(3)
options = ort.SessionOptions()
options.inter_op_num_threads = 1
if threads:
    options.intra_op_num_threads = threads
options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
for key, value in entries.items():
    options.add_session_config_entry(key, value)
t0 = time.perf_counter()
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
started = time.perf_counter() - t0
ids = np.array([[101, 1037, 3899, 3216, 2006, 1996, 3509, 102]], dtype=np.int64)
t0 = time.perf_counter()
out = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
first = time.perf_counter() - t0
print(json.dumps({"import_s": imported, "session_s": started, "first_run_s": first,
                  "vector": (out[0] / np.linalg.norm(out[0])).tolist()}))
"""

ORT_BYTES = {"session.use_ort_model_bytes_directly": "1", "session.use_ort_model_bytes_for_initializers": "1"}


def optimise(source: Path, target: Path, level: str, fmt: str = "ONNX", external: bool = False) -> Path:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.optimized_model_filepath = str(target)
    options.add_session_config_entry("session.save_model_format", fmt)
    if external:
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         target.name + ".data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    return target


def forms(workdir: Path) -> dict[str, tuple[Path, str, dict[str, str], int]]:
    """Each form: (graph file, load level, session config entries, intra-op threads; 0 = ORT's default)."""
    from retrieval.encoders import load_encoder
    from retrieval.encoders.onnx_cache import graph_paths, optimised_graph, remembered_key

    out = {}
    for int8 in (False, True):
        encoder = load_encoder("lite:int8" if int8 else "lite", device="cpu")
        encoder.encode_texts(["exports the graphs on first use"])
        exported = graph_paths(remembered_key(encoder.path, encoder.config, int8))["text"]
        external = optimised_graph(exported)
        if external is None:
            raise SystemExit("the ONNX cache is not writable: set CROSSMODAL_CACHE")
        if int8:
            out["int8"] = (exported, "ORT_ENABLE_ALL", {}, 0)
            out["int8-external"] = (external, "ORT_ENABLE_ALL", {}, 0)
            continue
        out["onnx"] = (exported, "ORT_ENABLE_ALL", {}, 0)
        out["onnx-no-opt"] = (exported, "ORT_DISABLE_ALL", {}, 0)
        ort_file = optimise(exported, workdir / "text.ort", "ORT_ENABLE_EXTENDED", fmt="ORT")
        out["ort-format"] = (ort_file, "ORT_DISABLE_ALL", ORT_BYTES, 0)
        one_file = optimise(exported, workdir / "text-optimised.onnx", "ORT_ENABLE_EXTENDED")
        out["optimised-onnx"] = (one_file, "ORT_DISABLE_ALL", {}, 0)
        out["external"] = (external, "ORT_ENABLE_ALL", {}, 0)
        out["external-1-thread"] = (external, "ORT_ENABLE_ALL", {}, 1)
        out["external-no-prepack"] = (external, "ORT_ENABLE_ALL", {"session.disable_prepacking": "1"}, 0)
        out["external-no-spin"] = (external, "ORT_ENABLE_ALL", {"session.intra_op.allow_spinning": "0"}, 0)
    return out


def probe(path: Path, level: str, entries: dict[str, str], threads: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", PROBE, str(path), level, json.dumps(entries), str(threads)],
                            capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if result.returncode != 0:
        return {"error": f"exit {result.returncode}: {result.stderr.strip()[-300:]}"}
    return {**json.loads(result.stdout.strip().splitlines()[-1]), "process_s": wall}


def form_files(path: Path) -> list[Path]:
    """The graph file and its external data, if any."""
    extra = path.parent / "weights.data" if path.name == "graph.onnx" else path.with_name(path.name + ".data")
    return [path] + ([extra] if extra.is_file() else [])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m eval.bench_onnx_start", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="bench_onnx_start.") as tmp:
        table = forms(Path(tmp))
        for path, *_ in table.values():  # into the page cache
            for f in form_files(path):
                f.read_bytes()
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in table}
        for _ in range(args.repeats):
            for name, form in table.items():
                runs[name].append(probe(*form))
        reference = np.asarray(runs["onnx"][0]["vector"])
        result: dict[str, Any] = {"repeats": args.repeats, "machine": machine(), "forms": {}}
        for name, rs in runs.items():
            ok = [r for r in rs if "error" not in r]
            row: dict[str, Any] = {"file": str(table[name][0].name), "level": table[name][1],
                                   "config": table[name][2], "threads": table[name][3] or "default",
                                   "mb_on_disk": round(sum(f.stat().st_size for f in form_files(table[name][0])) / 1e6, 1)}
            if not ok:
                row["error"] = rs[0]["error"]
            else:
                for key in ("session_s", "first_run_s", "process_s"):
                    row[f"{key[:-2]}_median_s"] = statistics.median(r[key] for r in ok)
                row["cosine_to_onnx"] = float(np.dot(np.asarray(ok[0]["vector"]), reference))
            result["forms"][name] = row
            print(f"{name:20s} " + (f"session {row['session_median_s']:.3f} s, first run {row['first_run_median_s']:.3f} s, "
                                    f"process {row['process_median_s']:.3f} s, {row['mb_on_disk']} MB, cosine "
                                    f"{row['cosine_to_onnx']:.6f}" if "error" not in row else f"failed: {row['error']}"),
                  flush=True)
    if args.output:
        write_json(args.output, result)
    return result


if __name__ == "__main__":
    main()
