"""How a forwarded action ended, journaled as a result event and stored on its node:
COMPLETED (with the JSON-RPC error code and the digest of what was relayed),
UPSTREAM_ERROR, TIMEOUT and CLIENT_GONE, through the real stack."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fixtures import inprocess
from fixtures.mcpcalls import ProxyClient, headers, request, tool_call
from fixtures.upstream import DemoUpstream, demo_upstream

ALLOW_ALL = {
    "apiVersion": "bastion.dev/v1",
    "kind": "AgentPolicy",
    "metadata": {"name": "results", "version": 1},
    "spec": {"default": "deny", "rules": [{"id": "everything", "match": {"agents": ["*"]}, "effect": "allow"}]},
}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoUpstream]:
    with demo_upstream(tmp_path_factory.mktemp("upstream")) as server:
        yield server


def _policy(tmp_path: Path) -> Path:
    path = tmp_path / "allow.yaml"
    path.write_text(json.dumps(ALLOW_ALL))
    return path


async def _result(client: ProxyClient, workflow: str, node_id: str) -> dict[str, Any]:
    for _ in range(200):
        nodes = await client.nodes(workflow, 1)
        node = next((n for n in nodes if n["node_id"] == node_id), None)
        if node is not None and node["result"] is not None:
            return dict(node["result"])
        await asyncio.sleep(0.05)
    raise AssertionError(f"no result recorded on node {node_id}")


async def test_a_completed_call_records_its_digest_and_the_node_stays_one(
    tmp_path: Path, upstream: DemoUpstream
) -> None:
    async with inprocess.stack(tmp_path, inprocess.app_config(upstream.url, _policy(tmp_path))) as running:
        client = ProxyClient(tmp_path, running.proxy, running.graph)
        response = await client.post(tool_call("add", {"a": 2, "b": 3}), headers(client.token("a"), workflow="wf-res"))
        result = await _result(client, "wf-res", response.headers["bastion-node-id"])
        nodes = await client.nodes("wf-res", 2)
    assert response.json()["result"]["structuredContent"] == {"result": 5}
    assert (result["outcome"], result["jsonrpc_error_code"], result["http_status"]) == ("COMPLETED", 0, 200)
    assert result["result_digest"] == hashlib.sha256(response.content).hexdigest()
    assert result["result_bytes"] == len(response.content)
    assert result["duration_ms"] > 0
    # The result is stored on the action's node, never as a node; the other node is the
    # verifier's answer to the allowed call.
    assert [node["node_type"] for node in nodes] == ["ACTION", "VERIFICATION"]


async def test_an_upstream_json_rpc_error_is_recorded_with_its_code(tmp_path: Path, upstream: DemoUpstream) -> None:
    async with inprocess.stack(tmp_path, inprocess.app_config(upstream.url, _policy(tmp_path))) as running:
        client = ProxyClient(tmp_path, running.proxy, running.graph)
        response = await client.post(
            request("resources/read", {"uri": "demo://nothing/here"}),
            headers(client.token("a"), "resources/read", "wf-err", "demo://nothing/here"),
        )
        result = await _result(client, "wf-err", response.headers["bastion-node-id"])
    code = response.json()["error"]["code"]
    assert code != 0
    assert (result["outcome"], result["jsonrpc_error_code"]) == ("COMPLETED", code)


# --- a scripted upstream for the failures -------------------------------------------------------


def _http(body: bytes, content_type: bytes = b"application/json") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (content_type, len(body), body)


@contextlib.asynccontextmanager
async def _scripted_upstream() -> AsyncIterator[str]:
    """Lists four tools and answers each as its name says: `ok`, `hang` (never answers),
    `drop` (closes the connection), `trickle` (SSE headers and one event, then nothing)."""
    tasks: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                message = orjson.loads(await reader.readexactly(length)) if length else {}
                method, msg_id = message.get("method"), message.get("id")
                if method == "initialize":
                    result = {
                        "protocolVersion": "2025-11-25",
                        "capabilities": {"tools": {}},
                        "serverInfo": {"name": "s", "version": "1"},
                    }
                    writer.write(_http(orjson.dumps({"jsonrpc": "2.0", "id": msg_id, "result": result})))
                elif method == "tools/list":
                    tools = [{"name": n, "inputSchema": {"type": "object"}} for n in ("ok", "hang", "drop", "trickle")]
                    writer.write(_http(orjson.dumps({"jsonrpc": "2.0", "id": msg_id, "result": {"tools": tools}})))
                elif method == "tools/call":
                    name = message["params"]["name"]
                    if name == "ok":
                        writer.write(_http(orjson.dumps({"jsonrpc": "2.0", "id": msg_id, "result": {"content": []}})))
                    elif name == "drop":
                        writer.close()
                        return
                    elif name == "trickle":
                        writer.write(
                            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                        )
                        event = (
                            b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/progress","params":{}}\n\n'
                        )
                        writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                        await writer.drain()
                        await asyncio.sleep(3600)
                    else:  # hang
                        await asyncio.sleep(3600)
                else:
                    writer.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            return
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/mcp"
    finally:
        for task in list(tasks):
            task.cancel()
        server.close()


@pytest.fixture
async def scripted(tmp_path: Path) -> AsyncIterator[ProxyClient]:
    async with _scripted_upstream() as url:
        app = inprocess.app_config(url, _policy(tmp_path))
        # 1.5 s: it also bounds the first tool-list fetch and the answered calls, which a
        # loaded CI machine can slow; only `hang` is meant to reach it.
        async with inprocess.stack(tmp_path, app, upstream_timeout_s=1.5) as running:
            yield ProxyClient(tmp_path, running.proxy, running.graph)


@pytest.mark.parametrize(
    ("tool", "status", "outcome"),
    [("drop", 502, "UPSTREAM_ERROR"), ("hang", 504, "TIMEOUT"), ("ok", 200, "COMPLETED")],
)
async def test_failures_after_forwarding_are_recorded_as_what_they_were(
    scripted: ProxyClient, tool: str, status: int, outcome: str
) -> None:
    response = await scripted.post(tool_call(tool, {}), headers(scripted.token("a"), workflow=f"wf-{tool}"))
    result = await _result(scripted, f"wf-{tool}", response.headers["bastion-node-id"])
    assert response.status_code == status
    assert result["outcome"] == outcome
    if outcome != "COMPLETED":
        assert result["detail"]
        assert "127.0.0.1" not in result["detail"]


async def test_a_stream_that_stops_mid_answer_is_a_timeout(scripted: ProxyClient) -> None:
    async with httpx.AsyncClient(base_url=scripted.proxy, timeout=10) as http:
        hdrs = {**headers(scripted.token("a"), workflow="wf-trickle"), "Mcp-Name": "trickle"}
        async with http.stream(
            "POST", "/mcp/demo", content=orjson.dumps(tool_call("trickle", {})), headers=hdrs
        ) as response:
            node_id = response.headers["bastion-node-id"]
            body = b"".join([chunk async for chunk in response.aiter_bytes()])
    result = await _result(scripted, "wf-trickle", node_id)
    assert b"notifications/progress" in body
    assert result["outcome"] == "TIMEOUT"
    assert result["result_bytes"] == len(body)


async def test_a_client_that_goes_away_mid_stream_is_recorded_as_gone(tmp_path: Path) -> None:
    async with _scripted_upstream() as url:
        app = inprocess.app_config(url, _policy(tmp_path))
        async with inprocess.stack(tmp_path, app, upstream_timeout_s=30) as running:
            client = ProxyClient(tmp_path, running.proxy, running.graph)
            async with httpx.AsyncClient(base_url=client.proxy, timeout=10) as http:
                hdrs = {**headers(client.token("a"), workflow="wf-gone"), "Mcp-Name": "trickle"}
                body = orjson.dumps(tool_call("trickle", {}))
                async with http.stream("POST", "/mcp/demo", content=body, headers=hdrs) as response:
                    node_id = response.headers["bastion-node-id"]
                    async for _ in response.aiter_bytes():
                        break  # one event, then the client leaves
            result = await _result(client, "wf-gone", node_id)
    assert result["outcome"] == "CLIENT_GONE"
