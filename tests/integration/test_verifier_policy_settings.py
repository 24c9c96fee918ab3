"""Each policy's `verifier:` stanza applied by the real proxy (real policy service, graph,
demo MCP server; a verifier the test controls over gRPC): the policy's timeout, fallback
and threshold win over the proxy's defaults for the agents the policy governs, and the
strictest of several governing policies wins."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fixtures import inprocess
from fixtures.fake_verifier import fake_verifier, policy_file
from fixtures.mcpcalls import ProxyClient, headers, tool_call
from fixtures.upstream import DemoUpstream, demo_upstream

from bastion._appconfig import AppConfig, ServerConfig
from bastion._identity import ensure_dev_key, issue_token
from bastion.policy import sign_bundle
from bastion.v1 import verifier_pb2

ADD = {"id": "add", "match": {"tools": ["demo__add"]}, "effect": "allow"}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoUpstream]:
    with demo_upstream(tmp_path_factory.mktemp("upstream")) as server:
        yield server


@contextlib.asynccontextmanager
async def _stack(
    home: Path,
    upstream: DemoUpstream,
    policies: list[Path],
    score: float | None,
    verdict: int = verifier_pb2.PASS,
    **proxy: Any,
) -> AsyncIterator[ProxyClient]:
    """Policy, graph, a fake verifier (hanging when `score` is None) and the proxy; ready
    once the proxy learnt every policy's settings from Watch."""
    app = AppConfig(servers={"demo": ServerConfig(url=upstream.url)}, policies=tuple(policies))
    async with (
        inprocess.policy(home, app) as policy,
        inprocess.graph(home, app, policy_addr=policy["grpc"]) as graph,
        fake_verifier(home, score, verdict) as (verifier, _),
        inprocess.proxy(
            home, app, policy_addr=policy["grpc"], verifier_addr=verifier, graph_addr=graph["grpc"], **proxy
        ) as running,
    ):
        client = ProxyClient(home, running["http"], graph["http"])
        names = [path.stem for path in policies]
        for _ in range(200):
            text = await _metrics(client)
            if all(f'bastion_proxy_policy_version{{policy="{name}"}} 1.0' in text for name in names):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"the proxy never learnt the settings of {names}")
        yield client


async def _metrics(client: ProxyClient) -> str:
    async with httpx.AsyncClient(base_url=client.proxy, timeout=10) as http:
        return (await http.get("/metrics")).text


async def _add(client: ProxyClient, agent: str, workflow: str) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    response = await client.post(tool_call("add", {"a": 2, "b": 3}), headers(client.token(agent), workflow=workflow))
    body: dict[str, Any] = response.json()
    return body, time.monotonic() - started


@pytest.mark.parametrize(
    ("fallback", "proxy_default", "code"),
    [("allow", "block", None), ("block", "allow", -32003), ("queue", "block", -32004)],
)
async def test_a_policys_timeout_and_fallback_apply_when_the_verifier_hangs(
    tmp_path: Path, upstream: DemoUpstream, fallback: str, proxy_default: str, code: int | None
) -> None:
    policy = policy_file(tmp_path, "hang", [ADD], {"timeout_ms": 150, "fallback": fallback})
    # The proxy's own timeout (20 s) and fallback are the opposite of the policy's.
    async with _stack(
        tmp_path, upstream, [policy], None, verifier_timeout_ms=20_000, verifier_fallback=proxy_default
    ) as client:
        body, elapsed = await _add(client, "agent-hang", f"wf-hang-{fallback}")
        metrics = await _metrics(client)
        nodes = await client.nodes(f"wf-hang-{fallback}", 1)

    assert elapsed < 5, "the proxy waited for its own timeout, not the policy's"
    assert f'bastion_verifier_fallback_total{{mode="{fallback}"}} 1.0' in metrics
    assert nodes[0]["action"]["tool"] == "add"
    if code is None:
        assert body["result"]["structuredContent"] == {"result": 5}, body
        assert nodes[0]["outcome"] == "FORWARDED"
        assert nodes[0]["verifier_fallback"] is True
        assert "fallback allow (policy 'hang' v1)" in nodes[0]["block_reason"]
        return
    error = body["error"]
    assert error["code"] == code, body
    assert "DEADLINE_EXCEEDED" in error["data"]["reason"]
    assert f"fallback {fallback} (policy 'hang' v1)" in error["data"]["reason"]
    assert nodes[0]["outcome"] == "BLOCKED"
    if fallback == "queue":
        assert error["message"] == "QUEUED"
        assert error["data"]["queue_id"].startswith("que_")
        assert error["data"]["rule_id"] == "bastion.verifier_queued"
    else:
        assert error["data"]["rule_id"] == "bastion.verifier_unavailable"


