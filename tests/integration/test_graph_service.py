"""The graph service as it runs: real gRPC and REST servers on port 0, real clients.
REST reads carry an auditor token unless a test is about auth."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from fixtures.graphapi import (
    DUPLICATE_HOST_IDS,
    DUPLICATE_HOSTS,
    OPEN_PATHS,
    UI_PATHS,
    app_routes,
    auditor_token,
    bearer,
    callers,
    guarded_routes,
    open_path,
    raw_get,
    statuses,
)
from fixtures.graphstores import BACKENDS, wipe_neo4j
from fixtures.inprocess import ANY, serving
from fixtures.neo4j import Neo4jServer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import SecretStr

from bastion import ConfigError, StoreError
from bastion._appconfig import AppConfig, AuthConfig
from bastion._hosts import HostCheck
from bastion._identity import TokenVerifier, ensure_dev_key, issue_token, load_public_keys
from bastion._rpc import auth_metadata, check_health, start_grpc_server
from bastion._web import start_web_server
from bastion.graph import GraphServicer, GraphSettings, SqliteGraphStore, create_app, serve
from bastion.graph import _grpc as graph_grpc
from bastion.graph._checkpoints import read
from bastion.policy import PolicySettings
from bastion.policy import serve as policy_serve
from bastion.v1 import graph_pb2, graph_pb2_grpc, policy_pb2, verifier_pb2

_TOKEN = "graph-test-token"
_T0_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z

_NODE_KEYS = {
    "node_id",
    "result",
    "event_id",
    "workflow_id",
    "session_id",
    "node_type",
    "agent_id",
    "tenant",
    "action",
    "decision",
    "verifier",
    "verifier_fallback",
    "outcome",
    "violation_id",
    "block_code",
    "block_reason",
    "started_at",
    "decided_at",
    "parent_ids",
    "payload_digest",
    "payload_expired",
}
_VIOLATION_KEYS = {
    "violation_id",
    "workflow_id",
    "node_id",
    "event_id",
    "agent_id",
    "rule_id",
    "reason",
    "deviation_score",
    "threshold",
    "policy_name",
    "policy_version",
    "outcome",
    "timestamp",
    "server",
    "tool",
}
_SUMMARY_KEYS = {"workflow_id", "first_seen", "last_seen", "node_count", "violation_count", "agents"}


@dataclass(frozen=True)
class _Graph:
    grpc_addr: str
    http_addr: str
    http: httpx.AsyncClient  # sends an auditor token
    home: Path


@contextlib.asynccontextmanager
async def _running(
    home: Path, graph_url: str = "", app: AppConfig | None = None, checkpoint_every: int = 1000, retention_days: int = 0
) -> AsyncIterator[_Graph]:
    """The graph service in this event loop, stopped (gracefully) on exit, with the policy
    service it learns revocations from (without them its REST refuses every token)."""
    policy_settings = PolicySettings(
        home=home, policy_grpc_addr=ANY, policy_addr=ANY, graph_grpc_addr="127.0.0.1:9", service_token=SecretStr(_TOKEN)
    )
    async with serving(policy_serve, policy_settings, AppConfig()) as policy:
        settings = GraphSettings(
            home=home,
            graph_addr="127.0.0.1:0",
            graph_grpc_addr="127.0.0.1:0",
            graph_url=graph_url,
            service_token=SecretStr(_TOKEN),
            audit_checkpoint_every=checkpoint_every,
            payload_retention_days=retention_days,
            policy_grpc_addr=policy["grpc"],
        )
        addresses: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
        stop = asyncio.Event()
        task = asyncio.create_task(serve(settings, app or AppConfig(), addresses.set_result, stop))
        started: set[asyncio.Future[Any]] = {addresses, task}
        await asyncio.wait(started, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # startup failed: raise why
        try:
            http_addr = addresses.result()["http"]
            reader = bearer(auditor_token(home))
            # Generous: a 5,000-node read from Neo4j takes seconds on a loaded 2-core machine.
            async with httpx.AsyncClient(base_url=f"http://{http_addr}", headers=reader, timeout=60) as http:
                yield _Graph(grpc_addr=addresses.result()["grpc"], http_addr=http_addr, http=http, home=home)
        finally:
            stop.set()
            await task


@pytest.fixture(params=BACKENDS)
async def graph(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[_Graph]:
    """The service on each backend: SQLite under tmp_path, or the session's Neo4j emptied."""
    async with _running(tmp_path, graph_url=_graph_url(request, request.param)) as running:
        yield running


