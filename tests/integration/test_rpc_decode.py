"""Requests that do not deserialize, on real servers from `bastion._rpc.start_grpc_server`:
INVALID_ARGUMENT naming the request type, on every streaming shape, and the server goes on.
grpc's own answer was UNKNOWN ("Unexpected <class 'DecodeError'>"), which callers retry."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
from fixtures import inprocess
from fixtures.graph_grpc import graph_grpc
from fixtures.stack import ROOT
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from bastion._identity import ensure_service_token
from bastion._rpc import GrpcServer, auth_metadata, start_grpc_server
from bastion.v1 import graph_pb2, graph_pb2_grpc, policy_pb2, verifier_pb2, verifier_pb2_grpc
from bastion.verifier import ReferenceScorer, ScorerConfig, VerifierServicer

TOKEN = "decode-test-token"
_METADATA = auth_metadata(TOKEN)
_MARK = "BAD!"  # a string field's value, replaced by bytes that are not UTF-8
_ACTION = policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server="demo", tool="add", method="tools/call")


def _corrupt(message: Message) -> dict[str, bytes]:
    """Ways a client's bytes can fail to be `message`'s type (it holds a string _MARK)."""
    good = message.SerializeToString()
    assert _MARK.encode() in good
    return {
        "garbage": b"\x0a\xff\xff\xff\x0fnot protobuf",
        "truncated": good[:-2],
        "bad utf-8": good.replace(_MARK.encode(), b"\xff\xfe\xfd\xfc"),
        "bad wire type": b"\x0f\x00",  # field 1, wire type 7: no such type
    }


def _event(event_id: str) -> graph_pb2.Event:
    return graph_pb2.Event(event_id=event_id, workflow_id="wf-1", node_id=f"node-{event_id}")


_CORRUPT_BATCHES = _corrupt(graph_pb2.EventBatch(events=[_event(_MARK)]))
_CORRUPT_LINEAGE = _corrupt(graph_pb2.LineageRequest(workflow_id="wf-1", node_id=_MARK))
_CORRUPT_EVENTS = _corrupt(_event(_MARK))
_CORRUPT_SCORES = _corrupt(verifier_pb2.ScoreBatchRequest(requests=[verifier_pb2.ScoreRequest(node_id=_MARK)]))
_CORRUPT_DECISIONS = _corrupt(
    policy_pb2.DecideBatchRequest(requests=[policy_pb2.DecideRequest(action=policy_pb2.Action(tool=_MARK))])
)


@pytest.fixture
async def graph(tmp_path: Path) -> AsyncIterator[GrpcServer]:
    async with graph_grpc(tmp_path, TOKEN) as server:
        yield server


@pytest.fixture
async def verifier() -> AsyncIterator[GrpcServer]:
    servicer = VerifierServicer(ReferenceScorer(ScorerConfig()))
    server = await start_grpc_server(
        "127.0.0.1:0",
        token=TOKEN,
        register=[partial(verifier_pb2_grpc.add_VerifierServicer_to_server, servicer)],
        service_names=["bastion.v1.Verifier"],
    )
    yield server
    await server.stop(0)


def _refusal(caught: pytest.ExceptionInfo[grpc.aio.AioRpcError]) -> tuple[grpc.StatusCode, str]:
    return caught.value.code(), caught.value.details() or ""


async def _ingest(channel: grpc.aio.Channel, *events: graph_pb2.Event) -> graph_pb2.IngestAck:
    stub = graph_pb2_grpc.GraphServiceStub(channel)
    return await stub.IngestBatch(graph_pb2.EventBatch(events=events), metadata=_METADATA, timeout=10)


@pytest.mark.parametrize(
    ("method", "type_name", "data"),
    [
        *(("IngestBatch", "bastion.v1.EventBatch", data) for data in _CORRUPT_BATCHES.values()),
        *(("Lineage", "bastion.v1.LineageRequest", data) for data in _CORRUPT_LINEAGE.values()),
    ],
    ids=[*(f"IngestBatch-{case}" for case in _CORRUPT_BATCHES), *(f"Lineage-{case}" for case in _CORRUPT_LINEAGE)],
)
async def test_a_unary_request_that_does_not_decode_is_invalid_and_the_server_goes_on(
    graph: GrpcServer, method: str, type_name: str, data: bytes
) -> None:
    async with grpc.aio.insecure_channel(graph.address) as channel:
        raw: Any = channel.unary_unary(f"/bastion.v1.GraphService/{method}")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await raw(data, metadata=_METADATA, timeout=10)
        code, details = _refusal(caught)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert f"/bastion.v1.GraphService/{method} is not a valid {type_name} message" in details
        assert (await _ingest(channel, _event("e1"))).accepted == 1


@pytest.mark.parametrize("data", _CORRUPT_EVENTS.values(), ids=_CORRUPT_EVENTS.keys())
async def test_an_ingest_stream_with_a_message_that_does_not_decode_is_invalid_and_stores_nothing(
    graph: GrpcServer, data: bytes
) -> None:
    def messages() -> Iterator[bytes]:
        yield _event("e1").SerializeToString()
        yield data

    async with grpc.aio.insecure_channel(graph.address) as channel:
        ingest: Any = channel.stream_unary("/bastion.v1.GraphService/Ingest")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ingest(messages(), metadata=_METADATA, timeout=10)
        code, details = _refusal(caught)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "/bastion.v1.GraphService/Ingest is not a valid bastion.v1.Event message" in details
        # The good event before it was not stored: the call is one transaction.
        assert (await _ingest(channel, _event("e1"))).accepted == 1


async def _bidi_refusal(
    channel: grpc.aio.Channel, method: str, good: Message, bad: bytes, reply: Any, metadata: Any = _METADATA
) -> str:
    """Send a good message and read its answer, then a bad one: the details the stream ends with."""
    call: Any = channel.stream_stream(method, response_deserializer=reply.FromString)(metadata=metadata, timeout=10)
    await call.write(good.SerializeToString())
    assert isinstance(await call.read(), reply)
    await call.write(bad)
    assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
    return str(await call.details())


@pytest.mark.parametrize("data", _CORRUPT_SCORES.values(), ids=_CORRUPT_SCORES.keys())
async def test_a_score_batch_stream_message_that_does_not_decode_ends_the_stream_invalid(
    verifier: GrpcServer, data: bytes
) -> None:
    good = verifier_pb2.ScoreBatchRequest(requests=[verifier_pb2.ScoreRequest(action=_ACTION, node_id="n1")])
    method = "/bastion.v1.Verifier/ScoreBatchStream"
    async with grpc.aio.insecure_channel(verifier.address) as channel:
        for _ in range(2):  # the second stream, on the same channel, is served as the first
            details = await _bidi_refusal(channel, method, good, data, verifier_pb2.ScoreBatchResponse)
            assert f"{method} is not a valid bastion.v1.ScoreBatchRequest message" in details


async def test_a_decide_batch_stream_message_that_does_not_decode_ends_the_stream_invalid(tmp_path: Path) -> None:
    """The policy service as it runs (its serve()), on the proxy's decision stream."""
    app = inprocess.app_config("http://127.0.0.1:1/mcp", ROOT / "examples" / "policies" / "demo.yaml")
    good = policy_pb2.DecideBatchRequest(
        requests=[
            policy_pb2.DecideRequest(
                action=_ACTION,
                ctx=policy_pb2.Context(agent_id="agent-1", workflow_id="wf-1", request_id="r1"),
            )
        ]
    )
    method = "/bastion.v1.PolicyService/DecideBatchStream"
    async with inprocess.policy(tmp_path, app) as policy, grpc.aio.insecure_channel(policy["grpc"]) as channel:
        metadata = auth_metadata(ensure_service_token(tmp_path, None))
        for data in _CORRUPT_DECISIONS.values():
            details = await _bidi_refusal(channel, method, good, data, policy_pb2.DecideBatchResponse, metadata)
            assert f"{method} is not a valid bastion.v1.DecideBatchRequest message" in details


async def test_a_server_streaming_request_that_does_not_decode_is_invalid(verifier: GrpcServer) -> None:
    data = _corrupt(health_pb2.HealthCheckRequest(service=_MARK))["bad utf-8"]
    async with grpc.aio.insecure_channel(verifier.address) as channel:
        watch: Any = channel.unary_stream("/grpc.health.v1.Health/Watch")
        call = watch(data, timeout=10)
        assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "is not a valid grpc.health.v1.HealthCheckRequest message" in await call.details()


async def test_a_request_without_the_token_is_unauthenticated_whether_or_not_it_decodes(graph: GrpcServer) -> None:
    async with grpc.aio.insecure_channel(graph.address) as channel:
        raw: Any = channel.unary_unary("/bastion.v1.GraphService/IngestBatch")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await raw(_CORRUPT_BATCHES["garbage"], timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
