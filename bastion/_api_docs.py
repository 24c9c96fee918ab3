"""`/docs`: Swagger UI (5.x: FastAPI writes OpenAPI 3.1) over a service's `/openapi.json`,
served from the files the `fastapi-swagger` package ships (only its files are used)
instead of FastAPI's default, which has the operator's browser load Swagger UI's
script from a CDN (jsdelivr, major version only, no integrity check).

Why: nothing is fetched from outside at run time — an air-gapped deployment's `/docs` was
blank — and the dashboard (`/ui`, on the graph's origin) must not share that origin with a
page running a third party's script (an attacker's probe of the dashboard). The page runs
only its own files, under a Content-Security-Policy that allows nothing else: no inline
script (its start-up is `init.js`), no other origin. `/redoc` (ReDoc, CDN-only) is not
served.

    add_api_docs(app)    mount /docs, /docs/{asset} on a FastAPI app built with docs_url=None
"""

from __future__ import annotations

import functools
from importlib.resources import files

from fastapi import FastAPI

from ._static import StaticFile, static_router

_BUNDLE = files("fastapi_swagger") / "resources"
_INIT = b"""window.addEventListener("load", () => {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
    layout: "BaseLayout",
  });
});
"""
_PAGE = b"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>%s API</title>
<link rel="icon" href="/docs/favicon-32x32.png" type="image/png">
<link rel="stylesheet" href="/docs/swagger-ui.css">
<script src="/docs/swagger-ui-bundle.js" defer></script>
<script src="/docs/init.js" defer></script>
</head>
<body><div id="swagger-ui"></div></body>
</html>
"""
#: Swagger UI sets style attributes and shows its logo and icons as data: images.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


@functools.cache
def _files() -> dict[str, StaticFile]:
    """Swagger UI's files, read once per process (≈ 1.9 MB; every app serves the same)."""
    return {
        "swagger-ui-bundle.js": ("text/javascript; charset=utf-8", (_BUNDLE / "swagger-ui-bundle.js").read_bytes()),
        "swagger-ui.css": ("text/css; charset=utf-8", (_BUNDLE / "swagger-ui.css").read_bytes()),
        "favicon-32x32.png": ("image/png", (_BUNDLE / "favicon-32x32.png").read_bytes()),
        "init.js": ("text/javascript; charset=utf-8", _INIT),
    }


def add_api_docs(app: FastAPI) -> None:
    """Serve Swagger UI for `app` at /docs from local files (see the module docstring)."""
    page = ("text/html; charset=utf-8", _PAGE % app.title.encode("ascii", "replace"))
    app.include_router(
        static_router("/docs", _files(), index=page, headers=_HEADERS, index_paths=("/docs",), what="the API docs")
    )
