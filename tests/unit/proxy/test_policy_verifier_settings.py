"""Per-policy verifier settings at the proxy: which policies govern an agent, the
strictest of their values, and how `combine` applies them (threshold, fallback, garbage)."""

from __future__ import annotations

import math
import re

import grpc
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion._verdicts import VERIFIER_QUEUED, VERIFIER_UNAVAILABLE
from bastion.policy._document import parse_policy
from bastion.policy._registry import settings_json
from bastion.proxy._pipeline import POLICY_UNAVAILABLE, VERIFIER_BLOCK, combine, waived
from bastion.proxy._verifier_settings import (
    PolicyVerifier,
    VerifierSettings,
    VerifierSettingsIndex,
    compile_agents,
    policy_verifier,
)
from bastion.v1 import policy_pb2, verifier_pb2

DEFAULT = VerifierSettings(0.5, "block")
ALLOW = policy_pb2.Decision(effect=policy_pb2.ALLOW, rule_id="ok", policy_name="p", policy_version=1)


def _stanza(name: str, agents: list[str] | None, **verifier: object) -> object:
    settings: dict[str, object] = {"verifier": {"name": "reference", **verifier}}
    if agents is not None:
        settings["agents"] = agents
    found = policy_verifier(name, 1, settings)
    assert found is not None
    return found


def _index(*stanzas: object, default: VerifierSettings = DEFAULT) -> VerifierSettingsIndex:
    return VerifierSettingsIndex(default, stanzas)  # type: ignore[arg-type]


def test_without_policies_every_agent_gets_the_proxy_defaults() -> None:
    assert _index().for_agent("anyone") == DEFAULT


def test_a_policy_governs_only_the_agents_its_rules_name() -> None:
    index = _index(_stanza("billing", ["billing-*"], timeout_ms=50, fallback="allow", threshold=0.3))

    billing = index.for_agent("billing-7")
    other = index.for_agent("support-1")

    assert (billing.timeout, billing.fallback, billing.threshold) == (0.05, "allow", 0.3)
    assert "policy 'billing' v1" in billing.source
    assert other == DEFAULT


def test_the_strictest_value_of_each_field_wins_across_governing_policies() -> None:
    index = _index(
        _stanza("a", ["*"], timeout_ms=300, fallback="allow", threshold=0.9),
        _stanza("b", ["agent-?"], timeout_ms=800, fallback="queue", threshold=0.4),
        _stanza("c", ["agent-1"], fallback="allow"),
    )

    one = index.for_agent("agent-1")
    outsider = index.for_agent("robot")

    assert (one.timeout, one.fallback, one.threshold) == (0.3, "queue", 0.4)
    assert (outsider.timeout, outsider.fallback, outsider.threshold) == (0.3, "allow", 0.9)


def test_block_beats_queue_beats_allow() -> None:
    for fallbacks, expected in ((("allow", "queue"), "queue"), (("queue", "block", "allow"), "block")):
        index = _index(*(_stanza(f"p{i}", None, fallback=mode) for i, mode in enumerate(fallbacks)))
        assert index.for_agent("x").fallback == expected


def test_fields_a_policy_leaves_unset_keep_the_proxy_default() -> None:
    index = _index(_stanza("p", None, threshold=0.2), default=VerifierSettings(0.7, "queue"))
    got = index.for_agent("x")
    # The document fills `fallback: block` in when a stanza is written; here it is absent.
    assert (got.timeout, got.fallback, got.threshold) == (0.7, "queue", 0.2)


def test_unreadable_values_never_loosen_anything() -> None:
    found = policy_verifier("p", 1, {"verifier": {"timeout_ms": "fast", "threshold": 7, "fallback": "maybe"}})
    assert (found.timeout, found.threshold, found.fallback, found.scores) == (None, None, None, True)
    for unreadable in (None, [1], "none", {"name": ["none"]}, {"name": "None"}, {"name": "none "}):
        stanza = policy_verifier("p", 1, {"verifier": unreadable})
        # Sets nothing, but governs its agents: it keeps their verifier asked.
        assert not stanza.sets_anything
        assert stanza.scores


def _waiving(policy: str, agents: list[str] | None, name: str = "none") -> PolicyVerifier:
    settings: dict[str, object] = {"verifier": {"name": name}}
    if agents is not None:
        settings["agents"] = agents
    return policy_verifier(policy, 1, settings)


