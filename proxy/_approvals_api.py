"""The proxy's approval routes (DESIGN §4), for operators; off the hot path.

    GET  /v1/approvals[?state=pending|approved|denied|used|expired&agent=ID&limit=N&before=T]
                                         newest first; `next_before` pages on
    GET  /v1/approvals/{id}              one request
    POST /v1/approvals/{id}/approve      {"reason": "..."} optional
    POST /v1/approvals/{id}/deny         {"reason": "..."} optional

Reads need role operator, admin or auditor; decisions operator or admin (an agent's
token or API key has no role: 403). Operators and auditors see their own tenant's
requests, admins every tenant's; another tenant's id is 404, as is an id that was never
issued. Nobody decides a request for a call they made themselves. Each decision is
journaled (a VERIFICATION node in the call's workflow, caused by the blocked call)
before the request changes state; a journal failure leaves it pending (503).
Decisions on one request are taken one at a time, so concurrent ones journal one node
and the rest get 409. A decision journaled but refused by the store (another replica
decided first, between the check and the change) gets a second node, `…/superseded`,
caused by the first and saying so; one the store fails to confirm (503) gets
`…/unconfirmed`, likewise: no decision node is left that looks as if it took effect
when it may not have.

`QueueApi` (`_queue_api.py`) is this handler with the names of the verifier's queue
(`/v1/queue`, release/reject): one implementation of roles, tenancy and journaling.

Errors use the services' error body `{"error": {"code", "message"}}`: 400 bad query,
401/403 auth, 404 unknown id or route, 405 method, 409 not pending (decided, used,
expired), 413 body over 4 KiB, 422 body not a JSON object with only `reason` (a string
of at most 1000 characters), 503 journal or store unavailable.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import sqlite3
import time
from typing import Any
from urllib.parse import parse_qs

from bastion._authz import CHANGE, READ, identify, require
from bastion._errors import (
    BastionError,
    Conflict,
    ForbiddenError,
    InvalidInput,
    InvalidQuery,
    JournalError,
    StoreError,
)
from bastion._hosts import HostCheck
from bastion._identifiers import InvalidIdentity, check_identifier
from bastion._identity import Principal, TokenVerifier
from bastion._json import loads_strict
from bastion.v1 import graph_pb2, policy_pb2

from ._approvals import APPROVAL, STATES, Approval, Approvals, not_found, not_pending, valid_id
from ._asgi import Receive, Scope, Send, authorization_values, read_body, send_json
from ._enforcer import Enforcer
from ._mcp_http import http_error
from ._recorder import Record
from ._workflows import new_id

log = logging.getLogger("bastion.proxy")

PREFIX = "/v1/approvals"
_MAX_BODY = 4096
_MAX_REASON = 1000
_MAX_LIMIT = 500
_MAX_QUERY = 2048
_ADMIN = "admin"


class ApprovalsApi:
    #: (method, path template) of every route this handler serves, for route enumeration.
    ROUTES = (
        ("GET", PREFIX),
        ("GET", PREFIX + "/{approval_id}"),
        ("POST", PREFIX + "/{approval_id}/approve"),
        ("POST", PREFIX + "/{approval_id}/deny"),
    )
    # What a subclass serving another kind of request changes (`_queue_api.py`).
    PREFIX = PREFIX
    KIND = APPROVAL
    NOUN = "approval"
    #: Step in the path → approve (True) or deny (False).
    STEPS = {"approve": True, "deny": False}
    #: `?state=` as the routes name it → the store's state.
    STATE_NAMES = {state: state for state in STATES}

    def view(self, item: Approval) -> dict[str, Any]:
        return item.view()

    def __init__(
        self, *, tokens: TokenVerifier, store: Approvals, enforcer: Enforcer, hosts: HostCheck, body_timeout: float
    ) -> None:
        self._tokens = tokens
        self._store = store
        self._enforcer = enforcer
        self._hosts = hosts
        self._body_timeout = body_timeout
        #: Request id -> (lock, callers holding or waiting for it): one decision at a time.
        self._deciding: dict[str, tuple[asyncio.Lock, int]] = {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.time()
        callers: list[Principal] = []
        try:
            status, payload = await self._route(scope, receive, callers)
        except BastionError as exc:
            status, payload = exc.http_status, http_error(exc.code, str(exc))
        except sqlite3.Error as exc:
            log.error("approval store failed", extra={"fields": {"error": str(exc)}})
            status, payload = 503, http_error("bastion.store", "approval store unavailable")
        if status >= 400:
            # Refusals are audited like the proxy's others (workflow `bastion.rejected`):
            # guessed ids and agents trying operator routes must show up.
            error = payload["error"]
            caller = callers[0] if callers else None
            violation_id = self._enforcer.refuse_request(
                scope["method"], scope["path"], started, error["code"], error["message"], caller
            )
            if violation_id:
                error["violation_id"] = violation_id
        extra = [(b"www-authenticate", b"Bearer")] if status == 401 else None
        if status == 405:
            extra = [(b"allow", b"GET" if scope["path"].count("/") <= 3 else b"POST")]
        await send_json(send, status, payload, extra)

    async def _route(self, scope: Scope, receive: Receive, callers: list[Principal]) -> tuple[int, Any]:
        refusal = self._hosts.refusal(scope["headers"])
        if refusal is not None:
            return 403, http_error("bastion.host_not_allowed", refusal)
        path: str = scope["path"]
        prefix = self.PREFIX
        parts = path[len(prefix) :].strip("/").split("/") if path != prefix else []
        method = scope["method"]
        bad_id = bool(parts) and not valid_id(parts[0], self.KIND)
        if len(parts) > 2 or bad_id or (len(parts) == 2 and parts[1] not in self.STEPS):
            return 404, http_error("bastion.not_found", f"no route for {path[:200]}")
        if len(parts) < 2:
            if method not in ("GET", "HEAD"):
                return 405, http_error("bastion.method_not_allowed", f"{method} {prefix}: use GET")
            principal = identify(self._tokens, authorization_values(scope))
            callers.append(principal)  # before the role check: a refused caller is named in the audit
            require(principal, READ)
            if not parts:
                return 200, await self._list(principal, scope.get("query_string", b""))
            return 200, self.view(await self._visible(principal, parts[0]))
        if method != "POST":
            return 405, http_error("bastion.method_not_allowed", f"{method} {path}: use POST")
        principal = identify(self._tokens, authorization_values(scope))
        callers.append(principal)
        require(principal, CHANGE)
        headers = dict(scope["headers"])
        reason = _reason(await read_body(receive, headers, _MAX_BODY, self._body_timeout))
        return 200, await self._decide(principal, parts[0], step=parts[1], reason=reason)

    async def _visible(self, principal: Principal, approval_id: str) -> Approval:
        approval = await asyncio.to_thread(self._store.get, approval_id)
        if approval is None or (_ADMIN not in principal.roles and approval.tenant != principal.tenant):
            raise not_found(approval_id)
        return approval

    async def _list(self, principal: Principal, query_string: bytes) -> dict[str, Any]:
        query = _query(query_string)
        state = query.get("state")
        if state is not None:
            if state not in self.STATE_NAMES:
                raise InvalidQuery(f"state must be one of {', '.join(self.STATE_NAMES)}")
            state = self.STATE_NAMES[state]
        limit = _number(query, "limit", 100, int)
        if not 1 <= limit <= _MAX_LIMIT:
            raise InvalidQuery(f"limit must be 1-{_MAX_LIMIT}")
        before = _number(query, "before", None, float)
        tenant = None if _ADMIN in principal.roles else principal.tenant
        items = await asyncio.to_thread(
            functools.partial(
                self._store.list,
                tenant=tenant,
                state=state,
                agent_id=query.get("agent"),
                limit=limit,
                before=before,
                kind=self.KIND,
            )
        )
        return {
            "items": [self.view(item) for item in items],
            "next_before": items[-1].created_at if len(items) == limit else None,
        }

    async def _decide(self, principal: Principal, approval_id: str, *, step: str, reason: str) -> dict[str, Any]:
        lock, holders = self._deciding.get(approval_id, (asyncio.Lock(), 0))
        self._deciding[approval_id] = (lock, holders + 1)
        try:
            async with lock:
                return await self._decide_alone(principal, approval_id, step=step, reason=reason)
        finally:
            lock, holders = self._deciding.pop(approval_id)
            if holders > 1:
                self._deciding[approval_id] = (lock, holders - 1)

    async def _decide_alone(self, principal: Principal, approval_id: str, *, step: str, reason: str) -> dict[str, Any]:
        approve = self.STEPS[step]
        approval = await self._visible(principal, approval_id)
        if approval.agent_id == principal.subject and approval.tenant == principal.tenant:
            raise ForbiddenError(f"{principal.subject!r} may not decide a {self.NOUN} of its own call")
        if approval.state != "pending":
            raise not_pending(approval_id, self.view(approval)["state"])
        node_id = self._journal(principal, approval, step=step, reason=reason)
        tenant = None if _ADMIN in principal.roles else principal.tenant
        try:
            decided = await asyncio.to_thread(
                self._store.decide,
                approval_id,
                approve=approve,
                by=principal.subject,
                reason=reason,
                node_id=node_id,
                tenant=tenant,
            )
        except Conflict as exc:
            superseded = f"did not take effect: {exc}"
            with contextlib.suppress(JournalError):  # logged; the 409 is still the answer
                self._journal(principal, approval, step="superseded", reason=superseded, parent=node_id)
            raise
        except (StoreError, sqlite3.Error) as exc:
            # The decision is journaled but the store did not confirm it: say so beside it,
            # or the trail reads as if it took effect (a later deny would read "approved,
            # then denied"). "May not": a Redis timeout can come after the write was applied.
            unconfirmed = (
                f"not confirmed by the store ({type(exc).__name__}): it may not have taken "
                f"effect; the state is what GET {self.PREFIX}/{approval_id} shows"
            )
            with contextlib.suppress(JournalError):  # logged; the 503 is still the answer
                self._journal(principal, approval, step="unconfirmed", reason=unconfirmed, parent=node_id)
            raise
        return self.view(decided)

    def _journal(
        self, principal: Principal, approval: Approval, *, step: str, reason: str, parent: str | None = None
    ) -> str:
        """The decision as a VERIFICATION node of the call's workflow, caused by the blocked
        call (or by the decision node `parent` it is about); raises JournalError."""
        action = policy_pb2.Action(
            kind=policy_pb2.MCP_REQUEST,
            server=str(approval.action.get("server", "")),
            method=f"bastion.{self.KIND}/{step}",
        )
        action.arguments.update(
            {f"{self.KIND}_id": approval.approval_id, "decided_by": principal.subject, "reason": reason}
        )
        record = Record(
            workflow_id=approval.workflow_id,
            session_id="",
            agent_id=approval.agent_id,
            tenant=approval.tenant,
            action=action,
            started_at=time.time(),
            node_id=new_id(),
            node_type=graph_pb2.VERIFICATION,
            parent_ids=(parent or approval.node_id,),
        )
        try:
            self._enforcer.observe(record)
        except JournalError as exc:
            log.error("journal append of an approval decision failed", extra={"fields": {"error": str(exc)}})
            raise
        return record.node_id


def _query(query_string: bytes) -> dict[str, str]:
    """The query's parameters, each at most once and none blank (`?state=` filtered nothing
    silently): 400 otherwise."""
    if len(query_string) > _MAX_QUERY:
        raise InvalidQuery(f"query string longer than {_MAX_QUERY} bytes")
    try:
        parsed = parse_qs(query_string.decode("utf-8"), keep_blank_values=True, max_num_fields=16)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidQuery(f"malformed query string: {exc}") from None
    unknown = set(parsed) - {"state", "agent", "limit", "before"}
    if unknown:
        raise InvalidQuery(f"unknown query parameter(s): {', '.join(sorted(unknown))[:200]}")
    if any(len(values) > 1 for values in parsed.values()):
        raise InvalidQuery("each query parameter at most once")
    query = {key: values[0] for key, values in parsed.items()}
    for key, value in query.items():
        if not value:
            raise InvalidQuery(f"{key} must not be empty")
    if "agent" in query:
        try:
            check_identifier("agent", query["agent"])
        except InvalidIdentity as exc:
            raise InvalidQuery(str(exc)) from None
    return query


#: What `limit` and `before` are written as: ASCII digits (Python's int() and float() also
#: take `1_0`, `+5`, full-width digits, `nan`, `inf` and `1e400`), `before` a time in seconds
#: as `next_before` gives it.
_NUMBERS = {"limit": re.compile(r"[0-9]{1,6}"), "before": re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,9})?")}


def _number(query: dict[str, str], key: str, default: Any, kind: type) -> Any:
    if key not in query:
        return default
    if _NUMBERS[key].fullmatch(query[key]) is None:
        raise InvalidQuery(f"{key} must be a number written in digits" + (" (seconds)" if key == "before" else ""))
    return kind(query[key])


def _reason(body: bytes) -> str:
    if not body.strip():
        return ""
    try:
        # Strict, as the policy service's bodies: `{"reason": "a", "reason": "b"}` would
        # journal one reason while a reviewer of the body reads the other.
        payload = loads_strict(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"body is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidInput("body must be a JSON object")
    unknown = set(payload) - {"reason"}
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))[:200]}; only 'reason' is accepted")
    reason = payload.get("reason", "")
    if not isinstance(reason, str) or len(reason) > _MAX_REASON:
        raise InvalidInput(f"reason must be a string of at most {_MAX_REASON} characters")
    return reason
