"""The graph REST app in process (ASGI transport): error mapping, metrics isolation, schema,
node paging and consistent workflow reads. Requests carry an auditor token."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from unittest import mock

import httpx
import pytest
from fixtures.graphapi import auditor_token, bearer

from bastion._appconfig import AuthConfig
from bastion._hosts import HostCheck
from bastion._identity import TokenVerifier, ensure_dev_key, issue_token, load_public_keys
from bastion.graph import IngestResult, SqliteGraphStore, create_app
from bastion.graph._store import MAX_SNAPSHOT_EDGES, MAX_SNAPSHOT_NODES, _sqlite
from bastion.v1 import graph_pb2, policy_pb2

R = TypeVar("R")

_T0_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteGraphStore]:
    opened = await SqliteGraphStore.open(tmp_path / "graph.db")
    yield opened
    await opened.close()


def _client(store: SqliteGraphStore, home: Path) -> httpx.AsyncClient:
    """A client of the app over `store`, reading as an auditor whose key lives under `home`."""
    verifier = TokenVerifier(AuthConfig(), load_public_keys(AuthConfig(), home))
    app = create_app(store, verifier=verifier, hosts=HostCheck(("graph",), "127.0.0.1"))
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://graph", headers=bearer(auditor_token(home))
    )


def _event(event_id: str, *, second: int = 0, parents: Sequence[str] = ()) -> graph_pb2.Event:
    event = graph_pb2.Event(
        event_id=event_id,
        workflow_id="wf-1",
        node_id=f"node-{event_id}",
        parent_ids=parents,
        node_type=graph_pb2.ACTION,
        action=policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server="mail", tool="send", method="tools/call"),
        outcome=graph_pb2.FORWARDED,
    )
    event.started_at.FromNanoseconds(_T0_NS + second * 10**9)
    return event


class _CountingStore(SqliteGraphStore):
    """Counts read transactions: every `_read` call is exactly one."""

    reads = 0

    async def _read(self, query: Callable[[sqlite3.Connection], R]) -> R:
        self.reads += 1
        return await super()._read(query)


async def test_unavailable_store_makes_reads_and_readiness_503_with_an_error_body(
    store: SqliteGraphStore, tmp_path: Path
) -> None:
    async with _client(store, tmp_path) as client:
        assert (await client.get("/readyz")).status_code == 200
        await store.close()

        ready = await client.get("/readyz")
        listing = await client.get("/graphs")
        alive = await client.get("/healthz")

    assert (ready.status_code, listing.status_code) == (503, 503)
    assert ready.json()["error"]["code"] == listing.json()["error"]["code"] == "bastion.store"
    assert "is closed" in ready.json()["error"]["message"]
    assert "is closed" in listing.json()["error"]["message"]
    assert alive.json() == {"status": "ok"}


async def test_each_app_has_its_own_metrics_registry(store: SqliteGraphStore, tmp_path: Path) -> None:
    # With the global registry the second app would fail on duplicate metric names.
    async with _client(store, tmp_path) as first, _client(store, tmp_path) as second:
        one, two = await first.get("/metrics"), await second.get("/metrics")

    assert one.status_code == two.status_code == 200
    assert "bastion_graph_ingest_seconds" in one.text
    assert one.headers["content-type"].startswith("text/plain")


async def test_openapi_documents_the_enum_names_clients_receive(store: SqliteGraphStore, tmp_path: Path) -> None:
    async with _client(store, tmp_path) as client:
        schema = (await client.get("/openapi.json")).json()

    node = schema["components"]["schemas"]["NodeView"]["properties"]
    assert "BLOCKED" in node["outcome"]["description"]
    assert "THINKING" in node["node_type"]["description"]
    listing = schema["paths"]["/graphs"]["get"]
    assert {p["name"] for p in listing["parameters"]} == {"limit", "cursor"}


async def test_nodes_are_paged_oldest_first_with_an_opaque_cursor(store: SqliteGraphStore, tmp_path: Path) -> None:
    await store.ingest([_event(f"e{i}", second=i) for i in reversed(range(5))])

    async with _client(store, tmp_path) as client:
        pages = [(await client.get("/graphs/wf-1/nodes", params={"limit": 2})).json()]
        while pages[-1]["next_cursor"] is not None:
            params = {"limit": 2, "cursor": pages[-1]["next_cursor"]}
            pages.append((await client.get("/graphs/wf-1/nodes", params=params)).json())
        default = (await client.get("/graphs/wf-1/nodes")).json()

    assert [[node["event_id"] for node in page["items"]] for page in pages] == [["e0", "e1"], ["e2", "e3"], ["e4"]]
    assert {tuple(page) for page in pages} == {("workflow_id", "items", "next_cursor")}
    assert {page["workflow_id"] for page in pages} == {"wf-1"}
    assert default == {
        "workflow_id": "wf-1",
        "items": [n for page in pages for n in page["items"]],
        "next_cursor": None,
    }


@pytest.mark.parametrize(
    ("path", "params", "status", "code"),
    [
        ("/graphs/wf-1/nodes", {"limit": 0}, 422, "bastion.invalid_request"),
        ("/graphs/wf-1/nodes", {"limit": 5001}, 422, "bastion.invalid_request"),
        ("/graphs/wf-1/nodes", {"cursor": "not-a-cursor"}, 400, "bastion.protocol"),
        ("/graphs/nope/nodes", {}, 404, "bastion.not_found"),
        ("/no-such-route", {}, 404, "bastion.not_found"),
    ],
)
async def test_bad_node_page_requests_are_client_errors_in_the_shared_error_body(
    store: SqliteGraphStore, tmp_path: Path, path: str, params: dict[str, Any], status: int, code: str
) -> None:
    await store.ingest([_event("e1")])

    async with _client(store, tmp_path) as client:
        response = await client.get(path, params=params)

    assert response.status_code == status
    assert set(response.json()) == {"error"}
    assert set(response.json()["error"]) == {"code", "message"}
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]


async def test_a_validation_error_names_the_parameter_and_a_wrong_method_is_405(
    store: SqliteGraphStore, tmp_path: Path
) -> None:
    async with _client(store, tmp_path) as client:
        too_small = await client.get("/graphs", params={"limit": 0})
        posted = await client.post("/graphs")

    assert too_small.json()["error"]["message"] == "query.limit: Input should be greater than or equal to 1"
    assert (posted.status_code, posted.json()["error"]["code"]) == (405, "bastion.method_not_allowed")
    assert posted.headers["allow"] == "GET"


async def test_workflow_graph_is_read_at_one_moment_even_while_an_ingest_commits(
    store: SqliteGraphStore, tmp_path: Path
) -> None:
    await store.ingest([_event("e1", second=1), _event("e2", second=2, parents=["node-e1"])])
    loop = asyncio.get_running_loop()
    read_nodes = _sqlite._select_nodes
    late: list[IngestResult] = []

    def commit_an_ingest_then_read_nodes(*args: Any, **kwargs: Any) -> Any:
        # On a reader thread, after the request read the summary and before it reads the
        # nodes: the moment a real concurrent Ingest can land, made certain to happen.
        if not late:
            ingest = store.ingest([_event("e3", second=3, parents=["node-e2"])])
            late.append(asyncio.run_coroutine_threadsafe(ingest, loop).result(timeout=10))
        return read_nodes(*args, **kwargs)

    async with _client(store, tmp_path) as client:
        with mock.patch.object(_sqlite, "_select_nodes", commit_an_ingest_then_read_nodes):
            during = (await client.get("/graphs/wf-1")).json()
        after = (await client.get("/graphs/wf-1")).json()

    assert late == [IngestResult(accepted=1, duplicates=0)]
    assert (during["node_count"], [n["node_id"] for n in during["nodes"]]) == (2, ["node-e1", "node-e2"])
    assert [(e["source"], e["target"]) for e in during["edges"]] == [("node-e2", "node-e1")]
    assert (after["node_count"], len(after["nodes"]), len(after["edges"])) == (3, 3, 2)


async def test_each_workflow_request_is_one_read_transaction_found_or_not(tmp_path: Path) -> None:
    store = await asyncio.to_thread(_CountingStore, tmp_path / "graph.db")
    try:
        await store.ingest([_event("e1")])
        async with _client(store, tmp_path) as client:
            for path, status in [
                ("/graphs/wf-1", 200),
                ("/graphs/wf-1/nodes", 200),
                ("/graphs/nope", 404),
                ("/graphs/nope/nodes", 404),
            ]:
                before = store.reads
                response = await client.get(path)
                assert (response.status_code, store.reads - before) == (status, 1), path
    finally:
        await store.close()


async def test_openapi_documents_node_paging_and_the_workflow_graph_cap(
    store: SqliteGraphStore, tmp_path: Path
) -> None:
    async with _client(store, tmp_path) as client:
        schema = (await client.get("/openapi.json")).json()

    nodes = schema["paths"]["/graphs/{workflow_id}/nodes"]["get"]
    assert {p["name"] for p in nodes["parameters"]} == {"workflow_id", "limit", "cursor"}
    assert {"200", "400", "404"} <= set(nodes["responses"])
    graph = schema["components"]["schemas"]["WorkflowGraph"]
    assert "GET /graphs/{workflow_id}/nodes" in graph["description"]
    assert f"{MAX_SNAPSHOT_NODES} oldest nodes and {MAX_SNAPSHOT_EDGES} edges" in graph["description"]
    assert graph["properties"]["truncated"]["type"] == "boolean"
    assert "next_cursor" in schema["components"]["schemas"]["NodeList"]["required"]


async def test_openapi_shows_the_bearer_scheme_on_every_data_route_and_not_on_the_probes(
    store: SqliteGraphStore, tmp_path: Path
) -> None:
    async with _client(store, tmp_path) as client:
        schema = (await client.get("/openapi.json")).json()

    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": mock.ANY,
    }
    operations = {path: item["get"] for path, item in schema["paths"].items()}
    guarded = {path for path, op in operations.items() if op.get("security") == [{"bearer": []}]}
    assert guarded == {path for path in operations if path.startswith(("/graphs", "/audit"))}
    assert guarded >= {"/graphs", "/graphs/{workflow_id}", "/graphs/{workflow_id}/nodes", "/audit/violations"}
    for path in guarded:
        assert {"401", "403"} <= set(operations[path]["responses"]), path
    assert "security" not in operations["/healthz"]
    error = schema["components"]["schemas"]["ErrorBody"]
    assert error["properties"]["error"] == {"$ref": "#/components/schemas/ErrorDetail"}


def _tenant_event(event_id: str, workflow_id: str, tenant: str, *, blocked: bool = False) -> graph_pb2.Event:
    event = _event(event_id, second=len(event_id))
    event.workflow_id, event.tenant = workflow_id, tenant
    if blocked:
        event.outcome, event.violation_id = graph_pb2.BLOCKED, f"v-{event_id}"
    return event


_TENANTS = [
    _tenant_event("a1", "wf-a", "tenant-a", blocked=True),
    _tenant_event("b1", "wf-b", "tenant-b", blocked=True),
    _tenant_event("b2", "wf-b", ""),  # refused before authentication: no tenant
    _tenant_event("m1", "wf-mixed", "tenant-b"),
    _tenant_event("m2", "wf-mixed", "tenant-a"),  # delegated across tenants: an admin's
    _tenant_event("s1", "wf-sys", ""),
]


async def _as(client: httpx.AsyncClient, home: Path, path: str, roles: tuple[str, ...], tenant: str) -> httpx.Response:
    token = issue_token(ensure_dev_key(home), subject="reader", roles=roles, tenant=tenant)
    return await client.get(path, headers=bearer(token))


@pytest.mark.parametrize("roles", [("auditor",), ("operator",)])
async def test_a_reader_of_another_tenant_sees_its_own_workflows_and_violations_only(
    store: SqliteGraphStore, tmp_path: Path, roles: tuple[str, ...]
) -> None:
    # An attacker's probe read tenant A's workflows, nodes, drift paths and violations with a
    # tenant-B auditor token: the views span every tenant. A reader of tenant B now sees B's.
    await store.ingest(_TENANTS)
    async with _client(store, tmp_path) as client:
        listed = (await _as(client, tmp_path, "/graphs", roles, "tenant-b")).json()
        violations = (await _as(client, tmp_path, "/audit/violations", roles, "tenant-b")).json()
        own = [await _as(client, tmp_path, path, roles, "tenant-b") for path in _workflow_routes("wf-b", "node-b1")]
        others = [
            await _as(client, tmp_path, path, roles, "tenant-b")
            for workflow, node in (("wf-a", "node-a1"), ("wf-mixed", "node-m1"), ("wf-sys", "node-s1"))
            for path in _workflow_routes(workflow, node)
        ]
        filtered = await _as(client, tmp_path, "/audit/violations?workflow_id=wf-a", roles, "tenant-b")
    assert [item["workflow_id"] for item in listed["items"]] == ["wf-b"]
    assert [item["violation_id"] for item in violations["items"]] == ["v-b1"]
    assert [answer.status_code for answer in own] == [200, 200, 200]
    for answer in others:  # not found: another tenant's workflow's existence is not its to learn
        assert answer.status_code == 404, answer.request.url
        assert "not found" in answer.json()["error"]["message"]
    assert filtered.json()["items"] == []


async def test_an_edge_into_another_tenants_workflow_shows_a_scoped_reader_nothing_of_it(
    store: SqliteGraphStore, tmp_path: Path
) -> None:
    """A probe ingested a tenant-B event whose INFORMED_BY edge and parent named a tenant-A
    node: tenant B's auditor then read that node's workflow, tool and outcome through the
    drift path, and its id through the workflow's edges."""
    secret = _tenant_event("a9", "wf-a-secret", "tenant-a", blocked=True)
    secret.action.tool = "secret_tool"
    mine = _tenant_event("b9", "wf-b-mine", "tenant-b")
    mine.parent_ids.append("node-a9")
    mine.edges.add(target_node_id="node-a9", type=graph_pb2.INFORMED_BY, reason="argument 'x' from secret_tool")
    await store.ingest([secret, mine])
    async with _client(store, tmp_path) as client:
        drift = (await _as(client, tmp_path, "/graphs/wf-b-mine/drift-path/node-b9", ("auditor",), "tenant-b")).json()
        graph = (await _as(client, tmp_path, "/graphs/wf-b-mine", ("auditor",), "tenant-b")).json()
        whole = (await _as(client, tmp_path, "/graphs/wf-b-mine/drift-path/node-b9", ("auditor",), "default")).json()
    assert drift["origin"] == "not_visible"
    assert [hop["node_id"] for hop in drift["hops"]] == ["node-b9"]
    assert drift["hops"][0]["via"] is None
    assert "secret_tool" not in str(drift)
    assert "wf-a-secret" not in str(drift)
    assert graph["edges"] == []
    # The deployment's own readers see the whole path.
    assert [hop["workflow_id"] for hop in whole["hops"]] == ["wf-b-mine", "wf-a-secret"]


