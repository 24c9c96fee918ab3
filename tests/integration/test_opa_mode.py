"""Rego mode against a real OPA (scripts/opa-up): parity with the native engine, failing closed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from fixtures.opa import INSTALL_TIMEOUT_S, OpaServer, running_opa
from fixtures.policy_pack import PACKS, Case, Pack

from bastion._errors import DecisionUnavailable, PolicyValidationError
from bastion.policy import PolicySet, validate_policy
from bastion.policy._opa import OpaDecision, OpaEngine, bundled_module, opa_input

# The first test may build OPA from source (≈ 8 min cold, DESIGN §10) inside the fixture.
pytestmark = pytest.mark.timeout(INSTALL_TIMEOUT_S + 120)

ALLOWED = opa_input(kind="TOOL_CALL", agent_id="billing-1", server="stripe", tool="refund")


@pytest.fixture(scope="module")
def opa() -> Iterator[OpaServer]:
    with running_opa() as server:
        yield server


@pytest.fixture
async def engine(opa: OpaServer) -> AsyncIterator[OpaEngine]:
    async with OpaEngine(opa.url, deadline_s=5.0) as engine:
        await engine.load_module("bastion", bundled_module())
        yield engine


def _input(case: Case) -> dict[str, object]:
    return dict(
        opa_input(
            kind=case.kind,
            agent_id=case.agent_id,
            server=case.server,
            tool=case.tool,
            resource=case.resource,
            prompt=case.prompt,
        )
    )


def _is_fail_closed(decision: OpaDecision, *words: str) -> bool:
    return (
        decision.effect == "deny"
        and decision.rule_id == "default"
        and decision.reason.startswith("opa: ")
        and all(word in decision.reason for word in words)
    )


def test_the_pack_has_at_least_fifty_cases_over_every_family_and_kind() -> None:
    cases = [case for pack in PACKS for case in pack.cases]
    assert len(cases) >= 50
    assert {
        "TOOL_CALL",
        "TOOL_LIST",
        "RESOURCE_READ",
        "RESOURCE_SUBSCRIBE",
        "PROMPT_GET",
        "COMPLETION",
        "A2A_SEND",
        "A2A_GET",
        "A2A_CANCEL",
        "A2A_PUSH_CONFIG",
    } <= {case.kind for case in cases}
    assert {case.effect for case in cases} == {"allow", "deny", "require_approval"}


@pytest.mark.parametrize("pack", PACKS, ids=lambda pack: pack.name)
async def test_rego_mode_decides_every_pack_case_exactly_as_the_native_engine(engine: OpaEngine, pack: Pack) -> None:
    documents = [validate_policy(document) for document in pack.documents]
    native = PolicySet.compile(documents)
    await engine.push_policies(documents)

    mismatches = []
    for case in pack.cases:
        mine = native.evaluate(
            kind=case.kind,
            agent_id=case.agent_id,
            server=case.server,
            tool=case.tool,
            resource=case.resource,
            prompt=case.prompt,
        )
        theirs = await engine.decide(_input(case))
        expected = (case.effect, case.rule_id)
        got = {
            "native": (mine.effect.value, mine.rule_id, mine.policy_name),
            "opa": (theirs.effect, theirs.rule_id, theirs.policy),
        }
        if got["native"][:2] != expected or got["opa"] != got["native"]:
            mismatches.append((case.name, expected, got, theirs.reason))
    assert mismatches == []


async def test_a_stopped_opa_denies_with_a_reason_and_never_allows() -> None:
    with running_opa() as server:
        async with OpaEngine(server.url, deadline_s=5.0) as engine:
            await engine.load_module("bastion", bundled_module())
            await engine.push_policies([validate_policy(PACKS[0].documents[0])])
            assert (await engine.decide(ALLOWED)).effect == "allow"
            server.stop()
            decision = await engine.decide(ALLOWED)
    assert _is_fail_closed(decision, "unreachable"), decision


async def test_an_opa_slower_than_the_deadline_denies() -> None:
    # A server that accepts the connection and never answers: OPA stuck evaluating.
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()
        finally:
            writer.close()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with OpaEngine(f"http://127.0.0.1:{port}", deadline_s=0.2) as engine:
            decision = await engine.decide(ALLOWED)
    finally:
        server.close()
        await server.wait_closed()
    assert _is_fail_closed(decision, "200 ms", "deadline"), decision


async def test_an_undefined_result_denies(engine: OpaEngine) -> None:
    await engine.load_module("undefined", 'package t.undefined\n\ndecision := {"effect": "allow"} if input.never\n')
    assert _is_fail_closed(await engine.decide(ALLOWED, path="t/undefined/decision"), "undefined")
    assert _is_fail_closed(await engine.decide(ALLOWED, path="t/no/such/rule"), "undefined")


@pytest.mark.parametrize(
    ("result", "words"),
    [
        ('"allow"', ("expected an object",)),
        ("true", ("expected an object",)),
        ('{"effect": "allow"}', ("missing reason, rule_id",)),
        ('{"effect": "allow", "rule_id": "r", "reason": "x", "extra": 1}', ("unknown extra",)),
        ('{"effect": "permit", "rule_id": "r", "reason": "x"}', ("unknown effect 'permit'",)),
        ('{"effect": "ALLOW", "rule_id": "r", "reason": "x"}', ("unknown effect 'ALLOW'",)),
        ('{"effect": "allow", "rule_id": 7, "reason": "x"}', ("non-string rule_id",)),
        ('{"effect": "allow", "rule_id": "", "reason": "x"}', ("empty rule_id",)),
    ],
)
async def test_a_malformed_result_denies(engine: OpaEngine, result: str, words: tuple[str, ...]) -> None:
    await engine.load_module("malformed", f"package t.malformed\n\ndecision := {result}\n")
    assert _is_fail_closed(await engine.decide(ALLOWED, path="t/malformed/decision"), *words)


async def test_an_evaluation_error_in_opa_denies(engine: OpaEngine) -> None:
    # Two complete definitions with different values: OPA answers HTTP 500 (eval_conflict_error).
    module = 'package t.conflict\n\ndecision := {"effect": "allow"} if true\n\ndecision := {"effect": "deny"} if true\n'
    await engine.load_module("conflict", module)
    assert _is_fail_closed(await engine.decide(ALLOWED, path="t/conflict/decision"), "HTTP 500")


async def test_a_rego_syntax_error_is_a_validation_error_naming_the_line(engine: OpaEngine) -> None:
    broken = "package t.broken\n\nallow if {\n    input.x == )\n}\n"
    with pytest.raises(PolicyValidationError, match=r"'broken'.*broken:4:16: unexpected \) token"):
        await engine.load_module("broken", broken)


async def test_a_rego_compile_error_names_the_rule_line(engine: OpaEngine) -> None:
    unsafe = "package t.unsafe\n\nallow if {\n    x == input.y\n}\n"
    with pytest.raises(PolicyValidationError, match=r"unsafe:4:.*var x is unsafe"):
        await engine.load_module("unsafe", unsafe)


async def test_loading_into_an_unreachable_opa_is_decision_unavailable() -> None:
    with running_opa() as server:
        url = server.url
    async with OpaEngine(url) as engine:
        with pytest.raises(DecisionUnavailable, match="cannot load Rego module 'bastion'"):
            await engine.load_module("bastion", bundled_module())


async def test_a_closed_engine_denies() -> None:
    engine = OpaEngine("http://127.0.0.1:9")
    assert _is_fail_closed(await engine.decide(ALLOWED), "not open")


async def test_a_policy_with_conditions_bastion_rego_cannot_evaluate_is_refused_not_loosened(engine: OpaEngine) -> None:
    document = {
        "apiVersion": "bastion.dev/v1",
        "kind": "AgentPolicy",
        "metadata": {"name": "refunds", "version": 1},
        "spec": {
            "rules": [
                {"id": "small", "match": {"tools": ["stripe__refund"]}, "when": "args.amount <= 100", "effect": "allow"}
            ]
        },
    }
    with pytest.raises(PolicyValidationError, match=r"'refunds'.*rule 'small' when"):
        await engine.push_policies([validate_policy(document)])


async def test_custom_rego_sees_the_documented_input_document(engine: OpaEngine) -> None:
    module = """package t.custom

