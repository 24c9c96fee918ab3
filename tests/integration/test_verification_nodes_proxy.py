"""VERIFICATION nodes through the real proxy and graph service: every verifier answer an
allowed call got is a node of its own in the call's workflow, linked ACTION -VERIFIED_BY->
VERIFICATION, also with a chain (one per verifier) and when the verifier is down (a node
saying why); a call policy denies gets none. Read through the graph's REST API."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fixtures import inprocess
from fixtures.graphapi import auditor_token, bearer
from fixtures.mcpcalls import ProxyClient, headers, tool_call
from fixtures.stack import ROOT
from fixtures.upstream import DemoUpstream

from bastion._identity import ensure_service_token

POLICY = """\
apiVersion: bastion.dev/v1
kind: AgentPolicy
metadata: {name: verified, version: 1}
spec:
  default: deny
  rules:
    - {id: no-echo, match: {tools: ["demo__echo"]}, effect: deny}
    - {id: demo-tools, match: {tools: ["demo__*"]}, effect: allow}
"""


async def _graph(client: ProxyClient, workflow: str, nodes: int) -> dict[str, Any]:
    """The workflow's nodes and edges, once `nodes` nodes have reached the graph."""
    await client.nodes(workflow, nodes)
    async with httpx.AsyncClient(base_url=client.graph, headers=bearer(auditor_token(client.home))) as http:
        answer = await http.get(f"/graphs/{workflow}")
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


def _of_type(graph: dict[str, Any], node_type: str) -> list[dict[str, Any]]:
    return [node for node in graph["nodes"] if node["node_type"] == node_type]


def _verified_by(graph: dict[str, Any]) -> list[dict[str, Any]]:
    return [edge for edge in graph["edges"] if edge["type"] == "VERIFIED_BY"]


@contextlib.asynccontextmanager
async def _stack(home: Path, upstream: DemoUpstream, **proxy_settings: Any) -> AsyncIterator[ProxyClient]:
    (home / "policy.yaml").write_text(POLICY)
    app = inprocess.app_config(upstream.url, home / "policy.yaml")
    async with inprocess.stack(home, app, **proxy_settings) as running:
        yield ProxyClient(home, running.proxy, running.graph)


async def test_a_governed_call_has_one_verification_node_with_the_verifiers_answer(
    tmp_path: Path, upstream: DemoUpstream
) -> None:
    async with _stack(tmp_path, upstream) as client:
        answer = await client.post(tool_call("add", {"a": 1, "b": 2}), headers(client.token("a1"), workflow="wf-1"))
        assert answer.json()["result"]["structuredContent"] == {"result": 3}, answer.text
        graph = await _graph(client, "wf-1", 2)

    (action,) = _of_type(graph, "ACTION")
    (verification,) = _of_type(graph, "VERIFICATION")
    assert len(graph["nodes"]) == 2
    assert graph["node_count"] == 2
    assert action["node_id"] == answer.headers["Bastion-Node-Id"]
    assert verification["node_id"] == f"{action['node_id']}:verification:1"
    assert (verification["workflow_id"], verification["agent_id"]) == ("wf-1", "a1")
    # The verifier's own answer: scorer, score, threshold, verdict and reasons, as the action recorded it.
    assert verification["verifier"] == action["verifier"]
    assert verification["verifier"]["scorer"].startswith("reference/")
    assert verification["verifier"]["verdict"] == "PASS"
    assert (verification["verifier_fallback"], verification["outcome"]) == (False, "OUTCOME_UNSPECIFIED")
    (edge,) = _verified_by(graph)
    assert (edge["source"], edge["target"]) == (action["node_id"], verification["node_id"])
    score = verification["verifier"]
    assert edge["reason"] == (
        f"{score['scorer']}: PASS, score {score['deviation_score']:.2f} (threshold {score['threshold']:.2f})"
    )


async def test_a_call_policy_denies_has_no_verification_node(tmp_path: Path, upstream: DemoUpstream) -> None:
    async with _stack(tmp_path, upstream) as client:
        token = client.token("a1")
        denied = await client.post(tool_call("echo", {"text": "hi"}), headers(token, workflow="wf-deny"))
        assert denied.json()["error"]["data"]["rule_id"] == "no-echo", denied.text
        # A later allowed call: once its two nodes are in, the denied call's would be too.
        await client.post(tool_call("add", {"a": 1, "b": 2}), headers(token, workflow="wf-deny"))
        graph = await _graph(client, "wf-deny", 3)

    actions = _of_type(graph, "ACTION")
    assert [node["outcome"] for node in actions] == ["BLOCKED", "FORWARDED"]
    assert len(graph["nodes"]) == 3
    (verification,) = _of_type(graph, "VERIFICATION")
    assert [(edge["source"], edge["target"]) for edge in _verified_by(graph)] == [
        (actions[1]["node_id"], verification["node_id"])
    ]