def _workflow_routes(workflow: str, node: str) -> list[str]:
    return [f"/graphs/{workflow}", f"/graphs/{workflow}/nodes", f"/graphs/{workflow}/drift-path/{node}"]


@pytest.mark.parametrize(("roles", "tenant"), [(("auditor",), "default"), (("admin",), "tenant-b")])
async def test_the_deployments_own_readers_and_admins_see_every_tenant(
    store: SqliteGraphStore, tmp_path: Path, roles: tuple[str, ...], tenant: str
) -> None:
    await store.ingest(_TENANTS)
    async with _client(store, tmp_path) as client:
        listed = (await _as(client, tmp_path, "/graphs", roles, tenant)).json()
        violations = (await _as(client, tmp_path, "/audit/violations", roles, tenant)).json()
        mixed = await _as(client, tmp_path, "/graphs/wf-mixed/nodes", roles, tenant)
    assert {item["workflow_id"] for item in listed["items"]} == {"wf-a", "wf-b", "wf-mixed", "wf-sys"}
    assert {item["violation_id"] for item in violations["items"]} == {"v-a1", "v-b1"}
    assert mixed.status_code == 200


async def test_a_scoped_listing_reads_on_past_other_tenants_pages_and_follows_its_cursor(
    store: SqliteGraphStore, tmp_path: Path
) -> None:
    await store.ingest(
        [_tenant_event(f"x{n:02}", f"wf-x{n:02}", "tenant-b" if n % 5 == 0 else "tenant-a") for n in range(40)]
    )
    seen: list[str] = []
    cursor: str | None = None
    async with _client(store, tmp_path) as client:
        for _ in range(40):
            path = "/graphs?limit=3" + (f"&cursor={cursor}" if cursor else "")
            page = (await _as(client, tmp_path, path, ("auditor",), "tenant-b")).json()
            assert len(page["items"]) <= 3
            seen += [item["workflow_id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
    assert sorted(seen) == [f"wf-x{n:02}" for n in range(0, 40, 5)]
    assert len(seen) == len(set(seen))


async def test_a_scoped_readers_cursor_names_no_other_tenants_workflow_and_a_plain_one_is_refused(
    store: SqliteGraphStore, tmp_path: Path
) -> None:
    # A third probe decoded a tenant-B reader's next_cursor into tenant A's most recent
    # workflow id and its last activity, to the nanosecond: cursors are base64 JSON.
    await store.ingest([_tenant_event(f"s{n:02}", f"acme-secret-{n:02}", "tenant-a") for n in range(20)])
    await store.ingest([_tenant_event("b", "wf-b-first", "tenant-b")])
    async with _client(store, tmp_path) as client:
        page = (await _as(client, tmp_path, "/graphs?limit=1", ("auditor",), "tenant-b")).json()
        plain = (await _as(client, tmp_path, "/graphs?limit=1", ("auditor",), "default")).json()["next_cursor"]
        refused = await _as(client, tmp_path, f"/graphs?cursor={plain}", ("auditor",), "tenant-b")
        other = await _as(client, tmp_path, f"/graphs?cursor={page['next_cursor']}", ("auditor",), "tenant-c")
    cursor = page["next_cursor"]
    assert cursor is not None
    assert cursor.startswith("g1.")
    decoded = base64.urlsafe_b64decode(cursor[3:] + "=" * (-len(cursor[3:]) % 4))
    assert b"acme" not in decoded
    assert refused.status_code == 400  # a plain cursor: a reader of one tenant could aim it anywhere
    assert other.status_code == 400  # sealed to tenant-b


@pytest.mark.parametrize("path", ["/audit/export", "/audit/slo", "/audit/verify"])
async def test_the_audit_chain_spans_every_tenant_so_only_the_deployments_readers_and_admins_get_it(
    store: SqliteGraphStore, tmp_path: Path, path: str
) -> None:
    await store.ingest(_TENANTS)
    async with _client(store, tmp_path) as client:
        answers = {
            (roles, tenant): await _as(client, tmp_path, path, roles, tenant)
            for roles in (("auditor",), ("operator",), ("admin",))
            for tenant in ("tenant-b", "default", "Default")
        }
    for (roles, tenant), answer in answers.items():
        if tenant == "default" or roles == ("admin",):
            assert answer.status_code == 200, (roles, tenant, answer.text)
        else:
            assert answer.status_code == 403, (roles, tenant, answer.text)
            assert answer.json()["error"]["code"] == "bastion.auth.forbidden"
            assert "the audit chain spans every tenant" in answer.json()["error"]["message"]


async def test_node_views_are_made_off_the_event_loop(
    store: SqliteGraphStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """270 nodes whose arguments were 9,990 small strings each (an agent's ordinary call)
    took 2 s to turn into views, on the graph's event loop: every other reader, ingest and
    probe waited (an attacker's probe). The views and their JSON are made in a worker thread."""
    import threading

    from bastion.graph import _api, _views

    wide = _event("e-wide")
    wide.action.arguments.update({"text": ["\u0001\u0002"] * 9990})
    await store.ingest([wide])
    made_in: list[int] = []
    original_node, original_graph = _views.node_view, _views.workflow_graph

    def node_view(node: Any) -> Any:
        made_in.append(threading.get_ident())
        return original_node(node)

    def workflow_graph(snapshot: Any) -> Any:
        made_in.append(threading.get_ident())
        return original_graph(snapshot)

    monkeypatch.setattr(_api, "node_view", node_view)
    monkeypatch.setattr(_api, "workflow_graph", workflow_graph)
    async with _client(store, tmp_path) as client:
        nodes = await client.get("/graphs/wf-1/nodes")
        graph = await client.get("/graphs/wf-1")
    assert nodes.status_code == graph.status_code == 200
    assert nodes.json()["items"][0]["action"]["arguments"]["text"][:2] == ["\u0001\u0002"] * 2
    assert graph.json()["nodes"][0]["node_id"] == "node-e-wide"
    assert len(made_in) == 2
    assert threading.get_ident() not in made_in
