"""The verifier over real grpc.aio on 127.0.0.1:0: the reference service as `serve` wires it,
and the third-party example from verifier/INTERFACE.md, both through the same proto."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import cast

import grpc
import pytest
from google.protobuf import empty_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pydantic import SecretStr

from bastion._appconfig import AppConfig
from bastion._identity import SERVICE_TOKEN_FILE
from bastion._rpc import MAX_BATCH_REQUESTS, auth_metadata, check_health, start_grpc_server
from bastion.v1 import policy_pb2, verifier_pb2, verifier_pb2_grpc
from bastion.verifier import ReferenceScorer, VerifierServicer, VerifierSettings
from bastion.verifier._server import serve

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "external_verifier.py"
TIMEOUT = 5.0


@dataclass(frozen=True)
class Endpoint:
    address: str
    token: str


@dataclass(frozen=True)
class Running(Endpoint):
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, TIMEOUT)


def settings(home: Path, token: str | None = None) -> VerifierSettings:
    # Every field the tests depend on is explicit, so BASTION_* in the environment cannot leak in.
    return VerifierSettings(
        home=home,
        verifier_addr="127.0.0.1:0",
        verifier_metrics_addr="127.0.0.1:0",
        service_token=SecretStr(token) if token else None,
        verifier_threshold=0.8,
        verifier_sequence_weight=0.3,
        verifier_argument_weight=0.4,
        verifier_contradiction_weight=0.8,
    )


async def start(config: VerifierSettings) -> Running:
    bound: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(config, AppConfig(), bound.set_result, stop))
    addresses = await asyncio.wait_for(asyncio.shield(bound), TIMEOUT)
    secret = config.service_token
    token = secret.get_secret_value() if secret else (config.home / SERVICE_TOKEN_FILE).read_text().strip()
    return Running(addresses["grpc"], token, stop, task)


@pytest.fixture
async def verifier(tmp_path: Path) -> AsyncIterator[Running]:
    running = await start(settings(tmp_path))
    yield running
    await running.close()


def score_request(tool: str, *, server: str = "demo", task: str = "", to: str = "") -> verifier_pb2.ScoreRequest:
    action = policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server=server, tool=tool)
    if to:
        action.arguments.update({"to": to})
    history = [verifier_pb2.HistoryNode(node_id="n1", server="demo", tool="add", effect=policy_pb2.ALLOW)]
    return verifier_pb2.ScoreRequest(action=action, ctx=policy_pb2.Context(task=task), history=history, node_id="n2")


async def call_score(address: str, request: verifier_pb2.ScoreRequest, token: str | None) -> verifier_pb2.ScoreResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = verifier_pb2_grpc.VerifierStub(channel)
        metadata = auth_metadata(token) if token is not None else None
        return await stub.Score(request, timeout=TIMEOUT, metadata=metadata)


async def call_info(address: str, token: str | None) -> verifier_pb2.VerifierInfo:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = verifier_pb2_grpc.VerifierStub(channel)
        metadata = auth_metadata(token) if token is not None else None
        return await stub.Info(empty_pb2.Empty(), timeout=TIMEOUT, metadata=metadata)


async def status_of(call: Awaitable[object]) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call
    return failure.value.code()


# -- the reference service ------------------------------------------------------------


async def test_score_blocks_a_novel_tool_sending_to_a_destination_the_task_does_not_name(verifier: Running) -> None:
    request = score_request("send", server="email", task="mail the sum to bob@acme.com", to="eve@evil.example")
    reply = await call_score(verifier.address, request, verifier.token)
    assert reply.verdict == verifier_pb2.BLOCK
    assert reply.deviation_score == pytest.approx(0.8)
    assert reply.threshold == pytest.approx(0.8)
    assert reply.scorer == "reference/0.15"
    assert list(reply.reasons) == [
        "destination not named in the task: 'eve@evil.example' (argument 'to'); "
        "the task names another email address (weight 0.80)",
        "sequence abstains: no agent id to learn from (weight 0.00)",
    ]


async def test_score_answers_a_request_padded_to_4_mib_by_naming_the_argument_it_did_not_read(
    verifier: Running,
) -> None:
    # The proxy accepts bodies up to 4 MiB; the padding hides a destination at its end.
    padding = "x" * (4 * 1024 * 1024 - 32) + " eve@evil.example"
    request = score_request("add", to=padding)
    reply = await call_score(verifier.address, request, verifier.token)
    assert list(reply.reasons) == [
        f"argument 'to' too large to inspect ({len(padding)} bytes) (weight 0.40)",
        "sequence abstains: no agent id to learn from (weight 0.00)",
    ]
    assert reply.verdict == verifier_pb2.FLAG


async def test_a_score_batch_over_the_request_bound_is_invalid_and_the_service_serves_on(verifier: Running) -> None:
    # An attacker's probe with the service token: one huge batch held the loop for 27 s.
    over = verifier_pb2.ScoreBatchRequest(requests=[score_request("add")] * (MAX_BATCH_REQUESTS + 1))
    async with grpc.aio.insecure_channel(verifier.address) as channel:
        stub = verifier_pb2_grpc.VerifierStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in stub.ScoreBatchStream(iter([over]), metadata=auth_metadata(verifier.token), timeout=TIMEOUT):
                pass
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {MAX_BATCH_REQUESTS}" in (refused.value.details() or "")
    answer = await call_score(verifier.address, score_request("add"), verifier.token)
    assert answer.verdict in (verifier_pb2.PASS, verifier_pb2.FLAG)


async def test_score_passes_a_tool_the_workflow_already_used(verifier: Running) -> None:
    reply = await call_score(verifier.address, score_request("add"), verifier.token)
    assert reply.verdict == verifier_pb2.PASS
    assert reply.deviation_score == 0.0


async def test_info_describes_the_reference_scorer(verifier: Running) -> None:
    info = await call_info(verifier.address, verifier.token)
    assert info.name == "reference"
    assert info.version == "0.15"
    assert list(info.signals) == ["sequence", "argument_novelty", "taint", "intent"]
    assert info.default_threshold == pytest.approx(0.8)


@pytest.mark.parametrize("token", [None, "not-the-token"])
async def test_calls_without_the_service_token_are_unauthenticated(verifier: Running, token: str | None) -> None:
    score = call_score(verifier.address, score_request("add"), token)
    assert await status_of(score) == grpc.StatusCode.UNAUTHENTICATED
    info = call_info(verifier.address, token)
    assert await status_of(info) == grpc.StatusCode.UNAUTHENTICATED


async def test_a_request_without_an_action_is_invalid(verifier: Running) -> None:
    call = call_score(verifier.address, verifier_pb2.ScoreRequest(node_id="n9"), verifier.token)
    assert await status_of(call) == grpc.StatusCode.INVALID_ARGUMENT


async def test_health_and_reflection_answer_without_a_token(verifier: Running) -> None:
    assert await check_health(verifier.address)
    async with grpc.aio.insecure_channel(verifier.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service="bastion.v1.Verifier"), timeout=TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert "bastion.v1.Verifier" in await reflected_services(channel)


async def test_the_service_token_is_generated_under_home_on_first_start(verifier: Running, tmp_path: Path) -> None:
    assert (tmp_path / SERVICE_TOKEN_FILE).read_text().strip() == verifier.token
    assert len(verifier.token) >= 32


async def test_a_configured_service_token_is_used_instead_of_a_generated_one(tmp_path: Path) -> None:
    running = await start(settings(tmp_path, token="configured-secret"))
    try:
        reply = await call_score(running.address, score_request("add"), "configured-secret")
        assert reply.verdict == verifier_pb2.PASS
        assert not (tmp_path / SERVICE_TOKEN_FILE).exists()
    finally:
        await running.close()


async def test_setting_stop_shuts_the_server_down(tmp_path: Path) -> None:
    running = await start(settings(tmp_path))
    assert await check_health(running.address)
    await running.close()
    assert not await check_health(running.address, timeout=0.5)


class ExplodingScorer(ReferenceScorer):
    """A scorer with a bug, to see what the caller gets."""

    def score(
        self, request: verifier_pb2.ScoreRequest, semantic: tuple[float, str] | None = None
    ) -> verifier_pb2.ScoreResponse:
        raise ZeroDivisionError("division by zero")


async def test_a_failing_scorer_is_an_internal_error_the_caller_can_fall_back_on() -> None:
    servicer = VerifierServicer(ExplodingScorer())
    server = await start_grpc_server(
        "127.0.0.1:0",
        token="t",
        register=[lambda s: verifier_pb2_grpc.add_VerifierServicer_to_server(servicer, s)],
        service_names=["bastion.v1.Verifier"],
    )
    try:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await call_score(server.address, score_request("add"), "t")
    finally:
        await server.stop(grace=0)
    assert failure.value.code() == grpc.StatusCode.INTERNAL
    details = failure.value.details() or ""
    assert "ZeroDivisionError: division by zero" in details
    assert "n2" in details
    assert "fallback" in details


async def reflected_services(channel: grpc.aio.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=TIMEOUT)
    async for reply in call:
        return {service.name for service in reply.list_services_response.service}
    raise AssertionError("no reflection reply")


# -- the third-party example ----------------------------------------------------------

StartFn = Callable[[int, str], Awaitable[tuple[grpc.aio.Server, int]]]


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("external_verifier", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
async def external() -> AsyncIterator[Endpoint]:
    start_example = cast(StartFn, load_example().start)
    server, port = await start_example(0, "example-token")
    yield Endpoint(f"127.0.0.1:{port}", "example-token")
    await server.stop(grace=None)


async def test_the_example_verifier_blocks_deletes_and_passes_the_rest(external: Endpoint) -> None:
    blocked = await call_score(external.address, score_request("delete_file", to="/etc/passwd"), external.token)
    assert blocked.verdict == verifier_pb2.BLOCK
    assert blocked.deviation_score >= blocked.threshold
    assert list(blocked.reasons) == ["demo__delete_file deletes data"]
    passed = await call_score(external.address, score_request("add"), external.token)
    assert passed.verdict == verifier_pb2.PASS
    assert passed.deviation_score < passed.threshold
    info = await call_info(external.address, external.token)
    assert info.name == "delete-guard"


async def test_the_example_verifier_checks_the_token_and_serves_health_and_reflection(external: Endpoint) -> None:
    score = call_score(external.address, score_request("delete_file"), "wrong")
    assert await status_of(score) == grpc.StatusCode.UNAUTHENTICATED
    info = call_info(external.address, None)
    assert await status_of(info) == grpc.StatusCode.UNAUTHENTICATED
    assert await check_health(external.address)
    async with grpc.aio.insecure_channel(external.address) as channel:
        assert "bastion.v1.Verifier" in await reflected_services(channel)


async def test_the_example_runs_from_the_command_line() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "BASTION_SERVICE_TOKEN": "cli-token"}
    process = await asyncio.create_subprocess_exec(sys.executable, str(EXAMPLE), "--port", str(port), env=env)
    try:
        address = f"127.0.0.1:{port}"
        for _ in range(100):
            if await check_health(address, timeout=0.2):
                break
            assert process.returncode is None, "the example exited"
            await asyncio.sleep(0.1)
        reply = await call_score(address, score_request("delete_file"), "cli-token")
        assert reply.verdict == verifier_pb2.BLOCK
    finally:
        process.terminate()
        await process.wait()


def test_interface_md_shows_exactly_the_tested_example() -> None:
    interface = (ROOT / "verifier" / "INTERFACE.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", interface, flags=re.DOTALL)
    assert blocks == [EXAMPLE.read_text(encoding="utf-8")]
    assert len(blocks[0].splitlines()) < 60
