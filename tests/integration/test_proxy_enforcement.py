"""The proxy in front of a real MCP server, with real policy, verifier and graph services
over gRPC on port 0: bad input, failing dependencies, and the journal's durability."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest
from fixtures import inprocess
from fixtures.graphapi import auditor_token, poll
from fixtures.mcpcalls import headers, tool_call
from fixtures.ports import dead_address
from fixtures.stack import ROOT
from fixtures.upstream import DemoUpstream, demo_upstream

from bastion._identity import ensure_dev_key, issue_token
from bastion.v1 import policy_pb2, policy_pb2_grpc

POLICY = ROOT / "examples" / "policies" / "demo.yaml"


def _hdrs(token: str, name: str | None = None, workflow: str = "wf-int") -> dict[str, str]:
    return headers(token, "tools/call", workflow, name)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoUpstream]:
    with demo_upstream(tmp_path_factory.mktemp("upstream")) as server:
        yield server


class Stack:
    def __init__(self, home: Path, proxy: str, graph: str) -> None:
        self.home = home
        self.proxy = f"http://{proxy}"
        self.graph = f"http://{graph}"
        self.token = issue_token(ensure_dev_key(home), subject="agent-int")

    async def post(self, body: Any, headers: dict[str, str] | None = None, raw: bytes | None = None) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.proxy) as http:
            content = raw if raw is not None else orjson.dumps(body)
            return await http.post("/mcp/demo", content=content, headers=headers or _hdrs(self.token))

    async def violations(self, workflow: str, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        params = {"workflow_id": workflow}
        return await poll(self.graph, "/audit/violations", params, count, auditor_token(self.home), timeout=timeout)

    async def nodes(self, workflow: str, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        path = f"/graphs/{workflow}/nodes"
        return await poll(self.graph, path, {}, count, auditor_token(self.home), timeout=timeout)


@pytest.fixture
async def stack(tmp_path: Path, upstream: DemoUpstream) -> AsyncIterator[Stack]:
    app = inprocess.app_config(upstream.url, POLICY)
    async with inprocess.stack(tmp_path, app, max_body=64 * 1024) as running:
        yield Stack(tmp_path, running.proxy, running.graph)


async def test_allowed_call_returns_the_upstream_result_with_bastion_headers(stack: Stack) -> None:
    response = await stack.post(tool_call("add", {"a": 20, "b": 22}), _hdrs(stack.token, "add"))
    assert response.status_code == 200
    assert response.json()["result"]["structuredContent"] == {"result": 42}
    assert response.headers["bastion-workflow-id"] == "wf-int"
    node_id = response.headers["bastion-node-id"]
    # The action, and its verifier's answer as a VERIFICATION node it is verified by.
    nodes = await stack.nodes("wf-int", 2)
    assert [n["node_id"] for n in nodes] == [node_id, f"{node_id}:verification:1"]
    assert [n["node_type"] for n in nodes] == ["ACTION", "VERIFICATION"]


@pytest.mark.parametrize(
    ("raw", "status", "code", "bastion_code"),
    [
        (b"{not json", 400, -32700, "bastion.protocol.parse_error"),
        (
            b'[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add"}}]',
            400,
            -32600,
            "bastion.protocol.invalid_request",
        ),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"../delete_file","arguments":{}}}',
            400,
            -32602,
            "bastion.protocol.invalid_params",
        ),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_file\\u0000","arguments":{}}}',
            400,
            -32602,
            "bastion.protocol.invalid_params",
        ),
    ],
)
async def test_bad_messages_get_a_precise_error_are_audited_and_the_proxy_keeps_serving(
    stack: Stack, upstream: DemoUpstream, raw: bytes, status: int, code: int, bastion_code: str
) -> None:
    executed = len(upstream.executed())
    headers = _hdrs(stack.token)
    del headers["Mcp-Method"]
    response = await stack.post(None, headers, raw=raw)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["data"]["reason"]
    audited = await stack.violations("bastion.rejected", 1)
    assert audited[0]["rule_id"] == bastion_code
    assert len(upstream.executed()) == executed
    follow_up = await stack.post(tool_call("add", {"a": 1, "b": 1}), _hdrs(stack.token, "add"))
    assert follow_up.json()["result"]["structuredContent"] == {"result": 2}


async def test_routing_headers_that_disagree_with_the_body_get_minus_32020_and_nothing_runs(
    stack: Stack, upstream: DemoUpstream
) -> None:
    executed = len(upstream.executed())
    # The header says the allowed tool, the body calls the denied one.
    response = await stack.post(tool_call("delete_file", {"path": "/x"}), _hdrs(stack.token, "add"))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == -32020
    assert len(upstream.executed()) == executed


async def test_oversized_body_is_refused_with_413(stack: Stack) -> None:
    response = await stack.post(tool_call("echo", {"text": "x" * 100_000}), _hdrs(stack.token, "echo"))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == -32600
    assert "BASTION_MAX_BODY" in response.json()["error"]["data"]["reason"]
    audited = await stack.violations("bastion.rejected", 1)
    assert audited[0]["rule_id"] == "bastion.protocol.too_large"


async def test_unknown_server_and_foreign_host_are_refused(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.proxy) as http:
        unknown = await http.post("/mcp/nope", json=tool_call("add", {}), headers=_hdrs(stack.token))
        foreign = await http.post(
            "/mcp/demo", json=tool_call("add", {}), headers={**_hdrs(stack.token, "add"), "Host": "evil.example.com"}
        )
        wrong_method = await http.put("/mcp/demo", json={}, headers=_hdrs(stack.token))
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "bastion.unknown_server")
    assert (foreign.status_code, foreign.json()["error"]["code"]) == (403, "bastion.host_not_allowed")
    assert wrong_method.status_code == 405
    rules = {v["rule_id"] for v in await stack.violations("bastion.rejected", 3)}
    assert rules == {"bastion.unknown_server", "bastion.host_not_allowed", "bastion.method_not_allowed"}


async def test_blocked_call_envelope_names_rule_and_is_linked_to_the_previous_action(stack: Stack) -> None:
    first = await stack.post(tool_call("add", {"a": 1, "b": 2}), _hdrs(stack.token, "add", "wf-chain"))
    blocked = await stack.post(
        tool_call("delete_file", {"path": "/x"}, 2), _hdrs(stack.token, "delete_file", "wf-chain")
    )
    error = blocked.json()["error"]
    assert (error["code"], error["message"], error["data"]["rule_id"]) == (
        -32003,
        "POLICY_VIOLATION",
        "no-file-deletes",
    )
    assert blocked.json()["id"] == 2
    # The allowed call, its VERIFICATION node, then the denied call (no VERIFICATION: policy decided).
    nodes = await stack.nodes("wf-chain", 3)
    assert [n["node_type"] for n in nodes] == ["ACTION", "VERIFICATION", "ACTION"]
    assert nodes[2]["node_id"] == blocked.headers["bastion-node-id"]
    assert nodes[2]["parent_ids"] == [first.headers["bastion-node-id"]]


async def test_the_agents_token_is_not_forwarded_upstream(tmp_path: Path) -> None:
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        body = b'{"jsonrpc":"2.0","id":1,"result":{}}'
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    app = inprocess.app_config(f"http://127.0.0.1:{port}/mcp", POLICY)
    async with server, inprocess.stack(tmp_path, app) as running:
        stack = Stack(tmp_path, running.proxy, running.graph)
        headers = {**_hdrs(stack.token), "Mcp-Method": "ping"}
        response = await stack.post({"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers)
        assert response.status_code == 200
    assert len(seen) == 1
    lowered = seen[0].lower()
    assert b"authorization" not in lowered
    assert stack.token.encode() not in seen[0]
    assert b"bastion-workflow-id" not in lowered
    assert f"host: 127.0.0.1:{port}".encode() in lowered


async def test_verifier_down_blocks_by_default_and_allows_only_when_fallback_says_so(
    tmp_path: Path, upstream: DemoUpstream
) -> None:
    app = inprocess.app_config(upstream.url, POLICY)
    dead = dead_address()
    async with (
        inprocess.policy(tmp_path, app) as policy,
        inprocess.graph(tmp_path, app, policy_addr=policy["grpc"]) as graph,
    ):
        async with inprocess.proxy(
            tmp_path, app, policy_addr=policy["grpc"], verifier_addr=dead, graph_addr=graph["grpc"]
        ) as proxy:
            stack = Stack(tmp_path, proxy["http"], graph["http"])
            blocked = await stack.post(tool_call("add", {"a": 1, "b": 1}), _hdrs(stack.token, "add", "wf-vdown"))
            blocked_metrics = await _metrics(proxy["http"])
        assert blocked.json()["error"]["data"]["rule_id"] == "bastion.verifier_unavailable"
        assert 'bastion_verifier_fallback_total{mode="block"} 1.0' in blocked_metrics
        assert blocked.json()["error"]["data"]["deviation_score"] is None
        async with inprocess.proxy(
            tmp_path,
            app,
            policy_addr=policy["grpc"],
            verifier_addr=dead,
            graph_addr=graph["grpc"],
            verifier_fallback="allow",
        ) as proxy:
            stack = Stack(tmp_path, proxy["http"], graph["http"])
            allowed = await stack.post(tool_call("add", {"a": 1, "b": 1}), _hdrs(stack.token, "add", "wf-vfallback"))
            allowed_metrics = await _metrics(proxy["http"])
        assert allowed.json()["result"]["structuredContent"] == {"result": 2}
        assert 'bastion_verifier_fallback_total{mode="allow"} 1.0' in allowed_metrics
        nodes = await stack.nodes("wf-vfallback", 1)
        assert nodes[0]["outcome"] == "FORWARDED"
        assert nodes[0]["verifier_fallback"] is True


async def _metrics(addr: str) -> str:
    async with httpx.AsyncClient(timeout=10) as http:
        return (await http.get(f"http://{addr}/metrics")).text


class _SlowPolicy(policy_pb2_grpc.PolicyServiceServicer):
    """A policy service that answers too late: the fault under test."""

    async def Decide(self, request: policy_pb2.DecideRequest, context: Any) -> policy_pb2.Decision:
        await asyncio.sleep(5)
        return policy_pb2.Decision(effect=policy_pb2.ALLOW, rule_id="too-late")

    async def DecideBatch(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not used by the proxy")

    def Watch(self, request: Any, context: Any) -> Iterator[policy_pb2.BundleEvent]:
        return iter(())

    def WatchIdentity(self, request: Any, context: Any) -> Iterator[policy_pb2.IdentityEvent]:
        return iter(())

    async def DecideStream(self, request_iterator: Any, context: Any) -> AsyncIterator[policy_pb2.Decision]:
        async for _ in request_iterator:
            await asyncio.sleep(5)
            yield policy_pb2.Decision(effect=policy_pb2.ALLOW, rule_id="too-late")

    async def DecideBatchStream(
        self, request_iterator: Any, context: Any
    ) -> AsyncIterator[policy_pb2.DecideBatchResponse]:
        # The proxy's hot path asks here first.
        async for batch in request_iterator:
            await asyncio.sleep(5)
            yield policy_pb2.DecideBatchResponse(
                decisions=[policy_pb2.Decision(effect=policy_pb2.ALLOW, rule_id="too-late") for _ in batch.requests]
            )


async def test_policy_past_its_deadline_blocks_the_call(tmp_path: Path, upstream: DemoUpstream) -> None:
    slow = grpc.aio.server()
    policy_pb2_grpc.add_PolicyServiceServicer_to_server(_SlowPolicy(), slow)
    port = slow.add_insecure_port("127.0.0.1:0")
    await slow.start()
    app = inprocess.app_config(upstream.url, POLICY)
    try:
        async with (
            inprocess.verifier(tmp_path, app) as verifier,
            inprocess.graph(tmp_path, app) as graph,
            inprocess.proxy(
                tmp_path,
                app,
                policy_addr=f"127.0.0.1:{port}",
                verifier_addr=verifier["grpc"],
                graph_addr=graph["grpc"],
                policy_timeout_ms=100,
            ) as proxy,
        ):
            stack = Stack(tmp_path, proxy["http"], graph["http"])
            started = time.monotonic()
            response = await stack.post(tool_call("add", {"a": 1, "b": 1}), _hdrs(stack.token, "add"))
            elapsed = time.monotonic() - started
    finally:
        await slow.stop(0)
    data = response.json()["error"]["data"]
    assert data["rule_id"] == "bastion.policy_unavailable"
    assert "DEADLINE_EXCEEDED" in data["reason"]
    assert elapsed < 4, "the proxy waited for the policy instead of applying its deadline"


async def test_events_journaled_while_the_graph_is_down_arrive_after_a_proxy_restart(
    tmp_path: Path, upstream: DemoUpstream
) -> None:
    app = inprocess.app_config(upstream.url, POLICY)
    async with inprocess.policy(tmp_path, app) as policy, inprocess.verifier(tmp_path, app) as verifier:
        async with inprocess.proxy(
            tmp_path, app, policy_addr=policy["grpc"], verifier_addr=verifier["grpc"], graph_addr=dead_address()
        ) as proxy:
            stack = Stack(tmp_path, proxy["http"], "unused:0")
            node_ids = []
            for i in range(5):
                response = await stack.post(
                    tool_call("add", {"a": i, "b": 1}, i), _hdrs(stack.token, "add", "wf-outage")
                )
                assert response.status_code == 200
                node_ids.append(response.headers["bastion-node-id"])
        # The proxy is gone and never reached the graph; its journal is all there is.
        async with (
            inprocess.graph(tmp_path, app, policy_addr=policy["grpc"]) as graph,
            inprocess.proxy(
                tmp_path, app, policy_addr=policy["grpc"], verifier_addr=verifier["grpc"], graph_addr=graph["grpc"]
            ),
        ):
            nodes = await Stack(tmp_path, "unused:0", graph["http"]).nodes("wf-outage", 10)
    # Each call and its verifier's answer (a VERIFICATION node derived by the graph at ingest).
    assert [n["node_id"] for n in nodes] == [
        node for node_id in node_ids for node in (node_id, f"{node_id}:verification:1")
    ]


async def test_an_unreachable_upstream_is_502_with_the_request_id(tmp_path: Path) -> None:
    app = inprocess.app_config(f"http://{dead_address()}/mcp", POLICY)
    async with inprocess.stack(tmp_path, app) as running:
        stack = Stack(tmp_path, running.proxy, running.graph)
        response = await stack.post(tool_call("add", {"a": 1, "b": 1}, 41), _hdrs(stack.token, "add", "wf-up-down"))
        refused = await stack.violations("bastion.rejected", 1)
    assert response.status_code == 502
    assert response.json()["id"] == 41
    assert (response.json()["error"]["code"], response.json()["error"]["message"]) == (-32603, "UPSTREAM_UNAVAILABLE")
    reason = response.json()["error"]["data"]["reason"]
    # The tool name cannot be checked against a list the upstream cannot give: fail closed,
    # and the agent is told why without learning the upstream's internal address.
    assert "cannot connect" in reason
    assert "127.0.0.1" not in reason
    assert refused[0]["rule_id"] == "bastion.upstream"


async def test_an_overlong_workflow_id_is_refused_before_it_can_reach_the_graph(stack: Stack) -> None:
    response = await stack.post(tool_call("add", {"a": 1, "b": 1}), _hdrs(stack.token, "add", "w" * 600))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == -32600
    assert "Bastion-Workflow-Id" in response.json()["error"]["data"]["reason"]
    # The refusal itself is audited, and shipping goes on.
    audited = await stack.violations("bastion.rejected", 1)
    assert audited[0]["rule_id"] == "bastion.protocol.invalid_request"
    fine = await stack.post(tool_call("add", {"a": 2, "b": 2}), _hdrs(stack.token, "add", "wf-after"))
    assert fine.json()["result"]["structuredContent"] == {"result": 4}
    assert [n["node_type"] for n in await stack.nodes("wf-after", 2)] == ["ACTION", "VERIFICATION"]
