"""The embedded default graph store: one SQLite file in WAL mode.

Why this shape:

- SQLite admits one writer at a time. Every write goes through one thread fed by a
  queue, so writers never contend for the lock (no SQLITE_BUSY under load) and each
  Ingest batch is exactly one transaction.
- WAL lets readers run while the writer commits. Readers own their connections on a
  small private thread pool, so REST queries neither wait on a write nor run on the
  event loop. Each read is one transaction, so a query of several statements (a
  workflow's summary, nodes and edges) sees one committed state, never half an Ingest.
- synchronous=FULL: a commit returns only after the WAL is fsynced, so an acknowledged
  Ingest survives a power loss as well as a crash. It must: the proxy's journal moves
  its cursor and deletes its segments once the graph acknowledges a batch, so nothing
  else holds those events any more. The cost is one fsync per Ingest call, which the
  journal's batching amortizes.
- Idempotency lives in the schema: `event_id` is the primary key and inserts use
  ON CONFLICT DO NOTHING, so a re-delivered event is counted as a duplicate and the
  edges and workflow summary (updated in the same transaction, only for new nodes)
  do not change; nor do the VERIFICATION nodes derived from an action
  (`bastion.graph._verifications`), written only with a newly stored action.
- A damaged file is refused, not written on: SQLite reports damage only where a
  statement touches it, so new events would land beside it and be acknowledged while the
  audit chain cannot be read (an attacker's probe overwrote 4 KiB mid-file: the service
  came up ready, ingested on and answered only reads with 503). The first damage any
  statement reports, or `PRAGMA quick_check` run once in the background at start, marks
  the store damaged for good: `ping` (readiness) and `ingest` then fail, so every proxy
  keeps its journal until the file is restored.
- The writer steps aside between the events of a batch (`sched_yield`). A shipped batch
  is 10-20 ms of one core's work every ~50 ms; on a machine it shares with the proxy,
  policy and verifier (`bastion up`, two cores) a call that arrived then waited for the
  scheduler's next turn, and those waits were the governed call's tail at concurrency 1
  (docs/benchmarks.md: p99 5.8-6.4 ms, none above 2.5 ms while nothing shipped). A yield
  lets any thread waiting for this core run first and costs ~1 µs when none does; unlike
  a lower priority (SCHED_IDLE, nice), it never starves the writer of its fair share on
  a saturated machine, where its backlog would grow without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from bastion._errors import StoreError
from bastion.v1 import graph_pb2

from .._audit import AuditEntry, ChainHead
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
    Edge,
    IngestResult,
    LineageHop,
    Node,
    Page,
    StoredCheckpoint,
    ViolationFilter,
    WorkflowSnapshot,
    WorkflowSummary,
)
from ._common import (
    FIRST_NODE_KEY,
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
    parse_node,
    refused_result,
    result_document,
    reused_event_id,
    reused_node_id,
    take_page,
    to_datetime,
    with_result,
)
from ._cursor import decode_cursor, encode_cursor
from ._paths import NodeLookup, StepLookup, taint_of, walk_drift, walk_lineage
from ._sqlite_audit import (
    AuditAppender,
    insert_checkpoint,
    select_checkpoints,
    select_decision_stats,
    select_entries,
    select_head,
    select_last_checkpoint,
)
from ._sqlite_batch import BatchWrites
from ._sqlite_schema import prepare

R = TypeVar("R")
log = logging.getLogger(__name__)

_INSERT_NODE = """
INSERT INTO nodes (event_id, node_id, workflow_id, session_id, agent_id, tenant, node_type,
                   outcome, violation, at_ns, server, tool, received_ns, event)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT DO NOTHING
