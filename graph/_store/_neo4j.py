"""The Neo4j graph store, for graphs beyond one machine's SQLite file (BASTION_GRAPH_URL=neo4j://…).

Why this shape:

- The official `neo4j` driver, synchronous, on threads of the store's own (one writer,
  a few readers), as the SQLite store does: the async driver would save nothing the
  thread hop costs, and the walks and audit queries stay plain functions shared with
  SQLite (`_paths`, `_chain`).
- One graph node per action (`:BastionNode`, keyed by `node_id`, holding the event's JSON
  as SQLite does, so REST shows the same document whichever backend held it); edges are
  relationships of their own type (`CAUSED_BY`, `INFORMED_BY`, `VERIFIED_BY`,
  `DELEGATED_TO`), so `MATCH (a)-[:INFORMED_BY*]->(b)` works for anyone querying the
  graph directly. An edge to a node not yet ingested points at a placeholder node with
  only a `node_id`, which the node fills when it arrives.
- Each Ingest batch is one write transaction of a handful of statements whatever its
  size: one lookup of every id the batch names, then the decisions made here in Python
  (exactly the SQLite store's rules, in the same order), then one statement each for
  the new nodes, each edge type present, results, workflow summaries and audit rows.
- The audit chain's head is one node (`:BastionAuditHead`). Every batch writes it
  first, which takes its write lock, so batches chain one after another even when
  several graph services share the database; the rows and the head move in the same
  transaction as the nodes, so an event is stored with its record or not at all.
- Neo4j has no triggers in its community edition: nothing stops someone with database
  access from editing an audit node. `GET /audit/verify` then names the first record
  changed, as it does for SQLite.
- Neo4j's transactions read committed data, not a snapshot: a snapshot's edges are
  kept only when their source is among the nodes returned, so no edge names a node
  the answer lacks.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import neo4j
import orjson
from neo4j import exceptions as neo4j_errors

from bastion._errors import ConfigError, StoreError
from bastion.v1 import graph_pb2

from .._audit import GENESIS, AuditEntry, ChainHead
from .._events import enum_name, event_time_ns, is_violation
from .._verifications import verification_edge, verification_nodes
from ._base import (
    DEFAULT_AUDIT_PAGE,
    DEFAULT_EXPIRY_BATCH,
    DEFAULT_LINEAGE_DEPTH,
    DEFAULT_NODE_PAGE_SIZE,
    DEFAULT_PAGE_SIZE,
    MAX_AUDIT_PAGE,
    MAX_NODE_PAGE_SIZE,
    MAX_PAGE_SIZE,
    MAX_SNAPSHOT_EDGES,
    MAX_SNAPSHOT_NODES,
    DecisionStats,
    DriftPath,
    IngestResult,
    LineageHop,
    Node,
    Page,
    StoredCheckpoint,
    ViolationFilter,
    WorkflowSnapshot,
    WorkflowSummary,
)
from ._chain import AuditRow, ChainCursor
from ._common import (
    VIOLATIONS_CURSOR,
    WORKFLOWS_CURSOR,
    check_depth,
    check_limit,
    check_snapshot,
    edge_rows,
    event_document,
    expire_payload,
    misplaced_result,
    nodes_cursor,
    refused_result,
    result_document,
    reused_event_id,
    reused_node_id,
    with_result,
)
from ._cursor import decode_cursor
from ._neo4j_reads import (
    OTHER_EDGE,
    lookups,
    select_decision_stats,
    select_entries,
    select_head,
    select_node_page,
    select_snapshot,
    select_violations,
    select_workflow,
    select_workflows,
)
from ._paths import walk_drift, walk_lineage

R = TypeVar("R")

SCHEMES = ("neo4j://", "neo4j+s://", "neo4j+ssc://", "bolt://", "bolt+s://", "bolt+ssc://")
# 1: the first. 2: who sent a parked result (pending_workflow_id, pending_tenant), backfilled
# from its audit record (`_backfill_senders`).
_SCHEMA_VERSION = 2
# Edge types stored as relationship types of their own; anything else (a newer
# sender's type) as OTHER_EDGE (RELATED) with the name in a property, so nothing is dropped.
_EDGE_TYPES = ("CAUSED_BY", "INFORMED_BY", "VERIFIED_BY", "DELEGATED_TO")

_SCHEMA = (
    "CREATE CONSTRAINT bastion_node_id IF NOT EXISTS FOR (n:BastionNode) REQUIRE n.node_id IS UNIQUE",
    "CREATE CONSTRAINT bastion_node_event IF NOT EXISTS FOR (n:BastionNode) REQUIRE n.event_id IS UNIQUE",
    "CREATE CONSTRAINT bastion_workflow_id IF NOT EXISTS FOR (w:BastionWorkflow) REQUIRE w.workflow_id IS UNIQUE",
    "CREATE CONSTRAINT bastion_audit_seq IF NOT EXISTS FOR (a:BastionAudit) REQUIRE a.seq IS UNIQUE",
    "CREATE CONSTRAINT bastion_audit_event IF NOT EXISTS FOR (a:BastionAudit) REQUIRE a.event_id IS UNIQUE",
    "CREATE CONSTRAINT bastion_audit_head IF NOT EXISTS FOR (h:BastionAuditHead) REQUIRE h.id IS UNIQUE",
    "CREATE CONSTRAINT bastion_checkpoint_seq IF NOT EXISTS FOR (c:BastionAuditCheckpoint) REQUIRE c.seq IS UNIQUE",
    "CREATE CONSTRAINT bastion_schema IF NOT EXISTS FOR (s:BastionSchema) REQUIRE s.id IS UNIQUE",
    "CREATE INDEX bastion_node_workflow IF NOT EXISTS FOR (n:BastionNode) ON (n.workflow_id, n.at_ns)",
    "CREATE INDEX bastion_node_violation IF NOT EXISTS FOR (n:BastionNode) ON (n.violation, n.at_ns)",
    "CREATE INDEX bastion_node_time IF NOT EXISTS FOR (n:BastionNode) ON (n.at_ns)",
    "CREATE INDEX bastion_workflow_recency IF NOT EXISTS FOR (w:BastionWorkflow) ON (w.last_seen_ns)",
    "CREATE INDEX bastion_audit_recorded IF NOT EXISTS FOR (a:BastionAudit) ON (a.recorded_ns)",
    "CREATE INDEX bastion_audit_kind IF NOT EXISTS FOR (a:BastionAudit) ON (a.kind, a.at_ns)",
)
_INIT = """
MERGE (s:BastionSchema {id: 1}) ON CREATE SET s.version = $version
MERGE (h:BastionAuditHead {id: 1}) ON CREATE SET h.seq = 0, h.hash = $genesis, h.recorded_ns = 0
RETURN s.version AS version
"""
# Writing the head first takes its lock for the whole transaction (see the module docstring).
_PARKED_WITHOUT_SENDER = """
MATCH (n:BastionNode) WHERE n.pending_result IS NOT NULL AND n.pending_workflow_id IS NULL
OPTIONAL MATCH (a:BastionAudit {event_id: n.pending_event_id})
RETURN n.node_id AS node_id, a.record AS record
"""
_SET_SENDERS = """
UNWIND $rows AS r MATCH (n:BastionNode {node_id: r.node_id})
SET n.pending_workflow_id = r.workflow_id, n.pending_tenant = r.tenant
"""
_SET_VERSION = "MATCH (s:BastionSchema {id: 1}) SET s.version = $version"
_LOCK_HEAD = """
MATCH (h:BastionAuditHead {id: 1}) SET h.batches = coalesce(h.batches, 0) + 1
RETURN h.seq AS seq, h.hash AS hash, h.recorded_ns AS recorded_ns
"""
_LOOKUP = """
UNWIND $rows AS r
OPTIONAL MATCH (e:BastionNode {event_id: r.event_id})
OPTIONAL MATCH (n:BastionNode {node_id: r.node_id})
OPTIONAL MATCH (a:BastionAudit {event_id: r.event_id})
RETURN r.event_id AS event_id, e IS NOT NULL AS seen, a IS NOT NULL AS audited, r.node_id AS node_id,
       n.event_id AS owner, n.event AS event, n.pending_result AS pending, n.pending_event_id AS pending_event,
       n.pending_workflow_id AS pending_workflow, n.pending_tenant AS pending_tenant
