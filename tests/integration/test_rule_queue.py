"""A policy rule with `effect: queue` end to end: a real proxy, policy service, verifier
(answering a fixed low score) and graph, the demo MCP server as a subprocess that records
each `delete_file` it actually runs, and an operator on the proxy's `/v1/queue` routes.

What must hold: the rule parks the call in the durable queue (-32004 QUEUED, naming the
rule), nothing reaches the upstream until an operator releases that exact call, the retry
then passes once and is recorded as the verifier's own answer (not a fallback), and a
rejection keeps it refused. A call other rules allow is not parked.
"""

from __future__ import annotations

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
from bastion._identity import ensure_dev_key, issue_token

pytestmark = pytest.mark.asyncio(loop_scope="module")

RULES = [
    {"id": "park-deletes", "match": {"tools": ["demo__delete_file"]}, "effect": "queue"},
    {"id": "echoes", "match": {"tools": ["demo__echo"]}, "effect": "allow"},
]


class Stack:
    def __init__(self, client: ProxyClient, upstream: DemoUpstream) -> None:
        self.client = client
        self.upstream = upstream
        self.operator = bearer(issue_token(ensure_dev_key(client.home), subject="ops-1", roles=("operator",)))

    def deleted(self) -> list[str]:
        return [json.loads(line)["path"] for line in self.upstream.executed()]

    async def call(self, tool: str, path: str, agent: str, workflow: str) -> dict[str, Any]:
        token = self.client.token(agent, "default")
        arguments = {"path": path} if tool == "delete_file" else {"text": path}
        response = await self.client.post(tool_call(tool, arguments), headers(token, workflow=workflow, name=tool))
        answer: dict[str, Any] = response.json()
        return answer

    async def rest(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.client.proxy, timeout=30) as http:
            return await http.request(method, path, headers=self.operator, **kwargs)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoUpstream]:
    with demo_upstream(tmp_path_factory.mktemp("upstream")) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory, upstream: DemoUpstream) -> AsyncIterator[Stack]:
    home: Path = tmp_path_factory.mktemp("stack")
    app = AppConfig(servers={"demo": ServerConfig(url=upstream.url)}, policies=(policy_file(home, "q", RULES, None),))
    async with (
        inprocess.policy(home, app) as policy,
        inprocess.graph(home, app, policy_addr=policy["grpc"]) as graph,
        fake_verifier(home, score=0.1) as (verifier, _),
        inprocess.proxy(
            home, app, policy_addr=policy["grpc"], verifier_addr=verifier, graph_addr=graph["grpc"]
        ) as proxy,
    ):
        yield Stack(ProxyClient(home, proxy["http"], graph["http"]), upstream)


async def test_a_queue_rule_parks_the_call_until_an_operator_releases_it(stack: Stack) -> None:
    workflow = "wf-rule-queue"
    first = await stack.call("delete_file", "/rule/q.csv", "agent-rule", workflow)

    error = first["error"]
    assert (error["code"], error["message"]) == (-32004, "QUEUED"), first
    queue_id = error["data"]["queue_id"]
    assert (error["data"]["queue_state"], error["data"]["rule_id"]) == ("pending", "park-deletes")
    assert stack.deleted() == []
    shown = await stack.rest("GET", f"/v1/queue/{queue_id}")
    assert shown.status_code == 200, shown.text
    assert (shown.json()["rule_id"], shown.json()["state"]) == ("park-deletes", "pending")
    assert shown.json()["action"]["arguments"] == {"path": "/rule/q.csv"}

    released = await stack.rest("POST", f"/v1/queue/{queue_id}/release", json={"reason": "expected cleanup"})
    assert released.status_code == 200, released.text
    passed = await stack.call("delete_file", "/rule/q.csv", "agent-rule", workflow)
    assert "result" in passed, passed
    again = await stack.call("delete_file", "/rule/q.csv", "agent-rule", workflow)
    assert again["error"]["code"] == -32004, again
    assert again["error"]["data"]["queue_id"] != queue_id  # exactly once
    assert stack.deleted() == ["/rule/q.csv"]

    # The graph ingests asynchronously: wait for the nodes asserted on, not for any four.
    await stack.client.nodes(workflow, 2, where=lambda node: node["block_code"] == "park-deletes")
    await stack.client.nodes(workflow, 1, where=lambda node: node["outcome"] == "FORWARDED")
    nodes = await stack.client.nodes(workflow, 4)
    forwarded = [node for node in nodes if node["outcome"] == "FORWARDED" and node["action"].get("tool")]
    assert len(forwarded) == 1
    assert queue_id in forwarded[0]["block_reason"]
    # The verifier answered: a rule's queue is no stand-in for a missing score.
    assert forwarded[0]["verifier_fallback"] is False
    parked = [node for node in nodes if node["block_code"] == "park-deletes"]
    assert len(parked) == 2


async def test_a_rejected_rule_queue_entry_keeps_the_call_refused(stack: Stack) -> None:
    first = await stack.call("delete_file", "/rule/never", "agent-rule-reject", "wf-rule-reject")
    queue_id = first["error"]["data"]["queue_id"]
    rejected = await stack.rest("POST", f"/v1/queue/{queue_id}/reject", json={"reason": "no"})
    assert (rejected.status_code, rejected.json()["state"]) == (200, "rejected")

    body = await stack.call("delete_file", "/rule/never", "agent-rule-reject", "wf-rule-reject")

    assert body["error"]["code"] == -32003, body
    assert body["error"]["data"]["queue_state"] == "rejected"
    assert "/rule/never" not in stack.deleted()


async def test_calls_other_rules_allow_are_not_parked(stack: Stack) -> None:
    body = await stack.call("echo", "hello", "agent-rule-read", "wf-rule-read")

    assert "result" in body, body
    listed = await stack.rest("GET", "/v1/queue", params={"agent": "agent-rule-read"})
    assert listed.json()["items"] == []


async def test_a_call_an_operator_could_not_be_shown_in_full_is_not_queued(stack: Stack) -> None:
    # Parked with its arguments shown as "_truncated", it could be released unread.
    path = "/rule/" + "p" * 70_000

    body = await stack.call("delete_file", path, "agent-rule-padded", "wf-rule-padded")

    assert body["error"]["code"] == -32003, body
    assert "queue_id" not in body["error"]["data"]
    assert body["error"]["data"]["reason"].endswith(
        "not queued: its arguments are over the 65536 bytes an operator can be shown"
    )
    assert path not in stack.deleted()