"""
_INSERT_EDGE = """
INSERT INTO edges (workflow_id, source, target, type, reason) VALUES (?, ?, ?, ?, ?)
ON CONFLICT DO NOTHING
"""
_SELECT_WORKFLOWS = "SELECT workflow_id, first_seen_ns, last_seen_ns, node_count, violation_count FROM workflows"
_SELECT_AGENTS = """
SELECT workflow_id, agent_id FROM workflow_agents
WHERE workflow_id IN (SELECT value FROM json_each(?)) ORDER BY workflow_id, agent_id
"""
# Both walk nodes_by_workflow in order, so a page costs its size whatever the workflow's.
_SELECT_NODES = """
SELECT event, at_ns, event_id FROM nodes
WHERE workflow_id = ? AND (at_ns, event_id) > (?, ?) ORDER BY at_ns, event_id LIMIT ?
"""
_SELECT_EDGES = """
SELECT e.source, e.target, e.type, e.reason FROM nodes AS n JOIN edges AS e ON e.source = n.node_id
WHERE n.workflow_id = ? AND (n.at_ns, n.event_id) <= (?, ?) ORDER BY n.at_ns, n.event_id, e.type, e.target LIMIT ?
"""
_HAS_NODES = "SELECT 1 FROM nodes WHERE workflow_id = ? LIMIT 1"
_SELECT_TENANTS = "SELECT DISTINCT workflow_id, tenant FROM nodes WHERE workflow_id IN (SELECT value FROM json_each(?))"
_SELECT_PATH_NODE = "SELECT workflow_id, node_type, tool, server, agent_id, outcome, event FROM nodes WHERE node_id = ?"
_SELECT_STEPS = """
SELECT target, type, reason FROM edges
WHERE source = ? AND type IN ('INFORMED_BY', 'DELEGATED_TO', 'CAUSED_BY')
ORDER BY CASE type WHEN 'INFORMED_BY' THEN 0 WHEN 'DELEGATED_TO' THEN 1 ELSE 2 END, target
"""


class SqliteGraphStore:
    """`GraphStore` on one SQLite file (see the module docstring for the design)."""

    def __init__(self, path: Path, *, readers: int = 4) -> None:
        """Open the database at `path`, creating it and its schema if needed.

        Blocking; async code should use `await SqliteGraphStore.open(path)`.
        """
        self._path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            connection = _open_writer_connection(path)
        except (sqlite3.Error, OSError) as exc:
            raise _store_error("open", path, exc) from exc
        #: Why the file is damaged (sticky; see the module docstring), or None.
        self.damaged: str | None = None
        self._writer = _Writer(connection, path, AuditAppender.load(connection), self._note_damage)
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="graph-read")
        self._local = threading.local()
        self._reader_connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

        #: Set once the check at start has finished.
        self.checked = threading.Event()
        self._checking: sqlite3.Connection | None = None
        self._check_thread = threading.Thread(target=self._check_integrity, name="graph-quick-check", daemon=True)
        self._check_thread.start()

    @classmethod
    async def open(cls, path: Path, *, readers: int = 4) -> SqliteGraphStore:
        return await asyncio.to_thread(cls, path, readers=readers)

    def _check_integrity(self) -> None:
        """`PRAGMA quick_check` on a connection of its own (a WAL reader: writes go on)."""
        try:
            connection = _connect(self._path)
            self._checking = connection
            try:
                problems = [row[0] for row in connection.execute("PRAGMA quick_check(4)")]
            finally:
                self._checking = None
                connection.close()
            if problems != ["ok"]:
                self._note_damage(sqlite3.DatabaseError("; ".join(problems)), checked=True)
        except sqlite3.Error as exc:
            self._note_damage(exc)
        finally:
            self.checked.set()

    def _note_damage(self, exc: sqlite3.Error, *, checked: bool = False) -> None:
        if self.damaged is None and (checked or _is_damage(exc)):
            self.damaged = f"graph store {self._path} is damaged ({exc}); restore it from a backup"
            log.error("%s", self.damaged)

    def _check_sound(self) -> None:
        if self.damaged is not None:
            raise StoreError(self.damaged)

    @property
    def path(self) -> Path:
        return self._path

    async def ingest(self, events: Sequence[graph_pb2.Event]) -> IngestResult:
        self._check_open()
        self._check_sound()  # UNAVAILABLE: the proxies keep their journals
        if not events:
            return IngestResult(accepted=0, duplicates=0)
        return await asyncio.wrap_future(self._writer.submit(events))

    async def list_workflows(
        self, *, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
    ) -> Page[WorkflowSummary]:
        check_limit(limit, MAX_PAGE_SIZE)
        after = decode_cursor(WORKFLOWS_CURSOR, cursor) if cursor is not None else None
        return await self._read(lambda conn: _select_workflows(conn, limit, after))

    async def workflow(self, workflow_id: str) -> WorkflowSummary | None:
        return await self._read(lambda conn: _select_workflow(conn, workflow_id))

    async def workflow_tenants(self, workflow_ids: Sequence[str]) -> Mapping[str, frozenset[str]]:
        ids = orjson.dumps(list(workflow_ids)).decode()
        rows = await self._read(lambda conn: conn.execute(_SELECT_TENANTS, (ids,)).fetchall())
        found: dict[str, set[str]] = {}
        for workflow_id, tenant in rows:
            found.setdefault(workflow_id, set()).add(tenant)
        return {workflow_id: frozenset(tenants) for workflow_id, tenants in found.items()}

    async def nodes(
        self, workflow_id: str, *, limit: int = DEFAULT_NODE_PAGE_SIZE, cursor: str | None = None
    ) -> Page[Node] | None:
        check_limit(limit, MAX_NODE_PAGE_SIZE)
        after = decode_cursor(nodes_cursor(workflow_id), cursor) if cursor is not None else None
        return await self._read(lambda conn: _select_node_page(conn, workflow_id, limit, after))

    async def snapshot(
        self, workflow_id: str, *, max_nodes: int = MAX_SNAPSHOT_NODES, max_edges: int = MAX_SNAPSHOT_EDGES
    ) -> WorkflowSnapshot | None:
        check_snapshot(max_nodes, max_edges)
        return await self._read(lambda conn: _select_snapshot(conn, workflow_id, max_nodes, max_edges))

    async def violations(
        self, filters: ViolationFilter, *, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
    ) -> Page[Node]:
        check_limit(limit, MAX_PAGE_SIZE)
        after = decode_cursor(VIOLATIONS_CURSOR, cursor) if cursor is not None else None
        return await self._read(lambda conn: _select_violations(conn, filters, limit, after))

    async def lineage(
        self, workflow_id: str, node_id: str, max_depth: int = DEFAULT_LINEAGE_DEPTH
    ) -> Sequence[LineageHop] | None:
        check_depth(max_depth)
        return await self._read(lambda conn: walk_lineage(*_lookups(conn), workflow_id, node_id, max_depth))

    async def drift_path(
        self, workflow_id: str, node_id: str, max_depth: int = DEFAULT_LINEAGE_DEPTH
    ) -> DriftPath | None:
        check_depth(max_depth)
        return await self._read(lambda conn: walk_drift(*_lookups(conn), workflow_id, node_id, max_depth))

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
        return await self._read(
            lambda conn: select_entries(conn, after, limit, through=through, since_ns=since_ns, until_ns=until_ns)
        )

    async def decision_stats(self, since_ns: int, percentiles: Sequence[float]) -> DecisionStats:
        return await self._read(lambda conn: select_decision_stats(conn, since_ns, percentiles))

    async def expire_payloads(self, before_ns: int, limit: int = DEFAULT_EXPIRY_BATCH) -> int:
        check_limit(limit, MAX_AUDIT_PAGE)
        self._check_open()
        return await asyncio.wrap_future(self._writer.submit_write(lambda conn: _expire(conn, before_ns, limit)))

    async def add_checkpoint(self, checkpoint: StoredCheckpoint) -> bool:
        self._check_open()
        return await asyncio.wrap_future(self._writer.submit_write(lambda conn: insert_checkpoint(conn, checkpoint)))

    async def checkpoints(self, *, after: int = 0, limit: int = DEFAULT_AUDIT_PAGE) -> Sequence[StoredCheckpoint]:
        check_limit(limit, MAX_AUDIT_PAGE)
        return await self._read(lambda conn: select_checkpoints(conn, after, limit))

    async def last_checkpoint(self) -> StoredCheckpoint | None:
        return await self._read(select_last_checkpoint)

    async def ping(self) -> None:
        self._check_open()
        self._check_sound()
        if not self._writer.alive:
            raise StoreError(f"graph store {self._path}: the writer thread has stopped; restart the graph service")
        await self._read(lambda conn: conn.execute("SELECT 1 FROM workflows LIMIT 1").fetchall())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._release)

    def _release(self) -> None:
        # A check still reading a large file holds a snapshot (the WAL cannot be reset behind
        # it): stopped, it reports an interruption, which is no damage.
        if (checking := self._checking) is not None:
            with contextlib.suppress(sqlite3.Error):
                checking.interrupt()
        self._check_thread.join(timeout=5)
        self._writer.close()
        self._readers.shutdown(wait=True)
        with self._lock:
            connections, self._reader_connections = self._reader_connections, []
        for connection in connections:
            connection.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"graph store {self._path} is closed")

    async def _read(self, query: Callable[[sqlite3.Connection], R]) -> R:
        self._check_open()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._run_read, query)

    def _run_read(self, query: Callable[[sqlite3.Connection], R]) -> R:
        try:
            connection = self._reader_connection()
            # In autocommit every statement would see the database as of its own start,
            # so an Ingest committing between two statements of one query would show up
            # in the second only. A WAL read transaction pins one snapshot for all of them.
            connection.execute("BEGIN")
            try:
                return query(connection)
            finally:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")  # it read only: nothing to keep
        except sqlite3.Error as exc:
            self._note_damage(exc)
            raise _store_error("read", self._path, exc) from exc

    def _reader_connection(self) -> sqlite3.Connection:
        # One connection per reader thread: a sqlite3 connection must not be used by
        # two threads at once, and opening one per query would cost more than the query.
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = _connect(self._path)
            connection.execute("PRAGMA query_only = ON")
            with self._lock:
                self._reader_connections.append(connection)
            self._local.connection = connection
        return connection


class _Writer:
    """The only thread that writes; each submitted batch is one transaction."""

    def __init__(
        self,
        connection: sqlite3.Connection,
        path: Path,
        chain: AuditAppender,
        on_error: Callable[[sqlite3.Error], None],
    ) -> None:
        self._connection = connection
        self._on_error = on_error
        self._path = path
        self._chain = chain
        # Each job runs in one transaction of its own: an Ingest batch, or another write.
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = queue.SimpleQueue()
        # Daemon, so a process that exits without closing the store is not held up by a
        # thread blocked on its queue; SQLite's atomic commit covers an interrupted batch.
        self._thread = threading.Thread(target=self._run, name="graph-writer", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, events: Sequence[graph_pb2.Event]) -> Future[IngestResult]:
        batch = tuple(events)
        future: Future[IngestResult] = Future()
        self._jobs.put((lambda: self._commit(batch), future))
        return future

    def submit_write(self, write: Callable[[sqlite3.Connection], R]) -> Future[R]:
        """Run `write` in a transaction of its own, after the jobs already queued."""
        future: Future[R] = Future()
        self._jobs.put((lambda: self._transaction(write), future))
        return future

    def close(self) -> None:
        """Finish the batches already queued, then stop and close the connection."""
        self._jobs.put(None)
        self._thread.join()
        self._connection.close()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            work, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(work())
            except sqlite3.Error as exc:
                self._on_error(exc)
                error = _store_error("write", self._path, exc)
                error.__cause__ = exc
                future.set_exception(error)
            except Exception as exc:
                # Whatever went wrong belongs to this batch's caller; the thread lives on.
                future.set_exception(exc)

    def _transaction(self, write: Callable[[sqlite3.Connection], R]) -> R:
        connection = self._connection
        connection.execute("BEGIN IMMEDIATE")
        try:
            result = write(connection)
            connection.execute("COMMIT")
        except BaseException:
            # Some errors (disk full, I/O) end the transaction themselves.
            if connection.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
            raise
        return result

    def _commit(self, events: Sequence[graph_pb2.Event]) -> IngestResult:
        received_ns = time.time_ns()
        chain = self._chain.fork()

        def write(connection: sqlite3.Connection) -> int:
            accepted = 0
            batch = BatchWrites(connection)
            for event in events:
                _step_aside()
                refusals: list[graph_pb2.Event] = []
                if _insert_event(connection, event, received_ns, refusals, batch):
                    _check_event_id(connection, event)
                    accepted += 1
                    chain.add(connection, event, received_ns)
                    for refusal in refusals:
                        chain.add(connection, refusal, received_ns)
            batch.flush(connection)
            return accepted

        accepted = self._transaction(write)
        self._chain = chain
        return IngestResult(accepted=accepted, duplicates=len(events) - accepted)


def _step_aside() -> None:
    """Let a thread waiting for this core run before the writer's next event (module docstring)."""
    os.sched_yield()


