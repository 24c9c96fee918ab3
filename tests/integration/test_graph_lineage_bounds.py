"""Ids the graph's gRPC service is handed back in its answers: longer than any stored id
is INVALID_ARGUMENT, and no status echoes more than a hundred characters of one. A 100 KB
id echoed in NOT_FOUND's details overflowed the trailer: the client got RESOURCE_EXHAUSTED."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from fixtures.graph_grpc import graph_grpc

from bastion._rpc import auth_metadata
from bastion.graph._events import MAX_ID_LENGTH
from bastion.v1 import graph_pb2, graph_pb2_grpc

TOKEN = "lineage-bounds-token"
_HUGE = "x" * 100_000


@pytest.fixture
async def stub(tmp_path: Path) -> AsyncIterator[graph_pb2_grpc.GraphServiceAsyncStub]:
    async with graph_grpc(tmp_path, TOKEN) as server, grpc.aio.insecure_channel(server.address) as channel:
        yield graph_pb2_grpc.GraphServiceStub(channel)


async def _lineage_refusal(
    stub: graph_pb2_grpc.GraphServiceAsyncStub, request: graph_pb2.LineageRequest
) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Lineage(request, metadata=auth_metadata(TOKEN), timeout=10)
    return caught.value.code(), caught.value.details() or ""


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (graph_pb2.LineageRequest(workflow_id="wf-1", node_id=_HUGE), "node_id"),
        (graph_pb2.LineageRequest(workflow_id=_HUGE, node_id="node-1"), "workflow_id"),
        (graph_pb2.LineageRequest(workflow_id="wf-1", node_id="x" * (MAX_ID_LENGTH + 1)), "node_id"),
    ],
    ids=["huge node_id", "huge workflow_id", "node_id one over"],
)
async def test_lineage_of_an_id_longer_than_any_stored_is_invalid_and_not_echoed(
    stub: graph_pb2_grpc.GraphServiceAsyncStub, request_: graph_pb2.LineageRequest, field: str
) -> None:
    code, details = await _lineage_refusal(stub, request_)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{field} is longer than {MAX_ID_LENGTH} characters" in details
    assert "x" * 100 not in details


async def test_lineage_of_an_unknown_id_of_the_longest_length_echoes_only_its_start(
    stub: graph_pb2_grpc.GraphServiceAsyncStub,
) -> None:
    node_id, workflow_id = "n" * MAX_ID_LENGTH, "w" * MAX_ID_LENGTH
    code, details = await _lineage_refusal(stub, graph_pb2.LineageRequest(workflow_id=workflow_id, node_id=node_id))
    assert code == grpc.StatusCode.NOT_FOUND
    assert f"node '{'n' * 100}'... ({MAX_ID_LENGTH} characters) not found" in details
    assert f"in workflow '{'w' * 100}'... ({MAX_ID_LENGTH} characters)" in details
    assert "n" * 101 not in details
    assert "w" * 101 not in details


async def test_lineage_of_an_unknown_short_id_names_it_whole(stub: graph_pb2_grpc.GraphServiceAsyncStub) -> None:
    code, details = await _lineage_refusal(stub, graph_pb2.LineageRequest(workflow_id="wf-1", node_id="node-nope"))
    assert (code, details) == (grpc.StatusCode.NOT_FOUND, "node 'node-nope' not found in workflow 'wf-1'")


async def test_an_event_with_a_huge_event_id_is_invalid_and_not_echoed(
    stub: graph_pb2_grpc.GraphServiceAsyncStub,
) -> None:
    event = graph_pb2.Event(event_id=_HUGE, workflow_id="wf-1", node_id="node-1")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.IngestBatch(graph_pb2.EventBatch(events=[event]), metadata=auth_metadata(TOKEN), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = caught.value.details() or ""
    assert f"event #0 (event_id '{'x' * 100}'... (100000 characters)): event_id is longer than" in details
    assert "x" * 101 not in details