async def test_a_policy_threshold_stricter_than_the_verifiers_blocks_its_agents_pass(
    tmp_path: Path, upstream: DemoUpstream
) -> None:
    strict_rule = {**ADD, "id": "strict-add", "match": {"agents": ["strict-*"], "tools": ["demo__add"]}}
    lax_rule = {**ADD, "id": "lax-add", "match": {"agents": ["lax-*"], "tools": ["demo__add"]}}
    policies = [
        policy_file(tmp_path, "strict", [strict_rule], {"threshold": 0.4}),
        policy_file(tmp_path, "lax", [lax_rule], {"threshold": 0.9}),
    ]
    # The verifier scores every call 0.5 and says PASS (its own threshold is 0.8).
    async with _stack(tmp_path, upstream, policies, 0.5) as client:
        strict, _ = await _add(client, "strict-1", "wf-strict")
        lax, _ = await _add(client, "lax-1", "wf-lax")

    assert lax["result"]["structuredContent"] == {"result": 5}, lax
    data = strict["error"]["data"]
    assert (strict["error"]["code"], data["rule_id"]) == (-32003, "bastion.verifier_block")
    assert (data["deviation_score"], data["threshold"]) == (0.5, 0.4)
    assert "threshold 0.40 of policy 'strict' v1" in data["reason"]
    assert "verdict PASS" in data["reason"]


async def test_the_strictest_of_several_policies_governing_an_agent_wins(
    tmp_path: Path, upstream: DemoUpstream
) -> None:
    team_rule = {"id": "team-add", "match": {"agents": ["team-*"], "tools": ["demo__add"]}, "effect": "allow"}
    policies = [
        policy_file(tmp_path, "everyone", [ADD], {"timeout_ms": 200, "fallback": "allow"}),
        policy_file(tmp_path, "team", [team_rule], {"timeout_ms": 5000, "fallback": "queue"}),
    ]
    async with _stack(tmp_path, upstream, policies, None, verifier_timeout_ms=20_000) as client:
        team, team_elapsed = await _add(client, "team-1", "wf-team")
        other, _ = await _add(client, "other-1", "wf-other")

    # team-1: both govern; queue beats allow, and 200 ms beats 5 s.
    assert team["error"]["code"] == -32004, team
    assert "DEADLINE_EXCEEDED" in team["error"]["data"]["reason"]
    assert "policy 'everyone' v1, policy 'team' v1" in team["error"]["data"]["reason"]
    assert team_elapsed < 4
    # other-1: only `everyone` governs it.
    assert other["result"]["structuredContent"] == {"result": 5}, other


async def test_a_score_outside_0_to_1_takes_the_policys_fallback(tmp_path: Path, upstream: DemoUpstream) -> None:
    policy = policy_file(tmp_path, "garbage", [ADD], {"fallback": "block"})
    async with _stack(tmp_path, upstream, [policy], 1.7, verifier_fallback="allow") as client:
        body, _ = await _add(client, "agent-garbage", "wf-garbage")

    assert body["error"]["data"]["rule_id"] == "bastion.verifier_unavailable", body
    assert "outside 0..1 (1.7)" in body["error"]["data"]["reason"]


