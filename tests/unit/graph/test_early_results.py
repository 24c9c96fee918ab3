"""A result event that arrives before its action's node is parked, and held to the same check
as one that comes after it when the node arrives: the node's workflow and its tenant, an empty
tenant included (it was taken for "any tenant"). An attacker's probe sent, with the service token, a result of another
tenant for a node id not yet stored; the early path skipped the check, and the result was
merged into the other tenant's node when it arrived. Now it is dropped, with an audit record
saying why, on both backends, across a restart, and in files and databases parked in before
the sender's workflow and tenant were kept."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import neo4j
import orjson
import pytest
from fixtures.graphstores import BACKENDS, opened_store
from fixtures.neo4j import Neo4jServer

from bastion import ProtocolError
from bastion.graph import GraphStore, IngestResult, Neo4jGraphStore, Node, SqliteGraphStore
from bastion.graph._export import verify_store
from bastion.graph._store._common import REFUSED_RESULT
from bastion.v1 import graph_pb2, policy_pb2


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[GraphStore]:
    async with opened_store(request, request.param, tmp_path) as opened:
        yield opened


def _action(event_id: str, node_id: str) -> graph_pb2.Event:
    """A decided action of tenant `default` in workflow wf-1: a node and an audit record."""
    return graph_pb2.Event(
        event_id=event_id,
        workflow_id="wf-1",
        node_id=node_id,
        node_type=graph_pb2.ACTION,
        agent_id="agent-a",
        tenant="default",
        action=policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server="web", tool="search", method="tools/call"),
        decision=policy_pb2.Decision(effect=policy_pb2.DENY, rule_id="r1"),
        outcome=graph_pb2.BLOCKED,
    )


def _result(
    event_id: str, node_id: str, outcome: graph_pb2.ResultOutcome.ValueType, *, workflow: str, tenant: str
) -> graph_pb2.Event:
    return graph_pb2.Event(
        event_id=event_id,
        workflow_id=workflow,
        node_id=node_id,
        node_type=graph_pb2.ACTION,
        tenant=tenant,
        outcome=graph_pb2.FORWARDED,
        result=graph_pb2.ActionResult(outcome=outcome, duration_ms=1.5),
    )


def _forged(node_id: str = "node-e1") -> graph_pb2.Event:
    return _result("r-forged", node_id, graph_pb2.COMPLETED, workflow="wf-1", tenant="tenant-b")


async def _node(store: GraphStore, node_id: str) -> Node:
    page = await store.nodes("wf-1", limit=100)
    assert page is not None
    (node,) = (node for node in page.items if node.event.node_id == node_id)
    return node


async def _refusals(store: GraphStore) -> list[dict[str, Any]]:
    records = [orjson.loads(entry.record) for entry in await store.audit_entries()]
    return [record for record in records if record["rule_id"] == REFUSED_RESULT]


@pytest.mark.parametrize(
    ("workflow", "tenant", "merged"),
    [("wf-1", "tenant-b", False), ("wf-other", "default", False), ("wf-1", "default", True), ("wf-1", "", False)],
    ids=["other-tenant", "other-workflow", "same-tenant", "no-tenant"],
)
async def test_an_early_result_is_held_to_its_nodes_workflow_and_tenant_when_the_node_arrives(
    store: GraphStore, workflow: str, tenant: str, merged: bool
) -> None:
    early = _result("r-early", "node-e1", graph_pb2.COMPLETED, workflow=workflow, tenant=tenant)
    assert await store.ingest([early]) == IngestResult(accepted=1, duplicates=0)
    assert await store.ingest([_action("e1", "node-e1")]) == IngestResult(accepted=1, duplicates=0)

    node = await _node(store, "node-e1")
    refusals = await _refusals(store)
    if merged:
        assert node.event.result.outcome == graph_pb2.COMPLETED
        assert refusals == []
        return
    assert not node.event.HasField("result")
    (refusal,) = refusals
    assert (refusal["kind"], refusal["decision"], refusal["node_id"]) == ("decision", "REJECT", "node-e1")
    assert (refusal["workflow_id"], refusal["tenant"]) == (workflow, tenant)
    assert "result event 'r-early', parked until its node arrived, was not stored on it" in refusal["reason"]
    assert "but node 'node-e1' is in workflow 'wf-1' of tenant 'default'" in refusal["reason"]
    assert (await verify_store(store)).ok
    # The node's own result, coming after it, is stored: the refused one did not take its place.
    own = _result("r-own", "node-e1", graph_pb2.UPSTREAM_ERROR, workflow="wf-1", tenant="default")
    assert await store.ingest([own]) == IngestResult(accepted=1, duplicates=0)
    assert (await _node(store, "node-e1")).event.result.outcome == graph_pb2.UPSTREAM_ERROR
    # A redelivered node is a duplicate, and refuses nothing again.
    assert await store.ingest([_action("e1", "node-e1")]) == IngestResult(accepted=0, duplicates=1)
    assert len(await _refusals(store)) == 1


@pytest.mark.parametrize("tenant", ["tenant-b", ""], ids=["other-tenant", "no-tenant"])
async def test_a_late_result_of_another_tenant_is_refused(store: GraphStore, tenant: str) -> None:
    assert await store.ingest([_action("e4", "node-e4")]) == IngestResult(accepted=1, duplicates=0)
    forged = _result("r-late", "node-e4", graph_pb2.COMPLETED, workflow="wf-1", tenant=tenant)
    with pytest.raises(ProtocolError, match=f"is for workflow 'wf-1' of tenant '{tenant}', but node 'node-e4'"):
        await store.ingest([forged])
    assert not (await _node(store, "node-e4")).event.HasField("result")


async def test_a_foreign_early_result_and_its_node_in_one_batch_are_held_to_the_check(store: GraphStore) -> None:
    assert await store.ingest([_forged(), _action("e1", "node-e1")]) == IngestResult(accepted=2, duplicates=0)
    assert not (await _node(store, "node-e1")).event.HasField("result")
    assert len(await _refusals(store)) == 1


async def test_an_early_result_of_the_same_tenant_and_its_node_in_one_batch_are_merged(store: GraphStore) -> None:
    early = _result("r-early", "node-e1", graph_pb2.COMPLETED, workflow="wf-1", tenant="default")
    assert await store.ingest([early, _action("e1", "node-e1")]) == IngestResult(accepted=2, duplicates=0)
    assert (await _node(store, "node-e1")).event.result.outcome == graph_pb2.COMPLETED
    # Parked in one batch, its node in a later one, after other nodes: still merged.
    later = _result("r-later", "node-e3", graph_pb2.UPSTREAM_ERROR, workflow="wf-1", tenant="default")
    assert await store.ingest([later]) == IngestResult(accepted=1, duplicates=0)
    assert await store.ingest([_action("e2", "node-e2"), _action("e3", "node-e3")]) == IngestResult(2, 0)
    assert (await _node(store, "node-e3")).event.result.outcome == graph_pb2.UPSTREAM_ERROR
    assert not (await _node(store, "node-e2")).event.HasField("result")
    assert await _refusals(store) == []


async def _reopened(request: pytest.FixtureRequest, store: GraphStore) -> GraphStore:
    """The same file or database, opened anew (the graph service restarted)."""
    await store.close()
    if isinstance(store, SqliteGraphStore):
        return await SqliteGraphStore.open(store.path)
    server: Neo4jServer = request.getfixturevalue("neo4j_server")
    return await Neo4jGraphStore.open(server.url)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_foreign_early_result_is_refused_after_a_restart(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    async with opened_store(request, backend, tmp_path) as first:
        await first.ingest([_forged()])
        store = await _reopened(request, first)
    try:
        await store.ingest([_action("e1", "node-e1")])
        assert not (await _node(store, "node-e1")).event.HasField("result")
        assert len(await _refusals(store)) == 1
    finally:
        await store.close()


async def _park_three(store: GraphStore) -> None:
    """A foreign result, the node's own, and (written in below) one whose sender no record names."""
    own = _result("r-own", "node-e2", graph_pb2.TIMEOUT, workflow="wf-1", tenant="default")
    await store.ingest([_forged("node-e1"), own])


