"""Compiling policies into a PolicySet and deciding actions with it."""

from __future__ import annotations

import fnmatch
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import bastion.policy
from bastion import PolicyValidationError
from bastion.policy import Effect, PolicyDocument, PolicySet, load_policy_set, parse_policy, validate_policy

DEMO_PATH = Path(__file__).resolve().parents[3] / "examples" / "policies" / "demo.yaml"


def _rule(
    rule_id: str, effect: str, *, tools: list[str] | None = None, agents: list[str] | None = None
) -> dict[str, Any]:
    match: dict[str, list[str]] = {}
    if agents is not None:
        match["agents"] = agents
    if tools is not None:
        match["tools"] = tools
    return {"id": rule_id, "match": match, "effect": effect}


def _policy(name: str, *rules: dict[str, Any], default: str = "deny", version: int = 1) -> PolicyDocument:
    return validate_policy(
        {
            "apiVersion": "bastion.dev/v1",
            "kind": "AgentPolicy",
            "metadata": {"name": name, "version": version},
            "spec": {"default": default, "rules": list(rules)},
        }
    )


def _call(policies: PolicySet, agent: str, server: str, tool: str, kind: str = "TOOL_CALL") -> bastion.policy.Decision:
    return policies.evaluate(kind=kind, agent_id=agent, server=server, tool=tool)


# --- rule order and matching ------------------------------------------------------------


def test_first_matching_rule_wins_within_a_policy() -> None:
    policies = PolicySet.compile(
        [
            _policy(
                "p",
                _rule("deny-delete", "deny", tools=["demo__delete_file"]),
                _rule("allow-demo", "allow", tools=["demo__*"]),
            )
        ]
    )
    assert _call(policies, "a", "demo", "delete_file").rule_id == "deny-delete"
    assert _call(policies, "a", "demo", "delete_file").effect is Effect.DENY
    assert _call(policies, "a", "demo", "add").rule_id == "allow-demo"


def test_a_deny_in_any_policy_overrides_an_allow_in_another_whatever_the_order() -> None:
    first = _policy("first", _rule("deny-all-demo", "deny", tools=["demo__*"]))
    second = _policy("second", _rule("allow-add", "allow", tools=["demo__add"]), default="allow")
    for order in ([first, second], [second, first]):
        decision = _call(PolicySet.compile(order), "a", "demo", "add")
        assert (decision.effect, decision.rule_id, decision.policy_name) == (Effect.DENY, "deny-all-demo", "first")


def test_across_policies_the_strictest_decision_wins_and_the_first_among_equals() -> None:
    approve = _policy("approve", _rule("approve-add", "require_approval", tools=["demo__add"]))
    allow = _policy("allow", _rule("allow-add", "allow", tools=["demo__add"]))
    also = _policy("also", _rule("also-add", "allow", tools=["demo__add"]))
    decision = _call(PolicySet.compile([allow, approve]), "a", "demo", "add")
    assert (decision.effect, decision.policy_name) == (Effect.REQUIRE_APPROVAL, "approve")
    decision = _call(PolicySet.compile([also, allow]), "a", "demo", "add")
    assert (decision.effect, decision.rule_id) == (Effect.ALLOW, "also-add")


def test_a_policy_with_no_rule_for_the_action_does_not_govern_it() -> None:
    # `payments` scopes billing agents only; its default deny does not reach a docs call.
    payments = _policy("payments", _rule("refunds", "allow", tools=["stripe__refund"], agents=["billing-*"]))
    docs = _policy("docs", _rule("read", "allow", tools=["docs__read"]))
    decision = _call(PolicySet.compile([payments, docs]), "billing-1", "docs", "read")
    assert (decision.effect, decision.rule_id, decision.policy_name) == (Effect.ALLOW, "read", "docs")
    unmatched = _call(PolicySet.compile([payments, docs]), "billing-1", "docs", "write")
    assert (unmatched.effect, unmatched.rule_id) == (Effect.DENY, "default")


def test_agent_globs_select_which_agents_a_rule_applies_to() -> None:
    policies = PolicySet.compile(
        [_policy("p", _rule("billing", "allow", agents=["billing-*", "auditor"], tools=["stripe__*"]))]
    )
    assert _call(policies, "billing-eu", "stripe", "refund").effect is Effect.ALLOW
    assert _call(policies, "auditor", "stripe", "refund").effect is Effect.ALLOW
    assert _call(policies, "auditor-2", "stripe", "refund").effect is Effect.DENY
    assert _call(policies, "support", "stripe", "refund").effect is Effect.DENY


