"""The FastAPI app: routes parse and respond; :class:`.service.SearchService` holds the rules.

Model calls never run on the event loop: searches go to worker threads through a FIFO
``anyio.CapacityLimiter`` (``workers`` at a time, first come first served, so waiting is fair and
the tail latency stays near the median), decoding uploads and making thumbnails to anyio's
default thread pool. Nothing is fetched from elsewhere: the page and the OpenAPI page (``/docs``,
Swagger UI from the ``fastapi-offline`` package) work offline. URLs carry ids, never paths: the only files read are the page's own static
files and the images the index holds, looked up by id.
"""

from __future__ import annotations

import hmac
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Literal, Mapping, Sequence

import anyio
import anyio.to_thread
from fastapi import Depends, FastAPI, File, Query, Request, UploadFile
from fastapi.responses import FileResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import BadRequest, error_response, install_error_handlers
from .schemas import ErrorOut, HealthOut, ItemOut, SearchOut, StatsOut
from .service import MAX_QUERY_CHARS, SearchService
from .uploads import decode_upload

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: Uploads above this many bytes are refused with a 413 before they are read in full.
DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
DEFAULT_WORKERS = 2
TargetParam = Literal["image", "text"] | None

DESCRIPTION = """\
Two-stage cross-modal search over one index: a text query finds images (or captions), an
uploaded image finds captions (or images). Stage 1 ranks by Hamming distance of binary codes,
stage 2 (`rerank`) re-scores the candidates.

Ids are per gallery and overlap between images and texts, so an item is named by its id and its
modality: `GET /items/{id}?modality=image` (the default) or `?modality=text`. Thumbnails exist
for images only: `GET /items/{id}/thumbnail`.

Every error is JSON `{"error": "...", "status": 4xx}` naming what was wrong. With a token set,
send `Authorization: Bearer <token>` (the page at `/` asks for it once).
"""

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in {400: "malformed request body (e.g. broken multipart)", 401: "missing or wrong bearer token",
                       404: "unknown id", 413: "upload too large",
                       415: "not an image", 422: "invalid parameter"}.items()
}


class ErrorCounter:
    """Counts 4xx/5xx responses (and exceptions) for ``/stats``; a plain ASGI middleware, so it adds
    no task or buffering per request."""

    def __init__(self, app: ASGIApp, counter: dict[str, int]) -> None:
        self.app, self.counter = app, counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                self.counter["errors"] += 1
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception:
            self.counter["errors"] += 1
            raise


