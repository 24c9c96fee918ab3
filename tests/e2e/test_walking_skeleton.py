"""One governed MCP call through the four real services started by `bastion up`.

Real processes on free ports, the demo MCP server from the `mcp` SDK as upstream,
and the SDK's own client through the proxy in both wire formats.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fixtures.graphapi import bearer, poll
from fixtures.mcp_client import WIRE_FORMATS, mcp_client
from fixtures.stack import ROOT, Stack, bastion_up, write_config
from fixtures.upstream import DemoUpstream
from mcp.shared.exceptions import MCPError

pytestmark = pytest.mark.e2e


async def _nodes(stack: Stack, workflow_id: str, count: int) -> list[dict[str, Any]]:
    """The workflow's ACTION nodes, once the journal has shipped at least `count` of them."""
    path = f"/graphs/{workflow_id}/nodes"
    return await poll(stack.graph, path, {}, count, stack.auditor, where=lambda node: node["node_type"] == "ACTION")


@pytest.mark.parametrize("mode", WIRE_FORMATS)
async def test_allowed_call_is_forwarded_and_denied_call_is_blocked_and_both_are_recorded(
    stack: Stack, upstream: DemoUpstream, mode: str
) -> None:
    workflow = f"wf-e2e-{mode}"
    token = stack.token("agent-e2e")
    async with mcp_client(f"{stack.proxy}/mcp/demo", token, mode, workflow) as client:
        allowed = await client.call_tool("add", {"a": 2, "b": 3})
        assert allowed.is_error is False
        assert allowed.structured_content == {"result": 5}

        executed_before = len(upstream.executed())
        with pytest.raises(MCPError) as blocked:
            await client.call_tool("delete_file", {"path": "/etc/passwd"})
    assert blocked.value.code == -32003
    assert blocked.value.message == "POLICY_VIOLATION"
    data = blocked.value.data
    assert set(data) >= {
        "violation_id",
        "rule_id",
        "reason",
        "deviation_score",
        "threshold",
        "drift_path_origin",
        "agent_id",
        "blocked_action",
        "policy_version",
        "timestamp",
    }
    assert data["rule_id"] == "no-file-deletes"
    assert data["agent_id"] == "agent-e2e"
    assert data["blocked_action"]["tool"] == "delete_file"
    assert data["policy_version"] == 1
    assert len(upstream.executed()) == executed_before, "the upstream executed a blocked call"

    nodes = await _nodes(stack, workflow, 2)
    by_tool = {n["action"]["tool"]: n for n in nodes}
    assert by_tool["add"]["outcome"] == "FORWARDED"
    assert by_tool["add"]["decision"]["effect"] == "ALLOW"
    assert by_tool["delete_file"]["outcome"] == "BLOCKED"
    assert by_tool["delete_file"]["violation_id"] == data["violation_id"]
    assert by_tool["delete_file"]["parent_ids"] == [by_tool["add"]["node_id"]], "CAUSED_BY the previous action"

    async with httpx.AsyncClient(base_url=stack.graph, headers=bearer(stack.auditor)) as http:
        violations = (await http.get("/audit/violations", params={"workflow_id": workflow})).json()["items"]
    assert [v["violation_id"] for v in violations] == [data["violation_id"]]
    assert violations[0]["rule_id"] == "no-file-deletes"


async def test_request_without_a_valid_token_gets_401_and_is_audited(stack: Stack) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "add", "arguments": {}}}
    async with httpx.AsyncClient(base_url=stack.proxy) as http:
        missing = await http.post("/mcp/demo", json=body)
        forged = await http.post("/mcp/demo", json=body, headers={"Authorization": "Bearer not-a-jwt"})
    refused = {missing.json()["error"]["violation_id"], forged.json()["error"]["violation_id"]}
    audited = await poll(
        stack.graph,
        "/audit/violations",
        {"workflow_id": "bastion.rejected"},
        len(refused),
        stack.auditor,
        where=lambda violation: violation["violation_id"] in refused,
    )
    assert {v["violation_id"] for v in audited} == refused
    assert missing.status_code == 401
    assert forged.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"]["code"] == "bastion.auth.unauthenticated"