async def _check_three(store: GraphStore) -> None:
    await store.ingest([_action("e1", "node-e1"), _action("e2", "node-e2"), _action("e3", "node-e3")])
    assert not (await _node(store, "node-e1")).event.HasField("result")
    assert (await _node(store, "node-e2")).event.result.outcome == graph_pb2.TIMEOUT
    # Fail closed: a result parked without a record of who sent it is not merged either.
    assert not (await _node(store, "node-e3")).event.HasField("result")
    refused = {record["node_id"]: record["reason"] for record in await _refusals(store)}
    assert set(refused) == {"node-e1", "node-e3"}
    assert "of tenant 'tenant-b', but node 'node-e1'" in refused["node-e1"]
    assert "parked without the workflow and tenant it was sent as" in refused["node-e3"]
    assert (await verify_store(store)).ok


async def test_a_version_5_file_learns_who_sent_each_parked_result_from_the_audit_chain(tmp_path: Path) -> None:
    path = tmp_path / "graph.db"
    store = await SqliteGraphStore.open(path)
    await _park_three(store)
    await store.close()
    with sqlite3.connect(path) as db:  # back to version 5: pending_results without the sender
        db.execute("ALTER TABLE pending_results DROP COLUMN workflow_id")
        db.execute("ALTER TABLE pending_results DROP COLUMN tenant")
        result = graph_pb2.ActionResult(outcome=graph_pb2.COMPLETED).SerializeToString()
        db.execute("INSERT INTO pending_results VALUES ('node-e3', 'r-unchained', ?)", (result,))
        db.execute("PRAGMA user_version = 5")

    upgraded = await SqliteGraphStore.open(path)
    try:
        await _check_three(upgraded)
    finally:
        await upgraded.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (6,)


async def test_a_schema_1_neo4j_database_learns_who_sent_each_parked_result(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    server: Neo4jServer = request.getfixturevalue("neo4j_server")
    async with opened_store(request, "neo4j", tmp_path) as store:
        await _park_three(store)
    result = graph_pb2.ActionResult(outcome=graph_pb2.COMPLETED).SerializeToString()
    with neo4j.GraphDatabase.driver(server.url, auth=None) as driver, driver.session() as session:
        session.run(
            "MATCH (n:BastionNode) WHERE n.pending_result IS NOT NULL REMOVE n.pending_workflow_id, n.pending_tenant"
        ).consume()
        session.run(
            "CREATE (:BastionNode {node_id: 'node-e3', pending_result: $result, pending_event_id: 'r-unchained'})",
            result=result,
        ).consume()
        session.run("MATCH (s:BastionSchema {id: 1}) SET s.version = 1").consume()

    upgraded = await Neo4jGraphStore.open(server.url)
    try:
        await _check_three(upgraded)
    finally:
        await upgraded.close()
    with neo4j.GraphDatabase.driver(server.url, auth=None) as driver, driver.session() as session:
        found = session.run("MATCH (s:BastionSchema {id: 1}) RETURN s.version AS version").single()
    assert found is not None
    assert found["version"] == 2
