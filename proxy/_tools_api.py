"""`GET /v1/tools`: each upstream's live tool list, for operators (not on the hot path).

The policy service validates rules against it (`bastion policy validate` flags a rule
naming a tool or an argument no upstream has). The answer comes from the same
`ToolCatalog` that checks every called name, so it is exactly what the proxy enforces:

    {"servers": {"demo": {"tools": [{"name": "add", "inputSchema": {...}}], "error": null}}}

An upstream that cannot be listed has `"tools": []` and its `error`, with network
addresses removed (they stay in the proxy's log). Callers need a bearer JWT with role
operator, admin or auditor (the tool names and schemas describe what upstreams offer,
which is not for agents: an agent token gets 403, none 401, any token 503 before the proxy
has received the revocation list); the Host check is the proxy's own.
"""

from __future__ import annotations

import asyncio
import time

from bastion._authz import READ, identify, require
from bastion._errors import AuthError, UpstreamError
from bastion._hosts import HostCheck
from bastion._identity import Principal, TokenVerifier

from ._asgi import Receive, Scope, Send, authorization_values, send_json
from ._catalog import ToolCatalog
from ._enforcer import Enforcer
from ._mcp_http import http_error


class ToolsApi:
    #: (method, path template) of every route this handler serves, for route enumeration.
    ROUTES = (("GET", "/v1/tools"),)

    def __init__(
        self, *, tokens: TokenVerifier, catalogs: dict[str, ToolCatalog], hosts: HostCheck, enforcer: Enforcer
    ) -> None:
        self._tokens = tokens
        self._catalogs = catalogs
        self._hosts = hosts
        self._enforcer = enforcer

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.time()
        caller: Principal | None = None
        extra: list[tuple[bytes, bytes]] | None = None
        refusal = self._hosts.refusal(scope["headers"])
        if refusal is not None:
            status, code, message = 403, "bastion.host_not_allowed", refusal
        elif scope["method"] not in ("GET", "HEAD"):
            status, code, message = 405, "bastion.method_not_allowed", f"{scope['method']} /v1/tools: use GET"
            extra = [(b"allow", b"GET")]
        else:
            try:
                caller = identify(self._tokens, authorization_values(scope))
                require(caller, READ)
            except AuthError as exc:
                status, code, message = exc.http_status, exc.code, str(exc)
                extra = [(b"www-authenticate", b"Bearer")] if exc.http_status == 401 else None
            else:
                names = sorted(self._catalogs)
                listed = await asyncio.gather(*(self._server(self._catalogs[name]) for name in names))
                await send_json(send, 200, {"servers": dict(zip(names, listed, strict=True))})
                return
        # Audited like the proxy's other refusals (workflow `bastion.rejected`): agents asking
        # what the upstreams offer must show up.
        violation_id = self._enforcer.refuse_request(scope["method"], scope["path"], started, code, message, caller)
        await send_json(send, status, http_error(code, message, violation_id), extra)

    @staticmethod
    async def _server(catalog: ToolCatalog) -> dict[str, object]:
        try:
            tools = await catalog.tools()
        except UpstreamError as exc:
            return {"tools": [], "error": str(exc)}
        return {"tools": [{"name": tool.name, "inputSchema": tool.input_schema} for tool in tools], "error": None}
