"""stdio upstreams (`servers: NAME: {command: [...]}`): the proxy runs the server as a child
per session and serves it on `/mcp/{server}` with every check of the HTTP path.

Real parts: the demo server (mcp SDK) as a stdio child, driven by the SDK's client in
both wire formats; `tests/fixtures/stdio_faulty.py` for what no SDK server does (garbage
on stdout, a crash mid-call, an exit at start)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import mcp_types as types
import pytest
from fixtures import inprocess
from fixtures.graphapi import auditor_token, poll
from fixtures.mcp_client import WIRE_FORMATS, mcp_client
from fixtures.mcpcalls import ProxyClient, headers, request, tool_call
from mcp.shared.exceptions import MCPError

from bastion._appconfig import AppConfig, ServerConfig

ROOT = Path(__file__).resolve().parents[2]
FAULTY = (sys.executable, str(ROOT / "tests" / "fixtures" / "stdio_faulty.py"))
POLICY = {
    "apiVersion": "bastion.dev/v1",
    "kind": "AgentPolicy",
    "metadata": {"name": "stdio", "version": 1},
    "spec": {
        "default": "deny",
        "rules": [
            {"id": "no-delete", "match": {"tools": ["demo__delete_file"]}, "effect": "deny"},
            {"id": "no-secrets", "match": {"resources": ["demo__demo://secrets/*"]}, "effect": "deny"},
            {"id": "demo-tools", "match": {"tools": ["demo__*", "faulty__*"]}, "effect": "allow"},
            {"id": "notes", "match": {"resources": ["demo__demo://notes/*"]}, "effect": "allow"},
            {"id": "prompts", "match": {"prompts": ["demo__*"]}, "effect": "allow"},
        ],
    },
}


@dataclass(frozen=True)
class StdioStack:
    client: ProxyClient
    record: Path
    home: Path

    @property
    def url(self) -> str:
        return f"{self.client.proxy}/mcp/demo"

    def executed(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.record.read_text().splitlines()] if self.record.exists() else []


@pytest.fixture
async def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[StdioStack]:
    # In the proxy's environment, never in a child's unless bastion.yaml names it.
    monkeypatch.setenv("BASTION_PROBE_SECRET", "must-not-leak")
    policy = tmp_path / "policy.yaml"
    policy.write_text(json.dumps(POLICY))
    record = tmp_path / "executed.jsonl"
    demo = (sys.executable, str(ROOT / "examples" / "demo_server.py"), "--stdio", "--record", str(record))
    app = AppConfig(
        servers={
            "demo": ServerConfig(command=demo),
            "faulty": ServerConfig(command=FAULTY, env={"FAULTY_GREETING": "hello"}),
            "broken": ServerConfig(command=(*FAULTY, "--exit-at-start")),
        },
        policies=(policy,),
    )
    async with inprocess.stack(tmp_path, app, stdio_max_sessions=4, sessions_per_principal=2) as running:
        yield StdioStack(ProxyClient(tmp_path, running.proxy, running.graph), record, tmp_path)


@pytest.mark.parametrize("mode", WIRE_FORMATS)
async def test_the_sdk_client_uses_a_stdio_server_through_bastion(stack: StdioStack, mode: str) -> None:
    token = stack.client.token("agent-stdio")
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async with mcp_client(stack.url, token, mode, workflow_id=f"wf-stdio-{mode}") as client:
        tools = await client.list_tools()
        # Filtered like any upstream's listing: the denied tool is not offered.
        assert {tool.name for tool in tools.tools} == {"add", "echo", "count", "confirm"}
        assert (await client.call_tool("add", {"a": 2, "b": 40})).structured_content == {"result": 42}
        counted = await client.call_tool("count", {"to": 3}, progress_callback=on_progress)
        assert counted.structured_content == {"result": 3}
        assert seen == [1, 2, 3]
        note = await client.read_resource("demo://notes/readme")
        assert isinstance(note.contents[0], types.TextResourceContents)
        assert note.contents[0].text == "Bastion demo notes."
        prompt = await client.get_prompt("greet", {"name": "Ada"})
        assert "Ada" in str(prompt.messages[0].content)
        with pytest.raises(MCPError) as denied:
            await client.call_tool("delete_file", {"path": "/etc/passwd"})
        assert denied.value.error.code == -32003
        with pytest.raises(MCPError) as secret:
            await client.read_resource("demo://secrets/root")
        assert secret.value.error.code == -32003
    # The denied call and read never reached the child; the allowed ones did.
    assert {"resource": "demo://notes/readme"} in stack.executed()
    assert not [entry for entry in stack.executed() if entry.get("tool") or "secrets" in entry.get("resource", "")]
    violations = await stack.client.violations(f"wf-stdio-{mode}", 2)
    assert {v["rule_id"] for v in violations} >= {"no-delete", "no-secrets"}


async def test_an_elicitation_of_a_stdio_server_reaches_the_client_and_back(stack: StdioStack) -> None:
    asked: list[str] = []

    async def elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"ok": True})

    async with mcp_client(stack.url, stack.client.token("agent-elicit"), "legacy", elicitation_callback=elicit) as c:
        result = await c.call_tool("confirm", {"question": "Really?"})
    assert asked == ["Really?"]
    assert result.structured_content == {"result": "confirmed"}


async def test_a_case_variant_of_a_stdio_tool_is_refused_before_any_decision(stack: StdioStack) -> None:
    token = stack.client.token("agent-case")
    response = await stack.client.post(tool_call("Delete_File", {"path": "x"}), headers(token))
    assert response.json()["error"]["code"] == -32602
    assert "did you mean 'delete_file'" in response.json()["error"]["data"]["reason"]
    assert stack.executed() == []


async def _session(client: ProxyClient, server: str, token: str) -> str:
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    hdrs = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient(base_url=client.proxy, timeout=30) as http:
        response = await http.post(f"/mcp/{server}", json=init, headers=hdrs)
        assert response.status_code == 200, response.text
        return response.headers["mcp-session-id"]


async def _call(client: ProxyClient, server: str, token: str, session: str, body: dict[str, Any]) -> httpx.Response:
    hdrs = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json",
        "Mcp-Session-Id": session,
        "MCP-Protocol-Version": "2025-11-25",
    }
    async with httpx.AsyncClient(base_url=client.proxy, timeout=30) as http:
        return await http.post(f"/mcp/{server}", json=body, headers=hdrs)


def _tool_call(name: str, arguments: dict[str, Any], msg_id: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": {"name": name, "arguments": arguments}}


async def test_a_child_that_crashes_mid_call_fails_that_call_and_only_that_session(stack: StdioStack) -> None:
    token = stack.client.token("agent-crash")
    doomed = await _session(stack.client, "faulty", token)
    survivor = await _session(stack.client, "faulty", token)
    crashed = await _call(stack.client, "faulty", token, doomed, _tool_call("crash", {}))
    error = crashed.json()["error"]
    assert error["message"] == "UPSTREAM_UNAVAILABLE"
    assert "exit status 3" in error["data"]["reason"]
    # The session died with its child: the client is told to start again (404), others go on.
    gone = await _call(stack.client, "faulty", token, doomed, _tool_call("echo", {"text": "hi"}, 2))
    assert gone.status_code == 404
    alive = await _call(stack.client, "faulty", token, survivor, _tool_call("echo", {"text": "still here"}, 2))
    assert alive.json()["result"]["content"][0]["text"] == "still here"
    # The crash is in the audit trail, and the call's node says how it ended.
    refused = await stack.client.violations("bastion.rejected", 1)
    assert any(v["rule_id"] == "bastion.stdio_exit" and "exit status 3" in v["reason"] for v in refused)
    node = crashed.headers["bastion-node-id"]
    # Polled for up to 20 s until the result event has shipped (not a count of quick reads).
    nodes = await stack.client.nodes(
        crashed.headers["bastion-workflow-id"], 1, where=lambda n: n["node_id"] == node and bool(n["result"])
    )
    result = nodes[0]["result"]
    # The child's end is the answer relayed: a JSON-RPC error from the proxy's side of the pipe.
    assert (result["outcome"], result["jsonrpc_error_code"]) == ("COMPLETED", -32603)


async def test_garbage_on_stdout_is_dropped_and_reported_and_the_answer_still_arrives(stack: StdioStack) -> None:
    token = stack.client.token("agent-garbage")
    session = await _session(stack.client, "faulty", token)
    response = await _call(stack.client, "faulty", token, session, _tool_call("garbage", {}))
    assert response.json()["result"]["content"][0]["text"] == "after garbage"
    refused = await stack.client.violations("bastion.rejected", 1)
    assert any(v["rule_id"] == "bastion.stdio_garbage" and "this is not JSON-RPC" in v["reason"] for v in refused)


async def test_a_secret_a_child_prints_on_stdout_never_reaches_the_audit_trail(stack: StdioStack) -> None:
    # A banner or debug print quoting the server's own key: the refusal quotes the line.
    secret = "ghp_" + "s" * 36
    token = stack.client.token("agent-garbage-secret")
    session = await _session(stack.client, "faulty", token)
    line = f"using token {secret} for the API"
    response = await _call(stack.client, "faulty", token, session, _tool_call("garbage", {"line": line}))
    assert response.json()["result"]["content"][0]["text"] == "after garbage"
    refused = await stack.client.violations("bastion.rejected", 1)
    assert any("[REDACTED:github_token:" in v["reason"] for v in refused), refused
    stored = _everything_under(stack.home)
    assert secret not in json.dumps(refused)
    assert secret.encode() not in stored


async def test_a_child_flooding_stdout_with_garbage_cannot_flood_the_audit_trail(stack: StdioStack) -> None:
    token = stack.client.token("agent-garbage-flood")
    session = await _session(stack.client, "faulty", token)
    flood = _tool_call("garbage", {"line": "noise", "count": 500})
    response = await _call(stack.client, "faulty", token, session, flood)
    assert response.json()["result"]["content"][0]["text"] == "after garbage"
    # The session goes on: the same child answers again.
    again = await _call(stack.client, "faulty", token, session, _tool_call("echo", {"text": "still here"}, 3))
    assert again.json()["result"]["content"][0]["text"] == "still here"

    def garbage(item: dict[str, Any]) -> bool:
        return bool(item["rule_id"] == "bastion.stdio_garbage")

    auditor = auditor_token(stack.home)
    # The first lines one by one, then one note that the rest go unreported.
    await poll(stack.client.graph, "/audit/violations", {"workflow_id": "bastion.rejected"}, 11, auditor, where=garbage)
    await asyncio.sleep(1.0)  # what else was journaled has been shipped by now
    params = {"workflow_id": "bastion.rejected", "limit": "500"}
    reported = await poll(stack.client.graph, "/audit/violations", params, 11, auditor, where=garbage)
    assert len(reported) == 11, len(reported)
    assert "further lines that are not JSON-RPC go unreported" in reported[0]["reason"] + reported[-1]["reason"]


async def test_a_child_sees_only_its_configured_environment(stack: StdioStack) -> None:
    token = stack.client.token("agent-env")
    session = await _session(stack.client, "faulty", token)
    response = await _call(stack.client, "faulty", token, session, _tool_call("environment", {}))
    names = json.loads(response.json()["result"]["content"][0]["text"])
    assert "FAULTY_GREETING" in names
    assert not [name for name in names if name.startswith("BASTION_")]


async def test_a_server_that_dies_at_start_is_restarted_only_after_a_backoff(stack: StdioStack) -> None:
    token = stack.client.token("agent-broken")
    init = request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t"}})
    del init["params"]["_meta"]
    hdrs = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"}
    answers = []
    async with httpx.AsyncClient(base_url=stack.client.proxy, timeout=30) as http:
        for _ in range(5):
            answers.append(await http.post("/mcp/broken", json=init, headers=hdrs))
    assert all(a.status_code != 200 or "error" in a.text for a in answers)
    last = answers[-1]
    assert last.status_code == 503
    assert "started again in" in last.json()["error"]["data"]["reason"]


async def test_sessions_per_stdio_server_are_capped(stack: StdioStack) -> None:
    for agent in ("agent-a", "agent-b", "agent-c", "agent-d"):
        await _session(stack.client, "faulty", stack.client.token(agent))
    hdrs = {"Authorization": f"Bearer {stack.client.token('agent-e')}", "Accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient(base_url=stack.client.proxy, timeout=30) as http:
        refused = await http.post("/mcp/faulty", json=_INIT, headers=hdrs)
    assert refused.status_code == 503
    assert "BASTION_STDIO_MAX_SESSIONS" in refused.json()["error"]["data"]["reason"]


async def test_one_agent_cannot_take_every_session_of_a_stdio_server(stack: StdioStack) -> None:
    """An attacker's probe: an agent of another tenant, allowed no tool at all, took all 32
    slots of a stdio server with bare initializes; everyone else got 503 for 15 minutes.
    Past BASTION_SESSIONS_PER_PRINCIPAL its own least recently used session makes way."""
    hoarder = stack.client.token("agent-hoarder", tenant="evil")
    sessions = [await _session(stack.client, "faulty", hoarder) for _ in range(6)]
    # Its two newest are alive; the ones it pushed out are gone (404: start a new session).
    assert (await _call(stack.client, "faulty", hoarder, sessions[-1], _tool_call("echo", {}))).status_code == 200
    assert (await _call(stack.client, "faulty", hoarder, sessions[0], _tool_call("echo", {}))).status_code == 404
    # Another tenant's agent still gets a session, and can use it.
    victim = stack.client.token("agent-victim", tenant="acme")
    session = await _session(stack.client, "faulty", victim)
    answer = await _call(stack.client, "faulty", victim, session, _tool_call("echo", {"text": "hi"}))
    assert answer.status_code == 200, answer.text


_INIT = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


async def test_another_agent_cannot_use_a_stdio_session(stack: StdioStack) -> None:
    owner = stack.client.token("agent-owner")
    session = await _session(stack.client, "faulty", owner)
    other = await _call(stack.client, "faulty", stack.client.token("agent-thief"), session, _tool_call("echo", {}))
    assert other.status_code == 403


def test_the_bridge_socket_is_private_to_the_proxy_user(tmp_path: Path) -> None:
    from bastion._web import bind_unix_socket

    sock = bind_unix_socket(tmp_path / "proxy" / "stdio-x.sock")
    try:
        mode = os.stat(tmp_path / "proxy" / "stdio-x.sock").st_mode
        assert stat.S_IMODE(mode) == 0o600
    finally:
        sock.close()


def _everything_under(home: Path) -> bytes:
    """Every byte the stack wrote under $BASTION_HOME: journal segments, SQLite files and WALs."""
    return b"".join(path.read_bytes() for path in home.rglob("*") if path.is_file())
