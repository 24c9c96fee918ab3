"""Delegation and brokered credentials. A two-hop delegation is one connected causal graph: agent `planner` sends an A2A
message through Bastion to agent `billing` (a real a2a-sdk agent), which then calls an
MCP tool through Bastion with the `Bastion-Delegation` it was given; the tool call lands
in the planner's workflow with a DELEGATED_TO edge to the sending node. A delegation
cannot be forged, reused by another agent or pointed at another workflow."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fixtures import inprocess
from fixtures.a2a_agent import Agent, a2a_agent
from fixtures.graphapi import auditor_token, bearer, poll
from fixtures.mcpcalls import headers as mcp_headers
from fixtures.mcpcalls import tool_call
from fixtures.upstream import DemoUpstream, demo_upstream

from bastion._appconfig import AgentConfig, AppConfig, ServerConfig
from bastion._identity import ensure_dev_key, issue_token

POLICY = {
    "apiVersion": "bastion.dev/v1",
    "kind": "AgentPolicy",
    "metadata": {"name": "delegation", "version": 1},
    "spec": {
        "default": "deny",
        "rules": [
            {"id": "planner-delegates", "match": {"agents": ["planner"], "a2a": ["billing__*"]}, "effect": "allow"},
            {"id": "tools", "match": {"tools": ["demo__add"]}, "effect": "allow"},
        ],
    },
}
#: JSON-RPC of A2A 1.0 (the SDK agent answers version 0.3 requests, the default, with -32009).
_A2A = {"Content-Type": "application/json", "A2A-Version": "1.0"}


@dataclass
class Delegating:
    home: Path
    proxy: str
    graph: str
    agent: Agent
    upstream: DemoUpstream

    def token(self, subject: str) -> str:
        return issue_token(ensure_dev_key(self.home), subject=subject)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoUpstream]:
    with demo_upstream(tmp_path_factory.mktemp("upstream")) as server:
        yield server


@pytest.fixture
async def stack(tmp_path: Path, upstream: DemoUpstream) -> AsyncIterator[Delegating]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(json.dumps(POLICY))
    async with a2a_agent() as agent:
        app = AppConfig(
            servers={"demo": ServerConfig(url=upstream.url)},
            agents={
                "billing": AgentConfig(url=agent.url, subject="billing-agent", headers={"X-Agent-Key": "brokered"})
            },
            policies=(policy,),
        )
        async with inprocess.stack(tmp_path, app) as running:
            yield Delegating(tmp_path, f"http://{running.proxy}", f"http://{running.graph}", agent, upstream)


def _send(text: str) -> bytes:
    message = {"role": "ROLE_USER", "messageId": "m-1", "parts": [{"text": text}]}
    return orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": message}})


async def _call_tool(stack: Delegating, subject: str, delegation: str | None) -> httpx.Response:
    hdrs = mcp_headers(stack.token(subject), name="add")
    if delegation is not None:
        hdrs["Bastion-Delegation"] = delegation
    async with httpx.AsyncClient(base_url=stack.proxy, timeout=30) as http:
        return await http.post("/mcp/demo", content=orjson.dumps(tool_call("add", {"a": 2, "b": 2})), headers=hdrs)


async def test_a_delegated_tool_call_joins_the_senders_workflow_with_a_delegated_to_edge(stack: Delegating) -> None:
    seen: dict[str, Any] = {}

    async def billing_works(text: str, headers: dict[str, str]) -> str:
        seen["delegation"] = headers.get("bastion-delegation")
        seen["key"] = headers.get("x-agent-key")
        seen["authorization"] = headers.get("authorization")
        seen["workflow"] = headers.get("bastion-workflow-id")
        answer = await _call_tool(stack, "billing-agent", headers.get("bastion-delegation"))
        seen["tool_node"] = answer.headers.get("bastion-node-id")
        seen["tool_workflow"] = answer.headers.get("bastion-workflow-id")
        return answer.text

    stack.agent.on_delegate = billing_works
    hdrs = {**bearer(stack.token("planner")), **_A2A, "Bastion-Workflow-Id": "wf-plan"}
    async with httpx.AsyncClient(base_url=stack.proxy, timeout=30) as http:
        sent = await http.post("/a2a/billing", content=_send("delegate add 2 2"), headers=hdrs)
    assert sent.status_code == 200, sent.text
    assert "error" not in sent.json(), sent.text
    send_node = sent.headers["bastion-node-id"]
    assert seen["delegation"], "the agent was not given a delegation"
    assert seen["workflow"] == "wf-plan"
    # The agent's credential comes from bastion.yaml; the caller's token never reaches it.
    assert seen["key"] == "brokered"
    assert seen["authorization"] is None
    assert seen["tool_workflow"] == "wf-plan"  # the callee's call is in the caller's workflow

    graph = await poll(
        stack.graph,
        "/graphs/wf-plan/nodes",
        {},
        2,
        auditor_token(stack.home),
        where=lambda n: n["node_type"] == "ACTION",
    )
    agents = {node["node_id"]: node["agent_id"] for node in graph}
    assert agents[send_node] == "planner"
    assert agents[seen["tool_node"]] == "billing-agent"
    async with httpx.AsyncClient(base_url=stack.graph, headers=bearer(auditor_token(stack.home))) as http:
        whole = (await http.get("/graphs/wf-plan")).json()
    edges = {(e["source"], e["target"], e["type"]) for e in whole["edges"]}
    assert (seen["tool_node"], send_node, "DELEGATED_TO") in edges


async def test_a_delegation_is_only_good_for_its_agent_and_unaltered(stack: Delegating) -> None:
    tokens: list[str] = []

    async def keep(text: str, headers: dict[str, str]) -> str:
        tokens.append(headers["bastion-delegation"])
        return "kept"

    stack.agent.on_delegate = keep
    hdrs = {**bearer(stack.token("planner")), **_A2A, "Bastion-Workflow-Id": "wf-guard"}
    async with httpx.AsyncClient(base_url=stack.proxy, timeout=30) as http:
        await http.post("/a2a/billing", content=_send("delegate"), headers=hdrs)
    token = tokens[0]
    body, _, signature = token.partition(".")
    forged = body[:-2] + ("AA" if body[-2:] != "AA" else "BB") + "." + signature
    cases = {
        "another agent": await _call_tool(stack, "mallory", token),
        "forged": await _call_tool(stack, "billing-agent", forged),
        "garbage": await _call_tool(stack, "billing-agent", "not-a-token"),
    }
    for case, response in cases.items():
        assert response.status_code == 403, (case, response.text)
        assert "Bastion-Delegation" in response.json()["error"]["data"]["reason"], case
    # And the legitimate agent with the real token is in.
    assert (await _call_tool(stack, "billing-agent", token)).headers["bastion-workflow-id"] == "wf-guard"


async def test_a_delegation_a_client_sends_is_not_passed_on_to_the_agent(stack: Delegating) -> None:
    received: list[str] = []

    async def record(text: str, headers: dict[str, str]) -> str:
        received.append(headers.get("bastion-delegation", ""))
        return "ok"

    stack.agent.on_delegate = record
    hdrs = {
        **bearer(stack.token("planner")),
        **_A2A,
        "Bastion-Delegation": "attacker-chosen",
    }
    async with httpx.AsyncClient(base_url=stack.proxy, timeout=30) as http:
        refused = await http.post("/a2a/billing", content=_send("delegate"), headers=hdrs)
    # A forged delegation on the way in is refused before anything is forwarded.
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, -32600), refused.text
    assert "Bastion-Delegation" in refused.json()["error"]["data"]["reason"]
    assert received == []