"""
_CREATE_NODES = """
UNWIND $rows AS r
MERGE (n:BastionNode {node_id: r.node_id})
SET n += r.props
REMOVE n.pending_result, n.pending_event_id, n.pending_workflow_id, n.pending_tenant
"""
# One small statement per edge type present in a batch: Neo4j plans a statement on first
# use and again as the graph's statistics move, and a statement of one MERGE plans in
# milliseconds where one with a FOREACH per type took a second.
_MERGE_EDGES = """
UNWIND $rows AS e
MATCH (n:BastionNode {{node_id: e.source}})
MERGE (t:BastionNode {{node_id: e.target}})
MERGE (n)-[x:{kind}]->(t) ON CREATE SET x.reason = e.reason
"""
_MERGE_OTHER_EDGES = f"""
UNWIND $rows AS e
MATCH (n:BastionNode {{node_id: e.source}})
MERGE (t:BastionNode {{node_id: e.target}})
MERGE (n)-[x:{OTHER_EDGE} {{type: e.type}}]->(t) ON CREATE SET x.reason = e.reason
"""
_UPDATE_RESULTS = "UNWIND $rows AS r MATCH (n:BastionNode {node_id: r.node_id}) SET n.event = r.event"
_PARK_RESULTS = """
UNWIND $rows AS r MERGE (n:BastionNode {node_id: r.node_id})
SET n.pending_result = r.result, n.pending_event_id = r.event_id, n.pending_workflow_id = r.workflow_id,
    n.pending_tenant = r.tenant