def _graph_url(request: pytest.FixtureRequest, backend: str) -> str:
    if backend == "sqlite":
        return ""
    server: Neo4jServer = request.getfixturevalue("neo4j_server")
    wipe_neo4j(server.url)
    return server.url


@pytest.fixture
async def stub(graph: _Graph) -> AsyncIterator[graph_pb2_grpc.GraphServiceAsyncStub]:
    async with grpc.aio.insecure_channel(graph.grpc_addr) as channel:
        yield graph_pb2_grpc.GraphServiceStub(channel)


def _event(
    event_id: str,
    *,
    workflow_id: str = "wf-1",
    parents: Sequence[str] = (),
    second: int = 0,
    outcome: graph_pb2.Outcome.ValueType = graph_pb2.FORWARDED,
) -> graph_pb2.Event:
    event = graph_pb2.Event(
        event_id=event_id,
        workflow_id=workflow_id,
        node_id=f"node-{event_id}",
        parent_ids=parents,
        node_type=graph_pb2.ACTION,
        agent_id="billing-bot",
        tenant="acme",
        session_id="session-1",
        action=policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server="mail", tool="send", method="tools/call"),
        outcome=outcome,
        payload_digest=f"sha256:{event_id}",
    )
    event.started_at.FromNanoseconds(_T0_NS + second * 10**9)
    return event


def _blocked(event_id: str, *, parents: Sequence[str] = (), second: int = 0) -> graph_pb2.Event:
    event = _event(event_id, parents=parents, second=second, outcome=graph_pb2.BLOCKED)
    event.action.arguments.update({"to": "attacker@example.com", "attachments": ["q3.pdf"]})
    event.decision.CopyFrom(
        policy_pb2.Decision(
            effect=policy_pb2.DENY,
            rule_id="no-external-mail",
            reason="recipient outside the tenant",
            policy_name="mail",
            policy_version=3,
            bundle_digest="sha256:bundle",
        )
    )
    event.verifier.CopyFrom(
        verifier_pb2.ScoreResponse(
            deviation_score=0.92,
            threshold=0.8,
            verdict=verifier_pb2.BLOCK,
            reasons=["novel recipient"],
            drift_origin_node_id="node-e1",
            scorer="reference/1",
        )
    )
    event.decided_at.FromNanoseconds(_T0_NS + second * 10**9 + 250_000_000)
    event.violation_id = f"violation-{event_id}"
    event.block_code = "no-external-mail"
    event.block_reason = "recipient outside the tenant"
    return event


async def _ingest(
    stub: graph_pb2_grpc.GraphServiceAsyncStub,
    events: Sequence[graph_pb2.Event],
    token: str | None = _TOKEN,
    *,
    rpc: str = "Ingest",
) -> graph_pb2.IngestAck:
    """Through the per-event stream (`Ingest`) or in one message (`IngestBatch`, as the proxy ships)."""
    metadata = auth_metadata(token) if token is not None else ()
    if rpc == "IngestBatch":
        return await stub.IngestBatch(graph_pb2.EventBatch(events=events), metadata=metadata, timeout=10)
    return await stub.Ingest(iter(events), metadata=metadata, timeout=10)


_RPCS = pytest.mark.parametrize("rpc", ["Ingest", "IngestBatch"])


@_RPCS
async def test_ingested_events_are_acknowledged_and_served_over_rest(
    graph: _Graph, stub: graph_pb2_grpc.GraphServiceAsyncStub, rpc: str
) -> None:
    events = [_event("e1", second=1), _blocked("e2", parents=["node-e1"], second=2)]

    first = await _ingest(stub, events, rpc=rpc)
    redelivered = await _ingest(stub, events, rpc=rpc)

    assert (first.accepted, first.duplicates) == (2, 0)
    assert (redelivered.accepted, redelivered.duplicates) == (0, 2)
    listing = (await graph.http.get("/graphs")).json()
    assert listing["next_cursor"] is None
    assert listing["items"] == [
        {
            "workflow_id": "wf-1",
            "first_seen": "2026-01-01T00:00:01Z",
            "last_seen": "2026-01-01T00:00:02Z",
            "node_count": 2,
            "violation_count": 1,
            "agents": ["billing-bot"],
        }
    ]


