"""The edge every service's REST app shares: one error body and one Host check.

`rest_app(...)` builds the FastAPI app of the graph and policy services. Every error it
answers has one shape, whichever layer raised it:

    {"error": {"code": "<bastion code>", "message": "<what went wrong and what to do>"}}

    BastionError subclass       its `code` and `http_status` (401 adds `WWW-Authenticate: Bearer`)
    unknown route, workflow…    404 `bastion.not_found`
    wrong HTTP method           405 `bastion.method_not_allowed`
    bad query/path/body value   422 `bastion.invalid_request` (FastAPI's validation)
    Host/Origin not allowed     403 `bastion.host_not_allowed` (bastion._hosts)
    a bug                       500 `bastion.internal` (the log has the traceback)

The Host check runs before routing, so a refused request reaches neither auth nor a
handler. `/healthz`, `/readyz` and `/metrics` skip it, as they do at the proxy: kubelet
probes and Prometheus scrapes name the pod's IP as Host, and those routes carry no
workflow data.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__
from ._api_docs import add_api_docs
from ._errors import BastionError
from ._hosts import HostCheck

log = logging.getLogger("bastion.rest")

#: Answered whatever the Host and without a token: liveness, readiness, metrics.
OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

_HTTP_CODES = {404: "bastion.not_found", 405: "bastion.method_not_allowed"}


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """Every REST error of the graph and policy services (see docs/errors.md)."""

    error: ErrorDetail


def error_doc(description: str) -> dict[str, Any]:
    """An OpenAPI `responses` entry answered with the error body."""
    return {"model": ErrorBody, "description": description}


#: The OpenAPI `responses` of a route behind bastion._auth.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: error_doc("No bearer token, or one that is malformed, expired or not signed by a trusted key."),
    403: error_doc("The token lacks the role this route needs, or the Host/Origin is not allowed."),
}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(code=code, message=message))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def rest_app(*, title: str, hosts: HostCheck, description: str = "") -> FastAPI:
    """A FastAPI app answering errors in the shared body and refusing foreign Hosts."""
    # No redirect to the path with or without its slash: Starlette builds that Location from
    # the Host header, which behind a gateway allowing any Host ('*') is the caller's choice.
    app = FastAPI(
        title=title,
        version=__version__,
        description=description,
        redirect_slashes=False,
        # Swagger UI from the package, not a CDN (bastion._api_docs); no ReDoc (CDN-only).
        docs_url=None,
        redoc_url=None,
    )
    add_api_docs(app)
    app.add_exception_handler(BastionError, _bastion_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)
    app.add_middleware(HostGuard, hosts=hosts)
    app.add_middleware(HeadAsGet)
    return app


class HeadAsGet:
    """ASGI middleware: HEAD is answered as GET is, without the body (RFC 9110 §9.3.2).

    FastAPI routes a GET route for GET alone, so every HEAD was 405, the probes and uptime
    checks that use it included. The headers (Content-Length among them) are GET's; the
    body is dropped here as well as by the HTTP server, and the handler runs with its
    checks as for GET (a HEAD without a token is 401, like a GET)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self._app(scope, receive, send)
            return

        async def headless(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self._app({**scope, "method": "GET"}, receive, headless)


class HostGuard:
    """ASGI middleware: answer 403 `bastion.host_not_allowed` when HostCheck refuses the request."""

    def __init__(self, app: ASGIApp, hosts: HostCheck) -> None:
        self._app = app
        self._hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope["path"] not in OPS_PATHS:
            refusal = self._hosts.refusal(scope["headers"])
            if refusal is not None:
                log.warning("refused a request: %s", refusal, extra={"fields": {"path": scope["path"]}})
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                await error_response(403, "bastion.host_not_allowed", refusal)(scope, receive, send)
                return
        await self._app(scope, receive, send)


async def _bastion_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, BastionError):  # registered for BastionError only
        raise exc
    headers = {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else None
    return error_response(exc.http_status, exc.code, str(exc), headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, HTTPException):  # registered for HTTPException only
        raise exc
    code = _HTTP_CODES.get(exc.status_code)
    if code is None:
        code = "bastion.internal" if exc.status_code >= 500 else "bastion.invalid_request"
    return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))


#: Problems a 422 names at most, and characters of where each is: a body of 180,000
#: unknown keys answered 7 MB of "kN: Extra inputs are not permitted" (an attacker's probe).
MAX_PROBLEMS = 10
_MAX_WHERE = 200


def describe_problems(errors: Sequence[Any]) -> str:
    """One line for a validation's errors (pydantic's `errors()`): the first MAX_PROBLEMS,
    then how many more."""
    parts = []
    for error in errors[:MAX_PROBLEMS]:
        where = ".".join(str(part) for part in error.get("loc", ())) or "body"
        if len(where) > _MAX_WHERE:
            where = where[:_MAX_WHERE] + "…"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    if len(errors) > MAX_PROBLEMS:
        parts.append(f"and {len(errors) - MAX_PROBLEMS} more")
    return "; ".join(parts)


async def _validation_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, RequestValidationError):  # registered for RequestValidationError only
        raise exc
    return error_response(422, "bastion.invalid_request", describe_problems(exc.errors()) or "invalid request")


async def _internal_error(request: Request, exc: Exception) -> Response:
    # Starlette re-raises after sending this, so the server logs the traceback; the client learns no more.
    return error_response(500, "bastion.internal", "internal error; see the service's log")
