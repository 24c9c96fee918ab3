"""The graph store interface and the records it returns.

A store keeps one node per ingested `Event` (keyed by `event_id`, the idempotency
key), the edges the event names (`parent_ids` as CAUSED_BY, plus its edge hints), and
a summary per workflow. Every backend (SQLite now, Neo4j later) implements `GraphStore`
and passes the same contract tests.

The interface is async so no caller can block the event loop by accident; a backend
with a blocking driver moves that work onto threads of its own. Errors are
`bastion.StoreError` (backend unavailable or failing) or `bastion.ProtocolError` (the
caller sent something the store cannot accept: a bad cursor, a reused node id).

Cursors are opaque strings: pass a page's `next_cursor` back unchanged for the next one.

No read returns an unbounded amount: listings are paged, and `snapshot` (a whole
workflow at once) stops at `MAX_SNAPSHOT_NODES` nodes and `MAX_SNAPSHOT_EDGES` edges.
A page of nodes or violations, and a snapshot, also stop after the node that takes
their stored events past `MAX_PAGE_BYTES`, saying that more follow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Protocol, TypeVar

from bastion.v1 import graph_pb2

from .._audit import AuditEntry, ChainHead
from .._events import is_violation

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
# Node pages are larger than the other listings: a client drawing a graph needs all of
# a workflow's nodes, and at ~1-2 KB of JSON a node, 5000 stay a response of a few MB.
DEFAULT_NODE_PAGE_SIZE = 500
MAX_NODE_PAGE_SIZE = 5000
MAX_SNAPSHOT_NODES = 5000
# Most actions name one parent and at most a few hints; four edges a node on average
# leaves room for that while still bounding a workflow whose events name thousands.
MAX_SNAPSHOT_EDGES = 4 * MAX_SNAPSHOT_NODES
#: Stored event bytes a page of nodes or violations (or a snapshot) reads at most, give or
#: take its last node. Counts alone did not bound an answer: an agent's calls with arguments
#: near the journal's bound made a 5000-node page 150 MiB of JSON and 1.3 GB in the service
#: (an attacker's probe). Typical nodes (1-2 KB) fill a count-limited page well under it.
MAX_PAGE_BYTES = 16 << 20
DEFAULT_LINEAGE_DEPTH = 64
MAX_LINEAGE_DEPTH = 1024
DEFAULT_AUDIT_PAGE = 1000
#: Nodes a retention pass rewrites in one transaction.
DEFAULT_EXPIRY_BATCH = 1000
MAX_AUDIT_PAGE = 10_000


@dataclass(frozen=True, slots=True)
class IngestResult:
    """How many events of a batch were new and how many were already stored."""

    accepted: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class WorkflowSummary:
    workflow_id: str
    first_seen: datetime
    last_seen: datetime
    node_count: int
    violation_count: int
    #: Distinct non-empty agent ids of the workflow's nodes, sorted.
    agents: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Node:
    """One stored event; `at` is its event time (see `bastion.graph._events.event_time_ns`)."""

    event: graph_pb2.Event
    at: datetime

    @property
    def is_violation(self) -> bool:
        return is_violation(self.event)


@dataclass(frozen=True, slots=True)
class Edge:
    """`source` → `target`: the source node was caused/informed/verified by, or delegated to, the target."""

    source: str
    target: str
    #: An EdgeType name: CAUSED_BY, INFORMED_BY, VERIFIED_BY or DELEGATED_TO.
    type: str
    reason: str


@dataclass(frozen=True, slots=True)
class LineageHop:
    node_id: str
    #: A NodeType name; NODE_TYPE_UNSPECIFIED for a parent that was named but never ingested.
    node_type: str
    #: The EdgeType name followed from this hop to the next; None on the last hop.
    via: str | None
    reason: str
    tool: str
    #: Empty for a node that was named but never ingested.
    workflow_id: str = ""
    agent_id: str = ""
    server: str = ""
    #: An Outcome name (FORWARDED, BLOCKED, ...); empty for a node never ingested.
    outcome: str = ""
    #: The provenance labels the proxy gave the node (Event.taint).
    taint: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DriftPath:
    """Where an action's data (or, without any, its workflow) came from: `GraphStore.drift_path`."""

    #: From the node asked about back to the origin; every hop but the last names the edge it followed.
    hops: tuple[LineageHop, ...]
    #: Why the walk ended: untrusted_data (the first node of the INFORMED_BY chain: where
    #: the data entered), workflow_root (no earlier node), not_ingested (the next node was
    #: named but never stored), depth_limit, or cycle.
    origin: str


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """A signed checkpoint of the audit chain (bastion.graph._checkpoints): record `sequence`
    had hash `hash`, as `token` (a JWS by the stack's key) says."""

    sequence: int
    hash: str
    token: str


@dataclass(frozen=True, slots=True)
class DecisionStats:
    """The decision records of a window (`GraphStore.decision_stats`)."""

    decisions: int
    blocked: int
    #: Decisions taken by a verifier's fallback (it did not answer in time).
    fallbacks: int
    #: percentile (e.g. 0.99) -> decided_at - started_at in ns, nearest rank; empty when no
    #: decision in the window had both times.
    latency_ns: dict[float, int]
    #: rule id (a policy rule or a bastion.* code) -> (decisions, blocked).
    by_rule: dict[str, tuple[int, int]]


