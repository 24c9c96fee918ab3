"""Every Bastion gRPC server: health and reflection open, everything else behind the token."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import empty_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from bastion import ConfigError
from bastion._rpc import GrpcServer, auth_metadata, check_health, open_channel, start_grpc_server
from bastion.v1 import verifier_pb2, verifier_pb2_grpc
from bastion.verifier import ReferenceScorer, ScorerConfig, VerifierServicer

TOKEN = "s3cret-token"


@pytest.fixture
async def server() -> AsyncIterator[GrpcServer]:
    servicer = VerifierServicer(ReferenceScorer(ScorerConfig()))
    running = await start_grpc_server(
        "127.0.0.1:0",
        token=TOKEN,
        register=[lambda s: verifier_pb2_grpc.add_VerifierServicer_to_server(servicer, s)],
        service_names=["bastion.v1.Verifier"],
    )
    yield running
    await running.stop(0)


async def test_health_is_open_and_reports_serving(server: GrpcServer) -> None:
    assert await check_health(server.address)
    async with open_channel(server.address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="bastion.v1.Verifier"), timeout=2
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_service_without_a_token(server: GrpcServer) -> None:
    async with open_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=2
        )
        names = {s.name async for r in responses for s in r.list_services_response.service}
    assert {"bastion.v1.Verifier", "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)])
async def test_calls_without_the_exact_service_token_are_unauthenticated(
    server: GrpcServer, metadata: tuple[tuple[str, str], ...]
) -> None:
    async with open_channel(server.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await verifier_pb2_grpc.VerifierStub(channel).Score(
                verifier_pb2.ScoreRequest(), timeout=2, metadata=metadata
            )
    assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_calls_with_the_token_reach_the_servicer(server: GrpcServer) -> None:
    async with open_channel(server.address) as channel:
        info = await verifier_pb2_grpc.VerifierStub(channel).Info(
            empty_pb2.Empty(), timeout=2, metadata=auth_metadata(TOKEN)
        )
    assert info.name == "reference"


async def test_a_port_already_in_use_is_a_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match="cannot listen"):
            await start_grpc_server(f"127.0.0.1:{port}", token=TOKEN, register=[], service_names=[])
