"""The MCP adapter: streamable HTTP on `/mcp/{server}` around the protocol-neutral enforcer.

Per request (DESIGN §1): Host/Origin → single-valued headers → authenticate → read and
parse the body → classify the method (`_methods.py`) → check a tool name against the
upstream's live list → bind the caller (session owner, workflow owner) → for actions,
the enforcer decides and journals; protocol traffic is journaled as an observation →
forward (or answer with the block envelope) → record how a forwarded action ended.
Every refusal before a decision is journaled too (outcome REJECTED), so an auditor sees
bad tokens and malformed messages, not just policy blocks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from bastion._errors import (
    AuthError,
    JournalError,
    ProtocolError,
    StoreError,
    UnreadableListing,
    UpstreamError,
    UpstreamTimeout,
)
from bastion._hosts import HostCheck
from bastion._identity import Principal, TokenVerifier
from bastion.v1 import graph_pb2, policy_pb2

from ._asgi import (
    JSON,
    Headers,
    Receive,
    Scope,
    Send,
    header_text,
    node_headers,
    read_body,
    send_bytes,
    send_stream,
    with_length,
)
from ._budget import ValueBudget
from ._catalog import ToolCatalog
from ._delegation import HEADER as DELEGATION
from ._enforcer import Caller, Enforcer, envelope
from ._envelope import jsonrpc_error, public_reason
from ._listing import LIST_SHAPES, filter_listing, guard_answer, guard_stream, unreadable_answer
from ._mcp import (
    TASK_META_KEY,
    WORKFLOW_META_KEY,
    Message,
    check_routing_headers,
    check_single_headers,
    parse_message,
)
from ._methods import Target, classify
from ._metrics import ProxyMetrics
from ._owners import SessionOwners, owner_key
from ._recorder import Record
from ._results import ResultTap
from ._session_host import OWNER_HEADER
from ._tracing import RequestTrace, Tracing
from ._upstream import UpstreamPool
from ._workflows import WorkflowTracker, check_id

log = logging.getLogger("bastion.proxy")

# Never forwarded upstream: hop-by-hop headers, the agent's own credentials (the
# upstream must not see them), and Bastion's routing headers.
_DROP_REQUEST = frozenset(
    {
        b"host",
        b"connection",
        b"keep-alive",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"authorization",
        b"bastion-workflow-id",
        # A delegation is for the agent it was issued to, not for whoever is behind it.
        b"bastion-delegation",
        # Replaced by identity: an answer Bastion cannot read cannot be filtered or recorded.
        b"accept-encoding",
        # Only the proxy names who initialises a stdio server's session (_session_host).
        OWNER_HEADER,
    }
)
_DROP_RESPONSE = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"trailer", b"upgrade"})
# Kinds of the MCP traffic that is recorded but not decided.
_KIND_BY_METHOD = {"tools/list": policy_pb2.TOOL_LIST}
_JSONRPC_MESSAGES = {
    -32700: "Parse error",
    -32600: "Invalid Request",
    -32601: "Method not found",
    -32602: "Invalid params",
    -32020: "Header mismatch",
}


@dataclass(frozen=True, slots=True)
class _Request:
    """What every stage of one HTTP request needs to know."""

    scope: Scope
    receive: Receive
    send: Send
    pool: UpstreamPool | None  # None on the aggregated endpoint: each message names its upstream
    server: str
    headers: dict[bytes, bytes]
    started: float
    t0: float
    trace: RequestTrace
    #: What one stage learns for a later one (the aggregated endpoint's route).
    notes: dict[str, Any] = field(default_factory=dict)


class McpHttpAdapter:
    def __init__(
        self,
        *,
        tokens: TokenVerifier,
        enforcer: Enforcer,
        upstreams: dict[str, UpstreamPool],
        catalogs: dict[str, ToolCatalog],
        tracker: WorkflowTracker,
        sessions: SessionOwners,
        metrics: ProxyMetrics,
        hosts: HostCheck,
        budget: ValueBudget,
        max_body: int,
        body_timeout: float,
        tracing: Tracing | None = None,
    ) -> None:
        self._tokens = tokens
        self._enforcer = enforcer
        self._upstreams = upstreams
        self._catalogs = catalogs
        self._tracker = tracker
        self._sessions = sessions
        self._metrics = metrics
        self._hosts = hosts
        self._budget = budget
        self._max_body = max_body
        self._body_timeout = body_timeout
        self._tracing = tracing or Tracing()

    async def handle(self, scope: Scope, receive: Receive, send: Send, server: str) -> None:
        trace = self._tracing.request(scope, server)
        try:
            await self._handle(scope, receive, trace.watch(send), server, trace)
        finally:
            trace.finish()

    async def _handle(self, scope: Scope, receive: Receive, send: Send, server: str, trace: RequestTrace) -> None:
        started = time.time()
        t0 = time.perf_counter()
        raw_headers: Headers = scope["headers"]
        headers = dict(raw_headers)
        method = scope["method"]
        action = policy_pb2.Action(kind=policy_pb2.MCP_REQUEST, server=server, method=f"http:{method}")
        pool = self._upstreams.get(server)
        if pool is None and not self._aggregated(server):
            await self._refuse(
                send,
                action,
                started,
                404,
                "bastion.unknown_server",
                f"no upstream named {server!r} in bastion.yaml",
                trace=trace,
            )
            return
        refusal = self._hosts.refusal(raw_headers)
        if refusal is not None:
            await self._refuse(send, action, started, 403, "bastion.host_not_allowed", refusal, trace=trace)
            return
        try:
            check_single_headers(raw_headers)
        except ProtocolError as exc:
            await self._refuse(send, action, started, exc.http_status, exc.code, str(exc), trace=trace)
            return
        try:
            # Before revocations have arrived an agent's token is still read (not refused like an
            # operator's on the REST routes): every action waits for the policy service that pushes
            # them, and IdentityStage (_stages.py) forwards nothing until they are in.
            principal = self._tokens.verify_header(header_text(headers.get(b"authorization")), allow_unsynced=True)
        except AuthError as exc:
            await self._refuse(
                send,
                action,
                started,
                exc.http_status,
                exc.code,
                str(exc),
                extra_headers=[(b"www-authenticate", b"Bearer")],
                trace=trace,
            )
            return
        request = _Request(scope, receive, send, pool, server, headers, started, t0, trace)
        if method == "POST":
            await self._post(request, action, principal)
        elif method in ("GET", "DELETE"):
            await self._stream_or_delete(request, action, principal)
        else:
            await self._refuse(
                send,
                action,
                started,
                405,
                "bastion.method_not_allowed",
                f"{method} is not an MCP method",
                principal,
                trace=trace,
            )

    async def _stream_or_delete(self, request: _Request, action: policy_pb2.Action, principal: Principal) -> None:
        try:
            # Protocol traffic is not decided, so IdentityStage never sees it: before the
            # revocation list is in, a revoked agent's token must not open a session's stream
            # or end it (an attacker's re-probe had all five kinds forwarded).
            self._tokens.check_synced()
            caller = await self._caller(principal, request.headers, None, request.server)
        except (AuthError, ProtocolError, StoreError) as exc:
            status, code = exc.http_status, exc.code
            await self._refuse(
                request.send, action, request.started, status, code, str(exc), principal, trace=request.trace
            )
            return
        record = self._enforcer.record(caller, action, request.started, graph_pb2.OBSERVATION)
        if await self._observe_or_refuse(request.send, record, None):
            if request.scope["method"] == "DELETE" and caller.session_id:
                self._sessions.forget(caller.session_id)
            await self._forward(request, (record,), b"", None, caller, governed=False)

    async def _post(self, request: _Request, action: policy_pb2.Action, principal: Principal) -> None:
        msg_id: Any = None
        headers = request.headers
        try:
            body = await read_body(request.receive, headers, self._max_body, self._body_timeout)
            self._budget.refuse_unparsed(body, "the message")
            message = parse_message(body)
            msg_id = message.id
            request.trace.message(message)
            action.method = message.method or "response"
            check_routing_headers(message, _opt(headers.get(b"mcp-method")), _opt(headers.get(b"mcp-name")))
            targets = classify(message, self._budget, body)
            if targets and targets[0].kind == policy_pb2.TOOL_CALL:
                action.tool = targets[0].tool
            targets, server = await self._resolve(request, message, targets)
            caller = await self._caller(principal, headers, message, server)
        except (ProtocolError, StoreError, UpstreamError) as exc:
            text = "UPSTREAM_UNAVAILABLE" if isinstance(exc, UpstreamError) else None
            payload = jsonrpc_error(
                msg_id,
                exc.jsonrpc_code,
                text or _JSONRPC_MESSAGES.get(exc.jsonrpc_code, exc.code),
                {"reason": str(exc)},
            )
            await self._refuse(
                request.send,
                action,
                request.started,
                exc.http_status,
                exc.code,
                str(exc),
                principal,
                body=payload,
                trace=request.trace,
            )
            return
        if targets:
            await self._governed(request, caller, message, targets, body)
            return
        try:
            self._tokens.check_synced()  # as in _stream_or_delete: initialize, ping, answers, listings
        except AuthError as exc:  # an auth failure: HTTP, before JSON-RPC (DESIGN §4)
            await self._refuse(
                request.send,
                action,
                request.started,
                exc.http_status,
                exc.code,
                str(exc),
                principal,
                trace=request.trace,
            )
            return
        action.kind = _KIND_BY_METHOD.get(action.method, policy_pb2.MCP_REQUEST)
        record = self._enforcer.record(caller, action, request.started, graph_pb2.OBSERVATION, body)
        if await self._observe_or_refuse(request.send, record, msg_id):
            binds = caller.principal if message.method == "initialize" else None
            listing = message.method if message.method in LIST_SHAPES and message.is_request else None
            await self._forward(
                request,
                (record,),
                body,
                msg_id,
                caller,
                governed=False,
                bind_session=binds,
                listing=listing,
                message=message,
            )

    async def _governed(
        self, request: _Request, caller: Caller, message: Message, targets: tuple[Target, ...], body: bytes
    ) -> None:
        """Decide every action the message asks for; forward only when all are allowed."""
        state = self._tracker.state(caller.principal, caller.workflow_id)
        task = message.meta.get(TASK_META_KEY)
        if isinstance(task, str) and task and not state.task:
            self._enforcer.record_task(caller, state.set_task(task), request.started)
        decided = await self._enforcer.enforce(
            caller, state, message.method or "", targets, body=body, started=request.started
        )
        self._metrics.governance.observe(time.perf_counter() - request.t0)
        request.trace.decided(decided)
        blocked = next((item for item in decided if not item.outcome.allowed), None)
        if blocked is None:
            records = tuple(item.record for item in decided)
            await self._forward(
                request, records, body, message.id, caller, governed=True, message=message, targets=targets
            )
            return
        payload = envelope(message.id, message.method or "", blocked, request.started)
        await send_bytes(request.send, 200, payload, JSON + node_headers(blocked.record))

    def _aggregated(self, server: str) -> bool:
        """True when `server` names the aggregated endpoint rather than one upstream."""
        return False

    async def _resolve(
        self, request: _Request, message: Message, targets: tuple[Target, ...]
    ) -> tuple[tuple[Target, ...], str]:
        """The actions as the upstream will see them, and which upstream: on `/mcp/{server}`
        the names are the upstream's own, and a tool must be exactly in its live list."""
        if targets and targets[0].kind == policy_pb2.TOOL_CALL:
            await self._catalogs[request.server].check(targets[0].tool)
        return targets, request.server

    async def _caller(
        self, principal: Principal, headers: dict[bytes, bytes], message: Message | None, server: str
    ) -> Caller:
        session = _opt(headers.get(b"mcp-session-id"))
        if session:
            check_id("Mcp-Session-Id", session)
            self._sessions.check(session, principal)
        named = _opt(headers.get(b"bastion-workflow-id"))
        delegation = self._tracker.delegation(headers.get(DELEGATION), principal, named)
        if delegation is not None:
            # Work done for another agent's A2A message: in that workflow, linked to it.
            return Caller(principal, delegation.workflow_id, session or delegation.workflow_id, server, delegation)
        workflow = await self._tracker.resolve(
            _opt(headers.get(b"bastion-workflow-id")),
            message.meta.get(WORKFLOW_META_KEY) if message is not None else None,
            session,
            principal,
        )
        return Caller(principal, workflow, session or workflow, server)

    async def _observe_or_refuse(self, send: Send, record: Record, msg_id: Any) -> bool:
        try:
            self._enforcer.observe(record)
        except JournalError as exc:
            log.error("journal append failed; refusing", extra={"fields": {"error": str(exc)}})
            payload = jsonrpc_error(msg_id, exc.jsonrpc_code, "JOURNAL_UNAVAILABLE", {"reason": str(exc)})
            await send_bytes(send, 503, payload, JSON)
            return False
        return True

    async def _refuse(
        self,
        send: Send,
        action: policy_pb2.Action,
        started: float,
        status: int,
        code: str,
        reason: str,
        principal: Principal | None = None,
        *,
        extra_headers: Headers | None = None,
        body: bytes | None = None,
        trace: RequestTrace,
    ) -> None:
        """Answer a request refused before any decision, and journal the refusal."""
        trace.refused(code, principal.subject if principal is not None else "")
        violation_id = self._enforcer.refuse(action, started, code, reason, principal)
        if body is None:
            body = orjson.dumps(http_error(code, reason, violation_id))
        await send_bytes(send, status, body, JSON + (extra_headers or []))

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
        """Send the request upstream and relay its answer; for governed actions, journal
        how it ended (DESIGN §3 result event) once the answer is relayed or has failed.
        `listing`: the list method asked, whose whole answer is filtered by policy
        (UnreadableListing when it cannot be read)."""
        scope, pool, record = request.scope, request.pool, records[0]
        assert pool is not None
        path = pool.path.encode()
        if scope.get("query_string"):
            path += b"?" + scope["query_string"]
        headers = [(k, v) for k, v in scope["headers"] if k not in _DROP_REQUEST]
        headers.append((b"accept-encoding", b"identity"))
        if bind_session is not None and pool.unix_path is not None:
            # A stdio server's session host, on the proxy's private socket: whose session
            # this is, so one principal cannot hold all of its slots.
            headers.append((OWNER_HEADER, owner_key(bind_session).encode()))
        headers = request.trace.upstream(headers, pool, scope["method"], record)
        # A POST's answer (a tool's result) is bounded in time; a GET is a session's
        # long-lived notification stream and may stay quiet for as long as it likes.
        idle = pool.timeout if scope["method"] == "POST" else None
        tap = ResultTap(msg_id)
        t_up = time.perf_counter()
        sse = streamed = False
        try:
            response = await pool.request(scope["method"].encode(), path, headers, body)
            tap.status = response.status
            self._metrics.upstream.observe(time.perf_counter() - t_up)
            if bind_session is not None and (session := response.header(b"mcp-session-id")) is not None:
                # Bound before the client can learn the id: only the initialising principal may use it.
                self._sessions.bind(session.decode("latin-1"), bind_session)
            out = [(k, v) for k, v in response.headers if k not in _DROP_RESPONSE] + node_headers(record)
            # Any 2xx is an answer (the SDKs read a 201's body too), and any answer may carry a
            # listing: the SDKs route a response by its id, whatever stream it came in.
            answer = 200 <= response.status < 300
            if answer and (opaque := unreadable_answer(response)):
                raise UnreadableListing(f"it answered with {opaque}, which Bastion cannot read (it asks for none)")
            sse = response.is_sse

            async def allowed(actions: Sequence[policy_pb2.Action]) -> list[bool]:
                return await self._enforcer.allowed(caller, actions)

            if response.header(b"content-length") is not None or (answer and (listing is not None or not sse)):
                data = await response.read(idle)
                if answer:
                    server = request.server
                    if listing is not None:
                        data = await filter_listing(data, sse=sse, method=listing, server=server, allowed=allowed)
                    else:
                        data = await guard_answer(data, sse=sse, server=server, allowed=allowed)
                    out = with_length(out, data)
                tap.feed(data)
                await send_bytes(request.send, response.status, data, out)
                relayed = True
            else:
                chunks = response.stream(idle)
                if answer:
                    chunks = guard_stream(chunks, server=request.server, allowed=allowed)
                streamed = True
                relayed = await send_stream(request.send, request.receive, response.status, out, tap.watch(chunks))
        except UpstreamError as exc:
            request.trace.upstream_failed(exc)
            log.warning("upstream failed", extra={"fields": {"server": request.server, "error": str(exc)}})
            reason = f"upstream {request.server!r}: {public_reason(str(exc))}"
            unreadable = isinstance(exc, UnreadableListing)
            if not streamed:
                # Nothing was sent to the client yet: answer with the failure.
                payload = jsonrpc_error(msg_id, exc.jsonrpc_code, "UPSTREAM_UNAVAILABLE", {"reason": reason})
                await send_bytes(request.send, exc.http_status, payload, JSON + node_headers(record))
            if unreadable and not governed:
                # Protocol traffic has no result event when it goes through; one that was
                # refused is recorded on its node, so the audit trail says why.
                self._record_results(request, records, tap.result(graph_pb2.UPSTREAM_ERROR, detail=reason))
            if governed:
                outcome = graph_pb2.TIMEOUT if isinstance(exc, UpstreamTimeout) else graph_pb2.UPSTREAM_ERROR
                self._record_results(request, records, tap.result(outcome, detail=reason))
            return
        if governed:
            outcome = graph_pb2.COMPLETED if relayed else graph_pb2.CLIENT_GONE
            detail = "" if relayed else "the client went away before the answer was relayed"
            self._record_results(request, records, tap.result(outcome, sse=sse, detail=detail), tap.answer)
        self._metrics.total.observe(time.perf_counter() - request.t0)

    def _record_results(
        self, request: _Request, records: tuple[Record, ...], result: graph_pb2.ActionResult, answer: Any = None
    ) -> None:
        request.trace.result(result)
        self._enforcer.record_results(records, result, answer)


def http_error(code: str, message: str, violation_id: str = "") -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if violation_id:
        error["violation_id"] = violation_id
    return {"error": error}


def _opt(value: bytes | None) -> str | None:
    return value.decode("utf-8", "replace") if value else None
