"""Adaptive micro-batching on the decision streams (`proxy/_batching.py`), against a real
policy service and a real verifier servicer over gRPC sockets: under load one stream
message carries many requests and every caller still gets its own answer; at
concurrency 1 each request goes out alone; a verifier that dies with a batch in flight
fails every request of it closed."""

from __future__ import annotations

import asyncio
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
from bastion.proxy import _batching
from bastion.proxy._batching import MAX_BATCH, MAX_BATCH_WEIGHT, BatchCaller, _Batches
from bastion.proxy._pipeline import Governor
from bastion.proxy._streams import StreamCaller, StreamFailure
from bastion.proxy._workflows import new_id
from bastion.v1 import policy_pb2, policy_pb2_grpc, verifier_pb2, verifier_pb2_grpc
from bastion.verifier._engine import ReferenceScorer
from bastion.verifier._grpc import VerifierServicer

POLICY = ROOT / "examples" / "policies" / "demo.yaml"


class _CountingVerifier(VerifierServicer):
    """The real servicer, counting the batch messages it receives and their sizes."""

    def __init__(self, hold: asyncio.Event | None = None) -> None:
        super().__init__(ReferenceScorer())
        self.batches: list[int] = []
        #: While clear, every batch is taken and left unanswered (a verifier that hangs).
        self.hold = hold

    async def ScoreBatchStream(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        async for batch in request_iterator:
            self.batches.append(len(batch.requests))
            if self.hold is not None:
                await self.hold.wait()
            yield verifier_pb2.ScoreBatchResponse(responses=[self._score_one(request) for request in batch.requests])


@pytest.fixture
async def policy_addr(tmp_path: Path) -> AsyncIterator[str]:
    app = inprocess.app_config("http://127.0.0.1:1/mcp", POLICY)
    async with inprocess.policy(tmp_path, app) as policy:
        yield policy["grpc"]


async def _serve(home: Path, servicer: VerifierServicer) -> Any:
    return await start_grpc_server(
        "127.0.0.1:0",
        token=ensure_service_token(home, None),
        register=[partial(verifier_pb2_grpc.add_VerifierServicer_to_server, servicer)],
        service_names=["bastion.v1.Verifier"],
    )


def _governor(home: Path, policy_addr: str, verifier_addr: str, verifier_timeout: float = 5.0) -> Governor:
    return Governor(
        policy_pb2_grpc.PolicyServiceStub(open_channel(policy_addr)),
        verifier_pb2_grpc.VerifierStub(open_channel(verifier_addr)),
        auth_metadata(ensure_service_token(home, None)),
        policy_timeout=5.0,
        verifier_timeout=verifier_timeout,
        fallback_allow=False,
    )


def _action(tool: str) -> tuple[policy_pb2.Action, policy_pb2.Context]:
    action = policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server="demo", tool=tool, method="tools/call")
    action.arguments.update({"tool": tool})
    return action, policy_pb2.Context(agent_id="agent-1", workflow_id=new_id(), request_id=new_id())


async def test_under_load_one_message_carries_many_requests_and_each_caller_gets_its_own_answer(
    tmp_path: Path, policy_addr: str
) -> None:
    verifier = _CountingVerifier()
    server = await _serve(tmp_path, verifier)
    governor = _governor(tmp_path, policy_addr, server.address)
    try:
        assert (await governor.decide(*_action("add"), [], new_id())).allowed  # opens the streams
        tools = ["add", "delete_file", "echo"] * 100
        actions = [_action(tool) for tool in tools]
        outcomes = await asyncio.gather(*(governor.decide(action, ctx, [], new_id()) for action, ctx in actions))
    finally:
        await governor.close()
        await server.stop(None)
    expected = {"add": "allow-add", "delete_file": "no-file-deletes", "echo": "default"}
    for (action, ctx), outcome in zip(actions, outcomes, strict=True):
        assert outcome.decision is not None
        assert outcome.score is not None
        assert outcome.decision.request_id == outcome.score.request_id == ctx.request_id
        assert outcome.decision.rule_id == expected[action.tool]
    # 300 calls at once: far fewer messages than calls, none over the bound.
    assert sum(verifier.batches) == 301
    assert len(verifier.batches) < 301 // 4
    assert max(verifier.batches) <= MAX_BATCH


async def test_one_call_at_a_time_goes_out_alone(tmp_path: Path, policy_addr: str) -> None:
    verifier = _CountingVerifier()
    server = await _serve(tmp_path, verifier)
    governor = _governor(tmp_path, policy_addr, server.address)
    try:
        for _ in range(20):
            assert (await governor.decide(*_action("add"), [], new_id())).allowed
    finally:
        await governor.close()
        await server.stop(None)
    assert verifier.batches == [1] * 20


