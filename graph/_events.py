"""What an ingested `Event` means to the graph: whether it is well-formed, when it
happened, whether it is a violation, and the names of its enum values.

Every backend and view reads events through these few functions, so "violation" or
"event time" cannot mean one thing in the store and another in the REST API.
"""

from __future__ import annotations

from google.protobuf.descriptor import EnumDescriptor

from bastion.v1 import graph_pb2

#: Outcomes that make an event a violation (audit log, violation counts).
VIOLATION_OUTCOMES = frozenset({graph_pb2.BLOCKED, graph_pb2.REJECTED})

# Ids are index keys and travel in URLs; a bound keeps a misbehaving client from
# filling the indexes with megabyte keys. uuid7s and header-supplied workflow ids fit.
MAX_ID_LENGTH = 512


def event_problem(event: graph_pb2.Event) -> str | None:
    """Why the graph cannot store `event`, or None when it is well-formed."""
    for name, value in (
        ("event_id", event.event_id),
        ("workflow_id", event.workflow_id),
        ("node_id", event.node_id),
    ):
        if not value:
            return f"{name} is empty"
        if len(value) > MAX_ID_LENGTH:
            return f"{name} is longer than {MAX_ID_LENGTH} characters"
    for index, parent in enumerate(event.parent_ids):
        if not parent:
            return f"parent_ids[{index}] is empty"
    for index, hint in enumerate(event.edges):
        if not hint.target_node_id:
            return f"edges[{index}].target_node_id is empty"
        if hint.type == graph_pb2.EDGE_TYPE_UNSPECIFIED:
            return f"edges[{index}].type is not set (use CAUSED_BY, INFORMED_BY, VERIFIED_BY or DELEGATED_TO)"
    return None


def event_time_ns(event: graph_pb2.Event, received_ns: int) -> int:
    """When the event happened, in nanoseconds since the epoch.

    The proxy stamps `started_at`; an event without any timestamp happened no later
    than when the graph received it, so that is the best time it can be given.
    """
    if event.HasField("started_at"):
        return event.started_at.ToNanoseconds()
    if event.HasField("decided_at"):
        return event.decided_at.ToNanoseconds()
    return received_ns


def is_violation(event: graph_pb2.Event) -> bool:
    return event.outcome in VIOLATION_OUTCOMES


def enum_name(descriptor: EnumDescriptor, value: int) -> str:
    """The name of an enum value; a number from a newer sender, unknown here, stays a number."""
    known = descriptor.values_by_number.get(value)
    return known.name if known is not None else str(value)


def enum_value(descriptor: EnumDescriptor, name: str | None) -> int:
    """The inverse of `enum_name`; None or a name unknown here is 0 (UNSPECIFIED)."""
    if name is None:
        return 0
    known = descriptor.values_by_name.get(name)
    if known is not None:
        return known.number
    return int(name) if name.isdigit() else 0
