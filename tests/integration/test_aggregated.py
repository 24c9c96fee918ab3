"""The aggregated `POST /mcp`: one client session over two real upstreams, the conformance
fixture over HTTP (`conf`) and the demo server as a stdio child (`demo`), driven by the
SDK's client in both wire formats and by raw requests where exact bytes matter."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import mcp_types as types
import orjson
import pytest
import pytest_asyncio
from fixtures import inprocess
from fixtures.mcp_client import WIRE_FORMATS, mcp_client
from fixtures.mcpcalls import MODERN_META, ProxyClient
from fixtures.upstream import conformance_upstream
from mcp.shared.exceptions import MCPError

from bastion._appconfig import AppConfig, ServerConfig

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROOT = Path(__file__).resolve().parents[2]
POLICY = {
    "apiVersion": "bastion.dev/v1",
    "kind": "AgentPolicy",
    "metadata": {"name": "aggregated", "version": 1},
    "spec": {
        "default": "deny",
        "rules": [
            {"id": "no-delete", "match": {"tools": ["demo__delete_file"]}, "effect": "deny"},
            {"id": "no-errors", "match": {"tools": ["conf__test_error_handling"]}, "effect": "deny"},
            {"id": "no-binary", "match": {"resources": ["conf__test://static-binary"]}, "effect": "deny"},
            {"id": "tools", "match": {"tools": ["demo__*", "conf__*"]}, "effect": "allow"},
            {"id": "resources", "match": {"resources": ["conf__test://*"]}, "effect": "allow"},
            {"id": "prompts", "match": {"prompts": ["*"]}, "effect": "allow"},
        ],
    },
}


@dataclass(frozen=True)
class Aggregated:
    client: ProxyClient
    record: Path

    @property
    def url(self) -> str:
        return f"{self.client.proxy}/mcp"

    def executed(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.record.read_text().splitlines()] if self.record.exists() else []


@pytest.fixture(scope="module")
def conf_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with conformance_upstream(tmp_path_factory.mktemp("conf")) as url:
        yield url


@contextlib.asynccontextmanager
async def _stack(home: Path, conf_url: str, **settings: Any) -> AsyncIterator[Aggregated]:
    policy = home / "policy.yaml"
    policy.write_text(json.dumps(POLICY))
    record = home / "executed.jsonl"
    demo = (sys.executable, str(ROOT / "examples" / "demo_server.py"), "--stdio", "--record", str(record))
    app = AppConfig(
        servers={"conf": ServerConfig(url=conf_url), "demo": ServerConfig(command=demo)}, policies=(policy,)
    )
    async with inprocess.stack(home, app, **settings) as running:
        yield Aggregated(ProxyClient(home, running.proxy, running.graph), record)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory, conf_url: str) -> AsyncIterator[Aggregated]:
    # One stack for the module (each test uses agents and workflows of its own): a stack
    # starts stdio children, seconds each.
    async with _stack(tmp_path_factory.mktemp("aggregated"), conf_url) as running:
        yield running


@pytest.mark.parametrize("mode", WIRE_FORMATS)
async def test_one_session_reaches_every_upstream_under_policy(stack: Aggregated, mode: str) -> None:
    workflow = f"wf-aggregated-{mode}"
    async with mcp_client(stack.url, stack.client.token("agent-agg"), mode, workflow_id=workflow) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert {"demo__add", "demo__count", "conf__test_simple_text", "conf__json_schema_2020_12_tool"} <= names
        # Listed only if policy could allow them.
        assert "demo__delete_file" not in names
        assert "conf__test_error_handling" not in names
        assert all(name.startswith(("demo__", "conf__")) for name in names)
        assert (await client.call_tool("demo__add", {"a": 1, "b": 2})).structured_content == {"result": 3}
        text = await client.call_tool("conf__test_simple_text", {})
        assert isinstance(text.content[0], types.TextContent)
        with pytest.raises(MCPError) as denied:
            await client.call_tool("demo__delete_file", {"path": "/"})
        assert denied.value.error.code == -32003
        assert isinstance(denied.value.error.data, dict)
        assert denied.value.error.data["rule_id"] == "no-delete"
        prompts = {prompt.name for prompt in (await client.list_prompts()).prompts}
        assert {"demo__greet", "conf__test_simple_prompt"} <= prompts
        prompt = await client.get_prompt("conf__test_prompt_with_arguments", {"arg1": "x", "arg2": "y"})
        assert prompt.messages
        static = await client.read_resource("test://static-text")
        assert isinstance(static.contents[0], types.TextResourceContents)
        with pytest.raises(MCPError) as binary:
            await client.read_resource("test://static-binary")
        assert binary.value.error.code == -32003
    assert stack.executed() == []  # the denied delete never reached the stdio child
    violations = await stack.client.violations(workflow, 2)
    assert {v["rule_id"] for v in violations} >= {"no-delete", "no-binary"}


async def test_the_tool_schema_is_the_upstreams_byte_for_byte_apart_from_the_name(
    stack: Aggregated, conf_url: str
) -> None:
    async with mcp_client(stack.url, stack.client.token("agent-schema"), "legacy") as client:
        through = {tool.name: tool for tool in (await client.list_tools()).tools}
    async with mcp_client(conf_url, "unused", "legacy") as direct:
        upstream = {tool.name: tool for tool in (await direct.list_tools()).tools}
    schema = upstream["json_schema_2020_12_tool"].input_schema
    assert through["conf__json_schema_2020_12_tool"].input_schema == schema
    assert "$defs" in schema


async def test_sampling_and_elicitation_are_relayed_and_answered_back(stack: Aggregated) -> None:
    sampled: list[str] = []
    elicited: list[str] = []

    async def sample(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        content = params.messages[0].content
        sampled.append(content.text if isinstance(content, types.TextContent) else "")
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="forty-two"), model="test-model"
        )

    async def elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        elicited.append(params.message)
        return types.ElicitResult(action="accept", content={"ok": True})

    token = stack.client.token("agent-relay")
    async with mcp_client(stack.url, token, "legacy", sampling_callback=sample, elicitation_callback=elicit) as client:
        answer = await client.call_tool("conf__test_sampling", {"prompt": "the question"})
        confirmed = await client.call_tool("demo__confirm", {"question": "Go?"})
    assert sampled == ["the question"]
    assert isinstance(answer.content[0], types.TextContent)
    assert answer.content[0].text == "LLM response: forty-two"
    assert elicited == ["Go?"]
    assert confirmed.structured_content == {"result": "confirmed"}


async def test_progress_logging_and_an_upstream_that_closes_its_stream_mid_call(stack: Aggregated) -> None:
    seen: list[float] = []
    logs: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(str(params.data))

    async with mcp_client(stack.url, stack.client.token("agent-progress"), "legacy", logging_callback=on_log) as c:
        counted = await c.call_tool("demo__count", {"to": 3}, progress_callback=on_progress)
        reconnected = await c.call_tool("conf__test_reconnection", {})
    assert counted.structured_content == {"result": 3}
    assert seen == [1, 2, 3]
    assert isinstance(reconnected.content[0], types.TextContent)
    assert reconnected.content[0].text == "Reconnection test completed"
    assert "Before disconnect" in logs


def _init(msg_id: int = 0) -> dict[str, Any]:
    params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}
    return {"jsonrpc": "2.0", "id": msg_id, "method": "initialize", "params": params}


async def test_a_dropped_stream_is_resumed_with_last_event_id(stack: Aggregated) -> None:
    token = stack.client.token("agent-resume")
    hdrs = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient(base_url=stack.client.proxy, timeout=30) as http:
        init = await http.post("/mcp", json=_init(), headers=hdrs)
        hdrs["Mcp-Session-Id"] = init.headers["mcp-session-id"]
        hdrs["MCP-Protocol-Version"] = "2025-11-25"
        await http.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=hdrs)
        call = {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {"name": "demo__count", "arguments": {"to": 3}, "_meta": {"progressToken": "p"}},
        }
        first_id = None
        async with http.stream("POST", "/mcp", json=call, headers=hdrs) as response:
            async for line in response.aiter_lines():
                if line.startswith("id:"):
                    first_id = line[3:].strip()
                    break  # hang up after the first event
        assert first_id is not None
        resumed = await http.get("/mcp", headers={**hdrs, "Last-Event-ID": first_id})
    events = [json.loads(line[5:]) for line in resumed.text.splitlines() if line.startswith("data:")]
    assert [e["params"]["progress"] for e in events if e.get("method") == "notifications/progress"] == [2, 3]
    assert events[-1]["id"] == 7
    assert events[-1]["result"]["structuredContent"] == {"result": 3}


async def test_an_aggregated_session_belongs_to_the_agent_that_opened_it(stack: Aggregated) -> None:
    owner = {"Authorization": f"Bearer {stack.client.token('agent-owner')}", "Accept": "application/json"}
    async with httpx.AsyncClient(base_url=stack.client.proxy, timeout=30) as http:
        init = await http.post("/mcp", json=_init(), headers={**owner, "Accept": "application/json, text/event-stream"})
        session = init.headers["mcp-session-id"]
        thief = {"Authorization": f"Bearer {stack.client.token('agent-thief')}", "Mcp-Session-Id": session}
        stolen = await http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=thief)
        anonymous = await http.post("/mcp", json=_init())
    assert stolen.status_code == 403
    assert anonymous.status_code == 401


async def test_an_agent_holds_at_most_its_share_of_aggregated_sessions(stack: Aggregated) -> None:
    # BASTION_SESSIONS_PER_PRINCIPAL (4): the fifth initialize closes the agent's oldest session.
    hdrs = {
        "Authorization": f"Bearer {stack.client.token('agent-hoarding')}",
        "Accept": "application/json, text/event-stream",
    }
    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    async with httpx.AsyncClient(base_url=stack.client.proxy, timeout=30) as http:
        sessions = [(await http.post("/mcp", json=_init(), headers=hdrs)).headers["mcp-session-id"] for _ in range(5)]
        used = {
            "Authorization": hdrs["Authorization"],
            "Accept": "application/json",
            "MCP-Protocol-Version": "2025-11-25",
        }
        oldest = await http.post("/mcp", json=listing, headers={**used, "Mcp-Session-Id": sessions[0]})
        newest = await http.post("/mcp", json=listing, headers={**used, "Mcp-Session-Id": sessions[-1]})
    assert oldest.status_code == 404, oldest.text
    assert newest.status_code == 200, newest.text


async def test_a_governed_call_on_the_aggregated_endpoint_gets_a_result_event(stack: Aggregated) -> None:
    token = stack.client.token("agent-result")
    body = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "tools/call",
        "params": {"name": "conf__test_simple_text", "arguments": {}, "_meta": dict(MODERN_META)},
    }
    hdrs = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": "conf__test_simple_text",
        "Bastion-Workflow-Id": "wf-agg-result",
    }
    async with httpx.AsyncClient(base_url=stack.client.proxy, timeout=30) as http:
        response = await http.post("/mcp", content=orjson.dumps(body), headers=hdrs)
    node_id = response.headers["bastion-node-id"]
    # Polled for up to 20 s until the result event has shipped (not a count of quick reads).
    (node,) = await stack.client.nodes(
        "wf-agg-result", 1, where=lambda n: n["node_id"] == node_id and n["result"] is not None
    )
    assert node["action"]["server"] == "conf"
    assert node["action"]["tool"] == "test_simple_text"
    assert node["result"]["outcome"] == "COMPLETED"


async def test_the_simple_tools_call_endpoint_is_one_governed_stateless_call(stack: Aggregated) -> None:
    hdrs = {"Authorization": f"Bearer {stack.client.token('agent-simple')}", "Accept": "application/json"}

    def call(name: str, method: str = "tools/call") -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": 1, "method": method, "params": {"name": name, "arguments": {"a": 4, "b": 5}}}

    async with httpx.AsyncClient(base_url=stack.client.proxy, timeout=30) as http:
        added = await http.post("/mcp/tools/call", json=call("demo__add"), headers=hdrs)
        denied = await http.post("/mcp/tools/call", json=call("demo__delete_file"), headers=hdrs)
        listed = await http.post("/mcp/tools/call", json=call("x", "tools/list"), headers=hdrs)
        get = await http.get("/mcp/tools/call", headers=hdrs)
    assert added.json()["result"]["structuredContent"] == {"result": 9}, added.text
    assert added.headers["bastion-node-id"]
    assert denied.json()["error"]["code"] == -32003
    assert listed.json()["error"]["code"] == -32601
    assert get.status_code == 405
    assert stack.executed() == []


async def _first_stateless(
    home: Path, conf_url: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> httpx.Response:
    """The answer to `body`, the first request of a stateless (2026-07) caller on a stack of
    its own: no shared stateless session exists yet."""
    hdrs = {
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": body["method"],
        **(headers or {}),
    }
    async with _stack(home, conf_url) as stack, httpx.AsyncClient(base_url=stack.client.proxy, timeout=30) as http:
        hdrs["Authorization"] = f"Bearer {stack.client.token('agent-stateless')}"
        return await http.post("/mcp", content=orjson.dumps(body), headers=hdrs)


async def test_a_stateless_callers_first_request_may_be_a_resource_read(tmp_path: Path, conf_url: str) -> None:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "resources/read",
        "params": {"uri": "test://static-text", "_meta": dict(MODERN_META)},
    }
    # A stack of its own: the shared stateless session must not exist yet.
    response = await _first_stateless(tmp_path, conf_url, body, {"Mcp-Name": "test://static-text"})
    text = response.text
    assert response.status_code == 200, text
    assert "test://static-text" in text
    assert '"error"' not in text


async def test_a_list_no_upstream_answers_is_an_error_not_an_empty_list(tmp_path: Path, conf_url: str) -> None:
    # A sessionless request without the 2026-07 `_meta` envelope, before any stateless
    # session exists (a stack of its own): each upstream refuses it. The answer used to be
    # 200 with `tools: []`, which reads as "there is nothing".
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/list", "params": {}}
    response = await _first_stateless(tmp_path, conf_url, body)
    (event,) = [line for line in response.text.splitlines() if line.startswith("data:")] or [response.text]
    answer = orjson.loads(event.removeprefix("data:"))
    assert answer["id"] == 7
    assert answer["error"]["code"] == -32603
    assert answer["error"]["data"]["reason"] == "no upstream answered tools/list (2 failed; the proxy's log says why)"
    assert "result" not in answer


async def test_past_the_aggregated_session_bound_a_new_session_is_503_not_500(tmp_path: Path, conf_url: str) -> None:
    # An attacker's probe: the bound's UpstreamError escaped to the proxy's last-resort
    # handler, a 500 `bastion.internal` naming the stdio setting.
    answers = []
    async with _stack(tmp_path, conf_url, aggregated_max_sessions=2) as stack:
        for agent in ("agent-1", "agent-2", "agent-3"):
            hdrs = {"Authorization": f"Bearer {stack.client.token(agent)}", "Accept": "application/json"}
            async with httpx.AsyncClient(base_url=stack.client.proxy, timeout=30) as http:
                answers.append(await http.post("/mcp", json=_init(), headers=hdrs))
    assert [answer.status_code for answer in answers] == [200, 200, 503]
    error = answers[2].json()["error"]
    assert error["code"] == -32603
    assert error["message"] == "UPSTREAM_UNAVAILABLE"
    assert "BASTION_AGGREGATED_MAX_SESSIONS" in error["data"]["reason"]
