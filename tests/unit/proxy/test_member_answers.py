"""Each chained verifier's own answer as the proxy journals it (Event.verifications):
sound answers as they came, a failure or an unsound answer as an entry without a verdict
naming the verifier and saying why, without the peer's address."""

from __future__ import annotations

import grpc

from bastion.proxy._breaker import CircuitOpen
from bastion.proxy._pipeline import member_answers
from bastion.v1 import verifier_pb2

_NAMES = ("verifier", "chained verifier 2", "chained verifier 3")


def test_answers_failures_and_garbage_each_keep_their_place_in_the_chain() -> None:
    sound = verifier_pb2.ScoreResponse(
        verdict=verifier_pb2.FLAG, deviation_score=0.4, threshold=0.8, scorer="reference/1", reasons=["novel"]
    )
    down = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details="ipv4:10.0.3.7:50052: refused"
    )
    garbage = verifier_pb2.ScoreResponse(verdict=verifier_pb2.PASS, deviation_score=7.0, scorer="odd/2")

    members = member_answers([sound, down, garbage], _NAMES)

    assert members[0] == sound
    assert (members[1].scorer, members[1].verdict) == ("chained verifier 2", verifier_pb2.VERDICT_UNSPECIFIED)
    assert list(members[1].reasons) == ["chained verifier 2 unavailable (UNAVAILABLE): not reachable"]
    assert "10.0.3.7" not in str(members[1])
    assert (members[2].scorer, members[2].verdict, members[2].deviation_score) == (
        "odd/2",
        verifier_pb2.VERDICT_UNSPECIFIED,
        0.0,
    )
    assert list(members[2].reasons) == [
        "chained verifier 3 unusable: verifier answered a deviation score outside 0..1 (7.0)"
    ]


def test_an_open_circuit_is_the_reason_of_the_verifier_it_stopped() -> None:
    (member,) = member_answers([CircuitOpen("circuit open after 5 consecutive failures")], _NAMES[:1])
    assert list(member.reasons) == ["verifier unavailable: circuit open after 5 consecutive failures"]
