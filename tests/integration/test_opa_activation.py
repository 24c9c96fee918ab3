"""Rego mode puts in force only what OPA decides by exactly, and says what decided.

A version bastion.rego cannot evaluate is refused when it is created, validated or
activated; an activation OPA does not take fails and leaves the previous version active
and enforced; every decision names the versions OPA decided by, during an activation too;
a set in OPA other than the active one is replaced, never decided by."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from fixtures.opa import INSTALL_TIMEOUT_S, OpaServer, running_opa
from fixtures.rego_service import agent_policy, rego_service

from bastion._errors import DecisionUnavailable
from bastion.policy import validate_policy
from bastion.policy._opa import HeldSet, OpaEngine, opa_input
from bastion.v1 import policy_pb2

pytestmark = pytest.mark.timeout(INSTALL_TIMEOUT_S + 120)

ALLOW_ALL = {"id": "allow-all", "match": {"tools": ["demo__*"]}, "effect": "allow"}
NO_DELETES = {"id": "no-deletes", "match": {"tools": ["demo__delete_file"]}, "effect": "deny"}
V1 = agent_policy(1, [ALLOW_ALL])
V2 = agent_policy(2, [NO_DELETES, ALLOW_ALL])
#: Each thing bastion.rego does not evaluate, in a version 2, and how the refusal names it.
UNSUPPORTED: dict[str, tuple[dict[str, Any], str]] = {
    "when": (agent_policy(2, [{**NO_DELETES, "when": "true"}, ALLOW_ALL]), "rule 'no-deletes' when"),
    "args": (
        agent_policy(2, [{**ALLOW_ALL, "args": {"path": {"type": "string", "max_length": 8}}}]),
        "rule 'allow-all' args",
    ),
    "shadow": (
        agent_policy(2, [{**NO_DELETES, "effect": "shadow", "shadow_effect": "deny"}, ALLOW_ALL]),
        "rule 'no-deletes' effect 'shadow'",
    ),
    "steer": (agent_policy(2, [{**NO_DELETES, "steer": "ask a human"}, ALLOW_ALL]), "rule 'no-deletes' steer"),
    "cost": (agent_policy(2, [{**ALLOW_ALL, "cost": 2}]), "rule 'allow-all' cost"),
    "taint": (
        agent_policy(
            2,
            [ALLOW_ALL],
            taint={"untrusted_sources": ["demo__fetch"], "sinks": ["demo__send"], "on_tainted_sink": "deny"},
        ),
        "spec.taint",
    ),
}


@pytest.fixture(scope="module")
def opa() -> Iterator[OpaServer]:
    with running_opa() as server:
        yield server


def _label(decision: policy_pb2.Decision) -> tuple[str, str, int]:
    return policy_pb2.Effect.Name(decision.effect), decision.rule_id, decision.policy_version


async def _opa_holds(opa: OpaServer) -> HeldSet | None:
    async with OpaEngine(opa.url, deadline_s=5.0) as engine:
        return (await engine.decide_bundled(opa_input(kind="TOOL_CALL", agent_id="probe"))).held


async def test_creating_or_validating_what_bastion_rego_cannot_evaluate_is_refused_naming_it(
    tmp_path: Path, opa: OpaServer
) -> None:
    async with rego_service(tmp_path, opa.url, (V1,)) as service:
        refusals = {}
        for field, (document, named) in UNSUPPORTED.items():
            created = await service.post("/v1/policies", service.signed(document))
            validated = (await service.post("/v1/policies/validate", service.signed(document))).json()
            refusals[field] = (
                created.status_code,
                created.json()["error"]["code"],
                named in created.json()["error"]["message"],
                validated["valid"],
                any(named in problem for problem in validated["problems"]),
            )
        versions = (await service.get("/v1/policies/demo/versions")).json()["versions"]
    assert refusals == {field: (422, "bastion.policy.invalid", True, False, True) for field in UNSUPPORTED}
    assert [item["version"] for item in versions] == [1]


async def test_activating_a_stored_version_rego_mode_cannot_evaluate_is_refused_and_v1_stays_enforced(
    tmp_path: Path, opa: OpaServer
) -> None:
    # Stored while the service ran the native engine, which evaluates `when`.
    async with rego_service(tmp_path, None, (V1,)) as native:
        created = await native.post("/v1/policies", native.signed(UNSUPPORTED["when"][0]))
        assert created.status_code == 201, created.text
    async with rego_service(tmp_path, opa.url, (V1,)) as service:
        activated = await service.post("/v1/policies/demo/versions/2/activate")
        active = await service.active()
        decision = await service.decide("delete_file")
    assert activated.status_code == 422, activated.text
    error = activated.json()["error"]
    assert error["code"] == "bastion.policy.invalid"
    assert "'demo' v2" in error["message"]
    assert "rule 'no-deletes' when" in error["message"]
    assert active == {"demo": 1}
    assert _label(decision) == ("ALLOW", "allow-all", 1)
    assert (await _opa_holds(opa)) == HeldSet.of([validate_policy(V1)])


async def test_an_activation_opa_refuses_fails_and_the_previous_version_stays_active_and_enforced(
    tmp_path: Path, opa: OpaServer
) -> None:
    async with rego_service(tmp_path, opa.url, (V1,)) as service:
        assert (await service.post("/v1/policies", service.signed(V2))).status_code == 201
        # A write OPA does not take while it still answers queries (an admin API that times out).
        refused = DecisionUnavailable("cannot write OPA data 'bastion': TimeoutError()")
        with mock.patch.object(OpaEngine, "put_data", side_effect=refused):
            failed = await service.post("/v1/policies/demo/versions/2/activate")
        after_failure = (await service.active(), _label(await service.decide("delete_file")))
        activated = await service.post("/v1/policies/demo/versions/2/activate")
        after_success = (await service.active(), _label(await service.decide("delete_file")))
    assert failed.status_code == 503, failed.text
    error = failed.json()["error"]
    assert error["code"] == "bastion.decision_unavailable"
    assert "nothing was activated" in error["message"]
    assert "previous version stays active" in error["message"]
    assert after_failure == ({"demo": 1}, ("ALLOW", "allow-all", 1))
    assert activated.status_code == 200, activated.text
    assert after_success == ({"demo": 2}, ("DENY", "no-deletes", 2))


async def test_an_activation_whose_answer_from_opa_is_lost_is_undone_in_opa_too(tmp_path: Path, opa: OpaServer) -> None:
    real_put = OpaEngine.put_data
    calls = 0

    async def written_then_lost(engine: OpaEngine, path: str, value: dict[str, Any]) -> None:
        # OPA takes the write, but its answer never arrives (a timeout): OPA now holds v2.
        nonlocal calls
        calls += 1
        await real_put(engine, path, value)
        if calls == 1:
            raise DecisionUnavailable("cannot write OPA data 'bastion': TimeoutError()")

    async with rego_service(tmp_path, opa.url, (V1,)) as service:
        assert (await service.post("/v1/policies", service.signed(V2))).status_code == 201
        with mock.patch.object(OpaEngine, "put_data", written_then_lost):
            failed = await service.post("/v1/policies/demo/versions/2/activate")
            decision = await service.decide("delete_file")
        active = await service.active()
    assert failed.status_code == 503, failed.text
    assert active == {"demo": 1}
    # Never decided by v2, which is not active: OPA is given v1 back first.
    assert _label(decision) == ("ALLOW", "allow-all", 1)
    assert (await _opa_holds(opa)) == HeldSet.of([validate_policy(V1)])


async def test_decisions_during_an_activation_each_name_the_version_that_decided_them(
    tmp_path: Path, opa: OpaServer
) -> None:
    async with rego_service(tmp_path, opa.url, (V1,)) as service:
        assert (await service.post("/v1/policies", service.signed(V2))).status_code == 201
        activation = asyncio.create_task(service.post("/v1/policies/demo/versions/2/activate"))
        labels = set()
        while not activation.done():
            decisions = await asyncio.gather(*(service.decide("delete_file") for _ in range(20)))
            labels |= {_label(decision) for decision in decisions}
        assert (await activation).status_code == 200
        labels.add(_label(await service.decide("delete_file")))
        listing = (await service.get("/v1/policies")).json()
        last = await service.decide("delete_file")
    # v1 allows the deletion, v2 denies it: each answer's version matches its effect.
    assert labels <= {("ALLOW", "allow-all", 1), ("DENY", "no-deletes", 2)}
    assert ("DENY", "no-deletes", 2) in labels
    assert last.bundle_digest == listing["bundle_digest"]


async def test_a_set_in_opa_other_than_the_active_one_is_replaced_not_decided_by(
    tmp_path: Path, opa: OpaServer
) -> None:
    async with rego_service(tmp_path, opa.url, (V1,)) as service:
        assert (await service.post("/v1/policies", service.signed(V2))).status_code == 201
        assert (await service.post("/v1/policies/demo/versions/2/activate")).status_code == 200
        # Another writer (or a late write) puts v1 back into OPA behind the service's back.
        async with OpaEngine(opa.url, deadline_s=5.0) as engine:
            await engine.push_policies([validate_policy(V1)])
        decision = await service.decide("delete_file")
    assert _label(decision) == ("DENY", "no-deletes", 2)
    assert (await _opa_holds(opa)) == HeldSet.of([validate_policy(V2)])


async def test_a_rollout_from_before_the_switch_to_opa_cannot_be_promoted_but_can_be_rolled_back(
    tmp_path: Path, opa: OpaServer
) -> None:
    async with rego_service(tmp_path, None, (V1,)) as native:
        assert (await native.post("/v1/policies", native.signed(V2))).status_code == 201
        started = await native.post("/v1/rollouts", {"policy": "demo", "version": 2, "percent": 50})
        assert started.status_code == 201, started.text
    rollout = started.json()["id"]
    async with rego_service(tmp_path, opa.url, (V1,)) as service:
        promoted = await service.post(f"/v1/rollouts/{rollout}/promote")
        activated_during = await service.post("/v1/policies/demo/versions/2/activate")
        rolled_back = await service.post(f"/v1/rollouts/{rollout}/rollback")
        activated = await service.post("/v1/policies/demo/versions/2/activate")
        decision = await service.decide("delete_file")
    assert (promoted.status_code, promoted.json()["error"]["code"]) == (409, "bastion.policy.rollout_conflict")
    assert "roll it back, then activate v2" in promoted.json()["error"]["message"]
    assert activated_during.status_code == 409, activated_during.text
    assert rolled_back.status_code == 200, rolled_back.text
    assert activated.status_code == 200, activated.text
    assert _label(decision) == ("DENY", "no-deletes", 2)
