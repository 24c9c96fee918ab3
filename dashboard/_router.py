"""Serving the dashboard's static files, and nothing else, under `/ui`.

The assets are a fixed table read once at import: a name in the path is only ever a key
of that table, so no request can name another file (`..`, encoded slashes, a NUL, a
symlink), and no directory is ever listed. The page shows data an agent wrote (tool
names, arguments, reasons), so it is served with a Content-Security-Policy that allows
its own script and stylesheet only — no inline script, no eval, no other origin — as a
second wall behind the script's rule of building every element with `textContent`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Response

_STATIC = Path(__file__).resolve().parent / "static"
#: Every file the dashboard serves, with its media type.
_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    # Named by the page, so the browser asks for no /favicon.ico the graph would 404.
    "favicon.svg": "image/svg+xml",
}
_ASSETS = {name: (_STATIC / name).read_bytes() for name in _TYPES}
#: `connect-src 'self'`: the page talks to the API that served it, nowhere else.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    # The files change with the release; a stale script beside a newer API is worse than a reload.
    "Cache-Control": "no-store",
}

ui_router = APIRouter(include_in_schema=False)


def _asset(name: str) -> Response:
    body = _ASSETS.get(name)
    if body is None:
        raise HTTPException(status_code=404, detail="not a file of the dashboard")
    return Response(content=body, media_type=_TYPES[name], headers=_HEADERS)


@ui_router.get("/ui")
@ui_router.get("/ui/")
async def index() -> Response:
    return _asset("index.html")


@ui_router.get("/ui/{name}")
async def asset(name: str) -> Response:
    return _asset(name)
