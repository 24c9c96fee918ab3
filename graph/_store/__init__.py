"""Graph storage backends behind one interface (`GraphStore`), chosen by BASTION_GRAPH_URL."""

from __future__ import annotations

from pathlib import Path

from bastion._errors import ConfigError

from ._base import (
    DEFAULT_AUDIT_PAGE,
    DEFAULT_LINEAGE_DEPTH,
    DEFAULT_NODE_PAGE_SIZE,
    DEFAULT_PAGE_SIZE,
    MAX_AUDIT_PAGE,
    MAX_LINEAGE_DEPTH,
    MAX_NODE_PAGE_SIZE,
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
    ViolationFilter,
    WorkflowSnapshot,
    WorkflowSummary,
)
from ._sqlite import SqliteGraphStore

_SQLITE_PREFIX = "sqlite:///"
_NEO4J_SCHEMES = ("neo4j://", "neo4j+s://", "neo4j+ssc://", "bolt://", "bolt+s://", "bolt+ssc://")


def sqlite_path(url: str, home: Path) -> Path:
    """The SQLite file named by a BASTION_GRAPH_URL value.

    Empty means $BASTION_HOME/graph.db. `sqlite:///` URLs follow SQLAlchemy: what
    follows the three slashes is the path, so `sqlite:///var/graph.db` is relative to
    the working directory and `sqlite:////srv/graph.db` is absolute.
    """
    if not url:
        return home / "graph.db"
    if url.lower().startswith(_NEO4J_SCHEMES):
        raise ConfigError(
            f"BASTION_GRAPH_URL={url!r}: the Neo4j backend is not supported yet; "
            "unset BASTION_GRAPH_URL to use SQLite at $BASTION_HOME/graph.db, or give sqlite:///path"
        )
    if not url.startswith(_SQLITE_PREFIX):
        raise ConfigError(f"BASTION_GRAPH_URL={url!r}: expected empty or sqlite:///path")
    path = url.removeprefix(_SQLITE_PREFIX)
    if not path or path == ":memory:":
        # The writer thread and the readers share the database through its file.
        raise ConfigError(f"BASTION_GRAPH_URL={url!r}: give a file path (an in-memory graph is not supported)")
    return Path(path)


async def open_store(url: str, home: Path) -> GraphStore:
    """Open the backend named by `url` (a BASTION_GRAPH_URL value); ConfigError when unusable."""
    return await SqliteGraphStore.open(sqlite_path(url, home))


__all__ = [
    "DEFAULT_AUDIT_PAGE",
    "DEFAULT_LINEAGE_DEPTH",
    "DEFAULT_NODE_PAGE_SIZE",
    "DEFAULT_PAGE_SIZE",
    "MAX_AUDIT_PAGE",
    "MAX_LINEAGE_DEPTH",
    "MAX_NODE_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "MAX_SNAPSHOT_EDGES",
    "MAX_SNAPSHOT_NODES",
    "DecisionStats",
    "DriftPath",
    "Edge",
    "GraphStore",
    "IngestResult",
    "LineageHop",
    "Node",
    "Page",
    "SqliteGraphStore",
    "ViolationFilter",
    "WorkflowSnapshot",
    "WorkflowSummary",
    "open_store",
    "sqlite_path",
]
