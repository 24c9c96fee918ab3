"""The graph store contract, run on every backend (SQLite and a real Neo4j): ingest,
idempotency, edges, summaries, paging, snapshots, lineage; then what only SQLite has
(a file, its schema version, fsync) and that both backends store the same graph."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import neo4j
import pytest
from fixtures.graphstores import BACKENDS, opened_store, wipe_neo4j
from fixtures.neo4j import Neo4jServer
from fixtures.ports import dead_port
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion import ConfigError, ProtocolError, StoreError
from bastion.graph import (
    Edge,
    GraphStore,
    IngestResult,
    Neo4jGraphStore,
    Node,
    Page,
    SqliteGraphStore,
    ViolationFilter,
    WorkflowSummary,
)
from bastion.graph._store._cursor import encode_cursor
from bastion.graph._store._neo4j import split_url
from bastion.v1 import graph_pb2, policy_pb2, verifier_pb2

T = TypeVar("T")

_T0_NS = 1_700_000_000 * 10**9


def _event(
    event_id: str,
    *,
    workflow_id: str = "wf-1",
    node_id: str | None = None,
    parents: Sequence[str] = (),
    hints: Sequence[tuple[str, graph_pb2.EdgeType.ValueType, str]] = (),
    second: int | None = 0,
    outcome: graph_pb2.Outcome.ValueType = graph_pb2.FORWARDED,
    agent_id: str = "agent-a",
    tool: str = "search",
) -> graph_pb2.Event:
    event = graph_pb2.Event(
        event_id=event_id,
        workflow_id=workflow_id,
        node_id=node_id or f"node-{event_id}",
        parent_ids=parents,
        node_type=graph_pb2.ACTION,
        edges=[graph_pb2.EdgeHint(target_node_id=target, type=kind, reason=reason) for target, kind, reason in hints],
        agent_id=agent_id,
        tenant="default",
        session_id="session-1",
        action=policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server="web", tool=tool, method="tools/call"),
        outcome=outcome,
    )
    if outcome != graph_pb2.FORWARDED:
        event.violation_id = f"violation-{event_id}"
        event.block_code = "no-exfiltration"
        event.block_reason = "destination not in the task"
    if second is not None:
        event.started_at.FromNanoseconds(_T0_NS + second * 10**9)
    return event


def _at(second: int) -> datetime:
    return datetime.fromtimestamp(_T0_NS // 10**9 + second, UTC)


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[GraphStore]:
    async with opened_store(request, request.param, tmp_path) as opened:
        yield opened


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteGraphStore]:
    opened = await SqliteGraphStore.open(tmp_path / "graph.db")
    yield opened
    await opened.close()


async def test_ingested_event_is_stored_as_a_node_with_every_field(store: GraphStore) -> None:
    event = _event("e1", outcome=graph_pb2.BLOCKED, parents=["node-e0"])
    event.action.arguments.update({"to": "x@example.com", "amount": 12.5, "tags": ["a", {"b": None}]})
    event.decision.CopyFrom(
        policy_pb2.Decision(effect=policy_pb2.DENY, rule_id="r1", policy_name="payments", policy_version=7)
    )
    event.verifier.CopyFrom(verifier_pb2.ScoreResponse(deviation_score=0.9, threshold=0.8, verdict=verifier_pb2.BLOCK))
    event.decided_at.FromNanoseconds(_T0_NS + 1_500)
    event.redacted_payload.update({"secret": "[REDACTED]"})

    assert await store.ingest([]) == IngestResult(accepted=0, duplicates=0)
    assert await store.ingest([event]) == IngestResult(accepted=1, duplicates=0)
    (node,) = await _nodes(store, "wf-1")

    assert node.event == event
    assert node.at == _at(0)
    assert node.is_violation


async def test_redelivered_event_is_a_duplicate_and_changes_nothing(store: GraphStore) -> None:
    first = _event("e1", second=1)
    second = _event("e2", parents=["node-e1"], second=2, outcome=graph_pb2.BLOCKED)
    first_ack = await store.ingest([first, second])
    before = await _contents(store)

    again = await store.ingest([second])
    # A changed copy under the same event_id is still the same event: the first one wins.
    changed = _event("e1", second=9, agent_id="agent-z")
    mixed = await store.ingest([changed, _event("e3", second=3), _event("e3", second=3)])

    assert (first_ack.accepted, first_ack.duplicates) == (2, 0)
    assert (again.accepted, again.duplicates) == (0, 1)
    assert (mixed.accepted, mixed.duplicates) == (1, 2)
    after = await _contents(store)
    assert after["nodes"]["wf-1"][:2] == before["nodes"]["wf-1"]
    assert after["edges"] == before["edges"]
    summary = await store.workflow("wf-1")
    assert summary is not None
    assert (summary.node_count, summary.violation_count, summary.agents) == (3, 1, ("agent-a",))


async def test_event_reusing_another_events_node_id_is_refused_with_its_whole_batch(store: GraphStore) -> None:
    await store.ingest([_event("e1", node_id="n1")])

    with pytest.raises(ProtocolError, match=r"reuses node_id 'n1' of event 'e1'"):
        await store.ingest([_event("e2", node_id="n2"), _event("e3", node_id="n1")])

    assert [node.event.event_id for node in await _nodes(store, "wf-1")] == ["e1"]
    summary = await store.workflow("wf-1")
    assert summary is not None
    assert summary.node_count == 1


async def test_parent_ids_become_caused_by_edges_and_hints_keep_their_type_and_reason(
    store: GraphStore,
) -> None:
    await store.ingest(
        [
            _event("e1", node_id="read", second=1),
            _event(
                "e2",
                node_id="send",
                second=2,
                parents=["read", "read"],
                hints=[
                    ("read", graph_pb2.INFORMED_BY, "argument 'body' came from read"),
                    ("v", graph_pb2.VERIFIED_BY, ""),
                ],
            ),
        ]
    )

    edges = [(e.source, e.target, e.type, e.reason) for e in await _edges(store, "wf-1")]

    assert edges == [
        ("send", "read", "CAUSED_BY", ""),
        ("send", "read", "INFORMED_BY", "argument 'body' came from read"),
        ("send", "v", "VERIFIED_BY", ""),
    ]


async def test_caused_by_hint_gives_its_reason_to_the_parent_edge(store: GraphStore) -> None:
    await store.ingest([_event("e2", node_id="b", parents=["a"], hints=[("a", graph_pb2.CAUSED_BY, "next step")])])

    assert [(e.type, e.reason) for e in await _edges(store, "wf-1")] == [("CAUSED_BY", "next step")]


async def test_workflow_summary_counts_nodes_violations_and_distinct_agents(store: GraphStore) -> None:
    # Out of order on purpose: the journal may deliver a late event after newer ones.
    await store.ingest([_event("e2", second=20, agent_id="agent-b"), _event("e3", second=30, agent_id="")])
    await store.ingest([_event("e1", second=10, outcome=graph_pb2.REJECTED), _event("e4", second=40)])
    await store.ingest([_event("e5", second=50, outcome=graph_pb2.BLOCKED, agent_id="agent-b")])

    summary = await store.workflow("wf-1")

    assert summary == WorkflowSummary(
        workflow_id="wf-1",
        first_seen=_at(10),
        last_seen=_at(50),
        node_count=5,
        violation_count=2,
        agents=("agent-a", "agent-b"),
    )
    assert await store.workflow("wf-unknown") is None


async def test_one_batch_of_interleaved_workflows_sums_each_workflows_summary(store: GraphStore) -> None:
    # The SQLite writer adds a batch's summaries up and writes them once per workflow: two
    # workflows interleaved, out of order, an agent repeated, a redelivery inside the batch.
    batch = [
        _event("a3", workflow_id="wf-a", second=30, agent_id="agent-b"),
        _event("b1", workflow_id="wf-b", second=5, outcome=graph_pb2.BLOCKED),
        _event("a1", workflow_id="wf-a", second=10, outcome=graph_pb2.REJECTED),
        _event("a3", workflow_id="wf-a", second=30, agent_id="agent-b"),
        _event("a2", workflow_id="wf-a", second=20, agent_id="agent-b"),
        _event("b2", workflow_id="wf-b", second=50, agent_id=""),
    ]
    assert await store.ingest(batch) == IngestResult(accepted=5, duplicates=1)
    await store.ingest([_event("a4", workflow_id="wf-a", second=1, outcome=graph_pb2.BLOCKED, agent_id="agent-c")])

    assert await store.workflow("wf-a") == WorkflowSummary(
        workflow_id="wf-a",
        first_seen=_at(1),
        last_seen=_at(30),
        node_count=4,
        violation_count=2,
        agents=("agent-a", "agent-b", "agent-c"),
    )
    assert await store.workflow("wf-b") == WorkflowSummary(
        workflow_id="wf-b", first_seen=_at(5), last_seen=_at(50), node_count=2, violation_count=1, agents=("agent-a",)
    )


async def test_nodes_are_listed_oldest_first_whatever_the_arrival_order(store: GraphStore) -> None:
    await store.ingest([_event("c", second=3), _event("a", second=1)])
    await store.ingest([_event("b", second=2), _event("other", workflow_id="wf-2")])

    assert [node.event.event_id for node in await _nodes(store, "wf-1")] == ["a", "b", "c"]
    assert await store.nodes("wf-unknown") is None


async def test_node_pages_follow_the_cursor_oldest_first_without_gaps_or_repeats(store: GraphStore) -> None:
    # Equal timestamps on purpose: the event id breaks ties so no page boundary loses one.
    events = [_event(f"e{i:02}", second=i // 3) for i in range(11)]
    await store.ingest([*reversed(events), _event("other", workflow_id="wf-2", second=1)])

    pages = await _all_pages(lambda cursor: _node_page(store, "wf-1", limit=4, cursor=cursor))

    assert [[node.event.event_id for node in page] for page in pages] == [
        ["e00", "e01", "e02", "e03"],
        ["e04", "e05", "e06", "e07"],
        ["e08", "e09", "e10"],
    ]
    whole = await _node_page(store, "wf-1", limit=11, cursor=None)
    assert (len(whole.items), whole.next_cursor) == (11, None)


async def test_node_cursor_of_another_workflow_or_listing_is_refused(store: GraphStore) -> None:
    await store.ingest([_event(f"a{i}", workflow_id="wf-1") for i in range(2)])
    await store.ingest([_event(f"b{i}", workflow_id="wf-2") for i in range(2)])
    wf1_cursor = (await _node_page(store, "wf-1", limit=1, cursor=None)).next_cursor
    workflows_cursor = (await store.list_workflows(limit=1)).next_cursor
    assert wf1_cursor is not None
    assert workflows_cursor is not None

    for workflow_id, cursor in [("wf-2", wf1_cursor), ("wf-1", workflows_cursor)]:
        with pytest.raises(ProtocolError, match="invalid cursor"):
            await store.nodes(workflow_id, cursor=cursor)
    with pytest.raises(ProtocolError, match="invalid cursor"):
        await store.violations(ViolationFilter(), cursor=wf1_cursor)


async def test_nodes_after_a_hand_made_cursor_past_the_end_are_empty_or_unknown(store: GraphStore) -> None:
    await store.ingest([_event("e1", second=1)])
    past_the_end = encode_cursor("nodes:wf-1", _T0_NS + 10**12, "zz")

    assert await store.nodes("wf-1", cursor=past_the_end) == Page(items=(), next_cursor=None)
    assert await store.nodes("wf-unknown", cursor=encode_cursor("nodes:wf-unknown", 0, "")) is None


@pytest.mark.parametrize("time_ns", [2**63, 2**64 - 1, -(2**63) - 1, 10**30, True])
async def test_a_forged_cursor_time_beyond_64_bits_is_an_invalid_cursor_on_every_listing(
    store: GraphStore, time_ns: int
) -> None:
    # Found by an attacker's probe: 2**63 passed the cursor check and SQLite answered 500.
    def forged(kind: str) -> str:  # as encode_cursor would, if it wrote such a time
        raw = json.dumps([kind, time_ns, ""]).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    await store.ingest([_event("e1")])
    with pytest.raises(ProtocolError, match="invalid cursor"):
        await store.nodes("wf-1", cursor=forged("nodes:wf-1"))
    with pytest.raises(ProtocolError, match="invalid cursor"):
        await store.list_workflows(cursor=forged("workflows"))
    with pytest.raises(ProtocolError, match="invalid cursor"):
        await store.violations(ViolationFilter(), cursor=forged("violations"))
    at_the_edge = encode_cursor("nodes:wf-1", 2**63 - 1, "")
    assert await store.nodes("wf-1", cursor=at_the_edge) is not None


@pytest.mark.parametrize("limit", [0, -1, 5001])
async def test_node_page_size_outside_1_to_5000_is_refused(store: GraphStore, limit: int) -> None:
    await store.ingest([_event("e1")])

    with pytest.raises(ProtocolError, match="limit must be between 1 and 5000"):
        await store.nodes("wf-1", limit=limit)
    assert await store.nodes("wf-1", limit=5000) is not None


async def test_snapshot_is_the_summary_with_the_oldest_nodes_and_only_their_edges(store: GraphStore) -> None:
    await store.ingest(
        [
            _event("e3", node_id="c", second=3, parents=["b"], hints=[("a", graph_pb2.INFORMED_BY, "from a")]),
            _event("e1", node_id="a", second=1),
            _event("e2", node_id="b", second=2, parents=["a"]),
        ]
    )

    whole = await store.snapshot("wf-1")
    two_nodes = await store.snapshot("wf-1", max_nodes=2)
    two_edges = await store.snapshot("wf-1", max_edges=2)

    assert whole is not None
    assert two_nodes is not None
    assert two_edges is not None
    assert whole.summary == await store.workflow("wf-1")
    assert ([n.event.node_id for n in whole.nodes], whole.truncated) == (["a", "b", "c"], False)
    assert [(e.source, e.target, e.type) for e in whole.edges] == [
        ("b", "a", "CAUSED_BY"),
        ("c", "b", "CAUSED_BY"),
        ("c", "a", "INFORMED_BY"),
    ]
    assert (two_nodes.summary.node_count, [n.event.node_id for n in two_nodes.nodes]) == (3, ["a", "b"])
    assert (two_nodes.edges, two_nodes.truncated) == ((Edge("b", "a", "CAUSED_BY", ""),), True)
    assert (two_edges.nodes, two_edges.edges, two_edges.truncated) == (whole.nodes, whole.edges[:2], True)
    assert await store.snapshot("wf-unknown") is None
    with pytest.raises(ProtocolError, match="max_nodes >= 1"):
        await store.snapshot("wf-1", max_nodes=0)


async def test_workflows_are_listed_most_recently_active_first_in_pages(store: GraphStore) -> None:
    await store.ingest([_event(f"e{i}", workflow_id=f"wf-{i}", second=i) for i in range(5)])
    await store.ingest([_event("late", workflow_id="wf-1", second=99)])

    pages = await _all_pages(lambda cursor: store.list_workflows(limit=2, cursor=cursor))

    assert [[w.workflow_id for w in page] for page in pages] == [["wf-1", "wf-4"], ["wf-3", "wf-2"], ["wf-0"]]


async def test_violations_are_blocked_or_rejected_events_newest_first(store: GraphStore) -> None:
    await store.ingest(
        [
            _event("ok", second=1),
            _event("blocked", second=2, outcome=graph_pb2.BLOCKED),
            _event("rejected", second=3, outcome=graph_pb2.REJECTED, agent_id="agent-b"),
            _event("other-wf", workflow_id="wf-2", second=4, outcome=graph_pb2.BLOCKED),
        ]
    )

    async def ids(filters: ViolationFilter) -> list[str]:
        page = await store.violations(filters)
        assert page.next_cursor is None
        return [node.event.event_id for node in page.items]

    assert await ids(ViolationFilter()) == ["other-wf", "rejected", "blocked"]
    assert await ids(ViolationFilter(workflow_id="wf-1")) == ["rejected", "blocked"]
    assert await ids(ViolationFilter(agent_id="agent-b")) == ["rejected"]
    assert await ids(ViolationFilter(workflow_id="wf-2", agent_id="agent-b")) == []


async def test_each_workflows_tenants_are_known_and_violations_filter_by_tenant(store: GraphStore) -> None:
    # What the graph REST scopes a reader of one tenant with (graph/_api.py `_visible`).
    events = [
        _event("a", workflow_id="wf-a", outcome=graph_pb2.BLOCKED),
        _event("b", workflow_id="wf-b", second=1, outcome=graph_pb2.BLOCKED),
        _event("b2", workflow_id="wf-b", second=2),
        _event("m", workflow_id="wf-m", second=3),
    ]
    for event, tenant in zip(events, ("tenant-a", "tenant-b", "", "tenant-b"), strict=True):
        event.tenant = tenant
    await store.ingest(events)
    tenants = await store.workflow_tenants(["wf-a", "wf-b", "wf-m", "wf-unknown"])
    assert dict(tenants) == {
        "wf-a": frozenset({"tenant-a"}),
        "wf-b": frozenset({"tenant-b", ""}),
        "wf-m": frozenset({"tenant-b"}),
    }
    assert await store.workflow_tenants([]) == {}
    page = await store.violations(ViolationFilter(tenant="tenant-b"))
    assert [node.event.event_id for node in page.items] == ["b"]
    assert (await store.violations(ViolationFilter(tenant="tenant-c"))).items == ()


async def test_violation_pages_follow_the_cursor_without_gaps_or_repeats(store: GraphStore) -> None:
    # Equal timestamps on purpose: the event id breaks ties so no page boundary loses one.
    events = [_event(f"e{i:02}", second=i // 3, outcome=graph_pb2.BLOCKED) for i in range(11)]
    await store.ingest(events)

    pages = await _all_pages(lambda cursor: store.violations(ViolationFilter(), limit=4, cursor=cursor))

    assert [len(page) for page in pages] == [4, 4, 3]
    listed = [node.event.event_id for page in pages for node in page]
    assert listed == sorted((e.event_id for e in events), key=lambda i: (int(i[1:]) // 3, i), reverse=True)


@pytest.mark.parametrize("cursor", ["garbage!", "", "W10", "bm90IGpzb24", "é"])
async def test_cursor_that_is_not_a_cursor_is_refused(store: GraphStore, cursor: str) -> None:
    with pytest.raises(ProtocolError, match="invalid cursor"):
        await store.violations(ViolationFilter(), cursor=cursor)


async def test_cursor_of_another_listing_is_refused(store: GraphStore) -> None:
    await store.ingest([_event("e1", workflow_id="wf-1"), _event("e2", workflow_id="wf-2")])
    workflows_cursor = (await store.list_workflows(limit=1)).next_cursor
    assert workflows_cursor is not None

    with pytest.raises(ProtocolError, match="invalid cursor"):
        await store.violations(ViolationFilter(), cursor=workflows_cursor)


@pytest.mark.parametrize("limit", [0, -1, 501])
async def test_page_size_outside_1_to_500_is_refused(store: GraphStore, limit: int) -> None:
    with pytest.raises(ProtocolError, match="limit must be between 1 and 500"):
        await store.list_workflows(limit=limit)


async def test_lineage_walks_back_to_the_origin_preferring_data_provenance(store: GraphStore) -> None:
    await store.ingest(
        [
            _event("e1", node_id="task", second=1, tool=""),
            _event("e2", node_id="fetch", second=2, parents=["task"], tool="fetch"),
            _event("e3", node_id="summarise", second=3, parents=["fetch"], tool="summarise"),
            _event(
                "e4",
                node_id="send",
                second=4,
                parents=["summarise"],
                hints=[("fetch", graph_pb2.INFORMED_BY, "body came from fetch")],
                tool="send",
            ),
        ]
    )

    hops = await store.lineage("wf-1", "send")

    assert hops is not None
    assert [(h.node_id, h.via, h.reason, h.tool) for h in hops] == [
        ("send", "INFORMED_BY", "body came from fetch", "send"),
        ("fetch", "CAUSED_BY", "", "fetch"),
        ("task", None, "", ""),
    ]
    assert {h.node_type for h in hops} == {"ACTION"}


async def test_lineage_stops_at_a_parent_that_was_never_ingested(store: GraphStore) -> None:
    await store.ingest([_event("e2", node_id="child", parents=["missing"])])

    hops = await store.lineage("wf-1", "child")

    assert hops is not None
    assert [(h.node_id, h.node_type, h.via) for h in hops] == [
        ("child", "ACTION", "CAUSED_BY"),
        ("missing", "NODE_TYPE_UNSPECIFIED", None),
    ]


async def test_lineage_respects_max_depth_and_ends_on_cycles(store: GraphStore) -> None:
    chain = [_event(f"e{i}", node_id=f"n{i}", second=i, parents=[f"n{i - 1}"] if i else []) for i in range(6)]
    loop = [_event("x", node_id="x", parents=["y"]), _event("y", node_id="y", parents=["x"])]
    await store.ingest([*chain, *loop])

    short = await store.lineage("wf-1", "n5", max_depth=2)
    itself = await store.lineage("wf-1", "n5", max_depth=0)
    cycle = await store.lineage("", "x")

    assert short is not None
    assert [h.node_id for h in short] == ["n5", "n4", "n3"]
    assert short[-1].via is None
    assert itself is not None
    assert [h.node_id for h in itself] == ["n5"]
    assert cycle is not None
    assert [h.node_id for h in cycle] == ["x", "y"]
    with pytest.raises(ProtocolError, match="max_depth"):
        await store.lineage("wf-1", "n5", max_depth=-1)


async def test_lineage_of_an_unknown_node_or_one_in_another_workflow_is_none(store: GraphStore) -> None:
    await store.ingest([_event("e1", node_id="n1")])

    assert await store.lineage("wf-1", "nope") is None
    assert await store.lineage("wf-2", "n1") is None
    assert await store.lineage("", "n1") is not None


async def test_event_without_timestamps_is_timed_by_its_arrival(store: GraphStore) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    await store.ingest([_event("e1", second=None)])
    after = datetime.now(UTC)

    (node,) = await _nodes(store, "wf-1")

    assert before <= node.at <= after


async def test_concurrent_ingests_are_each_applied_once(store: GraphStore) -> None:
    batches = [[_event(f"b{b}-e{i}", second=i) for i in range(20)] for b in range(10)]

    results = await asyncio.gather(*(store.ingest(batch) for batch in [*batches, *batches]))

    assert sum(r.accepted for r in results) == 200
    assert sum(r.duplicates for r in results) == 200
    summary = await store.workflow("wf-1")
    assert summary is not None
    assert summary.node_count == 200


async def test_stored_graph_survives_closing_and_reopening(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "graph.db"
    first = await SqliteGraphStore.open(path)
    await first.ingest([_event("e1", second=1), _event("e2", parents=["node-e1"], outcome=graph_pb2.BLOCKED)])
    before = await _contents(first)
    await first.close()

    reopened = await SqliteGraphStore.open(path)
    try:
        assert await _contents(reopened) == before
        ack = await reopened.ingest([_event("e1", second=1)])
        assert (ack.accepted, ack.duplicates) == (0, 1)
    finally:
        await reopened.close()


async def test_writer_syncs_every_commit_so_an_acknowledged_ingest_survives_power_loss(
    sqlite_store: SqliteGraphStore,
) -> None:
    # The journal deletes what the graph acknowledged, so NORMAL (no fsync per commit)
    # could lose acknowledged events. The setting is per connection: ask the writer's.
    (level,) = sqlite_store._writer._connection.execute("PRAGMA synchronous").fetchone()

    assert level == 2  # FULL


async def test_writer_steps_aside_before_each_event_of_a_batch(
    sqlite_store: SqliteGraphStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A batch is 10-20 ms of one core's work; on a machine shared with the proxy, calls
    # that arrived meanwhile waited for the scheduler (docs/benchmarks.md, the c=1 tail).
    yielded: list[str] = []
    monkeypatch.setattr("os.sched_yield", lambda: yielded.append(threading.current_thread().name))

    ack = await sqlite_store.ingest([_event(f"e{i}", second=i) for i in range(5)])

    assert ack.accepted == 5
    assert yielded == ["graph-writer"] * 5


async def test_closed_store_refuses_calls(tmp_path: Path) -> None:
    closed = await SqliteGraphStore.open(tmp_path / "graph.db")
    await closed.close()
    await closed.close()  # idempotent

    with pytest.raises(StoreError, match="is closed"):
        await closed.ingest([_event("e1")])
    with pytest.raises(StoreError, match="is closed"):
        await closed.nodes("wf-1")
    with pytest.raises(StoreError, match="is closed"):
        await closed.ping()


async def test_file_that_cannot_be_opened_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="graph store open failed"):
        await SqliteGraphStore.open(tmp_path)  # a directory, not a database file


async def test_database_written_by_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "graph.db"
    await (await SqliteGraphStore.open(path)).close()
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA user_version = 99")
    connection.close()

    with pytest.raises(StoreError, match="schema version 99, newer than this Bastion knows"):
        await SqliteGraphStore.open(path)


async def test_failed_write_rolls_back_its_batch_and_the_writer_keeps_serving(sqlite_store: SqliteGraphStore) -> None:
    # A real SQLite failure: the table agent ids go to disappears under the store.
    with sqlite3.connect(sqlite_store.path) as connection:
        connection.execute("DROP TABLE workflow_agents")
    connection.close()

    with pytest.raises(StoreError, match=r"graph store write failed.*no such table"):
        await sqlite_store.ingest([_event("e1", agent_id=""), _event("e2", agent_id="agent-a")])
    ack = await sqlite_store.ingest([_event("e3", agent_id="")])

    assert (ack.accepted, ack.duplicates) == (1, 0)
    assert [node.event.event_id for node in await _nodes(sqlite_store, "wf-1")] == ["e3"]
    await sqlite_store.ping()


async def test_corrupt_or_unreadable_rows_are_store_errors(sqlite_store: SqliteGraphStore) -> None:
    await sqlite_store.ingest([_event("e1", workflow_id="wf-1"), _event("e2", workflow_id="wf-2")])
    with sqlite3.connect(sqlite_store.path) as connection:
        connection.execute("UPDATE nodes SET event = x'ffff' WHERE event_id = 'e1'")
        connection.execute("DROP TABLE edges")
    connection.close()

    with pytest.raises(StoreError, match=r"stored event is not a valid bastion\.v1\.Event"):
        await sqlite_store.nodes("wf-1")
    with pytest.raises(StoreError, match=r"graph store read failed.*no such table: edges"):
        await sqlite_store.snapshot("wf-2")
    assert [node.event.event_id for node in await _nodes(sqlite_store, "wf-2")] == ["e2"]


@st.composite
def _batches(draw: st.DrawFn) -> list[graph_pb2.Event]:
    size = draw(st.integers(min_value=1, max_value=12))
    node = st.integers(min_value=0, max_value=size).map(lambda i: f"n{i}")  # n{size} is never ingested
    return [
        _event(
            f"e{i:02}",
            node_id=f"n{i}",
            workflow_id=draw(st.sampled_from(["wf-a", "wf-b", "wf-c"])),
            parents=draw(st.lists(node, max_size=2)),
            hints=draw(
                st.lists(st.tuples(node, st.just(graph_pb2.INFORMED_BY), st.sampled_from(["", "r"])), max_size=2)
            ),
            second=draw(st.integers(min_value=0, max_value=4)),
            outcome=draw(st.sampled_from([graph_pb2.FORWARDED, graph_pb2.BLOCKED, graph_pb2.REJECTED])),
            agent_id=draw(st.sampled_from(["", "agent-a", "agent-b"])),
        )
        for i in range(size)
    ]


@settings(max_examples=40, deadline=None)
@given(batch=_batches(), data=st.data())
async def test_any_redelivery_order_and_batching_yields_the_same_stored_graph(
    batch: list[graph_pb2.Event], data: st.DataObject
) -> None:
    extra = data.draw(st.lists(st.sampled_from(batch), max_size=len(batch)), label="redelivered")
    deliveries = data.draw(st.permutations([*batch, *extra]), label="order")
    last = len(deliveries) - 1
    cuts = sorted(data.draw(st.sets(st.integers(min_value=1, max_value=last)), label="cuts")) if last else []
    chunks = [deliveries[start:end] for start, end in zip([0, *cuts], [*cuts, len(deliveries)], strict=True)]

    with tempfile.TemporaryDirectory() as directory:
        reference = await SqliteGraphStore.open(Path(directory) / "reference.db")
        redelivered = await SqliteGraphStore.open(Path(directory) / "redelivered.db")
        try:
            await reference.ingest(batch)
            acks = [await redelivered.ingest(chunk) for chunk in chunks]
            assert sum(ack.accepted for ack in acks) == len(batch)
            assert sum(ack.duplicates for ack in acks) == len(extra)
            assert await _contents(redelivered) == await _contents(reference)
        finally:
            await reference.close()
            await redelivered.close()


@settings(max_examples=8, deadline=None)
@given(batch=_batches(), data=st.data())
async def test_neo4j_stores_the_graph_sqlite_stores_whatever_the_redelivery(
    neo4j_server: Neo4jServer, batch: list[graph_pb2.Event], data: st.DataObject
) -> None:
    # One contract, two backends: the same events, delivered to Neo4j in any order and
    # batching with repeats, read back exactly as SQLite reads back the batch.
    extra = data.draw(st.lists(st.sampled_from(batch), max_size=len(batch)), label="redelivered")
    deliveries = data.draw(st.permutations([*batch, *extra]), label="order")
    size = data.draw(st.integers(min_value=1, max_value=len(deliveries)), label="chunk")
    wipe_neo4j(neo4j_server.url)
    with tempfile.TemporaryDirectory() as directory:
        reference = await SqliteGraphStore.open(Path(directory) / "reference.db")
        graph = await Neo4jGraphStore.open(neo4j_server.url)
        try:
            await reference.ingest(batch)
            acks = [await graph.ingest(deliveries[at : at + size]) for at in range(0, len(deliveries), size)]
            assert sum(ack.accepted for ack in acks) == len(batch)
            assert await _contents(graph) == await _contents(reference)
        finally:
            await reference.close()
            await graph.close()


async def test_neo4j_edges_are_relationships_of_their_own_type(neo4j_server: Neo4jServer) -> None:
    # So that anyone querying the database with Cypher can follow provenance directly.
    wipe_neo4j(neo4j_server.url)
    graph = await Neo4jGraphStore.open(neo4j_server.url)
    try:
        await graph.ingest(
            [
                _event("e1", second=1),
                _event("e2", second=2, parents=["node-e1"], hints=[("node-e1", graph_pb2.INFORMED_BY, "iban")]),
                _event("e3", second=3, hints=[("node-e9", graph_pb2.EdgeType.ValueType(99), "future")]),
            ]
        )
    finally:
        await graph.close()
    query = (
        "MATCH (a:BastionNode)-[r]->(b:BastionNode) "
        "RETURN a.node_id AS a, type(r) AS t, r.type AS named, r.reason AS why, b.node_id AS b ORDER BY a, t"
    )
    with neo4j.GraphDatabase.driver(neo4j_server.url, auth=None) as driver:
        records, _, _ = driver.execute_query(query)
    assert [tuple(record.values()) for record in records] == [
        ("node-e2", "CAUSED_BY", None, "", "node-e1"),
        ("node-e2", "INFORMED_BY", None, "iban", "node-e1"),
        ("node-e3", "RELATED", "99", "future", "node-e9"),
    ]


def test_neo4j_url_gives_credentials_and_database_to_the_driver_not_the_uri() -> None:
    assert split_url("neo4j://bastion:s%40cret@graph-db:7687/audit") == (
        "neo4j://graph-db:7687",
        ("bastion", "s@cret"),
        "audit",
    )
    assert split_url("bolt://127.0.0.1:7687") == ("bolt://127.0.0.1:7687", None, None)


@pytest.mark.parametrize("url", ["neo4j://user:pw@/", "neo4j://h:7687/x;DROP", "bolt://u:pw@h:7687/%2e%2e"])
def test_neo4j_url_without_host_or_with_a_bad_database_is_refused_without_its_password(url: str) -> None:
    with pytest.raises(ConfigError) as refused:
        split_url(url)
    assert "pw" not in str(refused.value)


async def test_unreachable_neo4j_is_a_store_error_that_does_not_show_the_password() -> None:
    port = dead_port()
    with pytest.raises(StoreError, match="graph store open failed") as refused:
        await Neo4jGraphStore.open(f"bolt://bastion:hunter2@127.0.0.1:{port}")
    assert "hunter2" not in str(refused.value)
    assert "bastion:***@127.0.0.1" in str(refused.value)


async def test_a_batch_reusing_a_node_id_is_refused_whole_on_neo4j(neo4j_server: Neo4jServer) -> None:
    wipe_neo4j(neo4j_server.url)
    graph = await Neo4jGraphStore.open(neo4j_server.url)
    try:
        await graph.ingest([_event("e1", node_id="n1", outcome=graph_pb2.BLOCKED)])
        head = await graph.audit_head()
        with pytest.raises(ProtocolError, match="reuses node_id"):
            await graph.ingest([_event("e2", node_id="n2"), _event("e3", node_id="n1")])
        assert await graph.audit_head() == head  # nothing of the refused batch was chained
        assert [node.event.event_id for node in await _nodes(graph, "wf-1")] == ["e1"]
    finally:
        await graph.close()


async def _all_pages(fetch: Callable[[str | None], Awaitable[Page[T]]]) -> list[tuple[T, ...]]:
    pages: list[tuple[T, ...]] = []
    cursor: str | None = None
    while True:
        page = await fetch(cursor)
        pages.append(page.items)
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor


async def _node_page(store: GraphStore, workflow_id: str, *, limit: int, cursor: str | None) -> Page[Node]:
    page = await store.nodes(workflow_id, limit=limit, cursor=cursor)
    assert page is not None, f"workflow {workflow_id!r} is unknown"
    return page


async def _nodes(store: GraphStore, workflow_id: str) -> list[Node]:
    """Every node of the workflow, through pages small enough to take several."""
    pages = await _all_pages(lambda cursor: _node_page(store, workflow_id, limit=2, cursor=cursor))
    return [node for page in pages for node in page]


async def _edges(store: GraphStore, workflow_id: str) -> list[Edge]:
    snapshot = await store.snapshot(workflow_id)
    assert snapshot is not None
    assert not snapshot.truncated
    return list(snapshot.edges)


async def _contents(store: GraphStore) -> dict[str, Any]:
    """Everything the store can tell about its contents, through its public reads."""
    pages = await _all_pages(lambda cursor: store.list_workflows(limit=2, cursor=cursor))
    workflows: list[WorkflowSummary] = [summary for page in pages for summary in page]
    ids = [summary.workflow_id for summary in workflows]
    violations: list[Node] = [
        node
        for page in await _all_pages(lambda c: store.violations(ViolationFilter(), limit=3, cursor=c))
        for node in page
    ]
    return {
        "workflows": workflows,
        "nodes": {workflow_id: await _nodes(store, workflow_id) for workflow_id in ids},
        "edges": {workflow_id: await _edges(store, workflow_id) for workflow_id in ids},
        "snapshots": {workflow_id: await store.snapshot(workflow_id) for workflow_id in ids},
        "violations": violations,
        "lineage": {
            node.event.node_id: await store.lineage("", node.event.node_id)
            for workflow_id in ids
            for node in await _nodes(store, workflow_id)
        },
    }


# --- result events ---------------------------------------------------------------------------


def _result_event(event_id: str, node_id: str, outcome: graph_pb2.ResultOutcome.ValueType) -> graph_pb2.Event:
    return graph_pb2.Event(
        event_id=event_id,
        workflow_id="wf-1",
        node_id=node_id,
        tenant="default",  # the node's: a result of another tenant is refused
        node_type=graph_pb2.ACTION,
        outcome=graph_pb2.FORWARDED,
        result=graph_pb2.ActionResult(outcome=outcome, jsonrpc_error_code=-32002, duration_ms=1.5),
    )


async def _only_node(store: GraphStore) -> Node:
    page = await store.nodes("wf-1", limit=10)
    assert page is not None
    assert len(page.items) == 1
    return page.items[0]


async def test_a_result_event_is_stored_on_its_node_not_as_a_node(store: GraphStore) -> None:
    await store.ingest([_event("e1")])
    stored = await store.ingest([_result_event("r1", "node-e1", graph_pb2.COMPLETED)])
    node = await _only_node(store)
    assert stored == IngestResult(accepted=1, duplicates=0)
    assert (node.event.event_id, node.event.result.outcome) == ("e1", graph_pb2.COMPLETED)
    assert node.event.result.jsonrpc_error_code == -32002
    summary = await store.workflow("wf-1")
    assert summary is not None
    assert summary.node_count == 1


async def test_a_result_redelivered_or_repeated_keeps_the_first(store: GraphStore) -> None:
    await store.ingest([_event("e1"), _result_event("r1", "node-e1", graph_pb2.TIMEOUT)])
    again = await store.ingest([_result_event("r1", "node-e1", graph_pb2.TIMEOUT)])
    other = await store.ingest([_result_event("r2", "node-e1", graph_pb2.COMPLETED)])
    node = await _only_node(store)
    assert again == other == IngestResult(accepted=0, duplicates=1)
    assert node.event.result.outcome == graph_pb2.TIMEOUT


@pytest.mark.parametrize(("workflow", "tenant"), [("wf-other", ""), ("wf-1", "tenant-other")])
async def test_a_result_naming_another_workflow_or_tenant_than_its_node_is_refused(
    store: GraphStore, workflow: str, tenant: str
) -> None:
    """A probe stored a result sent as workflow B, tenant t2 on a node of workflow A, and
    the node's own result was then dropped as a second one."""
    await store.ingest([_event("e1")])
    stray = _result_event("r1", "node-e1", graph_pb2.COMPLETED)
    stray.workflow_id, stray.tenant = workflow, tenant
    with pytest.raises(ProtocolError, match="but node 'node-e1' is in workflow 'wf-1'"):
        await store.ingest([stray])
    assert await store.ingest([_result_event("r2", "node-e1", graph_pb2.TIMEOUT)]) == IngestResult(1, 0)
    assert (await _only_node(store)).event.result.outcome == graph_pb2.TIMEOUT