decision := {"effect": "allow", "rule_id": "operators", "reason": reason} if {
    "operator" in input.ctx.roles
    input.action.arguments.amount <= 100
    reason := sprintf("%s %s on %s", [input.ctx.agent_id, input.action.method, input.ctx.labels.team])
}

default decision := {"effect": "require_approval", "rule_id": "others", "reason": "not an operator"}
"""
    await engine.load_module("custom", module)
    document = opa_input(
        kind="TOOL_CALL",
        agent_id="ops-1",
        server="stripe",
        tool="refund",
        method="tools/call",
        arguments={"amount": 40},
        roles=["operator"],
        labels={"team": "payments"},
    )
    decision = await engine.decide(document, path="t/custom/decision")
    assert decision == OpaDecision("allow", "operators", "ops-1 tools/call on payments")
    other = await engine.decide({**document, "ctx": {**document["ctx"], "roles": []}}, path="t/custom/decision")
    assert (other.effect, other.rule_id) == ("require_approval", "others")


async def test_arguments_json_cannot_encode_deny_instead_of_raising(engine: OpaEngine) -> None:
    document = opa_input(kind="TOOL_CALL", agent_id="a", server="s", tool="t", arguments={"blob": object()})
    assert _is_fail_closed(await engine.decide(document), "failed (TypeError)")
