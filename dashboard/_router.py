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

import orjson
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


def content_security_policy(proxy_origin: str | None = None) -> str:
    """`connect-src`: the API that served the page and, when configured, the proxy whose
    approvals and queue the page drains — nowhere else."""
    connect = "'self'" + (f" {proxy_origin}" if proxy_origin else "")
    # Trusted Types with no policy: should an HTML sink (innerHTML, insertAdjacentHTML…) ever
    # slip into the script, the browser refuses to parse a string there (a TypeError), so
    # what an agent wrote can still not become markup.
    return (
        f"default-src 'none'; script-src 'self'; style-src 'self'; connect-src {connect}; img-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
        "require-trusted-types-for 'script'; trusted-types 'none'"
    )


_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    # The files change with the release; a stale script beside a newer API is worse than a reload.
    "Cache-Control": "no-store",
}


def dashboard_router(proxy_url: str | None = None) -> APIRouter:
    """The routes of `/ui`. `proxy_url`: the proxy's origin (a `web_origin`), whose
    `/v1/approvals` and `/v1/queue` the page reads and decides on; None hides them."""
    headers = {**_HEADERS, "Content-Security-Policy": content_security_policy(proxy_url)}
    # What the page learns of its deployment: only where the proxy is.
    config = orjson.dumps({"proxy_url": proxy_url})
    router = APIRouter(include_in_schema=False)

    def asset(name: str) -> Response:
        if name == "config.json":
            return Response(content=config, media_type="application/json", headers=headers)
        body = _ASSETS.get(name)
        if body is None:
            raise HTTPException(status_code=404, detail="not a file of the dashboard")
        return Response(content=body, media_type=_TYPES[name], headers=headers)

    @router.get("/ui")
    @router.get("/ui/")
    async def index() -> Response:
        return asset("index.html")

    @router.get("/ui/{name}")
    async def named(name: str) -> Response:
        return asset(name)

    return router
