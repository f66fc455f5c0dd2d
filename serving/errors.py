"""One error format for every failure: `{"error": {"message", "type", "code"}}`.

It is OpenAI's shape, so the `openai` client surfaces the message, and plain clients read
`error.message`. Validation errors are flattened to one readable line per problem instead of
FastAPI's nested `detail` lists.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

_TYPES = {401: "authentication_error", 404: "not_found_error", 413: "request_too_large", 504: "timeout"}


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
        super().__init__(f"unknown adapter id {adapter_id!r} (never created, deleted, or made with another checkpoint)")


def error_body(status: int, message: str) -> dict:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "code": status}}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message), status_code=status, headers=headers)


def describe_validation_error(err: RequestValidationError) -> tuple[int, str]:
    """(status, message): 400 for a body that is not JSON, 422 for JSON of the wrong shape."""
    problems = []
    for item in err.errors():
        if item.get("type") == "json_invalid":
            return 400, f"invalid JSON body: {item.get('ctx', {}).get('error', item.get('msg'))}"
        where = ".".join(str(part) for part in item.get("loc", ()) if part != "body") or "body"
        message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        if where == "body" and item.get("type") in ("model_attributes_type", "dict_type"):
            message = "expected a JSON object (send it with Content-Type: application/json)"
        problems.append(f"{where}: {message}")
    return 422, "; ".join(problems) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(*describe_validation_error(exc))

    async def on_serving_error(request: Request, exc: ServingError) -> JSONResponse:
        return error_response(exc.status, str(exc))

    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(ServingError, on_serving_error)
