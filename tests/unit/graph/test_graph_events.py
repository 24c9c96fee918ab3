"""What the graph makes of an Event: validity, event time, violation, enum names."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.graph._events import enum_name, enum_value, event_problem, event_time_ns, is_violation
from bastion.v1 import graph_pb2


def _valid() -> graph_pb2.Event:
    return graph_pb2.Event(
        event_id="e1",
        workflow_id="wf-1",
        node_id="n1",
        parent_ids=["n0"],
        edges=[graph_pb2.EdgeHint(target_node_id="n0", type=graph_pb2.INFORMED_BY)],
    )


def test_well_formed_event_has_no_problem() -> None:
    assert event_problem(_valid()) is None


@pytest.mark.parametrize(
    ("breaks", "problem"),
    [
        (lambda e: e.ClearField("event_id"), "event_id is empty"),
        (lambda e: e.ClearField("workflow_id"), "workflow_id is empty"),
        (lambda e: e.ClearField("node_id"), "node_id is empty"),
        (lambda e: setattr(e, "workflow_id", "w" * 513), "workflow_id is longer than 512 characters"),
        (lambda e: e.parent_ids.append(""), "parent_ids[1] is empty"),
        (lambda e: e.parent_ids.append("p" * 513), "parent_ids[1] is longer than 512 characters"),
        (
            lambda e: e.edges.add(target_node_id="t" * 513, type=graph_pb2.INFORMED_BY),
            "edges[1].target_node_id is longer than 512 characters",
        ),
        (lambda e: e.edges.add(type=graph_pb2.CAUSED_BY), "edges[1].target_node_id is empty"),
        (lambda e: e.edges.add(target_node_id="n0"), "edges[1].type is not set"),
    ],
)
def test_malformed_event_is_described_precisely(breaks: Callable[[graph_pb2.Event], object], problem: str) -> None:
    event = _valid()
    breaks(event)

    described = event_problem(event)

    assert described is not None
    assert described.startswith(problem)


def test_event_time_is_started_at_else_decided_at_else_arrival() -> None:
    event = graph_pb2.Event()
    assert event_time_ns(event, received_ns=7) == 7

    event.decided_at.FromNanoseconds(2_000)
    assert event_time_ns(event, received_ns=7) == 2_000

    event.started_at.FromNanoseconds(1_000)
    assert event_time_ns(event, received_ns=7) == 1_000


@pytest.mark.parametrize(
    ("outcome", "violation"),
    [
        (graph_pb2.OUTCOME_UNSPECIFIED, False),
        (graph_pb2.FORWARDED, False),
        (graph_pb2.BLOCKED, True),
        (graph_pb2.REJECTED, True),
    ],
)
def test_only_blocked_and_rejected_events_are_violations(outcome: graph_pb2.Outcome.ValueType, violation: bool) -> None:
    assert is_violation(graph_pb2.Event(outcome=outcome)) is violation


@given(st.integers(min_value=0, max_value=2**31 - 1))
def test_enum_names_round_trip_even_for_values_from_a_newer_sender(number: int) -> None:
    descriptor = graph_pb2.NodeType.DESCRIPTOR
    name = enum_name(descriptor, number)

    assert enum_value(descriptor, name) == number
    if number in descriptor.values_by_number:
        assert name == descriptor.values_by_number[number].name
    else:
        assert name == str(number)


def test_missing_or_unknown_enum_name_is_unspecified() -> None:
    assert enum_value(graph_pb2.EdgeType.DESCRIPTOR, None) == graph_pb2.EDGE_TYPE_UNSPECIFIED
    assert enum_value(graph_pb2.EdgeType.DESCRIPTOR, "SOMETHING_ELSE") == graph_pb2.EDGE_TYPE_UNSPECIFIED
