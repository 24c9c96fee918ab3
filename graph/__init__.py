"""bastion.graph: the causal graph of agent actions and the audit log of violations.

The proxy's journal streams events to `GraphService.Ingest` (gRPC, idempotent by
event_id); the REST API serves workflows, nodes, edges and violations to the
dashboard and CLI. Storage sits behind `GraphStore`: SQLite (WAL) by default, Neo4j
when BASTION_GRAPH_URL is neo4j://… or bolt://….

Running it:
    main(config)                           `bastion graph serve`; returns the exit code
    serve(settings, app, ready, stop)      the same service inside a running event loop
    GraphSettings                          BASTION_GRAPH_ADDR, BASTION_GRAPH_GRPC_ADDR, BASTION_GRAPH_URL

Embedding the parts:
    create_app(store, *, verifier, hosts, metrics=None)
                                           the FastAPI app (reads need an operator/auditor token)
    GraphServicer(store, metrics=None)     the gRPC servicer

Storage:
    open_store(url, home)                  the backend a BASTION_GRAPH_URL names
    GraphStore                             the interface every backend implements
    SqliteGraphStore                       the embedded default
    Neo4jGraphStore                        Neo4j 5 through the official driver
    IngestResult, WorkflowSummary, WorkflowSnapshot, Node, Edge, LineageHop, DriftPath,
    DecisionStats, ViolationFilter, Page   the records GraphStore takes and returns

The audit chain (hash-chained records, exports, offline verification) is described in
bastion.graph._audit and bastion.graph._export; `bastion audit …` drives it.
"""

from ._api import create_app
from ._config import GraphSettings
from ._grpc import GraphServicer
from ._server import main, serve
from ._store import (
    DecisionStats,
    DriftPath,
    Edge,
    GraphStore,
    IngestResult,
    LineageHop,
    Neo4jGraphStore,
    Node,
    Page,
    SqliteGraphStore,
    ViolationFilter,
    WorkflowSnapshot,
    WorkflowSummary,
    open_store,
)

__all__ = [
    "DecisionStats",
    "DriftPath",
    "Edge",
    "GraphServicer",
    "GraphSettings",
    "GraphStore",
    "IngestResult",
    "LineageHop",
    "Neo4jGraphStore",
    "Node",
    "Page",
    "SqliteGraphStore",
    "ViolationFilter",
    "WorkflowSnapshot",
    "WorkflowSummary",
    "create_app",
    "main",
    "open_store",
    "serve",
]
