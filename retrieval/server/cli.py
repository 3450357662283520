"""``crossmodal serve INDEX``: the HTTP API and web page of :mod:`retrieval.server` on uvicorn.

Registered by :func:`add_parser` on the ``crossmodal`` command line (``retrieval/cli.py``);
``python -m retrieval.server.cli INDEX ...`` runs the same command on its own.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from typing import Any, Sequence

from common.settings_args import by_name, named_setting

TOKEN_ENV = "CROSSMODAL_TOKEN"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def port_number(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, got {port}")
    return port


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("index", metavar="INDEX",
                        help="an index directory (written by `crossmodal index` or Retriever.save_pretrained)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; on another, also set --token)")
    parser.add_argument("--port", type=port_number, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    parser.add_argument("--rerank", nargs="+", metavar="NAME", default=None,
                        help="stage-2 rerankers clients may ask for, the first being the default (none, float, "
                             "cross, blip2, rewrite, vlm); default: the index's own, else float, plus none")
    parser.add_argument("--reranker-arg", action="append", default=[], type=named_setting, metavar="NAME.KEY=VALUE",
                        help="a setting of one of the --rerank choices, repeatable (e.g. vlm.model=DIR, "
                             "cross.fusion_weight=0.5); values are parsed as in `crossmodal search`")
    parser.add_argument("--token", default=None,
                        help=f"require 'Authorization: Bearer TOKEN' on the API (or set ${TOKEN_ENV}, which keeps it "
                             f"out of the process list); the page asks for it once")
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="largest query image accepted (default 10)")
    parser.add_argument("--k-max", type=int, default=100, help="largest k a client may ask for (default 100)")
    parser.add_argument("--workers", type=int, default=2,
                        help="searches run at once in worker threads (default 2); more wait in a FIFO queue")
    parser.add_argument("--no-warm-up", dest="warm_up", action="store_false",
                        help="skip the start-up search that loads each reranker's model")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument("--no-access-log", dest="access_log", action="store_false",
                        help="no log line per request (under load the log costs CPU)")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Adds ``serve`` to an ``argparse`` subparsers object; the parsed args carry ``func``."""
    parser = subparsers.add_parser("serve", help="serve an index: JSON search API and a web page",
                                   description="Serve an index over HTTP: a JSON API (documented at /docs) and a "
                                               "search page at /. Binds 127.0.0.1 unless --host says otherwise.")
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Loads the index, builds the app and serves until interrupted; returns the exit status."""
    import uvicorn

    from retrieval import Retriever

    from .app import create_app

    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    if not is_loopback(args.host) and token is None:
        print(f"warning: serving on {args.host} without --token: anyone who can reach port {args.port} can search "
              f"this index and read its thumbnails", file=sys.stderr)
    try:
        retriever = Retriever.from_pretrained(args.index)
        app = create_app(retriever, rerank=args.rerank, reranker_settings=by_name(args.reranker_arg), token=token,
                         max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), k_max=args.k_max,
                         workers=args.workers, warm_up=args.warm_up, index_name=str(args.index))
    except (OSError, ValueError, KeyError) as e:
        print(f"crossmodal serve: cannot serve {args.index}: {e}", file=sys.stderr)
        return 2
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            access_log=args.access_log, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crossmodal serve", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