async def test_workflow_graph_has_the_node_and_edge_shapes_clients_rely_on(
    graph: _Graph, stub: graph_pb2_grpc.GraphServiceAsyncStub
) -> None:
    await _ingest(stub, [_blocked("e2", parents=["node-e1"], second=2), _event("e1", second=1)])

    response = await graph.http.get("/graphs/wf-1")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == _SUMMARY_KEYS | {"nodes", "edges", "truncated"}
    assert body["truncated"] is False
    assert [node["node_id"] for node in body["nodes"]] == ["node-e1", "node-e2"]
    assert body["edges"] == [{"source": "node-e2", "target": "node-e1", "type": "CAUSED_BY", "reason": ""}]
    forwarded, blocked = body["nodes"]
    assert set(forwarded) == set(blocked) == _NODE_KEYS
    assert (forwarded["decision"], forwarded["verifier"], forwarded["decided_at"]) == (None, None, None)
    assert blocked == {
        "node_id": "node-e2",
        "event_id": "e2",
        "workflow_id": "wf-1",
        "session_id": "session-1",
        "node_type": "ACTION",
        "agent_id": "billing-bot",
        "tenant": "acme",
        "action": {
            "kind": "TOOL_CALL",
            "server": "mail",
            "tool": "send",
            "method": "tools/call",
            "arguments": {"to": "attacker@example.com", "attachments": ["q3.pdf"]},
            "arguments_truncated": False,
        },
        "decision": {
            "effect": "DENY",
            "rule_id": "no-external-mail",
            "reason": "recipient outside the tenant",
            "policy_name": "mail",
            "policy_version": 3,
            "bundle_digest": "sha256:bundle",
        },
        "verifier": {
            "deviation_score": 0.92,
            "threshold": 0.8,
            "verdict": "BLOCK",
            "reasons": ["novel recipient"],
            "drift_origin_node_id": "node-e1",
            "scorer": "reference/1",
        },
        "verifier_fallback": False,
        "outcome": "BLOCKED",
        "violation_id": "violation-e2",
        "block_code": "no-external-mail",
        "block_reason": "recipient outside the tenant",
        "started_at": "2026-01-01T00:00:02Z",
        "decided_at": "2026-01-01T00:00:02.250000Z",
        "parent_ids": ["node-e1"],
        "payload_digest": "sha256:e2",
        "result": None,
        "payload_expired": False,
    }
    nodes = (await graph.http.get("/graphs/wf-1/nodes")).json()
    assert nodes == {"workflow_id": "wf-1", "items": body["nodes"], "next_cursor": None}


async def test_violations_are_listed_newest_first_filtered_and_paged(
    graph: _Graph, stub: graph_pb2_grpc.GraphServiceAsyncStub
) -> None:
    await _ingest(stub, [_event("ok", second=0), *(_blocked(f"b{i}", second=i) for i in range(1, 4))])
    await _ingest(stub, [_event("other", workflow_id="wf-2", second=9, outcome=graph_pb2.REJECTED)])

    first = (await graph.http.get("/audit/violations", params={"workflow_id": "wf-1", "limit": 2})).json()
    second = (
        await graph.http.get("/audit/violations", params={"workflow_id": "wf-1", "cursor": first["next_cursor"]})
    ).json()
    everything = (await graph.http.get("/audit/violations")).json()
    nobody = (await graph.http.get("/audit/violations", params={"agent_id": "someone-else"})).json()

    assert [v["event_id"] for v in first["items"]] == ["b3", "b2"]
    assert [v["event_id"] for v in second["items"]] == ["b1"]
    assert second["next_cursor"] is None
    assert [v["event_id"] for v in everything["items"]] == ["other", "b3", "b2", "b1"]
    assert nobody == {"items": [], "next_cursor": None}
    assert first["items"][0] == {
        "violation_id": "violation-b3",
        "workflow_id": "wf-1",
        "node_id": "node-b3",
        "event_id": "b3",
        "agent_id": "billing-bot",
        "rule_id": "no-external-mail",
        "reason": "recipient outside the tenant",
        "deviation_score": 0.92,
        "threshold": 0.8,
        "policy_name": "mail",
        "policy_version": 3,
        "outcome": "BLOCKED",
        "timestamp": "2026-01-01T00:00:03Z",
        "server": "mail",
        "tool": "send",
    }
    rejected = everything["items"][0]
    assert set(rejected) == _VIOLATION_KEYS
    assert (rejected["outcome"], rejected["policy_version"], rejected["deviation_score"]) == ("REJECTED", None, None)


