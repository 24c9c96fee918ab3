"""IdentityStage on its own: before the proxy has received the revocation list, nothing it
would forward is forwarded; blocks already made are left as they were."""

from __future__ import annotations

from bastion._apikeys import IdentityState
from bastion._identity import Principal
from bastion.proxy._enforcer import Caller, Pending
from bastion.proxy._pipeline import Outcome
from bastion.proxy._recorder import Record
from bastion.proxy._stages import IdentityStage
from bastion.v1 import policy_pb2

ALLOW = policy_pb2.Decision(effect=policy_pb2.ALLOW, rule_id="echo", policy_name="demo", policy_version=1)


def _pending() -> Pending:
    action = policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server="demo", tool="echo")
    record = Record(workflow_id="wf", session_id="s", agent_id="agent-1", tenant="default", action=action, started_at=0)
    caller = Caller(Principal("agent-1", "default", (), float("inf")), "wf", "s", "demo")
    return Pending(caller, record, policy_pb2.Context(), (), 0)


async def _give_back() -> None:
    return None


async def test_an_allowed_call_is_blocked_until_the_revocations_arrive_and_its_approval_is_given_back() -> None:
    identity = IdentityState()
    identity.unsynced_reason = "its WatchIdentity stream failed: UNAVAILABLE"
    approved = Outcome(True, ALLOW, None, block_reason="forwarded under approval apr_1", on_not_forwarded=(_give_back,))

    outcome = await IdentityStage(identity)(_pending(), approved)

    assert (outcome.allowed, outcome.block_code) == (False, "bastion.auth.revocations_unavailable")
    assert (outcome.error_code, outcome.error_message) == (-32003, "POLICY_VIOLATION")
    assert "revocations not loaded" in outcome.block_reason
    assert "its WatchIdentity stream failed: UNAVAILABLE" in outcome.block_reason
    assert outcome.on_not_forwarded == (_give_back,)
    assert outcome.decision is ALLOW, "the journal still shows what policy said"


async def test_a_block_already_made_is_left_as_it_was_while_the_revocations_are_missing() -> None:
    # The policy service down: agents see the block they always saw.
    unavailable = Outcome(False, None, None, "bastion.policy_unavailable", "policy unavailable (UNAVAILABLE)")
    parked = Outcome(False, ALLOW, None, "need-human", "approval apr_1 is pending", error_code=-32004)

    for outcome in (unavailable, parked):
        assert await IdentityStage(IdentityState())(_pending(), outcome) is outcome


async def test_once_the_revocations_arrive_the_stage_lets_everything_through() -> None:
    identity = IdentityState()
    identity.apply(policy_pb2.IdentityEvent(snapshot=True))
    allowed = Outcome(True, ALLOW, None)

    assert await IdentityStage(identity)(_pending(), allowed) is allowed
