"""The OpenAPI document (/openapi.json, /docs): FastAPI's, completed with what it cannot see.

FastAPI derives bodies, parameters and their constraints from the schemas; it does not know
the errors a route answers with (each route names its own with `errors(...)`), that every
route but the open ones needs the API key when the server has one (serving.auth), or what
LitServe's own /health and /info send. A client generated from this document, or a fuzzer
checking the server against it (tests/serving/test_openapi.py), sees every status the server
can answer, with the one error body of serving.errors.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.auth import OPEN_PATHS
from serving.errors import ErrorResponse

_MEANINGS = {
    400: "the body is not JSON",
    401: "missing or wrong API key",
    404: "unknown adapter id or model",
    413: "body over 4 MB, or a text over the checkpoint's token limits",
    422: "a field is missing, of the wrong type or out of range",
    500: "a bug; only this request fails",
    503: "no inference worker can take the request now",
    504: "not answered within the server's timeout",
}
BODY_ERRORS = (400, 413, 422)
"""What any route with a JSON body can answer."""
JOB_ERRORS = (500, 503, 504)
"""What any route answered by an inference worker can answer."""
_TEXT = {"text/plain": {"schema": {"type": "string"}}}
_SECURITY_SCHEMES = {
    "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "Bearer": {"type": "http", "scheme": "bearer", "description": "the key as a bearer token (the openai client)"},
}
"""serving.auth: either one."""


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: these statuses, each with the error body."""
    return {code: {"model": ErrorResponse, "description": _MEANINGS[code]} for code in sorted(codes)}


class PlainTextByDefault:
    """LitServe's /health answers a bare Response("ok") with no Content-Type; the document says
    text/plain, and so does the response once this middleware names its type."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def typed(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] not in (204, 304):
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"content-type" for name, _ in headers):
                    message = {**message, "headers": [*headers, (b"content-type", b"text/plain; charset=utf-8")]}
            await send(message)

        await self.app(scope, receive, typed if scope["type"] == "http" else send)


def install_openapi(app: FastAPI, keyed: bool) -> None:
    """Serve the completed document (built once, on the first request for it), and make the
    responses FastAPI does not type match it. `keyed`: the server requires an API key."""
    app.add_middleware(PlainTextByDefault)

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            _complete(schema, keyed)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = document


def _complete(schema: dict[str, Any], keyed: bool) -> None:
    paths = schema.get("paths", {})
    for path, operations in paths.items():
        for operation in operations.values():
            responses = operation["responses"]
            if "422" in responses:  # FastAPI's default body is its `detail` list; ours is the error body
                responses["422"] = _error_response(422)
            if keyed and path not in OPEN_PATHS:
                responses["401"] = _error_response(401)
                operation["security"] = [{name: []} for name in _SECURITY_SCHEMES]
    # LitServe's routes send plain Responses that FastAPI documents as JSON of any shape.
    if "/health" in paths:
        paths["/health"]["get"]["responses"] = {
            "200": {"description": "every worker is ready: 'ok'", "content": _TEXT},
            "503": {"description": "not ready (starting, or a worker is down): 'not ready'", "content": _TEXT},
        }
    if "/info" in paths:
        paths["/info"]["get"]["responses"]["200"] = {
            "description": "checkpoint, limits, batching and cache settings",
            "content": {"application/json": {"schema": {"type": "object", "required": ["model", "server"]}}},
        }
    components = schema.setdefault("components", {})
    if keyed:
        components["securitySchemes"] = _SECURITY_SCHEMES
    models = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        models.pop(unused, None)
    models.update(_error_schemas())


def _error_response(code: int) -> dict[str, Any]:
    return {
        "description": _MEANINGS[code],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }


def _error_schemas() -> dict[str, Any]:
    """ErrorResponse and what it refers to, in the components (FastAPI puts them there only
    when some route's `errors(...)` named a model)."""
    full = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    nested = full.pop("$defs", {})
    return {"ErrorResponse": full, **nested}