async def test_a_verifier_killed_with_a_batch_in_flight_blocks_every_call_of_it(
    tmp_path: Path, policy_addr: str
) -> None:
    hold = asyncio.Event()
    verifier = _CountingVerifier(hold)
    server = await _serve(tmp_path, verifier)
    governor = _governor(tmp_path, policy_addr, server.address)
    try:
        calls = [asyncio.ensure_future(governor.decide(*_action("add"), [], new_id())) for _ in range(40)]
        for _ in range(200):
            if sum(verifier.batches) == 40:
                break
            await asyncio.sleep(0.01)
        assert sum(verifier.batches) == 40
        await server.stop(None)  # killed while every batch waits for its answer
        outcomes = await asyncio.gather(*calls)
    finally:
        hold.set()
        await governor.close()
    assert all((o.allowed, o.block_code) == (False, VERIFIER_UNAVAILABLE) for o in outcomes)
    assert all("verifier unavailable" in o.block_reason for o in outcomes)


async def test_a_batch_that_never_answers_times_out_every_call_closed(tmp_path: Path, policy_addr: str) -> None:
    verifier = _CountingVerifier(asyncio.Event())  # never set: no answer ever comes
    server = await _serve(tmp_path, verifier)
    governor = _governor(tmp_path, policy_addr, server.address, verifier_timeout=0.3)
    try:
        outcomes = await asyncio.gather(*(governor.decide(*_action("add"), [], new_id()) for _ in range(10)))
    finally:
        await governor.close()
        await server.stop(None)
    assert all(o.block_code == VERIFIER_UNAVAILABLE for o in outcomes)
    assert all("DEADLINE_EXCEEDED" in o.block_reason for o in outcomes)


def test_a_batch_is_bounded_by_count_and_by_body_bytes() -> None:
    batches: _Batches[int] = _Batches()
    for n in range(MAX_BATCH + 1):
        batches.add(n, 10)
    assert [len(m) for m in batches.messages] == [MAX_BATCH, 1]
    heavy: _Batches[str] = _Batches()
    heavy.add("small", 100)
    heavy.add("big", MAX_BATCH_WEIGHT)  # would take the message over the bound: its own
    heavy.add("next", 1)  # after a full-weight one: a new message again
    heavy.add("then", 1)
    assert list(heavy.messages) == [["small"], ["big"], ["next", "then"]]


async def test_a_batch_stream_needs_the_service_token(tmp_path: Path) -> None:
    server = await _serve(tmp_path, _CountingVerifier())
    try:
        async with open_channel(server.address) as channel:
            call = verifier_pb2_grpc.VerifierStub(channel).ScoreBatchStream(iter([verifier_pb2.ScoreBatchRequest()]))
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                async for _ in call:
                    pass
    finally:
        await server.stop(None)
    assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED


class _StuckCall:
    """A stream whose writes never complete and which never answers: a service that
    stopped reading, the one fault a real server does not produce on demand."""

    def __init__(self) -> None:
        self.cancelled = False
        self.written = 0

    async def write(self, message: Any) -> None:
        self.written += 1
        await asyncio.Event().wait()

    def __aiter__(self) -> Any:
        return self

    async def __anext__(self) -> Any:
        await asyncio.Event().wait()

    def cancel(self) -> bool:
        self.cancelled = True
        return True


async def test_a_stream_that_stops_draining_is_replaced_and_waiting_requests_stay_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_batching, "MAX_WAITING_MESSAGES", 3)
    calls: list[_StuckCall] = []

    def open_stream() -> _StuckCall:
        calls.append(_StuckCall())
        return calls[-1]

    async def unary(request: str, timeout: float) -> str:
        raise AssertionError("not reached")

    caller: BatchCaller[str, str, list[str], list[str]] = BatchCaller(
        open_stream,
        lambda requests: requests,
        lambda answers: answers,
        lambda answer: answer,
        StreamCaller(lambda requests: None, unary, lambda answer: answer, "test", 5.0),
        "test service",
        5.0,
    )

    # Each request its own message (a full-weight body): one is being written, forever.
    def ask(request: str, timeout: float) -> asyncio.Future[str]:
        return asyncio.ensure_future(caller.call(request, request, weight=MAX_BATCH_WEIGHT, timeout=timeout))

    # r0-r3 must still be waiting when r4 comes (5 s: a loaded machine's stalls are shorter);
    # the stream's end, not their deadline, fails them.
    waiting = [ask("r0", 5.0)]
    await asyncio.sleep(0.05)
    waiting += [ask(f"r{i}", 5.0) for i in (1, 2, 3)]
    await asyncio.sleep(0.05)
    assert (len(calls), calls[0].written) == (1, 1)  # r0 is being written, r1..r3 wait
    fifth = ask("r4", 0.2)
    failed = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(f, StreamFailure) and f.code == grpc.StatusCode.UNAVAILABLE for f in failed), failed
    assert "not draining: 3 messages" in str(failed[0])
    assert calls[0].cancelled
    # The fifth went out on a new stream, which answers no better: it times out alone.
    with pytest.raises(StreamFailure) as timed_out:
        await fifth
    assert timed_out.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(calls) == 2
    await caller.close()


