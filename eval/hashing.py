"""Cross-modal hashing benchmark: fit hashers, rank by Hamming distance, report MAP/P@K and curves.

    python -m eval.hashing --dataset wiki --data ../shared/data/wiki/wikiData.mat \\
        --method itq --bits 16 32 64 128 --output out.json --plots plots/

    python -m eval.hashing --dataset flickr8k --data ../shared/data/flickr8k/dataset_flickr8k.json \\
        --embeddings cache/flickr8k-MODEL.npz [--model MODEL] --method itq --bits 64 --output out.json

    python -m eval.hashing --dataset mirflickr --data DIR_WITH_XAll_YAll_LAll_FILES \\
        [--protocol ucch|djsrh|dcmh] --method lsh itq --bits 16 32 64

``mirflickr``, ``nuswide-tc10`` and ``mscoco`` read the XAll / YAll / LAll files UCCH and DJSRH
distribute (:data:`eval.datasets_hashing.ALL_LAYOUTS`), relevant = sharing at least one label.

Hashers fit on the training pairs (for Wiki, the retrieval set) and never see the queries. i2t:
image queries against the retrieval set's texts; t2i: text queries against its images. The JSON
holds ``results[method][bits][direction]`` = ``{"map@50", "map@all", "p@10", "p@h<=2"}`` and the
curves under ``curves[method][bits][direction]``; ``conventions`` names the tie handling and the
MAP@K normalisation (see :mod:`eval.hash_metrics`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from hashing import available_methods, create_hasher
from hashing.base import check_bits
from common.atomic import write_json
from common.settings_args import by_name, named_setting

from . import hash_metrics as hm
from .extras import require
from .datasets_hashing import (
    ALL_LAYOUTS, DATASETS, HashingData, flickr8k_embeddings, load_all_layout, load_flickr8k, load_wiki,
)

FORMAT_VERSION = 1
DIRECTIONS = ("i2t", "t2i")
ARROWS = {"i2t": "I→T", "t2i": "T→I"}
TABLE_METRICS = (("map@50", "MAP@50"), ("map@all", "MAP@all"), ("p@10", "P@10"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.hashing", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--data", required=True, type=Path,
                   help="wiki: the .mat file; flickr8k: the Karpathy dataset_flickr8k.json; mirflickr / "
                        "nuswide-tc10 / mscoco: the folder holding the XAll/YAll/LAll files (mscoco: or the .h5py)")
    p.add_argument("--protocol", help="mirflickr / nuswide-tc10 / mscoco: query/retrieval/train split, "
                   + "; ".join(f"{k}: {', '.join(v.protocols)} (default {v.default_protocol})"
                               for k, v in ALL_LAYOUTS.items()))
    p.add_argument("--split-seed", type=int, default=0, help="seed of the per-label (djsrh) split draw")
    p.add_argument("--image-features", type=Path,
                   help="mirflickr / nuswide-tc10 / mscoco: image-feature file replacing the layout's (same variable)")
    p.add_argument("--method", required=True, nargs="+", help="hash methods (hashing.available_methods())")
    p.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--output", type=Path, help="JSON results file")
    p.add_argument("--plots", type=Path, help="folder for PR-curve and precision-topK PNGs")
    p.add_argument("--supervised", action="store_true", help="pass class labels to fit()")
    p.add_argument("--hasher-arg", action="append", default=[], type=named_setting, metavar="METHOD.KEY=VALUE",
                   help="constructor argument for one method, e.g. mgsgh.k=10 (JSON value); repeatable")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ties", choices=tuple(hm.TIE_CONVENTIONS), default="random")
    p.add_argument("--map-k-norm", choices=tuple(hm.MAP_K_CONVENTIONS), default="in_top_k")
    p.add_argument("--embeddings", type=Path, help="flickr8k: .npz embedding cache (written from --model if absent)")
    p.add_argument("--model", help="flickr8k: encoder id for retrieval.encoders.load_encoder; the cache is "
                                    "(re-)encoded with it unless that very encoder made it")
    p.add_argument("--images", type=Path, help="flickr8k: image folder (default: images/ beside the json)")
    p.add_argument("--no-progress", action="store_true")
    return p


def import_hashers() -> None:
    """Imports every module of the ``hashing`` package: learners register themselves on import,
    and ``hashing/__init__`` does not import them (yet)."""
    import importlib
    import pkgutil

    import hashing

    for module in pkgutil.iter_modules(hashing.__path__):
        importlib.import_module(f"hashing.{module.name}")


def load_data(args: argparse.Namespace) -> HashingData:
    if args.dataset == "wiki":
        return load_wiki(args.data)
    if args.dataset in ALL_LAYOUTS:
        return load_all_layout(args.data, args.dataset, args.protocol, seed=args.split_seed,
                               image_file=args.image_features)
    if args.embeddings is None:
        raise ValueError("--dataset flickr8k needs --embeddings (an .npz cache; add --model to create it)")
    flickr8k_embeddings(args.embeddings, args.model, args.data, args.images, progress=not args.no_progress)
    return load_flickr8k(args.embeddings, args.data, args.images)


def evaluate_method(
    data: HashingData, method: str, bits: int, *, supervised: bool = False, seed: int = 0,
    ties: str = "random", map_k_norm: str = "in_top_k", hasher_args: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fits one hasher and evaluates both directions; returns metrics, curves and timings.

    ``hasher_args``: constructor settings of this method (``--hasher-arg METHOD.KEY=VALUE``)."""
    hasher = create_hasher(method, bits, seed=seed, **(hasher_args or {}))
    t0 = time.perf_counter()
    hasher.fit(data.train.image, data.train.text, labels=data.train.image_labels if supervised else None)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    codes = {
        ("query", "image"): hasher.encode(data.query.image, "image"),
        ("query", "text"): hasher.encode(data.query.text, "text"),
        ("retrieval", "image"): hasher.encode(data.retrieval.image, "image"),
        ("retrieval", "text"): hasher.encode(data.retrieval.text, "text"),
    }
    encode_s = time.perf_counter() - t0
    out: dict[str, Any] = {"fit_s": fit_s, "encode_s": encode_s}
    for direction, (q, r) in {"i2t": ("image", "text"), "t2i": ("text", "image")}.items():
        distances = hm.HammingDistances(codes["query", q], codes["retrieval", r])
        out[direction] = hm.evaluate(
            distances, data.relevance_for(direction), map_at=(50, None), p_at=(10,), radius=2,
            pr_radii="auto", topk="auto", ties=ties, map_k_norm=map_k_norm,
        )
    return out