def test_tool_globs_match_the_full_server__tool_name() -> None:
    policies = PolicySet.compile([_policy("p", _rule("deletes", "require_approval", tools=["*__delete_*", "fs__rm?"]))])
    assert _call(policies, "a", "demo", "delete_file").effect is Effect.REQUIRE_APPROVAL
    assert _call(policies, "a", "fs", "rmd").effect is Effect.REQUIRE_APPROVAL
    assert _call(policies, "a", "fs", "rm").effect is Effect.DENY
    assert _call(policies, "a", "fs", "rmdir").effect is Effect.DENY
    # Tool matching is case-insensitive, as tool names are validated (the proxy forwards
    # only names exactly in the upstream's live list), and anchored at both ends.
    assert _call(policies, "a", "demo", "Delete_file").effect is Effect.REQUIRE_APPROVAL
    assert _call(policies, "a", "DEMO", "DELETE_FILE").effect is Effect.REQUIRE_APPROVAL
    assert _call(policies, "a", "xdemo", "delete_file_now").effect is Effect.REQUIRE_APPROVAL


def test_glob_metacharacters_other_than_star_and_question_mark_are_literal() -> None:
    policies = PolicySet.compile([_policy("p", _rule("dotted", "allow", tools=["api__v1.get", "x__[ab]"]))])
    assert _call(policies, "a", "api", "v1.get").effect is Effect.ALLOW
    assert _call(policies, "a", "api", "v1xget").effect is Effect.DENY
    assert _call(policies, "a", "x", "[ab]").effect is Effect.ALLOW
    assert _call(policies, "a", "x", "a").effect is Effect.DENY


@settings(max_examples=300, deadline=None)
@given(pattern=st.text("ab*?", min_size=1, max_size=8), agent=st.text("ab", min_size=1, max_size=10))
def test_agent_glob_matching_agrees_with_fnmatch(pattern: str, agent: str) -> None:
    policies = PolicySet.compile([_policy("p", _rule("r", "allow", agents=[pattern], tools=["*"]))])
    allowed = _call(policies, agent, "s", "t").effect is Effect.ALLOW
    assert allowed == fnmatch.fnmatchcase(agent, pattern)


@pytest.mark.timeout(10)
def test_many_star_glob_decides_long_agent_ids_without_backtracking_blowup() -> None:
    policies = PolicySet.compile([_policy("p", _rule("r", "allow", agents=["*a*a*a*a*a*a*a*a*b"], tools=["*"]))])
    assert _call(policies, "a" * 50_000, "s", "t").effect is Effect.DENY
    assert _call(policies, "a" * 50_000 + "b", "s", "t").effect is Effect.ALLOW


# --- defaults ---------------------------------------------------------------------------


def test_unmatched_call_is_denied_by_default_with_a_readable_reason() -> None:
    decision = _call(load_policy_set([DEMO_PATH]), "a", "demo", "x")
    assert decision.effect is Effect.DENY
    assert decision.rule_id == "default"
    assert decision.reason == "no rule matched demo__x for agent 'a' (default deny)"
    assert (decision.policy_name, decision.policy_version) == ("demo", 1)


def test_demo_policy_allows_add_and_denies_delete_file_by_rule() -> None:
    policies = load_policy_set([DEMO_PATH])
    allowed = _call(policies, "agent-1", "demo", "add")
    assert allowed.effect is Effect.ALLOW
    assert allowed.reason == f"rule '{allowed.rule_id}' allows demo__add for agent 'agent-1'"
    denied = _call(policies, "agent-1", "demo", "delete_file")
    assert (denied.effect, denied.rule_id) == (Effect.DENY, "no-file-deletes")
    assert denied.reason == "rule 'no-file-deletes' denies demo__delete_file for agent 'agent-1'"
    assert _call(policies, "agent-1", "demo", "echo").effect is Effect.DENY


def test_default_allow_applies_only_when_every_policy_allows() -> None:
    open_a = _policy("open-a", default="allow")
    open_b = _policy("open-b", default="allow")
    closed = _policy("closed", default="deny")
    both_open = _call(PolicySet.compile([open_a, open_b]), "a", "s", "t")
    assert (both_open.effect, both_open.rule_id) == (Effect.ALLOW, "default")
    assert both_open.reason == "no rule matched s__t for agent 'a' (default allow)"
    one_closed = _call(PolicySet.compile([open_a, closed, open_b]), "a", "s", "t")
    assert (one_closed.effect, one_closed.policy_name) == (Effect.DENY, "closed")


