"""Where one command-line text search spends its time, step by step, in one fresh process.

    python -m eval.search_phases INDEX ["a dog runs on the beach"]

The imports come in the order the command line makes them, then the open, the tokenizer, the text
session (with the cache-key lookup), the first query and a whole search; each step's seconds go to
stderr. Run it in a fresh interpreter: anything imported before it hides that import's cost.
"""

from __future__ import annotations

import sys
import time

START = time.perf_counter()
_last = [START]


def mark(name: str) -> None:
    now = time.perf_counter()
    print(f"{name:50s} {now - _last[0]:.3f} s  (cumulative {now - START:.3f} s)", file=sys.stderr)
    _last[0] = now


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        raise SystemExit(__doc__)
    query = args[1] if len(args) > 1 else "a dog runs on the beach"
    import numpy  # noqa: F401

    mark("import numpy")
    import faiss  # noqa: F401

    mark("import faiss")
    import onnxruntime  # noqa: F401

    mark("import onnxruntime")
    import tokenizers  # noqa: F401

    mark("import tokenizers")
    from retrieval.cli import build_parser

    mark("import retrieval.cli")
    build_parser()
    mark("build_parser")
    from retrieval.retriever import Retriever

    retriever = Retriever.open(args[0])
    mark("import retriever, Retriever.open")
    encoder = retriever.encoder
    encoder.tokenizer  # noqa: B018
    mark("tokenizer")
    encoder.onnx.session("text")
    mark("text session (with the cache-key lookup)")
    encoder.encode_texts([query])
    mark("encode the query")
    retriever.search(query, k=5)
    mark("search (encode again, stage 1, float rescoring)")
    print(f"{len(sys.modules)} modules; torch imported: {'torch' in sys.modules}", file=sys.stderr)


if __name__ == "__main__":
    main()
