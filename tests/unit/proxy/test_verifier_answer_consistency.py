"""A verifier's answer that contradicts itself is not acted on: a PASS or FLAG at or above the
verifier's own threshold, and, when it gives no threshold (0: unset), at the maximal score
1.0, which is at or above any threshold a verifier can have. An attacker's probe had a
verifier answer PASS at 1.0 with threshold 0, and the proxy passed the call. A verifier that
sets no threshold and answers a plain PASS (a third party's, as verifier/INTERFACE.md allows)
keeps working."""

from __future__ import annotations

import pytest

from bastion._verdicts import VERIFIER_UNAVAILABLE
from bastion.proxy._pipeline import VERIFIER_BLOCK, combine
from bastion.proxy._verifier_settings import VerifierSettings
from bastion.v1 import policy_pb2, verifier_pb2

ALLOW = policy_pb2.Decision(effect=policy_pb2.ALLOW, rule_id="ok", policy_name="p", policy_version=1)
BLOCKING = VerifierSettings(0.5, "block")
ALLOWING = VerifierSettings(0.5, "allow")


def _answer(verdict: verifier_pb2.Verdict.ValueType, score: float, threshold: float) -> verifier_pb2.ScoreResponse:
    return verifier_pb2.ScoreResponse(deviation_score=score, threshold=threshold, verdict=verdict, scorer="x/1")


@pytest.mark.parametrize("verdict", [verifier_pb2.PASS, verifier_pb2.FLAG])
def test_a_pass_or_flag_at_the_maximal_score_without_a_threshold_takes_the_fallback(
    verdict: verifier_pb2.Verdict.ValueType,
) -> None:
    blocked = combine(ALLOW, _answer(verdict, 1.0, 0.0), BLOCKING)
    assert (blocked.allowed, blocked.block_code, blocked.score) == (False, VERIFIER_UNAVAILABLE, None)
    assert "with score 1.00 at or above any threshold (it gave none), which implies BLOCK" in blocked.block_reason
    assert "fallback block" in blocked.block_reason
    # Where the operator chose `fallback: allow`, it is forwarded as a fallback, marked and explained.
    forwarded = combine(ALLOW, _answer(verdict, 1.0, 0.0), ALLOWING)
    assert (forwarded.allowed, forwarded.verifier_fallback, forwarded.score) == (True, True, None)
    assert "which implies BLOCK" in forwarded.block_reason


@pytest.mark.parametrize(
    ("verdict", "score"),
    [(verifier_pb2.PASS, 0.0), (verifier_pb2.FLAG, 0.4), (verifier_pb2.FLAG, 0.99)],
)
def test_an_answer_without_a_threshold_that_no_threshold_contradicts_is_taken(
    verdict: verifier_pb2.Verdict.ValueType, score: float
) -> None:
    outcome = combine(ALLOW, _answer(verdict, score, 0.0), BLOCKING)
    assert outcome.allowed
    assert outcome.score is not None
    assert outcome.score.deviation_score == score


def test_a_block_without_a_threshold_blocks_as_the_verifiers_block() -> None:
    outcome = combine(ALLOW, _answer(verifier_pb2.BLOCK, 1.0, 0.0), ALLOWING)
    assert (outcome.allowed, outcome.block_code) == (False, VERIFIER_BLOCK)


def test_a_pass_at_or_above_its_own_threshold_is_still_refused_as_before() -> None:
    outcome = combine(ALLOW, _answer(verifier_pb2.PASS, 0.8, 0.8), BLOCKING)
    assert (outcome.allowed, outcome.block_code) == (False, VERIFIER_UNAVAILABLE)
    assert "at or above its threshold 0.80, which implies BLOCK" in outcome.block_reason