async def test_bad_paging_parameters_are_client_errors(graph: _Graph) -> None:
    bad_cursor = await graph.http.get("/audit/violations", params={"cursor": "not-a-cursor"})
    too_large = await graph.http.get("/graphs", params={"limit": 501})

    assert bad_cursor.status_code == 400
    assert bad_cursor.json()["error"]["code"] == "bastion.protocol"
    assert "invalid cursor" in bad_cursor.json()["error"]["message"]
    assert too_large.status_code == 422
    assert too_large.json()["error"]["code"] == "bastion.invalid_request"


async def test_workflow_over_the_graph_cap_is_truncated_and_read_in_full_through_node_pages(
    graph: _Graph, stub: graph_pb2_grpc.GraphServiceAsyncStub
) -> None:
    events = [_event(f"e{i:04}", second=i, parents=[f"node-e{i - 1:04}"] if i else []) for i in range(5001)]
    # In streams of 500 (the shipper sends at most 512): one stream of 5001 events
    # could outlast a deadline on a loaded 2-core CI machine.
    for start in range(0, len(events), 500):
        ack = await _ingest(stub, events[start : start + 500])
        assert ack.accepted == len(events[start : start + 500])

    whole = (await graph.http.get("/graphs/wf-1")).json()
    first = (await graph.http.get("/graphs/wf-1/nodes", params={"limit": 5000})).json()
    rest = (await graph.http.get("/graphs/wf-1/nodes", params={"cursor": first["next_cursor"]})).json()

    assert (whole["node_count"], len(whole["nodes"]), len(whole["edges"]), whole["truncated"]) == (
        5001,
        5000,
        4999,
        True,
    )
    assert whole["nodes"][-1]["event_id"] == "e4999"
    assert {edge["source"] for edge in whole["edges"]} <= {node["node_id"] for node in whole["nodes"]}
    assert first["items"] == whole["nodes"]
    assert ([node["event_id"] for node in rest["items"]], rest["next_cursor"]) == (["e5000"], None)


@pytest.mark.parametrize("path", ["/graphs/wf-missing", "/graphs/wf-missing/nodes"])
async def test_unknown_workflow_is_404_in_the_shared_error_body(graph: _Graph, path: str) -> None:
    response = await graph.http.get(path)

    assert response.status_code == 404
    assert response.json() == {"error": {"code": "bastion.not_found", "message": "workflow 'wf-missing' not found"}}


