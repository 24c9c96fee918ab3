"""The enforcer's stages after the decision (`Enforcer(after=...)`): approvals, then the
identity check, then limits.

ApprovalStage  a `require_approval` decision parks the call as an approval request
               (`_approvals.py`) and answers -32004 APPROVAL_REQUIRED with its id; the
               agent's identical retry after an operator approved it is let through
               once. The operator has reviewed the exact call, so an approval stands
               for policy's and the verifier's say on it.
IdentityStage  while the proxy has not yet received the revocation list from the policy
               service (started while it was down; IdentityWatch reconnects within 2 s
               of its return, Decide at once), an agent's token cannot be checked
               against it: nothing is forwarded (-32003, `bastion.auth.revocations_unavailable`),
               approved or released calls included (their approval is given back).
               Blocks the decision already made (policy down: `bastion.policy_unavailable`)
               are left as they are.
LimitStage     an allowed call is admitted against its policy's `limits:` (rate,
               budget, loop) by the limiter (`_limits.py`, in-process or Redis) before
               it is forwarded; refused → -32005 with `data.kind`; the limiter failing
               → blocked (fail closed). What it reserved is refunded when the call is
               not carried out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import sqlite3
import time
from typing import Any

import orjson
from google.protobuf import json_format, struct_pb2

from bastion._apikeys import IdentityState
from bastion._errors import AuthError, Conflict, LimitsUnavailable, RevocationsUnavailable, StoreError
from bastion._identity import TokenVerifier
from bastion.v1 import graph_pb2, policy_pb2

from ._approvals import Approval, Approvals, Request, action_digest
from ._enforcer import Pending
from ._envelope import APPROVAL_REQUIRED, LIMIT_EXCEEDED, POLICY_VIOLATION
from ._limits import Limiter, LimitScope
from ._pipeline import Outcome
from ._recorder import iso
from ._redact import Redactor

log = logging.getLogger("bastion.proxy")

LIMITS_UNAVAILABLE = "bastion.limits_unavailable"
APPROVAL_STORE_UNAVAILABLE = "bastion.approvals_unavailable"
#: The caller's credential was revoked between its check and the call's forwarding.
CREDENTIAL_REVOKED = "bastion.auth.revoked"
#: Arguments shown to operators are cut above this (the digest binds the whole call).
_MAX_SHOWN_ARGUMENTS = 64 * 1024
#: How often a held call looks for an operator's decision (another replica may make it).
_POLL_S = 0.2


#: Why a call whose arguments an operator could not be shown is not put to one.
UNSHOWABLE = f"its arguments are over the {_MAX_SHOWN_ARGUMENTS} bytes an operator can be shown"


def action_view(action: policy_pb2.Action, redactor: Redactor | None, parsed: Any = None) -> dict[str, Any] | None:
    """What an operator is asked to approve: the action, its arguments redacted — as parsed
    from the request when given (`parsed`: exact integers, as the upstream will get them;
    the Struct would show 9007199254740993 as 9007199254740992.0).

    None when the arguments, redacted, are over _MAX_SHOWN_ARGUMENTS bytes: an operator
    would approve what they cannot see (an attacker's probe padded a call past the bound,
    and the journaled node is cut to a prefix too), so such a call stays blocked
    (UNSHOWABLE)."""
    view: dict[str, Any] = {"kind": policy_pb2.ActionKind.Name(action.kind), "method": action.method}
    for key in ("server", "tool", "prompt", "resource", "target_agent"):
        if value := getattr(action, key):
            view[key] = value
    if parsed is not None:
        shown = redactor.json(parsed)[0] if redactor is not None else parsed
    else:
        arguments = struct_pb2.Struct()
        arguments.CopyFrom(action.arguments)
        if redactor is not None:
            redactor.struct(arguments)
        shown = json_format.MessageToDict(arguments)
    if len(orjson.dumps(shown)) > _MAX_SHOWN_ARGUMENTS:
        return None
    view["arguments"] = shown
    return view


class ApprovalStage:
    def __init__(self, store: Approvals, *, redactor: Redactor | None, wait_s: float = 0.0) -> None:
        self._store = store
        self._redactor = redactor
        self._wait_s = wait_s

    async def __call__(self, pending: Pending, outcome: Outcome) -> Outcome:
        decision = outcome.decision
        if decision is None or decision.effect != policy_pb2.REQUIRE_APPROVAL:
            return outcome
        record = pending.record
        # Bound to the rule that asked, as a queue release is to what parked it: an approval an
        # operator gave under one rule of the version must not stand for another's say.
        request = Request(
            record.tenant,
            record.agent_id,
            action_digest(record.action, record.arguments),
            decision.policy_name,
            decision.policy_version,
            origin=decision.rule_id,
        )
        try:
            taken = await asyncio.to_thread(self._store.take, request, record.node_id)
            if taken is not None:
                return self._approved(outcome, taken, record.node_id)
            view = action_view(record.action, self._redactor, record.arguments)
            if view is None:
                why = decision.reason or "operator approval required"
                return dataclasses.replace(outcome, block_reason=f"{why}; not put to an operator: {UNSHOWABLE}")
            approval = await asyncio.to_thread(
                self._store.open_request,
                request,
                rule_id=decision.rule_id,
                reason=decision.reason,
                workflow_id=record.workflow_id,
                node_id=record.node_id,
                action=view,
            )
            if approval.state == "pending" and self._wait_s > 0:
                approval = await self._wait(approval)
                if approval.state == "approved":
                    taken = await asyncio.to_thread(self._store.take, request, record.node_id)
                    if taken is not None:
                        return self._approved(outcome, taken, record.node_id)
        except Conflict as exc:
            return dataclasses.replace(outcome, block_reason=str(exc))
        except (StoreError, OSError, sqlite3.Error) as exc:
            log.error("approval store failed", extra={"fields": {"error": str(exc)}})
            return dataclasses.replace(
                outcome, block_code=APPROVAL_STORE_UNAVAILABLE, block_reason="approval store unavailable"
            )
        return _waiting(outcome, approval)

    def _approved(self, outcome: Outcome, approval: Approval, node_id: str) -> Outcome:
        by = approval.decided_by or "an operator"
        edges: tuple[tuple[str, int, str], ...] = ()
        if approval.decision_node_id:
            edges = ((approval.decision_node_id, graph_pb2.VERIFIED_BY, f"approval {approval.approval_id} by {by}"),)
        return dataclasses.replace(
            outcome,
            allowed=True,
            block_code="",
            block_reason=f"forwarded under approval {approval.approval_id} (approved by {by})",
            edges=edges,
            on_not_forwarded=(functools.partial(self._give_back, approval.approval_id, node_id),),
        )

    async def _give_back(self, approval_id: str, node_id: str) -> None:
        await asyncio.to_thread(self._store.give_back, approval_id, node_id)

    async def _wait(self, approval: Approval) -> Approval:
        deadline = time.monotonic() + self._wait_s
        while time.monotonic() < deadline:
            await asyncio.sleep(min(_POLL_S, max(0.0, deadline - time.monotonic())))
            current = await asyncio.to_thread(self._store.get, approval.approval_id)
            if current is None:
                break
            approval = current
            if approval.state != "pending":
                break
        return approval


def _waiting(outcome: Outcome, approval: Approval) -> Outcome:
    data: dict[str, Any] = {
        "approval_id": approval.approval_id,
        "approval_state": approval.state,
        "expires_at": iso(approval.expires_at),
    }
    if approval.state == "denied":
        # The operator said no: -32003 until the request expires; retrying asks nobody again.
        why = f": {approval.decision_reason}" if approval.decision_reason else ""
        reason = f"approval {approval.approval_id} denied by {approval.decided_by}{why}"
        return dataclasses.replace(outcome, block_reason=reason, error_data=data)
    policy_reason = outcome.decision.reason if outcome.decision is not None else ""
    reason = f"{policy_reason or 'operator approval required'}; approval {approval.approval_id} is {approval.state}"
    return dataclasses.replace(
        outcome,
        block_reason=reason,
        error_code=APPROVAL_REQUIRED,
        error_message="APPROVAL_REQUIRED",
        error_data=data,
    )


class IdentityStage:
    def __init__(self, identity: IdentityState, tokens: TokenVerifier | None = None) -> None:
        """`tokens`: checks the caller's credential once more, as the last stage before
        forwarding (None: not checked again, in tests of the stage alone)."""
        self._identity = identity
        self._tokens = tokens

    async def __call__(self, pending: Pending, outcome: Outcome) -> Outcome:
        if not outcome.allowed:
            return outcome
        if not self._identity.synced:
            return _blocked(
                outcome,
                RevocationsUnavailable.code,
                "revocations not loaded: the proxy has not received the revocation list from the policy service "
                f"({self._identity.unsynced_reason}), so the caller's credential cannot be checked against it; "
                "retry once the policy service is reachable",
            )
        if self._tokens is None:
            return outcome
        # Revoked while its call was decided or waited (for an approval, a queue release):
        # revoked is revoked at forwarding.
        try:
            self._tokens.recheck(pending.caller.principal)
        except AuthError as exc:
            return _blocked(
                outcome, CREDENTIAL_REVOKED, f"the caller's credential was revoked before the call was forwarded: {exc}"
            )
        return outcome


def _blocked(outcome: Outcome, code: str, reason: str) -> Outcome:
    """`outcome` turned into a -32003 block. Releases kept: what the approval and queue stages
    took is given back (never forwarded)."""
    return dataclasses.replace(
        outcome,
        allowed=False,
        block_code=code,
        block_reason=reason,
        error_code=POLICY_VIOLATION,
        error_message="POLICY_VIOLATION",
        error_data=None,
        edges=(),
    )


class LimitStage:
    def __init__(self, limiter: Limiter) -> None:
        self._limiter = limiter

    async def __call__(self, pending: Pending, outcome: Outcome) -> Outcome:
        decision = outcome.decision
        if not outcome.allowed or decision is None or not decision.HasField("limits"):
            return outcome
        limits = decision.limits
        if not (limits.rate or limits.budget_calls or limits.budget_cost or limits.loop_same_call):
            return outcome
        record = pending.record
        scope = LimitScope(record.tenant, record.agent_id, decision.policy_name)
        digest = action_digest(record.action, record.arguments) if limits.loop_same_call else ""
        try:
            admission = await self._limiter.admit(scope, limits, cost=decision.cost, call_digest=digest)
        except LimitsUnavailable as exc:
            return Outcome(
                False,
                decision,
                outcome.score,
                LIMITS_UNAVAILABLE,
                str(exc),
                # An approval or release taken by an earlier stage goes back: the call is not forwarded.
                on_not_forwarded=outcome.on_not_forwarded,
                verifications=outcome.verifications,
            )
        if not admission.admitted:
            data: dict[str, Any] = {"kind": admission.kind}
            if admission.retry_after_s is not None:
                data["retry_after_s"] = round(admission.retry_after_s, 3)
            if limits.budget_calls or limits.budget_cost:
                data["budget"] = {
                    "calls_used": admission.calls_used,
                    "calls_limit": admission.calls_limit,
                    "cost_used": admission.cost_used,
                    "cost_limit": admission.cost_limit,
                    "window": admission.window,
                }
            return Outcome(
                False,
                decision,
                outcome.score,
                f"bastion.{admission.kind.lower()}",
                admission.reason,
                error_code=LIMIT_EXCEEDED,
                error_message=admission.kind,
                error_data=data,
                on_not_forwarded=outcome.on_not_forwarded,
                # Each chained verifier's say stays on record (Event.verifications).
                verifications=outcome.verifications,
            )
        if admission.reservation is None:
            return outcome
        refund = functools.partial(self._limiter.refund, admission.reservation)
        return dataclasses.replace(
            outcome,
            on_not_forwarded=(*outcome.on_not_forwarded, refund),
            on_upstream_failure=(*outcome.on_upstream_failure, refund),
        )