def markdown_table(results: dict[str, dict[str, Any]], conventions: dict[str, str]) -> str:
    head = ["method", "bits"] + [f"{d} {label}" for d in DIRECTIONS for _, label in TABLE_METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for method, by_bits in results.items():
        for bits, res in by_bits.items():
            cells = [method, str(bits)] + [f"{res[d][key]:.4f}" for d in DIRECTIONS for key, _ in TABLE_METRICS]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Ties: {conventions['ties']}. MAP@50: {conventions['map_k_norm']}. "
                 "MAP@all: AP over the whole retrieval set.")
    return "\n".join(lines)


def readme_table(results: dict[str, dict[str, Any]], conventions: dict[str, str]) -> str:
    """One row per method, bit lengths joined by " / " in each cell (the README's layout)."""
    head = ["method", "bits"] + [f"{ARROWS[d]} {label}" for d in DIRECTIONS for _, label in TABLE_METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for method, by_bits in results.items():
        bits = list(by_bits)
        cells = [method, " / ".join(bits)]
        for d in DIRECTIONS:
            for key, _ in TABLE_METRICS:
                cells.append(" / ".join(f"{by_bits[b][d][key]:.3f}".removeprefix("0") for b in bits))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Ties: {conventions['ties']}. MAP@50: {conventions['map_k_norm']}. "
                 "MAP@all: AP over the whole retrieval set.")
    return "\n".join(lines)


