"""The graph REST API (FastAPI; OpenAPI at /docs): workflows, nodes, drift paths,
violations, the audit chain (`_audit_api.py`), health and metrics. Read-only: events
arrive over gRPC (`_grpc.py`).

Workflow and audit routes need a bearer JWT with role operator, admin or auditor
(bastion._auth). Readers of the deployment's own tenant (`default`) and admins see every
tenant's workflows; a reader of another tenant sees only its own (`_scope`), and not the
audit chain, which spans every tenant (`_home_tenant`). Until the graph has received the
revocation list from the policy service every token is refused, 503
`bastion.auth.revocations_unavailable` (bastion._identity: fail closed). The Host check and
the error body `{"error": {"code", "message"}}` come from bastion._rest (a bad cursor is
400, an unknown workflow 404, an unavailable store 503).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from bastion._auth import Guard, require_reader
from bastion._authz import acts_in
from bastion._errors import ForbiddenError
from bastion._hosts import HostCheck
from bastion._identity import DEFAULT_TENANT, Principal, TokenVerifier
from bastion._rest import AUTH_RESPONSES, error_doc, rest_app
from bastion._sealing import Sealer
from bastion.dashboard import dashboard_router

from ._audit_api import router as audit_router
from ._metrics import GraphMetrics
from ._store import (
    DEFAULT_LINEAGE_DEPTH,
    DEFAULT_NODE_PAGE_SIZE,
    DEFAULT_PAGE_SIZE,
    MAX_LINEAGE_DEPTH,
    MAX_NODE_PAGE_SIZE,
    MAX_PAGE_SIZE,
    DriftPath,
    GraphStore,
    ViolationFilter,
    WorkflowSnapshot,
    WorkflowSummary,
)
from ._store._cursor import invalid_cursor
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
from ._walks import DEFAULT_DEADLINE_S, AuditWalks

_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: error_doc("Unknown workflow.")}
_BAD_CURSOR: dict[int | str, dict[str, Any]] = {400: error_doc("The cursor is not one this listing returned.")}
_UNAVAILABLE: dict[int | str, dict[str, Any]] = {503: error_doc("The store is unavailable.")}

Limit = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Page size.")]
NodeLimit = Annotated[int, Query(ge=1, le=MAX_NODE_PAGE_SIZE, description="Page size.")]
Cursor = Annotated[str | None, Query(description="The next_cursor of the previous page.")]
#: Store pages one /graphs request reads at most to fill a page for a reader of one tenant.
_SCOPED_PAGES = 8
#: How a sealed workflow-listing cursor starts.
_SEALED = "g1."


def create_app(
    store: GraphStore,
    *,
    verifier: TokenVerifier,
    hosts: HostCheck,
    metrics: GraphMetrics | None = None,
    checkpoint_keys: Sequence[Ed25519PublicKey] = (),
    signing_key: Ed25519PrivateKey | None = None,
    audit_deadline_s: float = DEFAULT_DEADLINE_S,
    dashboard_proxy_url: str | None = None,
) -> FastAPI:
    """The REST app over `store`. It does not own the store: the caller closes it.

    `verifier` checks the bearer JWTs of the data routes; `hosts` is the DNS-rebinding check;
    `checkpoint_keys` check the audit chain's signed checkpoints on `/audit/verify`;
    `signing_key` (the stack's) signs each `/audit/export` file (unsigned without it);
    `audit_deadline_s` bounds each walk of the audit chain (bastion.graph._walks);
    `dashboard_proxy_url` (an origin) is the proxy whose approvals and queue `/ui` shows.
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
    app.state.audit_walks = AuditWalks(audit_deadline_s)
    # Listing cursors of readers confined to one tenant: sealed, so that they name no other
    # tenant's workflow (`list_workflows`). A random key: such a cursor dies with the process.
    app.state.cursors = Sealer(b"bastion graph cursor")
    # Everything on _data is workflow or audit data: one router-wide guard, so a route
    # added there cannot forget it. Left open: the ops routes (no workflow data) and
    # /docs and /openapi.json, which show the API's shape, not its data: /docs must load
    # before its "Authorize" button can take a token.
    guard = require_reader(verifier)
    app.include_router(_data, dependencies=[Depends(_remembered(guard))], responses=AUTH_RESPONSES)
    app.include_router(audit_router, dependencies=[Depends(_home_tenant(guard))], responses=AUTH_RESPONSES)
    app.include_router(_ops)
    # The dashboard's static files: no data in them, so no token (its requests carry one).
    app.include_router(dashboard_router(dashboard_proxy_url))
    return app


def _remembered(guard: Guard) -> Guard:
    """`guard`, keeping who passed in the request's state for `_scope`."""
    # A default, not Annotated: `guard` is local, and annotations are read as strings here.
    authorized = Depends(guard)

    async def remember(request: Request, principal: Principal = authorized) -> Principal:
        request.state.principal = principal
        return principal

    return remember


def _home_tenant(guard: Guard) -> Guard:
    """Readers of the deployment's own tenant (`default`) and admins pass; others are refused.

    The audit chain is one chain across every tenant: its export, SLO and verification show
    every tenant's records (found by an attacker's probe: a tenant-B auditor read tenant A's).
    An admin acts in every tenant, as on the policy service's key routes.
    """
    authorized = Depends(guard)

    async def checked(principal: Principal = authorized) -> Principal:
        if _tenant_of(principal) is not None:
            raise ForbiddenError(
                f"{principal.subject!r} is of tenant {principal.tenant!r}: the audit chain spans every tenant, so it "
                f"is open to the {DEFAULT_TENANT!r} tenant's operators and auditors and to admins only"
            )
        return principal

    return checked


def _tenant_of(principal: Principal) -> str | None:
    """The one tenant whose data `principal` may read; None: every tenant's."""
    if acts_in(principal, DEFAULT_TENANT):
        return None
    return principal.tenant


def _scope(request: Request) -> str | None:
    return _tenant_of(request.state.principal)


#: The tenant a reader is confined to (None: none).
Scope = Annotated[str | None, Depends(_scope)]


async def _visible(store: GraphStore, scope: str | None, workflow_ids: Sequence[str]) -> set[str]:
    """Those of `workflow_ids` a reader confined to `scope` may read: workflows with a node of
    its tenant and none of another ("" — refusals before authentication — aside). A
    workflow shared with another tenant (an A2A delegation across tenants, the service's
    own `bastion.rejected`) is an admin's to read."""
    if scope is None:
        return set(workflow_ids)
    tenants = await store.workflow_tenants(workflow_ids)
    return {wf for wf, found in tenants.items() if scope in found and found <= {scope, ""}}


async def _visible_summaries(
    store: GraphStore, scope: str | None, summaries: Sequence[WorkflowSummary]
) -> list[WorkflowSummary]:
    visible = await _visible(store, scope, [summary.workflow_id for summary in summaries])
    return [summary for summary in summaries if summary.workflow_id in visible]


async def _check_visible(store: GraphStore, scope: str | None, workflow_id: str) -> None:
    # Another tenant's workflow is "not found": its existence is not the reader's to learn.
    if scope is not None and not await _visible(store, scope, [workflow_id]):
        raise _unknown_workflow(workflow_id)


async def _scoped_path(store: GraphStore, scope: str | None, path: DriftPath) -> DriftPath:
    """A drift path as a reader confined to `scope` may see it: up to the first hop in a
    workflow it may not read, where it ends as `not_visible`. An edge into another tenant's
    workflow (ingested by a holder of the service token) showed that tenant's node, tool
    and outcome to this reader (found by an attacker's probe)."""
    if scope is None:
        return path
    visible = await _visible(store, scope, sorted({hop.workflow_id for hop in path.hops if hop.workflow_id}))
    for index, hop in enumerate(path.hops):
        if hop.workflow_id and hop.workflow_id not in visible:
            kept = path.hops[:index]
            if kept:
                kept = (*kept[:-1], dataclasses.replace(kept[-1], via=None, reason=""))
            return DriftPath(hops=kept, origin="not_visible")
    return path


def _scoped_snapshot(scope: str | None, snapshot: WorkflowSnapshot) -> WorkflowSnapshot:
    """A workflow's snapshot as a reader confined to `scope` may see it: only edges between
    its nodes. An edge may name a node of another workflow, another tenant's too."""
    if scope is None:
        return snapshot
    own = {node.event.node_id for node in snapshot.nodes}
    edges = tuple(edge for edge in snapshot.edges if edge.target in own)
    return dataclasses.replace(snapshot, edges=edges) if len(edges) < len(snapshot.edges) else snapshot


def _store(request: Request) -> GraphStore:
    store: GraphStore = request.app.state.store
    return store


Store = Annotated[GraphStore, Depends(_store)]

_data = APIRouter()  # workflow and audit data: behind the reader guard
_ops = APIRouter()  # probes and metrics: open


@_data.get("/graphs", response_model=WorkflowPage, tags=["graphs"], responses=_BAD_CURSOR)
async def list_workflows(
    request: Request, store: Store, scope: Scope, limit: Limit = DEFAULT_PAGE_SIZE, cursor: Cursor = None
) -> WorkflowPage:
    """Workflows, most recently active first. For a reader confined to one tenant, a page
    may hold fewer than `limit` (even none) while `next_cursor` says more may follow, and
    the cursor is sealed: a plain one names the last workflow read, another tenant's too."""
    cursors: Sealer = request.app.state.cursors
    if scope is not None and cursor is not None:
        cursor = cursors.open(cursor, scope, _SEALED)
        if cursor is None:
            raise invalid_cursor()
    page = await store.list_workflows(limit=limit, cursor=cursor)
    items = await _visible_summaries(store, scope, page.items)
    reads = 1
    # Read on while the reader's tenant filled less than a page, a few store pages at most.
    while scope is not None and len(items) < limit and page.next_cursor is not None and reads < _SCOPED_PAGES:
        page = await store.list_workflows(limit=limit - len(items), cursor=page.next_cursor)
        items += await _visible_summaries(store, scope, page.items)
        reads += 1
    following = page.next_cursor
    if scope is not None and following is not None:
        following = cursors.seal(following, scope, _SEALED)
    return WorkflowPage(items=[workflow_view(s) for s in items], next_cursor=following)


@_data.get("/graphs/{workflow_id}", response_model=WorkflowGraph, tags=["graphs"], responses=_NOT_FOUND)
async def get_workflow(workflow_id: str, store: Store, scope: Scope) -> Response:
    """One workflow's summary with its nodes and edges, up to a cap (see `truncated`)."""
    await _check_visible(store, scope, workflow_id)
    snapshot = await store.snapshot(workflow_id)
    if snapshot is None:
        raise _unknown_workflow(workflow_id)
    return await _json_off_loop(lambda: workflow_graph(_scoped_snapshot(scope, snapshot)))


@_data.get("/graphs/{workflow_id}/nodes", response_model=NodeList, tags=["graphs"], responses=_NOT_FOUND | _BAD_CURSOR)
async def list_nodes(
    workflow_id: str, store: Store, scope: Scope, limit: NodeLimit = DEFAULT_NODE_PAGE_SIZE, cursor: Cursor = None
) -> Response:
    """A workflow's nodes, oldest first, in pages of at most `limit` nodes and about 16 MiB
    of stored events (so a page may hold fewer: follow `next_cursor`)."""
    await _check_visible(store, scope, workflow_id)
    page = await store.nodes(workflow_id, limit=limit, cursor=cursor)
    if page is None:
        raise _unknown_workflow(workflow_id)
    return await _json_off_loop(
        lambda: NodeList(
            workflow_id=workflow_id, items=[node_view(node) for node in page.items], next_cursor=page.next_cursor
        )
    )


async def _json_off_loop(build: Callable[[], BaseModel]) -> Response:
    """A view and its JSON, made in a worker thread. A page of nodes is bounded in stored
    bytes, not in values: 270 nodes whose arguments are 9,990 small strings each (an agent's
    ordinary call) took 2 s to turn into views, and held the graph's event loop, every other
    reader, ingest and probe with it, for as long (an attacker's probe)."""
    body = await asyncio.to_thread(lambda: build().model_dump_json().encode())
    return Response(content=body, media_type="application/json")


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
    scope: Scope,
    max_depth: Annotated[
        int, Query(ge=1, le=MAX_LINEAGE_DEPTH, description="Edges to follow at most.")
    ] = DEFAULT_LINEAGE_DEPTH,
) -> DriftPathView:
    """Where this node's data came from: back along INFORMED_BY to where it entered the workflow,
    or, for a node informed by nothing, along DELEGATED_TO/CAUSED_BY to the workflow's root;
    each hop with the edge followed and its reason."""
    await _check_visible(store, scope, workflow_id)
    path = await store.drift_path(workflow_id, node_id, max_depth)
    if path is None:
        if await store.workflow(workflow_id) is None:
            raise _unknown_workflow(workflow_id)
        raise HTTPException(status_code=404, detail=f"node {node_id!r} not found in workflow {workflow_id!r}")
    return drift_view(workflow_id, node_id, await _scoped_path(store, scope, path))


@_data.get("/audit/violations", response_model=ViolationPage, tags=["audit"], responses=_BAD_CURSOR)
async def list_violations(
    store: Store,
    scope: Scope,
    workflow_id: Annotated[str | None, Query(description="Only this workflow.")] = None,
    agent_id: Annotated[str | None, Query(description="Only this agent.")] = None,
    limit: Limit = DEFAULT_PAGE_SIZE,
    cursor: Cursor = None,
) -> ViolationPage:
    """Blocked and rejected actions, newest first (a reader confined to one tenant: its own)."""
    filters = ViolationFilter(workflow_id=workflow_id, agent_id=agent_id, tenant=scope)
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