def _insert_event(
    connection: sqlite3.Connection,
    event: graph_pb2.Event,
    received_ns: int,
    refusals: list[graph_pb2.Event],
    batch: BatchWrites,
) -> bool:
    """Insert one event's node and edges, and add it to `batch`'s summaries; False when it was already stored.

    A result parked for the node is merged in when it was sent as the node's workflow and
    tenant (the check `with_result` makes of a result that comes after its node); else it
    is dropped, and the audit record saying so is appended to `refusals`."""
    if event.HasField("result"):
        return _store_result(connection, event, batch)
    at_ns = event_time_ns(event, received_ns)
    violation = is_violation(event)
    pending = (
        connection.execute(
            "SELECT result, event_id, workflow_id, tenant FROM pending_results WHERE node_id = ?", (event.node_id,)
        ).fetchone()
        if batch.pending
        else None
    )
    parked: bytes | None = None
    if pending is not None:
        result, result_event_id, sent_workflow, sent_tenant = pending
        problem = misplaced_result(sent_workflow, sent_tenant, event)
        if problem is None:
            parked = result
        else:
            refusals.append(refused_result(result_event_id, sent_workflow, sent_tenant, event, problem))
    document = event_document(event, parked)
    inserted = connection.execute(
        _INSERT_NODE,
        (
            event.event_id,
            event.node_id,
            event.workflow_id,
            event.session_id,
            event.agent_id,
            event.tenant,
            enum_name(graph_pb2.NodeType.DESCRIPTOR, event.node_type),
            enum_name(graph_pb2.Outcome.DESCRIPTOR, event.outcome),
            int(violation),
            at_ns,
            event.action.server,
            event.action.tool,
            received_ns,
            document,
        ),
    )
    if inserted.rowcount == 0:
        _check_duplicate(connection, event)
        return False
    if pending is not None:
        connection.execute("DELETE FROM pending_results WHERE node_id = ?", (event.node_id,))
    edges = edge_rows(event)
    added = 1
    for node in verification_nodes(event):
        if _insert_derived(connection, node, at_ns, received_ns):
            added += 1
            edges.append(verification_edge(event, node))
    connection.executemany(_INSERT_EDGE, edges)
    batch.node_added(event.workflow_id, event.agent_id, at_ns, added, violation)
    return True


