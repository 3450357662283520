"""The ``crossmodal`` command line (also ``python -m retrieval``).

    crossmodal index ~/Pictures --out ~/photos.index          # walk, encode, resume, update
    crossmodal search ~/photos.index "a dog on the beach" -k 5
    crossmodal search ~/photos.index --image query.jpg --json
    crossmodal info ~/photos.index

One entry point with subcommands (clip-retrieval's habit); each subcommand lives in one function.
Errors a user can fix (a missing folder, a bad captions file, another indexer running) print one
line and exit with status 2, never a traceback. Libraries stay quiet (no model-loading progress
bars, no warnings of theirs) unless ``-v``; a search prints nothing on stderr when it succeeds.

Start-up is part of every command's cost, so this module and what a search imports load lazily:
a text search imports neither torch nor transformers (the lite encoder's ONNX path), and an
unchanged ``index`` rerun loads no model at all.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

from common.settings_args import by_name, named_setting


def cmd_index(args: argparse.Namespace) -> int:
    from .collection import SKIPPED_REPORT, FolderIndexer

    indexer = FolderIndexer(args.out, encoder=args.encoder, chunk_size=args.chunk_size, batch_size=args.batch_size,
                            progress=False if args.quiet else None, hasher=args.hasher, bits=args.bits,
                            vector_dtype=args.vectors, index=args.index, index_params=dict(args.index_param),
                            **store_settings(args), engine=args.engine, ray_address=args.ray_address)
    report = indexer.run(args.paths, captions=args.captions)
    print(report.summary())
    if report.encoded and report.seconds > report.load_seconds:
        print(f"{report.encoded / (report.seconds - report.load_seconds):.1f} images/s once the model was loaded")
    for path, reason in report.skipped[:10]:
        print(f"  skipped {path}: {reason}")
    if len(report.skipped) > 10:
        print(f"  ... and {len(report.skipped) - 10} more")
    if report.skipped:
        print(f"  the full list: {Path(args.out) / SKIPPED_REPORT}")
    return 0


def store_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``--store``/``--milvus-uri``/``--collection`` as Retriever.create's keywords, checked together."""
    if args.store == "milvus" and not args.milvus_uri:
        raise UsageError("--store milvus needs --milvus-uri (a Milvus Lite file ending in .db, or http://host:19530)")
    if args.store == "local" and (args.milvus_uri or args.collection):
        raise UsageError("--milvus-uri and --collection need --store milvus")
    if args.ray_address and args.engine != "ray":
        raise UsageError("--ray-address needs --engine ray")
    return {"store": args.store, "milvus_uri": args.milvus_uri, "collection": args.collection}


def hit_label(hit: Any) -> str:
    if isinstance(hit.payload, dict):
        for key in ("path", "caption"):
            if key in hit.payload:
                return str(hit.payload[key])
    return str(hit.item) if hit.item is not None else f"{hit.modality} #{hit.id}"


