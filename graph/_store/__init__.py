"""Graph storage backends behind one interface (`GraphStore`), chosen by BASTION_GRAPH_URL."""

from __future__ import annotations

from pathlib import Path

from bastion._errors import ConfigError

from ._base import (
    DEFAULT_AUDIT_PAGE,
    DEFAULT_EXPIRY_BATCH,
    DEFAULT_LINEAGE_DEPTH,
    DEFAULT_NODE_PAGE_SIZE,
    DEFAULT_PAGE_SIZE,
    MAX_AUDIT_PAGE,
    MAX_LINEAGE_DEPTH,
    MAX_NODE_PAGE_SIZE,
    MAX_PAGE_BYTES,
    MAX_PAGE_SIZE,
    MAX_SNAPSHOT_EDGES,
    MAX_SNAPSHOT_NODES,
    DecisionStats,
    DriftPath,
    Edge,
    GraphStore,
    IngestResult,
    LineageHop,
    Node,
    Page,
    StoredCheckpoint,
    ViolationFilter,
    WorkflowSnapshot,
    WorkflowSummary,
)
from ._neo4j import SCHEMES as _NEO4J_SCHEMES
from ._neo4j import Neo4jGraphStore
from ._sqlite import SqliteGraphStore

_SQLITE_PREFIX = "sqlite:///"


def sqlite_path(url: str, home: Path) -> Path:
    """The SQLite file named by a BASTION_GRAPH_URL value.

    Empty means $BASTION_HOME/graph.db. `sqlite:///` URLs follow SQLAlchemy: what
    follows the three slashes is the path, so `sqlite:///var/graph.db` is relative to
    the working directory and `sqlite:////srv/graph.db` is absolute.
    """
    if not url:
        return home / "graph.db"
    if not url.startswith(_SQLITE_PREFIX):
        raise ConfigError(
            f"BASTION_GRAPH_URL={_shown(url)!r}: expected empty, sqlite:///path, or neo4j://[user:password@]host:port[/database]"
        )
    path = url.removeprefix(_SQLITE_PREFIX)
    if not path or path == ":memory:":
        # The writer thread and the readers share the database through its file.
        raise ConfigError(f"BASTION_GRAPH_URL={url!r}: give a file path (an in-memory graph is not supported)")
    return Path(path)


def is_neo4j(url: str) -> bool:
    return url.lower().startswith(_NEO4J_SCHEMES)


def _shown(url: str) -> str:
    # A URL that is not ours may still carry a password; never echo one.
    return url.split("@", 1)[-1] if "@" in url else url


async def open_store(url: str, home: Path) -> GraphStore:
    """Open the backend named by `url` (a BASTION_GRAPH_URL value); ConfigError when unusable,
    StoreError when the backend cannot be reached."""
    if is_neo4j(url):
        return await Neo4jGraphStore.open(url)
    return await SqliteGraphStore.open(sqlite_path(url, home))


__all__ = [
    "DEFAULT_AUDIT_PAGE",
    "DEFAULT_EXPIRY_BATCH",
    "DEFAULT_LINEAGE_DEPTH",
    "DEFAULT_NODE_PAGE_SIZE",
    "DEFAULT_PAGE_SIZE",
    "MAX_AUDIT_PAGE",
    "MAX_LINEAGE_DEPTH",
    "MAX_NODE_PAGE_SIZE",
    "MAX_PAGE_BYTES",
    "MAX_PAGE_SIZE",
    "MAX_SNAPSHOT_EDGES",
    "MAX_SNAPSHOT_NODES",
    "DecisionStats",
    "DriftPath",
    "Edge",
    "GraphStore",
    "IngestResult",
    "LineageHop",
    "Neo4jGraphStore",
    "Node",
    "Page",
    "SqliteGraphStore",
    "StoredCheckpoint",
    "ViolationFilter",
    "WorkflowSnapshot",
    "WorkflowSummary",
    "is_neo4j",
    "open_store",
    "sqlite_path",
]
