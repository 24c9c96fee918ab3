"""List answers show only what the caller's policy could allow, in both wire formats,
and are relayed byte for byte when nothing is left out."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fixtures import inprocess
from fixtures.mcpcalls import ProxyClient, headers, request
from fixtures.policystack import free_addr
from fixtures.upstream import DemoUpstream, demo_upstream

DEMO_POLICY = Path(__file__).resolve().parents[2] / "examples" / "policies" / "demo.yaml"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoUpstream]:
    with demo_upstream(tmp_path_factory.mktemp("upstream")) as server:
        yield server


def _policy(path: Path, rules: list[dict[str, Any]]) -> Path:
    document = {
        "apiVersion": "bastion.dev/v1",
        "kind": "AgentPolicy",
        "metadata": {"name": "listing", "version": 1},
        "spec": {"default": "deny", "rules": rules},
    }
    path.write_text(json.dumps(document))
    return path


def _names(response: httpx.Response, key: str, name: str = "name") -> list[str]:
    return sorted(item[name] for item in _result(response)[key])


def _result(response: httpx.Response) -> dict[str, Any]:
    if response.headers["content-type"].startswith("text/event-stream"):
        for event in response.text.replace("\r\n", "\n").split("\n\n"):
            data = "\n".join(line[5:].lstrip() for line in event.split("\n") if line.startswith("data:"))
            if data and "result" in (message := json.loads(data)):
                return dict(message["result"])
        raise AssertionError(f"no result in {response.text!r}")
    return dict(response.json()["result"])


async def _list(client: ProxyClient, token: str, method: str) -> httpx.Response:
    return await client.post(request(method, {}), headers(token, method))


async def test_listings_show_only_what_policy_could_allow(tmp_path: Path, upstream: DemoUpstream) -> None:
    policy = _policy(
        tmp_path / "p.yaml",
        [
            {"id": "add", "match": {"tools": ["demo__add"]}, "effect": "allow"},
            {"id": "notes", "match": {"resources": ["demo__demo://notes/*"]}, "effect": "allow"},
            {"id": "greet", "match": {"prompts": ["demo__greet"], "agents": ["writer"]}, "effect": "allow"},
        ],
    )
    async with inprocess.stack(tmp_path, inprocess.app_config(upstream.url, policy)) as running:
        client = ProxyClient(tmp_path, running.proxy, running.graph)
        reader, writer = client.token("reader"), client.token("writer")
        tools = await _list(client, reader, "tools/list")
        resources = await _list(client, reader, "resources/list")
        templates = await _list(client, reader, "resources/templates/list")
        prompts_reader = await _list(client, reader, "prompts/list")
        prompts_writer = await _list(client, writer, "prompts/list")
    assert _names(tools, "tools") == ["add"]
    assert _names(resources, "resources", "uri") == ["demo://notes/readme"]
    assert _names(templates, "resourceTemplates", "uriTemplate") == []
    assert _names(prompts_reader, "prompts") == []
    assert _names(prompts_writer, "prompts") == ["greet"]


async def test_a_listing_losing_nothing_is_the_upstreams_bytes(tmp_path: Path, upstream: DemoUpstream) -> None:
    policy = _policy(tmp_path / "all.yaml", [{"id": "all", "match": {"agents": ["*"]}, "effect": "allow"}])
    body = orjson.dumps(request("tools/list", {}))
    async with inprocess.stack(tmp_path, inprocess.app_config(upstream.url, policy)) as running:
        client = ProxyClient(tmp_path, running.proxy, running.graph)
        proxied = await client.post(request("tools/list", {}), headers(client.token("a"), "tools/list"))
        async with httpx.AsyncClient() as http:
            hdrs = {k: v for k, v in headers("unused", "tools/list").items() if k != "Authorization"}
            direct = await http.post(upstream.url, content=body, headers=hdrs)
    assert proxied.content == direct.content


async def test_a_listing_is_filtered_in_a_2025_session_too(tmp_path: Path, upstream: DemoUpstream) -> None:
    async with inprocess.stack(tmp_path, inprocess.app_config(upstream.url, DEMO_POLICY)) as running:
        client = ProxyClient(tmp_path, running.proxy, running.graph)
        token = client.token("a")
        base = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
        }
        init = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        }
        started = await client.post(init, base)
        session = {**base, "Mcp-Session-Id": started.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}
        await client.post({"jsonrpc": "2.0", "method": "notifications/initialized"}, session)
        listed = await client.post({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, session)
    assert _names(listed, "tools") == ["add"]


async def test_with_policy_down_a_listing_is_empty_not_everything(tmp_path: Path, upstream: DemoUpstream) -> None:
    policy_addr = free_addr()
    app = inprocess.app_config(upstream.url, DEMO_POLICY)
    async with (
        inprocess.verifier(tmp_path, app) as verifier,
        inprocess.graph(tmp_path, app, policy_addr=policy_addr) as graph,
        inprocess.proxy(
            tmp_path, app, policy_addr=policy_addr, verifier_addr=verifier["grpc"], graph_addr=graph["grpc"]
        ) as proxy,
    ):
        client = ProxyClient(tmp_path, proxy["http"], graph["http"])
        token = client.token("a")
        # Never reached: without the revocation list nothing is forwarded, a listing neither.
        refused = await _list(client, token, "tools/list")
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "bastion.auth.revocations_unavailable"
        # Reached once, then gone: every item is asked of policy, none is answered, none shown.
        async with inprocess.policy(tmp_path, app, grpc_addr=policy_addr):
            await inprocess.synced(proxy["http"], "proxy")
        listed = await _list(client, token, "tools/list")
    assert _names(listed, "tools") == []
