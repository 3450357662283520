"""How long the ``crossmodal`` commands take a person at a terminal, beside Python's own start-up.

    python -m eval.bench_cli --images ../shared/data/flickr8k/images --limit 200 \\
        --out /tmp/bench_cli.index --baseline-tree ../main --open-items 1000000 --output runs/bench_cli.json

In one run, on one machine: (1) the floor, ``python -c pass`` and ``python -c "import numpy"``;
(2) the index of the first ``--limit`` images is built once (``crossmodal index``, not a goal);
(3) for this tree, and for ``--baseline-tree`` when given (another checkout, e.g. main before a
change, run through ``PYTHONPATH`` on the same index), the median wall of ``crossmodal search
INDEX "text"`` over ``--queries`` different queries, each a fresh process, of as many ``crossmodal
search INDEX --image PHOTO`` (the album's first photos), and of ``--reruns``
unchanged ``crossmodal index`` reruns; every search's stderr is kept (it must be empty);
(4) with ``--open-items N``, a store of N synthetic 256-d vectors is built and ``Retriever.open``
timed in fresh processes: with the encoder passed in (loaded before the clock), with the encoder
named by the saved id, and open plus the first text search (which loads the text tower).
Every command runs as ``python -m retrieval`` with the interpreter running this script.

Each tree's packages are byte-compiled first (``compileall``), as ``pip install`` does and as an
editable checkout does on its first run: an environment with ``PYTHONDONTWRITEBYTECODE=1`` (this
project's VMs set it) and no ``__pycache__`` would otherwise compile every module at every start,
0.2 s of a search that a user never pays. ``--no-compile`` leaves the trees as they are.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common.atomic import write_json

from .machine import machine

QUERIES = ["a dog runs on the beach", "two children playing in the snow", "a man riding a bicycle",
           "a black and white dog jumps over a fence", "people sitting at a table in a restaurant",
           "a girl in a pink dress", "a surfer on a big wave"]

OPEN_PROBE = r"""
import json, sys, time
mode, directory = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
from retrieval import Retriever, load_encoder
imported = time.perf_counter() - t0
encoder = load_encoder("lite") if mode == "given" else None
if encoder is not None:
    encoder.load(["text"])  # loaded before the clock: the open alone
t0 = time.perf_counter()
r = Retriever.open(directory, encoder=encoder)
opened = time.perf_counter() - t0
hits = r.search("a dog runs on the beach", k=10) if mode == "search" else []
total = time.perf_counter() - t0
print(json.dumps({"import_s": imported, "open_s": opened, "open_and_search_s": total, "hits": len(hits),
                  "torch_imported": "torch" in sys.modules}))
"""


def run(cmd: list[str], tree: Path | None = None) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    t0 = time.perf_counter()
    # in the tree's own folder: ``python -m`` puts the working directory first on sys.path
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree)
    seconds = time.perf_counter() - t0
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr}")
    return seconds, result


PACKAGES = ("common", "hashing", "rerank", "retrieval")


def byte_compile(tree: Path) -> None:
    """Writes the ``.pyc`` files of ``tree``'s packages (see the module docstring)."""
    folders = [str(tree / p) for p in PACKAGES if (tree / p).is_dir()]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *folders], check=True, capture_output=True)


def median_wall(cmd: list[str], repeats: int, tree: Path | None = None) -> dict[str, Any]:
    walls = [run(cmd, tree)[0] for _ in range(repeats)]
    return {"median_s": statistics.median(walls), "walls_s": walls}


def linked_folder(images: Path, limit: int | None, into: Path) -> Path:
    """The first ``limit`` images of ``images`` (sorted names) as symlinks in ``into``: a fixed small album."""
    from retrieval.collection import find_images

    paths = sorted(find_images([images]))[:limit] if limit else sorted(find_images([images]))
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    for path in paths:
        (into / Path(path).name).symlink_to(Path(path).resolve())
    return into


def cli_latency(tree: Path, album: Path, index: Path, queries: list[str], reruns: int) -> dict[str, Any]:
    cli = [sys.executable, "-m", "retrieval"]
    run(cli + ["search", str(index), "warm the page cache", "-k", "1"], tree)  # first use: caches, not counted
    walls, stderr = [], []
    for q in queries:
        seconds, result = run(cli + ["search", str(index), q, "-k", "5"], tree)
        walls.append(seconds)
        stderr.append(result.stderr)
        print(f"  search {q!r}: {seconds:.2f} s" + (f"  stderr: {len(result.stderr)} chars" if result.stderr else ""),
              flush=True)
    image_walls = []
    for photo in sorted(album.iterdir())[:len(queries)]:  # as many image queries as text ones, each its own photo
        seconds, result = run(cli + ["search", str(index), "--image", str(photo), "-k", "5"], tree)
        image_walls.append(seconds)
        stderr.append(result.stderr)
        print(f"  search --image {photo.name}: {seconds:.2f} s", flush=True)
    rerun = median_wall(cli + ["index", str(album), "--out", str(index), "-q"], reruns, tree)
    print(f"  unchanged index rerun: median {rerun['median_s']:.2f} s", flush=True)
    return {"search_median_s": statistics.median(walls), "search_walls_s": walls,
            "image_search_median_s": statistics.median(image_walls), "image_search_walls_s": image_walls,
            "search_stderr_chars": [len(s) for s in stderr], "search_stderr_sample": next((s for s in stderr if s), ""),
            "rerun_median_s": rerun["median_s"], "rerun_walls_s": rerun["walls_s"]}


