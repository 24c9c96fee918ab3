"""The proxy's decision client (`Governor`) against real policy and verifier servers:
answers on the shared streams reach the right caller, a broken stream fails closed and
is reopened, and a verifier without ScoreStream is called with Score."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
from fixtures import inprocess
from fixtures.stack import ROOT

from bastion._identity import ensure_service_token
from bastion._rpc import auth_metadata, open_channel, start_grpc_server
from bastion._verdicts import VERIFIER_UNAVAILABLE
from bastion.proxy._breaker import CircuitBreaker
from bastion.proxy._pipeline import POLICY_UNAVAILABLE, Governor
from bastion.proxy._workflows import new_id
from bastion.v1 import policy_pb2, policy_pb2_grpc, verifier_pb2, verifier_pb2_grpc

POLICY = ROOT / "examples" / "policies" / "demo.yaml"


def _governor(home: Path, policy_addr: str, verifier_addr: str) -> Governor:
    return Governor(
        policy_pb2_grpc.PolicyServiceStub(open_channel(policy_addr)),
        verifier_pb2_grpc.VerifierStub(open_channel(verifier_addr)),
        auth_metadata(ensure_service_token(home, None)),
        policy_timeout=inprocess.TEST_DEADLINES["policy_timeout_ms"] / 1000,
        verifier_timeout=inprocess.TEST_DEADLINES["verifier_timeout_ms"] / 1000,
        fallback_allow=False,
    )


async def _serve_verifier(home: Path, servicer: verifier_pb2_grpc.VerifierServicer) -> Any:
    """`servicer` on real gRPC (port 0), with the stack's service token under `home`."""
    return await start_grpc_server(
        "127.0.0.1:0",
        token=ensure_service_token(home, None),
        register=[partial(verifier_pb2_grpc.add_VerifierServicer_to_server, servicer)],
        service_names=["bastion.v1.Verifier"],
    )


def _action(tool: str) -> tuple[policy_pb2.Action, policy_pb2.Context]:
    action = policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server="demo", tool=tool, method="tools/call")
    return action, policy_pb2.Context(agent_id="agent-1", workflow_id="wf", request_id=new_id())


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    app = inprocess.app_config("http://127.0.0.1:1/mcp", POLICY)
    async with inprocess.policy(tmp_path, app) as policy, inprocess.verifier(tmp_path, app) as verifier:
        yield policy["grpc"], verifier["grpc"]


async def test_concurrent_actions_on_the_shared_streams_each_get_their_own_answer(
    tmp_path: Path, services: tuple[str, str]
) -> None:
    governor = _governor(tmp_path, *services)
    tools = ["add", "delete_file", "echo"] * 40
    outcomes = await asyncio.gather(*(governor.decide(*_action(tool), [], new_id()) for tool in tools))
    await governor.close()
    expected = {"add": "allow-add", "delete_file": "no-file-deletes", "echo": "default"}
    for tool, outcome in zip(tools, outcomes, strict=True):
        assert outcome.decision is not None
        assert outcome.decision.rule_id == expected[tool]
        assert outcome.allowed is (tool == "add")
        assert outcome.score is not None


async def test_a_policy_service_that_goes_away_blocks_and_its_return_is_picked_up(tmp_path: Path) -> None:
    app = inprocess.app_config("http://127.0.0.1:1/mcp", POLICY)
    async with inprocess.verifier(tmp_path, app) as verifier:
        async with inprocess.policy(tmp_path, app) as policy:
            address = policy["grpc"]
            governor = _governor(tmp_path, address, verifier["grpc"])
            assert (await governor.decide(*_action("add"), [], new_id())).allowed
        down = await governor.decide(*_action("add"), [], new_id())
        assert (down.allowed, down.block_code) == (False, POLICY_UNAVAILABLE)
        # The same address again, as after a restart: the next action opens a new stream.
        async with inprocess.policy(tmp_path, app, grpc_addr=address):
            back = await _eventually_allowed(governor)
        await governor.close()
    assert back