"""
_UPDATE_WORKFLOWS = """
UNWIND $rows AS w
MERGE (x:BastionWorkflow {workflow_id: w.workflow_id})
ON CREATE SET x.first_seen_ns = w.first, x.last_seen_ns = w.last, x.node_count = 0,
              x.violation_count = 0, x.agents = []
SET x.first_seen_ns = CASE WHEN w.first < x.first_seen_ns THEN w.first ELSE x.first_seen_ns END,
    x.last_seen_ns = CASE WHEN w.last > x.last_seen_ns THEN w.last ELSE x.last_seen_ns END,
    x.node_count = x.node_count + w.count,
    x.violation_count = x.violation_count + w.violations,
    x.agents = x.agents + [a IN w.agents WHERE NOT a IN x.agents]
"""
_APPEND_AUDIT = """
UNWIND $rows AS a CREATE (r:BastionAudit) SET r = a
WITH count(*) AS appended
MATCH (h:BastionAuditHead {id: 1}) SET h.seq = $seq, h.hash = $hash, h.recorded_ns = $recorded_ns
"""
_TO_EXPIRE = """
MATCH (n:BastionNode) WHERE n.at_ns < $before AND n.event IS NOT NULL AND n.payload_expired IS NULL
RETURN n.node_id AS node_id, n.event AS event ORDER BY n.at_ns LIMIT $limit
"""
_EXPIRE = "UNWIND $rows AS r MATCH (n:BastionNode {node_id: r.node_id}) SET n.event = r.event, n.payload_expired = true"
_ADD_CHECKPOINT = """
OPTIONAL MATCH (old:BastionAuditCheckpoint {seq: $seq})
WITH old WHERE old IS NULL
CREATE (c:BastionAuditCheckpoint {seq: $seq, hash: $hash, token: $token})
RETURN true AS created
"""
_CHECKPOINTS = "MATCH (c:BastionAuditCheckpoint)"
_CHECKPOINT_FIELDS = "RETURN c.seq, c.hash, c.token"
_TENANTS = (
    "MATCH (n:BastionNode) WHERE n.workflow_id IN $ids "
    "RETURN n.workflow_id AS wf, collect(DISTINCT n.tenant) AS tenants"
)


@dataclass(slots=True)
class _NodeState:
    """What the batch being planned knows of one node id (see `_Plan`)."""

    owner: str | None = None
    document: bytes | None = None
    pending: bytes | None = None
    #: The parked result's event id and the workflow and tenant it was sent as (None: unknown).
    sender: tuple[str, str | None, str | None] = ("", None, None)
    created: bool = False
    changed: bool = False


@dataclass(slots=True)
class _Plan:
    """One batch's writes, decided before any is made."""

    nodes: dict[str, _NodeState]
    seen: set[str]
    #: Event ids the audit chain holds, or will once the batch commits.
    audited: set[str] = field(default_factory=set)
    new_nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Relationship type (or OTHER_EDGE) -> (source, target, type, reason) rows, in stored order.
    edges: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    #: node id -> (event id, result, workflow id, tenant) of results parked until their node arrives.
    parked: dict[str, tuple[str, bytes, str, str]] = field(default_factory=dict)
    #: Audit records of parked results refused when their node arrived (`refused_result`), by the node's event id.
    refusals: dict[str, list[graph_pb2.Event]] = field(default_factory=dict)
    workflows: dict[str, dict[str, Any]] = field(default_factory=dict)
    audit: list[AuditRow] = field(default_factory=list)


