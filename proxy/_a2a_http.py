"""The A2A adapter: `/a2a/{agent}` around the protocol-neutral enforcer.

Per request, as on MCP (DESIGN §1): agent known → Host/Origin → single-valued headers →
authenticate → read the body (capped, with a deadline) → classify (`_a2a_methods.py`) →
bind the caller (workflow owner) → the enforcer decides and journals → forward to the
agent's configured URL, or answer with the block in the transport's error shape →
journal how a forwarded action ended. Every refusal before a decision is journaled too.

Three kinds of request reach one agent:
- JSON-RPC, `POST /a2a/{agent}`: 1.0 and 0.3 methods; errors and blocks are JSON-RPC
  errors (the block envelope of DESIGN §4 in `data`), with HTTP 200 as A2A agents answer;
- HTTP+JSON, `/a2a/{agent}/{route}`: errors and blocks are the binding's error body
  (`{"error": {code, status, message, details: [ErrorInfo]}}`), the envelope's fields in
  the ErrorInfo's `metadata`;
- the agent card, `GET /a2a/{agent}/.well-known/agent-card.json` (and 0.3's `agent.json`):
  recorded, not decided, and rewritten to point at Bastion (`_a2a_card.py`).

Transparency: bodies are forwarded byte for byte; `A2A-Version` and `A2A-Extensions`
pass through both ways, so an unsupported version is answered by the agent; event
streams are relayed as they arrive (a send's event by event, each once the tasks it
names are the sender's: `_a2a_tasks.TaskSniffer`). What an answer must not carry to the
client — a redirect, a `Location` — is `_a2a_relay.py`'s. The agent learns the caller's
workflow from `Bastion-Workflow-Id` and the sending node from `Bastion-Node-Id`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson

from bastion._errors import (
    AuthError,
    InvalidParams,
    InvalidRequest,
    JournalError,
    ProtocolError,
    StoreError,
    TaskForeign,
    UpstreamError,
    UpstreamTimeout,
)
from bastion._hosts import HostCheck
from bastion._identity import Principal, TokenVerifier
from bastion.v1 import graph_pb2, policy_pb2

from ._a2a_card import rewrite_card_answer
from ._a2a_compat import AGENT_HEADER, translate
from ._a2a_fields import spelled
from ._a2a_methods import A2aMethod, classify_jsonrpc, classify_rest, parse_jsonrpc, target, task_hint, workflow_hint
from ._a2a_pages import PageTokens
from ._a2a_relay import ambiguous_stream, error_event, redirect, relayed_headers, rest_error, rewritten_card
from ._a2a_tasks import TaskSniffer, claim, filter_tasks, may_reach, named_tasks, request_tenant
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
from ._delegation import HEADER as DELEGATION
from ._enforcer import Caller, Decided, Enforcer, envelope
from ._envelope import LIMIT_EXCEEDED, jsonrpc_error, public_reason
from ._listing import unreadable_answer
from ._mcp import Message, check_single_headers
from ._metrics import ProxyMetrics
from ._owners import owner_key
from ._recorder import Record
from ._results import ResultTap
from ._tracing import RequestTrace, Tracing
from ._upstream import UpstreamPool, UpstreamResponse
from ._workflows import WorkflowTracker

log = logging.getLogger("bastion.proxy")

#: Never forwarded: hop-by-hop headers, the caller's own credentials, Bastion's headers
#: (replaced by the values Bastion resolved).
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
        b"bastion-node-id",
        # Only Bastion issues delegations: one a client sends is not passed on.
        b"bastion-delegation",
        # Replaced by identity: the result tap and the task sniffer read the answer's bytes.
        b"accept-encoding",
    }
)
_EXTENDED_CARD = "GetExtendedAgentCard"
#: Reads of one task, answered with that task (or its events): every task the answer names
#: must be the caller's to reach (`_task_sniffer`). Push configs are answered with configs.
_TASK_READS = frozenset({"GetTask", "SubscribeToTask", "CancelTask"})
_CARD_PATHS = frozenset({"/.well-known/agent-card.json", "/.well-known/agent.json"})
#: A card is a few kilobytes; a larger answer is not parsed.
MAX_CARD_BYTES = 1 << 20
_JSONRPC_MESSAGES = {
    -32700: "Parse error",
    -32600: "Invalid Request",
    -32601: "Method not found",
    -32602: "Invalid params",
}


@dataclass(frozen=True, slots=True)
class A2aAgent:
    """One agent of bastion.yaml `agents:`: where it is. The credentials Bastion adds for it
    (the caller never sees them) are the pool's (`UpstreamPool(headers=…)`)."""

    url: str
    pool: UpstreamPool


