"""Every failure as a JSON body ``{"error": message, "status": code}``, never an HTML page or a traceback.

A client (the page, a script) can always show ``error`` to a person: it names the parameter or
file that was wrong and what was expected. Validation errors of FastAPI (wrong types, k out of
range, a missing upload) are rewritten into the same shape, with the per-field list kept under
``fields``; anything unexpected is a 500 whose body says only that it was logged on the server
(exception messages can hold file paths).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("retrieval.server")


class BadRequest(Exception):
    """A request the server understood but cannot answer; ``status`` is the 4xx to send."""

    def __init__(self, message: str, status: int = 422, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.headers = message, status, headers


def error_response(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, "status": status, **extra}, status_code=status, headers=headers)


def field_name(loc: tuple[Any, ...]) -> str:
    """("query", "k") -> "query parameter 'k'"; ("body", "file") -> "form field 'file'"."""
    where = {"query": "query parameter", "path": "path parameter", "body": "form field", "header": "header"}
    parts = [str(p) for p in loc[1:]] if loc and loc[0] in where else [str(p) for p in loc]
    name = ".".join(parts) or "request body"
    return f"{where[loc[0]]} {name!r}" if loc and loc[0] in where and parts else name


def shown_input(value: Any) -> str:
    if isinstance(value, (str, int, float)) and len(repr(value)) <= 80:
        return f" (got {value!r})"
    return ""


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    fields = []
    for error in exc.errors():
        loc = tuple(error.get("loc", ()))
        fields.append({"field": field_name(loc), "message": f"{error.get('msg', 'invalid')}{shown_input(error.get('input'))}"})
    message = "; ".join(f"{f['field']}: {f['message']}" for f in fields) or "invalid request"
    return error_response(422, message, fields=fields)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no such endpoint: {request.method} {request.url.path} (the API is listed at /docs)"
    elif exc.status_code == 405:
        allowed = allowed_methods(request)
        message = f"method {request.method} is not allowed on {request.url.path}; allowed: {', '.join(allowed)}"
        return error_response(405, message, headers={**(getattr(exc, "headers", None) or {}), "Allow": ", ".join(allowed)})
    elif exc.status_code == 413:
        limit = getattr(request.app.state, "max_upload_bytes", None)
        message = f"request body too large: uploads are limited to {limit:,} bytes" if limit else "request body too large"
    return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path: Starlette's own 405 names only the first route's,
    and a path with GET and POST on two routes (``/search``) must say both (RFC 9110 §15.5.6)."""
    from starlette.routing import Match

    methods: set[str] = set()
    for route in request.app.router.routes:  # a path match with another method is Match.PARTIAL
        if getattr(route, "methods", None) and route.matches(request.scope)[0] != Match.NONE:
            methods |= set(route.methods)
    return sorted(methods)


async def bad_request(request: Request, exc: BadRequest) -> JSONResponse:
    return error_response(exc.status, exc.message, headers=exc.headers)


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, f"internal server error ({type(exc).__name__}); the details are in the server log")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(BadRequest, bad_request)
    app.add_exception_handler(Exception, unexpected_error)
