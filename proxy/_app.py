"""The proxy's ASGI application: a routing table in front of the protocol adapters.

No web framework on the hot path: a request is matched against exact routes (probes,
metrics) and path prefixes (one per protocol adapter), and handed to the handler that
owns it. Adapters do their own parsing and call the protocol-neutral enforcer
(`_enforcer.py`); this module only routes and keeps a bug from becoming a bare 500 page.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from bastion._identity import Principal

from ._asgi import Message as AsgiMessage
from ._asgi import Receive, Scope, Send, send_bytes, send_json
from ._mcp_http import McpHttpAdapter, http_error
from ._metrics import ProxyMetrics

log = logging.getLogger("bastion.proxy")

Handler = Callable[[Scope, Receive, Send], Awaitable[None]]
#: A handler for a path prefix also gets the one path segment after the prefix.
PrefixHandler = Callable[[Scope, Receive, Send, str], Awaitable[None]]
#: Journals a refused request: (method, path, started, code, message, caller); its violation id.
Refuse = Callable[[str, str, float, str, str, Principal | None], str]


class ProxyApp:
    def __init__(
        self,
        *,
        mcp: McpHttpAdapter,
        metrics: ProxyMetrics,
        tools: Handler | None = None,
        aggregated: Handler,
        tools_call: Handler | None = None,
        a2a: PrefixHandler | None = None,
        approvals: Handler | None = None,
        queue: Handler | None = None,
        refuse: Refuse | None = None,
    ) -> None:
        """`refuse` journals a request no route takes (`Enforcer.refuse_request`)."""
        self._metrics = metrics
        self._refuse = refuse
        self.ready = False
        #: Why this replica cannot govern calls though it runs (the journal's `problem`), or None.
        self.problem: Callable[[], str | None] = _no_problem
        self._exact: dict[str, Handler] = {
            "/healthz": _read_only(self._healthz),
            "/readyz": _read_only(self._readyz),
            "/metrics": _read_only(self._metrics_page),
            "/mcp": aggregated,
        }
        if tools_call is not None:  # the seed's simple endpoint (so `tools` is no server name)
            self._exact["/mcp/tools/call"] = tools_call
        if tools is not None:  # GET /v1/tools (proxy/_tools_api.py): operators only, off the hot path
            self._exact["/v1/tools"] = tools
        # `/v1/approvals` and everything under it (proxy/_approvals_api.py checks the rest).
        self._admin: dict[str, Handler] = {}
        if approvals is not None:
            self._exact["/v1/approvals"] = approvals
            self._admin["/v1/approvals/"] = approvals
        # `/v1/queue` and everything under it (proxy/_queue_api.py checks the rest).
        if queue is not None:
            self._exact["/v1/queue"] = queue
            self._admin["/v1/queue/"] = queue
        # One segment after the prefix: `/mcp/{server}`; `/mcp/a/b` is not a route.
        self._prefixes: dict[str, PrefixHandler] = {"/mcp/": mcp.handle}
        # The A2A adapter takes the whole rest of the path: `{agent}`, `{agent}/v1/message:send`,
        # `{agent}/.well-known/agent-card.json`; it checks every segment itself.
        self._deep: dict[str, PrefixHandler] = {"/a2a/": a2a} if a2a is not None else {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        started = False

        async def tracking_send(message: AsgiMessage) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self._route(scope, receive, tracking_send)
        except Exception:
            # A bug must not turn into a forwarded action or a bare 500 page: the
            # journal already holds whatever was decided; answer with a structured error.
            log.exception("unhandled error in the proxy", extra={"fields": {"path": scope.get("path")}})
            if not started:
                await send_json(send, 500, http_error("bastion.internal", "internal error in the proxy; see its log"))

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        exact = self._exact.get(path)
        if exact is not None:
            await exact(scope, receive, send)
            return
        for prefix, admin in self._admin.items():
            if path.startswith(prefix):
                await admin(scope, receive, send)
                return
        for prefix, handler in self._deep.items():
            if path.startswith(prefix) and len(path) > len(prefix):
                await handler(scope, receive, send, path[len(prefix) :])
                return
        for prefix, handler in self._prefixes.items():
            rest = path[len(prefix) :]
            if path.startswith(prefix) and rest and "/" not in rest:
                await handler(scope, receive, send, rest)
                return
        message = f"no route for {path[:200]}"
        violation_id = ""
        if self._refuse is not None:
            violation_id = self._refuse(scope["method"], path, time.time(), "bastion.not_found", message, None)
        await send_json(send, 404, http_error("bastion.not_found", message, violation_id))

    async def _healthz(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, {"status": "ok"})

    async def _readyz(self, scope: Scope, receive: Receive, send: Send) -> None:
        problem = self.problem() if self.ready else None
        if problem is not None:
            await send_json(send, 503, {"ready": False, "reason": problem})
            return
        await send_json(send, 200 if self.ready else 503, {"ready": self.ready})

    async def _metrics_page(self, scope: Scope, receive: Receive, send: Send) -> None:
        body, content_type = self._metrics.exposition()
        await send_bytes(send, 200, body, [(b"content-type", content_type.encode())])


def _no_problem() -> str | None:
    return None


def _read_only(handler: Handler) -> Handler:
    """`handler` for GET and HEAD; 405 for any other method (as the other services' probes)."""

    async def read_only(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] in ("GET", "HEAD"):
            await handler(scope, receive, send)
            return
        message = f"{scope['method']} {scope['path']}: use GET"
        await send_json(send, 405, http_error("bastion.method_not_allowed", message), [(b"allow", b"GET")])

    return read_only