def split_url(url: str) -> tuple[str, tuple[str, str] | None, str | None]:
    """(driver URI without credentials, (user, password) or None, database or None) of a
    BASTION_GRAPH_URL such as neo4j://bastion:secret@graph-db:7687/bastion."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise ConfigError(f"BASTION_GRAPH_URL: {_redacted(url)!r} names no host")
    auth = None
    if parts.username is not None:
        auth = (unquote(parts.username), unquote(parts.password or ""))
    netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    database = unquote(parts.path.strip("/")) or None
    if database is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9.\-]{2,62}", database):
        raise ConfigError(f"BASTION_GRAPH_URL: {database!r} is not a Neo4j database name")
    return urlunsplit((parts.scheme, netloc, "", "", "")), auth, database


def _redacted(url: str) -> str:
    """The URL without its password: error messages and logs must not carry it."""
    return re.sub(r"//([^:/@]*):[^@]*@", r"//\1:***@", url)


class Neo4jGraphStore:
    """`GraphStore` on a Neo4j 5 database (see the module docstring for the design)."""

    def __init__(self, url: str, *, readers: int = 4) -> None:
        """Connect and create the schema. Blocking; async code uses `await Neo4jGraphStore.open(url)`."""
        uri, auth, database = split_url(url)
        self._name = _redacted(url)
        self._database = database
        try:
            self._driver = neo4j.GraphDatabase.driver(
                uri,
                auth=auth,
                connection_timeout=5.0,
                max_transaction_retry_time=10.0,
                # The server's notices (a property key no node has yet, on an empty
                # database) are about query style, not failures: not for operators' logs.
                notifications_min_severity="OFF",
            )
        except (ValueError, neo4j_errors.ConfigurationError) as exc:
            raise ConfigError(f"BASTION_GRAPH_URL={self._name!r}: {exc}") from exc
        try:
            self._driver.verify_connectivity()
            self._prepare()
        except BaseException:
            self._driver.close()
            raise
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="graph-neo4j-write")
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="graph-neo4j-read")
        self._closed = False

    @classmethod
    async def open(cls, url: str, *, readers: int = 4) -> Neo4jGraphStore:
        try:
            return await asyncio.to_thread(cls, url, readers=readers)
        except (neo4j_errors.Neo4jError, neo4j_errors.DriverError, OSError) as exc:
            raise StoreError(f"graph store open failed ({_redacted(url)}): {exc}") from exc

    async def ingest(self, events: Sequence[graph_pb2.Event]) -> IngestResult:
        self._check_open()
        if not events:
            return IngestResult(accepted=0, duplicates=0)
        batch = tuple(events)
        accepted = await self._run(self._writer, lambda session: session.execute_write(_commit, batch))
        return IngestResult(accepted=accepted, duplicates=len(batch) - accepted)

    async def list_workflows(
        self, *, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
    ) -> Page[WorkflowSummary]:
        check_limit(limit, MAX_PAGE_SIZE)
        after = decode_cursor(WORKFLOWS_CURSOR, cursor) if cursor is not None else None
        return await self._read(lambda tx: select_workflows(tx, limit, after))

    async def workflow(self, workflow_id: str) -> WorkflowSummary | None:
        return await self._read(lambda tx: select_workflow(tx, workflow_id))

    async def workflow_tenants(self, workflow_ids: Sequence[str]) -> Mapping[str, frozenset[str]]:
        records = await self._read(lambda tx: list(tx.run(_TENANTS, ids=list(workflow_ids))))
        return {record["wf"]: frozenset(record["tenants"]) for record in records}

    async def nodes(
        self, workflow_id: str, *, limit: int = DEFAULT_NODE_PAGE_SIZE, cursor: str | None = None
    ) -> Page[Node] | None:
        check_limit(limit, MAX_NODE_PAGE_SIZE)
        after = decode_cursor(nodes_cursor(workflow_id), cursor) if cursor is not None else None
        return await self._read(lambda tx: select_node_page(tx, workflow_id, limit, after))

    async def snapshot(
        self, workflow_id: str, *, max_nodes: int = MAX_SNAPSHOT_NODES, max_edges: int = MAX_SNAPSHOT_EDGES
    ) -> WorkflowSnapshot | None:
        check_snapshot(max_nodes, max_edges)
        return await self._read(lambda tx: select_snapshot(tx, workflow_id, max_nodes, max_edges))

    async def violations(
        self, filters: ViolationFilter, *, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
    ) -> Page[Node]:
        check_limit(limit, MAX_PAGE_SIZE)
        after = decode_cursor(VIOLATIONS_CURSOR, cursor) if cursor is not None else None
        return await self._read(lambda tx: select_violations(tx, filters, limit, after))

    async def lineage(
        self, workflow_id: str, node_id: str, max_depth: int = DEFAULT_LINEAGE_DEPTH
    ) -> Sequence[LineageHop] | None:
        check_depth(max_depth)
        return await self._read(lambda tx: walk_lineage(*lookups(tx), workflow_id, node_id, max_depth))

    async def drift_path(
        self, workflow_id: str, node_id: str, max_depth: int = DEFAULT_LINEAGE_DEPTH
    ) -> DriftPath | None:
        check_depth(max_depth)
        return await self._read(lambda tx: walk_drift(*lookups(tx), workflow_id, node_id, max_depth))

    async def audit_head(self) -> ChainHead | None:
        return await self._read(select_head)

    async def audit_entries(
        self,
        *,
        after: int = 0,
        limit: int = DEFAULT_AUDIT_PAGE,
        through: int | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
    ) -> Sequence[AuditEntry]:
        check_limit(limit, MAX_AUDIT_PAGE)
        bounds = {"through": through, "since": since_ns, "until": until_ns}
        return await self._read(lambda tx: select_entries(tx, after, limit, bounds))

    async def decision_stats(self, since_ns: int, percentiles: Sequence[float]) -> DecisionStats:
        return await self._read(lambda tx: select_decision_stats(tx, since_ns, percentiles))

    async def expire_payloads(self, before_ns: int, limit: int = DEFAULT_EXPIRY_BATCH) -> int:
        check_limit(limit, MAX_AUDIT_PAGE)

        def write(tx: neo4j.ManagedTransaction) -> int:
            rows = [
                {"node_id": r["node_id"], "event": expire_payload(r["event"])}
                for r in tx.run(_TO_EXPIRE, before=before_ns, limit=limit)
            ]
            tx.run(_EXPIRE, rows=rows).consume()
            return len(rows)

        return await self._run(self._writer, lambda session: session.execute_write(write))

    async def add_checkpoint(self, checkpoint: StoredCheckpoint) -> bool:
        def write(tx: neo4j.ManagedTransaction) -> bool:
            found = tx.run(_ADD_CHECKPOINT, seq=checkpoint.sequence, hash=checkpoint.hash, token=checkpoint.token)
            record = found.single()
            return bool(record and record["created"])

        return await self._run(self._writer, lambda session: session.execute_write(write))

    async def checkpoints(self, *, after: int = 0, limit: int = DEFAULT_AUDIT_PAGE) -> Sequence[StoredCheckpoint]:
        check_limit(limit, MAX_AUDIT_PAGE)
        query = f"{_CHECKPOINTS} WHERE c.seq > $after {_CHECKPOINT_FIELDS} ORDER BY c.seq LIMIT $limit"
        return await self._read(
            lambda tx: [StoredCheckpoint(*r.values()) for r in tx.run(query, after=after, limit=limit)]
        )

    async def last_checkpoint(self) -> StoredCheckpoint | None:
        query = f"{_CHECKPOINTS} {_CHECKPOINT_FIELDS} ORDER BY c.seq DESC LIMIT 1"
        found = await self._read(lambda tx: tx.run(query).single())
        return StoredCheckpoint(*found.values()) if found is not None else None

    async def ping(self) -> None:
        self._check_open()
        await self._read(lambda tx: tx.run("MATCH (h:BastionAuditHead {id: 1}) RETURN h.seq").single())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._release)

    def _release(self) -> None:
        self._writer.shutdown(wait=True)  # queued batches finish first
        self._readers.shutdown(wait=True)
        self._driver.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"graph store {self._name} is closed")

    def _prepare(self) -> None:
        with self._session() as session:
            for statement in _SCHEMA:
                session.run(statement).consume()
            found = session.run(_INIT, version=_SCHEMA_VERSION, genesis=GENESIS).single()
            version = found["version"] if found is not None else None
            if version == 1:
                session.execute_write(_backfill_senders)
                version = _SCHEMA_VERSION
        if version != _SCHEMA_VERSION:
            raise StoreError(
                f"{self._name} has graph schema version {version}, which this Bastion does not know "
                f"({_SCHEMA_VERSION}); upgrade Bastion or point BASTION_GRAPH_URL at another database"
            )

    def _session(self) -> neo4j.Session:
        return self._driver.session(database=self._database) if self._database else self._driver.session()

    async def _read(self, query: Callable[[neo4j.ManagedTransaction], R]) -> R:
        return await self._run(self._readers, lambda session: session.execute_read(query))

    async def _run(self, pool: ThreadPoolExecutor, work: Callable[[neo4j.Session], R]) -> R:
        self._check_open()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, self._in_session, work)

    def _in_session(self, work: Callable[[neo4j.Session], R]) -> R:
        try:
            with self._session() as session:
                return work(session)
        except (neo4j_errors.Neo4jError, neo4j_errors.DriverError, OSError) as exc:
            raise StoreError(f"graph store {self._name} failed: {exc}") from exc


# --- ingest -----------------------------------------------------------------------------


def _commit(tx: neo4j.ManagedTransaction, events: tuple[graph_pb2.Event, ...]) -> int:
    """One batch in one transaction; the number of events stored (the rest were duplicates).

    The driver reruns this function when a transient error aborts the transaction, so
    it starts from what the database holds, never from state kept between attempts."""
    head = tx.run(_LOCK_HEAD).single()
    if head is None:
        raise StoreError("the audit chain's head node is missing; restart the graph service to recreate it")
    cursor = ChainCursor(head["seq"], head["hash"], head["recorded_ns"])
    # The VERIFICATION nodes each action would add (bastion.graph._verifications), looked
    # up with the batch's own ids so one whose id is taken is known before anything is written.
    derived = {event.event_id: verification_nodes(event) for event in events}
    plan = _lookup(tx, [*events, *(node for nodes in derived.values() for node in nodes)])
    received_ns = time.time_ns()
    accepted = 0
    for event in events:
        if event.HasField("result"):
            stored = _plan_result(plan, event)
        else:
            stored = _plan_node(plan, event, received_ns, derived[event.event_id])
        if stored:
            # As SQLite (_sqlite._check_event_id): an event_id another event holds is refused.
            if event.event_id in plan.audited or (event.HasField("result") and event.event_id in plan.seen):
                raise reused_event_id(event)
            accepted += 1
            for record in (event, *plan.refusals.get(event.event_id, ())):
                row = cursor.next_row(record, received_ns)
                if row is not None:
                    plan.audit.append(row)
                    plan.audited.add(row.event_id)
    _write(tx, plan)
    return accepted


def _backfill_senders(tx: neo4j.ManagedTransaction) -> None:
    """Schema 1 to 2: the workflow and tenant each parked result was sent as, from its audit
    record (written with it), so the check made when its node arrives can be made. One with
    no record keeps none, and is refused when its node arrives (fail closed)."""
    rows = []
    for found in tx.run(_PARKED_WITHOUT_SENDER):
        if found["record"] is not None:
            record = orjson.loads(found["record"])
            rows.append(
                {
                    "node_id": found["node_id"],
                    "workflow_id": str(record.get("workflow_id", "")),
                    "tenant": str(record.get("tenant", "")),
                }
            )
    tx.run(_SET_SENDERS, rows=rows).consume()
    tx.run(_SET_VERSION, version=_SCHEMA_VERSION).consume()


def _lookup(tx: neo4j.ManagedTransaction, events: Sequence[graph_pb2.Event]) -> _Plan:
    rows = [{"event_id": event.event_id, "node_id": event.node_id} for event in events]
    plan = _Plan(nodes={}, seen=set())
    for record in tx.run(_LOOKUP, rows=rows):
        if record["seen"]:
            plan.seen.add(record["event_id"])
        if record["audited"]:
            plan.audited.add(record["event_id"])
        plan.nodes.setdefault(
            record["node_id"],
            _NodeState(
                owner=record["owner"],
                document=record["event"],
                pending=record["pending"],
                sender=(record["pending_event"] or "", record["pending_workflow"], record["pending_tenant"]),
            ),
        )
    return plan


def _plan_result(plan: _Plan, event: graph_pb2.Event) -> bool:
    """As the SQLite store: onto the node's document, or parked until the node arrives; the first kept."""
    state = plan.nodes[event.node_id]
    result = result_document(event)
    if state.owner is None:
        if state.pending is not None:
            return False
        state.pending = result
        state.sender = (event.event_id, event.workflow_id, event.tenant)
        plan.parked[event.node_id] = (event.event_id, result, event.workflow_id, event.tenant)
        return True
    merged = with_result(state.document or b"", result, event)
    if merged is None:
        return False
    state.document = merged
    state.changed = True
    return True


