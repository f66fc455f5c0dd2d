"""Optional API key, checked on every request but /health.

The key is LitServe's `LIT_SERVER_API_KEY` environment variable. Clients send it as
`X-API-Key: KEY` (LitServe's header) or `Authorization: Bearer KEY`, which is what the
`openai` client and Prometheus' `bearer_token` send. A middleware rather than per-route
dependencies, so that no route (docs, metrics, routes added later) can be left open by accident.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from serving.errors import error_response
from serving.playground import PUBLIC_PATHS

OPEN_PATHS = frozenset({"/health", *PUBLIC_PATHS})
"""Load balancers probe /health without credentials; the playground page holds no data and asks for the key."""


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    if b"x-api-key" in headers:
        return headers[b"x-api-key"].decode("latin-1")
    scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    if scheme.lower() == "bearer" and token:
        return token.strip()
    return None


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.api_key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        key = presented_key(dict(scope["headers"]))
        if key is None or not hmac.compare_digest(key.encode(), self.api_key):
            message = "missing or invalid API key: send 'X-API-Key: KEY' or 'Authorization: Bearer KEY'"
            response = error_response(401, message, headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
