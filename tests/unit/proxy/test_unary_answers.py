"""The unary fallback of the proxy's decision streams: an answer naming another request is
not this request's answer (the streams refuse it; the unary path took it)."""

from __future__ import annotations

import grpc
import pytest

from bastion.proxy._streams import StreamCaller, StreamFailure
from bastion.v1 import verifier_pb2


def _caller(answer: verifier_pb2.ScoreResponse) -> StreamCaller[str, verifier_pb2.ScoreResponse]:
    async def unary(request: str, timeout: float) -> verifier_pb2.ScoreResponse:
        return answer

    caller: StreamCaller[str, verifier_pb2.ScoreResponse] = StreamCaller(
        lambda requests: None, unary, lambda score: score.request_id, "verifier", 1.0
    )
    caller.unsupported = True  # as after the verifier answered UNIMPLEMENTED on the stream
    return caller


async def test_a_unary_answer_for_another_request_is_a_failure() -> None:
    with pytest.raises(StreamFailure) as failed:
        await _caller(verifier_pb2.ScoreResponse(request_id="req-other", verdict=verifier_pb2.PASS)).call("q", "req-1")
    assert failed.value.code == grpc.StatusCode.INTERNAL
    assert "answered request 'req-other' instead of 'req-1'" in str(failed.value)


@pytest.mark.parametrize("echoed", ["", "req-1"])
async def test_a_unary_answer_with_no_id_or_its_own_is_the_answer(echoed: str) -> None:
    answer = verifier_pb2.ScoreResponse(request_id=echoed, verdict=verifier_pb2.PASS)
    assert await _caller(answer).call("q", "req-1") is answer