def _plan_node(plan: _Plan, event: graph_pb2.Event, received_ns: int, derived: Sequence[graph_pb2.Event] = ()) -> bool:
    """Plan a new node and its edges, then the nodes `derived` from it; False for a duplicate."""
    if event.event_id in plan.seen:
        return False
    state = plan.nodes[event.node_id]
    if state.owner is not None:
        raise reused_node_id(event, state.owner)
    at_ns = event_time_ns(event, received_ns)
    parked = state.pending
    if parked is not None:
        # The check a result coming after its node gets (`with_result`), as SQLite makes it.
        sent_event, sent_workflow, sent_tenant = state.sender
        if (problem := misplaced_result(sent_workflow, sent_tenant, event)) is not None:
            refusal = refused_result(sent_event, sent_workflow, sent_tenant, event, problem)
            plan.refusals.setdefault(event.event_id, []).append(refusal)
            parked = None
    _add_node(plan, event, event_document(event, parked), at_ns, received_ns)
    for _, source, target, kind, reason in edge_rows(event):
        bucket = kind if kind in _EDGE_TYPES else OTHER_EDGE
        plan.edges.setdefault(bucket, []).append({"source": source, "target": target, "type": kind, "reason": reason})
    for node in derived:
        # As SQLite: an id some event took already stays that event's (see _sqlite._insert_derived).
        if node.event_id in plan.seen or plan.nodes[node.node_id].owner is not None:
            continue
        _add_node(plan, node, node.SerializeToString(), at_ns, received_ns)
        _, source, target, kind, reason = verification_edge(event, node)
        plan.edges.setdefault(kind, []).append({"source": source, "target": target, "type": kind, "reason": reason})
    return True