@_RPCS
@pytest.mark.parametrize("token", [None, "wrong-token"])
async def test_ingest_without_the_service_token_is_unauthenticated(
    graph: _Graph, stub: graph_pb2_grpc.GraphServiceAsyncStub, token: str | None, rpc: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _ingest(stub, [_event("e1")], token=token, rpc=rpc)

    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (await graph.http.get("/graphs")).json()["items"] == []


@_RPCS
@pytest.mark.parametrize("field", ["event_id", "workflow_id", "node_id"])
async def test_event_without_a_required_id_is_invalid_and_nothing_is_stored(
    graph: _Graph, stub: graph_pb2_grpc.GraphServiceAsyncStub, field: str, rpc: str
) -> None:
    broken = _event("e2", second=2)
    broken.ClearField(field)  # type: ignore[arg-type]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _ingest(stub, [_event("e1", second=1), broken], rpc=rpc)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"event #1 (event_id '{broken.event_id}'): {field} is empty" in (caught.value.details() or "")
    assert (await graph.http.get("/graphs")).json()["items"] == []


def _at(event: graph_pb2.Event, field: str, seconds: int, nanos: int = 0) -> graph_pb2.Event:
    holder = event.result if field.startswith("result.") else event
    stamp = getattr(holder, field.removeprefix("result."))
    stamp.seconds, stamp.nanos = seconds, nanos
    return event


@_RPCS
@pytest.mark.parametrize(
    ("field", "seconds", "nanos"),
    [
        ("started_at", 10**12, 0),  # past what protobuf's Timestamp holds
        ("started_at", 253402300799, 0),  # 9999-12-31: past what a nanosecond int64 holds
        ("decided_at", -62135596801, 0),
        ("started_at", 1, -5),
        ("result.completed_at", 1, 2 * 10**9),
    ],
)
async def test_an_event_with_a_time_no_store_holds_is_invalid_not_unknown(
    graph: _Graph, stub: graph_pb2_grpc.GraphServiceAsyncStub, rpc: str, field: str, seconds: int, nanos: int
) -> None:
    """Was UNKNOWN (an OverflowError in SQLite, a ValueError in protobuf), which the proxy's
    shipper retries for ever, stalling every agent's journal; INVALID_ARGUMENT it sets aside."""
    broken = _at(_event("e2", second=2), field, seconds, nanos)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _ingest(stub, [_event("e1", second=1), broken], rpc=rpc)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{field} is not a valid time between 1970 and 2262" in (caught.value.details() or "")
    assert (await graph.http.get("/graphs")).json()["items"] == []


@_RPCS
async def test_a_result_event_under_its_actions_event_id_is_invalid_and_ingest_goes_on(
    graph: _Graph, stub: graph_pb2_grpc.GraphServiceAsyncStub, rpc: str
) -> None:
    """Was UNAVAILABLE (the audit chain's unique event_id, a store error), which the proxy's
    shipper retries for ever: one such event stalled every agent's journal."""
    await _ingest(stub, [_blocked("e1", second=1)], rpc=rpc)
    stray = graph_pb2.Event(event_id="e1", workflow_id="wf-1", node_id="node-e1", tenant="acme")
    stray.result.outcome = graph_pb2.COMPLETED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _ingest(stub, [stray], rpc=rpc)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "reuses the event_id of another event" in (caught.value.details() or "")
    assert (await _ingest(stub, [_event("e2", second=2)], rpc=rpc)).accepted == 1


async def test_a_number_json_cannot_hold_in_arguments_leaves_the_workflow_readable(
    graph: _Graph, stub: graph_pb2_grpc.GraphServiceAsyncStub
) -> None:
    """NaN in action.arguments (no proxy sends one; a service-token holder could) made
    every later read of the workflow a 500."""
    odd = _event("e1", second=1)
    odd.action.arguments.update({"amount": float("nan"), "nested": {"rate": float("-inf")}, "to": "a@b.example"})
    await _ingest(stub, [odd])
    for path in ("/graphs/wf-1", "/graphs/wf-1/nodes"):
        response = await graph.http.get(path)
        assert response.status_code == 200, response.text
        assert response.json()["nodes" if path.endswith("wf-1") else "items"][0]["action"]["arguments"] == {
            "amount": "NaN",
            "nested": {"rate": "-Infinity"},
            "to": "a@b.example",
        }


async def test_ingest_call_over_10000_events_is_invalid_and_nothing_is_stored(
    graph: _Graph, stub: graph_pb2_grpc.GraphServiceAsyncStub
) -> None:
    def events() -> Iterator[graph_pb2.Event]:
        for i in range(10_001):
            yield graph_pb2.Event(event_id=f"e{i}", workflow_id="wf-big", node_id=f"n{i}")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Ingest(events(), metadata=auth_metadata(_TOKEN), timeout=30)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "more than 10000 events in one Ingest call" in (caught.value.details() or "")
    assert (await graph.http.get("/graphs/wf-big")).status_code == 404


async def test_an_ingest_call_over_the_byte_bound_is_resource_exhausted_and_nothing_is_stored(
    graph: _Graph, stub: graph_pb2_grpc.GraphServiceAsyncStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An attacker's probe with the service token: 60 events of 10 MB on one open stream
    # grew the graph by 657 MB; only the count was bounded. The bound is lowered here to
    # keep the test small; RESOURCE_EXHAUSTED is what the proxy's shipper splits on.
    monkeypatch.setattr(graph_grpc, "MAX_BYTES_PER_CALL", 1 << 20)

    def events() -> Iterator[graph_pb2.Event]:
        for i in range(5):
            yield graph_pb2.Event(event_id=f"e{i}", workflow_id="wf-heavy", node_id=f"n{i}", block_reason="x" * 300_000)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Ingest(events(), metadata=auth_metadata(_TOKEN), timeout=30)

    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "more than 1 MiB of events in one Ingest call" in (caught.value.details() or "")
    assert (await graph.http.get("/graphs/wf-heavy")).status_code == 404


async def test_ingest_batch_over_10000_events_is_invalid_and_nothing_is_stored(
    graph: _Graph, stub: graph_pb2_grpc.GraphServiceAsyncStub
) -> None:
    events = [graph_pb2.Event(event_id=f"e{i}", workflow_id="wf-big", node_id=f"n{i}") for i in range(10_001)]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.IngestBatch(graph_pb2.EventBatch(events=events), metadata=auth_metadata(_TOKEN), timeout=30)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "more than 10000 events in one IngestBatch" in (caught.value.details() or "")
    assert (await graph.http.get("/graphs/wf-big")).status_code == 404


async def test_an_ingest_batch_that_is_not_an_event_batch_is_refused_and_the_service_goes_on(
    graph: _Graph, stub: graph_pb2_grpc.GraphServiceAsyncStub
) -> None:
    async with grpc.aio.insecure_channel(graph.grpc_addr) as channel:
        raw: Any = channel.unary_unary("/bastion.v1.GraphService/IngestBatch", response_deserializer=None)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await raw(b"\x0a\xff\xff\xff\x0fnot protobuf", metadata=auth_metadata(_TOKEN), timeout=10)
    # Refused before the servicer runs (bastion._rpc_decode), naming the type: INVALID_ARGUMENT,
    # which the proxy's shipper sets aside, where grpc's own UNKNOWN was retried.
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Error parsing message with type 'bastion.v1.EventBatch'" in (caught.value.details() or "")
    assert (await _ingest(stub, [_event("e1", second=1)], rpc="IngestBatch")).accepted == 1


async def test_lineage_walks_back_to_the_origin_and_unknown_nodes_are_not_found(
    stub: graph_pb2_grpc.GraphServiceAsyncStub,
) -> None:
    leaf = _event("e3", parents=["node-e2"], second=3)
    leaf.edges.add(target_node_id="node-e1", type=graph_pb2.INFORMED_BY, reason="'to' came from e1's output")
    await _ingest(stub, [_event("e1", second=1), _event("e2", parents=["node-e1"], second=2), leaf])
    metadata = auth_metadata(_TOKEN)

    path = await stub.Lineage(graph_pb2.LineageRequest(workflow_id="wf-1", node_id="node-e3"), metadata=metadata)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Lineage(graph_pb2.LineageRequest(workflow_id="wf-1", node_id="node-nope"), metadata=metadata)

    assert [(hop.node_id, hop.via, hop.reason, hop.tool) for hop in path.hops] == [
        ("node-e3", graph_pb2.INFORMED_BY, "'to' came from e1's output", "send"),
        ("node-e1", graph_pb2.EDGE_TYPE_UNSPECIFIED, "", "send"),
    ]
    assert {hop.node_type for hop in path.hops} == {graph_pb2.ACTION}
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (graph_pb2.LineageRequest(workflow_id="wf-1"), "node_id is required"),
        (graph_pb2.LineageRequest(node_id="n", max_depth=-1), "max_depth must be between 0"),
        (graph_pb2.LineageRequest(node_id="n", max_depth=100_000), "max_depth must be between 0"),
    ],
)
async def test_lineage_with_a_bad_request_is_invalid_argument(
    stub: graph_pb2_grpc.GraphServiceAsyncStub, request_: graph_pb2.LineageRequest, message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Lineage(request_, metadata=auth_metadata(_TOKEN), timeout=5)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or "")


