"""The verifier's `fallback: queue` end to end: a real proxy, policy service and graph, the
demo MCP server as a subprocess (it records each `delete_file` it actually runs), a
verifier that hangs, operators on the proxy's `/v1/queue` routes and `bastion queue`.

What must hold: a call the verifier cannot score is parked (-32004 QUEUED with a queue
id) and never forwarded until an operator releases that exact call; the identical retry
then passes exactly once; a rejection refuses the retry; the queue survives a proxy
restart; agents, other tenants and malformed requests get nowhere; every step is audited.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fixtures import inprocess
from fixtures.fake_verifier import fake_verifier, policy_file
from fixtures.graphapi import bearer
from fixtures.mcpcalls import ProxyClient, headers, tool_call
from fixtures.upstream import DemoUpstream, demo_upstream

from bastion._appconfig import AppConfig, ServerConfig
from bastion._cli import main
from bastion._identity import ensure_dev_key, issue_token

pytestmark = pytest.mark.asyncio(loop_scope="module")

DELETE = {"id": "deletes", "match": {"tools": ["demo__delete_file"]}, "effect": "allow"}
#: The proxy's own fallback is block: only the policy's stanza queues.
VERIFIER = {"timeout_ms": 100, "fallback": "queue"}


class Stack:
    def __init__(self, client: ProxyClient, upstream: DemoUpstream) -> None:
        self.client = client
        self.upstream = upstream
        self.operator = self.who("ops-1", "operator")

    def who(self, subject: str, *roles: str, tenant: str = "default") -> dict[str, str]:
        return bearer(issue_token(ensure_dev_key(self.client.home), subject=subject, roles=roles, tenant=tenant))

    def token(self, agent: str, tenant: str = "default") -> str:
        return self.client.token(agent, tenant)

    def deleted(self) -> list[str]:
        return [json.loads(line)["path"] for line in self.upstream.executed()]

    async def call(self, path: str, token: str, workflow: str | None = None) -> dict[str, Any]:
        body = tool_call("delete_file", {"path": path})
        response = await self.client.post(body, headers(token, workflow=workflow, name="delete_file"))
        answer: dict[str, Any] = response.json()
        return answer

    async def parked(self, path: str, token: str, workflow: str | None = None) -> str:
        body = await self.call(path, token, workflow)
        assert body["error"]["code"] == -32004, body
        queue_id: str = body["error"]["data"]["queue_id"]
        return queue_id

    async def rest(self, method: str, path: str, hdrs: dict[str, str], **kwargs: Any) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.client.proxy, timeout=30) as http:
            return await http.request(method, path, headers=hdrs, **kwargs)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoUpstream]:
    with demo_upstream(tmp_path_factory.mktemp("upstream")) as server:
        yield server


@contextlib.asynccontextmanager
async def _services(home: Path, upstream: DemoUpstream) -> AsyncIterator[tuple[AppConfig, str, str, str]]:
    """Policy, graph and a hanging verifier: (app, policy gRPC, verifier gRPC, "graph-gRPC graph-REST")."""
    app = AppConfig(
        servers={"demo": ServerConfig(url=upstream.url)},
        policies=(policy_file(home, "queueing", [DELETE], VERIFIER),),
    )
    async with (
        inprocess.policy(home, app) as policy,
        inprocess.graph(home, app, policy_addr=policy["grpc"]) as graph,
        fake_verifier(home) as (verifier, _),
    ):
        yield app, policy["grpc"], verifier, graph["grpc"] + " " + graph["http"]


@contextlib.asynccontextmanager
async def _proxy(home: Path, upstream: DemoUpstream, services: tuple[AppConfig, str, str, str]) -> AsyncIterator[Stack]:
    app, policy, verifier, graph = services
    graph_grpc, graph_http = graph.split(" ")
    async with inprocess.proxy(home, app, policy_addr=policy, verifier_addr=verifier, graph_addr=graph_grpc) as proxy:
        stack = Stack(ProxyClient(home, proxy["http"], graph_http), upstream)
        async with httpx.AsyncClient(base_url=stack.client.proxy, timeout=10) as http:
            for _ in range(200):  # until the proxy learnt the policy's verifier stanza from Watch
                if 'bastion_proxy_policy_version{policy="queueing"} 1.0' in (await http.get("/metrics")).text:
                    break
                await asyncio.sleep(0.05)
        yield stack


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory, upstream: DemoUpstream) -> AsyncIterator[Stack]:
    home = tmp_path_factory.mktemp("stack")
    async with _services(home, upstream) as services, _proxy(home, upstream, services) as running:
        yield running


async def test_park_list_release_and_the_retry_passes_exactly_once(stack: Stack) -> None:
    workflow = "wf-queue-flow"
    token = stack.token("agent-flow")
    first = await stack.call("/data/q3.csv", token, workflow)
    error = first["error"]
    assert (error["code"], error["message"]) == (-32004, "QUEUED"), first
    queue_id = error["data"]["queue_id"]
    assert (error["data"]["queue_state"], error["data"]["rule_id"]) == ("pending", "bastion.verifier_queued")
    # Asking again before anyone decided: the same entry, not a second one.
    assert await stack.parked("/data/q3.csv", token, workflow) == queue_id
    assert stack.deleted() == []

    listed = await stack.rest("GET", "/v1/queue", stack.operator, params={"state": "pending", "agent": "agent-flow"})
    assert listed.status_code == 200, listed.text
    assert [item["queue_id"] for item in listed.json()["items"]] == [queue_id]
    item = listed.json()["items"][0]
    assert item["action"]["tool"] == "delete_file"
    assert item["action"]["arguments"] == {"path": "/data/q3.csv"}
    assert "fallback queue (policy 'queueing' v1)" in item["reason"]
    # The approvals listing holds approvals only.
    approvals = await stack.rest("GET", "/v1/approvals", stack.operator, params={"agent": "agent-flow"})
    assert approvals.json()["items"] == []

    released = await stack.rest("POST", f"/v1/queue/{queue_id}/release", stack.operator, json={"reason": "checked"})
    assert released.status_code == 200, released.text
    assert (released.json()["state"], released.json()["decided_by"]) == ("released", "ops-1")

    # Other arguments are another call: parked on their own.
    assert await stack.parked("/data/everything", token, workflow) != queue_id
    passed = await stack.call("/data/q3.csv", token, workflow)
    assert "result" in passed, passed
    again = await stack.parked("/data/q3.csv", token, workflow)
    assert again != queue_id  # exactly once: the next identical call is parked anew
    assert stack.deleted() == ["/data/q3.csv"]
    shown = await stack.rest("GET", f"/v1/queue/{queue_id}", stack.operator)
    assert shown.json()["state"] == "used"

    # The graph ingests asynchronously: wait for the last parked call's node, not for any six.
    await stack.client.nodes(workflow, 4, where=lambda node: node["block_code"] == "bastion.verifier_queued")
    await stack.client.nodes(workflow, 1, where=lambda node: node["action"].get("method") == "bastion.queue/release")
    await stack.client.nodes(workflow, 1, where=lambda node: node["outcome"] == "FORWARDED")
    nodes = await stack.client.nodes(workflow, 6)
    release = [node for node in nodes if node["action"].get("method") == "bastion.queue/release"]
    assert len(release) == 1
    assert release[0]["node_type"] == "VERIFICATION"
    forwarded = [node for node in nodes if node["outcome"] == "FORWARDED" and node["action"].get("tool")]
    assert len(forwarded) == 1
    assert queue_id in forwarded[0]["block_reason"]
    assert forwarded[0]["verifier_fallback"] is True
    parked = [node for node in nodes if node["block_code"] == "bastion.verifier_queued"]
    assert len(parked) == 4
    assert queue_id in parked[0]["block_reason"] or queue_id in parked[1]["block_reason"]


async def test_a_rejected_call_stays_refused_and_deciding_again_is_a_conflict(stack: Stack) -> None:
    token = stack.token("agent-rejected")
    queue_id = await stack.parked("/reject/me", token)
    rejected = await stack.rest("POST", f"/v1/queue/{queue_id}/reject", stack.operator, json={"reason": "no"})
    assert (rejected.status_code, rejected.json()["state"]) == (200, "rejected")

    body = await stack.call("/reject/me", token)

    assert body["error"]["code"] == -32003, body
    assert body["error"]["data"]["queue_id"] == queue_id
    assert body["error"]["data"]["queue_state"] == "rejected"
    assert f"queued call {queue_id} rejected by ops-1: no" in body["error"]["data"]["reason"]
    assert "/reject/me" not in stack.deleted()
    for step in ("release", "reject"):
        again = await stack.rest("POST", f"/v1/queue/{queue_id}/{step}", stack.operator)
        assert (again.status_code, again.json()["error"]["code"]) == (409, "bastion.conflict")
        assert "rejected" in again.json()["error"]["message"]


async def test_the_metrics_count_queue_fallbacks(stack: Stack) -> None:
    await stack.parked("/metrics/one", stack.token("agent-metrics"))
    async with httpx.AsyncClient(base_url=stack.client.proxy, timeout=10) as http:
        text = (await http.get("/metrics")).text
    count = next(line for line in text.splitlines() if line.startswith('bastion_verifier_fallback_total{mode="queue"}'))
    assert float(count.split()[-1]) >= 1
    assert 'bastion_verifier_fallback_total{mode="allow"} 0.0' in text


async def test_who_may_read_and_decide(stack: Stack) -> None:
    queue_id = await stack.parked("/tenant/a", stack.token("agent-tenant", tenant="acme"))
    release = f"/v1/queue/{queue_id}/release"
    agent = {"Authorization": f"Bearer {stack.token('agent-tenant', tenant='acme')}"}
    auditor = stack.who("auditor-acme", "auditor", tenant="acme")
    other_tenant = stack.who("ops-other", "operator", tenant="globex")
    itself = stack.who("agent-tenant", "operator", tenant="acme")

    assert (await stack.rest("POST", release, {})).status_code == 401
    assert (await stack.rest("GET", "/v1/queue", {})).status_code == 401
    assert (await stack.rest("POST", release, agent)).status_code == 403
    assert (await stack.rest("GET", "/v1/queue", agent)).status_code == 403
    assert (await stack.rest("GET", f"/v1/queue/{queue_id}", agent)).status_code == 403
    assert (await stack.rest("POST", release, auditor)).status_code == 403
    assert (await stack.rest("GET", f"/v1/queue/{queue_id}", auditor)).status_code == 200
    assert (await stack.rest("POST", release, other_tenant)).status_code == 404
    assert (await stack.rest("GET", f"/v1/queue/{queue_id}", other_tenant)).status_code == 404
    listing = await stack.rest("GET", "/v1/queue", other_tenant)
    assert queue_id not in [item["queue_id"] for item in listing.json()["items"]]
    own = await stack.rest("POST", release, itself)
    assert own.status_code == 403
    assert "its own call" in own.json()["error"]["message"]
    shown = await stack.rest("GET", f"/v1/queue/{queue_id}", stack.who("ops-acme", "operator", tenant="acme"))
    assert shown.json()["state"] == "pending"


_QID = "que_" + "0" * 32


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", f"/v1/queue/{_QID}/release", None, 404, "bastion.not_found"),
        ("POST", "/v1/queue/../../mcp/demo/release", None, 404, "bastion.not_found"),
        ("POST", "/v1/queue/QUE_" + "A" * 32 + "/release", None, 404, "bastion.not_found"),
        ("POST", "/v1/queue/{id}/RELEASE", None, 404, "bastion.not_found"),
        ("POST", "/v1/queue/{id}/approve", None, 404, "bastion.not_found"),
        ("POST", "/v1/queue/{id}/release/again", None, 404, "bastion.not_found"),
        ("POST", "/v1/queue/{id}\u200b/release", None, 404, "bastion.not_found"),
        ("POST", "/v1/queue/que_" + "\uff10" * 32 + "/release", None, 404, "bastion.not_found"),
        ("POST", "/v1/Queue/{id}/release", None, 404, "bastion.not_found"),
        ("POST", "/v1/qu\u0435ue/{id}/release", None, 404, "bastion.not_found"),  # Cyrillic e
        ("POST", "/v1/approvals/{id}/approve", None, 404, "bastion.not_found"),  # a queue id is no approval
        ("POST", "/v1/queue/apr_" + "0" * 32 + "/release", None, 404, "bastion.not_found"),
        ("POST", "/v1/queue/" + "q" * 5000 + "/release", None, 404, "bastion.not_found"),
        ("GET", "/v1/queue?state=approved", None, 400, "bastion.invalid_request"),
        ("GET", "/v1/queue?limit=100000", None, 400, "bastion.invalid_request"),
        ("GET", "/v1/queue?tenant=globex", None, 400, "bastion.invalid_request"),
        ("DELETE", "/v1/queue", None, 405, "bastion.method_not_allowed"),
        ("GET", "/v1/queue/{id}/release", None, 405, "bastion.method_not_allowed"),
        ("POST", "/v1/queue/{id}/release", b'{"reason": "ok", "release_all": true}', 422, "bastion.invalid_request"),
        ("POST", "/v1/queue/{id}/release", b"[1]", 422, "bastion.invalid_request"),
        ("POST", "/v1/queue/{id}/release", b'{"reason": "' + b"x" * 5000 + b'"}', 413, "bastion.protocol.too_large"),
        ("POST", "/v1/queue/{id}/release", b"x" * (8 << 20), 413, "bastion.protocol.too_large"),
    ],
)
async def test_attacker_probes_get_precise_errors_and_change_nothing(
    stack: Stack, method: str, path: str, body: bytes | None, status: int, code: str
) -> None:
    queue_id = await stack.parked(f"/bad/{status}/{len(path)}/{len(body or b'')}", stack.token("agent-bad"))
    response = await stack.rest(method, path.replace("{id}", queue_id), stack.operator, content=body)

    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    shown = await stack.rest("GET", f"/v1/queue/{queue_id}", stack.operator)
    assert shown.json()["state"] == "pending"


async def test_the_cli_lists_releases_and_rejects(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    token = stack.token("agent-cli")
    first = await stack.parked("/cli/one", token)
    second = await stack.parked("/cli/two", token)
    operator = issue_token(ensure_dev_key(stack.client.home), subject="ops-cli", roles=("operator",))
    addr = stack.client.proxy.removeprefix("http://")

    def run(*argv: str, as_token: str = operator) -> int:
        return main(["queue", *argv, "--addr", addr, "--token", as_token])

    listed = await asyncio.to_thread(run, "list", "--state", "pending", "--agent", "agent-cli", "--json")
    page = json.loads(capsys.readouterr().out)
    shown = await asyncio.to_thread(run, "show", first)
    detail = capsys.readouterr().out
    as_agent = await asyncio.to_thread(run, "release", first, as_token=token)
    unknown = await asyncio.to_thread(run, "release", "que_" + "f" * 32)
    released = await asyncio.to_thread(run, "release", first, "--reason", "checked")
    rejected = await asyncio.to_thread(run, "reject", second)
    out = capsys.readouterr().out
    passed = await stack.call("/cli/one", token)
    refused = await stack.call("/cli/two", token)

    assert (listed, shown, as_agent, unknown, released, rejected) == (0, 0, 2, 1, 0, 0)
    assert sorted(item["queue_id"] for item in page["items"]) == sorted([first, second])
    assert "/cli/one" in detail
    assert f"{first}: released by ops-cli" in out
    assert f"{second}: rejected by ops-cli" in out
    assert "result" in passed, passed
    assert refused["error"]["code"] == -32003, refused


async def test_refusals_on_the_queue_routes_are_audited(stack: Stack) -> None:
    guessed = "que_" + "9" * 32
    agent = {"Authorization": f"Bearer {stack.token('agent-queue-guesser')}"}
    assert (await stack.rest("POST", f"/v1/queue/{guessed}/release", stack.operator)).status_code == 404
    assert (await stack.rest("GET", "/v1/queue", agent)).status_code == 403

    async def audited(code: str, text: str) -> list[dict[str, Any]]:
        rejected = await stack.client.violations("bastion.rejected", 1)
        return [v for v in rejected if v["rule_id"] == code and text in json.dumps(v)]

    for _ in range(100):
        found = await audited("bastion.not_found", guessed), await audited("bastion.auth.forbidden", "queue-guesser")
        if all(found):
            break
        await asyncio.sleep(0.1)
    assert all(found), found


async def test_the_queue_survives_a_proxy_restart(tmp_path: Path, upstream: DemoUpstream) -> None:
    async with _services(tmp_path, upstream) as services:
        async with _proxy(tmp_path, upstream, services) as before:
            token = before.token("agent-restart")
            queue_id = await before.parked("/restart/one", token)
        async with _proxy(tmp_path, upstream, services) as after:
            listed = await after.rest("GET", "/v1/queue", after.operator, params={"agent": "agent-restart"})
            released = await after.rest("POST", f"/v1/queue/{queue_id}/release", after.operator)
            passed = await after.call("/restart/one", token)
            again = await after.call("/restart/one", token)

    assert [item["queue_id"] for item in listed.json()["items"]] == [queue_id]
    assert released.status_code == 200, released.text
    assert "result" in passed, passed
    assert again["error"]["code"] == -32004
    assert upstream.executed()
    assert after.deleted().count("/restart/one") == 1
