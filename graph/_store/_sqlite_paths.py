"""Walks back through the SQLite graph: `lineage` (the gRPC Lineage answer) and the drift path.

Both take one edge per step, preferring provenance over delegation over sequence
(INFORMED_BY, then DELEGATED_TO, then CAUSED_BY; ties to the smallest node id, so a
walk is reproducible), never revisit a node (hostile or buggy input may hold cycles),
and stop after `max_depth` edges. The drift path adds one rule: once it has followed an
INFORMED_BY edge it follows only those, and the node where they end is where the data
came in (`untrusted_data`); a node informed by nothing is walked back to its root.
Each step is two indexed lookups, so a walk costs O(depth), whatever the graph's size.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from bastion.v1 import graph_pb2

from ._base import DriftPath, LineageHop

_SELECT_NODE = "SELECT workflow_id, node_type, tool, server, agent_id, outcome FROM nodes WHERE node_id = ?"
_SELECT_STEPS = """
SELECT target, type, reason FROM edges
WHERE source = ? AND type IN ('INFORMED_BY', 'DELEGATED_TO', 'CAUSED_BY')
ORDER BY CASE type WHEN 'INFORMED_BY' THEN 0 WHEN 'DELEGATED_TO' THEN 1 ELSE 2 END, target
"""
_INFORMED_BY = graph_pb2.EdgeType.Name(graph_pb2.INFORMED_BY)
_LINEAGE_EDGES = frozenset({_INFORMED_BY, graph_pb2.EdgeType.Name(graph_pb2.CAUSED_BY)})
_NOT_INGESTED = (graph_pb2.NodeType.Name(graph_pb2.NODE_TYPE_UNSPECIFIED), "", "", "", "")


def walk_lineage(
    connection: sqlite3.Connection, workflow_id: str, node_id: str, max_depth: int
) -> tuple[LineageHop, ...] | None:
    """INFORMED_BY and CAUSED_BY only; `workflow_id` may be empty (any workflow)."""
    path = _walk(connection, workflow_id, node_id, max_depth, drift=False)
    return path.hops if path is not None else None


def walk_drift(connection: sqlite3.Connection, workflow_id: str, node_id: str, max_depth: int) -> DriftPath | None:
    return _walk(connection, workflow_id, node_id, max_depth, drift=True)


def _walk(
    connection: sqlite3.Connection, workflow_id: str, node_id: str, max_depth: int, *, drift: bool
) -> DriftPath | None:
    start = connection.execute(_SELECT_NODE, (node_id,)).fetchone()
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
        steps = [
            step
            for step in connection.execute(_SELECT_STEPS, (current,))
            if (step[1] == _INFORMED_BY if informed else drift or step[1] in _LINEAGE_EDGES)
        ]
        fresh = [step for step in steps if step[0] not in seen]
        if not fresh:
            origin = "cycle" if steps else ("untrusted_data" if informed else "workflow_root")
            break
        target, via, reason = fresh[0]
        informed = drift and (informed or via == _INFORMED_BY)
        hops.append(_hop(current, info, via, reason))
        current = target
        seen.add(target)
        found = connection.execute(_SELECT_NODE, (target,)).fetchone()
        if found is None:
            # Named by an edge but not (yet) ingested: the walk cannot see past it.
            info = ("", *_NOT_INGESTED)
            origin = "not_ingested"
            break
        info = tuple(found)
    hops.append(_hop(current, info, None, ""))
    return DriftPath(hops=tuple(hops), origin=origin)


def _hop(node_id: str, info: tuple[Any, ...], via: str | None, reason: str) -> LineageHop:
    workflow_id, node_type, tool, server, agent_id, outcome = info
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
    )
