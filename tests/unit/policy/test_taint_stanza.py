"""Policy `taint:` enforced: an allowed sink call holding data from an untrusted source gets on_tainted_sink."""

from __future__ import annotations

from typing import Any

import pytest

from bastion.policy import Effect, PolicySet, validate_policy
from bastion.policy._cel import CallContext

TAINTED = ("untrusted", "source:web__fetch", "arg:to:untrusted:web__fetch:content[0].text:text:1.00")


def _policies(on_tainted_sink: str = "deny", default: str = "deny") -> PolicySet:
    document: dict[str, Any] = {
        "apiVersion": "bastion.dev/v1",
        "kind": "AgentPolicy",
        "metadata": {"name": "mail", "version": 1},
        "spec": {
            "default": default,
            "rules": [{"id": "mail", "match": {"tools": ["email__*", "web__*"]}, "effect": "allow"}],
            "taint": {
                "untrusted_sources": ["web__*"],
                "sinks": ["email__send", "other__send"],
                "on_tainted_sink": on_tainted_sink,
            },
        },
    }
    return PolicySet.compile([validate_policy(document)])


def _decide(policies: PolicySet, tool: str, taint: tuple[str, ...]) -> Any:
    server, _, name = tool.partition("__")
    return policies.evaluate(kind="TOOL_CALL", agent_id="a", server=server, tool=name, context=CallContext(taint=taint))


@pytest.mark.parametrize(("effect", "expected"), [("deny", Effect.DENY), ("require_approval", Effect.REQUIRE_APPROVAL)])
def test_a_sink_call_with_untrusted_data_gets_on_tainted_sink(effect: str, expected: Effect) -> None:
    decision = _decide(_policies(effect), "email__send", TAINTED)
    assert decision.effect is expected
    assert decision.rule_id == "mail"
    assert "email__send is a sink and its arguments hold data from untrusted web__fetch" in decision.reason


def test_clean_calls_trusted_sources_and_non_sinks_stay_allowed() -> None:
    policies = _policies()
    assert _decide(policies, "email__send", ()).effect is Effect.ALLOW
    assert _decide(policies, "email__send", ("source:crm__lookup",)).effect is Effect.ALLOW
    assert _decide(policies, "email__search", TAINTED).effect is Effect.ALLOW


def test_the_default_allow_is_tainted_too() -> None:
    policies = _policies(default="allow")
    assert _decide(policies, "other__thing", TAINTED).effect is Effect.ALLOW  # no rule, not a sink
    decision = _decide(policies, "other__send", TAINTED)  # no rule, a sink
    assert decision.effect is Effect.DENY
    assert decision.rule_id == "default"