async def _eventually_allowed(governor: Governor) -> bool:
    # The channel backs off after the outage; every failed attempt in between is a block.
    for _ in range(100):
        outcome = await governor.decide(*_action("add"), [], new_id())
        if outcome.allowed:
            return True
        assert outcome.block_code == POLICY_UNAVAILABLE
        await asyncio.sleep(0.1)
    return False


async def test_a_verifier_without_score_stream_is_called_with_score(tmp_path: Path, services: tuple[str, str]) -> None:
    spec = importlib.util.spec_from_file_location("external_verifier", ROOT / "examples" / "external_verifier.py")
    assert spec is not None
    assert spec.loader is not None
    example: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    server, port = await example.start(0, ensure_service_token(tmp_path, None))
    try:
        governor = _governor(tmp_path, services[0], f"127.0.0.1:{port}")
        first = await governor.decide(*_action("add"), [], new_id())
        second = await governor.decide(*_action("add"), [], new_id())
        await governor.close()
    finally:
        await server.stop(None)
    for outcome in (first, second):
        assert outcome.allowed
        assert outcome.score is not None
        assert outcome.score.scorer == "delete-guard/1"


async def test_a_request_the_verifier_cannot_score_fails_alone_on_the_stream(
    tmp_path: Path, services: tuple[str, str]
) -> None:
    async with open_channel(services[1]) as channel:
        stub = verifier_pb2_grpc.VerifierStub(channel)
        requests = [
            verifier_pb2.ScoreRequest(ctx=policy_pb2.Context(request_id="broken")),  # no action
            verifier_pb2.ScoreRequest(action=_action("add")[0], ctx=policy_pb2.Context(request_id="fine")),
        ]
        call = stub.ScoreStream(iter(requests), metadata=auth_metadata(ensure_service_token(tmp_path, None)))
        answers = {answer.request_id: answer async for answer in call}
    assert answers["broken"].verdict == verifier_pb2.VERDICT_UNSPECIFIED
    assert "action is required" in answers["broken"].reasons[0]
    assert answers["fine"].verdict in (verifier_pb2.PASS, verifier_pb2.FLAG)


async def test_streams_need_the_service_token(services: tuple[str, str]) -> None:
    async with open_channel(services[0]) as channel:
        call = policy_pb2_grpc.PolicyServiceStub(channel).DecideStream(iter([policy_pb2.DecideRequest()]))
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            async for _ in call:
                pass
    assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_request_too_large_for_the_streams_fails_alone(tmp_path: Path, services: tuple[str, str]) -> None:
    governor = _governor(tmp_path, *services)
    huge, huge_ctx = _action("echo")
    huge.arguments.update({"text": "x" * (16 << 20)})
    decisions = [governor.decide(*_action("add"), [], new_id()) for _ in range(50)]
    oversized = governor.decide(huge, huge_ctx, [], new_id(), body_size=16 << 20)
    blocked, *others = await asyncio.gather(oversized, *decisions)
    await governor.close()
    assert (blocked.allowed, blocked.block_code) == (False, POLICY_UNAVAILABLE)
    assert "RESOURCE_EXHAUSTED" in blocked.block_reason
    # Sent, it would have broken the shared streams and blocked every call in flight.
    assert all(outcome.allowed for outcome in others)


async def test_a_dead_stream_leaves_no_task_behind(tmp_path: Path) -> None:
    app = inprocess.app_config("http://127.0.0.1:1/mcp", POLICY)
    loop = asyncio.get_running_loop()
    async with inprocess.verifier(tmp_path, app) as verifier:
        async with inprocess.policy(tmp_path, app) as policy:
            governor = _governor(tmp_path, policy["grpc"], verifier["grpc"])
            before = {task for task in asyncio.all_tasks() if task is not asyncio.current_task()}
            assert (await governor.decide(*_action("add"), [], new_id())).allowed
        down = await governor.decide(*_action("add"), [], new_id())
        assert not down.allowed
        for _ in range(50):
            # Every task the dead policy stream started (its reader, grpc's request
            # consumer) has ended; left pending, they were "destroyed" at exit.
            leftover = [
                task
                for task in asyncio.all_tasks()
                if task not in before and task is not asyncio.current_task() and "policy" in repr(task).lower()
            ]
            if not leftover:
                break
            await asyncio.sleep(0.02)
        await governor.close()
    assert not leftover, leftover
    assert loop.is_running()


