"""The graph REST API (FastAPI; OpenAPI at /docs): workflows, nodes, drift paths,
violations, the audit chain (`_audit_api.py`), health and metrics. Read-only: events
arrive over gRPC (`_grpc.py`).

Workflow and audit routes need a bearer JWT with role operator, admin or auditor
(bastion._auth), of the deployment's own tenant unless it is an admin's (`_home_tenant`);
the Host check and the error body `{"error": {"code", "message"}}`
come from bastion._rest (a bad cursor is 400, an unknown workflow 404, an unavailable
store 503).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bastion._auth import Guard, require_reader
from bastion._errors import ForbiddenError
from bastion._hosts import HostCheck
from bastion._identity import ADMIN_ROLE, DEFAULT_TENANT, Principal, TokenVerifier
from bastion._rest import AUTH_RESPONSES, error_doc, rest_app

from ._audit_api import router as audit_router
from ._metrics import GraphMetrics
from ._store import (
    DEFAULT_LINEAGE_DEPTH,
    DEFAULT_NODE_PAGE_SIZE,
    DEFAULT_PAGE_SIZE,
    MAX_LINEAGE_DEPTH,
    MAX_NODE_PAGE_SIZE,
    MAX_PAGE_SIZE,
    GraphStore,
    ViolationFilter,
)
from ._views import (
    DriftPathView,
    NodeList,
    Status,
    ViolationPage,
    WorkflowGraph,
    WorkflowPage,
    drift_view,
    node_view,
    violation_view,
    workflow_graph,
    workflow_view,
)

_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: error_doc("Unknown workflow.")}
_BAD_CURSOR: dict[int | str, dict[str, Any]] = {400: error_doc("The cursor is not one this listing returned.")}
_UNAVAILABLE: dict[int | str, dict[str, Any]] = {503: error_doc("The store is unavailable.")}

Limit = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Page size.")]
NodeLimit = Annotated[int, Query(ge=1, le=MAX_NODE_PAGE_SIZE, description="Page size.")]
Cursor = Annotated[str | None, Query(description="The next_cursor of the previous page.")]


def create_app(
    store: GraphStore,
    *,
    verifier: TokenVerifier,
    hosts: HostCheck,
    metrics: GraphMetrics | None = None,
    checkpoint_keys: Sequence[Ed25519PublicKey] = (),
    signing_key: Ed25519PrivateKey | None = None,
) -> FastAPI:
    """The REST app over `store`. It does not own the store: the caller closes it.

    `verifier` checks the bearer JWTs of the data routes; `hosts` is the DNS-rebinding check;
    `checkpoint_keys` check the audit chain's signed checkpoints on `/audit/verify`;
    `signing_key` (the stack's) signs each `/audit/export` file (unsigned without it).
    """
    app = rest_app(
        title="Bastion graph",
        description="The causal graph of agent actions and the audit log of violations.",
        hosts=hosts,
    )
    app.state.store = store
    app.state.metrics = metrics or GraphMetrics()
    app.state.checkpoint_keys = tuple(checkpoint_keys)
    app.state.signing_key = signing_key
    # Everything on _data is workflow or audit data: one router-wide guard, so a route
    # added there cannot forget it. Left open: the ops routes (no workflow data) and
    # FastAPI's /docs, /docs/oauth2-redirect, /redoc and /openapi.json, which show the
    # API's shape, not its data: the dashboard's client is generated from the spec, and
    # /docs must load before its "Authorize" button can take a token.
    reader = [Depends(_home_tenant(require_reader(verifier)))]
    app.include_router(_data, dependencies=reader, responses=AUTH_RESPONSES)
    app.include_router(audit_router, dependencies=reader, responses=AUTH_RESPONSES)
    app.include_router(_ops)
    return app


def _home_tenant(guard: Guard) -> Guard:
    """Readers of the deployment's own tenant (`default`) and admins pass; others are refused.

    The graph holds every tenant's workflows and one audit chain across them, and its views
    are not scoped per tenant yet: an operator or auditor of another tenant would read them
    all (found by an attacker's probe). Until they are, such a caller is refused (fail
    closed) rather than shown other tenants' data; an admin acts in every tenant, as on the
    policy service's key routes.
    """

    # A default, not Annotated: `guard` is local, and annotations are read as strings here.
    authorized = Depends(guard)

    async def checked(principal: Principal = authorized) -> Principal:
        if principal.tenant != DEFAULT_TENANT and ADMIN_ROLE not in principal.roles:
            raise ForbiddenError(
                f"{principal.subject!r} is of tenant {principal.tenant!r}: the graph's views span every tenant and "
                f"are not scoped per tenant yet, so they are open to the {DEFAULT_TENANT!r} tenant's operators and "
                "auditors and to admins only"
            )
        return principal

    return checked


def _store(request: Request) -> GraphStore:
    store: GraphStore = request.app.state.store
    return store


Store = Annotated[GraphStore, Depends(_store)]

_data = APIRouter()  # workflow and audit data: behind the reader guard
_ops = APIRouter()  # probes and metrics: open


@_data.get("/graphs", response_model=WorkflowPage, tags=["graphs"], responses=_BAD_CURSOR)
async def list_workflows(store: Store, limit: Limit = DEFAULT_PAGE_SIZE, cursor: Cursor = None) -> WorkflowPage:
    """Workflows, most recently active first."""
    page = await store.list_workflows(limit=limit, cursor=cursor)
    return WorkflowPage(items=[workflow_view(s) for s in page.items], next_cursor=page.next_cursor)


@_data.get("/graphs/{workflow_id}", response_model=WorkflowGraph, tags=["graphs"], responses=_NOT_FOUND)
async def get_workflow(workflow_id: str, store: Store) -> WorkflowGraph:
    """One workflow's summary with its nodes and edges, up to a cap (see `truncated`)."""
    snapshot = await store.snapshot(workflow_id)
    if snapshot is None:
        raise _unknown_workflow(workflow_id)
    return workflow_graph(snapshot)


@_data.get("/graphs/{workflow_id}/nodes", response_model=NodeList, tags=["graphs"], responses=_NOT_FOUND | _BAD_CURSOR)
async def list_nodes(
    workflow_id: str, store: Store, limit: NodeLimit = DEFAULT_NODE_PAGE_SIZE, cursor: Cursor = None
) -> NodeList:
    """A workflow's nodes, oldest first, in pages."""
    page = await store.nodes(workflow_id, limit=limit, cursor=cursor)
    if page is None:
        raise _unknown_workflow(workflow_id)
    return NodeList(
        workflow_id=workflow_id, items=[node_view(node) for node in page.items], next_cursor=page.next_cursor
    )


@_data.get(
    "/graphs/{workflow_id}/drift-path/{node_id}",
    response_model=DriftPathView,
    tags=["graphs"],
    responses={404: error_doc("Unknown workflow, or no such node in it.")},
)
async def drift_path(
    workflow_id: str,
    node_id: str,
    store: Store,
    max_depth: Annotated[
        int, Query(ge=1, le=MAX_LINEAGE_DEPTH, description="Edges to follow at most.")
    ] = DEFAULT_LINEAGE_DEPTH,
) -> DriftPathView:
    """Where this node's data came from: back along INFORMED_BY to where it entered the workflow,
    or, for a node informed by nothing, along DELEGATED_TO/CAUSED_BY to the workflow's root;
    each hop with the edge followed and its reason."""
    path = await store.drift_path(workflow_id, node_id, max_depth)
    if path is None:
        if await store.workflow(workflow_id) is None:
            raise _unknown_workflow(workflow_id)
        raise HTTPException(status_code=404, detail=f"node {node_id!r} not found in workflow {workflow_id!r}")
    return drift_view(workflow_id, node_id, path)


@_data.get("/audit/violations", response_model=ViolationPage, tags=["audit"], responses=_BAD_CURSOR)
async def list_violations(
    store: Store,
    workflow_id: Annotated[str | None, Query(description="Only this workflow.")] = None,
    agent_id: Annotated[str | None, Query(description="Only this agent.")] = None,
    limit: Limit = DEFAULT_PAGE_SIZE,
    cursor: Cursor = None,
) -> ViolationPage:
    """Blocked and rejected actions, newest first."""
    filters = ViolationFilter(workflow_id=workflow_id, agent_id=agent_id)
    page = await store.violations(filters, limit=limit, cursor=cursor)
    return ViolationPage(items=[violation_view(node) for node in page.items], next_cursor=page.next_cursor)


@_ops.get("/healthz", response_model=Status, tags=["ops"])
async def healthz() -> Status:
    """The process is up (it may not be able to serve yet: see /readyz)."""
    return Status(status="ok")


@_ops.get("/readyz", response_model=Status, tags=["ops"], responses=_UNAVAILABLE)
async def readyz(store: Store) -> Status:
    """The store answers reads and its writer is running."""
    await store.ping()
    return Status(status="ready")


@_ops.get("/metrics", tags=["ops"], response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition of this service's metrics."""
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def _unknown_workflow(workflow_id: str) -> HTTPException:
    return HTTPException(status_code=404, detail=f"workflow {workflow_id!r} not found")