def _add_node(plan: _Plan, event: graph_pb2.Event, document: bytes, at_ns: int, received_ns: int) -> None:
    """Plan the creation of `event`'s node, stored as `document`, and its workflow summary's update."""
    state = plan.nodes[event.node_id]
    violation = is_violation(event)
    state.owner, state.document, state.pending, state.sender = event.event_id, document, None, ("", None, None)
    state.created = True
    plan.parked.pop(event.node_id, None)
    plan.seen.add(event.event_id)
    plan.new_nodes[event.node_id] = {
        "node_id": event.node_id,
        "props": {
            "event_id": event.event_id,
            "workflow_id": event.workflow_id,
            "session_id": event.session_id,
            "agent_id": event.agent_id,
            "tenant": event.tenant,
            "node_type": enum_name(graph_pb2.NodeType.DESCRIPTOR, event.node_type),
            "outcome": enum_name(graph_pb2.Outcome.DESCRIPTOR, event.outcome),
            "violation": violation,
            "at_ns": at_ns,
            "server": event.action.server,
            "tool": event.action.tool,
            "received_ns": received_ns,
        },
    }
    summary = plan.workflows.setdefault(
        event.workflow_id,
        {"workflow_id": event.workflow_id, "first": at_ns, "last": at_ns, "count": 0, "violations": 0, "agents": []},
    )
    summary["first"], summary["last"] = min(summary["first"], at_ns), max(summary["last"], at_ns)
    summary["count"] += 1
    summary["violations"] += int(violation)
    if event.agent_id and event.agent_id not in summary["agents"]:
        summary["agents"].append(event.agent_id)