async def test_ingest_while_the_store_is_unavailable_is_unavailable_so_the_journal_retries(tmp_path: Path) -> None:
    store = await SqliteGraphStore.open(tmp_path / "graph.db")
    await store.close()
    server = await start_grpc_server(
        "127.0.0.1:0",
        token=_TOKEN,
        register=[partial(graph_pb2_grpc.add_GraphServiceServicer_to_server, GraphServicer(store))],
        service_names=["bastion.v1.GraphService"],
    )
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _ingest(graph_pb2_grpc.GraphServiceStub(channel), [_event("e1")])
    finally:
        await server.stop(grace=0)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "is closed" in (caught.value.details() or "")


async def test_health_readiness_docs_and_metrics_are_served(
    graph: _Graph, stub: graph_pb2_grpc.GraphServiceAsyncStub
) -> None:
    await _ingest(stub, [_event("e1"), _event("e1")])

    healthz, readyz = await graph.http.get("/healthz"), await graph.http.get("/readyz")
    docs, openapi = await graph.http.get("/docs"), await graph.http.get("/openapi.json")
    metrics = await graph.http.get("/metrics")

    assert (healthz.json(), readyz.json()) == ({"status": "ok"}, {"status": "ready"})
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    assert {"/graphs", "/graphs/{workflow_id}", "/graphs/{workflow_id}/nodes", "/audit/violations"} <= set(
        openapi.json()["paths"]
    )
    assert 'bastion_graph_ingest_events_total{result="accepted"} 1.0' in metrics.text
    assert 'bastion_graph_ingest_events_total{result="duplicate"} 1.0' in metrics.text