async def test_a_result_that_arrives_before_its_action_is_merged_when_the_action_does(
    store: GraphStore,
) -> None:
    early = await store.ingest([_result_event("r1", "node-e1", graph_pb2.UPSTREAM_ERROR)])
    assert await store.nodes("wf-1", limit=10) is None  # no node of its own
    await store.ingest([_event("e1")])
    node = await _only_node(store)
    assert early == IngestResult(accepted=1, duplicates=0)
    assert node.event.result.outcome == graph_pb2.UPSTREAM_ERROR


def _decided(event_id: str, node_id: str) -> graph_pb2.Event:
    """An action with a policy decision: an audit record as well as a node."""
    event = _event(event_id, node_id=node_id)
    event.decision.CopyFrom(policy_pb2.Decision(effect=policy_pb2.DENY, rule_id="r1"))
    return event


@pytest.mark.parametrize(
    ("stored", "batch"),
    [
        # A result event taking its own action's event id, or an audited node's.
        ([_decided("e1", "node-e1")], [_result_event("e1", "node-e1", graph_pb2.COMPLETED)]),
        # An action taking the event id of a result the chain holds.
        (
            [_decided("e1", "node-e1"), _result_event("r1", "node-e1", graph_pb2.COMPLETED)],
            [_decided("r1", "node-r1")],
        ),
        # A result parked before its action, and an action taking its id.
        ([_result_event("r1", "node-x", graph_pb2.COMPLETED)], [_decided("r1", "node-r1")]),
        # Both in one batch.
        ([], [_decided("e2", "node-e2"), _result_event("e2", "node-e2", graph_pb2.COMPLETED)]),
        # A result taking the event id of a node the chain does not hold (protocol traffic).
        ([_event("e3", node_id="node-e3")], [_result_event("e3", "node-e3", graph_pb2.COMPLETED)]),
    ],
    ids=["result-takes-action-id", "action-takes-result-id", "action-takes-parked-id", "one-batch", "unaudited-node"],
)
async def test_an_event_reusing_another_events_event_id_is_refused_and_the_store_keeps_serving(
    store: GraphStore, stored: list[graph_pb2.Event], batch: list[graph_pb2.Event]
) -> None:
    """An attacker's probe: a result event sent under its action's event_id (or an action under
    a result's) broke the audit chain's unique event_id inside the ingest, a StoreError, so
    UNAVAILABLE, which the proxy's shipper retries for ever: every agent's journal stalled
    behind one event. Refused as malformed (INVALID_ARGUMENT), the shipper sets it aside."""
    if stored:
        await store.ingest(stored)
    head = await store.audit_head()
    before = await _contents(store)

    with pytest.raises(ProtocolError, match=r"reuses the event_id of another event"):
        await store.ingest(batch)

    assert await store.audit_head() == head  # nothing of the refused batch was stored or chained
    assert await _contents(store) == before
    assert await store.ingest([_decided("e9", "node-e9")]) == IngestResult(accepted=1, duplicates=0)


