"""``crossmodal serve``: an HTTP search API and a web page over one index.

    from retrieval.server import create_app
    app = create_app(Retriever.from_pretrained("my-index"), rerank=["float", "cross"])
    # uvicorn.run(app, host="127.0.0.1", port=8000), or: crossmodal serve my-index

Modules, one job each: :mod:`.service` (the rules, without HTTP), :mod:`.app` (routes),
:mod:`.errors` (every failure as a JSON body), :mod:`.uploads` (size and pixel caps, decoding),
:mod:`.thumbnails`, :mod:`.stats`, :mod:`.schemas` (what the OpenAPI page documents),
:mod:`.cli` (the ``serve`` subcommand), ``static/`` (the page: plain HTML, CSS and JS, no CDN),
:mod:`.live` (a real uvicorn in a thread, for tests and tools), :mod:`.screenshot` (the page in
headless chromium).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module 'retrieval.server' has no attribute {name!r}")
