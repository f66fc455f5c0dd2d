"""GET /: the playground, a small web page that drives the public API from a browser.

The page (serving/static, shipped as package data) is plain HTML, CSS and JavaScript: no build
step, nothing loaded from elsewhere, and it calls the same endpoints as any client. The files
are read once, when the server is built. They carry no data, so they are served without the
API key (serving.auth lets these paths through); every call the page makes sends the key the
user types.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources

from fastapi import FastAPI, Response
from fastapi.responses import HTMLResponse

PAGE_PATH = "/"
ASSETS = {"/static/playground.js": "text/javascript", "/static/playground.css": "text/css"}
PUBLIC_PATHS = frozenset({PAGE_PATH, *ASSETS})
"""What a browser fetches before the user can type a key."""

HEADERS = {
    # Scripts, styles and calls from this origin only; with no inline script, injected markup cannot run.
    "Content-Security-Policy": "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",  # a server upgrade shows its own page at once
}


def _static(name: str) -> bytes:
    return (resources.files("serving") / "static" / name).read_bytes()


def add_playground(app: FastAPI) -> None:
    # LitServe internal (route surgery): LitServe registers GET / answering "litserve running", and
    # has no option to leave it out or replace it; the first matching route wins, so drop it.
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) != PAGE_PATH]
    page = _static("index.html")

    @app.get(PAGE_PATH, response_class=HTMLResponse, tags=["playground"])
    def playground() -> HTMLResponse:
        """The playground page: an instruction and inputs in, streamed outputs out."""
        return HTMLResponse(page, headers=HEADERS)

    for path, media_type in ASSETS.items():
        app.add_api_route(path, _asset(_static(path.rsplit("/", 1)[1]), media_type), methods=["GET"], include_in_schema=False)


def _asset(body: bytes, media_type: str) -> Callable[[], Response]:
    def asset() -> Response:
        return Response(body, media_type=media_type, headers=HEADERS)

    return asset
