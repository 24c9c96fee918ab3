"""Rego mode after OPA restarts empty (a sidecar or pod restart on the same address): decisions
deny and /readyz fails while OPA holds no policy set, then the service loads bastion.rego and
the active set into it again — on the first decision that finds it empty, or on its own
periodic check — and both recover."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from unittest import mock

import pytest
from fixtures.opa import INSTALL_TIMEOUT_S, OpaServer, restart_opa, start_opa
from fixtures.rego_service import RegoService, agent_policy, rego_service

from bastion._errors import DecisionUnavailable
from bastion.policy import validate_policy
from bastion.policy._opa import HeldSet, OpaEngine, opa_input
from bastion.v1 import policy_pb2

pytestmark = pytest.mark.timeout(INSTALL_TIMEOUT_S + 120)

V1 = agent_policy(1, [{"id": "allow-add", "match": {"tools": ["demo__add"]}, "effect": "allow"}])
#: Well above the service's check interval (1 s), for a loaded machine.
RECOVERY_S = 15.0


@pytest.fixture
def opa() -> Iterator[list[OpaServer]]:
    """A fresh OPA for each test, as a list whose last item is the one running (restarts append)."""
    servers = [start_opa()]
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


async def _until(check: Callable[[], Awaitable[bool]], within_s: float = RECOVERY_S) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.1)
    return False


def _label(decision: policy_pb2.Decision) -> tuple[str, str, int]:
    return policy_pb2.Effect.Name(decision.effect), decision.rule_id, decision.policy_version


async def _opa_holds(url: str) -> HeldSet | None:
    async with OpaEngine(url, deadline_s=5.0) as engine:
        return (await engine.decide_bundled(opa_input(kind="TOOL_CALL", agent_id="probe"))).held


async def _not_ready(service: RegoService) -> bool:
    return await service.ready() == 503


async def _ready(service: RegoService) -> bool:
    return await service.ready() == 200


async def test_the_first_decision_after_opa_restarts_empty_reloads_it_and_is_decided(
    tmp_path: Path, opa: list[OpaServer]
) -> None:
    async with rego_service(tmp_path, opa[0].url, (V1,), opa_deadline_ms=2000) as service:
        before = await service.decide("add")
        opa.append(restart_opa(opa[0]))
        after = await service.decide("add")
        ready = await service.ready()
    assert _label(before) == ("ALLOW", "allow-add", 1)
    assert _label(after) == ("ALLOW", "allow-add", 1)
    assert ready == 200


async def test_while_opa_is_down_decisions_deny_and_readyz_fails_until_it_is_back_and_reloaded(
    tmp_path: Path, opa: list[OpaServer]
) -> None:
    async with rego_service(tmp_path, opa[0].url, (V1,), opa_deadline_ms=2000) as service:
        assert await service.ready() == 200
        opa[0].kill()
        down = await service.decide("add")
        went_unready = await _until(lambda: _not_ready(service))
        opa.append(start_opa(port=opa[0].port))
        # No decision asks: the service's own check finds OPA empty and reloads it.
        came_back = await _until(lambda: _ready(service))
        held = await _opa_holds(opa[-1].url)
        after = await service.decide("add")
    assert (policy_pb2.Effect.Name(down.effect), down.rule_id) == ("DENY", "default")
    assert down.reason.startswith("opa: ")
    assert "unreachable" in down.reason
    assert "127.0.0.1" not in down.reason
    assert went_unready, "/readyz stayed 200 while OPA was down"
    assert came_back, "/readyz did not recover after OPA came back"
    assert held == HeldSet.of([validate_policy(V1)])
    assert _label(after) == ("ALLOW", "allow-add", 1)


async def test_while_opa_answers_without_the_policy_set_decisions_deny_saying_so_and_readyz_fails(
    tmp_path: Path, opa: list[OpaServer]
) -> None:
    async with rego_service(tmp_path, opa[0].url, (V1,), opa_deadline_ms=2000) as service:
        # OPA comes back empty and, for a while, refuses the module (an admin API failing).
        refused = DecisionUnavailable("cannot load Rego module 'bastion': ClientResponseError()")
        with mock.patch.object(OpaEngine, "load_module", side_effect=refused):
            opa.append(restart_opa(opa[0]))
            denied = await service.decide("add")
            went_unready = await _until(lambda: _not_ready(service))
        came_back = await _until(lambda: _ready(service))
        after = await service.decide("add")
    assert _label(denied) == ("DENY", "default", 0)
    assert denied.reason.startswith("opa: OPA holds no Bastion policy set"), denied.reason
    assert went_unready, "/readyz stayed 200 while OPA held no policy set"
    assert came_back, "/readyz did not recover once OPA took the module"
    assert _label(after) == ("ALLOW", "allow-add", 1)
