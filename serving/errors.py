"""One error format for every failure: `{"error": {"message", "type", "code"}}`.

It is OpenAI's shape, so the `openai` client surfaces the message, and plain clients read
`error.message`. Validation errors are flattened to one readable line per problem instead of
FastAPI's nested `detail` lists.
"""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

_TYPES = {401: "authentication_error", 404: "not_found_error", 413: "request_too_large", 504: "timeout"}
MAX_ECHO_CHARS = 64
"""The most of a client's own text (an id, a field name) an error message repeats."""
MAX_MESSAGE_CHARS = 2048
log = logging.getLogger("tagi.serving")


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: int


class ErrorResponse(BaseModel):
    """The body of every 4xx and 5xx (documented on every route of the OpenAPI document)."""

    error: ErrorDetail


def echo(text: str) -> str:
    """A client's text as an error message quotes it: repr-quoted, at most MAX_ECHO_CHARS of it,
    lone surrogates escaped, so a 1 MB id cannot make a 1 MB error and no text can break the JSON."""
    clipped = text if len(text) <= MAX_ECHO_CHARS else f"{text[:MAX_ECHO_CHARS]}..."
    return repr(clipped).encode("utf-8", "backslashreplace").decode("utf-8")


class ServingError(Exception):
    """A request the server understood but cannot serve; `status` is its HTTP code."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class UnknownAdapter(ServingError):
    status = 404

    def __init__(self, adapter_id: str) -> None:
        super().__init__(
            f"unknown adapter id {echo(adapter_id)} (never created, deleted, evicted as least recently used, "
            "or made with another checkpoint)"
        )


def report_bug(err: BaseException) -> str:
    """The message of a 500: an error id, logged with the traceback. Never the exception's text,
    which may hold internals (paths, values, library messages)."""
    error_id = uuid.uuid4().hex[:16]
    log.error("internal error, error id %s", error_id, exc_info=err)
    return f"internal error (error id {error_id}, in the server log)"


def error_body(status: int, message: str) -> dict:
    """Bounded and always encodable, whatever text a message was built from."""
    if len(message) > MAX_MESSAGE_CHARS:
        message = f"{message[:MAX_MESSAGE_CHARS]}..."
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message.encode("utf-8", "backslashreplace").decode("utf-8"), "type": kind, "code": status}}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message), status_code=status, headers=headers)


def describe_validation_error(err: RequestValidationError) -> tuple[int, str]:
    """(status, message): 400 for a body that is not JSON, 422 for JSON of the wrong shape."""
    problems = []
    for item in err.errors():
        if item.get("type") == "json_invalid":
            return 400, f"invalid JSON body: {item.get('ctx', {}).get('error', item.get('msg'))}"
        where = ".".join(str(part) for part in item.get("loc", ()) if part != "body") or "body"
        if len(where) > MAX_ECHO_CHARS:  # a client's own (unknown) field name
            where = echo(where)
        message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        if where == "body" and item.get("type") in ("model_attributes_type", "dict_type"):
            message = "expected a JSON object (send it with Content-Type: application/json)"
        if item.get("type") == "string_unicode":  # pydantic's own check (a constrained str), same meaning
            message = "must be valid Unicode, not a lone surrogate"
        problems.append(f"{where}: {message}")
    return 422, "; ".join(problems) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:  # Starlette names the methods of the first route of the path only
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        return error_response(exc.status_code, str(exc.detail), headers=headers)

    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(*describe_validation_error(exc))

    async def on_serving_error(request: Request, exc: ServingError) -> JSONResponse:
        return error_response(exc.status, str(exc))

    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        """A route's bug (the registry unreadable, say): JSON like every error, not Starlette's text."""
        return error_response(500, report_bug(exc))

    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_bug)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(ServingError, on_serving_error)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route of this path answers (FastAPI makes one route per method)."""
    methods = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)
