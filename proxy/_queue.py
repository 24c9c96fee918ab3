"""The durable queue (DESIGN §6): a call is parked for an operator instead of being
blocked or allowed, when the verifier could not score it and the agent's `verifier:`
fallback is queue, or when the policy's rule says `effect: queue`.

A durable queue on the approvals store (`_approvals.py`, kind QUEUE: ids `que_…`, bound
to the exact call like an approval, surviving restarts, SQLite or Redis). The stage sees
outcomes that `combine` ended with `bastion.verifier_queued` (the policy allowed the
call; the verifier did not answer, and the agent's fallback is queue) and outcomes whose
policy decision is QUEUE (the entry then names the rule):

    parked   ──release──▶ approved ──identical retry──▶ used (forwarded once)
       │                     └── while the verifier still cannot score it
       └──reject──▶ denied: the retry is refused (-32003) until the entry expires

The answer while parked is -32004 `QUEUED` with `data.queue_id`. A released entry stands
for the verifier's missing say only: when the verifier answers the retry, its answer
decides, and the release stays unused. A rule's queue is the policy's say, released by an
operator like an approval: the retry passes once whatever the verifier then answers (the
operator saw the call and the reasons it was parked with). Every step is journaled: the parked call (a
blocked event naming the queue id), the operator's release or rejection (a VERIFICATION
node, `_queue_api.py`), and the forwarded retry (linked VERIFIED_BY to that decision).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import sqlite3
from typing import Any

from bastion._errors import Conflict, StoreError
from bastion._verdicts import VERIFIER_QUEUED
from bastion.v1 import graph_pb2, policy_pb2

from ._approvals import QUEUE, Approval, Approvals, Request, action_digest
from ._enforcer import Pending
from ._envelope import APPROVAL_REQUIRED
from ._pipeline import Outcome
from ._recorder import iso
from ._redact import Redactor
from ._stages import UNSHOWABLE, action_view

log = logging.getLogger("bastion.proxy")

QUEUE_UNAVAILABLE = "bastion.queue_unavailable"
#: The -32004 message of a parked call (an approval's is APPROVAL_REQUIRED).
QUEUED = "QUEUED"
#: How the API and the agent name the store's states of a queue entry.
PUBLIC_STATES = {
    "pending": "pending",
    "approved": "released",
    "denied": "rejected",
    "used": "used",
    "expired": "expired",
}


class QueueStage:
    def __init__(self, store: Approvals, *, redactor: Redactor | None) -> None:
        self._store = store
        self._redactor = redactor

    async def __call__(self, pending: Pending, outcome: Outcome) -> Outcome:
        decision = outcome.decision
        if decision is None or outcome.allowed:
            return outcome
        if outcome.block_code == VERIFIER_QUEUED:
            rule_id, reason = VERIFIER_QUEUED, outcome.block_reason
        elif decision.effect == policy_pb2.QUEUE:
            rule_id, reason = decision.rule_id or "default", decision.reason or outcome.block_reason
        else:
            return outcome
        record = pending.record
        # Bound to what parked it: a release given for the verifier's missing say must not
        # pass the same call when a rule queues it (an attacker's probe: released during a
        # verifier outage, the identical call made again where a `when:` rule queued it, and
        # the verifier now said BLOCK, was forwarded), nor the reverse.
        request = Request(
            record.tenant,
            record.agent_id,
            action_digest(record.action, record.arguments),
            decision.policy_name,
            decision.policy_version,
            kind=QUEUE,
            origin=rule_id,
        )
        try:
            taken = await asyncio.to_thread(self._store.take, request, record.node_id)
            if taken is not None:
                return self._released(outcome, taken, record.node_id)
            view = action_view(record.action, self._redactor, record.arguments)
            if view is None:
                return dataclasses.replace(outcome, block_reason=f"{outcome.block_reason}; not queued: {UNSHOWABLE}")
            entry = await asyncio.to_thread(
                self._store.open_request,
                request,
                rule_id=rule_id,
                reason=reason,
                workflow_id=record.workflow_id,
                node_id=record.node_id,
                action=view,
            )
        except Conflict as exc:  # too many parked calls of this agent: stays a block
            return dataclasses.replace(outcome, block_reason=f"{outcome.block_reason}; not queued: {exc}")
        except (StoreError, OSError, sqlite3.Error) as exc:
            log.error("queue store failed", extra={"fields": {"error": str(exc)}})
            return dataclasses.replace(
                outcome, block_code=QUEUE_UNAVAILABLE, block_reason=f"{outcome.block_reason}; queue unavailable"
            )
        return _parked(outcome, entry)

    def _released(self, outcome: Outcome, entry: Approval, node_id: str) -> Outcome:
        by = entry.decided_by or "an operator"
        edges: tuple[tuple[str, int, str], ...] = ()
        if entry.decision_node_id:
            edges = (
                (entry.decision_node_id, graph_pb2.VERIFIED_BY, f"queued call {entry.approval_id} released by {by}"),
            )
        return dataclasses.replace(
            outcome,
            allowed=True,
            block_code="",
            block_reason=f"forwarded under queue release {entry.approval_id} ({by}); {outcome.block_reason}",
            # Only the verifier's queue stands in for a missing score; a rule's does not.
            verifier_fallback=outcome.verifier_fallback or outcome.block_code == VERIFIER_QUEUED,
            edges=edges,
            on_not_forwarded=(functools.partial(self._give_back, entry.approval_id, node_id),),
        )

    async def _give_back(self, queue_id: str, node_id: str) -> None:
        await asyncio.to_thread(self._store.give_back, queue_id, node_id)


def _parked(outcome: Outcome, entry: Approval) -> Outcome:
    state = PUBLIC_STATES[entry.state]
    data: dict[str, Any] = {"queue_id": entry.approval_id, "queue_state": state, "expires_at": iso(entry.expires_at)}
    if entry.state == "denied":
        # The operator said no: -32003 until the entry expires; retrying parks nothing new.
        why = f": {entry.decision_reason}" if entry.decision_reason else ""
        reason = f"queued call {entry.approval_id} rejected by {entry.decided_by}{why}"
        return dataclasses.replace(outcome, block_reason=reason, error_data=data)
    reason = f"{outcome.block_reason}; queued as {entry.approval_id} ({state}) for an operator to release"
    return dataclasses.replace(
        outcome, block_reason=reason, error_code=APPROVAL_REQUIRED, error_message=QUEUED, error_data=data
    )