def test_scoring_is_waived_only_when_every_governing_policy_waives_it() -> None:
    default = VerifierSettings(0.05, "block")
    alone = VerifierSettingsIndex(default, [_waiving("reader", None)])
    assert alone.for_agent("anyone").scored is False
    assert "policy 'reader' v1" in alone.for_agent("anyone").source
    # A second policy governing everyone, with no stanza at all, keeps the verifier asked.
    plain = policy_verifier("plain", 1, {"agents": ["*"]})
    assert VerifierSettingsIndex(default, [_waiving("reader", None), plain]).for_agent("x").scored is True
    # Waived for the agents the waiving policy governs, asked for everyone else.
    scoped = VerifierSettingsIndex(
        default, [_waiving("reader", ["reader-*"]), _waiving("payer", ["payer-*"], name="reference")]
    )
    assert scoped.for_agent("reader-1").scored is False
    assert scoped.for_agent("payer-1").scored is True
    assert scoped.for_agent("nobody").scored is True  # no governing policy: the defaults
    assert VerifierSettingsIndex(default).for_agent("x").scored is True


def test_the_policy_service_publishes_the_agents_a_version_governs() -> None:
    def agents(spec: str) -> list[str]:
        text = f"apiVersion: bastion.dev/v1\nkind: AgentPolicy\nmetadata: {{name: p, version: 1}}\nspec:\n{spec}"
        return list(orjson.loads(settings_json(parse_policy(text)))["agents"])

    rules = "  rules:\n    - {id: a, match: {agents: ['billing-*', 'ops']}, effect: allow}\n"
    rules += "    - {id: b, match: {agents: ['ops'], tools: ['demo__add']}, effect: deny}\n"
    assert agents(rules) == ["billing-*", "ops"]
    assert agents("  default: allow\n" + rules) == ["*"]  # its default decides anyone's calls
    assert agents("  default: deny\n") == ["*"]


@given(
    st.lists(st.text(alphabet="ab*?.[", min_size=1, max_size=6), min_size=1, max_size=3),
    st.text(alphabet="ab.[x", max_size=8),
)
def test_agent_globs_match_as_plain_globs_do(patterns: list[str], agent: str) -> None:
    # The shared compiler (bastion._globs, the policy engine's too) uses atomic groups
    # against backtracking: they must never change what matches. Reference: the naive
    # translation, `*` any run, `?` one character, case-sensitive.
    ours = compile_agents(patterns)
    naive = "|".join(
        "(?:" + "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in p) + ")" for p in patterns
    )
    expected = re.fullmatch(naive, agent, re.DOTALL) is not None
    assert (ours is None or ours.fullmatch(agent) is not None) == expected


# --- combine: the rows the settings add ----------------------------------------------------


def _score(value: float, verdict: verifier_pb2.Verdict.ValueType = verifier_pb2.PASS) -> verifier_pb2.ScoreResponse:
    return verifier_pb2.ScoreResponse(deviation_score=value, threshold=0.8, verdict=verdict, reasons=["novel"])


def test_a_policy_threshold_stricter_than_the_verifiers_blocks_a_pass() -> None:
    strict = VerifierSettings(0.5, "block", threshold=0.3, source="policy 'strict' v2")

    blocked = combine(ALLOW, _score(0.35), strict)
    passed = combine(ALLOW, _score(0.29), strict)

    assert (blocked.allowed, blocked.block_code) == (False, VERIFIER_BLOCK)
    assert "0.35 >= threshold 0.30 of policy 'strict' v2" in blocked.block_reason
    assert blocked.score is not None
    assert blocked.score.threshold == pytest.approx(0.3)
    assert passed.allowed


def test_the_verifiers_block_stands_whatever_the_policy_threshold() -> None:
    lax = VerifierSettings(0.5, "allow", threshold=0.99)
    outcome = combine(ALLOW, _score(0.9, verifier_pb2.BLOCK), lax)
    assert (outcome.allowed, outcome.block_code, outcome.fallback) == (False, VERIFIER_BLOCK, "")


@pytest.mark.parametrize("value", [-0.1, 1.5, math.nan, math.inf])
@pytest.mark.parametrize(
    ("mode", "allowed", "code"),
    [("block", False, VERIFIER_UNAVAILABLE), ("queue", False, VERIFIER_QUEUED), ("allow", True, "")],
)
def test_a_score_outside_0_to_1_is_garbage_and_takes_the_fallback(
    value: float, mode: str, allowed: bool, code: str
) -> None:
    outcome = combine(ALLOW, _score(value), VerifierSettings(0.5, mode))  # type: ignore[arg-type]
    assert (outcome.allowed, outcome.block_code, outcome.fallback) == (allowed, code, mode)
    assert "outside 0..1" in outcome.block_reason
    assert f"fallback {mode}" in outcome.block_reason
    assert outcome.verifier_fallback is allowed


