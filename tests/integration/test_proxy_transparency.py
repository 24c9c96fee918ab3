"""Through `/mcp/{server}` a client sees the upstream, not the proxy: the SDK's own client,
in both wire formats, gets the same tools, the same streamed progress, the same session
lifecycle as it would directly."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import mcp_types as types
import pytest
from fixtures import inprocess
from fixtures.mcp_client import WIRE_FORMATS, mcp_client
from fixtures.upstream import DemoUpstream, demo_upstream

from bastion._identity import ensure_dev_key, issue_token

ALLOW_ALL = """apiVersion: bastion.dev/v1
kind: AgentPolicy
metadata: {name: allow-demo, version: 1}
spec:
  default: deny
  rules:
    - id: demo-tools
      match: {agents: ["*"], tools: ["demo__*"]}
      effect: allow
"""


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoUpstream]:
    with demo_upstream(tmp_path_factory.mktemp("upstream")) as server:
        yield server


@pytest.fixture
async def proxy_url(tmp_path: Path, upstream: DemoUpstream) -> AsyncIterator[str]:
    policy_file = tmp_path / "allow.yaml"
    policy_file.write_text(ALLOW_ALL)
    app = inprocess.app_config(upstream.url, policy_file)
    async with inprocess.stack(tmp_path, app) as running:
        yield f"http://{running.proxy}/mcp/demo"


@pytest.fixture
def token(tmp_path: Path) -> str:
    return issue_token(ensure_dev_key(tmp_path), subject="agent-transparency")


@pytest.mark.parametrize("mode", WIRE_FORMATS)
async def test_tool_listing_is_the_upstreams_exactly(
    proxy_url: str, token: str, upstream: DemoUpstream, mode: str
) -> None:
    async with mcp_client(proxy_url, token, mode) as through:
        proxied = (await through.list_tools()).model_dump(mode="json")
    async with mcp_client(upstream.url, "unused", mode) as direct:
        expected = (await direct.list_tools()).model_dump(mode="json")
    assert proxied["tools"] == expected["tools"]
    assert {tool["name"] for tool in proxied["tools"]} == {"add", "echo", "count", "confirm", "delete_file"}


@pytest.mark.parametrize("mode", WIRE_FORMATS)
async def test_progress_notifications_stream_through_during_a_tool_call(proxy_url: str, token: str, mode: str) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with mcp_client(proxy_url, token, mode) as client:
        result = await client.call_tool("count", {"to": 3}, progress_callback=on_progress)
    assert result.structured_content == {"result": 3}
    assert seen == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]


async def test_an_elicitation_mid_call_reaches_the_client_and_its_answer_reaches_the_upstream(
    proxy_url: str, token: str
) -> None:
    asked: list[str] = []

    async def answer(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"ok": True})

    async with mcp_client(proxy_url, token, "legacy", elicitation_callback=answer) as client:
        result = await client.call_tool("confirm", {"question": "Ship it?"})
    assert asked == ["Ship it?"]
    assert result.structured_content == {"result": "confirmed"}


async def test_a_deleted_session_is_404_through_the_proxy_as_it_is_upstream(proxy_url: str, token: str) -> None:
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
    }
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    async with httpx.AsyncClient() as http:
        opened = await http.post(proxy_url, json=initialize, headers=headers)
        session = opened.headers["mcp-session-id"]
        session_headers = {**headers, "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25"}
        deleted = await http.delete(proxy_url, headers=session_headers)
        after = await http.post(
            proxy_url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=session_headers
        )
    assert opened.status_code == 200
    assert deleted.status_code == 200
    assert after.status_code == 404


async def test_the_proxy_stops_promptly_while_a_client_holds_its_session_stream(
    tmp_path: Path, upstream: DemoUpstream, token: str
) -> None:
    policy_file = tmp_path / "allow.yaml"
    policy_file.write_text(ALLOW_ALL)
    stack_cm = inprocess.stack(tmp_path, inprocess.app_config(upstream.url, policy_file))
    running = await stack_cm.__aenter__()
    client_cm = mcp_client(f"http://{running.proxy}/mcp/demo", token, "legacy")
    try:
        client = await client_cm.__aenter__()
        # The legacy client keeps a GET event stream open for the session from here on.
        assert (await client.call_tool("add", {"a": 1, "b": 1})).structured_content == {"result": 2}
        started = time.monotonic()
        await stack_cm.__aexit__(None, None, None)
        stopped_in = time.monotonic() - started
    finally:
        with contextlib.suppress(Exception):
            await client_cm.__aexit__(None, None, None)
    assert stopped_in < 15, f"the proxy took {stopped_in:.1f}s to stop with a session stream open"
