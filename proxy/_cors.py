"""Cross-origin reads and decisions on the operator routes, for the dashboard alone.

The dashboard is served by the graph service (`/ui`, another origin than the proxy's), and
an operator drains approvals and the verifier's queue from it (DESIGN §6). A browser sends
those requests with an `Authorization` header, so it first asks (a CORS preflight) whether
this origin may. `BASTION_DASHBOARD_ORIGIN` names the one origin that may: its preflight
is answered, and its requests' answers carry `Access-Control-Allow-Origin`. Any other
origin's preflight goes to the route's handler, which refuses it (403 for an Origin not in
allowed_hosts, else 405) and journals the refusal in `bastion.rejected` like any other
refused operator request; no answer to another origin carries anything a browser would
let its script read. No credentials mode: the token is a bearer header the page sends
itself, never a cookie, so no other site can make a browser send it.

Only the routes wrapped here (`/v1/approvals`, `/v1/queue`) answer cross-origin; the MCP
and A2A endpoints never do. Unset, nothing changes: no route answers a preflight.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bastion._hosts import HostCheck

from ._asgi import Headers, Message, Receive, Scope, Send, send_bytes

Handler = Callable[[Scope, Receive, Send], Awaitable[None]]

_METHODS = b"GET, POST"
_HEADERS = b"authorization, content-type"
#: Seconds a browser may reuse a preflight's answer.
_MAX_AGE = b"600"
_VARY = (b"vary", b"origin")


def _origin(headers: Headers) -> bytes | None:
    """The request's one Origin header, lowered; None without one or with several."""
    found = [value for name, value in headers if name.lower() == b"origin"]
    return found[0].lower() if len(found) == 1 else None


def _preflight(scope: Scope) -> bool:
    # Fetch §4.8: a CORS preflight is an OPTIONS request naming the method it asks for. An
    # OPTIONS without Access-Control-Request-Method is an ordinary request (405, journaled).
    return scope["method"] == "OPTIONS" and any(
        name.lower() == b"access-control-request-method" for name, _ in scope["headers"]
    )


def _adding(send: Send, headers: Headers) -> Send:
    """`send`, with `headers` added to the response's start."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *headers]}
        await send(message)

    return sending


def allow_dashboard(handler: Handler, origin: str, hosts: HostCheck | None = None) -> Handler:
    """`handler`, answering CORS for `origin` (a `web_origin`: scheme://host[:port]).

    `hosts`: the routes' own Host check, also applied to the dashboard's preflights (the
    handler applies it to every other request)."""
    allowed = origin.encode("ascii")
    preflight_answer = [
        (b"access-control-allow-origin", allowed),
        (b"access-control-allow-methods", _METHODS),
        (b"access-control-allow-headers", _HEADERS),
        (b"access-control-max-age", _MAX_AGE),
        _VARY,
    ]

    async def handle(scope: Scope, receive: Receive, send: Send) -> None:
        theirs = _origin(scope["headers"])
        if theirs != allowed:
            # Another origin (or none, or several Origin headers): the handler answers as it
            # would without CORS — its Host/Origin check, roles and the audit of refusals,
            # preflights included. The answer varies with Origin, so caches must know it.
            await handler(scope, receive, _adding(send, [_VARY]))
            return
        # The routes' own Host/Origin check (DNS rebinding) would refuse an Origin outside
        # allowed_hosts; this one was just found to be the dashboard's, which the operator
        # named for exactly these routes. The Host header is still checked.
        scope = {**scope, "headers": [(name, value) for name, value in scope["headers"] if name.lower() != b"origin"]}
        if _preflight(scope) and (hosts is None or hosts.refusal(scope["headers"]) is None):
            await send_bytes(send, 204, b"", preflight_answer)
            return
        # A request, or a preflight for a Host the routes do not answer (which the handler
        # refuses and journals).
        await handler(scope, receive, _adding(send, [(b"access-control-allow-origin", allowed), _VARY]))

    return handle