@dataclass(frozen=True, slots=True)
class ViolationFilter:
    """Restricts `GraphStore.violations`; None matches anything."""

    workflow_id: str | None = None
    agent_id: str | None = None
    #: Only this tenant's (the graph REST's readers of one tenant, graph/_api.py).
    tenant: str | None = None


@dataclass(frozen=True, slots=True)
class WorkflowSnapshot:
    """A workflow's summary, nodes and edges, all read at the same moment."""

    summary: WorkflowSummary
    #: The oldest nodes, oldest first, at most the `max_nodes` asked for.
    nodes: tuple[Node, ...]
    #: Edges whose source is one of `nodes`, at most the `max_edges` asked for.
    edges: tuple[Edge, ...]
    #: The workflow has more nodes or edges than these; page through `GraphStore.nodes`.
    truncated: bool


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: tuple[T, ...]
    #: Pass back to get the next page; None on the last page.
    next_cursor: str | None


class GraphStore(Protocol):
    async def ingest(self, events: Sequence[graph_pb2.Event]) -> IngestResult:
        """Store a batch atomically; events already stored (same event_id) count as duplicates."""
        ...

    async def list_workflows(
        self, *, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
    ) -> Page[WorkflowSummary]:
        """Workflows, most recently active first."""
        ...

    async def workflow(self, workflow_id: str) -> WorkflowSummary | None: ...

    async def workflow_tenants(self, workflow_ids: Sequence[str]) -> Mapping[str, frozenset[str]]:
        """The tenants of each known workflow's nodes ("" for events of no tenant); an
        unknown workflow is left out."""
        ...

    async def nodes(
        self, workflow_id: str, *, limit: int = DEFAULT_NODE_PAGE_SIZE, cursor: str | None = None
    ) -> Page[Node] | None:
        """A page of the workflow's nodes, oldest first; None when the workflow is unknown
        (a workflow exists once it has a node)."""
        ...

    async def snapshot(
        self, workflow_id: str, *, max_nodes: int = MAX_SNAPSHOT_NODES, max_edges: int = MAX_SNAPSHOT_EDGES
    ) -> WorkflowSnapshot | None:
        """The workflow's summary, oldest nodes and their edges from one consistent read,
        so no edge names a source the node list lacks; None when the workflow is unknown."""
        ...

    async def violations(
        self, filters: ViolationFilter, *, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
    ) -> Page[Node]:
        """Nodes whose outcome is BLOCKED or REJECTED, newest first."""
        ...

    async def lineage(
        self, workflow_id: str, node_id: str, max_depth: int = DEFAULT_LINEAGE_DEPTH
    ) -> Sequence[LineageHop] | None:
        """The path from `node_id` back along INFORMED_BY/CAUSED_BY edges toward its origin,
        following at most `max_depth` edges; None when the node is unknown, or belongs to
        another workflow than a non-empty `workflow_id`."""
        ...

    async def drift_path(
        self, workflow_id: str, node_id: str, max_depth: int = DEFAULT_LINEAGE_DEPTH
    ) -> DriftPath | None:
        """From `node_id` back along INFORMED_BY edges to where its data entered, or, for a
        node informed by nothing, along DELEGATED_TO/CAUSED_BY to the workflow's root;
        INFORMED_BY is preferred at every step. None when the node is unknown or not in
        `workflow_id`."""
        ...

    async def audit_head(self) -> ChainHead | None:
        """The last record of the audit chain; None while it is empty."""
        ...

    async def audit_entries(
        self,
        *,
        after: int = 0,
        limit: int = DEFAULT_AUDIT_PAGE,
        through: int | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
    ) -> Sequence[AuditEntry]:
        """Up to `limit` audit records in sequence order with sequence > `after` and <= `through`,
        recorded in [since_ns, until_ns) (a contiguous piece of the chain: see bastion.graph._audit)."""
        ...

    async def expire_payloads(self, before_ns: int, limit: int = DEFAULT_EXPIRY_BATCH) -> int:
        """Remove the payloads of up to `limit` nodes whose event time is before `before_ns`
        (oldest first; see Event.payload_expired); how many nodes. Digests, decisions and
        the audit chain are kept: retention never touches the chain."""
        ...

    async def add_checkpoint(self, checkpoint: StoredCheckpoint) -> bool:
        """Store a signed checkpoint; False when one is stored for that sequence already."""
        ...

    async def checkpoints(self, *, after: int = 0, limit: int = DEFAULT_AUDIT_PAGE) -> Sequence[StoredCheckpoint]:
        """Up to `limit` checkpoints with sequence > `after`, in sequence order."""
        ...

    async def last_checkpoint(self) -> StoredCheckpoint | None: ...

    async def decision_stats(self, since_ns: int, percentiles: Sequence[float]) -> DecisionStats:
        """Decision records whose event time is at or after `since_ns`."""
        ...

    async def ping(self) -> None:
        """Raise StoreError unless the store can serve reads and writes."""
        ...

    async def close(self) -> None:
        """Finish queued writes and release the backend; later calls raise StoreError."""
        ...
