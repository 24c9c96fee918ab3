"""The fail-closed combination of the policy decision and the verifier score."""

from __future__ import annotations

import grpc
import pytest

from bastion._verdicts import VERIFIER_UNAVAILABLE
from bastion.proxy._pipeline import POLICY_UNAVAILABLE, VERIFIER_BLOCK, combine, strictest
from bastion.proxy._verifier_settings import VerifierSettings
from bastion.v1 import policy_pb2, verifier_pb2

ALLOW = policy_pb2.Decision(effect=policy_pb2.ALLOW, rule_id="ok", policy_name="p", policy_version=1)
DENY = policy_pb2.Decision(effect=policy_pb2.DENY, rule_id="no", reason="rule 'no' denies", policy_version=1)
PASS = verifier_pb2.ScoreResponse(deviation_score=0.1, threshold=0.8, verdict=verifier_pb2.PASS)
BLOCK = verifier_pb2.ScoreResponse(deviation_score=0.9, threshold=0.8, verdict=verifier_pb2.BLOCK, reasons=["novel"])


def _rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="boom")


BLOCKING = VerifierSettings(0.5, "block")
ALLOWING = VerifierSettings(0.5, "allow")


def test_allow_and_pass_forwards() -> None:
    outcome = combine(ALLOW, PASS, BLOCKING)
    assert outcome.allowed
    assert outcome.block_code == ""


def test_policy_deny_blocks_with_the_policy_rule_and_reason() -> None:
    outcome = combine(DENY, PASS, BLOCKING)
    assert not outcome.allowed
    assert (outcome.block_code, outcome.block_reason) == ("no", "rule 'no' denies")


@pytest.mark.parametrize("effect", [policy_pb2.REQUIRE_APPROVAL, policy_pb2.QUEUE, policy_pb2.EFFECT_UNSPECIFIED])
def test_any_effect_other_than_allow_blocks(effect: int) -> None:
    decision = policy_pb2.Decision(effect=effect, rule_id="r")  # type: ignore[arg-type]
    assert not combine(decision, PASS, ALLOWING).allowed


@pytest.mark.parametrize(
    "failure",
    [_rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED), _rpc_error(grpc.StatusCode.UNAVAILABLE), RuntimeError("x")],
)
def test_policy_failure_blocks_and_names_the_policy_service(failure: BaseException) -> None:
    outcome = combine(failure, PASS, ALLOWING)
    assert not outcome.allowed
    assert outcome.block_code == POLICY_UNAVAILABLE
    assert outcome.block_reason.startswith("policy service unavailable")


def test_verifier_failure_blocks_by_default_and_names_the_verifier() -> None:
    outcome = combine(ALLOW, _rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED), BLOCKING)
    assert not outcome.allowed
    assert outcome.block_code == VERIFIER_UNAVAILABLE
    assert "DEADLINE_EXCEEDED" in outcome.block_reason


def test_verifier_failure_with_allow_fallback_forwards_and_is_marked() -> None:
    outcome = combine(ALLOW, _rpc_error(grpc.StatusCode.UNAVAILABLE), ALLOWING)
    assert outcome.allowed
    assert outcome.verifier_fallback
    assert "verifier unavailable" in outcome.block_reason


def test_verifier_block_verdict_blocks_even_when_policy_allows() -> None:
    outcome = combine(ALLOW, BLOCK, ALLOWING)
    assert not outcome.allowed
    assert outcome.block_code == VERIFIER_BLOCK
    assert "novel" in outcome.block_reason
    assert outcome.score is BLOCK


def test_policy_deny_wins_over_a_failing_verifier() -> None:
    outcome = combine(DENY, RuntimeError("down"), ALLOWING)
    assert (outcome.allowed, outcome.block_code) == (False, "no")


def test_a_score_without_a_verdict_is_treated_as_a_verifier_failure() -> None:
    empty = verifier_pb2.ScoreResponse(deviation_score=0.0, threshold=0.8)
    outcome = combine(ALLOW, empty, BLOCKING)
    assert (outcome.allowed, outcome.block_code) == (False, VERIFIER_UNAVAILABLE)
    assert "without a verdict" in outcome.block_reason


def test_a_chained_block_is_heeded_beside_a_failed_or_unusable_member() -> None:
    nan_block = verifier_pb2.ScoreResponse(deviation_score=float("nan"), threshold=0.8, verdict=verifier_pb2.BLOCK)
    chains: list[list[verifier_pb2.ScoreResponse | BaseException]] = [
        [PASS, nan_block],
        [_rpc_error(grpc.StatusCode.UNAVAILABLE), BLOCK],
        [nan_block, PASS],
    ]
    for members in chains:
        outcome = combine(ALLOW, strictest(members), ALLOWING)
        assert not outcome.allowed, members
        assert outcome.block_code == VERIFIER_BLOCK
        assert outcome.score is not None
        assert 0.0 <= outcome.score.deviation_score <= 1.0


def test_a_threshold_outside_0_1_is_an_unusable_answer() -> None:
    odd = verifier_pb2.ScoreResponse(deviation_score=0.0, threshold=float("nan"), verdict=verifier_pb2.PASS)
    outcome = combine(ALLOW, odd, BLOCKING)
    assert (outcome.allowed, outcome.block_code) == (False, VERIFIER_UNAVAILABLE)
    assert "threshold outside 0..1" in outcome.block_reason


def test_a_verifiers_reasons_and_origin_reach_the_envelope_bounded() -> None:
    """A probe's verifier answered 200,000 reasons (1.7 MB), one of 15.7 MB and a 100 KB
    drift origin: all went into the agent's block envelope whole."""
    flood = verifier_pb2.ScoreResponse(
        deviation_score=0.9,
        threshold=0.8,
        verdict=verifier_pb2.BLOCK,
        reasons=["r" * 100_000, *(f"reason {n}" for n in range(1000))],
        drift_origin_node_id="n" * 100_000,
    )
    outcome = combine(ALLOW, flood, BLOCKING)
    assert not outcome.allowed
    assert outcome.score is not None
    assert len(outcome.block_reason) < 40_000
    assert len(outcome.score.reasons) == 33
    assert outcome.score.reasons[-1] == "… and 969 more reasons, not shown"
    assert outcome.score.drift_origin_node_id == ""
    assert combine(ALLOW, BLOCK, BLOCKING).score is BLOCK  # an answer within the bounds is not copied