def _insert_derived(connection: sqlite3.Connection, node: graph_pb2.Event, at_ns: int, received_ns: int) -> bool:
    """Insert a node derived from an action (at the action's time); False when its id is
    taken already, which only an event naming a derived id as its own can do: that event
    keeps it, and the action's record still holds the answer."""
    inserted = connection.execute(
        _INSERT_NODE,
        (
            node.event_id,
            node.node_id,
            node.workflow_id,
            node.session_id,
            node.agent_id,
            node.tenant,
            enum_name(graph_pb2.NodeType.DESCRIPTOR, node.node_type),
            enum_name(graph_pb2.Outcome.DESCRIPTOR, node.outcome),
            0,
            at_ns,
            "",
            "",
            received_ns,
            node.SerializeToString(),
        ),
    )
    return inserted.rowcount > 0


def _store_result(connection: sqlite3.Connection, event: graph_pb2.Event, batch: BatchWrites) -> bool:
    """Put a result event's `result` on its action's node; False when the node already has one.

    Idempotent: a redelivered result (or a second one for the same node) changes nothing,
    so the first result recorded is the one kept. A result whose node has not arrived
    waits in pending_results, with the workflow and tenant it was sent as, and is merged
    when the node arrives if they are the node's (`_insert_event`).
    """
    result = result_document(event)
    row = connection.execute("SELECT event FROM nodes WHERE node_id = ?", (event.node_id,)).fetchone()
    if row is None:
        stored = connection.execute(
            "INSERT INTO pending_results (node_id, event_id, result, workflow_id, tenant) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (event.node_id, event.event_id, result, event.workflow_id, event.tenant),
        )
        batch.pending = True
        return stored.rowcount > 0
    document = with_result(row[0], result, event)
    if document is None:
        return False
    connection.execute("UPDATE nodes SET event = ? WHERE node_id = ?", (document, event.node_id))
    return True