def test_no_policies_deny_everything() -> None:
    decision = _call(PolicySet.compile([]), "a", "demo", "add")
    assert decision.effect is Effect.DENY
    assert decision.reason == "no policy loaded (default deny)"
    assert decision.rule_id == "default"


@pytest.mark.parametrize("kind", ["LLM_CALL", "MCP_REQUEST", "A2A_CARD", "ACTION_KIND_UNSPECIFIED"])
def test_kinds_other_than_tool_calls_are_denied_even_by_a_catch_all_allow(kind: str) -> None:
    policies = PolicySet.compile([_policy("open", _rule("all", "allow", tools=["*"]), default="allow")])
    decision = _call(policies, "a", "demo", "add", kind=kind)
    assert decision.effect is Effect.DENY
    assert decision.reason == f"action kind {kind} is not governed by this policy version"


@pytest.mark.parametrize("kind", ["A2A_SEND", "A2A_GET", "A2A_CANCEL", "A2A_PUSH_CONFIG"])
def test_a2a_kinds_are_decided_by_match_a2a_on_agent__method_and_not_by_tool_rules(kind: str) -> None:
    rules = (
        {"id": "tools-only", "match": {"tools": ["*"]}, "effect": "allow"},
        {"id": "no-cancel", "match": {"a2a": ["billing__CancelTask"]}, "effect": "deny"},
        {"id": "planner", "match": {"agents": ["planner"], "a2a": ["billing__*"]}, "effect": "allow"},
    )
    policies = PolicySet.compile([_policy("a2a", *rules)])
    method = "CancelTask" if kind == "A2A_CANCEL" else "sendmessage"  # A2A names match case-insensitively
    planner = _call(policies, "planner", "billing", method, kind=kind)
    assert (planner.effect, planner.rule_id) == (
        (Effect.DENY, "no-cancel") if kind == "A2A_CANCEL" else (Effect.ALLOW, "planner")
    )
    other = _call(policies, "other", "billing", method, kind=kind)
    assert (other.effect, other.rule_id) == (Effect.DENY, "no-cancel" if kind == "A2A_CANCEL" else "default")


def test_tool_list_is_decided_by_the_same_rules_as_tool_calls() -> None:
    policies = load_policy_set([DEMO_PATH])
    assert _call(policies, "a", "demo", "add", kind="TOOL_LIST").effect is Effect.ALLOW
    assert _call(policies, "a", "demo", "delete_file", kind="TOOL_LIST").effect is Effect.DENY


@pytest.mark.parametrize(("agent", "server", "tool"), [("", "demo", "add"), ("a", "", "add"), ("a", "demo", "")])
def test_request_without_agent_server_or_tool_is_denied(agent: str, server: str, tool: str) -> None:
    policies = PolicySet.compile([_policy("open", _rule("all", "allow", agents=["*"], tools=["*"]), default="allow")])
    assert _call(policies, agent, server, tool).effect is Effect.DENY


# --- compiling --------------------------------------------------------------------------


def test_same_policy_name_twice_is_rejected() -> None:
    with pytest.raises(PolicyValidationError, match="policy 'p' is loaded twice"):
        PolicySet.compile([_policy("p"), _policy("p", version=2)])


def test_a_model_built_by_hand_with_bad_cel_is_refused_at_compile() -> None:
    document = _policy("p", {**_rule("r", "allow", tools=["*"]), "when": "true"})
    rule = document.spec.rules[0].model_copy(update={"when": "1 +"})
    broken = document.model_copy(update={"spec": document.spec.model_copy(update={"rules": (rule,)})})
    with pytest.raises(PolicyValidationError, match="policy 'p' v1 rule 'r': not valid CEL"):
        PolicySet.compile([broken])


def test_policy_set_is_immutable() -> None:
    policies = load_policy_set([DEMO_PATH])
    with pytest.raises(AttributeError):
        policies.digest = "x"  # type: ignore[misc]


# --- digests ----------------------------------------------------------------------------


