"""Walks back through a stored graph: `lineage` (the gRPC Lineage answer) and the drift path.

Both take one edge per step, preferring provenance over delegation over sequence
(INFORMED_BY, then DELEGATED_TO, then CAUSED_BY; ties to the smallest node id, so a
walk is reproducible), never revisit a node (hostile or buggy input may hold cycles),
and stop after `max_depth` edges. The drift path adds one rule: once it has followed an
INFORMED_BY edge it follows only those, and the node where they end is where the data
came in (`untrusted_data`); a node informed by nothing is walked back to its root.
Each step is two indexed lookups, so a walk costs O(depth), whatever the graph's size.
A backend supplies the two lookups (`NodeLookup`, `StepLookup`); the walk is the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from bastion.v1 import graph_pb2

from ._base import DriftPath, LineageHop

#: node id -> (workflow_id, node_type, tool, server, agent_id, outcome, taint labels), None
#: when never ingested.
NodeLookup = Callable[[str], Sequence[Any] | None]
#: node id -> its (target, type, reason) edges of the three walked types, INFORMED_BY
#: first, then DELEGATED_TO, then CAUSED_BY, each by target.
StepLookup = Callable[[str], Sequence[tuple[str, str, str]]]
WALKED_EDGES = ("INFORMED_BY", "DELEGATED_TO", "CAUSED_BY")
_INFORMED_BY = graph_pb2.EdgeType.Name(graph_pb2.INFORMED_BY)
_LINEAGE_EDGES = frozenset({_INFORMED_BY, graph_pb2.EdgeType.Name(graph_pb2.CAUSED_BY)})
_NOT_INGESTED = (graph_pb2.NodeType.Name(graph_pb2.NODE_TYPE_UNSPECIFIED), "", "", "", "", ())


def walk_lineage(
    node: NodeLookup, steps: StepLookup, workflow_id: str, node_id: str, max_depth: int
) -> tuple[LineageHop, ...] | None:
    """INFORMED_BY and CAUSED_BY only; `workflow_id` may be empty (any workflow)."""
    path = _walk(node, steps, workflow_id, node_id, max_depth, drift=False)
    return path.hops if path is not None else None


def walk_drift(node: NodeLookup, steps: StepLookup, workflow_id: str, node_id: str, max_depth: int) -> DriftPath | None:
    return _walk(node, steps, workflow_id, node_id, max_depth, drift=True)


def taint_of(document: bytes | None) -> tuple[str, ...]:
    """A stored event's taint labels (its bytes), for a hop."""
    return tuple(graph_pb2.Event.FromString(document).taint) if document else ()


def order_steps(steps: Sequence[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """Walked edges only, in the order a walk prefers them (see `StepLookup`)."""
    rank = {name: index for index, name in enumerate(WALKED_EDGES)}
    return sorted((step for step in steps if step[1] in rank), key=lambda step: (rank[step[1]], step[0]))


def _walk(
    node: NodeLookup, steps: StepLookup, workflow_id: str, node_id: str, max_depth: int, *, drift: bool
) -> DriftPath | None:
    start = node(node_id)
    if start is None or (workflow_id and start[0] != workflow_id):
        return None
    hops: list[LineageHop] = []
    current, info = node_id, tuple(start)
    seen = {node_id}
    informed = False
    while True:
        if len(hops) == max_depth:
            origin = "depth_limit"
            break
        candidates = [
            step
            for step in steps(current)
            if (step[1] == _INFORMED_BY if informed else drift or step[1] in _LINEAGE_EDGES)
        ]
        fresh = [step for step in candidates if step[0] not in seen]
        if not fresh:
            origin = "cycle" if candidates else ("untrusted_data" if informed else "workflow_root")
            break
        target, via, reason = fresh[0]
        informed = drift and (informed or via == _INFORMED_BY)
        hops.append(_hop(current, info, via, reason))
        current = target
        seen.add(target)
        found = node(target)
        if found is None:
            # Named by an edge but not (yet) ingested: the walk cannot see past it.
            info = ("", *_NOT_INGESTED)
            origin = "not_ingested"
            break
        info = tuple(found)
    hops.append(_hop(current, info, None, ""))
    return DriftPath(hops=tuple(hops), origin=origin)


def _hop(node_id: str, info: tuple[Any, ...], via: str | None, reason: str) -> LineageHop:
    workflow_id, node_type, tool, server, agent_id, outcome, taint = info
    return LineageHop(
        node_id=node_id,
        node_type=node_type,
        via=via,
        reason=reason,
        tool=tool,
        workflow_id=workflow_id,
        agent_id=agent_id,
        server=server,
        outcome=outcome,
        taint=tuple(taint),
    )