async def test_a_verifier_that_is_down_leaves_a_node_saying_why(tmp_path: Path, upstream: DemoUpstream) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    app = inprocess.app_config(upstream.url, tmp_path / "policy.yaml")
    async with (
        inprocess.policy(tmp_path, app) as policy,
        inprocess.graph(tmp_path, app, policy_addr=policy["grpc"]) as graph_addrs,
        # Port 9 (discard) refuses: the verifier is down from the start.
        inprocess.proxy(
            tmp_path, app, policy_addr=policy["grpc"], verifier_addr="127.0.0.1:9", graph_addr=graph_addrs["grpc"]
        ) as proxy,
    ):
        client = ProxyClient(tmp_path, proxy["http"], graph_addrs["http"])
        answer = await client.post(tool_call("add", {"a": 1, "b": 2}), headers(client.token("a1"), workflow="wf-down"))
        error = answer.json()["error"]
        assert error["data"]["rule_id"] == "bastion.verifier_unavailable", answer.text
        graph = await _graph(client, "wf-down", 2)

    (action,) = _of_type(graph, "ACTION")
    (verification,) = _of_type(graph, "VERIFICATION")
    assert action["verifier"] is None
    assert verification["verifier"]["verdict"] == "VERDICT_UNSPECIFIED"
    assert verification["verifier"]["reasons"] == [error["data"]["reason"]]
    assert "verifier unavailable" in error["data"]["reason"]
    assert "fallback block" in error["data"]["reason"]
    assert (verification["verifier_fallback"], verification["block_reason"]) == (True, error["data"]["reason"])
    (edge,) = _verified_by(graph)
    assert (edge["source"], edge["target"], edge["reason"]) == (
        action["node_id"],
        verification["node_id"],
        "verifier did not answer",
    )


async def _external(home: Path) -> tuple[Any, int]:
    spec = importlib.util.spec_from_file_location("external_verifier_nodes", ROOT / "examples" / "external_verifier.py")
    assert spec is not None
    assert spec.loader is not None
    example: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    server, port = await example.start(0, ensure_service_token(home, None))
    return server, port


@pytest.mark.parametrize("second_down", [False, True], ids=["both-answer", "second-down"])
async def test_a_chain_of_two_verifiers_has_a_node_per_verifier(
    tmp_path: Path, upstream: DemoUpstream, second_down: bool
) -> None:
    server, port = await _external(tmp_path)
    try:
        async with _stack(tmp_path, upstream, verifier_chain=f"127.0.0.1:{port}") as client:
            if second_down:
                await server.stop(None)
            answer = await client.post(
                tool_call("delete_file", {"path": "notes.txt"}), headers(client.token("a1"), workflow="wf-chain")
            )
            error = answer.json()["error"]
            graph = await _graph(client, "wf-chain", 3)
    finally:
        await server.stop(None)

    (action,) = _of_type(graph, "ACTION")
    verifications = _of_type(graph, "VERIFICATION")
    assert len(graph["nodes"]) == 3
    assert [node["node_id"] for node in verifications] == [f"{action['node_id']}:verification:{n}" for n in (1, 2)]
    assert [(edge["source"], edge["target"]) for edge in _verified_by(graph)] == [
        (action["node_id"], node["node_id"]) for node in verifications
    ]
    first, second = (node["verifier"] for node in verifications)
    assert first["scorer"].startswith("reference/")
    assert first["verdict"] == "PASS"
    if not second_down:
        assert error["data"]["rule_id"] == "bastion.verifier_block", answer.text
        assert (second["scorer"], second["verdict"], second["deviation_score"]) == ("delete-guard/1", "BLOCK", 1.0)
        assert second["reasons"] == ["demo__delete_file deletes data"]
        # The action keeps the combined answer: the strictest, with both verifiers' reasons.
        assert action["verifier"]["scorer"] == f"delete-guard/1+{first['scorer']}"
        return
    assert error["data"]["rule_id"] == "bastion.verifier_unavailable", answer.text
    assert (second["scorer"], second["verdict"]) == ("chained verifier 2", "VERDICT_UNSPECIFIED")
    assert second["reasons"] == ["chained verifier 2 unavailable (UNAVAILABLE): not reachable"]
    assert verifications[1]["verifier_fallback"]
    assert verifications[1]["block_reason"] == error["data"]["reason"]
    assert not verifications[0]["verifier_fallback"]
