"""The proxy's ASGI application: routing, authentication, and the MCP endpoint.

Per request on `/mcp/{server}` (DESIGN §1): Host/Origin check → authenticate →
read and parse the body → for `tools/call`: Decide + Score → journal → forward or
block; other MCP traffic is journaled and forwarded unchanged. Every refusal is
journaled too (outcome REJECTED), so an auditor sees bad tokens and malformed
messages, not just policy blocks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from bastion._errors import AuthError, JournalError, ProtocolError, StoreError, UpstreamError
from bastion._hosts import HostCheck
from bastion._identity import Principal, TokenVerifier
from bastion.v1 import graph_pb2, policy_pb2, verifier_pb2

from ._asgi import JSON, Headers, Receive, Scope, Send, read_body, send_bytes, send_json, send_stream
from ._asgi import Message as AsgiMessage
from ._budget import ValueBudget
from ._catalog import ToolCatalog
from ._envelope import block_envelope, jsonrpc_error, public_reason
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
from ._owners import SessionOwners
from ._pipeline import JOURNAL_UNAVAILABLE, Governor, Outcome
from ._recorder import Record, Recorder, iso
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
    }
)
_DROP_RESPONSE = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"trailer", b"upgrade"})
# Kinds of the MCP traffic that is recorded but not decided.
_KIND_BY_METHOD = {"tools/list": policy_pb2.TOOL_LIST}


@dataclass(frozen=True, slots=True)
class _Caller:
    principal: Principal
    workflow_id: str
    session_id: str
    server: str


class ProxyApp:
    def __init__(
        self,
        *,
        tokens: TokenVerifier,
        governor: Governor,
        recorder: Recorder,
        upstreams: dict[str, UpstreamPool],
        tracker: WorkflowTracker,
        metrics: ProxyMetrics,
        hosts: HostCheck,
        max_body: int,
        sessions: SessionOwners,
        catalogs: dict[str, ToolCatalog],
        budget: ValueBudget,
        body_timeout: float,
    ) -> None:
        self._tokens = tokens
        self._governor = governor
        self._recorder = recorder
        self._upstreams = upstreams
        self._tracker = tracker
        self._metrics = metrics
        self._hosts = hosts
        self._max_body = max_body
        self._sessions = sessions
        self._catalogs = catalogs
        self._budget = budget
        self._body_timeout = body_timeout
        self.ready = False

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
                await send_json(send, 500, _http_error("bastion.internal", "internal error in the proxy; see its log"))

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if path.startswith("/mcp/") and path.count("/") == 2 and path != "/mcp/":
            await self._mcp(scope, receive, send, path[5:])
        elif path == "/healthz":
            await send_json(send, 200, {"status": "ok"})
        elif path == "/readyz":
            await send_json(send, 200 if self.ready else 503, {"ready": self.ready})
        elif path == "/metrics":
            body, content_type = self._metrics.exposition()
            await send_bytes(send, 200, body, [(b"content-type", content_type.encode())])
        elif path == "/mcp":
            await send_json(
                send,
                501,
                _http_error(
                    "bastion.not_implemented", "the aggregated /mcp endpoint is not available yet; use /mcp/{server}"
                ),
            )
        else:
            await send_json(send, 404, _http_error("bastion.not_found", f"no route for {path}"))

    # -- the MCP endpoint -------------------------------------------------

    async def _mcp(self, scope: Scope, receive: Receive, send: Send, server: str) -> None:
        started = time.time()
        t0 = time.perf_counter()
        raw_headers: Headers = scope["headers"]
        headers = dict(raw_headers)
        method = scope["method"]
        action = policy_pb2.Action(kind=policy_pb2.MCP_REQUEST, server=server, method=f"http:{method}")
        pool = self._upstreams.get(server)
        if pool is None:
            await self._refuse(
                send, action, started, 404, "bastion.unknown_server", f"no upstream named {server!r} in bastion.yaml"
            )
            return
        refusal = self._hosts.refusal(raw_headers)
        if refusal is not None:
            await self._refuse(send, action, started, 403, "bastion.host_not_allowed", refusal)
            return
        try:
            check_single_headers(raw_headers)
        except ProtocolError as exc:
            await self._refuse(send, action, started, exc.http_status, exc.code, str(exc))
            return
        try:
            principal = self._tokens.verify_header(_text(headers.get(b"authorization")))
        except AuthError as exc:
            await self._refuse(
                send, action, started, exc.http_status, exc.code, str(exc), [(b"www-authenticate", b"Bearer")]
            )
            return
        if method == "POST":
            await self._post(scope, receive, send, pool, action, principal, headers, started, t0)
        elif method in ("GET", "DELETE"):
            try:
                caller = await self._caller(principal, headers, None, server)
            except (ProtocolError, StoreError) as exc:
                await self._refuse(send, action, started, exc.http_status, exc.code, str(exc), principal=principal)
                return
            record = self._record(caller, action, started, graph_pb2.OBSERVATION)
            if await self._journal_or_refuse(send, record, None):
                if method == "DELETE" and caller.session_id:
                    self._sessions.forget(caller.session_id)
                await self._forward(scope, receive, send, pool, record, b"", t0)
        else:
            await self._refuse(
                send,
                action,
                started,
                405,
                "bastion.method_not_allowed",
                f"{method} is not an MCP method",
                principal=principal,
            )

    async def _post(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        pool: UpstreamPool,
        action: policy_pb2.Action,
        principal: Principal,
        headers: dict[bytes, bytes],
        started: float,
        t0: float,
    ) -> None:
        msg_id: Any = None
        try:
            body = await read_body(receive, headers, self._max_body, self._body_timeout)
            message = parse_message(body)
            msg_id = message.id
            action.method = message.method or "response"
            check_routing_headers(message, _opt(headers.get(b"mcp-method")), _opt(headers.get(b"mcp-name")))
            targets = classify(message, self._budget, body)
            if targets and targets[0].kind == policy_pb2.TOOL_CALL:
                action.tool = targets[0].tool
                await self._catalogs[action.server].check(targets[0].tool)
            caller = await self._caller(principal, headers, message, action.server)
        except (ProtocolError, StoreError, UpstreamError) as exc:
            message_text = "UPSTREAM_UNAVAILABLE" if isinstance(exc, UpstreamError) else None
            payload = jsonrpc_error(
                msg_id,
                exc.jsonrpc_code,
                message_text or _JSONRPC_MESSAGES.get(exc.jsonrpc_code, exc.code),
                {"reason": str(exc)},
            )
            await self._refuse(
                send, action, started, exc.http_status, exc.code, str(exc), principal=principal, body=payload
            )
            return
        if targets:
            await self._governed(scope, receive, send, pool, caller, message, targets, body, started, t0)
            return
        action.kind = _KIND_BY_METHOD.get(action.method, policy_pb2.MCP_REQUEST)
        record = self._record(caller, action, started, graph_pb2.OBSERVATION, body)
        if await self._journal_or_refuse(send, record, msg_id):
            binds = caller.principal if message.method == "initialize" else None
            await self._forward(scope, receive, send, pool, record, body, t0, msg_id, bind_session=binds)

    async def _governed(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        pool: UpstreamPool,
        caller: _Caller,
        message: Message,
        targets: tuple[Target, ...],
        body: bytes,
        started: float,
        t0: float,
    ) -> None:
        """Decide every action the message asks for; forward only when all are allowed."""
        principal = caller.principal
        state = self._tracker.state(principal, caller.workflow_id)
        task = message.meta.get(TASK_META_KEY)
        if isinstance(task, str) and task and not state.task:
            self._record_task(caller, state.set_task(task), started)
        parent = state.last_node(caller.session_id)
        parents = (parent,) if parent else ()
        pending = [
            self._decide(caller, state.task, state.history, target, message.method or "", body, started, parents)
            for target in targets
        ]
        decided = [await pending[0]] if len(pending) == 1 else await asyncio.gather(*pending)
        t_decided = time.perf_counter()
        self._metrics.governance.observe(t_decided - t0)
        results = [self._journal_decision(record, outcome) for record, outcome in decided]
        self._metrics.journal.observe(time.perf_counter() - t_decided)
        state.set_last_node(caller.session_id, decided[-1][0].node_id)
        for (record, _), (outcome, _) in zip(decided, results, strict=True):
            state.history.append(
                verifier_pb2.HistoryNode(
                    node_id=record.node_id,
                    kind=record.action.kind,
                    server=record.action.server,
                    tool=record.action.tool or record.action.prompt or record.action.resource,
                    # What happened, not what policy said: a verifier-blocked call must not
                    # count as precedent when the agent retries it.
                    effect=policy_pb2.ALLOW if outcome.allowed else policy_pb2.DENY,
                )
            )
        blocked = next((i for i, (outcome, _) in enumerate(results) if not outcome.allowed), None)
        if blocked is None:
            for _, (outcome, _) in zip(decided, results, strict=True):
                self._metrics.count("forwarded", outcome.decision)
            await self._forward(scope, receive, send, pool, decided[0][0], body, t0, message.id)
            return
        record = decided[blocked][0]
        outcome, violation_id = results[blocked]
        self._metrics.count("blocked", outcome.decision)
        await send_bytes(
            send, 200, self._envelope(message, record, outcome, violation_id, started), JSON + _ids(record)
        )

    async def _decide(
        self,
        caller: _Caller,
        task: str,
        history: Iterable[verifier_pb2.HistoryNode],
        target: Target,
        method: str,
        body: bytes,
        started: float,
        parents: tuple[str, ...],
    ) -> tuple[Record, Outcome]:
        action = policy_pb2.Action(
            kind=target.kind,
            server=caller.server,
            tool=target.tool,
            prompt=target.prompt,
            resource=target.resource,
            method=method,
        )
        if target.arguments:
            action.arguments.update(target.arguments)
        principal = caller.principal
        record = self._record(caller, action, started, graph_pb2.ACTION, body, parents)
        ctx = policy_pb2.Context(
            agent_id=principal.subject,
            tenant=principal.tenant,
            session_id=caller.session_id,
            workflow_id=caller.workflow_id,
            task=task,
            roles=principal.roles,
            request_id=record.node_id,
        )
        outcome = await self._governor.decide(action, ctx, history, record.node_id, body_size=len(body))
        return record, outcome

    def _journal_decision(self, record: Record, outcome: Outcome) -> tuple[Outcome, str]:
        """Journal the decided action; a journal failure turns it into a block."""
        try:
            violation_id = self._recorder.append(
                record,
                outcome=graph_pb2.FORWARDED if outcome.allowed else graph_pb2.BLOCKED,
                decision=outcome.decision,
                score=outcome.score,
                block_code=outcome.block_code,
                block_reason=outcome.block_reason,
                verifier_fallback=outcome.verifier_fallback,
            )
        except JournalError as exc:
            log.error("journal append failed; blocking", extra={"fields": {"error": str(exc)}})
            outcome = Outcome(
                False, outcome.decision, outcome.score, JOURNAL_UNAVAILABLE, f"journal unavailable: {exc}"
            )
            # Nothing was recorded, so no violation id exists; the node id still lets the
            # operator match the client's report with the proxy's error log.
            return outcome, record.node_id
        return outcome, violation_id

    def _envelope(self, message: Message, record: Record, outcome: Outcome, violation_id: str, started: float) -> bytes:
        score, decision, action = outcome.score, outcome.decision, record.action
        blocked_action: dict[str, Any] = {"method": message.method, "server": action.server}
        for key in ("tool", "prompt", "resource"):
            if value := getattr(action, key):
                blocked_action[key] = value
        return block_envelope(
            message.id,
            violation_id=violation_id,
            rule_id=outcome.block_code,
            reason=outcome.block_reason,
            deviation_score=score.deviation_score if score is not None else None,
            threshold=score.threshold if score is not None else None,
            drift_path_origin=(score.drift_origin_node_id or None) if score is not None else None,
            agent_id=record.agent_id,
            blocked_action=blocked_action,
            policy_version=decision.policy_version if decision is not None else None,
            policy_name=decision.policy_name if decision is not None else "",
            timestamp=iso(started),
        )

    # -- helpers ----------------------------------------------------------

    async def _caller(
        self, principal: Principal, headers: dict[bytes, bytes], message: Message | None, server: str
    ) -> _Caller:
        session = _opt(headers.get(b"mcp-session-id"))
        if session:
            check_id("Mcp-Session-Id", session)
            self._sessions.check(session, principal)
        workflow = await self._tracker.resolve(
            _opt(headers.get(b"bastion-workflow-id")),
            message.meta.get(WORKFLOW_META_KEY) if message is not None else None,
            session,
            principal,
        )
        return _Caller(principal, workflow, session or workflow, server)

    def _record(
        self,
        caller: _Caller,
        action: policy_pb2.Action,
        started: float,
        node_type: int,
        body: bytes = b"",
        parents: tuple[str, ...] = (),
    ) -> Record:
        return Record(
            workflow_id=caller.workflow_id,
            session_id=caller.session_id,
            agent_id=caller.principal.subject,
            tenant=caller.principal.tenant,
            action=action,
            started_at=started,
            body=body,
            node_type=node_type,
            parent_ids=parents,
        )

    def _record_task(self, caller: _Caller, task: str, started: float) -> None:
        """The workflow's stated task, recorded once as a THINKING node."""
        action = policy_pb2.Action(kind=policy_pb2.MCP_REQUEST, method="bastion.dev/task")
        action.arguments.update({"task": task})
        record = self._record(caller, action, started, graph_pb2.THINKING)
        try:
            self._recorder.append(record, outcome=graph_pb2.FORWARDED)
        except JournalError as exc:
            # The action that carried the task is still journaled (or blocked) on its own.
            log.error("journal append of task failed", extra={"fields": {"error": str(exc)}})

    async def _journal_or_refuse(self, send: Send, record: Record, msg_id: Any) -> bool:
        try:
            self._recorder.append(record, outcome=graph_pb2.FORWARDED)
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
        extra_headers: Headers | None = None,
        *,
        principal: Principal | None = None,
        body: bytes | None = None,
    ) -> None:
        """Answer a request refused before any decision, and journal the refusal."""
        record = Record(
            workflow_id="bastion.rejected",
            session_id="",
            agent_id=principal.subject if principal is not None else "",
            tenant=principal.tenant if principal is not None else "",
            action=action,
            started_at=started,
            node_type=graph_pb2.OBSERVATION,
        )
        violation_id = ""
        try:
            violation_id = self._recorder.append(
                record, outcome=graph_pb2.REJECTED, block_code=code, block_reason=reason
            )
        except JournalError as exc:
            log.error("journal append of a refusal failed", extra={"fields": {"error": str(exc), "code": code}})
        self._metrics.count("rejected", None)
        if body is None:
            body = orjson.dumps(_http_error(code, reason, violation_id))
        await send_bytes(send, status, body, JSON + (extra_headers or []))

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        pool: UpstreamPool,
        record: Record,
        body: bytes,
        t0: float,
        msg_id: Any = None,
        *,
        bind_session: Principal | None = None,
    ) -> None:
        path = pool.path.encode()
        if scope.get("query_string"):
            path += b"?" + scope["query_string"]
        headers = [(k, v) for k, v in scope["headers"] if k not in _DROP_REQUEST]
        t_up = time.perf_counter()
        try:
            response = await pool.request(scope["method"].encode(), path, headers, body)
        except UpstreamError as exc:
            log.warning("upstream failed", extra={"fields": {"server": record.action.server, "error": str(exc)}})
            reason = f"upstream {record.action.server!r}: {public_reason(str(exc))}"
            payload = jsonrpc_error(msg_id, exc.jsonrpc_code, "UPSTREAM_UNAVAILABLE", {"reason": reason})
            await send_bytes(send, 502, payload, JSON + _ids(record))
            return
        self._metrics.upstream.observe(time.perf_counter() - t_up)
        if bind_session is not None and (session := response.header(b"mcp-session-id")) is not None:
            # Bound before the client can learn the id: only the initialising principal may use it.
            self._sessions.bind(session.decode("latin-1"), bind_session)
        out = [(k, v) for k, v in response.headers if k not in _DROP_RESPONSE] + _ids(record)
        if response.header(b"content-length") is not None:
            data = await response.read()
            await send_bytes(send, response.status, data, out)
        else:
            await send_stream(send, receive, response.status, out, response.stream())
        self._metrics.total.observe(time.perf_counter() - t0)


_JSONRPC_MESSAGES = {
    -32700: "Parse error",
    -32600: "Invalid Request",
    -32601: "Method not found",
    -32602: "Invalid params",
    -32020: "Header mismatch",
}


def _ids(record: Record) -> Headers:
    return [(b"bastion-workflow-id", record.workflow_id.encode()), (b"bastion-node-id", record.node_id.encode())]


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


def _opt(value: bytes | None) -> str | None:
    return value.decode("utf-8", "replace") if value else None


def _http_error(code: str, message: str, violation_id: str = "") -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if violation_id:
        error["violation_id"] = violation_id
    return {"error": error}