class _TwiceVerifier(_CountingVerifier):
    """Answers every request twice in one message: PASS, then BLOCK."""

    async def ScoreBatchStream(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        async for batch in request_iterator:
            answers = []
            for request in batch.requests:
                passed = self._score_one(request)
                passed.verdict, passed.deviation_score = verifier_pb2.PASS, 0.0
                blocked = verifier_pb2.ScoreResponse()
                blocked.CopyFrom(passed)
                blocked.verdict, blocked.deviation_score = verifier_pb2.BLOCK, 1.0
                answers += [passed, blocked]
            yield verifier_pb2.ScoreBatchResponse(responses=answers)


async def test_a_request_answered_twice_in_one_message_fails_closed(tmp_path: Path, policy_addr: str) -> None:
    # Found by an attacker's probe: the first of `[PASS x, BLOCK x]` was taken and the call allowed.
    server = await _serve(tmp_path, _TwiceVerifier())
    governor = _governor(tmp_path, policy_addr, server.address)
    try:
        outcome = await governor.decide(*_action("add"), [], new_id())
    finally:
        await governor.close()
        await server.stop(None)
    assert (outcome.allowed, outcome.block_code) == (False, VERIFIER_UNAVAILABLE)
    assert "verifier unavailable (INTERNAL)" in outcome.block_reason  # the detail goes to the log


class _CrossVerifier(_CountingVerifier):
    """Holds its first message (one call); once a second comes (two calls), answers the first
    with a PASS under the id of the second's first call, then the second honestly, BLOCK for
    both: a score sent under another in-flight call's request_id."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[verifier_pb2.ScoreBatchRequest] = []
        self.first = asyncio.Event()

    async def ScoreBatchStream(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        async for batch in request_iterator:
            self.received.append(batch)
            self.first.set()
            if len(self.received) < 2:
                continue
            second = self.received[1].requests
            forged = self._score_one(second[0])
            forged.verdict, forged.deviation_score, forged.threshold = verifier_pb2.PASS, 0.0, 0.8
            yield verifier_pb2.ScoreBatchResponse(responses=[forged])
            honest = [self._score_one(request) for request in second]
            for answer in honest:
                answer.verdict, answer.deviation_score, answer.threshold = verifier_pb2.BLOCK, 1.0, 0.8
            yield verifier_pb2.ScoreBatchResponse(responses=honest)


async def test_a_score_under_another_messages_request_id_fails_closed(tmp_path: Path, policy_addr: str) -> None:
    """An attacker's probe: answers were matched by request_id alone, so an answer message
    could carry a PASS for a call of another message in flight, and that call took it."""
    verifier = _CrossVerifier()
    server = await _serve(tmp_path, verifier)
    governor = _governor(tmp_path, policy_addr, server.address, verifier_timeout=1.0)
    try:
        first = asyncio.ensure_future(governor.decide(*_action("add"), [], new_id()))
        await asyncio.wait_for(verifier.first.wait(), 5)
        # Asked in one turn of the loop, both wait for the same message.
        crossed, other = await asyncio.gather(*(governor.decide(*_action("add"), [], new_id()) for _ in range(2)))
        unanswered = await first
    finally:
        await governor.close()
        await server.stop(None)
    assert [len(batch.requests) for batch in verifier.received] == [1, 2]
    for outcome in (crossed, other):
        assert (outcome.allowed, outcome.block_code) == (False, VERIFIER_UNAVAILABLE)
        assert "verifier unavailable (INTERNAL)" in outcome.block_reason
    assert (unanswered.allowed, unanswered.block_code) == (False, VERIFIER_UNAVAILABLE)  # its answer never came