class _HangingVerifier(verifier_pb2_grpc.VerifierServicer):
    """A verifier that takes every Score and never answers in time (no ScoreStream)."""

    def __init__(self) -> None:
        self.calls = 0

    async def Score(self, request: verifier_pb2.ScoreRequest, context: Any) -> verifier_pb2.ScoreResponse:
        self.calls += 1
        await asyncio.sleep(30)
        return verifier_pb2.ScoreResponse()

    async def Info(self, request: object, context: Any) -> verifier_pb2.VerifierInfo:
        return verifier_pb2.VerifierInfo()

    def ScoreStream(self, request_iterator: Any, context: Any) -> Any:
        # The base class's answer, UNIMPLEMENTED: the proxy then calls Score.
        return verifier_pb2_grpc.VerifierServicer.ScoreStream(self, request_iterator, context)

    def ScoreBatchStream(self, request_iterator: Any, context: Any) -> Any:
        return verifier_pb2_grpc.VerifierServicer.ScoreBatchStream(self, request_iterator, context)


async def test_a_hanging_verifier_opens_the_circuit_and_then_is_not_waited_for(
    tmp_path: Path, services: tuple[str, str]
) -> None:
    hanging = _HangingVerifier()
    server = await _serve_verifier(tmp_path, hanging)
    governor = Governor(
        policy_pb2_grpc.PolicyServiceStub(open_channel(services[0])),
        verifier_pb2_grpc.VerifierStub(open_channel(server.address)),
        auth_metadata(ensure_service_token(tmp_path, None)),
        policy_timeout=2.0,
        verifier_timeout=0.2,
        fallback_allow=False,
        breaker=CircuitBreaker(failures=3, cooldown_s=60),
    )
    try:
        waited = [await governor.decide(*_action("add"), [], new_id()) for _ in range(3)]
        skipped = [await governor.decide(*_action("add"), [], new_id()) for _ in range(5)]
    finally:
        await governor.close()
        await server.stop(0)

    assert hanging.calls == 3  # after three timeouts the verifier is left alone
    for outcome in (*waited, *skipped):
        assert (outcome.allowed, outcome.block_code) == (False, VERIFIER_UNAVAILABLE)  # fail closed throughout
        assert outcome.decision is not None  # policy was still asked
    assert all("no answer within the deadline" in outcome.block_reason for outcome in waited)
    assert all("circuit open after 3 consecutive failures" in outcome.block_reason for outcome in skipped)
    assert governor.breaker is not None
    assert governor.breaker.state == "open"


class _Hanging(policy_pb2_grpc.PolicyServiceServicer, verifier_pb2_grpc.VerifierServicer):
    """Reads every request on the batch streams and answers none."""

    async def DecideBatchStream(self, requests: Any, context: Any) -> Any:
        async for _ in requests:
            pass
        yield policy_pb2.DecideBatchResponse()  # never reached while the client holds the stream

    async def ScoreBatchStream(self, requests: Any, context: Any) -> Any:
        async for _ in requests:
            pass
        yield verifier_pb2.ScoreBatchResponse()


