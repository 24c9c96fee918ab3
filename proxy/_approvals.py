"""Approvals: a call that policy says `require_approval` waits for an operator (DESIGN §4).

An approval request is bound to the exact call: the tenant and agent, a digest of the
action (kind, upstream, tool/prompt/resource, method, target agent and the canonical
arguments), and the deciding policy's name and version. An operator's approval lets
exactly one retry with that binding through before the request's expiry; other
arguments, another agent, or a new policy version need a new approval.

    pending ──approve──▶ approved ──retry──▶ used
       │                    │
       └──deny──▶ denied    └──expires_at──▶ expired (read as such; never forwarded)

Two stores keep them, with one contract (`Approvals`): `ApprovalStore` here, SQLite (WAL)
under $BASTION_HOME, and `RedisApprovalStore` (`_approvals_redis.py`) for replicas on
separate disks (BASTION_REDIS_URL). In both, approvals survive a proxy restart and each
transition is atomic: the one-use `take` is a single conditional UPDATE here, one Lua
script there, so two concurrent retries (even from two proxy processes) cannot both take it.
In both, a request an operator decided is kept `retention_s` (7 days) past its expiry,
one nobody decided `ttl` past it (listed as expired meanwhile), and then removed: what an
agent alone can make the store hold is at most twice its cap of open requests (an
attacker's probe: 1,000 requests of 64 KiB each per ttl, kept 7 days, is 11 GB per agent).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson
from google.protobuf import json_format

from bastion._errors import Conflict, NotFound
from bastion.v1 import policy_pb2

#: What a request is for: an operator's approval of a `require_approval` call, or the
#: release of a call parked by a verifier `fallback: queue` (`_queue.py`). Both live in
#: one store, told apart by the id's prefix and bound apart (`Request.binding`), so an
#: approval never releases a queued call nor the other way round.
APPROVAL = "approval"
QUEUE = "queue"
_PREFIXES = {APPROVAL: "apr_", QUEUE: "que_"}
_IDS = {kind: re.compile(rf"^{prefix}[0-9a-f]{{32}}$") for kind, prefix in _PREFIXES.items()}
STATES = ("pending", "approved", "denied", "used", "expired")
#: Open requests one agent may have at once; past it the call is blocked instead of
#: filling the operators' queue (and the store) with requests.
MAX_PENDING_PER_AGENT = 1000
#: How long a decided request is kept after it expired (listed, readable), in both stores.
RETENTION_S = 7 * 86400
#: Requests past their keeping removed per new request and kind of state: more than one, so the store
#: shrinks back after a burst, few enough to keep each insert cheap.
_PURGE_BATCH = 8

_SCHEMA = """
CREATE TABLE IF NOT EXISTS approvals (
    approval_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    binding TEXT NOT NULL,
    policy_name TEXT NOT NULL,
    policy_version INTEGER NOT NULL,
    rule_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    workflow_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    action TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    decided_by TEXT,
    decided_at REAL,
    decision_reason TEXT,
    decision_node_id TEXT,
    used_at REAL,
    used_node_id TEXT
);
CREATE INDEX IF NOT EXISTS approvals_binding ON approvals (binding, state);
CREATE INDEX IF NOT EXISTS approvals_listing ON approvals (tenant, created_at);
CREATE INDEX IF NOT EXISTS approvals_pending ON approvals (tenant, agent_id, state, expires_at);
CREATE INDEX IF NOT EXISTS approvals_purge ON approvals (state, expires_at);
"""


def action_digest(action: policy_pb2.Action, arguments: Any = None) -> str:
    """sha256 of what the call does, arguments in canonical form (sorted keys).

    `arguments`: the call's arguments as parsed from the request, when there are any. They
    are what is digested, not the action's Struct, whose numbers are doubles: in it
    9007199254740992 and …993 are one number, so an approval of the first was spent on the
    second, which the upstream received exactly (an attacker's probe)."""
    if arguments is None:
        arguments = json_format.MessageToDict(action.arguments) if action.HasField("arguments") else {}
    facts = {
        "kind": int(action.kind),
        "server": action.server,
        "tool": action.tool,
        "prompt": action.prompt,
        "resource": action.resource,
        "method": action.method,
        "target_agent": action.target_agent,
        "arguments": arguments,
    }
    return hashlib.sha256(orjson.dumps(facts, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _binding(
    tenant: str, agent_id: str, digest: str, policy_name: str, policy_version: int, kind: str, origin: str = ""
) -> str:
    facts: list[str | int] = [tenant, agent_id, digest, policy_name, policy_version]
    if kind != APPROVAL:  # approvals keep the bindings they were stored with
        facts.append(kind)
    if origin:
        facts.append(origin)
    return hashlib.sha256(orjson.dumps(facts)).hexdigest()


@dataclass(frozen=True, slots=True)
class Approval:
    approval_id: str
    tenant: str
    agent_id: str
    policy_name: str
    policy_version: int
    rule_id: str
    reason: str
    workflow_id: str
    node_id: str
    #: kind, server, tool…, arguments (redacted) — what the operator decides on.
    action: dict[str, Any]
    state: str
    created_at: float
    expires_at: float
    decided_by: str | None
    decided_at: float | None
    decision_reason: str | None
    decision_node_id: str | None
    used_at: float | None
    used_node_id: str | None

    def view(self) -> dict[str, Any]:
        return {
            "approval_id": self.approval_id,
            "state": self.state,
            "tenant": self.tenant,
            "agent_id": self.agent_id,
            "action": self.action,
            "policy_name": self.policy_name,
            "policy_version": self.policy_version,
            "rule_id": self.rule_id,
            "reason": self.reason,
            "workflow_id": self.workflow_id,
            "node_id": self.node_id,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "decided_by": self.decided_by,
            "decided_at": self.decided_at,
            "decision_reason": self.decision_reason,
            "used_at": self.used_at,
            "used_node_id": self.used_node_id,
        }


@dataclass(frozen=True, slots=True)
class Request:
    """What the approval stage asks the store about one call."""

    tenant: str
    agent_id: str
    digest: str
    policy_name: str
    policy_version: int
    kind: str = APPROVAL
    #: What parked the call, for a queue entry (`_queue.py`): its release stands for that say only.
    origin: str = ""

    @property
    def binding(self) -> str:
        return _binding(
            self.tenant, self.agent_id, self.digest, self.policy_name, self.policy_version, self.kind, self.origin
        )


def valid_id(approval_id: str, kind: str = APPROVAL) -> bool:
    return _IDS[kind].fullmatch(approval_id) is not None


def new_id(kind: str = APPROVAL) -> str:
    return _PREFIXES[kind] + secrets.token_hex(16)


def id_prefix(kind: str) -> str:
    return _PREFIXES[kind]


def effective_state(state: str, expires_at: float, now: float) -> str:
    """The state as read at `now`: an open or approved request past its expiry is expired."""
    return "expired" if state in ("pending", "approved") and expires_at <= now else state


def too_many_pending(agent_id: str, pending: int) -> Conflict:
    return Conflict(
        f"agent {agent_id!r} already has {pending} approval requests open; wait for operators to decide them"
    )


def _noun(approval_id: str) -> str:
    return "queued call" if approval_id.startswith(_PREFIXES[QUEUE]) else "approval"


def not_found(approval_id: str) -> NotFound:
    return NotFound(f"{_noun(approval_id)} {approval_id!r} not found")


def not_pending(approval_id: str, state: str) -> Conflict:
    return Conflict(f"{_noun(approval_id)} {approval_id!r} is {state}, not pending")


class Approvals(Protocol):
    """What the approval stage and API use of a store; semantics as `ApprovalStore`'s.

    Methods block (SQLite or a Redis round trip): call them through asyncio.to_thread.
    Failures of the backend raise StoreError (SQLite's may also raise sqlite3.Error)."""

    def take(self, request: Request, node_id: str) -> Approval | None: ...

    def give_back(self, approval_id: str, node_id: str) -> None: ...

    def open_request(
        self,
        request: Request,
        *,
        rule_id: str,
        reason: str,
        workflow_id: str,
        node_id: str,
        action: dict[str, Any],
    ) -> Approval: ...

    def decide(
        self, approval_id: str, *, approve: bool, by: str, reason: str, node_id: str, tenant: str | None
    ) -> Approval: ...

    def get(self, approval_id: str) -> Approval | None: ...

    def list(
        self,
        *,
        tenant: str | None,
        state: str | None,
        agent_id: str | None,
        limit: int,
        before: float | None,
        kind: str = APPROVAL,
    ) -> list[Approval]: ...

    def close(self) -> None: ...


class ApprovalStore:
    """Approval requests and their decisions, durable in one SQLite file."""

    def __init__(
        self,
        path: Path,
        *,
        ttl: float,
        clock: Any = time.time,
        max_pending: int = MAX_PENDING_PER_AGENT,
        retention_s: float = RETENTION_S,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._ttl = ttl
        self._clock = clock
        self._max_pending = max_pending
        self._retention_s = retention_s

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the file's write lock first, so read-then-write steps are
        # atomic against other connections (another proxy process) too.
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def take(self, request: Request, node_id: str) -> Approval | None:
        """Use an approved, unexpired approval of this exact call, once; None if there is none."""
        now = self._clock()
        with self._write() as db:
            row = db.execute(
                "SELECT approval_id FROM approvals WHERE binding = ? AND state = 'approved' AND expires_at > ? "
                "ORDER BY created_at LIMIT 1",
                (request.binding, now),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE approvals SET state = 'used', used_at = ?, used_node_id = ? WHERE approval_id = ?",
                (now, node_id, row[0]),
            )
        return self.get(row[0])

    def give_back(self, approval_id: str, node_id: str) -> None:
        """Undo `take` for a call that was not forwarded after all."""
        with self._write() as db:
            db.execute(
                "UPDATE approvals SET state = 'approved', used_at = NULL, used_node_id = NULL "
                "WHERE approval_id = ? AND state = 'used' AND used_node_id = ?",
                (approval_id, node_id),
            )

    def open_request(
        self,
        request: Request,
        *,
        rule_id: str,
        reason: str,
        workflow_id: str,
        node_id: str,
        action: dict[str, Any],
    ) -> Approval:
        """The open (pending or denied) request of this exact call, or a new pending one.

        A denied request is returned as such until it expires, so an agent retrying a
        denied call gets the denial instead of queueing the same question again."""
        now = self._clock()
        with self._write() as db:
            row = db.execute(
                "SELECT approval_id FROM approvals WHERE binding = ? AND state IN ('pending', 'denied') "
                "AND expires_at > ? ORDER BY created_at DESC LIMIT 1",
                (request.binding, now),
            ).fetchone()
            if row is not None:
                approval_id = row[0]
            else:
                (pending,) = db.execute(
                    "SELECT count(*) FROM approvals WHERE tenant = ? AND agent_id = ? AND state = 'pending' "
                    "AND expires_at > ?",
                    (request.tenant, request.agent_id, now),
                ).fetchone()
                if pending >= self._max_pending:
                    raise too_many_pending(request.agent_id, pending)
                approval_id = new_id(request.kind)
                # Without this an agent opening its cap every ttl grew the file forever (Redis's
                # keys expire by themselves); by the expiry index, never a scan.
                for states, horizon in (("'pending'", self._ttl), ("'approved', 'denied', 'used'", self._retention_s)):
                    # Only constant text is formatted into the query; values are bound.
                    db.execute(
                        "DELETE FROM approvals WHERE approval_id IN (SELECT approval_id FROM approvals "  # noqa: S608
                        f"WHERE state IN ({states}) AND expires_at < ? LIMIT ?)",
                        (now - horizon, _PURGE_BATCH),
                    )
                db.execute(
                    "INSERT INTO approvals (approval_id, tenant, agent_id, binding, policy_name, policy_version, "
                    "rule_id, reason, workflow_id, node_id, action, state, created_at, expires_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
                    (
                        approval_id,
                        request.tenant,
                        request.agent_id,
                        request.binding,
                        request.policy_name,
                        request.policy_version,
                        rule_id,
                        reason,
                        workflow_id,
                        node_id,
                        orjson.dumps(action).decode(),
                        now,
                        now + self._ttl,
                    ),
                )
        approval = self.get(approval_id)
        assert approval is not None
        return approval

    def decide(
        self, approval_id: str, *, approve: bool, by: str, reason: str, node_id: str, tenant: str | None
    ) -> Approval:
        """Approve or deny a pending request. `tenant` None: any tenant (role admin).

        Raises NotFound (unknown, or another tenant's) or Conflict (not pending any more)."""
        now = self._clock()
        with self._write() as db:
            row = db.execute("SELECT tenant, state, expires_at FROM approvals WHERE approval_id = ?", (approval_id,))
            found = row.fetchone()
            if found is None or (tenant is not None and found[0] != tenant):
                raise not_found(approval_id)
            state = effective_state(found[1], found[2], now)
            if state != "pending":
                raise not_pending(approval_id, state)
            db.execute(
                "UPDATE approvals SET state = ?, decided_by = ?, decided_at = ?, decision_reason = ?, "
                "decision_node_id = ? WHERE approval_id = ?",
                ("approved" if approve else "denied", by, now, reason, node_id, approval_id),
            )
        approval = self.get(approval_id)
        assert approval is not None
        return approval

    def get(self, approval_id: str) -> Approval | None:
        with self._lock:
            # Only constant text is formatted into the query; values are bound.
            row = self._db.execute(f"SELECT {_COLUMNS} FROM approvals WHERE approval_id = ?", (approval_id,))  # noqa: S608
            found = row.fetchone()
        return _approval(found, self._clock()) if found is not None else None

    def list(
        self,
        *,
        tenant: str | None,
        state: str | None,
        agent_id: str | None,
        limit: int,
        before: float | None,
        kind: str = APPROVAL,
    ) -> list[Approval]:
        """Newest first, of one kind; `before` pages on created_at."""
        now = self._clock()
        clauses: list[str] = ["substr(approval_id, 1, 4) = ?"]
        params: list[str | float] = [id_prefix(kind)]
        if tenant is not None:
            clauses.append("tenant = ?")
            params.append(tenant)
        if agent_id is not None:
            clauses.append("agent_id = ?")
            params.append(agent_id)
        if before is not None:
            clauses.append("created_at < ?")
            params.append(before)
        if state in ("pending", "approved"):
            clauses.append("state = ? AND expires_at > ?")
            params.extend((state, now))
        elif state == "expired":
            clauses.append("state IN ('pending', 'approved') AND expires_at <= ?")
            params.append(now)
        elif state is not None:
            clauses.append("state = ?")
            params.append(state)
        # The clauses are constants chosen above; every value is bound.
        where = " AND ".join(clauses)
        query = f"SELECT {_COLUMNS} FROM approvals WHERE {where} ORDER BY created_at DESC LIMIT ?"  # noqa: S608
        with self._lock:
            rows = self._db.execute(query, (*params, limit)).fetchall()
        return [_approval(row, now) for row in rows]


_COLUMNS = (
    "approval_id, tenant, agent_id, policy_name, policy_version, rule_id, reason, workflow_id, node_id, action, "
    "state, created_at, expires_at, decided_by, decided_at, decision_reason, decision_node_id, used_at, used_node_id"
)


def _approval(row: tuple[Any, ...], now: float) -> Approval:
    values = list(row)
    values[9] = orjson.loads(values[9])
    values[10] = effective_state(values[10], values[12], now)
    return Approval(*values)