async def test_graph_serves_openapi_docs(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.graph) as http:
        assert (await http.get("/docs")).status_code == 200
        spec = (await http.get("/openapi.json")).json()
    assert {"/graphs", "/graphs/{workflow_id}/nodes", "/audit/violations"} <= set(spec["paths"])


async def test_graph_data_needs_an_auditor_or_operator_token(stack: Stack) -> None:
    agent = stack.token("agent-e2e")
    async with httpx.AsyncClient(base_url=stack.graph) as http:
        anonymous = await http.get("/audit/violations")
        as_agent = await http.get("/audit/violations", headers=bearer(agent))
        as_auditor = await http.get("/audit/violations", headers=bearer(stack.auditor))
        foreign_host = await http.get(
            "/audit/violations", headers={**bearer(stack.auditor), "Host": "evil.example.com"}
        )
    assert (anonymous.status_code, anonymous.json()["error"]["code"]) == (401, "bastion.auth.unauthenticated")
    assert (as_agent.status_code, as_agent.json()["error"]["code"]) == (403, "bastion.auth.forbidden")
    assert as_auditor.status_code == 200
    assert (foreign_host.status_code, foreign_host.json()["error"]["code"]) == (403, "bastion.host_not_allowed")


async def test_the_policy_service_ships_its_audit_records_to_the_graph_up_started_on_port_0(
    stack: Stack, tmp_path: Path
) -> None:
    """Every address is `127.0.0.1:0` here. The policy service found the graph through the
    same variable, read `:0`, and kept its audit records in its outbox for ever (an
    attacker's probe noticed); `up` now pins such addresses to free ports first."""
    document = (ROOT / "examples" / "policies" / "demo.yaml").read_text().replace("version: 1", "version: 7", 1)
    (tmp_path / "demo-v7.yaml").write_text(document)
    stack.bastion(
        "policy", "apply", str(tmp_path / "demo-v7.yaml"), "--no-activate", "--addr", stack.info["policy"]["http"]
    )
    nodes = await poll(stack.graph, "/graphs/bastion.policy/nodes", {}, 1, stack.auditor)
    assert any(node["action"].get("method") == "bastion.dev/policy.created" for node in nodes), nodes


# Runs last in this module: it takes the policy service down for good.
@pytest.mark.parametrize("mode", WIRE_FORMATS)
async def test_with_the_policy_service_killed_calls_are_blocked_not_forwarded(
    stack: Stack, upstream: DemoUpstream, mode: str
) -> None:
    policy_pid = stack.pid("policy")
    with contextlib.suppress(ProcessLookupError):  # the first parametrisation already killed it
        os.kill(policy_pid, signal.SIGKILL)
    token = stack.token("agent-e2e")
    workflow = f"wf-e2e-policy-down-{mode}"
    executed_before = len(upstream.executed())
    async with mcp_client(f"{stack.proxy}/mcp/demo", token, mode, workflow) as client:
        with pytest.raises(MCPError) as allowed_when_up:
            await client.call_tool("add", {"a": 1, "b": 1})
        with pytest.raises(MCPError) as blocked:
            await client.call_tool("delete_file", {"path": "/tmp/x"})
    assert allowed_when_up.value.code == -32003
    assert allowed_when_up.value.data["rule_id"] == "bastion.policy_unavailable"
    assert blocked.value.code == -32003
    assert blocked.value.data["rule_id"] == "bastion.policy_unavailable"
    assert "policy service unavailable" in blocked.value.data["reason"]
    assert len(upstream.executed()) == executed_before
    nodes = await _nodes(stack, workflow, 2)
    assert {n["outcome"] for n in nodes} == {"BLOCKED"}
    assert {n["block_code"] for n in nodes} == {"bastion.policy_unavailable"}


def test_stack_stops_cleanly_on_sigterm(tmp_path: Path, upstream: DemoUpstream) -> None:
    config = write_config(tmp_path / "bastion.yaml", upstream.url, [ROOT / "examples" / "policies" / "demo.yaml"])
    with bastion_up(tmp_path, config) as running:
        pids = [running.pid(name) for name in ("proxy", "policy", "verifier", "graph")]
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(30) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
