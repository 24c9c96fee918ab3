"""What an ingested `Event` means to the graph: whether it is well-formed, when it
happened, whether it is a violation, and the names of its enum values.

Every backend and view reads events through these few functions, so "violation" or
"event time" cannot mean one thing in the store and another in the REST API.
"""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2
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
    # Node ids, whichever field names them: Neo4j refuses to index a long one, and its
    # refusal came back UNAVAILABLE, which the shipper retries for ever (an attacker's
    # probe); SQLite took it and served half a megabyte per node.
    for index, parent in enumerate(event.parent_ids):
        if not parent:
            return f"parent_ids[{index}] is empty"
        if len(parent) > MAX_ID_LENGTH:
            return f"parent_ids[{index}] is longer than {MAX_ID_LENGTH} characters"
    for index, hint in enumerate(event.edges):
        if not hint.target_node_id:
            return f"edges[{index}].target_node_id is empty"
        if len(hint.target_node_id) > MAX_ID_LENGTH:
            return f"edges[{index}].target_node_id is longer than {MAX_ID_LENGTH} characters"
        if hint.type == graph_pb2.EDGE_TYPE_UNSPECIFIED:
            return f"edges[{index}].type is not set (use CAUSED_BY, INFORMED_BY, VERIFIED_BY or DELEGATED_TO)"
    # A time no store can hold was an UNKNOWN (an OverflowError, a protobuf ValueError),
    # which the proxy's shipper retries for ever: the journal of every agent stalls.
    for name, present, time in (
        ("started_at", event.HasField("started_at"), event.started_at),
        ("decided_at", event.HasField("decided_at"), event.decided_at),
        ("result.completed_at", event.result.HasField("completed_at"), event.result.completed_at),
    ):
        if present and not _storable(time):
            return f"{name} is not a valid time between 1970 and 2262"
    return None


def _storable(time: timestamp_pb2.Timestamp) -> bool:
    """Whether the stores can hold `time`: nanoseconds since the epoch in a signed 64-bit
    integer (1970 to 2262)."""
    return 0 <= time.nanos < 1_000_000_000 and 0 <= time.seconds * 1_000_000_000 + time.nanos < 2**63


def struct_view(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as JSON values. A number JSON cannot hold (NaN, ±Infinity: no proxy sends
    one, its JSON reader refuses them, but any holder of the service token could) is shown
    by its name, so one such event cannot make a workflow or the audit chain unreadable."""
    try:
        return json_format.MessageToDict(struct)
    except ValueError:
        return {key: _plain(struct[key]) for key in struct.keys()}  # noqa: SIM118 (a Struct is no dict)


def _plain(value: Any) -> Any:
    if isinstance(value, struct_pb2.Struct):
        return {key: _plain(value[key]) for key in value.keys()}  # noqa: SIM118
    if isinstance(value, struct_pb2.ListValue):
        return [_plain(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


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