def open_times(n: int, workdir: Path) -> dict[str, Any]:
    """Builds a store of ``n`` synthetic unit vectors, then times opening it three ways in fresh processes."""
    import numpy as np

    from retrieval import Retriever, load_encoder

    directory = workdir / f"open-{n}"
    shutil.rmtree(directory, ignore_errors=True)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    r = Retriever.create(directory, encoder=load_encoder("lite"), vector_dtype="fp16")
    for start in range(0, n, 262144):
        x = rng.standard_normal((min(262144, n - start), r.encoder.dim)).astype(np.float32)
        r.add_vectors("image", x / np.linalg.norm(x, axis=1, keepdims=True), [None] * len(x))
    r.close()
    build_s = time.perf_counter() - t0
    out: dict[str, Any] = {"n": n, "build_s": build_s}
    import json

    for mode in ("given", "by_id", "search"):
        _, result = run([sys.executable, "-c", OPEN_PROBE, mode, str(directory)])
        out[mode] = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"  open {n:,} items, encoder {mode}: {out[mode]}", flush=True)
    shutil.rmtree(directory, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m eval.bench_cli", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, required=True, help="a folder of photos")
    p.add_argument("--limit", type=int, default=200, help="index the first N images (sorted names); 0: all")
    p.add_argument("--out", type=Path, required=True, help="index folder (replaced)")
    p.add_argument("--queries", type=int, default=5, help="searches timed, each a different query")
    p.add_argument("--reruns", type=int, default=3, help="unchanged index reruns timed")
    p.add_argument("--floor-repeats", type=int, default=5)
    p.add_argument("--baseline-tree", type=Path, default=None,
                   help="another checkout of this repository, timed on the same index beside this one")
    p.add_argument("--open-items", type=int, default=0, help="also time Retriever.open at this many items")
    p.add_argument("--no-compile", action="store_true",
                   help="do not byte-compile the trees first (a first start after install compiles them)")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    if not 1 <= args.queries <= len(QUERIES):
        raise SystemExit(f"--queries must be in 1..{len(QUERIES)}")

    this_tree = Path(__file__).resolve().parents[1]
    trees = {"this": this_tree, **({"baseline": args.baseline_tree.resolve()} if args.baseline_tree else {})}
    if not args.no_compile:
        for tree in trees.values():
            byte_compile(tree)
    floor = {"python -c pass": median_wall([sys.executable, "-c", "pass"], args.floor_repeats),
             "python -c 'import numpy'": median_wall([sys.executable, "-c", "import numpy"], args.floor_repeats)}
    for name, f in floor.items():
        print(f"floor {name}: median {f['median_s']:.3f} s", flush=True)
    album = linked_folder(args.images, args.limit or None, args.out.with_name(args.out.name + ".album"))
    shutil.rmtree(args.out, ignore_errors=True)
    build_s, built = run([sys.executable, "-m", "retrieval", "index", str(album), "--out", str(args.out), "-q"],
                         this_tree)
    print(f"built {args.out} in {build_s:.1f} s: {built.stdout.strip()}", flush=True)
    latency = {}
    for name, tree in trees.items():
        print(f"{name} tree ({tree}):", flush=True)
        latency[name] = cli_latency(tree, album, args.out, QUERIES[:args.queries], args.reruns)
    result: dict[str, Any] = {
        "images": len(list(album.iterdir())), "floor": floor, "index_build_s": build_s, "latency": latency,
        "trees": {k: str(v) for k, v in trees.items()}, "byte_compiled": not args.no_compile,
        "pythondontwritebytecode": os.environ.get("PYTHONDONTWRITEBYTECODE", ""), "machine": machine(),
    }
    if args.open_items:
        with tempfile.TemporaryDirectory(prefix="bench_cli_open.", dir=args.out.parent) as tmp:
            result["open"] = open_times(args.open_items, Path(tmp))
    this = latency["this"]
    numpy_floor = floor["python -c 'import numpy'"]["median_s"]
    print(f"search median {this['search_median_s']:.2f} s, image search median {this['image_search_median_s']:.2f} s, "
          f"unchanged rerun median {this['rerun_median_s']:.2f} s; "
          f"floor: python {floor['python -c pass']['median_s']:.2f} s, with numpy "
          f"{numpy_floor:.2f} s"
          + (f"; baseline tree: search {latency['baseline']['search_median_s']:.2f} s, image search "
             f"{latency['baseline']['image_search_median_s']:.2f} s, rerun "
             f"{latency['baseline']['rerun_median_s']:.2f} s" if "baseline" in latency else ""), flush=True)
    if args.output:
        write_json(args.output, result)
    return result


if __name__ == "__main__":
    main()