def test_a_failed_verifier_under_queue_is_parked_not_allowed() -> None:
    failure = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata())
    outcome = combine(ALLOW, failure, VerifierSettings(0.5, "queue", source="policy 'q' v1"))
    assert (outcome.allowed, outcome.block_code, outcome.fallback) == (False, VERIFIER_QUEUED, "queue")
    assert "fallback queue (policy 'q' v1)" in outcome.block_reason


def _decision(effect: policy_pb2.Effect.ValueType, verifier: str | None) -> policy_pb2.Decision:
    decision = policy_pb2.Decision(effect=effect, rule_id="r", policy_name="reader", policy_version=2)
    if verifier is not None:
        decision.verifier.name = verifier
    return decision


def test_a_waived_action_passes_unscored_only_when_its_decision_waives_scoring_too() -> None:
    allowed = waived(_decision(policy_pb2.ALLOW, "none"))
    assert allowed is not None
    assert allowed.allowed
    assert allowed.block_reason == "verifier waived: policy 'reader' v2 says verifier none"
    # A decision that names another verifier, or none at all (a canary arm, a version Watch
    # has not delivered, Rego mode): not waived, so the verifier is asked after all.
    for wants in ("reference", None):
        assert waived(_decision(policy_pb2.ALLOW, wants)) is None
        # Whatever the effect: an approval's or a queue's record keeps its score.
        assert waived(_decision(policy_pb2.REQUIRE_APPROVAL, wants)) is None
    denied = waived(_decision(policy_pb2.DENY, "none"))
    assert denied is not None
    assert (denied.allowed, denied.block_code) == (False, "r")
    down = waived(grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, None, None, "gone"))
    assert down is not None
    assert (down.allowed, down.block_code) == (False, POLICY_UNAVAILABLE)


def _deciding(threshold: float | None, fallback: int) -> policy_pb2.Decision:
    decision = policy_pb2.Decision(effect=policy_pb2.ALLOW, rule_id="r", policy_name="canary", policy_version=7)
    decision.verifier.name = "reference"
    decision.verifier.fallback = fallback  # type: ignore[assignment]
    if threshold is not None:
        decision.verifier.threshold = threshold
    return decision


def test_the_deciding_policys_stanza_tightens_what_watch_said_and_never_loosens_it() -> None:
    # What Watch told the proxy (the stable version); the decision comes from a canary arm.
    watched = VerifierSettings(0.5, "allow", threshold=0.6, source="policy 'canary' v6")
    stricter = combine(_deciding(0.3, policy_pb2.VerifierSettings.BLOCK), _score(0.4), watched)
    assert (stricter.allowed, stricter.block_code) == (False, VERIFIER_BLOCK)
    assert "threshold 0.30 of policy 'canary' v6, policy 'canary' v7" in stricter.block_reason
    # A looser stanza changes nothing: Watch's threshold and fallback stand.
    looser = combine(_deciding(0.9, policy_pb2.VerifierSettings.ALLOW), _score(0.65), watched)
    assert (looser.allowed, looser.block_code) == (False, VERIFIER_BLOCK)
    failed = _rpc_unavailable()
    assert combine(_deciding(None, policy_pb2.VerifierSettings.ALLOW), failed, watched).allowed
    blocked = combine(_deciding(None, policy_pb2.VerifierSettings.BLOCK), failed, watched)
    assert (blocked.allowed, blocked.block_code) == (False, VERIFIER_UNAVAILABLE)
    assert "fallback block (policy 'canary' v6, policy 'canary' v7)" in blocked.block_reason
    # No stanza in the decision, or an unspecified fallback: Watch's settings as they are.
    bare = policy_pb2.Decision(effect=policy_pb2.ALLOW, rule_id="r", policy_name="p", policy_version=1)
    assert combine(bare, failed, watched).allowed
    assert combine(_deciding(None, policy_pb2.VerifierSettings.FALLBACK_UNSPECIFIED), failed, watched).allowed


def _rpc_unavailable() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, None, None, "gone")
