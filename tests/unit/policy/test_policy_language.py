"""The policy language on the whole action: `when` (CEL), `args`, effects, stanzas."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format, struct_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from bastion import ConfigError, PolicyValidationError
from bastion.policy import Decision, Effect, PolicySet, parse_policy, validate_policy
from bastion.policy._cel import CallContext, compile_condition
from bastion.policy._grpc import PolicyServicer, _struct_to_dict, _to_proto
from bastion.policy._registry import Snapshot
from bastion.v1 import policy_pb2

# DESIGN §5's document, comments included (test_policy_document.py checks it against the schema).
DESIGN_EXAMPLE = (Path(__file__).resolve().parents[3] / "examples" / "policies" / "payments.yaml").read_text()


def _doc(*rules: dict[str, Any], default: str = "deny", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "bastion.dev/v1",
        "kind": "AgentPolicy",
        "metadata": {"name": "p", "version": 1},
        "spec": {"default": default, "rules": list(rules), **spec},
    }


def _rule(rule_id: str, effect: str, tools: tuple[str, ...] = ("pay__refund",), **extra: Any) -> dict[str, Any]:
    return {"id": rule_id, "match": {"tools": list(tools)}, "effect": effect, **extra}


def _compile(*rules: dict[str, Any], **spec: Any) -> PolicySet:
    return PolicySet.compile([validate_policy(_doc(*rules, **spec))])


def _refund(policies: PolicySet, args: dict[str, Any] | None = None, **kw: Any) -> Decision:
    return policies.evaluate(
        kind=kw.pop("kind", "TOOL_CALL"),
        agent_id=kw.pop("agent", "billing-1"),
        server="pay",
        tool=kw.pop("tool", "refund"),
        arguments=args,
        **kw,
    )


def _rejection(data: dict[str, Any]) -> str:
    with pytest.raises(PolicyValidationError) as caught:
        validate_policy(data)
    return str(caught.value)


# --- DESIGN §5 ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("agent", "args", "effect", "rule"),
    [
        ("billing-1", {"amount": 50, "currency": "USD"}, Effect.ALLOW, "small-refunds"),
        ("billing-1", {"amount": 100.0, "currency": "EUR"}, Effect.ALLOW, "small-refunds"),
        ("billing-1", {"amount": 101, "currency": "USD"}, Effect.REQUIRE_APPROVAL, "big-refunds"),
        ("billing-1", {"amount": 50, "currency": "GBP"}, Effect.REQUIRE_APPROVAL, "big-refunds"),
        ("billing-1", {"amount": 50, "currency": "USD", "note": "x"}, Effect.REQUIRE_APPROVAL, "big-refunds"),
        ("billing-1", {"currency": "USD"}, Effect.REQUIRE_APPROVAL, "big-refunds"),
        ("support-1", {"amount": 5, "currency": "USD"}, Effect.REQUIRE_APPROVAL, "big-refunds"),
    ],
)
def test_design_example_decides_as_its_comments_say(
    agent: str, args: dict[str, Any], effect: Effect, rule: str
) -> None:
    policies = PolicySet.compile([parse_policy(DESIGN_EXAMPLE)])
    decision = policies.evaluate(kind="TOOL_CALL", agent_id=agent, server="stripe", tool="refund", arguments=args)
    assert (decision.effect, decision.rule_id) == (effect, rule)
    assert decision.verifier is not None
    assert decision.verifier.timeout_ms == 50
    assert decision.limits is not None
    assert decision.limits.rate == "60/m"


def test_a_rule_whose_args_do_not_hold_names_the_violation_in_the_later_decision() -> None:
    policies = PolicySet.compile([parse_policy(DESIGN_EXAMPLE)])
    decision = policies.evaluate(
        kind="TOOL_CALL", agent_id="billing-1", server="stripe", tool="refund", arguments={"amount": 500}
    )
    assert "rule 'small-refunds' did not match: argument 'amount' is 500, above max 100" in decision.reason


# --- when (CEL) ----------------------------------------------------------------------------


def test_when_sees_args_agent_ctx_action_and_taint() -> None:
    condition = (
        "args.n == 3 && agent == 'billing-1' && ctx.tenant == 'acme' && 'ops' in ctx.roles"
        " && ctx.labels['env'] == 'prod' && action.kind == 'TOOL_CALL' && action.tool == 'refund'"
        " && action.method == 'tools/call' && !('web' in taint) && ctx.workflow_id == 'w' && ctx.task.startsWith('pay')"
    )
    policies = _compile(_rule("r", "allow", when=condition))
    context = CallContext(tenant="acme", roles=("ops",), labels={"env": "prod"}, workflow_id="w", task="pay bills")
    allowed = _refund(policies, {"n": 3}, method="tools/call", context=context)
    assert (allowed.effect, allowed.rule_id) == (Effect.ALLOW, "r")
    tainted = CallContext(
        tenant="acme", roles=("ops",), labels={"env": "prod"}, workflow_id="w", task="pay", taint=("web",)
    )
    assert _refund(policies, {"n": 3}, method="tools/call", context=tainted).rule_id == "default"


def test_when_false_tries_the_next_rule() -> None:
    policies = _compile(_rule("small", "allow", when="args.amount <= 100"), _rule("big", "require_approval"))
    assert _refund(policies, {"amount": 5}).rule_id == "small"
    assert _refund(policies, {"amount": 500}).rule_id == "big"


@pytest.mark.parametrize(
    ("args", "why"),
    [
        ({}, "KeyError"),
        ({"amount": "5"}, "TypeError"),
        ({"amount": [1]}, "TypeError"),
        ({"amount": True}, "TypeError"),
    ],
)
def test_a_cel_error_denies_naming_the_rule_and_never_falls_through_to_a_later_allow(
    args: dict[str, Any], why: str
) -> None:
    policies = _compile(_rule("small", "allow", when="args.amount <= 100"), _rule("later-allow", "allow"))
    decision = _refund(policies, args)
    assert (decision.effect, decision.rule_id) == (Effect.DENY, "small")
    assert "rule 'small' condition failed" in decision.reason
    assert why in decision.reason


def test_a_non_boolean_condition_denies() -> None:
    policies = _compile(_rule("r", "allow", when="args.amount"), _rule("later", "allow"))
    decision = _refund(policies, {"amount": 1})
    assert (decision.effect, decision.rule_id) == (Effect.DENY, "r")
    assert "not a boolean" in decision.reason


def test_a_deny_rule_with_a_cel_error_still_denies() -> None:
    policies = _compile(_rule("no-big", "deny", when="args.amount > 1000"), _rule("rest", "allow"))
    assert _refund(policies, {"amount": 5}).effect is Effect.ALLOW
    assert (_refund(policies, {}).effect, _refund(policies, {}).rule_id) == (Effect.DENY, "no-big")


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ("args.amount <=", "field 'when': not valid CEL"),
        ("agnet == 'x'", "field 'when': unknown variable 'agnet' (did you mean 'agent'?)"),
        ("zzz > 1", "unknown variable 'zzz' (the variables are args, agent, ctx, action, taint)"),
        ("   ", "field 'when': empty expression"),
        ("true && " * 600 + "true", "the limit is 4096"),
    ],
)
def test_cel_that_does_not_compile_is_refused_at_load_naming_policy_and_rule(when: str, expected: str) -> None:
    message = _rejection(_doc(_rule("r1", "allow", when=when)))
    assert "policy 'p' v1 rule 'r1':" in message
    assert expected in message


def test_macro_variables_are_not_mistaken_for_unknown_names() -> None:
    policies = _compile(_rule("r", "allow", when="args.items.all(x, x > 0) && args.items.exists(i, i == 2)"))
    assert _refund(policies, {"items": [1, 2]}).effect is Effect.ALLOW
    assert _refund(policies, {"items": [0, 2]}).effect is Effect.DENY


@pytest.mark.parametrize(
    ("when", "nesting"),
    [
        ("args.amount <= 100 && args.currency in ['USD', 'EUR']", 0),
        ("args.x in args.allowed", 0),
        ("args.to.all(r, r.endsWith('@acme.com'))", 1),
        ("args.items.all(i, i.currency in ['USD', 'EUR'])", 1),
        ("args.ids.all(x, args.ids.exists_one(y, y == x))", 2),
        ("args.to.all(r, !(r in args.cc))", 2),
        ("args.a.map(x, x.all(y, y.exists(z, z > 0)))", 3),
        ("args.s == '.all(x, y.all(' && size(args.s) > 1", 0),  # inside a string: no loop
        ("[1, 2, 3].all(x, [4, 5].all(y, x < y))", 2),
        # Reading the input again inside a loop is a loop too (a second probe's stalls).
        ("args.ids.all(x, size(args.ids + args.ids) > 0)", 2),
        ("args.ids.all(x, args.ids == args.ids2)", 2),
        ("args.ids.map(x, args.ids).map(l, l == args.ids2).all(b, b)", 2),
        ("args.ids.exists(x, args.s.contains(x))", 2),
        ("taint.exists(t, t.startsWith('untrusted'))", 1),
        # Every variable is input (a fourth probe: 2 s over a megabyte `action.resource`).
        ("args.ids.all(x, !action.resource.contains(x))", 2),
        ("args.to.all(r, r.endsWith(agent))", 2),
        ("args.amount <= 100 && ctx.tenant == 'acme'", 0),
    ],
)
def test_the_cost_of_a_condition_is_read_as_how_deeply_its_loops_nest(when: str, nesting: int) -> None:
    assert compile_condition(when).nesting == nesting


def test_a_regular_expression_in_a_loop_over_a_long_argument_denies_before_it_runs() -> None:
    # Found by an attacker's probe: each `matches` compiles its pattern (≈ 10-22 µs), so one
    # call with 10,000 ids held every decision for 0.25 s, and a loop nesting once passed.
    policies = _compile(_rule("names", "allow", when="args.ids.all(x, x.matches('^[a-z]+$'))"))
    decision = _refund(policies, {"ids": ["abc"] * 10_000})
    assert (decision.effect, decision.rule_id) == (Effect.DENY, "names")
    assert "a regular expression in a loop counting 100" in decision.reason
    assert _refund(policies, {"ids": ["abc"] * 500}).effect is Effect.ALLOW  # short: it runs
    assert _refund(policies, {"ids": ["ABC"] * 500}).rule_id != "names"  # and decides
    # Outside a loop it runs once, whatever the argument's size.
    once = _compile(_rule("once", "allow", when="args.name.matches('^[a-z]+$') && size(args.ids) > 0"))
    assert _refund(once, {"name": "abc", "ids": list(range(10_000))}).effect is Effect.ALLOW
    assert compile_condition("args.ids.exists(x, x.matches('a'))").regex_in_loop
    assert not compile_condition("args.s.matches('a') && args.ids.all(x, x > 0)").regex_in_loop


def test_nested_loops_over_a_long_argument_deny_before_they_run_and_short_ones_still_decide() -> None:
    # Found by an attacker's probe: the evaluator holds the GIL, so one call with 8,000
    # ids stalled every decision of the service for 13 s. Denied now without running.
    unique = "args.ids.all(x, args.ids.exists_one(y, y == x))"
    policies = _compile(_rule("unique", "allow", when=unique), _rule("later-allow", "allow"))
    decision = _refund(policies, {"ids": list(range(8000))})
    assert (decision.effect, decision.rule_id) == (Effect.DENY, "unique")
    assert "nests 2 list-sized loops" in decision.reason
    assert "more than the 1e+05 allowed" in decision.reason
    # 2,000 ids took 1 s at the first bound and held up every other decision behind it.
    assert "nests 2 list-sized loops" in _refund(policies, {"ids": list(range(2000))}).reason
    assert _refund(policies, {"ids": [1, 2, 3]}).rule_id == "unique"  # short: it runs, and holds
    assert _refund(policies, {"ids": list(range(250))}).rule_id == "unique"
    assert _refund(policies, {"ids": [1, 1]}).rule_id == "later-allow"  # it runs, is false, the next rule decides
    for quadratic in ("args.ids.all(x, size(args.ids + args.ids) > 0)", "args.ids.all(x, args.ids == args.ids2)"):
        again = _compile(_rule("again", "allow", when=quadratic), _rule("later-allow", "allow"))
        denied = _refund(again, {"ids": list(range(4000)), "ids2": list(range(4000))})
        assert (denied.effect, denied.rule_id) == (Effect.DENY, "again"), quadratic
        assert "nests 2 list-sized loops" in denied.reason
    # Long strings count by their size: one loop copying a megabyte per element is refused too.
    copying = _compile(_rule("copy", "allow", when="args.ids.all(x, size(args.s + args.s) > 0)"))
    assert _refund(copying, {"ids": list(range(100)), "s": "x" * (1 << 20)}).effect is Effect.DENY
    assert _refund(copying, {"ids": list(range(100)), "s": "short"}).effect is Effect.ALLOW
    # The agent id and the action count by their size too.
    by_agent = _compile(_rule("agent", "allow", when="args.ids.all(x, size(agent) > 0)"))
    assert _refund(by_agent, {"ids": list(range(2000))}, agent="a" * (1 << 20)).effect is Effect.DENY
    assert _refund(by_agent, {"ids": [1, 2, 3]}).effect is Effect.ALLOW
    # A linear condition is never held to the bound, however long the list.
    linear = _compile(_rule("positive", "allow", when="args.ids.all(x, x >= 0)"))
    assert _refund(linear, {"ids": list(range(20000))}).effect is Effect.ALLOW


# --- args ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [-(1 << 63) - 1, 1 << 64, [1, {"deep": [1 << 70]}]])
def test_an_enum_integer_beyond_64_bits_is_refused_at_load_not_when_the_bundle_is_signed(value: Any) -> None:
    # A property test found it: it passed validation and then broke the canonical digest.
    message = _rejection(_doc(_rule("r1", "allow", args={"amount": {"enum": [1, value]}})))
    assert "beyond 64 bits" in message
    assert _compile(_rule("r1", "allow", args={"amount": {"enum": [-(1 << 63), (1 << 64) - 1]}}))


_TYPED = {
    "s": {"type": "string", "min_length": 2, "max_length": 4, "pattern": "[a-z]+"},
    "n": {"type": "number", "min": 0, "max": 10},
    "i": {"type": "integer", "required": False},
    "b": {"type": "boolean", "required": False},
    "o": {"type": "object", "required": False, "properties": {"k": {"enum": ["x", "y"]}, "*": "deny"}},
    "a": {"type": "array", "required": False, "max_length": 2, "items": {"type": "integer"}},
    "z": {"type": "null", "required": False},
    "secret": "deny",
    "free": "allow",
}


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ({"s": "ab", "n": 1}, None),
        ({"s": "ab", "n": 1, "free": [{"any": 1}], "i": 4.0, "b": False, "z": None}, None),
        ({"s": "ab", "n": 1, "o": {"k": "x"}, "a": [1, 2]}, None),
        ({"s": "ab"}, "argument 'n' is required"),
        ({"s": "a", "n": 1}, "argument 's' has length 1, below min_length 2"),
        ({"s": "abcde", "n": 1}, "argument 's' has length 5, above max_length 4"),
        ({"s": "AB", "n": 1}, "argument 's' does not match pattern '[a-z]+'"),
        ({"s": 12, "n": 1}, "argument 's' must be of type string, not 12"),
        ({"s": "ab", "n": -1}, "argument 'n' is -1, below min 0"),
        ({"s": "ab", "n": 11}, "argument 'n' is 11, above max 10"),
        ({"s": "ab", "n": math.nan}, "argument 'n' must be of type number"),
        ({"s": "ab", "n": True}, "argument 'n' must be of type number, not True"),
        ({"s": "ab", "n": 1, "i": 1.5}, "argument 'i' must be of type integer"),
        ({"s": "ab", "n": 1, "b": 1}, "argument 'b' must be of type boolean"),
        ({"s": "ab", "n": 1, "o": {"k": "z"}}, "argument 'o.k' is 'z', not one of 'x', 'y'"),
        ({"s": "ab", "n": 1, "o": {"k": "x", "extra": 1}}, "argument 'o.extra' is not allowed"),
        ({"s": "ab", "n": 1, "a": [1, "2"]}, "argument 'a[1]' must be of type integer"),
        ({"s": "ab", "n": 1, "a": [1, 2, 3]}, "argument 'a' has length 3, above max_length 2"),
        ({"s": "ab", "n": 1, "secret": "x"}, "argument 'secret' is not allowed"),
        ({"s": "ab", "n": 1, "surprise": 1}, "argument 'surprise' is not allowed (not listed, and '*' is deny)"),
    ],
)
def test_typed_argument_constraints(args: dict[str, Any], problem: str | None) -> None:
    policies = _compile(_rule("typed", "allow", args={**_TYPED, "*": "deny"}))
    decision = _refund(policies, args)
    if problem is None:
        assert (decision.effect, decision.rule_id) == (Effect.ALLOW, "typed")
    else:
        assert (decision.effect, decision.rule_id) == (Effect.DENY, "default")
        assert problem in decision.reason


def test_unknown_argument_is_denied_with_star_deny_and_allowed_by_default() -> None:
    strict = _compile(_rule("r", "allow", args={"amount": {"type": "number"}, "*": "deny"}))
    loose = _compile(_rule("r", "allow", args={"amount": {"type": "number"}}))
    assert _refund(strict, {"amount": 1, "to": "x"}).effect is Effect.DENY
    assert _refund(loose, {"amount": 1, "to": "x"}).effect is Effect.ALLOW


def test_star_may_hold_a_constraint_for_every_unlisted_argument() -> None:
    policies = _compile(_rule("r", "allow", args={"*": {"type": "string", "max_length": 3}}))
    assert _refund(policies, {"a": "abc", "b": "x"}).effect is Effect.ALLOW
    assert "argument 'b' has length 4" in _refund(policies, {"a": "abc", "b": "xxxx"}).reason


def test_enum_compares_as_json_so_true_is_not_1_but_1_is_1_0() -> None:
    policies = _compile(_rule("r", "allow", args={"v": {"enum": [1, "a"]}}))
    assert _refund(policies, {"v": 1.0}).effect is Effect.ALLOW
    assert _refund(policies, {"v": True}).effect is Effect.DENY


@pytest.mark.parametrize(
    ("constraint", "expected"),
    [
        ({"enum": []}, "an empty 'enum' matches nothing"),
        ({"min": 5, "max": 1}, "'min' 5 is above 'max' 1, so nothing matches"),
        ({"min_length": 5, "max_length": 1}, "'min_length' 5 is above 'max_length' 1"),
        ({"type": "nubmer"}, "not 'nubmer' (did you mean 'number'?)"),
        ({"type": "number", "enum": ["USD"]}, "'enum' value 'USD' is not of type 'number'"),
        ({"type": "string", "max": 1}, "'max' applies to integer or number values, but 'type' is 'string'"),
        ({"type": "number", "pattern": "a"}, "'pattern' applies to string values"),
        ({"maxLength": 3}, "unknown field 'maxLength' in 'args.amount' (did you mean 'max_length'?)"),
        (
            {"type": "object", "properties": {"k": {"tpye": "string"}}},
            "unknown field 'tpye' in 'args.amount.properties.k'",
        ),
        ({"pattern": "(a+)+"}, "nests a repeat of variable count inside a repeat"),
        # An attacker's probe: accepted, each held every decision for seconds on ~21 characters.
        ({"pattern": "(?:a?a?)*c"}, "nests a repeat of variable count inside a repeat"),
        ({"pattern": "(?:a{0,1}a{0,1})*c"}, "nests a repeat of variable count inside a repeat"),
        ({"pattern": "(?:[a-z]?[a-z0-9]?)+!"}, "nests a repeat of variable count inside a repeat"),
        ({"pattern": "(?:\\d?\\.?\\d?)+"}, "nests a repeat of variable count inside a repeat"),
        ({"pattern": "(?:(?=a?)b)*"}, "nests a repeat of variable count inside a repeat"),
        ({"pattern": "(a|ab)*c"}, "repeats an alternation"),
        ({"pattern": "(a)\\1"}, "backreference"),
        ({"pattern": ".*a.*a.*b"}, "could backtrack for too long"),
        ({"pattern": "["}, "is not a valid regular expression"),
        ({"pattern": "a" * 300}, "the limit is 256"),
        ({"required": "yes"}, "field 'args.amount.required': input should be a valid boolean"),
        (5, "field 'args.amount' must be a constraint such as {type: string}, or 'allow' or 'deny' (got 5)"),
        ("dney", "field 'args.amount' must be one of 'allow', 'deny', not 'dney' (did you mean 'deny'?)"),
    ],
)
def test_bad_argument_constraints_are_refused_with_a_precise_message(constraint: Any, expected: str) -> None:
    message = _rejection(_doc(_rule("r1", "allow", args={"amount": constraint})))
    assert "policy 'p' v1 rule 'r1':" in message
    assert expected in message


def test_nesting_deeper_than_the_limit_is_refused() -> None:
    constraint: dict[str, Any] = {"type": "string"}
    for _ in range(9):
        constraint = {"type": "object", "properties": {"k": constraint}}
    assert "more than 8 levels deep" in _rejection(_doc(_rule("r1", "allow", args={"a": constraint})))


@pytest.mark.parametrize("pattern", ["(?:ab{2}){1,5}", "(?:[a-z]{3}-)*[a-z]{3}", "[a-z]+(?:\\.[a-z]{2})?"])
def test_repeats_of_fixed_count_inside_a_repeat_are_accepted(pattern: str) -> None:
    # The body of a repeat then matches one length only: every run splits one way.
    policies = _compile(_rule("r", "allow", args={"s": {"pattern": pattern}}))
    assert _refund(policies, {"s": "!"}).effect is Effect.DENY


def test_a_long_value_fails_a_pattern_instead_of_being_matched() -> None:
    policies = _compile(_rule("r", "allow", args={"s": {"pattern": "[a-z]*x[a-z]*"}}))
    assert _refund(policies, {"s": "a" * 1000 + "x"}).effect is Effect.ALLOW
    assert "too long to match a pattern" in _refund(policies, {"s": "a" * 2000 + "x"}).reason


# --- effects ------------------------------------------------------------------------------------


def test_queue_effect_decides_queue() -> None:
    decision = _refund(_compile(_rule("q", "queue")))
    assert (decision.effect, decision.rule_id) == (Effect.QUEUE, "q")
    assert _to_proto(decision).effect == policy_pb2.QUEUE


def test_shadow_rules_record_their_would_be_effect_and_evaluation_goes_on() -> None:
    policies = _compile(
        _rule("try-deny", "shadow", when="args.amount > 10"),
        _rule("try-approval", "shadow", shadow_effect="require_approval"),
        _rule("allow", "allow"),
    )
    big = _refund(policies, {"amount": 50})
    assert (big.effect, big.rule_id, big.shadow_effect, big.shadow_rule_id) == (
        Effect.ALLOW,
        "allow",
        Effect.DENY,
        "try-deny",
    )
    small = _refund(policies, {"amount": 5})
    assert (small.effect, small.shadow_effect, small.shadow_rule_id) == (
        Effect.ALLOW,
        Effect.REQUIRE_APPROVAL,
        "try-approval",
    )
    errored = _refund(policies, {})
    assert (errored.effect, errored.shadow_effect, errored.shadow_rule_id) == (Effect.ALLOW, Effect.DENY, "try-deny")
    message = _to_proto(big)
    assert (message.shadow_effect, message.shadow_rule_id) == (policy_pb2.DENY, "try-deny")


def test_shadow_effect_without_effect_shadow_is_refused() -> None:
    message = _rejection(_doc(_rule("r1", "allow", shadow_effect="deny")))
    assert "'shadow_effect' applies only to 'effect: shadow'" in message


def test_steer_message_is_carried_into_the_obligations() -> None:
    policies = _compile(_rule("no", "deny", steer="Use pay__refund_small for refunds under 100."))
    message = _to_proto(_refund(policies))
    assert message.obligations.steer_message == "Use pay__refund_small for refunds under 100."


def test_tool_list_shows_a_tool_a_conditional_rule_could_allow_and_skips_conditional_denies() -> None:
    policies = _compile(
        _rule("deny-big", "deny", tools=("pay__*",), when="args.amount > 100"),
        _rule("small", "allow", args={"amount": {"max": 100}}),
    )
    assert _refund(policies, kind="TOOL_LIST").rule_id == "small"
    assert _refund(policies, kind="TOOL_LIST", tool="other").effect is Effect.DENY


# --- stanzas ------------------------------------------------------------------------------------


def test_stanzas_are_carried_in_every_decision_of_their_policy() -> None:
    policies = _compile(
        _rule("r", "allow"),
        limits={"rate": "60/m", "budget": {"calls": 10, "window": "1d"}, "loop": {"same_call": 3, "window": "60s"}},
        verifier={"name": "reference", "threshold": 0.5, "timeout_ms": 40, "fallback": "queue"},
        taint={"untrusted_sources": ["web__*"], "sinks": ["mail__send"], "on_tainted_sink": "require_approval"},
    )
    for decision in (_refund(policies), _refund(policies, tool="other")):
        message = _to_proto(decision)
        assert (message.limits.rate, message.limits.budget_calls, message.limits.budget_window) == ("60/m", 10, "1d")
        assert (message.limits.loop_same_call, message.limits.loop_window) == (3, "60s")
        assert (message.verifier.name, message.verifier.threshold, message.verifier.timeout_ms) == (
            "reference",
            0.5,
            40,
        )
        assert message.verifier.fallback == policy_pb2.VerifierSettings.QUEUE
        assert list(message.taint.sinks) == ["mail__send"]
        assert message.taint.on_tainted_sink == policy_pb2.REQUIRE_APPROVAL


def test_a_verifier_without_threshold_or_timeout_leaves_them_unset() -> None:
    message = _to_proto(_refund(_compile(_rule("r", "allow"), verifier={"name": "reference"})))
    assert message.verifier.fallback == policy_pb2.VerifierSettings.BLOCK
    assert not message.verifier.HasField("threshold")
    assert not message.verifier.HasField("timeout_ms")


def test_the_deciding_rules_cost_is_carried_with_the_cost_budget_and_defaults_to_one() -> None:
    policies = _compile(
        _rule("pricey", "allow", when="args.amount > 100", cost=2.5),
        _rule("free", "allow", tools=("pay__quote",), cost=0),
        _rule("plain", "allow"),
        limits={"budget": {"calls": 10, "cost": 12.5, "window": "1h"}},
    )
    assert _refund(policies, {"amount": 500}).cost == 2.5
    assert _refund(policies, {"amount": 5}).cost == 1.0  # 'plain' sets no cost
    assert _refund(policies, tool="quote").cost == 0.0
    assert _refund(policies, tool="other").cost == 1.0  # no rule decided
    message = _to_proto(_refund(policies, {"amount": 500}))
    assert message.cost == 2.5
    assert (message.limits.budget_calls, message.limits.budget_cost, message.limits.budget_window) == (10, 12.5, "1h")


def test_a_budget_of_cost_alone_leaves_the_call_budget_zero_and_a_budget_of_calls_the_cost_zero() -> None:
    by_cost = _to_proto(_refund(_compile(_rule("r", "allow"), limits={"budget": {"cost": 3, "window": "1d"}})))
    assert (by_cost.limits.budget_calls, by_cost.limits.budget_cost) == (0, 3.0)
    by_calls = _to_proto(_refund(_compile(_rule("r", "allow"), limits={"budget": {"calls": 3, "window": "1d"}})))
    assert (by_calls.limits.budget_calls, by_calls.limits.budget_cost) == (3, 0.0)


def test_a_document_without_cost_keeps_its_canonical_form_and_digest() -> None:
    document = validate_policy(_doc(_rule("r", "allow"), limits={"budget": {"calls": 3, "window": "1d"}}))
    canonical = document.canonical()
    assert "cost" not in canonical["spec"]["rules"][0]
    assert canonical["spec"]["limits"]["budget"] == {"calls": 3, "window": "1d"}


@pytest.mark.parametrize(
    ("cost", "expected"),
    [
        (-1, "field 'cost': input should be greater than or equal to 0"),
        (True, "field 'cost': input should be a valid number"),
        ("1", "field 'cost': input should be a valid number"),
        (float("nan"), "field 'cost': input should be a finite number"),
        (2e9, "field 'cost': input should be less than or equal to 1000000000"),
    ],
)
def test_a_bad_rule_cost_is_refused_naming_the_rule(cost: object, expected: str) -> None:
    message = _rejection(_doc(_rule("r", "allow", cost=cost)))
    assert "rule 'r'" in message
    assert expected in message


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"verifier": {"name": "reference", "fallback": "blok"}}, "not 'blok' (did you mean 'block'?)"),
        (
            {"verifier": {"name": "reference", "timeout": 5}},
            "unknown field 'timeout' in 'spec.verifier' (did you mean 'timeout_ms'?)",
        ),
        ({"verifier": {"name": "reference", "threshold": 2}}, "field 'spec.verifier.threshold'"),
        ({"limits": {"rate": "60/min"}}, "'60/min' is not of the form '<calls>/<s|m|h|d>'"),
        (
            {"limits": {"budget": {"calls": 5, "windw": "1d"}}},
            "unknown field 'windw' in 'spec.limits.budget' (did you mean 'window'?)",
        ),
        ({"limits": {"loop": {"same_call": 0, "window": "1s"}}}, "field 'spec.limits.loop.same_call'"),
        ({"limits": {"budget": {"window": "1d"}}}, "'budget' must set 'calls', 'cost' or both"),
        ({"limits": {"budget": {"cost": 0, "window": "1d"}}}, "field 'spec.limits.budget.cost'"),
        ({"limits": {"budget": {"calls": 5, "cost": "5", "window": "1d"}}}, "field 'spec.limits.budget.cost'"),
        ({"limits": {"loop": {"same_call": 10_001, "window": "1s"}}}, "field 'spec.limits.loop.same_call'"),
        ({"taint": {"untrusted_sources": ["web__*"], "sinks": ["send"]}}, "tool pattern 'send' can never match"),
        (
            {"taint": {"untrusted_sources": ["web__*"], "sinks": ["a__b"], "on_tainted_sink": "allow"}},
            "field 'spec.taint.on_tainted_sink'",
        ),
    ],
)
def test_bad_stanzas_are_refused_with_a_precise_message(spec: dict[str, Any], expected: str) -> None:
    assert expected in _rejection(_doc(_rule("r", "allow"), **spec))


# --- case variants never dodge a deny ---------------------------------------------------------


@pytest.mark.parametrize("tool", ["delete_file", "Delete_File", "DELETE_FILE", "dElEtE_fIlE"])
def test_case_variants_of_a_tool_name_never_dodge_a_deny_rule(tool: str) -> None:
    policies = _compile(_rule("no-deletes", "deny", tools=("demo__delete_file",)), _rule("rest", "allow", tools=("*",)))
    decision = policies.evaluate(kind="TOOL_CALL", agent_id="a", server="demo", tool=tool)
    assert (decision.effect, decision.rule_id) == (Effect.DENY, "no-deletes")
    upper = policies.evaluate(kind="TOOL_CALL", agent_id="a", server="DEMO", tool=tool)
    assert upper.effect is Effect.DENY


# --- arguments from the wire ---------------------------------------------------------------------


def test_struct_arguments_become_plain_values_with_whole_numbers_as_ints() -> None:
    struct = struct_pb2.Struct()
    struct.update({"n": 5, "f": 2.5, "s": "x", "b": True, "z": None, "l": [1, {"k": 2**60}], "o": {"a": []}})
    plain = _struct_to_dict(struct, 0)
    assert plain == {"n": 5, "f": 2.5, "s": "x", "b": True, "z": None, "l": [1, {"k": float(2**60)}], "o": {"a": []}}
    assert type(plain["n"]) is int
    assert plain == {**json_format.MessageToDict(struct), "n": 5, "l": [1, {"k": float(2**60)}]}


def test_struct_arguments_nested_too_deeply_are_refused() -> None:
    value: Any = "leaf"
    for _ in range(70):
        value = {"k": value}
    struct = struct_pb2.Struct()
    struct.update({"deep": value})
    with pytest.raises(ValueError, match="nested more than 64 levels"):
        _struct_to_dict(struct, 0)


# --- fuzzing ---------------------------------------------------------------------------------------

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["USD", "EUR", "usd", ""]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
_ARGS = st.dictionaries(
    st.sampled_from(["amount", "currency", "Amount", "x", ""]) | st.text(max_size=6), _JSON, max_size=5
)

_GUARDED = _compile(
    _rule(
        "small",
        "allow",
        when="args.amount <= 100 && args.currency in ['USD', 'EUR']",
        args={"amount": {"type": "number", "min": 0}, "currency": {"type": "string"}, "*": "deny"},
    ),
    _rule("cel-only", "allow", tools=("pay__cel",), when="args.amount <= 100"),
)


def _really_small(args: dict[str, Any]) -> bool:
    amount = args.get("amount")
    return (
        set(args) == {"amount", "currency"}
        and isinstance(amount, int | float)
        and not isinstance(amount, bool)
        and math.isfinite(amount)
        and 0 <= amount <= 100
        and args["currency"] in ("USD", "EUR")
    )


@settings(max_examples=400, deadline=None)
@given(_ARGS)
def test_garbage_arguments_never_raise_and_never_allow_unless_the_conditions_really_hold(args: dict[str, Any]) -> None:
    decision = _refund(_GUARDED, args)
    assert (decision.effect is Effect.ALLOW) == _really_small(args)
    cel_only = _refund(_GUARDED, args, tool="cel")
    amount = args.get("amount")
    if cel_only.effect is Effect.ALLOW:
        assert isinstance(amount, int | float)
        assert not isinstance(amount, bool)
        assert amount <= 100


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60) | st.sampled_from(["args.", "args.a[", "1/0 == 1", "size(args) > 1", "args.all(x,"]))
def test_arbitrary_when_text_is_accepted_or_refused_never_crashes(when: str) -> None:
    try:
        policies = _compile(_rule("r", "allow", when=when))
    except PolicyValidationError as exc:
        refusal = str(exc)
    else:
        assert _refund(policies, {"amount": 1}).effect in set(Effect)
        return
    assert "rule 'r'" in refusal


_CONSTRAINT_KEYS = [
    "type",
    "enum",
    "min",
    "max",
    "min_length",
    "max_length",
    "pattern",
    "properties",
    "items",
    "required",
]


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["amount", "*", "x"]),
        st.sampled_from(["allow", "deny", "dney"])
        | st.dictionaries(st.sampled_from([*_CONSTRAINT_KEYS, "maxLength"]), _JSON, max_size=4),
        max_size=3,
    ),
    _ARGS,
)
def test_random_argument_constraints_load_or_are_refused_and_then_never_raise(
    args_spec: dict[str, Any], args: dict[str, Any]
) -> None:
    try:
        policies = _compile(_rule("r", "allow", args=args_spec))
    except (PolicyValidationError, ConfigError) as exc:
        refusal = str(exc)
    else:
        assert _refund(policies, args).effect in (Effect.ALLOW, Effect.DENY)
        return
    assert refusal


@settings(max_examples=200, deadline=None)
@given(_JSON.map(lambda value: yaml.safe_dump({"spec": {"rules": [{"when": value, "args": value}]}})))
def test_random_yaml_documents_never_crash_the_loader(text: str) -> None:
    refusal = "loaded"
    try:
        parse_policy(text)
    except (PolicyValidationError, ConfigError) as exc:
        refusal = str(exc)
    assert refusal


def test_the_servicer_converts_arguments_only_when_a_rule_reads_them() -> None:
    value: Any = "leaf"
    for _ in range(70):
        value = {"k": value}

    def decide(rules: list[dict[str, Any]], tool: str) -> policy_pb2.Decision:
        policies = PolicySet.compile(
            [
                validate_policy(
                    {
                        "apiVersion": "bastion.dev/v1",
                        "kind": "AgentPolicy",
                        "metadata": {"name": "p", "version": 1},
                        "spec": {"rules": rules},
                    }
                )
            ]
        )

        class _Fixed:
            snapshot = Snapshot(policies=policies, versions=())

        _Fixed.policies = policies  # type: ignore[attr-defined]
        request = policy_pb2.DecideRequest()
        request.action.kind = policy_pb2.TOOL_CALL
        request.action.server, request.action.tool = "s", tool
        request.action.arguments.update({"deep": value})
        request.ctx.agent_id, request.ctx.request_id = "a", "r"
        return PolicyServicer(_Fixed(), registry=CollectorRegistry())._decide(request)  # type: ignore[arg-type]

    by_name = decide([{"id": "ok", "match": {"tools": ["s__t"]}, "effect": "allow"}], "t")
    reads = decide([{"id": "reads", "match": {"tools": ["s__t"]}, "when": "size(args) > 0", "effect": "allow"}], "t")
    assert (by_name.effect, by_name.rule_id) == (policy_pb2.ALLOW, "ok")  # decided on the name: no conversion
    # The conversion fails inside the rule's `when`: that rule denies, naming why.
    assert (reads.effect, reads.rule_id) == (policy_pb2.DENY, "reads")
    assert "nested more than 64 levels" in reads.reason