async def test_a_decision_cancelled_while_both_services_think_leaves_nothing_waiting(tmp_path: Path) -> None:
    # The score is asked in a task of its own beside the decision: a caller that goes
    # away (its client disconnected) must take that task with it, not leave it waiting
    # on the stream until its deadline.
    server = grpc.aio.server()
    hanging = _Hanging()  # type: ignore[abstract]
    policy_pb2_grpc.add_PolicyServiceServicer_to_server(hanging, server)
    verifier_pb2_grpc.add_VerifierServicer_to_server(hanging, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        governor = _governor(tmp_path, f"127.0.0.1:{port}", f"127.0.0.1:{port}")
        deciding = asyncio.create_task(governor.decide(*_action("add"), [], new_id()))
        streams = (governor._decisions, governor._scorers[0])
        for _ in range(200):  # until both requests are on their streams
            await asyncio.sleep(0.01)
            if all(caller._stream is not None and caller._stream.pending for caller in streams):
                break
        assert all(caller._stream is not None and caller._stream.pending for caller in streams)
        deciding.cancel()
        with pytest.raises(asyncio.CancelledError):
            await deciding
        for _ in range(3):
            await asyncio.sleep(0)
        assert [caller._stream.pending for caller in streams if caller._stream is not None] == [{}, {}]
        await governor.close()
    finally:
        await server.stop(None)


class _StreamsFailFirst(verifier_pb2_grpc.VerifierServicer):
    """Ends both streams with INTERNAL before answering anything, as grpc reports a stream
    the server refused (UNIMPLEMENTED) when the client's first write raced the refusal;
    answers Score. `answering_streams` makes the streams answer one message first."""

    def __init__(self, answering_streams: bool = False) -> None:
        self.scored = 0
        self.answering_streams = answering_streams

    async def Score(self, request: verifier_pb2.ScoreRequest, context: Any) -> verifier_pb2.ScoreResponse:
        self.scored += 1
        return verifier_pb2.ScoreResponse(
            request_id=request.ctx.request_id, deviation_score=0.1, threshold=0.8, verdict=verifier_pb2.PASS
        )

    async def Info(self, request: object, context: Any) -> verifier_pb2.VerifierInfo:
        return verifier_pb2.VerifierInfo()

    async def ScoreStream(self, request_iterator: Any, context: Any) -> Any:
        async for request in request_iterator:
            if self.answering_streams:
                self.answering_streams = False
                yield await self.Score(request, context)
                continue
            await context.abort(grpc.StatusCode.INTERNAL, "Internal error from Core")

    async def ScoreBatchStream(self, request_iterator: Any, context: Any) -> Any:
        async for _ in request_iterator:
            await context.abort(grpc.StatusCode.INTERNAL, "Internal error from Core")
        yield verifier_pb2.ScoreBatchResponse()  # never reached: makes this an async generator


async def test_a_stream_ended_with_internal_before_any_answer_falls_back_to_score(
    tmp_path: Path, services: tuple[str, str]
) -> None:
    # Found by a race audit: a Score-only verifier's stream refusal (UNIMPLEMENTED) racing the
    # first write came back as INTERNAL, and 1-5% of first decisions failed closed.
    servicer = _StreamsFailFirst()
    server = await _serve_verifier(tmp_path, servicer)
    try:
        governor = _governor(tmp_path, services[0], server.address)
        outcomes = [await governor.decide(*_action("add"), [], new_id()) for _ in range(3)]
        await governor.close()
    finally:
        await server.stop(0)
    for outcome in outcomes:
        assert outcome.allowed, outcome.block_reason
        assert outcome.score is not None
    assert servicer.scored == 3  # each asked once more, by Score


async def test_a_stream_that_answered_and_then_fails_with_internal_still_blocks(
    tmp_path: Path, services: tuple[str, str]
) -> None:
    # Only a stream that never answered may have been a masked refusal; one that answered
    # and then failed is a failing verifier, and the call fails closed.
    servicer = _StreamsFailFirst(answering_streams=True)
    server = await _serve_verifier(tmp_path, servicer)
    try:
        governor = _governor(tmp_path, services[0], server.address)
        answered = await governor.decide(*_action("add"), [], new_id())  # on ScoreStream
        failed = await governor.decide(*_action("add"), [], new_id())  # the same stream, now failing
        await governor.close()
    finally:
        await server.stop(0)
    assert answered.allowed, answered.block_reason
    assert (failed.allowed, failed.block_code) == (False, VERIFIER_UNAVAILABLE)
    assert servicer.scored == 1  # the one the stream answered; the failing one was not asked again
