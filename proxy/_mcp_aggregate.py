"""`POST /mcp`: the aggregated MCP endpoint, the per-server adapter's admission around a
session manager instead of a byte relay.

Every check of `/mcp/{server}` runs unchanged (Host/Origin, single headers, bearer token,
body bounds, parse, routing headers, the method allowlist and value budgets, the
session's owner, the workflow's owner, decisions, journal-before-forward); what differs
is how a name finds its upstream and what forwarding means:

- `server__tool` and `server__prompt` are split; the tool must be exactly in that
  upstream's live `tools/list` (so `Demo__x`, `demo__X` or `demo__x ` are refused, not
  folded); policy sees `server` and the upstream's own name, as on `/mcp/{server}`;
- a resource URI belongs to the upstream that lists it (or whose template it matches);
- the allowed message goes to the session's fan-out (`_aggregate.py`), served over
  streamable HTTP by the session host (`_session_host.py`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from bastion._errors import InvalidParams, MethodNotAllowed, UnknownTool, UpstreamError
from bastion._identity import Principal
from bastion.v1 import graph_pb2, policy_pb2

from ._aggregate import FanOut, Route, split_name
from ._asgi import JSON, Receive, Scope, Send, node_headers, send_bytes, send_json
from ._enforcer import Caller
from ._envelope import jsonrpc_error
from ._mcp import Message
from ._mcp_http import McpHttpAdapter, _Request, http_error
from ._methods import Target
from ._owners import owner_key
from ._recorder import Record
from ._results import ResultTap
from ._session_host import Backend, HostedSession, SessionHost
from ._workflows import check_id


class AggregatedMcpAdapter(McpHttpAdapter):
    def __init__(
        self, *, max_sessions: int, idle_timeout: float, max_per_owner: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._host = SessionHost(
            "the aggregated /mcp endpoint",
            self._open,
            max_sessions=max_sessions,
            idle_timeout=idle_timeout,
            max_body=self._max_body,
            max_per_owner=max_per_owner,
            limit_name="BASTION_AGGREGATED_MAX_SESSIONS",
        )

    async def handle_aggregated(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handle(scope, receive, send, "")

    async def handle_tools_call(self, scope: Scope, receive: Receive, send: Send) -> None:
        """`POST /mcp/tools/call`, the seed's simple endpoint: one `tools/call` with a
        `server__tool` name, served as one stateless request of the aggregated endpoint
        (the 2026-07 `_meta` is filled in when the client leaves it out)."""
        await self.handle({**scope, _COMPAT: True}, receive, send, "")

    async def close(self) -> None:
        await self._host.close()

    async def _open(self, session: HostedSession) -> Backend:
        return FanOut(session, self._upstreams, self._allowed)

    async def _allowed(self, caller: Any, actions: Any) -> list[bool]:
        if not isinstance(caller, Caller):
            return [False] * len(actions)  # no caller, no listing: fail closed
        return await self._enforcer.allowed(caller, actions)

    def _aggregated(self, server: str) -> bool:
        return server == ""

    async def _resolve(
        self, request: _Request, message: Message, targets: tuple[Target, ...]
    ) -> tuple[tuple[Target, ...], str]:
        route = Route()
        request.notes["route"] = route
        request.notes["meta"] = message.meta  # a stateless caller's version, for lookups made for it
        if request.scope.get(_COMPAT) and message.method != "tools/call":
            raise MethodNotAllowed(f"/mcp/tools/call takes tools/call only, not {message.method!r}; use /mcp")
        if not targets:
            if message.method == "resources/unsubscribe":
                route.server = await self._server_of(request, _uri(message.params))
            return targets, ""
        resolved = [await self._target(request, target) for target in targets]
        servers = {server for server, _ in resolved}
        if len(servers) != 1:
            raise InvalidParams("one message may act on one upstream only; send one per upstream")
        route.server = servers.pop()
        route.params = _upstream_params(message, resolved[0][1])
        if request.scope.get(_COMPAT) and route.params is not None:
            meta = route.params.get("_meta")
            meta = dict(meta) if isinstance(meta, dict) else {}
            meta.setdefault(_VERSION_KEY, _STATELESS)
            meta.setdefault(_CAPABILITIES_KEY, {})
            route.params = {**route.params, "_meta": meta}
        return tuple(target for _, target in resolved), route.server

    async def _target(self, request: _Request, target: Target) -> tuple[str, Target]:
        if target.tool:
            server, tool = self._split(target.tool, "tool")
            await self._catalogs[server].check(tool)
            return server, dataclasses.replace(target, tool=tool)
        if target.prompt:
            server, prompt = self._split(target.prompt, "prompt")
            return server, dataclasses.replace(target, prompt=prompt)
        return await self._server_of(request, target.resource), target

    def _split(self, name: str, what: str) -> tuple[str, str]:
        server, own = split_name(name)
        if server not in self._upstreams:
            raise UnknownTool(
                f"{what} {name!r}: on the aggregated endpoint names are server__name, "
                f"and no upstream is named {server!r}"
                if server
                else f"{what} {name!r} has no server__ prefix"
            )
        return server, own

    async def _post(self, request: _Request, action: policy_pb2.Action, principal: Principal) -> None:
        # `_resolve` runs before the base class checks who owns the session, and a URI is
        # looked up in the session: `_server_of` needs the principal to check that first.
        request.notes["principal"] = principal
        await super()._post(request, action, principal)

    async def _server_of(self, request: _Request, uri: str) -> str:
        session_id = request.headers.get(b"mcp-session-id", b"").decode("latin-1")
        if session_id:
            # Before anything is looked up in it: another principal's session must neither
            # tell which URIs its upstreams offer (400 vs 403) nor be made to list them.
            check_id("Mcp-Session-Id", session_id)
            self._sessions.check(session_id, request.notes["principal"])
        # A stateless caller's first request may be a read: the shared session starts here then.
        session = self._host.session(session_id) if session_id else await self._host.shared_session()
        backend = session.backend if session is not None else None
        if not isinstance(backend, FanOut):
            raise InvalidParams(f"resource {uri!r}: no session of the aggregated endpoint to look it up in")
        return await backend.server_of(uri, request.notes.get("meta"))

    async def _forward(
        self,
        request: _Request,
        records: tuple[Record, ...],
        body: bytes,
        msg_id: Any,
        caller: Caller,
        *,
        governed: bool,
        bind_session: Principal | None = None,
        listing: str | None = None,
        message: Message | None = None,
        targets: tuple[Target, ...] = (),
    ) -> None:
        if message is None:  # the session's GET stream, or its end
            if request.scope.get(_COMPAT):
                await send_json(request.send, 405, http_error("bastion.method_not_allowed", "POST a tools/call"))
            elif request.scope["method"] == "GET":
                await self._host.get(request.receive, request.send, request.headers)
            else:
                await self._host.delete(request.send, request.headers.get(b"mcp-session-id", b"").decode("latin-1"))
            return
        route = request.notes.get("route") or Route()
        if listing is not None:
            route.caller = caller
        bind = None
        if bind_session is not None:
            owner = bind_session
            bind = lambda session_id: self._sessions.bind(session_id, owner)  # noqa: E731
        tap = ResultTap(msg_id)
        try:
            answer = await self._host.post(
                request.receive,
                request.send,
                request.headers,
                message.body,
                body,
                route,
                bind=bind,
                response_headers=node_headers(records[0]),
                owner=owner_key(bind_session) if bind_session is not None else "",
            )
        except UpstreamError as exc:
            # No session could be opened (a bound reached, an upstream that cannot start):
            # raised before anything was sent, it was a 500 `bastion.internal`.
            reason = str(exc)
            payload = jsonrpc_error(msg_id, -32603, "UPSTREAM_UNAVAILABLE", {"reason": reason})
            await send_bytes(request.send, 503, payload, JSON + node_headers(records[0]))
            if governed:
                self._record_results(request, records, tap.result(graph_pb2.UPSTREAM_ERROR, detail=reason))
            return
        if not governed:
            return
        if answer is None:
            result = tap.result(graph_pb2.CLIENT_GONE, detail="the client went away before the answer was relayed")
        else:
            tap.status = 200
            tap.feed(answer)
            outcome, detail = route.failure or (graph_pb2.COMPLETED, "")
            result = tap.result(outcome, detail=detail)
        self._record_results(request, records, result, tap.answer)


#: Marks a request of `/mcp/tools/call` in its ASGI scope.
_COMPAT = "bastion_tools_call"
_VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
_CAPABILITIES_KEY = "io.modelcontextprotocol/clientCapabilities"
_STATELESS = "2026-07-28"


def _uri(params: dict[str, Any]) -> str:
    uri = params.get("uri")
    if not isinstance(uri, str):
        raise InvalidParams("resources/unsubscribe needs params.uri")
    return uri


def _upstream_params(message: Message, target: Target) -> dict[str, Any] | None:
    """The params with the upstream's own names (None: unchanged)."""
    params = message.params
    if message.method in ("tools/call", "prompts/get"):
        return {**params, "name": target.tool or target.prompt}
    ref = params.get("ref")
    if message.method == "completion/complete" and isinstance(ref, dict) and ref.get("type") == "ref/prompt":
        return {**params, "ref": {**ref, "name": target.prompt}}
    return None
