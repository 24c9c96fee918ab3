"""What every backend does the same way: stored documents, edge rows, limits, cursor kinds.

An event is stored as its protobuf bytes (`event_document`), read back by `parse_node`:
protobuf's JSON printer would cost tens of µs per event on ingest and again on every
read, and its output is no more readable to a database user than the bytes are to the
REST API, which renders nodes itself. A result event's `result` is merged into its
action's document (`with_result`). `parse_legacy_node` reads the JSON documents that
SQLite files before schema version 3 held.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from bastion._errors import ProtocolError, StoreError
from bastion.v1 import graph_pb2

from .._events import enum_name
from ._base import MAX_LINEAGE_DEPTH, MAX_PAGE_BYTES, Node

R = TypeVar("R", bound=Sequence[Any])

WORKFLOWS_CURSOR = "workflows"
VIOLATIONS_CURSOR = "violations"
#: Before every (at_ns, event_id): the key the first page of nodes starts after.
FIRST_NODE_KEY = (-(2**63), "")
CAUSED_BY = graph_pb2.EdgeType.Name(graph_pb2.CAUSED_BY)
#: The rule of the audit record saying a parked result was not stored on its node (`refused_result`).
REFUSED_RESULT = "bastion.graph.result_refused"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def event_document(event: graph_pb2.Event, pending_result: bytes | None = None) -> bytes:
    """The stored bytes of an action event, with a result that arrived before it merged in."""
    if pending_result is None:
        return event.SerializeToString()
    merged = graph_pb2.Event()
    merged.CopyFrom(event)
    _set_result(merged, pending_result)
    return merged.SerializeToString()


def result_document(event: graph_pb2.Event) -> bytes:
    """The bytes of a result event's `result` (an ActionResult), as merged into its action's document."""
    return event.result.SerializeToString()


def with_result(document: bytes, result: bytes, sender: graph_pb2.Event | None = None) -> bytes | None:
    """`document` with `result` merged in; None when it already has one (the first result is
    kept). ProtocolError when the result event `sender` names another workflow, or another
    tenant, than the node's: it would be stored on a node it does not describe (and, as the
    first result, shut out the node's own; found by an attacker's probe)."""
    event = _parse(document)
    if sender is not None and (problem := misplaced_result(sender.workflow_id, sender.tenant, event)) is not None:
        raise ProtocolError(f"result event {sender.event_id[:64]!r} {problem}")
    if event.HasField("result"):
        return None
    _set_result(event, result)
    return event.SerializeToString()


def misplaced_result(workflow_id: str | None, tenant: str | None, node: graph_pb2.Event) -> str | None:
    """Why a result event sent as `workflow_id` and `tenant` is not `node`'s, or None when it
    may be stored on it: the same workflow and the same tenant — an empty tenant is a tenant
    like any other, not a wildcard (a result naming none was merged into any tenant's node). The one
    check for a result that comes after its node (`with_result`) and for one parked before it,
    made when the node arrives: an early result skipped it, so one sent by another tenant for
    a node id not yet stored was merged into that node (an attacker's probe). None for either
    means they were never recorded (a result parked by a store that did not keep them)."""
    if workflow_id is None or tenant is None:
        return "was parked without the workflow and tenant it was sent as, so it cannot be checked against its node"
    if workflow_id != node.workflow_id or tenant != node.tenant:
        return (
            f"is for workflow {workflow_id[:64]!r} of tenant {tenant[:64]!r}, but node {node.node_id[:64]!r} "
            f"is in workflow {node.workflow_id[:64]!r} of tenant {node.tenant[:64]!r}"
        )
    return None


def refused_result(
    event_id: str, workflow_id: str | None, tenant: str | None, node: graph_pb2.Event, problem: str
) -> graph_pb2.Event:
    """The audit record (outcome REJECTED, rule REFUSED_RESULT) of a parked result dropped when
    its node arrived because `misplaced_result` said `problem`. The result event has its own
    record already, written when it was accepted: this one says it was never stored on the node.

    Its event_id is random: a derived one (the result's id and a suffix) could be taken first
    by an event of the attacker's, and the chain's unique event_id would then fail the ingest
    of the node's own event for ever."""
    return graph_pb2.Event(
        event_id=f"{REFUSED_RESULT}/{uuid.uuid4()}",
        workflow_id=workflow_id if workflow_id is not None else node.workflow_id,
        node_id=node.node_id,
        tenant=tenant if tenant is not None else node.tenant,
        outcome=graph_pb2.REJECTED,
        block_code=REFUSED_RESULT,
        block_reason=f"result event {event_id[:64]!r}, parked until its node arrived, was not stored on it: "
        f"it {problem}",
    )


def expire_payload(document: bytes) -> bytes:
    """`document` without its payloads (see Event.payload_expired): what retention keeps."""
    event = _parse(document)
    event.action.ClearField("arguments")
    event.ClearField("arguments_json")
    event.ClearField("redacted_payload")
    if event.HasField("result"):
        event.result.ClearField("redacted_result")
    event.payload_expired = True
    return event.SerializeToString()


def _set_result(event: graph_pb2.Event, result: bytes) -> None:
    event.result.SetInParent()  # present even when every field of the result is a default
    event.result.MergeFromString(result)


def _parse(document: bytes) -> graph_pb2.Event:
    try:
        return graph_pb2.Event.FromString(document)
    except (DecodeError, TypeError) as exc:
        raise StoreError(f"a stored event is not a valid bastion.v1.Event: {exc}") from exc


def edge_rows(event: graph_pb2.Event) -> list[tuple[str, str, str, str, str]]:
    """(workflow, source, target, type, reason) of an event's edges, in the order they are stored.

    Hints first: when a hint and parent_ids name the same CAUSED_BY parent, the first
    stored wins and the hint carries the reason."""
    rows = [
        (
            event.workflow_id,
            event.node_id,
            hint.target_node_id,
            enum_name(graph_pb2.EdgeType.DESCRIPTOR, hint.type),
            hint.reason,
        )
        for hint in event.edges
    ]
    rows.extend((event.workflow_id, event.node_id, parent, CAUSED_BY, "") for parent in event.parent_ids)
    return rows


def take_page(rows: Iterable[R], limit: int, budget: int = MAX_PAGE_BYTES) -> tuple[list[R], bool]:
    """Up to `limit` of `rows` (each a stored event's bytes first), stopping after the row that
    takes their bytes to `budget`; and whether a row follows. Reads one row past the page at
    most, so pass a lazy query result, not a fetched list."""
    page: list[R] = []
    size = 0
    for row in rows:
        if len(page) == limit or size >= budget:
            return page, True
        page.append(row)
        size += len(row[0])
    return page, False


def parse_node(document: bytes, at_ns: int) -> Node:
    return Node(event=_parse(document), at=to_datetime(at_ns))


def parse_legacy_node(document: str | bytes, at_ns: int) -> Node:
    """A node stored as protobuf JSON, as SQLite files before schema version 3 hold them."""
    try:
        event = json_format.ParseDict(orjson.loads(document), graph_pb2.Event(), ignore_unknown_fields=True)
    except (ValueError, json_format.ParseError) as exc:
        raise StoreError(f"a stored event is not valid JSON of bastion.v1.Event: {exc}") from exc
    return Node(event=event, at=to_datetime(at_ns))


def parse_legacy_result(document: str | bytes) -> bytes:
    """A parked result stored as protobuf JSON (SQLite before schema version 3), as bytes."""
    try:
        result = json_format.ParseDict(orjson.loads(document), graph_pb2.ActionResult(), ignore_unknown_fields=True)
    except (ValueError, json_format.ParseError) as exc:
        raise StoreError(f"a parked result is not valid JSON of bastion.v1.ActionResult: {exc}") from exc
    return result.SerializeToString()


def to_datetime(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


def nodes_cursor(workflow_id: str) -> str:
    # The cursor kind names the workflow, so a cursor from one workflow's pages is
    # refused by another's instead of silently skipping its nodes older than the key.
    return f"nodes:{workflow_id}"


def check_depth(max_depth: int) -> None:
    if not 0 <= max_depth <= MAX_LINEAGE_DEPTH:
        raise ProtocolError(f"max_depth must be between 0 and {MAX_LINEAGE_DEPTH}, got {max_depth}")


def check_limit(limit: int, maximum: int) -> None:
    if not 1 <= limit <= maximum:
        raise ProtocolError(f"limit must be between 1 and {maximum}, got {limit}")


def check_snapshot(max_nodes: int, max_edges: int) -> None:
    if max_nodes < 1 or max_edges < 0:
        raise ProtocolError(f"a snapshot needs max_nodes >= 1 and max_edges >= 0, got {max_nodes}, {max_edges}")


def reused_event_id(event: graph_pb2.Event) -> ProtocolError:
    # A result event is stored on its action's node and in the audit chain under its own
    # event_id, so an id two events share would make the chain's unique event_id refuse the
    # batch as a store failure (UNAVAILABLE), which the journal retries for ever: every
    # agent's shipping stalls behind one event (an attacker's probe). Malformed instead, the
    # shipper sets the one event aside.
    return ProtocolError(
        f"event {event.event_id[:64]!r} (node {event.node_id[:64]!r}) reuses the event_id of another event "
        "already stored: every event, result events included, needs its own event_id"
    )


def reused_node_id(event: graph_pb2.Event, owner: str | None) -> ProtocolError:
    # Storing it would lose one of the two events from the audit trail, and ignoring it
    # would hide that; refusing the batch keeps both visible to the sender.
    return ProtocolError(
        f"event {event.event_id!r} reuses node_id {event.node_id!r} of event {owner or '?'!r}: "
        "every event needs its own node_id"
    )
