"""``crossmodal index`` on a real photo folder, against ``Encoder.encode_images`` on the same files.

    python -m eval.bench_cli --images ../shared/data/flickr8k/images --out runs/flickr8k.index \\
        --output runs/bench_cli.json

One run, one after the other on the same machine: (1) ``encode_images`` over every image file
found (the bound the command line can at best reach), (2) ``crossmodal index`` as a user runs it
(a fresh process: Python start, model load, hashing files, commits included), (3) the same command
again with nothing changed, (4) ``crossmodal search`` and ``crossmodal info``. Prints each
command's own output and a summary; the ratio (2) / (1) is the command line's overhead.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common.atomic import write_json

from .machine import machine


def run(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - t0
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr}")
    return seconds, result.stdout


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m eval.bench_cli", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, required=True, help="a folder of photos")
    p.add_argument("--out", type=Path, required=True, help="index folder (replaced)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--query", default="a dog runs on the beach")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)

    from retrieval import load_encoder
    from retrieval.collection import find_images

    paths = find_images([args.images])
    encoder = load_encoder("lite")
    t0 = time.perf_counter()
    encoder.encode_images(paths, batch_size=args.batch_size, progress=False)
    encode_s = time.perf_counter() - t0
    print(f"encode_images: {len(paths)} images in {encode_s:.1f} s ({len(paths) / encode_s:.1f} images/s)", flush=True)
    del encoder
    shutil.rmtree(args.out, ignore_errors=True)
    cli = [sys.executable, "-m", "retrieval"]
    commands = {
        "index": cli + ["index", str(args.images), "--out", str(args.out), "--batch-size", str(args.batch_size), "-q"],
        "rerun": cli + ["index", str(args.images), "--out", str(args.out), "-q"],
        "search": cli + ["search", str(args.out), args.query, "-k", "5"],
        "info": cli + ["info", str(args.out)],
    }
    seconds, outputs = {}, {}
    for name, cmd in commands.items():
        seconds[name], outputs[name] = run(cmd)
        print(f"$ crossmodal {' '.join(cmd[3:])}   # {seconds[name]:.1f} s wall\n{outputs[name]}", flush=True)
    import re

    in_run = re.search(r"\(([\d.]+) s, of which ([\d.]+) s loading the model\)", outputs["index"])
    indexing_s = float(in_run.group(1)) - float(in_run.group(2))
    result = {
        "images": len(paths), "cli_indexing_s": indexing_s, "cli_indexing_over_encode_images": indexing_s / encode_s, "encode_images_s": encode_s, "encode_images_per_s": len(paths) / encode_s,
        "cli_seconds": seconds, "cli_images_per_s": len(paths) / seconds["index"],
        "cli_over_encode_images": seconds["index"] / encode_s, "outputs": outputs, "machine": machine(),
    }
    print(f"crossmodal index: {len(paths) / seconds['index']:.1f} images/s end to end (Python start and model load "
          f"included), {seconds['index'] / encode_s:.3f}x the time of encode_images; once the model is loaded "
          f"{indexing_s:.1f} s, {indexing_s / encode_s:.3f}x; rerun {seconds['rerun']:.1f} s")
    if args.output:
        write_json(args.output, result)
    return result


if __name__ == "__main__":
    main()
