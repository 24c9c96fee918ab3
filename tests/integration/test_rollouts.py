"""Canary rollouts end to end on real services: sticky arms (and across a restart), decisions
per arm, promote, rollback, auto-rollback (over gRPC and through the real proxy), refusals,
the audit records in the graph, the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest
from fixtures import inprocess
from fixtures.graphapi import auditor_token, poll
from fixtures.mcp_client import WIRE_FORMATS, mcp_client
from fixtures.mcpcalls import ProxyClient, headers, tool_call
from fixtures.policycli import policy_cli
from fixtures.policystack import free_addr
from fixtures.upstream import demo_upstream
from mcp.shared.exceptions import MCPError
from pydantic import SecretStr

from bastion._appconfig import AppConfig
from bastion._identity import ensure_dev_key, issue_token
from bastion._rpc import auth_metadata
from bastion.policy import PolicySettings, serve, sign_bundle
from bastion.v1 import policy_pb2, policy_pb2_grpc

TOKEN = "rollouts-test-service-token"
DEADLINE = 10.0
V1 = """apiVersion: bastion.dev/v1
kind: AgentPolicy
metadata: {name: pay, version: 1}
spec:
  rules:
    - {id: add-v1, match: {tools: ['demo__add']}, effect: allow}
"""
#: The candidate denies what the stable version allows.
V2 = V1.replace("version: 1", "version: 2").replace("add-v1", "add-v2").replace("effect: allow", "effect: deny")
#: A candidate whose condition fails to evaluate (no such argument): an error deny.
V3 = V1.replace("version: 1", "version: 3").replace("effect: allow}", "when: 'args.missing > 1', effect: allow}")


@dataclass(frozen=True)
class Running:
    grpc_addr: str
    http_url: str
    home: Path

    def bearer(self, *roles: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {issue_token(ensure_dev_key(self.home), subject='ops-bob', roles=roles)}"}


@contextlib.asynccontextmanager
async def _running(home: Path, policy: Path, **extra: Any) -> AsyncIterator[Running]:
    options = {
        "home": home,
        "policy_grpc_addr": "127.0.0.1:0",
        "policy_addr": "127.0.0.1:0",
        "service_token": SecretStr(TOKEN),
        "graph_grpc_addr": "127.0.0.1:9",  # nothing listens: records wait in the outbox
        **extra,
    }
    settings = PolicySettings(**options)
    async with inprocess.serving(serve, settings, AppConfig(policies=(policy,))) as addresses:
        yield Running(addresses["grpc"], f"http://{addresses['http']}", home)


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "pay.yaml"
    path.write_text(V1)
    return path


@pytest.fixture
async def service(tmp_path: Path, policy_file: Path) -> AsyncIterator[Running]:
    async with _running(tmp_path / "home", policy_file) as running:
        await _store(running, V2, V3)
        yield running


async def _store(running: Running, *texts: str) -> None:
    for text in texts:
        bundle = sign_bundle(text, ensure_dev_key(running.home), kid="dev")
        reply = await _request(running, "POST", "/v1/policies", {"bundle": bundle})
        assert reply.status_code == 201, reply.text


async def _request(
    running: Running, method: str, path: str, body: Any = None, *, roles: tuple[str, ...] = ("operator",)
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=running.http_url, timeout=DEADLINE) as http:
        if method == "POST" and isinstance(body, bytes):
            return await http.post(path, content=body, headers=running.bearer(*roles))
        return await http.request(method, path, json=body, headers=running.bearer(*roles))


async def _start(running: Running, **body: Any) -> dict[str, Any]:
    reply = await _request(running, "POST", "/v1/rollouts", {"policy": "pay", "version": 2, **body})
    assert reply.status_code == 201, reply.text
    started: dict[str, Any] = reply.json()
    return started


def _call(agent: str, session: str = "") -> policy_pb2.DecideRequest:
    return policy_pb2.DecideRequest(
        action=policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server="demo", tool="add"),
        ctx=policy_pb2.Context(agent_id=agent, tenant="acme", session_id=session, request_id=f"{agent}/{session}"),
    )


async def _decide_all(running: Running, requests: list[policy_pb2.DecideRequest]) -> list[policy_pb2.Decision]:
    async with grpc.aio.insecure_channel(running.grpc_addr) as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        decisions: list[policy_pb2.Decision] = []
        for start in range(0, len(requests), 1000):
            batch = policy_pb2.DecideBatchRequest(requests=requests[start : start + 1000])
            reply = await stub.DecideBatch(batch, metadata=auth_metadata(TOKEN), timeout=DEADLINE)
            decisions.extend(reply.decisions)
        return decisions


async def _decide_stream(running: Running, requests: list[policy_pb2.DecideRequest]) -> list[policy_pb2.Decision]:
    async with grpc.aio.insecure_channel(running.grpc_addr) as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        call = stub.DecideStream(iter(requests), metadata=auth_metadata(TOKEN), timeout=DEADLINE)
        return [decision async for decision in call]


def _arms(decisions: list[policy_pb2.Decision]) -> dict[str, int]:
    return {decision.request_id: decision.rollout_arm for decision in decisions}


# --- stickiness ----------------------------------------------------------------------------


async def test_ten_percent_of_ten_thousand_agents_land_on_canary_and_stay_there_across_a_restart(
    tmp_path: Path, policy_file: Path
) -> None:
    agents = [_call(f"agent-{number}") for number in range(10_000)]
    async with _running(tmp_path / "home", policy_file) as running:
        await _store(running, V2)
        rollout = await _start(running, percent=10)
        first = _arms(await _decide_all(running, agents))
        again = _arms(await _decide_all(running, agents))
    share = sum(arm == policy_pb2.CANARY for arm in first.values()) / len(first)
    assert 0.085 <= share <= 0.115, share
    assert set(first.values()) == {policy_pb2.STABLE, policy_pb2.CANARY}
    assert again == first

    async with _running(tmp_path / "home", policy_file) as restarted:
        after = _arms(await _decide_all(restarted, agents))
        state = (await _request(restarted, "GET", f"/v1/rollouts/{rollout['id']}", roles=("auditor",))).json()
    assert after == first
    assert state["state"] == "running"
    # Counts survive the restart (written by the flush or at shutdown), and grow after it.
    assert state["counts"]["canary"]["decisions"] + state["counts"]["stable"]["decisions"] == 30_000


async def test_session_stickiness_follows_the_session_and_falls_back_to_the_agent(service: Running) -> None:
    await _start(service, percent=50, stickiness="session")
    # One agent, many sessions: both arms; the same session always the same arm.
    sessions = [_call("one-agent", f"session-{number}") for number in range(200)]
    arms = _arms(await _decide_all(service, sessions))
    assert set(arms.values()) == {policy_pb2.STABLE, policy_pb2.CANARY}
    assert _arms(await _decide_all(service, sessions)) == arms
    # No session: the agent decides, so one agent without a session is always on one arm.
    bare = _arms(await _decide_all(service, [_call("one-agent") for _ in range(20)]))
    assert len(set(bare.values())) == 1


# --- decisions per arm, promote, rollback --------------------------------------------------


async def test_each_arm_is_decided_by_its_version(service: Running) -> None:
    await _start(service, percent=50)
    decisions = await _decide_stream(service, [_call(f"agent-{number}") for number in range(400)])
    by_arm = {
        arm: {(item.effect, item.policy_version, item.rule_id) for item in decisions if item.rollout_arm == arm}
        for arm in (policy_pb2.STABLE, policy_pb2.CANARY)
    }
    assert by_arm == {
        policy_pb2.STABLE: {(policy_pb2.ALLOW, 1, "add-v1")},
        policy_pb2.CANARY: {(policy_pb2.DENY, 2, "add-v2")},
    }


async def test_promote_activates_the_candidate_for_watchers_and_every_caller(service: Running) -> None:
    rollout = await _start(service, percent=10)
    async with grpc.aio.insecure_channel(service.grpc_addr) as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        watch = stub.Watch(policy_pb2.WatchRequest(policy_name="pay"), metadata=auth_metadata(TOKEN), timeout=10)
        loaded = await watch.read()
        assert isinstance(loaded, policy_pb2.BundleEvent)
        assert (loaded.kind, loaded.version) == (policy_pb2.BundleEvent.LOADED, 1)
        promoted = await _request(service, "POST", f"/v1/rollouts/{rollout['id']}/promote")
        activated = await asyncio.wait_for(watch.read(), 1.0)
        watch.cancel()
    assert promoted.status_code == 200, promoted.text
    assert isinstance(activated, policy_pb2.BundleEvent)
    assert (activated.kind, activated.version) == (policy_pb2.BundleEvent.ACTIVATED, 2)
    body = promoted.json()
    assert (body["state"], body["ended_by"], body["reason"]) == ("promoted", "ops-bob", "promoted by an operator")
    decisions = await _decide_all(service, [_call(f"agent-{number}") for number in range(100)])
    assert {(item.policy_version, item.rollout_arm) for item in decisions} == {(2, policy_pb2.ROLLOUT_ARM_UNSPECIFIED)}
    versions = (await _request(service, "GET", "/v1/policies/pay/versions", roles=("auditor",))).json()
    assert versions["active_version"] == 2

    again = await _request(service, "POST", f"/v1/rollouts/{rollout['id']}/rollback")
    assert (again.status_code, again.json()["error"]["code"]) == (409, "bastion.policy.rollout_conflict")
    assert "already promoted" in again.json()["error"]["message"]


async def test_rollback_ends_the_rollout_and_keeps_the_stable_version(service: Running) -> None:
    rollout = await _start(service, percent=50)
    await _decide_all(service, [_call(f"agent-{number}") for number in range(100)])
    ended = await _request(service, "POST", f"/v1/rollouts/{rollout['id']}/rollback")
    assert ended.status_code == 200, ended.text
    body = ended.json()
    assert body["state"] == "rolled_back"
    assert body["counts"]["canary"]["decisions"] + body["counts"]["stable"]["decisions"] == 100
    assert body["counts"]["canary"]["denies"] == body["counts"]["canary"]["decisions"] > 0
    decisions = await _decide_all(service, [_call(f"agent-{number}") for number in range(100)])
    assert {(item.policy_version, item.rollout_arm) for item in decisions} == {(1, policy_pb2.ROLLOUT_ARM_UNSPECIFIED)}
    listing = (await _request(service, "GET", "/v1/rollouts?policy=pay", roles=("auditor",))).json()
    assert [(item["id"], item["state"]) for item in listing["rollouts"]] == [(rollout["id"], "rolled_back")]
    # A new rollout of the same policy may start once the first has ended.
    assert (await _start(service, percent=5))["state"] == "running"


async def test_a_canary_that_denies_more_is_rolled_back_automatically_with_the_reason(service: Running) -> None:
    rollout = await _start(service, percent=50, rollback_on={"deny_rate": 0.2, "window": "1m", "min_decisions": 20})
    await _decide_stream(service, [_call(f"agent-{number}") for number in range(200)])
    state: dict[str, Any] = {}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        state = (await _request(service, "GET", f"/v1/rollouts/{rollout['id']}", roles=("auditor",))).json()
        if state["state"] != "running":
            break
        await asyncio.sleep(0.1)
    assert state["state"] == "auto_rolled_back", state
    assert state["ended_by"] == "bastion.policy (auto-rollback)"
    assert state["reason"].startswith("canary deny rate 1.00 vs stable 0.00 over 1m exceeds 0.2 ("), state["reason"]
    decisions = await _decide_all(service, [_call(f"agent-{number}") for number in range(50)])
    assert {item.policy_version for item in decisions} == {1}
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"{service.http_url}/metrics")).text
    assert 'bastion_policy_rollout_auto_rollbacks_total{policy="pay"} 1.0' in metrics
    assert 'bastion_policy_rollout_decisions_total{arm="canary",effect="deny",policy="pay"}' in metrics


async def test_a_canary_whose_conditions_error_is_rolled_back_on_error_rate(service: Running) -> None:
    reply = await _request(
        service,
        "POST",
        "/v1/rollouts",
        {"policy": "pay", "version": 3, "percent": 50, "rollback_on": {"error_rate": 0.5, "min_decisions": 10}},
    )
    rollout = reply.json()
    await _decide_stream(service, [_call(f"agent-{number}") for number in range(100)])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        state = (await _request(service, "GET", f"/v1/rollouts/{rollout['id']}", roles=("auditor",))).json()
        if state["state"] != "running":
            break
        await asyncio.sleep(0.1)
    assert state["state"] == "auto_rolled_back", state
    assert state["reason"].startswith("canary deny rate 1.00") is False
    assert state["reason"].startswith("canary error rate 1.00 vs stable 0.00 over 5m exceeds 0.5"), state["reason"]
    assert state["counts"]["canary"]["errors"] == state["counts"]["canary"]["decisions"] > 0


async def test_a_canary_within_its_threshold_keeps_running(service: Running) -> None:
    rollout = await _start(service, percent=50, rollback_on={"deny_rate": 0.2, "min_decisions": 1000})
    await _decide_stream(service, [_call(f"agent-{number}") for number in range(200)])
    await asyncio.sleep(0.6)
    state = (await _request(service, "GET", f"/v1/rollouts/{rollout['id']}", roles=("auditor",))).json()
    assert state["state"] == "running"


async def test_a_canary_is_still_rolled_back_automatically_once_a_failed_store_recovers(service: Running) -> None:
    # Found by an attacker's probe: the store failed once as the canary breached (another writer
    # held it past SQLite's 5 s busy timeout), and that ended the background check for good: the
    # canary denying every call stayed in force, and no later breach or count flush was acted on.
    rollout = await _start(service, percent=100, rollback_on={"deny_rate": 0.5, "window": "1m", "min_decisions": 5})
    writer = sqlite3.connect(service.home / "policy" / "versions.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # every write of the service now waits, then fails
    try:
        decisions = await _decide_all(service, [_call(f"agent-{number}") for number in range(20)])
        assert {(item.effect, item.rollout_arm) for item in decisions} == {(policy_pb2.DENY, policy_pb2.CANARY)}
        await asyncio.sleep(8)  # the auto-rollback's write has failed by now (breach within 0.25 s, then 5 s)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    state: dict[str, Any] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = (await _request(service, "GET", f"/v1/rollouts/{rollout['id']}", roles=("auditor",))).json()
        if state["state"] != "running":
            break
        await asyncio.sleep(0.1)
    assert (state["state"], state["ended_by"]) == ("auto_rolled_back", "bastion.policy (auto-rollback)"), state
    assert {item.policy_version for item in await _decide_all(service, [_call("agent-1")])} == {1}


# --- refusals ------------------------------------------------------------------------------

BAD = [
    ({"policy": "pay", "version": 9, "percent": 10}, 404, "bastion.not_found", "has no version 9"),
    ({"policy": "nope", "version": 1, "percent": 10}, 404, "bastion.not_found", "'nope'"),
    ({"policy": "pay", "version": 1, "percent": 10}, 409, "bastion.policy.rollout_conflict", "already the active"),
    ({"policy": "pay", "version": 2, "percent": 101}, 422, "bastion.invalid_request", "percent"),
    ({"policy": "pay", "version": 2, "percent": -1}, 422, "bastion.invalid_request", "percent"),
    ({"policy": "pay", "version": 2, "percent": "10"}, 422, "bastion.invalid_request", "percent"),
    ({"policy": "pay", "version": 2, "percent": True}, 422, "bastion.invalid_request", "percent"),
    ({"policy": "pay", "version": 2}, 422, "bastion.invalid_request", "percent: Field required"),
    ({"policy": "pay", "version": 2, "percent": 10, "stickiness": "user"}, 422, "bastion.invalid_request", "stick"),
    ({"policy": "pay", "version": 2, "percent": 10, "id": "mine"}, 422, "bastion.invalid_request", "id: Extra"),
    ({"policy": "pay", "version": "2", "percent": 10}, 422, "bastion.invalid_request", "version"),
    ({"policy": "Pay", "version": 2, "percent": 10}, 422, "bastion.policy.invalid", "not a policy name"),
    (
        {"policy": "pay", "version": 2, "percent": 10, "rollback_on": {"window": "5m"}},
        422,
        "bastion.invalid_request",
        "deny_rate or error_rate",
    ),
    (
        {"policy": "pay", "version": 2, "percent": 10, "rollback_on": {"deny_rate": 2}},
        422,
        "bastion.invalid_request",
        "deny_rate",
    ),
    (
        {"policy": "pay", "version": 2, "percent": 10, "rollback_on": {"deny_rate": 0.1, "window": "2d"}},
        422,
        "bastion.invalid_request",
        "between 1s and 1h",
    ),
    (b'{"policy": "pay", "policy": "pay", "version": 2, "percent": 10}', 422, "bastion.invalid_request", "duplicate"),
    (b"not json", 422, "bastion.invalid_request", "not valid JSON"),
]


@pytest.mark.parametrize(("body", "status", "code", "words"), BAD)
async def test_bad_rollout_requests_are_refused_precisely_and_change_nothing(
    service: Running, body: Any, status: int, code: str, words: str
) -> None:
    reply = await _request(service, "POST", "/v1/rollouts", body)
    assert (reply.status_code, reply.json()["error"]["code"]) == (status, code), reply.text
    assert words in reply.json()["error"]["message"]
    listing = (await _request(service, "GET", "/v1/rollouts", roles=("auditor",))).json()
    assert listing["rollouts"] == []
    decisions = await _decide_all(service, [_call("agent-1")])
    assert decisions[0].rollout_arm == policy_pb2.ROLLOUT_ARM_UNSPECIFIED


async def test_a_second_rollout_of_a_policy_is_409_and_unknown_ids_are_404(service: Running) -> None:
    first = await _start(service, percent=10)
    second = await _request(service, "POST", "/v1/rollouts", {"policy": "pay", "version": 3, "percent": 10})
    assert second.status_code == 409
    assert f"already has a running rollout {first['id']}" in second.json()["error"]["message"]
    for method, path in (("GET", "/v1/rollouts/nope"), ("POST", "/v1/rollouts/nope/promote")):
        reply = await _request(service, method, path)
        assert (reply.status_code, reply.json()["error"]["code"]) == (404, "bastion.not_found")
    auditor = await _request(service, "POST", f"/v1/rollouts/{first['id']}/promote", roles=("auditor",))
    assert auditor.status_code == 403
    assert (await _request(service, "GET", "/v1/rollouts", roles=("auditor",))).json()["rollouts"][0]["state"] == (
        "running"
    )


async def test_activating_a_version_of_a_policy_being_rolled_out_is_409_until_the_rollout_ends(
    service: Running,
) -> None:
    # Found by an attacker's probe: the activation went through unaudited and the rollout
    # went on naming v1 as its stable arm, so its audit records then said something false.
    rollout = await _start(service, percent=50)
    refused = await _request(service, "POST", "/v1/policies/pay/versions/3/activate")
    assert refused.status_code == 409
    assert f"has a running rollout {rollout['id']}" in refused.json()["error"]["message"]
    running = (await _request(service, "GET", f"/v1/rollouts/{rollout['id']}")).json()
    assert (running["state"], running["stable_version"]) == ("running", 1)
    assert (await _request(service, "POST", f"/v1/rollouts/{rollout['id']}/rollback")).status_code == 200
    activated = await _request(service, "POST", "/v1/policies/pay/versions/3/activate")
    assert activated.status_code == 200, activated.text
    assert activated.json()["previous_version"] == 1


async def test_an_operator_of_another_tenant_may_not_start_promote_or_roll_back_a_rollout(service: Running) -> None:
    # A rollout puts a version in force for every tenant's agents.
    token = issue_token(ensure_dev_key(service.home), subject="ops-globex", roles=("operator",), tenant="globex")
    globex = {"Authorization": f"Bearer {token}"}
    running = await _start(service, percent=10)
    async with httpx.AsyncClient(base_url=service.http_url, timeout=DEADLINE) as http:
        refused = [
            await http.post("/v1/rollouts", json={"policy": "pay", "version": 3, "percent": 50}, headers=globex),
            await http.post(f"/v1/rollouts/{running['id']}/promote", headers=globex),
            await http.post(f"/v1/rollouts/{running['id']}/rollback", headers=globex),
        ]
        seen = await http.get(f"/v1/rollouts/{running['id']}", headers=globex)

    for response in refused:
        assert response.status_code == 403, response.request.url
        assert response.json()["error"]["code"] == "bastion.auth.forbidden"
        assert "'ops-globex' of tenant 'globex' may not change policies" in response.json()["error"]["message"]
    assert seen.status_code == 200
    assert (seen.json()["state"], seen.json()["version"], seen.json()["percent"]) == ("running", 2, 10.0)


async def test_a_policy_without_an_active_version_cannot_be_rolled_out(service: Running) -> None:
    other = V1.replace("name: pay", "name: other")
    await _store(service, other)
    reply = await _request(service, "POST", "/v1/rollouts", {"policy": "other", "version": 1, "percent": 10})
    assert reply.status_code == 409
    assert "has no active version" in reply.json()["error"]["message"]


# --- audit ---------------------------------------------------------------------------------


async def test_every_rollout_step_reaches_the_graph(tmp_path: Path, policy_file: Path) -> None:
    home = tmp_path / "home"
    policy_grpc = free_addr()  # the graph learns revocations there: without them its REST refuses every token
    async with (
        inprocess.graph(home, AppConfig(), policy_addr=policy_grpc) as graph,
        _running(
            home, policy_file, graph_grpc_addr=graph["grpc"], service_token=None, policy_grpc_addr=policy_grpc
        ) as running,
    ):
        await _store(running, V2)
        rolled = await _start(running, percent=10)
        await _request(running, "POST", f"/v1/rollouts/{rolled['id']}/rollback")
        promoted = await _start(running, percent=20)
        await _request(running, "POST", f"/v1/rollouts/{promoted['id']}/promote")
        # bastion.yaml's v1 created and activated at start, v2 created, and the four rollout steps.
        nodes = await poll(f"http://{graph['http']}", "/graphs/bastion.policy/nodes", {}, 7, auditor_token(home))
    versions = sorted(
        (node["action"]["method"], node["action"]["arguments"]["version"], node["action"]["arguments"]["by"])
        for node in nodes
        if not node["action"]["method"].startswith("bastion.dev/rollout.")
    )
    assert versions == [
        ("bastion.dev/policy.activated", 1, "bastion.yaml"),
        ("bastion.dev/policy.created", 1, "bastion.yaml"),
        ("bastion.dev/policy.created", 2, "ops-bob"),
    ]
    nodes = [node for node in nodes if node["action"]["method"].startswith("bastion.dev/rollout.")]
    steps = [(node["action"]["arguments"]["rollout_id"], node["action"]["method"]) for node in nodes]
    assert sorted(steps) == sorted(
        [
            (rolled["id"], "bastion.dev/rollout.started"),
            (rolled["id"], "bastion.dev/rollout.rolled_back"),
            (promoted["id"], "bastion.dev/rollout.started"),
            (promoted["id"], "bastion.dev/rollout.promoted"),
        ]
    )
    ended = next(node for node in nodes if node["action"]["method"] == "bastion.dev/rollout.promoted")
    assert ended["action"]["arguments"]["by"] == "ops-bob"
    assert ended["node_type"] == "OBSERVATION"


async def test_audit_records_wait_in_the_outbox_while_the_graph_is_down(tmp_path: Path, policy_file: Path) -> None:
    home = tmp_path / "home"
    async with _running(home, policy_file, service_token=None) as running:  # graph unreachable
        await _store(running, V2)
        rollout = await _start(running, percent=10)
    policy_grpc = free_addr()
    async with (
        inprocess.graph(home, AppConfig(), policy_addr=policy_grpc) as graph,
        _running(home, policy_file, graph_grpc_addr=graph["grpc"], service_token=None, policy_grpc_addr=policy_grpc),
    ):
        nodes = await poll(f"http://{graph['http']}", "/graphs/bastion.policy/nodes", {}, 4, auditor_token(home))
    rollouts = [node for node in nodes if node["action"]["method"].startswith("bastion.dev/rollout.")]
    assert [node["action"]["arguments"]["rollout_id"] for node in rollouts] == [rollout["id"]]


# --- CLI -----------------------------------------------------------------------------------


async def _cli(running: Running, *args: str) -> tuple[int, str, str]:
    return await policy_cli(running.http_url, running.home, *args)


async def test_cli_rollout_rollouts_promote_and_rollback(service: Running) -> None:
    code, out, err = await _cli(
        service, "rollout", "pay", "2", "--percent", "25", "--rollback-on-deny-rate", "0.3", "--window", "2m", "--json"
    )
    assert code == 0, err
    started = orjson.loads(out)
    assert (started["percent"], started["stickiness"], started["rollback_on"]["window"]) == (25, "agent", "2m")
    code, out, err = await _cli(service, "rollouts", "--policy", "pay")
    assert code == 0, err
    assert started["id"] in out
    assert "running" in out
    code, out, err = await _cli(service, "promote", started["id"], "--json")
    assert (code, orjson.loads(out)["state"]) == (0, "promoted"), err
    code, out, err = await _cli(service, "rollback", started["id"])
    assert code == 1
    assert "409" in err
    assert "already promoted" in err
    code, _, err = await _cli(service, "rollout", "pay", "3", "--percent", "150")
    assert code == 1
    assert "percent" in err


# --- through the real proxy ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def _behind_the_proxy(tmp_path: Path, policy_file: Path) -> AsyncIterator[tuple[Running, str, str]]:
    """The policy service with graph, verifier and proxy (demo upstream): (policy, proxy, graph) addresses."""
    (tmp_path / "upstream").mkdir()
    with demo_upstream(tmp_path / "upstream") as upstream:
        app = inprocess.app_config(upstream.url, policy_file)
        policy_grpc = free_addr()  # where the graph learns revocations
        async with (
            inprocess.graph(tmp_path, app, policy_addr=policy_grpc) as graph,
            inprocess.serving(
                serve,
                PolicySettings(
                    home=tmp_path,
                    policy_grpc_addr=policy_grpc,
                    policy_addr="127.0.0.1:0",
                    graph_grpc_addr=graph["grpc"],
                ),
                app,
            ) as policy,
            inprocess.verifier(tmp_path, app) as verifier,
            inprocess.proxy(
                tmp_path, app, policy_addr=policy["grpc"], verifier_addr=verifier["grpc"], graph_addr=graph["grpc"]
            ) as proxy,
        ):
            await inprocess.synced(graph["http"], "graph")
            await inprocess.synced(proxy["http"], "proxy")
            yield Running(policy["grpc"], f"http://{policy['http']}", tmp_path), proxy["http"], graph["http"]


async def test_a_canary_blocking_calls_through_the_proxy_is_rolled_back_and_calls_pass_again(
    tmp_path: Path, policy_file: Path
) -> None:
    async with _behind_the_proxy(tmp_path, policy_file) as (running, proxy_http, graph_http):
        await _store(running, V2)
        rollout = await _start(
            running, percent=100, rollback_on={"deny_rate": 0.5, "window": "1m", "min_decisions": 5, "min_agents": 1}
        )
        client = ProxyClient(tmp_path, proxy_http, graph_http)
        call = tool_call("add", {"a": 2, "b": 3})
        blocked = [await client.post(call, headers(client.token("agent-a"), workflow="wf-canary")) for _ in range(5)]
        state: dict[str, Any] = {}
        for _ in range(100):
            state = (await _request(running, "GET", f"/v1/rollouts/{rollout['id']}", roles=("auditor",))).json()
            if state["state"] != "running":
                break
            await asyncio.sleep(0.05)
        passed = await client.post(call, headers(client.token("agent-a"), workflow="wf-canary"))
    assert {response.json()["error"]["data"]["rule_id"] for response in blocked} == {"add-v2"}
    assert state["state"] == "auto_rolled_back", state
    assert state["reason"].startswith("canary deny rate 1.00 vs stable 0.00 over 1m exceeds 0.5")
    assert passed.json()["result"]["structuredContent"] == {"result": 5}


@pytest.mark.parametrize("mode", WIRE_FORMATS)
async def test_auto_rollback_rollback_and_promote_seen_by_the_mcp_sdk_client_through_the_proxy(
    tmp_path: Path, policy_file: Path, mode: str
) -> None:
    async with _behind_the_proxy(tmp_path, policy_file) as (running, proxy_http, _graph):
        await _store(running, V2)
        url = f"http://{proxy_http}/mcp/demo"
        token = issue_token(ensure_dev_key(tmp_path), subject="agent-sdk")

        async def add() -> object:
            """The SDK client's answer: the sum, or the block's code and rule."""
            async with mcp_client(url, token, mode, "wf-sdk-rollout") as client:
                try:
                    result = await client.call_tool("add", {"a": 2, "b": 3})
                except MCPError as exc:
                    return (exc.code, exc.data["rule_id"])
                assert result.structured_content is not None
                return result.structured_content["result"]

        before = await add()
        # Auto-rollback: the canary denies every call, past the allowed rise in deny rate.
        guarded = await _start(
            running, percent=100, rollback_on={"deny_rate": 0.5, "window": "1m", "min_decisions": 3, "min_agents": 1}
        )
        while_guarded = [await add() for _ in range(3)]
        state: dict[str, Any] = {}
        for _ in range(100):
            state = (await _request(running, "GET", f"/v1/rollouts/{guarded['id']}", roles=("auditor",))).json()
            if state["state"] != "running":
                break
            await asyncio.sleep(0.05)
        after_auto = await add()
        # Manual rollback, then promote.
        canary = await _start(running, percent=100)
        during = await add()
        rolled_back = await _request(running, "POST", f"/v1/rollouts/{canary['id']}/rollback")
        after_rollback = await add()
        second = await _start(running, percent=100)
        promoted = await _request(running, "POST", f"/v1/rollouts/{second['id']}/promote")
        after_promote = await add()
    blocked = (-32003, "add-v2")
    assert while_guarded == [blocked] * 3
    assert state["state"] == "auto_rolled_back", state
    assert (before, after_auto, during, after_rollback, after_promote) == (5, 5, blocked, 5, blocked)
    assert (rolled_back.status_code, promoted.status_code) == (200, 200)