async def test_pages_of_large_nodes_stop_at_the_byte_budget_and_the_cursor_reads_on(store: GraphStore) -> None:
    """An attacker's probe: agents' calls with arguments near the journal's bound (64 KiB, two
    copies) made one 5000-node page or snapshot a 150 MiB answer that took the graph service
    to 1.3 GB; a few readers at once would have it killed. A page now also stops at
    MAX_PAGE_BYTES of stored events (after the node that reaches it), and says more follow."""
    blob = "x" * (1 << 20)
    events = []
    for n in range(24):
        event = _event(f"e{n:02}", second=n, outcome=graph_pb2.BLOCKED)
        event.action.arguments.update({"blob": blob})
        events.append(event)
    for start in range(0, len(events), 8):
        await store.ingest(events[start : start + 8])

    first = await store.nodes("wf-1", limit=5000)
    snapshot = await store.snapshot("wf-1")
    violations = await store.violations(ViolationFilter(), limit=500)

    assert first is not None
    assert 16 <= len(first.items) < 24  # 16 MiB of 1 MiB events, and the one that reaches it
    assert first.next_cursor is not None
    assert snapshot is not None
    assert snapshot.truncated
    assert [node.event.event_id for node in snapshot.nodes] == [node.event.event_id for node in first.items]
    assert 16 <= len(violations.items) < 24
    assert violations.next_cursor is not None
    read = [node.event.event_id for node in first.items]
    cursor: str | None = first.next_cursor
    while cursor is not None:
        page = await store.nodes("wf-1", limit=5000, cursor=cursor)
        assert page is not None
        read += [node.event.event_id for node in page.items]
        cursor = page.next_cursor
    assert read == [f"e{n:02}" for n in range(24)]
    rest = await store.violations(ViolationFilter(), limit=500, cursor=violations.next_cursor)
    assert len(violations.items) + len(rest.items) == 24
    assert rest.next_cursor is None