async def test_grpc_health_reports_the_graph_service_serving(graph: _Graph) -> None:
    async with grpc.aio.insecure_channel(graph.grpc_addr) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="bastion.v1.GraphService"), timeout=5
        )

    assert await check_health(graph.grpc_addr)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_restarted_service_serves_what_it_stored_before(tmp_path: Path) -> None:
    async with _running(tmp_path) as first, grpc.aio.insecure_channel(first.grpc_addr) as channel:
        await _ingest(graph_pb2_grpc.GraphServiceStub(channel), [_event("e1"), _blocked("e2", parents=["node-e1"])])
        before = (await first.http.get("/graphs/wf-1")).json()

    async with _running(tmp_path) as second:
        assert (await second.http.get("/graphs/wf-1")).json() == before
    assert (tmp_path / "graph.db").exists()


async def test_restarted_service_on_neo4j_serves_what_it_stored_before(
    tmp_path: Path, neo4j_server: Neo4jServer
) -> None:
    wipe_neo4j(neo4j_server.url)
    async with _running(tmp_path, neo4j_server.url) as first, grpc.aio.insecure_channel(first.grpc_addr) as channel:
        await _ingest(graph_pb2_grpc.GraphServiceStub(channel), [_event("e1"), _blocked("e2", parents=["node-e1"])])
        before = (await first.http.get("/graphs/wf-1")).json()
        chain = (await first.http.get("/audit/verify")).json()

    async with _running(tmp_path, neo4j_server.url) as second:
        assert (await second.http.get("/graphs/wf-1")).json() == before
        assert (await second.http.get("/audit/verify")).json() == chain
    assert not (tmp_path / "graph.db").exists()  # nothing went to SQLite


async def test_the_service_signs_a_checkpoint_every_n_records_with_the_stacks_key(tmp_path: Path) -> None:
    async with _running(tmp_path, checkpoint_every=2) as graph, grpc.aio.insecure_channel(graph.grpc_addr) as channel:
        await _ingest(graph_pb2_grpc.GraphServiceStub(channel), [_blocked(f"e{n}", second=n) for n in range(5)])
        deadline = asyncio.get_running_loop().time() + 10
        while (verified := (await graph.http.get("/audit/verify")).json())["checkpoints"] < 2:
            assert asyncio.get_running_loop().time() < deadline, verified
            await asyncio.sleep(0.05)

    assert verified["ok"] is True
    assert verified["head"]["sequence"] == 5
    store = await SqliteGraphStore.open(tmp_path / "graph.db")
    try:
        marks = await store.checkpoints()
    finally:
        await store.close()
    stack_key = ensure_dev_key(tmp_path).public_key()
    assert [read(mark.token, [stack_key]).sequence for mark in marks] == [2, 4]


async def test_a_service_started_with_payload_retention_trims_old_nodes(tmp_path: Path) -> None:
    async with _running(tmp_path) as first, grpc.aio.insecure_channel(first.grpc_addr) as channel:
        await _ingest(graph_pb2_grpc.GraphServiceStub(channel), [_blocked("e1")])  # sent in 2026-01
        (before,) = (await first.http.get("/graphs/wf-1/nodes")).json()["items"]

    async with _running(tmp_path, retention_days=30) as second:
        deadline = asyncio.get_running_loop().time() + 10
        while not (node := (await second.http.get("/graphs/wf-1/nodes")).json()["items"][0])["payload_expired"]:
            assert asyncio.get_running_loop().time() < deadline, node
            await asyncio.sleep(0.05)

    assert before["action"]["arguments"]["to"] == "attacker@example.com"
    assert node["action"]["arguments"] == {}
    assert (node["payload_digest"], node["decision"]) == (before["payload_digest"], before["decision"])