def _check_duplicate(connection: sqlite3.Connection, event: graph_pb2.Event) -> None:
    """Tell a re-delivery (same event_id: fine) from a different event reusing a node id."""
    if connection.execute("SELECT 1 FROM nodes WHERE event_id = ?", (event.event_id,)).fetchone():
        return
    owner = connection.execute("SELECT event_id FROM nodes WHERE node_id = ?", (event.node_id,)).fetchone()
    raise reused_node_id(event, owner[0] if owner else None)


def _check_event_id(connection: sqlite3.Connection, event: graph_pb2.Event) -> None:
    """Refuse a new event whose event_id an audit record (or, for a result, a node) holds (why: `reused_event_id`)."""
    taken = connection.execute("SELECT 1 FROM audit WHERE event_id = ?", (event.event_id,)).fetchone()
    if taken is None and event.HasField("result"):
        taken = connection.execute("SELECT 1 FROM nodes WHERE event_id = ?", (event.event_id,)).fetchone()
    if taken is not None:
        raise reused_event_id(event)


def _expire(connection: sqlite3.Connection, before_ns: int, limit: int) -> int:
    rows = connection.execute(
        "SELECT event_id, event FROM nodes WHERE payload_expired = 0 AND at_ns < ? ORDER BY at_ns, event_id LIMIT ?",
        (before_ns, limit),
    ).fetchall()
    connection.executemany(
        "UPDATE nodes SET event = ?, payload_expired = 1 WHERE event_id = ?",
        [(expire_payload(document), event_id) for event_id, document in rows],
    )
    return len(rows)


