"""The fail-closed combination of the policy decision and the verifier score."""

from __future__ import annotations

import subprocess
import sys

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


def test_a_verifiers_control_characters_reach_no_reason_scorer_or_origin_raw() -> None:
    """A probe's verifier answered ANSI escapes, CR/LF, NUL and a bidi override in its
    reasons and scorer: they went whole into the block reason, the journal and, through
    `bastion queue list`, an operator's terminal."""
    forged = verifier_pb2.ScoreResponse(
        deviation_score=0.9,
        threshold=0.8,
        verdict=verifier_pb2.BLOCK,
        reasons=["\x1b[2Jcleared\r\nfake log line\x00", "nice \u202etxt.exe"],
        scorer="evil\x1b[31m/1",
        drift_origin_node_id="n\n1",
    )
    outcome = combine(ALLOW, forged, BLOCKING)
    assert not outcome.allowed
    assert outcome.score is not None
    for text in (outcome.block_reason, outcome.score.scorer, *outcome.score.reasons):
        assert text.isprintable(), text
    assert outcome.score.reasons[0] == "\\x1b[2Jcleared\\r\\nfake log line\\x00"
    assert outcome.score.scorer == "evil\\x1b[31m/1"
    assert outcome.score.drift_origin_node_id == ""


def test_a_chained_verifiers_huge_or_forged_scorer_is_cut_and_escaped() -> None:
    """A chained verifier answering garbage under a 200 KB scorer name: the name went into
    the block reason whole (and through a quadratic address scrub that froze the proxy)."""
    garbage = verifier_pb2.ScoreResponse(verdict=verifier_pb2.VERDICT_UNSPECIFIED, scorer="\x1b" + "x" * 200_000)
    outcome = combine(ALLOW, strictest([PASS, garbage]), BLOCKING)
    assert (outcome.allowed, outcome.block_code) == (False, VERIFIER_UNAVAILABLE)
    assert len(outcome.block_reason) < 1_000
    assert outcome.block_reason.isprintable()
    named = verifier_pb2.ScoreResponse(
        deviation_score=0.9, threshold=0.8, verdict=verifier_pb2.BLOCK, reasons=["r"], scorer="y" * 200_000
    )
    merged = combine(ALLOW, strictest([PASS, named]), BLOCKING)
    assert merged.score is not None
    assert len(merged.score.scorer) < 300
    assert all(len(reason) < 1_000 for reason in merged.score.reasons)


def test_scrubbing_addresses_from_a_long_reason_takes_linear_time() -> None:
    """`public_reason` rescanned a run of host characters from every offset: 16 KB took
    1.2 s and 200 KB minutes. Run in a child so that a regression fails, not hangs."""
    script = (
        "from bastion.proxy._envelope import public_reason\n"
        "for text in ('x' * 400_000, 'a-' * 200_000, 'a.' * 200_000, '-' * 400_000):\n"
        "    assert public_reason(text) == text\n"
        "print(public_reason('failed: ipv4:10.0.3.7:50051: refused; policy:50051 and 127.0.0.1'))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == ("failed: <internal address>: refused; <internal address> and <internal address>")