class UploadSizeLimit:
    """Refuses a request whose Content-Length is over ``limit`` with a JSON 413, before reading it.

    The route's own ``max_body_size`` (Starlette's body limit) still stops bodies sent without a
    length (chunked) once they pass the limit; this answers the common case first because
    Starlette's reply to an announced oversize body is plain text, and every error here is JSON.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.limit:
                response = error_response(413, f"request body of {int(length):,} bytes is too large: uploads "
                                               f"are limited to {self.limit:,} bytes", {"Connection": "close"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def token_dependencies(token: str | None) -> list[Any]:
    """The routes' dependencies: none without a token; else ``Authorization: Bearer <token>`` (constant-time).

    Without a token nothing is declared, so the OpenAPI document asks for no header the server
    would ignore; with one, HTTPBearer declares the scheme and every protected operation requires
    it. ``auto_error=False`` only so that a missing header gets the same JSON 401 as a wrong one.
    """
    if token is None:
        return []
    bearer = HTTPBearer(auto_error=False, description="the token the server was started with (--token)")

    async def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise BadRequest("missing or wrong bearer token: send the header 'Authorization: Bearer <token>'",
                             401, {"WWW-Authenticate": "Bearer"})

    return [Depends(require_token)]


def create_app(retriever: Any, *, rerank: Sequence[str] | None = None,
               reranker_settings: Mapping[str, Mapping[str, Any]] | None = None, token: str | None = None,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, k_max: int = 100,
               workers: int = DEFAULT_WORKERS, warm_up: bool = True, index_name: str | None = None) -> FastAPI:
    """An app over ``retriever`` (a :class:`retrieval.Retriever`). ``rerank``: the stage-2 choices,
    the first being the default (see :func:`.service.rerank_options`); ``reranker_settings``:
    ``{name: {setting: value}}`` for those choices (a checkpoint, a weight); ``token``: require a bearer
    token on the API; ``warm_up``: run one search per reranker at start so models load then."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if k_max < 1:
        raise ValueError(f"k_max must be >= 1, got {k_max}")
    if max_upload_bytes < 1:
        raise ValueError(f"max_upload_bytes must be >= 1, got {max_upload_bytes}")
    if token is not None and not token:
        raise ValueError("token must not be empty (leave it out to serve without one)")
    service = SearchService(retriever, rerank, reranker_settings=reranker_settings, index_name=index_name)
    rerank_choices = {"enum": list(service.rerank_allowed)}  # the document lists what check_rerank accepts

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.search_limiter = anyio.CapacityLimiter(workers)
        if warm_up:
            await anyio.to_thread.run_sync(service.warm_up)
        yield

    # FastAPIOffline: the /docs and /redoc pages with Swagger UI and ReDoc served from a pip package, not a CDN
    app = FastAPIOffline(title="crossmodal retrieval", version="1", description=DESCRIPTION, lifespan=lifespan,
                         static_url="/docs-static")
    app.state.service = service
    app.state.max_upload_bytes = max_upload_bytes
    app.state.counter = {"errors": 0}
    install_error_handlers(app)
    app.add_middleware(UploadSizeLimit, limit=max_upload_bytes)
    app.add_middleware(ErrorCounter, counter=app.state.counter)  # added last: outermost, so it counts 413s too
    auth = token_dependencies(token)

    def prefix(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    async def run_search(request: Request, query: Any, info: dict[str, Any], k: int, rerank: str,
                         target: str | None) -> dict[str, Any]:
        return await anyio.to_thread.run_sync(service.search, query, info, k, rerank, target, prefix(request),
                                              limiter=request.app.state.search_limiter)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/health", response_model=HealthOut, tags=["service"])
    async def health() -> dict[str, Any]:
        """Liveness for a supervisor; needs no token and tells nothing about the items."""
        return {"status": "ok", "items": service.sizes()}

    @app.get("/stats", response_model=StatsOut, dependencies=auth, tags=["service"], responses=ERRORS)
    async def stats() -> dict[str, Any]:
        """Item counts, model, index, rerank choices, search latency so far (p50/p99) and error count."""
        return service.stats(app.state.counter["errors"])

    @app.get("/search", response_model=SearchOut, dependencies=auth, tags=["search"], responses=ERRORS)
    async def search_get(
        request: Request,
        q: str = Query(description="text to search for (text -> images, or captions); at least one character "
                                   "that is not white space", min_length=1, max_length=MAX_QUERY_CHARS,
                       pattern=r"\S"),
        k: int = Query(10, ge=1, le=k_max, description="number of hits"),
        rerank: str | None = Query(None, description="stage 2: one of the server's choices (default: the first)",
                                   json_schema_extra=rerank_choices),
        target: TargetParam = Query(None, description="gallery to search; default: the other modality if it "
                                                      "has items, else the query's own"),
    ) -> dict[str, Any]:
        """Text as the query. An indexed item as the query ("more like this") is
        ``GET /items/{item_id}/similar``: one operation per kind of query, so that the document can
        say which parameters each requires (OpenAPI cannot say "exactly one of q and item")."""
        query = service.text_query(q)
        resolved = service.check_target("text", target)
        rerank_name = service.check_rerank(rerank, "text", resolved)
        return await run_search(request, query, {"type": "text", "text": query}, k, rerank_name, resolved)

    @app.get("/items/{item_id}/similar", response_model=SearchOut, dependencies=auth, tags=["search"],
             responses=ERRORS)
    async def search_similar(
        request: Request,
        item_id: int,
        modality: Literal["image", "text"] = Query("image", description="the modality of the item (ids overlap)"),
        k: int = Query(10, ge=1, le=k_max, description="number of hits"),
        rerank: str | None = Query(None, description="stage 2: one of the server's choices (default: the first)",
                                   json_schema_extra=rerank_choices),
        target: TargetParam = Query(None, description="gallery to search; default: the other modality if it "
                                                      "has items, else the item's own"),
    ) -> dict[str, Any]:
        """An indexed item as the query ("more like this"): its stored vector, nothing re-encoded."""
        query = service.item_query(modality, item_id)
        resolved = service.check_target(modality, target)
        rerank_name = service.check_rerank(rerank, modality, resolved)
        return await run_search(request, query, {"type": "item", "id": item_id, "modality": modality}, k,
                                rerank_name, resolved)

    @app.post("/search", response_model=SearchOut, dependencies=auth, tags=["search"], responses=ERRORS,
              max_body_size=max_upload_bytes)
    async def search_upload(
        request: Request,
        file: UploadFile = File(..., description=f"the query image, 1 to {max_upload_bytes:,} bytes",
                                json_schema_extra={"minLength": 1, "maxLength": max_upload_bytes}),
        k: int = Query(10, ge=1, le=k_max),
        rerank: str | None = Query(None, description="stage 2: one of the server's choices (default: the first)",
                                   json_schema_extra=rerank_choices),
        target: TargetParam = Query(None, description="default: texts if the index has any, else images"),
    ) -> dict[str, Any]:
        """An uploaded image as the query (multipart form field ``file``): image -> captions, or images."""
        resolved = service.check_target("image", target)
        rerank_name = service.check_rerank(rerank, "image", resolved)
        data = await file.read()
        image = await anyio.to_thread.run_sync(decode_upload, data, file.filename)
        info = {"type": "image", "filename": file.filename, "size": list(image.size)}
        return await run_search(request, image, info, k, rerank_name, resolved)

    @app.get("/items/{item_id}", response_model=ItemOut, dependencies=auth, tags=["items"], responses=ERRORS)
    async def get_item(request: Request, item_id: int,
                       modality: Literal["image", "text"] = Query("image", description="ids overlap: say which")
                       ) -> dict[str, Any]:
        """An item's stored content (path or caption) and payload."""
        return service.item_json(modality, item_id, prefix(request))

    @app.get("/items/{item_id}/thumbnail", dependencies=auth, tags=["items"], responses={
        200: {"content": {"image/jpeg": {}}, "description": "a JPEG, longest side 256 px"}, **ERRORS})
    async def thumbnail(item_id: int) -> Response:
        """A small JPEG of image ``item_id``, made on first request and cached."""
        data = await anyio.to_thread.run_sync(service.thumbnail, item_id)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