def _lookups(connection: sqlite3.Connection) -> tuple[NodeLookup, StepLookup]:
    """The two indexed lookups a walk (bastion.graph._store._paths) takes per step."""

    def node(node_id: str) -> Any:
        row = connection.execute(_SELECT_PATH_NODE, (node_id,)).fetchone()
        return (*row[:6], taint_of(row[6])) if row is not None else None

    def steps(node_id: str) -> list[tuple[str, str, str]]:
        rows: list[tuple[str, str, str]] = connection.execute(_SELECT_STEPS, (node_id,)).fetchall()
        return rows

    return node, steps


def _select_workflows(
    connection: sqlite3.Connection, limit: int, after: tuple[int, str] | None
) -> Page[WorkflowSummary]:
    where, params = ("WHERE (last_seen_ns, workflow_id) < (?, ?)", after) if after is not None else ("", ())
    sql = f"{_SELECT_WORKFLOWS} {where} ORDER BY last_seen_ns DESC, workflow_id DESC LIMIT ?"
    rows = connection.execute(sql, (*params, limit + 1)).fetchall()
    page = rows[:limit]
    agents = _agents(connection, [row[0] for row in page])
    items = tuple(_summary(row, agents.get(row[0], ())) for row in page)
    next_cursor = encode_cursor(WORKFLOWS_CURSOR, page[-1][2], page[-1][0]) if len(rows) > limit else None
    return Page(items=items, next_cursor=next_cursor)


def _select_workflow(connection: sqlite3.Connection, workflow_id: str) -> WorkflowSummary | None:
    row = connection.execute(f"{_SELECT_WORKFLOWS} WHERE workflow_id = ?", (workflow_id,)).fetchone()
    if row is None:
        return None
    return _summary(row, _agents(connection, [workflow_id]).get(workflow_id, ()))


def _agents(connection: sqlite3.Connection, workflow_ids: Sequence[str]) -> dict[str, tuple[str, ...]]:
    if not workflow_ids:
        return {}
    found: dict[str, list[str]] = {}
    for workflow_id, agent_id in connection.execute(_SELECT_AGENTS, (orjson.dumps(list(workflow_ids)).decode(),)):
        found.setdefault(workflow_id, []).append(agent_id)
    return {workflow_id: tuple(agents) for workflow_id, agents in found.items()}


def _summary(row: Any, agents: tuple[str, ...]) -> WorkflowSummary:
    workflow_id, first_seen_ns, last_seen_ns, node_count, violation_count = row
    return WorkflowSummary(
        workflow_id=workflow_id,
        first_seen=to_datetime(first_seen_ns),
        last_seen=to_datetime(last_seen_ns),
        node_count=node_count,
        violation_count=violation_count,
        agents=agents,
    )


