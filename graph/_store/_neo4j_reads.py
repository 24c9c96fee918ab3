"""The Neo4j graph store's reads (`_neo4j.py` holds the store and its writes): each a plain
function of one read transaction, run on the store's reader threads."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import neo4j

from .._audit import AuditEntry, ChainHead
from ._base import DecisionStats, Edge, Node, Page, ViolationFilter, WorkflowSnapshot, WorkflowSummary
from ._chain import nearest_ranks
from ._common import (
    FIRST_NODE_KEY,
    VIOLATIONS_CURSOR,
    WORKFLOWS_CURSOR,
    nodes_cursor,
    parse_node,
    take_page,
    to_datetime,
)
from ._cursor import encode_cursor
from ._paths import WALKED_EDGES, NodeLookup, StepLookup, order_steps, taint_of

# Edge types stored as relationship types of their own are `_neo4j._EDGE_TYPES`; anything
# else (a newer sender's type) is stored as OTHER_EDGE with its name in a property.
OTHER_EDGE = "RELATED"
_SUMMARY = (
    "x.workflow_id AS workflow_id, x.first_seen_ns AS first, x.last_seen_ns AS last, "
    "x.node_count AS nodes, x.violation_count AS violations, x.agents AS agents"
)
_PATH_NODE = """
MATCH (n:BastionNode {node_id: $id}) WHERE n.event_id IS NOT NULL
RETURN n.workflow_id, n.node_type, n.tool, n.server, n.agent_id, n.outcome, n.event
"""
_STEPS = f"""
MATCH (:BastionNode {{node_id: $id}})-[r]->(t:BastionNode)
WHERE type(r) IN {list(WALKED_EDGES)!r}
RETURN t.node_id, type(r), coalesce(r.reason, '')
"""
_EDGE_KIND = f"CASE type(r) WHEN '{OTHER_EDGE}' THEN r.type ELSE type(r) END"


def select_workflows(tx: neo4j.ManagedTransaction, limit: int, after: tuple[int, str] | None) -> Page[WorkflowSummary]:
    where = ""
    if after is not None:
        where = "WHERE x.last_seen_ns < $t OR (x.last_seen_ns = $t AND x.workflow_id < $k)"
    query = (
        f"MATCH (x:BastionWorkflow) {where} RETURN {_SUMMARY} "
        "ORDER BY x.last_seen_ns DESC, x.workflow_id DESC LIMIT $limit"
    )
    t, k = after if after is not None else (0, "")
    records = list(tx.run(query, t=t, k=k, limit=limit + 1))
    page = records[:limit]
    next_cursor = None
    if len(records) > limit:
        next_cursor = encode_cursor(WORKFLOWS_CURSOR, page[-1]["last"], page[-1]["workflow_id"])
    return Page(items=tuple(_summary(record) for record in page), next_cursor=next_cursor)


def select_workflow(tx: neo4j.ManagedTransaction, workflow_id: str) -> WorkflowSummary | None:
    record = tx.run(f"MATCH (x:BastionWorkflow {{workflow_id: $id}}) RETURN {_SUMMARY}", id=workflow_id).single()
    return _summary(record) if record is not None else None


def _summary(record: neo4j.Record) -> WorkflowSummary:
    return WorkflowSummary(
        workflow_id=record["workflow_id"],
        first_seen=to_datetime(record["first"]),
        last_seen=to_datetime(record["last"]),
        node_count=record["nodes"],
        violation_count=record["violations"],
        agents=tuple(sorted(record["agents"] or ())),
    )


def _select_nodes(
    tx: neo4j.ManagedTransaction, workflow_id: str, limit: int, after: tuple[int, str]
) -> Iterator[tuple[bytes, int, str]]:
    """Up to `limit` (event bytes, at_ns, event_id) after the key `after`, oldest first, as read."""
    query = """
    MATCH (n:BastionNode {workflow_id: $wf})
    WHERE n.at_ns > $t OR (n.at_ns = $t AND n.event_id > $k)
    RETURN n.event AS event, n.at_ns AS at_ns, n.event_id AS event_id
    ORDER BY n.at_ns, n.event_id LIMIT $limit
    """
    return (
        (r["event"], r["at_ns"], r["event_id"])
        for r in tx.run(query, wf=workflow_id, t=after[0], k=after[1], limit=limit)
    )


def select_node_page(
    tx: neo4j.ManagedTransaction, workflow_id: str, limit: int, after: tuple[int, str] | None
) -> Page[Node] | None:
    page, more = take_page(_select_nodes(tx, workflow_id, limit + 1, after or FIRST_NODE_KEY), limit)
    if not page and (after is None or select_workflow(tx, workflow_id) is None):
        return None
    next_cursor = None
    if more:
        next_cursor = encode_cursor(nodes_cursor(workflow_id), page[-1][1], page[-1][2])
    return Page(items=tuple(parse_node(document, at_ns) for document, at_ns, _ in page), next_cursor=next_cursor)


def select_snapshot(
    tx: neo4j.ManagedTransaction, workflow_id: str, max_nodes: int, max_edges: int
) -> WorkflowSnapshot | None:
    summary = select_workflow(tx, workflow_id)
    if summary is None:
        return None
    nodes, more = take_page(_select_nodes(tx, workflow_id, max_nodes + 1, FIRST_NODE_KEY), max_nodes)
    _, last_at_ns, last_event_id = nodes[-1]
    query = f"""
    MATCH (n:BastionNode {{workflow_id: $wf}})-[r]->(t:BastionNode)
    WHERE n.at_ns < $t OR (n.at_ns = $t AND n.event_id <= $k)
    WITH n, r, t, {_EDGE_KIND} AS kind
    RETURN n.node_id AS source, t.node_id AS target, kind, coalesce(r.reason, '') AS reason
    ORDER BY n.at_ns, n.event_id, kind, target LIMIT $limit
    """
    parsed = tuple(parse_node(document, at_ns) for document, at_ns, _ in nodes)
    sources = {node.event.node_id for node in parsed}
    edges = [
        Edge(source=r["source"], target=r["target"], type=r["kind"], reason=r["reason"])
        for r in tx.run(query, wf=workflow_id, t=last_at_ns, k=last_event_id, limit=max_edges + 1)
        if r["source"] in sources  # see the module docstring: read committed, not a snapshot
    ]
    return WorkflowSnapshot(
        summary=summary,
        nodes=parsed,
        edges=tuple(edges[:max_edges]),
        truncated=more or len(edges) > max_edges,
    )


def select_violations(
    tx: neo4j.ManagedTransaction, filters: ViolationFilter, limit: int, after: tuple[int, str] | None
) -> Page[Node]:
    # Built only from the constant fragments below; every value is a parameter.
    clauses = ["n.violation = true"]
    if filters.workflow_id is not None:
        clauses.append("n.workflow_id = $wf")
    if filters.agent_id is not None:
        clauses.append("n.agent_id = $agent")
    if filters.tenant is not None:
        clauses.append("n.tenant = $tenant")
    if after is not None:
        clauses.append("(n.at_ns < $t OR (n.at_ns = $t AND n.event_id < $k))")
    query = (
        f"MATCH (n:BastionNode) WHERE {' AND '.join(clauses)} "
        "RETURN n.event AS event, n.at_ns AS at_ns, n.event_id AS event_id "
        "ORDER BY n.at_ns DESC, n.event_id DESC LIMIT $limit"
    )
    t, k = after if after is not None else (0, "")
    values: dict[str, Any] = {"wf": filters.workflow_id, "agent": filters.agent_id, "tenant": filters.tenant}
    page, more = take_page(tx.run(query, values, t=t, k=k, limit=limit + 1), limit)
    next_cursor = None
    if more:
        next_cursor = encode_cursor(VIOLATIONS_CURSOR, page[-1]["at_ns"], page[-1]["event_id"])
    return Page(items=tuple(parse_node(r["event"], r["at_ns"]) for r in page), next_cursor=next_cursor)


def lookups(tx: neo4j.ManagedTransaction) -> tuple[NodeLookup, StepLookup]:
    """The two lookups a walk (bastion.graph._store._paths) takes per step."""

    def node(node_id: str) -> Any:
        record = tx.run(_PATH_NODE, id=node_id).single()
        if record is None:
            return None
        values = record.values()
        return (*values[:6], taint_of(values[6]))

    def steps(node_id: str) -> list[tuple[str, str, str]]:
        return order_steps([tuple(record.values()) for record in tx.run(_STEPS, id=node_id)])

    return node, steps


def select_head(tx: neo4j.ManagedTransaction) -> ChainHead | None:
    record = tx.run("MATCH (h:BastionAuditHead {id: 1}) RETURN h.seq AS seq, h.hash AS hash").single()
    if record is None or not record["seq"]:
        return None
    return ChainHead(sequence=record["seq"], hash=record["hash"])


def select_entries(
    tx: neo4j.ManagedTransaction, after: int, limit: int, bounds: dict[str, int | None]
) -> list[AuditEntry]:
    clauses = ["a.seq > $after"]
    for name, clause in (
        ("through", "a.seq <= $through"),
        ("since", "a.recorded_ns >= $since"),
        ("until", "a.recorded_ns < $until"),
    ):
        if bounds[name] is not None:
            clauses.append(clause)
    query = (
        f"MATCH (a:BastionAudit) WHERE {' AND '.join(clauses)} "
        "RETURN a.seq AS seq, a.prev_hash AS prev, a.hash AS hash, a.record AS record ORDER BY a.seq LIMIT $limit"
    )
    return [
        AuditEntry(sequence=r["seq"], prev_hash=r["prev"], hash=r["hash"], record=bytes(r["record"]))
        for r in tx.run(query, {"after": after, "limit": limit, **bounds})
    ]


def select_decision_stats(tx: neo4j.ManagedTransaction, since_ns: int, percentiles: Sequence[float]) -> DecisionStats:
    window = "MATCH (a:BastionAudit) WHERE a.kind = 'decision' AND a.at_ns >= $since"
    by_rule: dict[str, tuple[int, int]] = {}
    decisions = blocked = fallbacks = timed = 0
    query = (
        f"{window} RETURN a.rule_id AS rule, count(*) AS n, sum(CASE WHEN a.blocked THEN 1 ELSE 0 END) AS blocked, "
        "sum(CASE WHEN a.fallback THEN 1 ELSE 0 END) AS fallbacks, count(a.latency_ns) AS timed"
    )
    for record in tx.run(query, since=since_ns):
        by_rule[record["rule"]] = (record["n"], record["blocked"])
        decisions += record["n"]
        blocked += record["blocked"]
        fallbacks += record["fallbacks"]
        timed += record["timed"]
    latencies: dict[float, int] = {}
    if timed:
        # The value at each wanted rank, read by the index's order: constant memory
        # however many decisions the window holds.
        rank_query = f"{window} AND a.latency_ns IS NOT NULL RETURN a.latency_ns AS v ORDER BY v SKIP $rank LIMIT 1"
        for rank, wanted in nearest_ranks(percentiles, timed).items():
            found = tx.run(rank_query, since=since_ns, rank=rank).single()
            for p in wanted:
                if found is not None:
                    latencies[p] = found["v"]
    return DecisionStats(decisions, blocked, fallbacks, latencies, by_rule)
