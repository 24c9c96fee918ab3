"""Cross-origin reads and decisions on the operator routes, for the dashboard alone.

The dashboard is served by the graph service (`/ui`, another origin than the proxy's), and
an operator drains approvals and the verifier's queue from it (DESIGN §6). A browser sends
those requests with an `Authorization` header, so it first asks (a CORS preflight) whether
this origin may. `BASTION_DASHBOARD_ORIGIN` names the one origin that may: its preflight
is answered, and its requests' answers carry `Access-Control-Allow-Origin`. Any other
origin's preflight is refused (403), and its answers carry nothing a browser would let
its script read. No credentials mode: the token is a bearer header the page sends
itself, never a cookie, so no other site can make a browser send it.

Only the routes wrapped here (`/v1/approvals`, `/v1/queue`) answer cross-origin; the MCP
and A2A endpoints never do. Unset, nothing changes: no route answers a preflight.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ._asgi import Message, Receive, Scope, Send, send_json
from ._mcp_http import http_error

Handler = Callable[[Scope, Receive, Send], Awaitable[None]]

_METHODS = b"GET, POST"
_HEADERS = b"authorization, content-type"
#: Seconds a browser may reuse a preflight's answer.
_MAX_AGE = b"600"


def _origin(scope: Scope) -> bytes | None:
    """The request's one Origin header, lowered; None without one or with several."""
    found = [value for name, value in scope["headers"] if name.lower() == b"origin"]
    return found[0].lower() if len(found) == 1 else None


def allow_dashboard(handler: Handler, origin: str) -> Handler:
    """`handler`, answering CORS for `origin` (a `web_origin`: scheme://host[:port])."""
    allowed = origin.encode("ascii")
    vary = (b"vary", b"origin")

    async def handle(scope: Scope, receive: Receive, send: Send) -> None:
        theirs = _origin(scope)
        if scope["method"] == "OPTIONS" and theirs is not None:
            if theirs != allowed:
                await send_json(
                    send,
                    403,
                    http_error(
                        "bastion.host_not_allowed",
                        "cross-origin requests are answered for the dashboard's origin only (BASTION_DASHBOARD_ORIGIN)",
                    ),
                    [vary],
                )
                return
            await send({"type": "http.response.start", "status": 204, "headers": [
                (b"access-control-allow-origin", allowed),
                (b"access-control-allow-methods", _METHODS),
                (b"access-control-allow-headers", _HEADERS),
                (b"access-control-max-age", _MAX_AGE),
                vary,
            ]})  # fmt: skip
            await send({"type": "http.response.body", "body": b""})
            return
        if theirs != allowed:
            await handler(scope, receive, send)
            return
        # The routes' own Host/Origin check (DNS rebinding) would refuse an Origin outside
        # allowed_hosts; this one was just found to be the dashboard's, which the operator
        # named for exactly these routes. The Host header is still checked.
        scope = {**scope, "headers": [(name, value) for name, value in scope["headers"] if name.lower() != b"origin"]}

        async def with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"access-control-allow-origin", allowed), vary]
                message = {**message, "headers": headers}
            await send(message)

        await handler(scope, receive, with_cors)

    return handle