async def test_unreachable_neo4j_stops_startup_with_a_store_error_without_the_password(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(StoreError, match="graph store open failed") as refused:
        async with _running(tmp_path, graph_url=f"neo4j://bastion:hunter2@127.0.0.1:{port}"):
            pass
    assert "hunter2" not in str(refused.value)


async def test_a_graph_url_of_another_kind_stops_startup_with_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected empty, sqlite:///path, or neo4j://"):
        async with _running(tmp_path, graph_url="postgres://db/graph"):
            pass


# --- who may read, and from which Host ----------------------------------------------------------

_EVERY_READ_ANSWERED = {
    "anonymous": 401,
    "garbage": 401,
    "expired": 401,
    "foreign": 401,
    "agent": 403,
    "auditor": 200,
    "operator": 200,
    "admin": 200,
}


@dataclass(frozen=True)
class _Served:
    app: Any
    url: str


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[_Served]:
    """create_app's app itself on a real server (port 0), over a store holding workflow wf-1."""
    store = await SqliteGraphStore.open(tmp_path / "graph.db")
    await store.ingest([_blocked("e1")])
    verifier = TokenVerifier(AuthConfig(), load_public_keys(AuthConfig(), tmp_path))
    app = create_app(store, verifier=verifier, hosts=HostCheck((), "127.0.0.1"))
    server = await start_web_server(app, "127.0.0.1:0")
    try:
        yield _Served(app=app, url=f"http://{server.address}")
    finally:
        await server.stop()
        await store.close()


async def test_every_graph_route_but_the_open_ones_needs_an_auditor_or_operator_token(
    served: _Served, tmp_path: Path
) -> None:
    routes = guarded_routes(served.app, {"workflow_id": "wf-1", "node_id": "node-e1"})
    who = callers(tmp_path, tmp_path / "elsewhere")

    assert {method for method, _ in routes} == {"GET"}, "the graph REST API is read-only"
    assert {"/graphs", "/graphs/wf-1", "/graphs/wf-1/nodes", "/audit/violations"} <= {path for _, path in routes}
    for method, path in routes:
        assert await statuses(served.url, method, path, who) == _EVERY_READ_ANSWERED, path


async def test_the_open_graph_routes_answer_without_a_token(served: _Served) -> None:
    open_paths = OPEN_PATHS | UI_PATHS
    open_routes = [(method, path) for method, path in app_routes(served.app) if path in open_paths]

    async with httpx.AsyncClient(base_url=served.url) as http:
        answered = {path: (await http.request(method, open_path(path))).status_code for method, path in open_routes}

    assert answered == dict.fromkeys(open_paths, 200)


async def test_an_unauthenticated_read_is_401_with_a_bearer_challenge(graph: _Graph) -> None:
    async with httpx.AsyncClient(base_url=f"http://{graph.http_addr}") as http:
        response = await http.get("/audit/violations")

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "bastion.auth.unauthenticated"


async def test_a_foreign_host_is_403_even_with_an_operator_token(graph: _Graph) -> None:
    operator = bearer(issue_token(ensure_dev_key(graph.home), subject="ops", roles=("operator",)))

    refused = await graph.http.get("/graphs", headers={**operator, "Host": "evil.example.com"})
    foreign_origin = await graph.http.get("/graphs", headers={**operator, "Origin": "http://evil.example.com"})
    probe = await graph.http.get("/healthz", headers={"Host": "evil.example.com"})

    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "bastion.host_not_allowed")
    assert (foreign_origin.status_code, foreign_origin.json()["error"]["code"]) == (403, "bastion.host_not_allowed")
    assert probe.status_code == 200


@pytest.mark.parametrize("headers", DUPLICATE_HOSTS, ids=DUPLICATE_HOST_IDS)
async def test_duplicate_host_or_origin_headers_are_403(graph: _Graph, headers: list[tuple[str, str]]) -> None:
    token = issue_token(ensure_dev_key(graph.home), subject="ops", roles=("operator",))

    status, body = await raw_get(graph.http_addr, "/graphs", [*headers, ("Authorization", f"Bearer {token}")])
    single_status, _ = await raw_get(graph.http_addr, "/graphs", [headers[0], ("Authorization", f"Bearer {token}")])

    assert (status, body["error"]["code"]) == (403, "bastion.host_not_allowed")
    assert body["error"]["message"].startswith("more than one")
    assert single_status == (200 if headers[0][1] == "127.0.0.1" else 403)


async def test_allowed_hosts_from_bastion_yaml_replace_the_loopback_default(tmp_path: Path) -> None:
    async with _running(tmp_path, app=AppConfig(allowed_hosts=("graph.internal:*",))) as graph:
        named = await graph.http.get("/graphs", headers={"Host": "graph.internal:8080"})
        loopback = await graph.http.get("/graphs")

    assert named.status_code == 200
    assert (loopback.status_code, loopback.json()["error"]["code"]) == (403, "bastion.host_not_allowed")
