"""Canary rollout steps racing other changes, on a real store in a temp dir
(bastion.policy._rollouts.RolloutManager over bastion.policy._registry.PolicyRegistry)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from bastion.policy import PolicyRegistry, PolicyStore
from bastion.policy._rollouts import RolloutManager, RolloutRequest
from bastion.policy._store import RolloutConflict

V1 = """apiVersion: bastion.dev/v1
kind: AgentPolicy
metadata: {name: pay, version: 1}
spec:
  rules:
    - {id: add-v1, match: {tools: ['demo__add']}, effect: allow}
"""
V2 = V1.replace("version: 1", "version: 2").replace("add-v1", "add-v2").replace("effect: allow", "effect: deny")
V3 = V1.replace("version: 1", "version: 3").replace("add-v1", "add-v3")


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[PolicyRegistry]:
    store = PolicyStore(tmp_path / "policy" / "versions.db")
    policies = PolicyRegistry(store)
    for text in (V1, V2, V3):
        await policies.create(text, author="ops")
    await policies.activate("pay", 1, by="ops")
    yield policies
    store.close()


@pytest.mark.parametrize("activated", [3, 2], ids=["another-version", "the-candidate"])
async def test_a_rollout_racing_an_activation_of_its_policy_is_refused_and_nothing_starts(
    registry: PolicyRegistry, activated: int
) -> None:
    # Found by an attacker's probe: the activation landed while the start read the store, and
    # the rollout then ran naming v1 as its stable arm while v3 (or the candidate itself) was in
    # force, so its record, its audit and the operator reading them all said something false.
    rollouts = RolloutManager(registry, registry=CollectorRegistry())
    started, activation = await asyncio.gather(
        rollouts.start(RolloutRequest(policy="pay", version=2, percent=50), by="ops-a"),
        registry.activate("pay", activated, by="ops-b"),
        return_exceptions=True,
    )
    assert not isinstance(activation, BaseException), activation
    assert isinstance(started, RolloutConflict), started
    assert f"v{activated} was activated while this rollout was starting (it read v1)" in str(started)
    assert await rollouts.page("pay") == ([], None)
    assert registry.snapshot.rollouts == ()
    assert [(item.name, item.version) for item in registry.snapshot.versions] == [("pay", activated)]


async def test_a_rollout_started_after_an_activation_names_the_new_stable_version(registry: PolicyRegistry) -> None:
    rollouts = RolloutManager(registry, registry=CollectorRegistry())
    await registry.activate("pay", 3, by="ops-b")
    started = await rollouts.start(RolloutRequest(policy="pay", version=2, percent=50), by="ops-a")
    assert (started.stable_version, started.version, started.state) == (3, 2, "running")