async def test_a_canary_versions_stricter_threshold_applies_to_its_arm_at_once(
    tmp_path: Path, upstream: DemoUpstream
) -> None:
    """Watch announces no rollout: the proxy learns the canary's stanza from its decisions."""
    rule = {**ADD, "match": {"agents": ["canary-*"], "tools": ["demo__add"]}}
    stable = policy_file(tmp_path, "tuned", [rule], {"threshold": 0.9})
    app = AppConfig(servers={"demo": ServerConfig(url=upstream.url)}, policies=(stable,))
    operator = {"Authorization": f"Bearer {issue_token(ensure_dev_key(tmp_path), subject='ops', roles=('operator',))}"}
    async with (
        inprocess.policy(tmp_path, app) as policy,
        inprocess.graph(tmp_path, app, policy_addr=policy["grpc"]) as graph,
        fake_verifier(tmp_path, 0.5) as (verifier, _),  # PASS at 0.5: under 0.9, over 0.4
        inprocess.proxy(
            tmp_path, app, policy_addr=policy["grpc"], verifier_addr=verifier, graph_addr=graph["grpc"]
        ) as running,
    ):
        client = ProxyClient(tmp_path, running["http"], graph["http"])
        before, _ = await _add(client, "canary-1", "wf-canary-before")
        candidate = (
            stable.read_text().replace('"version": 1', '"version": 2').replace('"threshold": 0.9', '"threshold": 0.4')
        )
        async with httpx.AsyncClient(base_url=f"http://{policy['http']}", headers=operator, timeout=10) as admin:
            bundle = sign_bundle(candidate, ensure_dev_key(tmp_path), kid="dev")
            assert (await admin.post("/v1/policies", json={"bundle": bundle})).status_code == 201
            started = await admin.post("/v1/rollouts", json={"policy": "tuned", "version": 2, "percent": 100})
            assert started.status_code == 201, started.text
        after, _ = await _add(client, "canary-1", "wf-canary-after")

    assert before["result"]["structuredContent"] == {"result": 5}, before
    assert after["error"]["data"]["rule_id"] == "bastion.verifier_block", after
    assert "threshold 0.40 of policy 'tuned' v1, policy 'tuned' v2" in after["error"]["data"]["reason"]


@pytest.mark.parametrize("verdict", [verifier_pb2.PASS, verifier_pb2.FLAG])
async def test_a_verdict_milder_than_the_verifiers_own_score_implies_is_not_acted_on(
    tmp_path: Path, upstream: DemoUpstream, verdict: int
) -> None:
    """PASS (or FLAG) at 0.95 against its own threshold of 0.8: the verifier contradicts
    itself, and a probe found the proxy forwarding on the verdict alone. Now it is an
    unusable answer: the fallback (block) applies, saying why."""
    policy = policy_file(tmp_path, "contradicted", [ADD], None)
    async with _stack(tmp_path, upstream, [policy], 0.95, verdict) as client:
        body, _ = await _add(client, "agent-contradicted", "wf-contradicted")
    error = body["error"]
    assert error["data"]["rule_id"] == "bastion.verifier_unavailable", body
    assert "at or above its threshold 0.80, which implies BLOCK" in error["data"]["reason"]
    assert "fallback block" in error["data"]["reason"]


@pytest.mark.parametrize("score", [float("nan"), 2.0])
async def test_a_block_with_an_unusable_score_is_heeded_even_where_the_fallback_allows(
    tmp_path: Path, upstream: DemoUpstream, score: float
) -> None:
    """`fallback: allow` is for a verifier that could not answer, not for one that said
    BLOCK with a bad number: that BLOCK used to become an allow, and vanish from the trail."""
    policy = policy_file(tmp_path, "lenient", [ADD], {"fallback": "allow"})
    async with _stack(tmp_path, upstream, [policy], score, verifier_pb2.BLOCK) as client:
        body, _ = await _add(client, "agent-heeded", "wf-heeded")
        nodes = await client.nodes("wf-heeded", 1)
    error = body["error"]
    assert error["data"]["rule_id"] == "bastion.verifier_block", body
    assert "its BLOCK is heeded" in error["data"]["reason"]
    assert error["data"]["deviation_score"] == 1.0
    assert nodes[0]["outcome"] == "BLOCKED"
    assert nodes[0]["verifier_fallback"] is False
