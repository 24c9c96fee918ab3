"""Serving the dashboard's static files, and nothing else, under `/ui`.

The files are a fixed table read once at import (`bastion._static`: a name in the path
is only ever a key of it, so no request names another file). The page shows data an
agent wrote (tool names, arguments, reasons), so it is served with a Content-Security-Policy that allows
its own script and stylesheet only — no inline script, no eval, no other origin — as a
second wall behind the script's rule of building every element with `textContent`.
"""

from __future__ import annotations

from pathlib import Path

import orjson
from fastapi import APIRouter

from bastion._static import StaticFile, static_router

_STATIC = Path(__file__).resolve().parent / "static"
#: Every file the dashboard serves, with its media type.
_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    # Named by the page, so the browser asks for no /favicon.ico the graph would 404.
    "favicon.svg": "image/svg+xml",
}
_FILES: dict[str, StaticFile] = {name: (kind, (_STATIC / name).read_bytes()) for name, kind in _TYPES.items()}


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
    config = ("application/json", orjson.dumps({"proxy_url": proxy_url}))
    return static_router(
        "/ui",
        {**_FILES, "config.json": config},
        index=_FILES["index.html"],
        headers=headers,
        index_paths=("/ui", "/ui/"),
        what="the dashboard",
    )