def _canonical_digest(*documents: dict[str, Any]) -> str:
    text = json.dumps(list(documents), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def test_bundle_digest_is_sha256_of_the_canonical_validated_documents() -> None:
    document = _policy("p", _rule("r", "allow", tools=["demo__add"]))
    policies = PolicySet.compile([document])
    expected = _canonical_digest(
        {
            "apiVersion": "bastion.dev/v1",
            "kind": "AgentPolicy",
            "metadata": {"name": "p", "version": 1},
            "spec": {
                "default": "deny",
                "rules": [{"id": "r", "match": {"agents": ["*"], "tools": ["demo__add"]}, "effect": "allow"}],
            },
        }
    )
    assert policies.digest == expected
    # One policy alone: its own digest is the bundle's, so decisions and listings agree.
    assert policies.policies[0].digest == expected
    assert _call(policies, "a", "demo", "add").bundle_digest == expected


def test_bundle_digest_ignores_formatting_key_order_comments_and_spelt_out_defaults() -> None:
    compact = parse_policy(
        "{apiVersion: bastion.dev/v1, kind: AgentPolicy, metadata: {name: p, version: 1},"
        " spec: {rules: [{id: r, match: {tools: [demo__add]}, effect: allow}]}}"
    )
    verbose = parse_policy(
        """
        # the same policy, written differently
        spec:
          rules:
            - effect: allow
              match:
                tools: ["demo__add"]
                agents: ["*"]
              id: r
          default: deny
        metadata: {version: 1, name: p}
        kind: AgentPolicy
        apiVersion: bastion.dev/v1
        """
    )
    assert PolicySet.compile([compact]).digest == PolicySet.compile([verbose]).digest


def test_bundle_digest_changes_with_content_and_with_order() -> None:
    a = _policy("a", _rule("r", "allow", tools=["demo__add"]))
    b = _policy("b")
    changed = _policy("a", _rule("r", "deny", tools=["demo__add"]))
    digests = {
        PolicySet.compile([a, b]).digest,
        PolicySet.compile([b, a]).digest,
        PolicySet.compile([changed, b]).digest,
        PolicySet.compile([a]).digest,
        PolicySet.compile([]).digest,
    }
    assert len(digests) == 5
    assert PolicySet.compile([a, b]).digest == PolicySet.compile([a, b]).digest


def test_demo_file_digest_matches_its_yaml_content(tmp_path: Path) -> None:
    copy = tmp_path / "demo.yaml"
    copy.write_text(yaml.safe_dump(yaml.safe_load(DEMO_PATH.read_text(encoding="utf-8"))), encoding="utf-8")
    assert load_policy_set([copy]).digest == load_policy_set([DEMO_PATH]).digest


# --- public surface -----------------------------------------------------------------------


def test_public_surface_is_exactly_the_documented_names() -> None:
    assert sorted(bastion.policy.__all__) == [
        "BundleVerifier",
        "CompiledPolicy",
        "Decision",
        "Effect",
        "PolicyDocument",
        "PolicyRegistry",
        "PolicySet",
        "PolicySettings",
        "PolicyStore",
        "load_policy",
        "load_policy_set",
        "main",
        "parse_policy",
        "serve",
        "sign_bundle",
        "validate_policy",
        "version_digest",
    ]
    for name in bastion.policy.__all__:
        assert name in (bastion.policy.__doc__ or ""), f"{name} is exported but not documented"


# --- resources, prompts and completions ---------------------------------------------------


def _families() -> PolicySet:
    return PolicySet.compile(
        [
            validate_policy(
                {
                    "apiVersion": "bastion.dev/v1",
                    "kind": "AgentPolicy",
                    "metadata": {"name": "fam", "version": 1},
                    "spec": {
                        "default": "deny",
                        "rules": [
                            {"id": "docs", "match": {"resources": ["docs__file:///public/*"]}, "effect": "allow"},
                            {"id": "greet", "match": {"prompts": ["demo__greet"]}, "effect": "allow"},
                            {"id": "tools", "match": {"tools": ["*"]}, "effect": "allow"},
                            {"id": "ops-all", "match": {"agents": ["ops"]}, "effect": "allow"},
                        ],
                    },
                }
            )
        ]
    )


def test_resource_rules_decide_reads_and_subscriptions_by_uri_glob_case_sensitively() -> None:
    policies = _families()
    for kind in ("RESOURCE_READ", "RESOURCE_SUBSCRIBE"):
        allowed = policies.evaluate(kind=kind, agent_id="a", server="docs", resource="file:///public/readme")
        assert (allowed.effect, allowed.rule_id) == (Effect.ALLOW, "docs")
        assert (
            policies.evaluate(kind=kind, agent_id="a", server="docs", resource="file:///secret").effect is Effect.DENY
        )
        assert (
            policies.evaluate(kind=kind, agent_id="a", server="docs", resource="file:///PUBLIC/x").effect is Effect.DENY
        )


def test_a_rule_naming_only_tools_never_decides_a_resource_or_prompt() -> None:
    policies = _families()
    read = policies.evaluate(kind="RESOURCE_READ", agent_id="a", server="demo", resource="file:///x")
    prompt = policies.evaluate(kind="PROMPT_GET", agent_id="a", server="demo", prompt="other")
    assert (read.effect, read.rule_id) == (Effect.DENY, "default")
    assert (prompt.effect, prompt.rule_id) == (Effect.DENY, "default")


def test_prompt_rules_match_case_insensitively_and_completions_follow_their_ref() -> None:
    policies = _families()
    assert policies.evaluate(kind="PROMPT_GET", agent_id="a", server="demo", prompt="Greet").rule_id == "greet"
    prompt = policies.evaluate(kind="COMPLETION", agent_id="a", server="demo", prompt="greet")
    resource = policies.evaluate(kind="COMPLETION", agent_id="a", server="docs", resource="file:///public/a")
    other = policies.evaluate(kind="COMPLETION", agent_id="a", server="docs", resource="file:///private/a")
    assert (prompt.rule_id, resource.rule_id, other.effect) == ("greet", "docs", Effect.DENY)


def test_a_rule_naming_only_agents_covers_every_family() -> None:
    policies = _families()
    assert policies.evaluate(kind="RESOURCE_READ", agent_id="ops", server="x", resource="a:b").rule_id == "ops-all"
    assert policies.evaluate(kind="PROMPT_GET", agent_id="ops", server="x", prompt="p").rule_id == "ops-all"


def test_an_action_without_its_target_is_denied() -> None:
    policies = _families()
    empty = policies.evaluate(kind="RESOURCE_READ", agent_id="ops", server="docs")
    assert (empty.effect, "no server or resource" in empty.reason) == (Effect.DENY, True)


# --- waiving scoring (verifier: {name: none}) -----------------------------------------------


def _with_verifier(document: PolicyDocument, name: str | None) -> PolicyDocument:
    data = document.model_dump(mode="json", by_alias=True, exclude_none=True)
    if name is not None:
        data["spec"]["verifier"] = {"name": name}
    return validate_policy(data)


def _verifier_name(decision: bastion.policy.Decision) -> str | None:
    return decision.verifier.name if decision.verifier is not None else None


def test_a_decision_waives_scoring_only_when_every_policy_governing_the_agent_does() -> None:
    reader = _with_verifier(_policy("reader", _rule("r", "allow", tools=["demo__*"], agents=["reader-*"])), "none")
    alone = PolicySet.compile([reader])
    assert _verifier_name(_call(alone, "reader-1", "demo", "add")) == "none"

    # Another policy governs reader-1 without a stanza (a canary arm, say): the waiver goes.
    payments = _policy("payments", _rule("p", "allow", tools=["bank__*"], agents=["reader-*", "payer"]))
    both = PolicySet.compile([reader, payments])
    assert _verifier_name(_call(both, "reader-1", "demo", "add")) is None
    # ... with another verifier's stanza: that one is carried.
    scored = PolicySet.compile([reader, _with_verifier(payments, "reference")])
    assert _verifier_name(_call(scored, "reader-1", "demo", "add")) == "reference"
    # An agent the other policy does not govern keeps the waiver.
    outsider = PolicySet.compile(
        [reader, _policy("payments", _rule("p", "allow", tools=["bank__*"], agents=["payer"]))]
    )
    assert _verifier_name(_call(outsider, "reader-1", "demo", "add")) == "none"
    # A policy allowing by default, or a rule naming no agent, governs everyone.
    lenient = _policy("lenient", _rule("l", "deny", tools=["x__y"], agents=["nobody"]), default="allow")
    assert _verifier_name(_call(PolicySet.compile([reader, lenient]), "reader-1", "demo", "add")) is None
    anyone = _policy("anyone", _rule("a", "deny", tools=["x__y"]))
    assert _verifier_name(_call(PolicySet.compile([reader, anyone]), "reader-1", "demo", "add")) is None
    # Every governing policy waiving: waived.
    both_waive = PolicySet.compile([reader, _with_verifier(payments, "none")])
    assert _verifier_name(_call(both_waive, "reader-1", "demo", "add")) == "none"
