"""A `tools/list` answer framed as the agent's SDK reads it but as the listing filter did
not: event lines ending in CRLF or a lone CR, a notification before the answer, an answer
id the TypeScript SDK reads as the request's ("1" for 1), a batch array, a 201. The filter
used to relay each of them unfiltered, showing the agent a tool its policy denies. An answer
no reader of the proxy's can read is refused (fail closed), with its reason recorded."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fixtures import inprocess
from fixtures.local_http import Handler, LocalHttp
from fixtures.mcp_client import mcp_client
from fixtures.mcpcalls import ProxyClient, headers, request, tool_call

from bastion._appconfig import load_app_config

TOOLS = [{"name": name, "inputSchema": {"type": "object"}} for name in ("read", "wipe_everything")]
POLICY = {
    "apiVersion": "bastion.dev/v1",
    "kind": "AgentPolicy",
    "metadata": {"name": "listing-framing", "version": 1},
    "spec": {"default": "deny", "rules": [{"id": "read", "match": {"tools": ["up__read"]}, "effect": "allow"}]},
}
NOTICE = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "listing"}}

#: How the upstream frames its tools/list answer: (Content-Type, status, body of the answer to `msg_id`).
Framing = Callable[[Any], tuple[str, int, bytes]]


def _listing(msg_id: Any) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": msg_id, "result": {"tools": TOOLS}})


def _sse(eol: bytes) -> Framing:
    def frame(msg_id: Any) -> tuple[str, int, bytes]:
        events = [orjson.dumps(NOTICE), _listing(msg_id)]
        body = b"".join(b"event: message" + eol + b"data: " + data + eol + eol for data in events)
        return "text/event-stream", 200, body

    return frame


EOLS = {"crlf": b"\r\n", "cr": b"\r", "lf": b"\n"}
FRAMINGS: dict[str, Framing] = {
    **{name: _sse(eol) for name, eol in EOLS.items()},
    "id-as-string": lambda msg_id: ("application/json", 200, _listing(str(msg_id))),
    "batch": lambda msg_id: ("application/json", 200, b"[" + _listing(msg_id) + b"]"),
    "status-201": lambda msg_id: ("application/json", 201, _listing(msg_id)),
    # The SDK reads a null method beside a result as a response (a re-probe).
    "method-null": lambda msg_id: ("application/json", 200, _listing(msg_id)[:-1] + b',"method":null}'),
}


class _Upstream(LocalHttp):
    """An MCP upstream (2025 handshake) whose tools/list answer is framed by `framing`."""

    def __init__(self, framing: Framing, extra: dict[str, str] | None = None) -> None:
        more: dict[str, str] = extra or {}

        class McpHandler(Handler):
            def do_GET(self) -> None:
                # A session's GET stream (a resumption replays answers on it) with a listing.
                body = b"id: e1\ndata: " + _listing(1) + b"\n\n"
                self.answer(200, body, {"Content-Type": "text/event-stream"})

            def do_POST(self) -> None:
                message = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if "id" not in message:  # a notification
                    self.answer(202, b"")
                elif message.get("method") == "initialize":
                    info = {
                        "protocolVersion": message["params"]["protocolVersion"],
                        "capabilities": {"tools": {}},
                        "serverInfo": {"name": "framing", "version": "1"},
                    }
                    self.answer(200, orjson.dumps({"jsonrpc": "2.0", "id": message["id"], "result": info}))
                elif message.get("method") == "tools/list" and str(message["id"]).startswith("bastion-list-"):
                    # The proxy's own catalog fetch (which checks tool names): plainly framed.
                    self.answer(200, _listing(message["id"]))
                elif message.get("method") == "tools/list":
                    content_type, status, body = framing(message["id"])
                    self.answer(status, body, {"Content-Type": content_type, **more})
                elif message.get("method") == "tools/call":
                    # Answers the call, and in the same stream a pending tools/list (id 1):
                    # the SDKs route a response by its id, whatever stream it comes in.
                    done = {"jsonrpc": "2.0", "id": message["id"], "result": {"content": []}}
                    events = [_listing(1), orjson.dumps(done)]
                    body = b"".join(b"event: message\ndata: " + data + b"\n\n" for data in events)
                    self.answer(200, body, {"Content-Type": "text/event-stream"})
                else:
                    error = {"code": -32601, "message": "no such method"}
                    self.answer(200, orjson.dumps({"jsonrpc": "2.0", "id": message["id"], "error": error}))

        super().__init__(McpHandler)


@asynccontextmanager
async def _stack(
    tmp_path: Path, framing: Framing, extra: dict[str, str] | None = None
) -> AsyncIterator[tuple[ProxyClient, str]]:
    with _Upstream(framing, extra) as upstream:
        (tmp_path / "policy.json").write_text(json.dumps(POLICY))
        config = tmp_path / "bastion.yaml"
        config.write_text(f"servers:\n  up:\n    url: http://{upstream.addr}/mcp\npolicies: [policy.json]\n")
        async with inprocess.stack(tmp_path, load_app_config(config)) as running:
            yield ProxyClient(tmp_path, running.proxy, running.graph, server="up"), running.proxy


def _tool_names(text: str) -> list[str]:
    """Every tool name any answer in `text` lists, read as leniently as an SDK would."""
    names: list[str] = []
    for chunk in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        data = chunk.removeprefix("data:").strip()
        if data.startswith(("{", "[")):
            messages = json.loads(data)
            for message in messages if isinstance(messages, list) else [messages]:
                names += [tool["name"] for tool in message.get("result", {}).get("tools", [])]
    return names


@pytest.mark.parametrize("framing", sorted(FRAMINGS))
async def test_every_framing_of_a_listing_is_filtered(tmp_path: Path, framing: str) -> None:
    async with _stack(tmp_path, FRAMINGS[framing]) as (client, _):
        token = client.token("agent-framing")
        answer = await client.post(request("tools/list", {}), headers(token, "tools/list"))
    assert _tool_names(answer.text) == ["read"], answer.text
    if framing in EOLS:
        # The notification before the answer is relayed byte for byte, as the upstream framed it.
        eol = EOLS[framing]
        assert answer.content.startswith(b"event: message" + eol + b"data: " + orjson.dumps(NOTICE) + eol + eol)


@pytest.mark.parametrize("framing", ["crlf", "cr"])
async def test_the_sdk_client_lists_only_what_policy_allows(tmp_path: Path, framing: str) -> None:
    async with _stack(tmp_path, FRAMINGS[framing]) as (client, proxy):
        token = client.token("agent-sdk")
        async with mcp_client(f"http://{proxy}/mcp/up", token, "legacy") as sdk:
            listed = await sdk.list_tools()
    assert [tool.name for tool in listed.tools] == ["read"]


async def test_a_listing_no_reader_can_read_is_refused_and_recorded(tmp_path: Path) -> None:
    answers = iter(["nan"])

    def nan_once(msg_id: Any) -> tuple[str, int, bytes]:
        if next(answers, None) is None:
            return FRAMINGS["lf"](msg_id)
        # Python's json and many SDKs read NaN; orjson does not, so the proxy cannot filter it.
        body = json.dumps({"jsonrpc": "2.0", "id": msg_id, "result": {"tools": TOOLS, "score": float("nan")}})
        return "text/event-stream", 200, b"data: " + body.encode() + b"\n\n"

    async with _stack(tmp_path, nan_once) as (client, _):
        token = client.token("agent-nan")
        answer = await client.post(request("tools/list", {}), headers(token, "tools/list", workflow="wf-nan"))
        assert answer.status_code == 502, answer.text
        error = answer.json()["error"]
        assert (error["code"], error["message"]) == (-32603, "UPSTREAM_UNAVAILABLE")
        assert "tools/list" in error["data"]["reason"]
        assert "not JSON" in error["data"]["reason"]
        assert "wipe_everything" not in answer.text
        node_id = answer.headers["bastion-node-id"]
        nodes = await client.nodes("wf-nan", 1, where=lambda node: node["node_id"] == node_id and bool(node["result"]))
        # And the proxy keeps serving: the next listing is filtered as usual.
        again = await client.post(request("tools/list", {}), headers(token, "tools/list", workflow="wf-nan"))
    assert nodes[0]["result"]["outcome"] == "UPSTREAM_ERROR"
    assert "not JSON" in nodes[0]["result"]["detail"]
    assert _tool_names(again.text) == ["read"]


async def test_a_listing_in_any_answer_or_stream_is_filtered(tmp_path: Path) -> None:
    # A re-probe had the upstream answer a pending tools/list on the resumption GET stream;
    # it could as well ride in another call's answer.
    async with _stack(tmp_path, FRAMINGS["lf"]) as (client, proxy):
        token = client.token("agent-streams")
        called = await client.post(tool_call("read", {}, 2), headers(token, name="read"))
        async with httpx.AsyncClient(timeout=30) as http:
            hdrs = {**headers(token, "tools/list"), "Accept": "text/event-stream"}
            stream = await http.get(f"http://{proxy}/mcp/up", headers=hdrs)
    assert _tool_names(called.text) == ["read"], called.text
    assert _tool_names(stream.text) == ["read"], stream.text
    assert stream.text.startswith("id: e1\n")


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ({"Content-Encoding": "gzip"}, "Content-Encoding 'gzip'"),
        ({"Content-Type": "text/event-stream; charset=utf-16"}, "charset 'utf-16'"),
    ],
)
async def test_an_answer_the_proxy_cannot_read_is_refused(tmp_path: Path, extra: dict[str, str], why: str) -> None:
    # The SDK would decompress it, or decode the declared charset, and list every tool.
    def framing(msg_id: Any) -> tuple[str, int, bytes]:
        return "text/event-stream", 200, b"data: " + _listing(msg_id) + b"\n\n"

    async with _stack(tmp_path, framing, extra) as (client, _):
        answer = await client.post(request("tools/list", {}), headers(client.token("agent-gzip"), "tools/list"))
    assert answer.status_code == 502, answer.text
    assert why in answer.json()["error"]["data"]["reason"]