#: A ListTasks page token's two spellings (`_a2a_fields.spelled`).
_PAGE_TOKEN = ("pageToken", "page_token")


@dataclass(slots=True)
class _Request:
    scope: Scope
    receive: Receive
    send: Send
    name: str
    agent: A2aAgent
    suffix: str  # the raw path after /a2a/{agent}: "", "/", "/message:send", …
    headers: dict[bytes, bytes]
    started: float
    t0: float
    trace: RequestTrace
    principal: Principal
    #: A ListTasks call that named a page (`pageToken`): its answer is not the whole list.
    paged: bool = False
    #: The A2A tenant the request names (`tenant`, or the HTTP+JSON path's tenant segment).
    tenant: str = ""


class A2aHttpAdapter:
    def __init__(
        self,
        *,
        tokens: TokenVerifier,
        enforcer: Enforcer,
        agents: Mapping[str, A2aAgent | UpstreamPool],
        tracker: WorkflowTracker,
        metrics: ProxyMetrics,
        hosts: HostCheck,
        budget: ValueBudget,
        max_body: int,
        body_timeout: float,
        tracing: Tracing | None = None,
        pages: PageTokens | None = None,
    ) -> None:
        """`pages` seals ListTasks page tokens (`_a2a_pages`; keyed by the service token in
        `serve`, by a random key when not given)."""
        self._pages = pages or PageTokens()
        self._tokens = tokens
        self._enforcer = enforcer
        self._agents = {name: _agent(value) for name, value in agents.items()}
        self._tracker = tracker
        self._metrics = metrics
        self._hosts = hosts
        self._budget = budget
        self._max_body = max_body
        self._body_timeout = body_timeout
        self._tracing = tracing or Tracing()

    async def handle(self, scope: Scope, receive: Receive, send: Send, rest_path: str) -> None:
        """`rest_path` is the path after `/a2a/`: the agent's name and what follows it."""
        if rest_path == "tasks/send":
            await self._compat(scope, receive, send)
            return
        name = rest_path.partition("/")[0]
        trace = self._tracing.request(scope, name)
        try:
            await self._handle(scope, receive, trace.watch(send), name, trace)
        finally:
            trace.finish()

    async def _handle(self, scope: Scope, receive: Receive, send: Send, name: str, trace: RequestTrace) -> None:
        started, t0 = time.time(), time.perf_counter()
        raw_headers: Headers = scope["headers"]
        http_method: str = scope["method"]
        action = policy_pb2.Action(server=name, target_agent=name, method=f"http:{http_method}")

        async def refuse(status: int, code: str, reason: str, principal: Principal | None = None) -> None:
            await self._refuse(send, action, started, status, code, reason, principal, trace=trace)

        agent = self._agents.get(name)
        if agent is None:
            await refuse(404, "bastion.unknown_agent", f"no A2A agent named {name[:100]!r} in bastion.yaml")
            return
        # The raw path, so the agent is sent exactly the bytes that were classified.
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        prefix = f"/a2a/{name}".encode()
        if not raw_path.startswith(prefix):
            await refuse(400, "bastion.protocol.invalid_request", "the agent name in the path must not be encoded")
            return
        if (refusal := self._hosts.refusal(raw_headers)) is not None:
            await refuse(403, "bastion.host_not_allowed", refusal)
            return
        try:
            check_single_headers(raw_headers)
            _check_a2a_single_headers(raw_headers)
        except ProtocolError as exc:
            await refuse(exc.http_status, exc.code, str(exc))
            return
        headers = dict(raw_headers)
        try:
            # As at /mcp (_mcp_http.py): decided actions wait for the revocations (IdentityStage).
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
        suffix = raw_path[len(prefix) :].decode("latin-1")
        request = _Request(scope, receive, send, name, agent, suffix, headers, started, t0, trace, principal)
        if suffix in ("", "/"):
            if http_method == "POST":
                await self._jsonrpc(request, action, principal)
            else:
                await refuse(405, "bastion.method_not_allowed", "the A2A JSON-RPC endpoint takes POST", principal)
        elif suffix in _CARD_PATHS:
            if http_method == "GET":
                await self._card(request, action, principal)
            else:
                await refuse(405, "bastion.method_not_allowed", "the agent card is read with GET", principal)
        elif http_method in ("GET", "POST", "DELETE"):
            await self._rest(request, action, principal)
        else:
            await refuse(405, "bastion.method_not_allowed", f"{http_method} is not an A2A method", principal)

    async def _compat(self, scope: Scope, receive: Receive, send: Send) -> None:
        """`POST /a2a/tasks/send` (`_a2a_compat.py`): translated, then served as `/a2a/{agent}`."""
        trace = self._tracing.request(scope, "tasks")
        started = time.time()
        action = policy_pb2.Action(method="tasks/send")
        headers = dict(scope["headers"])
        principal: Principal | None = None
        if scope["method"] != "POST":
            await self._refuse(send, action, started, 405, "bastion.method_not_allowed", "POST only", trace=trace)
            trace.finish()
            return
        try:
            # Who asks is checked before the body is looked at, as on every route.
            principal = self._tokens.verify_header(header_text(headers.get(b"authorization")), allow_unsynced=True)
            body = await read_body(receive, headers, self._max_body, self._body_timeout)
            named = headers.get(AGENT_HEADER)
            agent, translated = translate(body, named.decode("utf-8", "replace") if named is not None else None)
        except AuthError as exc:
            await self._refuse(send, action, started, exc.http_status, exc.code, str(exc), trace=trace)
            trace.finish()
            return
        except ProtocolError as exc:
            payload = jsonrpc_error(None, exc.jsonrpc_code, exc.code, {"reason": str(exc)})
            await self._refuse(
                send, action, started, exc.http_status, exc.code, str(exc), principal, body=payload, trace=trace
            )
            trace.finish()
            return
        if agent not in self._agents:
            # Checked here, not where the translated request lands: a name with a `/` would
            # route it elsewhere (`tasks/send` back here, over and over, until Python's
            # recursion limit; `echo/v1/message:send` into the HTTP+JSON binding).
            reason = f"no A2A agent named {agent[:100]!r} in bastion.yaml"
            payload = jsonrpc_error(None, -32602, "bastion.unknown_agent", {"reason": reason})
            await self._refuse(
                send, action, started, 404, "bastion.unknown_agent", reason, principal, body=payload, trace=trace
            )
            trace.finish()
            return
        trace.finish()
        path = f"/a2a/{agent}"
        out_headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-length", b"a2a-version")]
        out_headers += [(b"content-length", str(len(translated)).encode()), (b"a2a-version", b"0.3")]
        inner = {**scope, "path": path, "raw_path": path.encode(), "headers": out_headers}
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": translated, "more_body": False}
            return dict(await receive())

        await self.handle(inner, replay, send, agent)

    # --- JSON-RPC ----------------------------------------------------------------------

    async def _jsonrpc(self, request: _Request, action: policy_pb2.Action, principal: Principal) -> None:
        msg_id: Any = None
        try:
            body = await read_body(request.receive, request.headers, self._max_body, self._body_timeout)
            self._budget.refuse_unparsed(body, "the request")
            msg_id, message = parse_jsonrpc(body)
            call = classify_jsonrpc(msg_id, message, self._budget, body)
            request.trace.message(Message(message, call.wire_method, msg_id, call.params))
            action.method, action.kind, action.tool = call.wire_method, call.method.kind, call.method.name
            caller = await self._caller(principal, request, call.params)
            request.tenant = request_tenant(call.params)
            await self._check_task(request, call.method, call.params)
            if self._open_page(request, call.method, call.params):
                body = orjson.dumps(message)  # the agent gets its own cursor back (no key repeats: checked)
        except (ProtocolError, StoreError) as exc:
            # JSON-RPC errors travel in a 200 like the agent's own; transport-level ones
            # (too large, too slow, store down) keep their HTTP status.
            status = 200 if exc.http_status == 400 else exc.http_status
            text = _JSONRPC_MESSAGES.get(exc.jsonrpc_code, exc.code)
            payload = jsonrpc_error(msg_id, exc.jsonrpc_code, text, {"reason": str(exc)})
            await self._refuse(
                request.send,
                action,
                request.started,
                status,
                exc.code,
                str(exc),
                principal,
                body=payload,
                trace=request.trace,
            )
            return
        decided = await self._decide(request, caller, call.wire_method, call.method, call.params, body)
        if not decided.outcome.allowed:
            payload = envelope(msg_id, call.wire_method, decided, request.started)
            await send_bytes(request.send, 200, payload, JSON + node_headers(decided.record))
            return
        path = request.agent.pool.path.encode()
        await self._forward(
            request,
            decided.record,
            b"POST",
            path,
            body,
            msg_id,
            streaming=call.method.streaming,
            card_answer=call.method.name == _EXTENDED_CARD,
        )

    # --- HTTP+JSON ---------------------------------------------------------------------

    async def _rest(self, request: _Request, action: policy_pb2.Action, principal: Principal) -> None:
        http_method: str = request.scope["method"]
        query: bytes = request.scope.get("query_string", b"")
        try:
            body = b""
            if http_method == "POST":
                body = await read_body(request.receive, request.headers, self._max_body, self._body_timeout)
            call = classify_rest(http_method, request.suffix[1:], query, body, self._budget)
            action.method, action.kind, action.tool = f"{http_method} /{call.route}", call.method.kind, call.method.name
            caller = await self._caller(principal, request, call.arguments)
            request.tenant = call.tenant
            await self._check_task(request, call.method, call.arguments)
            if self._open_page(request, call.method, call.arguments):
                pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
                opened = [(key, call.arguments[key] if key in _PAGE_TOKEN else value) for key, value in pairs]
                query = urlencode(opened).encode("latin-1")
        except (ProtocolError, StoreError) as exc:
            status = 404 if exc.jsonrpc_code == -32601 else exc.http_status
            await self._refuse(
                request.send, action, request.started, status, exc.code, str(exc), principal, trace=request.trace
            )
            return
        decided = await self._decide(request, caller, action.method, call.method, call.arguments, body)
        if not decided.outcome.allowed:
            error = orjson.loads(envelope(None, action.method, decided, request.started))["error"]
            data, message = error["data"], error["message"]
            # A limit is a 429 (try later); a policy block or a pending approval a 403.
            status = 429 if error["code"] == LIMIT_EXCEEDED else 403
            payload = rest_error(status, message, f"{message}: {data['reason']}", data)
            await send_bytes(request.send, status, payload, JSON + node_headers(decided.record))
            return
        path = request.agent.pool.path.rstrip("/").encode() + request.suffix.encode("latin-1")
        path += b"?" + query if query else b""
        await self._forward(
            request,
            decided.record,
            http_method.encode(),
            path,
            body,
            None,
            streaming=call.method.streaming,
            card_answer=call.method.name == _EXTENDED_CARD,
        )

    # --- the card ----------------------------------------------------------------------

    async def _card(self, request: _Request, action: policy_pb2.Action, principal: Principal) -> None:
        action.kind, action.method = policy_pb2.A2A_CARD, f"GET {request.suffix}"
        try:
            caller = await self._caller(principal, request, {})
        except (ProtocolError, StoreError) as exc:
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
        record = self._enforcer.record(caller, action, request.started, graph_pb2.OBSERVATION)
        if not await self._observe_or_refuse(request.send, record):
            return
        agent = request.agent
        path = agent.pool.path.rstrip("/").encode() + request.suffix.encode("latin-1")
        # Identity encoding only: the card is parsed to be rewritten.
        headers = self._upstream_headers(request, record, drop=frozenset({b"accept-encoding"}))
        try:
            response = await agent.pool.request(b"GET", path, headers, b"")
            data = await response.read(agent.pool.timeout, limit=MAX_CARD_BYTES)
            if (refused := redirect(response)) is not None:  # to the agent's own card (`_a2a_relay`)
                raise UpstreamError(refused)
            out = relayed_headers(response)
            if 200 <= response.status < 300:  # the client reads any 2xx as the card, not only a 200
                data = rewritten_card(data, agent.url, _bastion_url(request))
        except UpstreamError as exc:
            await self._upstream_failed(request, record, exc, None)
            return
        await send_bytes(request.send, response.status, data, with_length(out, data) + node_headers(record))

    # --- shared stages -----------------------------------------------------------------

    async def _check_task(self, request: _Request, method: A2aMethod, arguments: dict[str, Any]) -> None:
        """Another principal's task is not this caller's to read, cancel or redirect."""
        for task in named_tasks(method, arguments):
            if not await may_reach(self._tracker.owners, request.name, request.tenant, task, request.principal):
                raise TaskForeign(f"task {task[:100]!r} of agent {request.name!r} was created by another principal")

    async def _own_tasks(self, request: _Request, data: bytes, *, first_page: bool) -> bytes:
        """A ListTasks answer shows no task another principal created through Bastion, and
        its page token is sealed to the caller."""
        me = owner_key(request.principal)

        async def visible(task: str) -> bool:
            return await may_reach(self._tracker.owners, request.name, request.tenant, task, request.principal)

        return await filter_tasks(
            data, visible, lambda token: self._pages.seal(token, f"{request.name}/{me}"), first_page=first_page
        )

    def _open_page(self, request: _Request, method: A2aMethod, arguments: dict[str, Any]) -> bool:
        """A ListTasks `pageToken` opened in place (`_a2a_pages`); True when there was one."""
        if method.name != "ListTasks":
            return False
        token = spelled(arguments, "pageToken")
        if token is None or token == "":
            return False
        if not isinstance(token, str):
            raise InvalidParams("pageToken must be a string")
        opened = self._pages.open(token, f"{request.name}/{owner_key(request.principal)}")
        for name in _PAGE_TOKEN:  # under the spelling the caller used (`spelled`)
            if name in arguments:
                arguments[name] = opened
        request.paged = True
        return True

    def _task_sniffer(self, request: _Request, record: Record) -> TaskSniffer | None:
        """For a send: claim every task its answer names for the sender. For a read of one
        task (GetTask, SubscribeToTask, CancelTask): check that every task its answer names
        is one the caller may reach — the request's task was checked before it went out, but
        an agent may answer with another (a confused or hostile agent, a task id it maps to
        another). Either way an answer naming a task another principal holds (the agent
        continuing that task, say from a reused contextId) is not relayed, since it would
        show the sender that task's state."""
        owners, name, tenant, principal = self._tracker.owners, request.name, request.tenant, request.principal
        if record.action.kind == policy_pb2.A2A_SEND:
            verb, decide = "record", partial(claim, owners, name, tenant)
        elif record.action.tool in _TASK_READS:
            verb, decide = "check", partial(may_reach, owners, name, tenant)
        else:
            return None

        async def found(task: str) -> None:
            try:
                held = await decide(task, principal)
            except StoreError as exc:  # fail closed: unowned, anyone could read it next
                log.error(f"cannot {verb} the owner of an A2A task", extra={"fields": {"error": str(exc)}})
                raise UpstreamError(f"Bastion cannot {verb} who owns the task its answer names") from exc
            if not held:
                fields = {"agent": name, "task": task[:100], "caller": record.agent_id}
                log.warning("an A2A answer named another principal's task", extra={"fields": fields})
                # The task's id stays out of the reason: it goes to the sender.
                raise UpstreamError("its answer names a task another principal created through Bastion")

        return TaskSniffer(found)

    async def _caller(self, principal: Principal, request: _Request, arguments: dict[str, Any]) -> Caller:
        header = request.headers.get(b"bastion-workflow-id")
        named = header.decode("utf-8", "replace") if header else None
        delegation = self._tracker.delegation(request.headers.get(DELEGATION), principal, named)
        if delegation is not None:  # an agent delegating further, in the workflow it works for
            return Caller(principal, delegation.workflow_id, delegation.workflow_id, request.name, delegation)
        workflow = await self._tracker.resolve(
            header.decode("utf-8", "replace") if header else None, workflow_hint(arguments), None, principal
        )
        return Caller(principal, workflow, workflow, request.name)

    async def _decide(
        self, request: _Request, caller: Caller, wire: str, method: A2aMethod, arguments: dict[str, Any], body: bytes
    ) -> Decided:
        state = self._tracker.state(caller.principal, caller.workflow_id)
        task = task_hint(arguments)
        if isinstance(task, str) and task and not state.task:
            self._enforcer.record_task(caller, state.set_task(task), request.started)
        decided = await self._enforcer.enforce(
            caller,
            state,
            wire,
            (target(request.name, method, arguments),),
            body=body,
            started=request.started,
        )
        self._metrics.governance.observe(time.perf_counter() - request.t0)
        request.trace.decided(decided)
        return decided[0]

    def _upstream_headers(self, request: _Request, record: Record, drop: frozenset[bytes] = frozenset()) -> Headers:
        headers = [(k, v) for k, v in request.scope["headers"] if k not in _DROP_REQUEST and k not in drop]
        headers.append((b"accept-encoding", b"identity"))
        # Workflow propagation: the callee (or its framework) may name this workflow on
        # its own calls through Bastion, and the sending node for the delegation edge;
        # the signed delegation lets it join this workflow (`_delegation.py`).
        headers += node_headers(record)
        delegations = self._tracker.delegations
        if delegations is not None and record.action.kind == policy_pb2.A2A_SEND:
            token = delegations.issue(
                tenant=record.tenant,
                delegator=record.agent_id,
                workflow_id=record.workflow_id,
                node_id=record.node_id,
                agent=request.name,
            )
            headers.append((DELEGATION, token))
        return request.trace.upstream(headers, request.agent.pool, request.scope["method"], record)

    async def _forward(
        self,
        request: _Request,
        record: Record,
        method: bytes,
        path: bytes,
        body: bytes,
        msg_id: Any,
        *,
        streaming: bool,
        card_answer: bool = False,
    ) -> None:
        """Send the request to the agent and relay its answer as it comes; journal how
        it ended (DESIGN §3 result event)."""
        pool = request.agent.pool
        headers = self._upstream_headers(request, record)
        # A task's event stream may stay quiet as long as the task works; a single
        # answer is bounded like any upstream answer.
        idle = None if streaming else pool.timeout
        tap = ResultTap(msg_id)
        sniffer = self._task_sniffer(request, record)
        t_up = time.perf_counter()
        sse = relaying = False
        response: UpstreamResponse | None = None
        try:
            response = await pool.request(method, path, headers, body)
            tap.status = response.status
            self._metrics.upstream.observe(time.perf_counter() - t_up)
            ok = 200 <= response.status < 300  # the client reads any 2xx as the answer
            if (refused := redirect(response)) is not None:  # to the agent itself (`_a2a_relay`)
                response.release()
                raise UpstreamError(refused)
            if ok and (opaque := unreadable_answer(response)) is not None:
                # The client's httpx decodes gzip and the declared charset; the task sniffer,
                # the ListTasks filter, the card rewrite and provenance read the raw bytes (an
                # attacker's probe listed another caller's tasks through a gzip answer).
                response.release()
                raise UpstreamError(f"it answered with {opaque}, which Bastion cannot read (it asks for none)")
            if ok and (ambiguous := ambiguous_stream(response, streaming)) is not None:
                response.release()
                raise UpstreamError(f"it answered with {ambiguous}")
            out = relayed_headers(response) + node_headers(record)
            # Read as the client reads it: a 2xx answer to a method that does not stream is one
            # JSON body whatever its type says (a ListTasks page sent as `text/event-stream`
            # was relayed as a stream, unfiltered, and a send's task went unclaimed).
            sse = response.is_sse and (streaming or not ok)
            # Only an event stream is relayed as it comes: a single answer is read whole, with
            # or without a Content-Length — the sniffer, the ListTasks filter and the card
            # rewrite need all of it (an attacker's probe sent them chunked, unread).
            if response.header(b"content-length") is not None or not sse:
                data = await response.read(idle)
                tap.feed(data)
                if sniffer is not None and ok:
                    await sniffer.whole(data, sse=sse)
                if record.action.tool == "ListTasks" and ok:
                    data = await self._own_tasks(request, data, first_page=not request.paged)
                if card_answer and ok:
                    # The extended card names the agent's endpoints too: moved like the public one.
                    jsonrpc = request.suffix in ("", "/")
                    data = rewrite_card_answer(
                        data, jsonrpc=jsonrpc, agent_url=request.agent.url, bastion_url=_bastion_url(request)
                    )
                await send_bytes(request.send, response.status, data, with_length(out, data))
                relayed = True
            else:
                chunks = tap.watch(response.stream(idle))
                if sniffer is not None and ok:
                    chunks = sniffer.watch(chunks, lambda exc: self._error_event(request, exc, msg_id))
                relaying = True
                relayed = await send_stream(request.send, request.receive, response.status, out, chunks)
        except UpstreamError as exc:
            await self._upstream_failed(request, record, exc, msg_id, answered=relaying)
            outcome = graph_pb2.TIMEOUT if isinstance(exc, UpstreamTimeout) else graph_pb2.UPSTREAM_ERROR
            self._record_result(request, record, tap.result(outcome, detail=self._reason(request, exc)))
            return
        finally:
            if response is not None:  # a stream stopped midway leaves its readers suspended
                response.release()
        outcome = graph_pb2.COMPLETED if relayed else graph_pb2.CLIENT_GONE
        detail = "" if relayed else "the client went away before the answer was relayed"
        self._record_result(request, record, tap.result(outcome, sse=sse, detail=detail), tap.answer)
        self._metrics.total.observe(time.perf_counter() - request.t0)

    async def _upstream_failed(
        self, request: _Request, record: Record, exc: UpstreamError, msg_id: Any, *, answered: bool = False
    ) -> None:
        request.trace.upstream_failed(exc)
        log.warning("A2A agent failed", extra={"fields": {"agent": request.name, "error": str(exc)}})
        if answered:
            return  # the stream had begun: it was ended, nothing more can be said
        payload = self._failure(request, exc, msg_id)
        await send_bytes(request.send, exc.http_status, payload, JSON + node_headers(record))

    def _failure(self, request: _Request, exc: UpstreamError, msg_id: Any) -> bytes:
        """The answer for an agent that failed, in the binding's error shape."""
        reason = self._reason(request, exc)
        if request.suffix in ("", "/"):
            return jsonrpc_error(msg_id, exc.jsonrpc_code, "UPSTREAM_UNAVAILABLE", {"reason": reason})
        return rest_error(exc.http_status, "UPSTREAM_UNAVAILABLE", reason, {})

    def _error_event(self, request: _Request, exc: UpstreamError, msg_id: Any) -> bytes:
        """The event ending a stream Bastion stops relaying (`TaskSniffer.watch`); the
        error then ends the relay, and is logged and journaled as any agent's failure."""
        return error_event(self._failure(request, exc, msg_id))

    @staticmethod
    def _reason(request: _Request, exc: UpstreamError) -> str:
        return f"agent {request.name!r}: {public_reason(str(exc))}"

    def _record_result(
        self, request: _Request, record: Record, result: graph_pb2.ActionResult, answer: Any = None
    ) -> None:
        request.trace.result(result)
        self._enforcer.record_results((record,), result, answer)

    async def _observe_or_refuse(self, send: Send, record: Record) -> bool:
        try:
            self._enforcer.observe(record)
        except JournalError as exc:
            log.error("journal append failed; refusing", extra={"fields": {"error": str(exc)}})
            await send_bytes(send, 503, rest_error(503, "JOURNAL_UNAVAILABLE", str(exc), {}), JSON)
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
            body = rest_error(status, code, reason, {"violation_id": violation_id} if violation_id else {})
        await send_bytes(send, status, body, JSON + (extra_headers or []))


#: Headers whose second copy could be read differently by Bastion and the agent.
_A2A_SINGLE = frozenset({b"a2a-version"})


def _check_a2a_single_headers(headers: Headers) -> None:
    seen = [name for name, _ in headers if name in _A2A_SINGLE]
    if len(seen) != len(set(seen)):
        raise InvalidRequest("header 'a2a-version' was sent more than once; send it once")


def _agent(value: A2aAgent | UpstreamPool) -> A2aAgent:
    if isinstance(value, A2aAgent):
        return value
    return A2aAgent(url=f"http://{value.authority.decode('latin-1')}{value.path}", pool=value)


def _bastion_url(request: _Request) -> str:
    host = request.headers.get(b"host", b"").decode("latin-1")
    return f"{request.scope.get('scheme', 'http')}://{host}/a2a/{request.name}"