def save_plots(curves: dict[str, dict[str, Any]], folder: Path, title: str) -> list[Path]:
    """One PR-curve and one precision-topK PNG per bit length, i2t and t2i side by side, a line per method."""
    require("matplotlib", "eval.hashing --plots")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    folder.mkdir(parents=True, exist_ok=True)
    bit_lengths = sorted({b for by_bits in curves.values() for b in by_bits}, key=int)
    written = []
    for bits in bit_lengths:
        for kind, (curve, x, xlabel, ylabel) in {
            "pr": ("pr_curve", "recall", "recall (Hamming radius 0..bits)", "precision (nothing retrieved = 0)"),
            "topk": ("topk_curve", "k", "top K", "precision"),
        }.items():
            fig = Figure(figsize=(10, 4), layout="constrained")
            FigureCanvasAgg(fig)
            for ax, direction in zip(fig.subplots(1, 2), DIRECTIONS):
                for method, by_bits in curves.items():
                    if bits in by_bits:
                        c = by_bits[bits][direction][curve]
                        ax.plot(c[x], c["precision"], marker=".", label=method)
                ax.set(title=f"{direction}, {bits} bits", xlabel=xlabel, ylabel=ylabel, ylim=(0, 1.02))
                ax.grid(alpha=0.3)
                ax.legend()
            fig.suptitle(title)
            path = folder / f"{kind}_{bits}bits.png"
            fig.savefig(path, dpi=100)
            written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not set(args.method) <= set(available_methods()):
        import_hashers()
    unknown = [m for m in args.method if m not in available_methods()]
    if unknown:
        parser.error(f"unknown --method {', '.join(unknown)}; available: {', '.join(available_methods()) or 'none'}")
    try:
        bits_list = [check_bits(b) for b in args.bits]
        data = load_data(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        parser.error(str(e))
    if args.supervised and not data.has_class_labels:
        parser.error(f"--supervised needs class labels; {data.name} has only image-caption pairs")

    hasher_args = by_name(args.hasher_arg)
    stray = sorted(set(hasher_args) - set(args.method))
    if stray:
        parser.error(f"--hasher-arg for {', '.join(stray)}, which is not among --method {' '.join(args.method)}")
    for method, settings in hasher_args.items():
        try:  # a misspelt or out-of-range setting is a usage error before any fit, not a traceback after one
            create_hasher(method, bits_list[0], **settings)
        except (TypeError, ValueError) as e:
            parser.error(f"--hasher-arg {method}: {e}")
    conventions = hm.describe_conventions(args.ties, args.map_k_norm)
    results: dict[str, dict[str, Any]] = {}
    curves: dict[str, dict[str, Any]] = {}
    timings: dict[str, dict[str, Any]] = {}
    jobs = [(m, b) for m in args.method for b in bits_list]
    for method, bits in tqdm(jobs, desc="hashers", disable=args.no_progress):
        res = evaluate_method(data, method, bits, supervised=args.supervised, seed=args.seed,
                              ties=args.ties, map_k_norm=args.map_k_norm, hasher_args=hasher_args.get(method))
        key = str(bits)
        timings.setdefault(method, {})[key] = {"fit_s": res["fit_s"], "encode_s": res["encode_s"]}
        for d in DIRECTIONS:
            curves.setdefault(method, {}).setdefault(key, {})[d] = {
                c: res[d].pop(c) for c in ("pr_curve", "topk_curve")}
            results.setdefault(method, {}).setdefault(key, {})[d] = res[d]

    print(f"\n{data.name}: {len(data.query.image)} image / {len(data.query.text)} text queries, "
          f"{len(data.retrieval.text)} text / {len(data.retrieval.image)} image items, {data.relevance} relevance")
    if data.split_protocol:
        print(f"split {data.split_protocol}")
    print()
    print(markdown_table(results, conventions))
    if any(len(by_bits) > 1 for by_bits in results.values()):
        print("\nAll bit lengths per row (README layout):\n")
        print(readme_table(results, conventions))
    report = {
        "format_version": FORMAT_VERSION,
        "dataset": data.summary(),
        "data": str(args.data),
        "command": " ".join(["python -m eval.hashing", *(argv if argv is not None else sys.argv[1:])]),
        "supervised": args.supervised,
        "hasher_args": hasher_args,
        "seed": args.seed,
        "conventions": conventions,
        "results": results,
        "timings": timings,
        "curves": curves,
    }
    if args.output:
        write_json(args.output, report)
        print(f"\nwrote {args.output}")
    if args.plots:
        title = f"{data.name}, {args.ties} ties" + (", supervised" if args.supervised else "")
        for path in save_plots(curves, args.plots, title):
            print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
