"""LimitStage after ApprovalStage: what the approval stage took is given back whenever the
limits stop the call, the limit store failing included (an attacker's probe: a Redis that
answered the approval's take but not the limit check spent the operator's approval on a
call that was never forwarded)."""

from __future__ import annotations

from pathlib import Path

from bastion._errors import LimitsUnavailable
from bastion._identity import Principal
from bastion.proxy._approvals import ApprovalStore, Request, action_digest
from bastion.proxy._enforcer import Caller, Pending
from bastion.proxy._limits import Admission, LimitScope, Reservation
from bastion.proxy._pipeline import Outcome
from bastion.proxy._recorder import Record
from bastion.proxy._stages import LIMITS_UNAVAILABLE, ApprovalStage, LimitStage
from bastion.v1 import policy_pb2


class FailingLimiter:
    """A limit store that cannot answer (Redis past BASTION_REDIS_TIMEOUT_MS)."""

    async def admit(self, scope: LimitScope, limits: policy_pb2.Limits, *, cost: float, call_digest: str) -> Admission:
        raise LimitsUnavailable("Redis did not answer the limit check within 250 ms")

    async def refund(self, reservation: Reservation) -> None:
        raise AssertionError("nothing was reserved")

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


def _pending() -> Pending:
    action = policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server="bank", tool="transfer", method="tools/call")
    action.arguments.update({"amount": 100})
    record = Record(workflow_id="wf", session_id="s", agent_id="agent-1", tenant="default", action=action, started_at=0)
    record.arguments = {"amount": 100}
    caller = Caller(Principal("agent-1", "default", (), float("inf")), "wf", "s", "bank")
    return Pending(caller, record, policy_pb2.Context(), (), 0)


async def test_an_approved_call_the_limit_store_cannot_admit_keeps_its_approval_for_the_retry(tmp_path: Path) -> None:
    store = ApprovalStore(tmp_path / "approvals.sqlite3", ttl=60)
    decision = policy_pb2.Decision(
        effect=policy_pb2.REQUIRE_APPROVAL,
        rule_id="big-transfers",
        policy_name="payments",
        policy_version=1,
        limits=policy_pb2.Limits(budget_calls=10, budget_window="1d"),
    )
    first = _pending()
    request = Request(
        "default",
        "agent-1",
        action_digest(first.record.action, first.record.arguments),
        "payments",
        1,
        origin="big-transfers",
    )
    parked = store.open_request(request, rule_id="r", reason="", workflow_id="wf", node_id="n0", action={})
    approval_id = parked.approval_id
    store.decide(approval_id, approve=True, by="ops", reason="", node_id="d", tenant="default")

    approved = await ApprovalStage(store, redactor=None)(first, Outcome(False, decision, None))
    assert approved.allowed
    outcome = await LimitStage(FailingLimiter())(first, approved)
    # The enforcer gives back what a blocked call's stages took (Enforcer._hold).
    for release in outcome.on_not_forwarded:
        await release()

    assert (outcome.allowed, outcome.block_code) == (False, LIMITS_UNAVAILABLE)
    taken = store.get(approval_id)
    assert taken is not None
    assert taken.state == "approved", "the approval was spent on a call never forwarded"
    retried = await ApprovalStage(store, redactor=None)(_pending(), Outcome(False, decision, None))
    store.close()
    assert retried.allowed


async def test_an_approval_given_under_one_rule_stands_for_no_other_rule(tmp_path: Path) -> None:
    # As a queue release is bound to what parked it (an attacker's probe): the operator
    # approved the call one rule asked about, not whatever else the version asks approval for.
    store = ApprovalStore(tmp_path / "approvals.sqlite3", ttl=60)
    stage = ApprovalStage(store, redactor=None)

    def asked_by(rule_id: str) -> Outcome:
        decision = policy_pb2.Decision(
            effect=policy_pb2.REQUIRE_APPROVAL, rule_id=rule_id, policy_name="payments", policy_version=1
        )
        return Outcome(False, decision, None)

    parked = await stage(_pending(), asked_by("big-transfers"))
    assert parked.error_data is not None
    approval_id = str(parked.error_data["approval_id"])
    store.decide(approval_id, approve=True, by="ops", reason="", node_id="d", tenant="default")
    other = await stage(_pending(), asked_by("tainted-transfers"))
    assert not other.allowed  # a request of its own, for the operator
    assert other.error_data is not None
    assert other.error_data["approval_id"] != approval_id
    assert (await stage(_pending(), asked_by("big-transfers"))).allowed
    store.close()
