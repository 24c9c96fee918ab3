"""The proxy learns each active version's verifier and limits settings from Watch, within a
second of an activation, before any decision would carry them."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fixtures import inprocess
from fixtures.policystack import PolicyStack, policy_stack
from fixtures.stack import ROOT
from fixtures.upstream import DemoUpstream, demo_upstream

DEMO_POLICY = ROOT / "examples" / "policies" / "demo.yaml"
V2 = (
    DEMO_POLICY.read_text().replace("version: 1", "version: 2")
    + "  verifier: {name: reference, threshold: 0.7, timeout_ms: 77, fallback: block}\n"
    + "  limits: {rate: 60/m}\n"
)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoUpstream]:
    with demo_upstream(tmp_path_factory.mktemp("upstream")) as server:
        yield server


async def _proxy_metric(stack: PolicyStack, name: str) -> float | None:
    async with httpx.AsyncClient(base_url=f"http://{stack.proxy}", timeout=5) as http:
        page = (await http.get("/metrics")).text
    found = re.search(rf'^{name}\{{policy="demo"\}} ([0-9.e+]+)$', page, re.MULTILINE)
    return float(found.group(1)) if found else None


async def _within(seconds: float, stack: PolicyStack, name: str, value: float) -> float:
    """How long until the proxy's metric `name` shows `value` (fails past `seconds`)."""
    started = time.monotonic()
    while (got := await _proxy_metric(stack, name)) != value:
        assert time.monotonic() - started < seconds, f"{name} is {got}, expected {value}"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_the_proxy_learns_an_activated_versions_settings_within_a_second(
    tmp_path: Path, upstream: DemoUpstream
) -> None:
    app = inprocess.app_config(upstream.url, DEMO_POLICY)
    async with policy_stack(tmp_path, app) as stack:
        await _within(5.0, stack, "bastion_proxy_policy_version", 1)  # the active set at start
        assert await _proxy_metric(stack, "bastion_proxy_policy_verifier_timeout_ms") is None
        created = await stack.policy_post("/v1/policies", {"bundle": stack.sign(V2)})
        assert created.status_code == 201, created.text
        activated = await stack.policy_post("/v1/policies/demo/versions/2/activate")
        assert activated.status_code == 200, activated.text
        took = await _within(1.0, stack, "bastion_proxy_policy_version", 2)
        assert await _proxy_metric(stack, "bastion_proxy_policy_verifier_timeout_ms") == 77
    assert took < 1.0