def cmd_search(args: argparse.Namespace) -> int:
    from .retriever import Retriever

    if (args.query is None) == (args.image is None):
        raise UsageError("give either a text query or --image FILE, not both")
    if args.image is not None and not Path(args.image).is_file():
        raise UsageError(f"--image {args.image}: no such file")
    retriever = Retriever.open(args.index)
    query = args.query if args.query is not None else Path(args.image)
    timings: dict[str, float] = {}
    rerank: Any = False if args.rerank == "none" else args.rerank
    settings = by_name(args.reranker_arg)
    if set(settings) - {args.rerank}:
        raise UsageError(f"--reranker-arg names {', '.join(sorted(set(settings) - {args.rerank}))}, "
                         f"but --rerank is {args.rerank}")
    if settings:
        from rerank import create_reranker

        rerank = create_reranker(args.rerank, **settings[args.rerank])
    hits = retriever.search(query, k=args.k, rerank=rerank, target=args.target, timings=timings)
    if args.json:
        print(json.dumps({"query": args.query if args.query is not None else {"image": str(args.image)},
                          "timings_ms": timings,
                          "hits": [{"rank": r, "id": h.id, "modality": h.modality, "score": h.score,
                                    "hamming": h.hamming, "item": h.item, "payload": h.payload}
                                   for r, h in enumerate(hits, 1)]}, indent=2))
        return 0
    if not hits:
        print("no results: the index holds nothing to search for this query")
    for rank, hit in enumerate(hits, 1):
        print(f"{rank:>3}  {hit.score:8.4f}  hamming {hit.hamming:>3}  {hit_label(hit)}")
    return 0


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def cmd_info(args: argparse.Namespace) -> int:
    from .retriever import CONFIG_NAME
    from .stores import open_store

    directory = Path(args.index)
    config_file = directory / CONFIG_NAME
    if not config_file.is_file():
        raise UsageError(f"{directory} holds no index ({CONFIG_NAME} is missing)")
    config = json.loads(config_file.read_text())
    if config.get("format_version") != 2:
        raise UsageError(f"{directory} is a format-{config.get('format_version')} retriever; "
                         f"open it with Retriever.from_pretrained and save it again to upgrade")
    with open_store(directory) as store:
        counts = {m: store.count(m) for m in ("image", "text")}
        tables = {r[0] for r in store.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        files = skipped = 0
        if "files" in tables:
            files = store.db.execute("SELECT COUNT(*) FROM files").fetchone()[0]
            skipped = store.db.execute("SELECT COUNT(*) FROM files WHERE error IS NOT NULL").fetchone()[0]
        disk = store.disk_bytes()
        where = store.describe()
    info = {
        "index": str(directory), "images": counts["image"], "texts": counts["text"], "files": files,
        "skipped_files": skipped, "encoder": config["encoder"]["id"], "dim": config["encoder"]["dim"],
        "hasher": config["hasher"]["method"], "bits": config["hasher"]["bits"], "index_kind": config["index"]["kind"],
        "vectors": config.get("vector_dtype"), "reranker": (config.get("reranker") or {}).get("method"),
        "disk_bytes": disk, **{k: v for k, v in where.items() if k != "backend"}, "store": where["backend"],
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"index     {info['index']}")
    print(f"items     {info['images']} images, {info['texts']} captions"
          + (f" (from {files} files, {skipped} skipped)" if files else ""))
    print(f"encoder   {info['encoder']} ({info['dim']}-d)")
    print(f"hasher    {info['hasher']}, {info['bits']} bits; index {info['index_kind']}; vectors {info['vectors']}")
    print(f"on disk   {human_bytes(disk)}")
    if where["backend"] == "milvus":
        print(f"items in  Milvus at {where['milvus_uri']}, collection {where['collection']}")
    return 0


#: Our own packages: their warnings (e.g. a hasher fitted on too few images) are meant for the user.
OWN_PACKAGES = ("retrieval", "hashing", "rerank", "common", "eval")


def quiet_libraries() -> None:
    """Keeps the libraries' progress bars and warnings off stderr (``-v`` lets them through).

    Environment variables, because the libraries read them at import, which comes later: Hugging
    Face's progress bars (transformers' "Loading weights" uses them) and transformers' logging.
    """
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore")
    for package in OWN_PACKAGES:
        warnings.filterwarnings("default", module=rf"{package}(\.|$)")


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="let libraries print their progress bars and warnings on stderr")


class UsageError(Exception):
    """A mistake in the command line or its inputs: one line, exit status 2."""