def _write(tx: neo4j.ManagedTransaction, plan: _Plan) -> None:
    if plan.new_nodes:
        rows = plan.new_nodes.values()
        for row in rows:
            row["props"]["event"] = plan.nodes[row["node_id"]].document
        tx.run(_CREATE_NODES, rows=list(rows)).consume()
        for kind, edges in plan.edges.items():
            statement = _MERGE_OTHER_EDGES if kind == OTHER_EDGE else _MERGE_EDGES.format(kind=kind)
            tx.run(statement, rows=edges).consume()
    updated = [
        {"node_id": node_id, "event": state.document}
        for node_id, state in plan.nodes.items()
        if state.changed and not state.created
    ]
    if updated:
        tx.run(_UPDATE_RESULTS, rows=updated).consume()
    if plan.parked:
        parked = [
            {"node_id": node, "event_id": event_id, "result": result, "workflow_id": workflow_id, "tenant": tenant}
            for node, (event_id, result, workflow_id, tenant) in plan.parked.items()
        ]
        tx.run(_PARK_RESULTS, rows=parked).consume()
    if plan.workflows:
        tx.run(_UPDATE_WORKFLOWS, rows=list(plan.workflows.values())).consume()
    if plan.audit:
        last = plan.audit[-1]
        rows_out = [_audit_properties(row) for row in plan.audit]
        tx.run(_APPEND_AUDIT, rows=rows_out, seq=last.sequence, hash=last.hash, recorded_ns=last.recorded_ns).consume()


def _audit_properties(row: AuditRow) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "seq": row.sequence,
        "event_id": row.event_id,
        "kind": row.kind,
        "at_ns": row.at_ns,
        "recorded_ns": row.recorded_ns,
        "blocked": row.blocked,
        "rule_id": row.rule_id,
        "fallback": row.fallback,
        "prev_hash": row.prev_hash,
        "hash": row.hash,
        "record": row.record,
    }
    if row.latency_ns is not None:  # Neo4j does not store null properties
        properties["latency_ns"] = row.latency_ns
    return properties


__all__ = ["SCHEMES", "Neo4jGraphStore", "split_url"]
