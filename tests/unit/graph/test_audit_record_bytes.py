"""The chain's record bytes are built in one pass (`audit_bytes`, `_result_details`) for speed;
these hold them to the plain definition: `canonical(audit_record(...))`, the record being
`json_safe` of itself, and a result's details being exactly what `MessageToDict` writes.
Events are drawn with the values that take the slow paths: non-finite, integral, tiny and
huge floats, int64s past 2^53, enum numbers no name has, non-ASCII keys, times ProtoJSON
cannot write."""

from __future__ import annotations

import hashlib
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


# Record bytes as the code before the one-pass build wrote them (a561aa8), by sha256: the
# format is what auditors re-hash, so a change to it must be deliberate, not a side effect.
_GOLDEN = [
    ("decision", "4faa7516ffeb7dcc26a63b658aacf72e7ba9bee447377eb29f21acd51b8ad712"),
    ("decision", "799423a35e64bb5e67fcf8c3ad0216f9a54391f04e6a579dd4b12bfe2f5a28bf"),
    ("result", "589a1d3ff32dd32b260423bdbaefbacfd27d718b345c3a70392f3ee97725d1f5"),
    ("result", "40046386e5903ca939cf127d8016d61a59c27f98bc490b1650f079181deb7bf5"),
    ("approval", "50a12d458eeee746893c99d01c27ab8989ae896e7a7054f0294e3d1a6b5daa1e"),
]


def _golden_events() -> list[tuple[str, graph_pb2.Event]]:
    """Events of every kind, with the values that take every path of the record's building."""
    decision = graph_pb2.Event(
        event_id="0193a1b2-0000-7000-8000-000000000001",
        workflow_id="wf-golden",
        node_id="node-1",
        node_type=graph_pb2.ACTION,
        agent_id="agent-é",
        tenant="acme",
        session_id="s-1",
        action=policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server="mail", tool="send", method="tools/call"),
        decision=policy_pb2.Decision(
            effect=policy_pb2.DENY,
            rule_id="no-exfil",
            reason="destination \u2028 not in task",
            policy_name="p",
            policy_version=2**60,
            bundle_digest="ab" * 32,
            rollout_arm=policy_pb2.CANARY,
        ),
        verifier=verifier_pb2.ScoreResponse(
            deviation_score=1.5e-6, threshold=0.8, verdict=verifier_pb2.BLOCK, scorer="ref"
        ),
        outcome=graph_pb2.BLOCKED,
        violation_id="v-1",
        block_code="bastion.policy_denied",
        block_reason="denied",
        payload_digest="cd" * 32,
    )
    decision.started_at.FromNanoseconds(1_790_000_000_123_456_789)
    decision.decided_at.FromNanoseconds(1_790_000_000_125_000_000)
    chained = graph_pb2.Event()
    chained.CopyFrom(decision)
    chained.event_id = "0193a1b2-0000-7000-8000-000000000002"
    chained.verifier.deviation_score = float("nan")
    chained.verifications.extend(
        [
            verifier_pb2.ScoreResponse(scorer="a", deviation_score=0.25, threshold=2.0, verdict=verifier_pb2.PASS),
            verifier_pb2.ScoreResponse(scorer="down"),
        ]
    )
    result = graph_pb2.Event(
        event_id="0193a1b2-0000-7000-8000-000000000003",
        workflow_id="wf-golden",
        node_id="node-1",
        tenant="acme",
        outcome=graph_pb2.FORWARDED,
        result=graph_pb2.ActionResult(
            outcome=graph_pb2.COMPLETED,
            http_status=200,
            duration_ms=12.0,
            result_digest="ef" * 32,
            result_bytes=2**55,
            detail="ok",
        ),
    )
    result.result.completed_at.FromNanoseconds(1_790_000_001_000_000_500)
    result.result.redacted_result.update({"x": 1.0})
    odd_result = graph_pb2.Event()
    odd_result.CopyFrom(result)
    odd_result.event_id = "0193a1b2-0000-7000-8000-000000000004"
    odd_result.result.duration_ms = float("inf")
    approval = graph_pb2.Event(
        event_id="0193a1b2-0000-7000-8000-000000000005",
        workflow_id="wf-golden",
        node_id="node-2",
        node_type=graph_pb2.VERIFICATION,
        action=policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server="bastion", method="bastion.approval/approve"),
    )
    approval.action.arguments.update({"by": "ops", "ключ": 2.0, "n": [1, 2.5, None, "x"], "tiny": 1e-7})
    return [
        ("decision", decision),
        ("decision", chained),
        ("result", result),
        ("result", odd_result),
        ("approval", approval),
    ]


def test_record_bytes_are_those_the_format_has_always_had() -> None:
    events = _golden_events()
    for i, ((kind, event), (expected_kind, digest)) in enumerate(zip(events, _GOLDEN, strict=True)):
        assert audit_kind(event) == kind == expected_kind
        record = audit_bytes(
            kind, event, sequence=i + 1, at_ns=1_790_000_000_000_000_000 + i, recorded_ns=1_790_000_002_000_000_000 + i
        )
        assert hashlib.sha256(record).hexdigest() == digest, (kind, record)