def _select_node_page(
    connection: sqlite3.Connection, workflow_id: str, limit: int, after: tuple[int, str] | None
) -> Page[Node] | None:
    page, more = take_page(_select_nodes(connection, workflow_id, limit + 1, after or FIRST_NODE_KEY), limit)
    # An empty first page means no such workflow. An empty later page can only follow a
    # cursor made by hand (nodes are never deleted), so look before calling it unknown.
    if not page and (after is None or connection.execute(_HAS_NODES, (workflow_id,)).fetchone() is None):
        return None
    items = tuple(parse_node(document, at_ns) for document, at_ns, _ in page)
    next_cursor = encode_cursor(nodes_cursor(workflow_id), page[-1][1], page[-1][2]) if more else None
    return Page(items=items, next_cursor=next_cursor)


def _select_snapshot(
    connection: sqlite3.Connection, workflow_id: str, max_nodes: int, max_edges: int
) -> WorkflowSnapshot | None:
    """Summary, nodes and edges; the caller runs it in one read transaction."""
    summary = _select_workflow(connection, workflow_id)
    if summary is None:
        return None
    nodes, more = take_page(_select_nodes(connection, workflow_id, max_nodes + 1, FIRST_NODE_KEY), max_nodes)
    # Only edges out of the nodes returned: the rest would point from nodes the client
    # was not given. A workflow always has a node once it has a summary.
    _, last_at_ns, last_event_id = nodes[-1]
    edge_rows = connection.execute(_SELECT_EDGES, (workflow_id, last_at_ns, last_event_id, max_edges + 1)).fetchall()
    return WorkflowSnapshot(
        summary=summary,
        nodes=tuple(parse_node(document, at_ns) for document, at_ns, _ in nodes),
        edges=tuple(
            Edge(source=source, target=target, type=type_, reason=reason)
            for source, target, type_, reason in edge_rows[:max_edges]
        ),
        truncated=more or len(edge_rows) > max_edges,
    )


def _select_nodes(
    connection: sqlite3.Connection, workflow_id: str, limit: int, after: tuple[int, str]
) -> Iterator[tuple[bytes, int, str]]:
    """Up to `limit` (event bytes, at_ns, event_id) rows after the key `after`, oldest first, as read."""
    rows: Iterator[tuple[bytes, int, str]] = connection.execute(_SELECT_NODES, (workflow_id, *after, limit))
    return rows


def _select_violations(
    connection: sqlite3.Connection, filters: ViolationFilter, limit: int, after: tuple[int, str] | None
) -> Page[Node]:
    # Built only from the constant fragments below; every value is a bound parameter.
    clauses: list[str] = ["violation = 1"]
    params: list[object] = []
    if filters.workflow_id is not None:
        clauses.append("workflow_id = ?")
        params.append(filters.workflow_id)
    if filters.agent_id is not None:
        clauses.append("agent_id = ?")
        params.append(filters.agent_id)
    if filters.tenant is not None:
        clauses.append("tenant = ?")
        params.append(filters.tenant)
    if after is not None:
        clauses.append("(at_ns, event_id) < (?, ?)")
        params.extend(after)
    where = " AND ".join(clauses)
    sql = f"SELECT event, at_ns, event_id FROM nodes WHERE {where} ORDER BY at_ns DESC, event_id DESC LIMIT ?"  # noqa: S608
    rows: Iterator[tuple[bytes, int, str]] = connection.execute(sql, (*params, limit + 1))
    page, more = take_page(rows, limit)
    items = tuple(parse_node(document, at_ns) for document, at_ns, _ in page)
    next_cursor = encode_cursor(VIOLATIONS_CURSOR, page[-1][1], page[-1][2]) if more else None
    return Page(items=items, next_cursor=next_cursor)


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: transactions are begun and ended explicitly, never implicitly.
    # check_same_thread=False: each connection is used by one thread at a time, but is
    # opened and closed from another.
    return sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)


def _open_writer_connection(path: Path) -> sqlite3.Connection:
    connection = _connect(path)
    try:
        prepare(connection, path)
    except BaseException:
        connection.close()
        raise
    return connection


#: SQLite's codes for a damaged file: SQLITE_CORRUPT and SQLITE_NOTADB.
_DAMAGE_CODES = frozenset({11, 26})


def _is_damage(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _DAMAGE_CODES
    return "malformed" in str(exc) or "not a database" in str(exc)


def _store_error(operation: str, path: Path, exc: BaseException) -> StoreError:
    return StoreError(f"graph store {operation} failed ({path}): {exc}")
