"""The chain's record bytes are built in one pass (`audit_bytes`, `_result_details`) for speed;
these hold them to the plain definition: `canonical(audit_record(...))`, the record being
`json_safe` of itself, and a result's details being exactly what `MessageToDict` writes.
Events are drawn with the values that take the slow paths: non-finite, integral, tiny and
huge floats, int64s past 2^53, enum numbers no name has, non-ASCII keys, times ProtoJSON
cannot write."""

from __future__ import annotations

from typing import Any

import rfc8785
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.graph._audit import _result_details, audit_bytes, audit_kind, audit_record, canonical, json_safe
from bastion.v1 import graph_pb2, policy_pb2, verifier_pb2

_FLOATS = st.floats() | st.sampled_from([0.0, -0.0, 2.0, 1.5e-6, 1e-7, 5e-5, 1e16, 3e15, 0.1, 1e300])
_INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.sampled_from([0, 2**53 - 1, 2**53, -(2**53)])
#: Enum numbers, known or not (typed Any: the stubs take only the named values).
_ENUM: st.SearchStrategy[Any] = st.integers(min_value=0, max_value=6) | st.just(99)
_NAMELESS: Any = 99
_TEXT = st.text(max_size=6)
_SECONDS = st.integers(min_value=-62_135_596_800 - 5, max_value=253_402_300_799 + 5) | st.just(1_790_000_000)


@st.composite
def _results(draw: st.DrawFn) -> graph_pb2.ActionResult:
    result = graph_pb2.ActionResult(
        outcome=draw(_ENUM),
        jsonrpc_error_code=draw(st.integers(min_value=-(2**31), max_value=2**31 - 1)),
        http_status=draw(st.sampled_from([0, 200, 502])),
        duration_ms=draw(_FLOATS),
        result_digest=draw(_TEXT),
        result_bytes=draw(_INT64),
        detail=draw(_TEXT),
    )
    if draw(st.booleans()):
        result.completed_at.seconds = draw(_SECONDS)
        result.completed_at.nanos = draw(st.integers(min_value=0, max_value=999_999_999))
    if draw(st.booleans()):
        result.redacted_result.update({draw(_TEXT): draw(st.floats(allow_nan=False) | _TEXT)})
    return result


def _score(draw: st.DrawFn) -> verifier_pb2.ScoreResponse:
    return verifier_pb2.ScoreResponse(
        deviation_score=draw(_FLOATS), threshold=draw(_FLOATS), verdict=draw(_ENUM), scorer=draw(_TEXT)
    )


@st.composite
def _events(draw: st.DrawFn) -> graph_pb2.Event:
    event = graph_pb2.Event(
        event_id=draw(_TEXT),
        workflow_id=draw(st.sampled_from(["wf-1", "bastion.policy"])),
        node_id="n-1",
        node_type=draw(_ENUM),
        agent_id=draw(_TEXT),
        tenant=draw(_TEXT),
        outcome=draw(_ENUM),
        verifier_fallback=draw(st.booleans()),
        block_code=draw(st.sampled_from(["", "no-exfiltration"])),
        action=policy_pb2.Action(
            kind=draw(_ENUM),
            server=draw(st.sampled_from(["mail", "policy"])),
            tool=draw(_TEXT),
            method=draw(st.sampled_from(["tools/call", "bastion.approval/approve", "bastion.dev/promote"])),
        ),
    )
    if draw(st.booleans()):
        event.action.arguments.update({draw(_TEXT): draw(st.floats(allow_nan=False) | _TEXT), "n": [1, 2.5, "é"]})
    if draw(st.booleans()):
        event.decision.CopyFrom(
            policy_pb2.Decision(effect=draw(_ENUM), rule_id=draw(_TEXT), policy_version=draw(_INT64))
        )
    if draw(st.booleans()):
        event.verifier.CopyFrom(_score(draw))
    if draw(st.booleans()):
        event.verifications.extend([_score(draw), verifier_pb2.ScoreResponse(scorer="down")])
    if draw(st.booleans()):
        event.started_at.FromNanoseconds(1_790_000_000 * 10**9)
        event.decided_at.FromNanoseconds(1_790_000_000 * 10**9 + draw(st.integers(min_value=0, max_value=10**10)))
    if draw(st.booleans()):
        event.result.CopyFrom(draw(_results()))
    return event


@settings(max_examples=600, deadline=None)
@given(_events(), st.integers(min_value=1, max_value=2**60), st.integers(min_value=0, max_value=2**62))
def test_audit_bytes_are_the_jcs_form_of_the_json_safe_record(event: graph_pb2.Event, sequence: int, ns: int) -> None:
    kind = audit_kind(event) or "decision"
    try:
        expected = canonical(audit_record(kind, event, sequence=sequence, at_ns=ns, recorded_ns=ns + 1))
    except json_format.SerializeToJsonError:
        # What the plain path cannot write (a time ProtoJSON refuses), the fast one must not either.
        try:
            audit_bytes(kind, event, sequence=sequence, at_ns=ns, recorded_ns=ns + 1)
        except (json_format.SerializeToJsonError, ValueError):
            return
        raise AssertionError("the fast path wrote a record the plain path refuses") from None
    record = audit_record(kind, event, sequence=sequence, at_ns=ns, recorded_ns=ns + 1)
    assert json_safe(record) == record
    assert audit_bytes(kind, event, sequence=sequence, at_ns=ns, recorded_ns=ns + 1) == expected
    assert expected == rfc8785.dumps(record)


@settings(max_examples=600, deadline=None)
@given(_results())
def test_a_results_details_are_what_message_to_dict_writes(result: graph_pb2.ActionResult) -> None:
    fast = _result_details(result)
    if fast is None:  # not the plain case: MessageToDict converts it
        return
    answerless = graph_pb2.ActionResult()
    answerless.CopyFrom(result)
    answerless.ClearField("redacted_result")  # not in the record (and MessageToDict refuses an infinite one)
    expected: dict[str, Any] = json_format.MessageToDict(answerless, preserving_proto_field_name=True)
    assert fast == expected
    assert [type(value) for value in fast.values()] == [type(value) for value in expected.values()]


def test_the_plain_case_is_taken_for_what_the_proxy_journals() -> None:
    # Guards the speed-up itself: an ordinary result must not fall back to MessageToDict.
    result = graph_pb2.ActionResult(
        outcome=graph_pb2.COMPLETED, http_status=200, duration_ms=1.25, result_digest="ab", result_bytes=812
    )
    result.completed_at.FromNanoseconds(1_790_000_000_123_456_000)
    assert _result_details(result) == {
        "outcome": "COMPLETED",
        "http_status": 200,
        "duration_ms": 1.25,
        "result_digest": "ab",
        "result_bytes": "812",
        "completed_at": "2026-09-21T14:13:20.123456Z",
    }
    assert _result_details(graph_pb2.ActionResult(outcome=_NAMELESS)) is None
    assert _result_details(graph_pb2.ActionResult(duration_ms=float("nan"))) is None