def code_bits(text: str) -> int:
    """``--bits``: what :func:`hashing.base.check_bits` accepts, as an argparse error otherwise."""
    from hashing.base import check_bits

    try:
        bits = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    try:
        return check_bits(bits)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    from common.settings_args import key_setting

    from .collection import DEFAULT_CHUNK_SIZE
    from .store import VECTOR_DTYPES

    parser = argparse.ArgumentParser(prog="crossmodal", description="Search your images with text and with images.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("index", help="index a folder of images (resumable, incremental)",
                       description="Walks PATHs recursively and indexes every image into INDEX. Rerun the same "
                                   "command to resume after an interruption or to pick up new, changed and "
                                   "deleted files.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image folders or files")
    p.add_argument("--out", "-o", required=True, metavar="INDEX", help="the index folder (created if missing)")
    p.add_argument("--encoder", default=None,
                   help="encoder id for a new index (default: lite, the embedded offline model); an existing "
                        "index keeps its own")
    p.add_argument("--captions", default=None, metavar="FILE",
                   help="CSV or JSONL of path, caption: also index the captions (text side)")
    p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE,
                   help="images per committed chunk (at most one chunk is redone after a kill)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--hasher", default="itq", help="hash method for a new index")
    p.add_argument("--bits", type=code_bits, default=64,
                   help="code length for a new index: a positive multiple of 8 (default 64)")
    p.add_argument("--vectors", default="fp16", choices=[d for d in VECTOR_DTYPES],
                   help="how float vectors for rescoring are stored (none: codes only)")
    p.add_argument("--index", default="flat", choices=["flat", "ivf", "hnsw", "buckets"],
                   help="binary index for a new index: flat (exact Hamming scan, default; 7 ms at 10M items), "
                        "ivf (cells trained once the index holds 39 codes per list; for 10M items and more), "
                        "hnsw or buckets")
    p.add_argument("--index-param", type=key_setting, action="append", default=[], metavar="KEY=VALUE",
                   help="a setting of --index, e.g. nlist=4096 or nprobe=64 (repeatable)")
    p.add_argument("--store", default="local", choices=["local", "milvus"],
                   help="where a new index keeps its items: local (this folder, default) or milvus")
    p.add_argument("--milvus-uri", default=None, metavar="URI",
                   help="with --store milvus: a Milvus Lite file (PATH.db) or a server, http://host:19530")
    p.add_argument("--collection", default=None, metavar="NAME",
                   help="with --store milvus: the collection name (default crossmodal; NAME_image, NAME_text)")
    p.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="who embeds the images: local (this process, default) or ray (an actor pool of Ray "
                        "Data, one shard per chunk; needs the [ray] extra)")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="with --engine ray: a running Ray cluster (e.g. ray://head:10001); without it a local "
                        "Ray starts and stops with the run")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    add_verbose(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="search an index by text or by image")
    p.add_argument("index", metavar="INDEX")
    p.add_argument("query", nargs="?", default=None, help="a text query")
    p.add_argument("--image", default=None, metavar="FILE", help="search with this image instead")
    p.add_argument("-k", type=int, default=10, help="results to show")
    p.add_argument("--rerank", default="float",
                   help="none, float (exact cosine of the stored vectors), cross, blip2, rewrite, vlm")
    p.add_argument("--reranker-arg", action="append", default=[], type=named_setting, metavar="NAME.KEY=VALUE",
                   help="a setting of the --rerank reranker, e.g. vlm.model=DIR or vlm.vlm_k=16 (JSON value or "
                        "string; repeatable)")
    p.add_argument("--target", choices=["image", "text"], default=None,
                   help="what to return (default: images for text; captions for images if the index has any)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_verbose(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("info", help="what an index holds")
    p.add_argument("index", metavar="INDEX")
    p.add_argument("--json", action="store_true")
    add_verbose(p)
    p.set_defaults(func=cmd_info)

    from .server.cli import add_parser as add_serve_parser  # `serve`: retrieval/server/cli.py
    add_serve_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    if not getattr(args, "verbose", True):
        quiet_libraries()
    from .store import StoreError, StoreLockedError

    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to continue where it stopped", file=sys.stderr)
        return 130
    except (UsageError, StoreError, StoreLockedError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"crossmodal {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
