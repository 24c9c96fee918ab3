"""One request must never stop the audit trail for everyone: a real in-process stack
(demo MCP upstream as a subprocess; policy, verifier, graph and proxy on port 0)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fixtures import inprocess
from fixtures.stack import ROOT
from fixtures.upstream import DemoUpstream, demo_upstream
from google.protobuf.struct_pb2 import ListValue, Value

from bastion._identity import ensure_dev_key, issue_token
from bastion.proxy._journal import Journal
from bastion.proxy._recorder import MAX_EVENT_BYTES
from bastion.v1 import graph_pb2

POLICY = ROOT / "examples" / "policies" / "demo.yaml"
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoUpstream]:
    with demo_upstream(tmp_path_factory.mktemp("upstream")) as server:
        yield server


def _body(tool: str, arguments: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments, "_meta": META},
        }
    )


class Client:
    def __init__(self, home: Path, running: inprocess.Running) -> None:
        key = ensure_dev_key(home)
        self.agent = issue_token(key, subject="agent-bounds")
        # The graph REST needs an operator or auditor token (DESIGN §7).
        self.auditor = issue_token(key, subject="auditor", roles=("auditor",))
        self.proxy = f"http://{running.proxy}"
        self.graph = f"http://{running.graph}"

    async def call(self, tool: str, body: bytes, workflow: str) -> httpx.Response:
        headers = {
            "Authorization": f"Bearer {self.agent}",
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
            "MCP-Protocol-Version": "2026-07-28",
            "Mcp-Method": "tools/call",
            "Mcp-Name": tool,
            "Bastion-Workflow-Id": workflow,
        }
        async with httpx.AsyncClient(base_url=self.proxy, timeout=30) as http:
            return await http.post("/mcp/demo", content=body, headers=headers)

    async def nodes(self, workflow: str, node_ids: set[str], timeout: float = 5.0) -> dict[str, dict[str, Any]]:
        """The workflow's nodes by id, once all of `node_ids` are in the graph."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=self.graph, timeout=10) as http:
            while True:
                response = await http.get(
                    f"/graphs/{workflow}/nodes", headers={"Authorization": f"Bearer {self.auditor}"}
                )
                items = response.json().get("items", []) if response.status_code == 200 else []
                found = {item["node_id"]: item for item in items}
                if node_ids <= found.keys():
                    return found
                assert time.monotonic() < deadline, f"{node_ids - found.keys()} not in the graph: {response.text}"
                await asyncio.sleep(0.05)

    async def metrics(self) -> str:
        async with httpx.AsyncClient(base_url=self.proxy) as http:
            return (await http.get("/metrics")).text


async def test_a_huge_call_is_journaled_bounded_and_the_next_call_still_reaches_the_graph(
    tmp_path: Path, upstream: DemoUpstream
) -> None:
    app = inprocess.app_config(upstream.url, POLICY)
    async with inprocess.stack(tmp_path, app) as running:  # the default 4 MiB body cap
        client = Client(tmp_path, running)
        huge_body = _body("echo", {"text": "x" * 3_200_000})
        huge = await client.call("echo", huge_body, "wf-bounds")
        ordinary = await client.call("add", _body("add", {"a": 20, "b": 22}), "wf-bounds")

        assert huge.json()["error"]["message"] == "POLICY_VIOLATION"  # demo__echo is denied
        assert ordinary.json()["result"]["structuredContent"] == {"result": 42}
        huge_id, ordinary_id = huge.headers["bastion-node-id"], ordinary.headers["bastion-node-id"]
        nodes = await client.nodes("wf-bounds", {huge_id, ordinary_id})

    assert nodes[ordinary_id]["action"]["arguments"] == {"a": 20, "b": 22}
    assert nodes[ordinary_id]["action"]["arguments_truncated"] is False
    action = nodes[huge_id]["action"]
    assert action["arguments_truncated"] is True
    text = action["arguments"]["text"]
    assert text.startswith("xxxx")
    assert text.endswith(" more characters]")
    assert len(text) < 64 * 1024
    assert nodes[huge_id]["payload_digest"] == hashlib.sha256(huge_body).hexdigest()
    assert nodes[huge_id]["outcome"] == "BLOCKED"
    assert not (tmp_path / "journal" / "dead-letter.jsonl").exists()


def _oversized_event() -> graph_pb2.Event:
    """What the probe's 3.2 MB `[0,0,…]` call journaled before events were bounded: 17.6 MB."""
    event = graph_pb2.Event(event_id="legacy-1", workflow_id="wf-legacy", node_id="legacy-node", agent_id="old")
    item = Value(number_value=0).SerializeToString()
    # Built from its encoding: Struct.update takes seconds for 1.6 million values.
    numbers = ListValue.FromString((bytes([0x0A, len(item)]) + item) * 1_600_000)
    event.action.arguments.fields["xs"].list_value.CopyFrom(numbers)
    return event


async def test_an_event_the_graph_can_never_take_is_set_aside_and_shipping_goes_on(
    tmp_path: Path, upstream: DemoUpstream
) -> None:
    # A journal left by an older proxy, holding an event over gRPC's 16 MiB limit.
    record = _oversized_event().SerializeToString()
    assert len(record) > 16 << 20
    journal = Journal.open(tmp_path / "journal")
    journal.append(record)
    await journal.close()

    app = inprocess.app_config(upstream.url, POLICY)
    async with inprocess.stack(tmp_path, app) as running:
        client = Client(tmp_path, running)
        ordinary = await client.call("add", _body("add", {"a": 1, "b": 2}), "wf-after")
        assert ordinary.json()["result"]["structuredContent"] == {"result": 3}
        await client.nodes("wf-after", {ordinary.headers["bastion-node-id"]})
        metrics = await client.metrics()

    [line] = (tmp_path / "journal" / "dead-letter.jsonl").read_text().splitlines()
    dead = json.loads(line)
    assert (dead["event_id"], dead["reason"], dead["size"]) == ("legacy-1", "too_large", len(record))
    assert dead["sha256"] == hashlib.sha256(record).hexdigest()
    assert len(line) < 2 * MAX_EVENT_BYTES
    kept = graph_pb2.Event.FromString(base64.b64decode(dead["event"]))
    assert (kept.workflow_id, kept.node_id, kept.arguments_truncated) == ("wf-legacy", "legacy-node", True)
    assert 'bastion_journal_dead_letters_total{reason="too_large"} 1.0' in metrics
    assert "bastion_journal_lag_seconds" in metrics
