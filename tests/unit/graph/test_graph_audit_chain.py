"""The tamper-evident audit chain: which events become records, the chain's hashes, idempotent
redelivery, one transaction with the ingest, and verification naming the first altered,
removed or inserted record after the SQLite file is edited behind the store's back."""

from __future__ import annotations

import hashlib
import math
import sqlite3
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import neo4j
import orjson
import pytest
import rfc8785
from fixtures.graphstores import BACKENDS, opened_store, wipe_neo4j
from fixtures.neo4j import Neo4jServer
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion import ProtocolError
from bastion.graph import GraphStore, Neo4jGraphStore, SqliteGraphStore
from bastion.graph._audit import (
    GENESIS,
    POLICY_AUDIT_WORKFLOWS,
    AuditEntry,
    ChainVerifier,
    audit_kind,
    canonical,
    chain_hash,
    json_safe,
    rfc3339,
)
from bastion.graph._export import verify_store
from bastion.policy._identities import AUDIT_WORKFLOW as IDENTITY_WORKFLOW
from bastion.policy._rollouts import AUDIT_WORKFLOW as ROLLOUT_WORKFLOW
from bastion.v1 import graph_pb2, policy_pb2, verifier_pb2

_T0_NS = 1_767_225_600 * 10**9


def _decision(
    event_id: str,
    *,
    outcome: graph_pb2.Outcome.ValueType = graph_pb2.FORWARDED,
    effect: policy_pb2.Effect.ValueType = policy_pb2.ALLOW,
    node_id: str | None = None,
) -> graph_pb2.Event:
    event = graph_pb2.Event(
        event_id=event_id,
        workflow_id="wf-1",
        node_id=node_id or f"node-{event_id}",
        node_type=graph_pb2.ACTION,
        agent_id="agent-a",
        tenant="default",
        action=policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server="mail", tool="send", method="tools/call"),
        decision=policy_pb2.Decision(effect=effect, rule_id="r1", policy_name="mail", policy_version=3),
        verifier=verifier_pb2.ScoreResponse(deviation_score=0.25, threshold=0.8, verdict=verifier_pb2.PASS),
        outcome=outcome,
    )
    if outcome != graph_pb2.FORWARDED:
        event.violation_id = f"v-{event_id}"
        event.block_code = "r1"
    event.started_at.FromNanoseconds(_T0_NS)
    event.decided_at.FromNanoseconds(_T0_NS + 1_500_000)
    return event


def _approval(event_id: str, step: str = "approve") -> graph_pb2.Event:
    event = graph_pb2.Event(
        event_id=event_id,
        workflow_id="wf-1",
        node_id=f"node-{event_id}",
        node_type=graph_pb2.VERIFICATION,
        action=policy_pb2.Action(kind=policy_pb2.MCP_REQUEST, server="mail", method=f"bastion.approval/{step}"),
        outcome=graph_pb2.FORWARDED,
    )
    event.action.arguments.update({"approval_id": "ap-1", "decided_by": "ops", "reason": "ok"})
    return event


def _rollout(event_id: str) -> graph_pb2.Event:
    event = graph_pb2.Event(
        event_id=event_id,
        workflow_id=ROLLOUT_WORKFLOW,
        node_id=event_id,
        node_type=graph_pb2.OBSERVATION,
        agent_id="ops",
        action=policy_pb2.Action(server="policy", method="bastion.dev/rollout.started"),
    )
    event.action.arguments.update({"policy": "mail", "version": 4, "percent": 10})
    return event


def _result(event_id: str, node_id: str) -> graph_pb2.Event:
    return graph_pb2.Event(
        event_id=event_id,
        workflow_id="wf-1",
        node_id=node_id,
        tenant="default",  # the node's: a result of another tenant is refused
        node_type=graph_pb2.ACTION,
        outcome=graph_pb2.FORWARDED,
        result=graph_pb2.ActionResult(outcome=graph_pb2.COMPLETED, duration_ms=3.5, result_digest="ab"),
    )


def _protocol(event_id: str) -> graph_pb2.Event:
    return graph_pb2.Event(
        event_id=event_id,
        workflow_id="wf-1",
        node_id=f"node-{event_id}",
        node_type=graph_pb2.ACTION,
        action=policy_pb2.Action(kind=policy_pb2.MCP_REQUEST, method="notifications/initialized"),
        outcome=graph_pb2.FORWARDED,
    )


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[GraphStore]:
    async with opened_store(request, request.param, tmp_path) as opened:
        yield opened


async def _records(store: GraphStore) -> list[dict[str, object]]:
    return [orjson.loads(entry.record) for entry in await store.audit_entries()]


# --- what is recorded ---------------------------------------------------------------------


def _forged_approval() -> graph_pb2.Event:
    event = _approval("x")
    event.node_type = graph_pb2.ACTION  # an agent's own JSON-RPC method named like an approval
    return event


@pytest.mark.parametrize(
    ("event", "kind"),
    [
        (_decision("a"), "decision"),
        (_decision("b", outcome=graph_pb2.BLOCKED, effect=policy_pb2.DENY), "decision"),
        (graph_pb2.Event(outcome=graph_pb2.REJECTED, block_code="bastion.auth"), "decision"),
        (_approval("c"), "approval"),
        (_forged_approval(), None),
        (_rollout("d"), "policy"),
        (_result("e", "node-a"), "result"),
        (_protocol("f"), None),
    ],
)
def test_audit_kind_is_one_row_of_the_table(event: graph_pb2.Event, kind: str | None) -> None:
    assert audit_kind(event) == kind


def test_the_policy_audit_workflows_are_those_the_policy_service_ships_in() -> None:
    assert {ROLLOUT_WORKFLOW, IDENTITY_WORKFLOW} == POLICY_AUDIT_WORKFLOWS


def test_canonical_form_is_rfc8785_and_numbers_outside_i_json_become_strings() -> None:
    record = json_safe({"b": 1.0, "a": "é", "big": 2**60, "nan": float("nan"), "nested": [{"z": 1, "y": 2.5}]})
    assert canonical(record) == rfc8785.dumps(record)
    expected = '{"a":"é","b":1,"big":"1152921504606846976","nan":"nan","nested":[{"y":2.5,"z":1}]}'
    assert canonical(record) == expected.encode()


async def test_every_decision_approval_policy_step_and_result_is_chained_in_order(store: GraphStore) -> None:
    allowed, denied = _decision("e1"), _decision("e2", outcome=graph_pb2.BLOCKED, effect=policy_pb2.REQUIRE_APPROVAL)
    await store.ingest([allowed, denied, _protocol("e3"), _approval("e4"), _rollout("e5")])
    await store.ingest([_result("e6", allowed.node_id)])

    records = await _records(store)
    assert [(r["sequence"], r["kind"], r["event_id"], r["decision"]) for r in records] == [
        (1, "decision", "e1", "ALLOW"),
        (2, "decision", "e2", "REQUIRE_APPROVAL"),
        (3, "approval", "e4", "APPROVE"),
        (4, "policy", "e5", "rollout.started"),
        (5, "result", "e6", "COMPLETED"),
    ]
    assert records[0]["policy"] == {
        "bundle_digest": "",
        "effect": "ALLOW",
        "name": "mail",
        "rollout_arm": "ROLLOUT_ARM_UNSPECIFIED",
        "rule_id": "r1",
        "version": 3,
    }
    assert records[0]["latency_ms"] == 1.5
    assert records[0]["timestamp"] == "2026-01-01T00:00:00.000000Z"
    assert records[2]["details"] == {"approval_id": "ap-1", "decided_by": "ops", "reason": "ok"}
    assert records[3]["details"] == {"policy": "mail", "version": 4, "percent": 10}


async def test_a_result_whose_answer_holds_nan_is_chained_without_the_answer(store: GraphStore) -> None:
    # An attacker's probe with the service token: NaN in `redacted_result` made the record
    # raise (UNKNOWN to the sender, which the proxy's shipper retries for ever).
    decided = _decision("e1")
    result = _result("e2", decided.node_id)
    result.result.redacted_result.update({"n": math.nan, "i": math.inf, "text": "ok"})
    await store.ingest([decided, result])

    records = await _records(store)
    assert [(r["kind"], r["event_id"]) for r in records] == [("decision", "e1"), ("result", "e2")]
    details = records[1]["details"]
    assert isinstance(details, dict)
    assert "redacted_result" not in details
    assert details["outcome"] == "COMPLETED"
    assert (await verify_store(store)).ok


async def test_each_hash_is_sha256_of_the_previous_hash_and_the_jcs_record(store: GraphStore) -> None:
    await store.ingest([_decision("e1"), _decision("e2")])
    entries = await store.audit_entries()
    previous = GENESIS
    for entry in entries:
        assert entry.prev_hash == previous
        assert entry.record == rfc8785.dumps(orjson.loads(entry.record))
        assert entry.hash == hashlib.sha256(bytes.fromhex(previous) + entry.record).hexdigest()
        previous = entry.hash
    head = await store.audit_head()
    assert head is not None
    assert (head.sequence, head.hash) == (2, previous)


async def test_redelivered_events_add_no_second_record(store: GraphStore) -> None:
    events = [_decision("e1"), _approval("e2"), _result("e3", "node-e1")]
    await store.ingest(events)
    result = await store.ingest(events)
    early_result = _result("e5", "node-e4")  # a result that arrives before its node
    await store.ingest([early_result, early_result])
    await store.ingest([_decision("e4"), early_result])

    assert result.duplicates == 3
    assert [r["event_id"] for r in await _records(store)] == ["e1", "e2", "e3", "e5", "e4"]


async def test_a_refused_batch_leaves_no_record_and_the_chain_continues(store: GraphStore) -> None:
    await store.ingest([_decision("e1")])
    reusing = _decision("e3", node_id="node-e1")  # another event reusing a node id: the batch is refused
    with pytest.raises(ProtocolError):
        await store.ingest([_decision("e2"), reusing])
    await store.ingest([_decision("e4")])

    assert [(r["sequence"], r["event_id"]) for r in await _records(store)] == [(1, "e1"), (2, "e4")]
    assert (await verify_store(store)).ok


async def test_the_chain_survives_a_restart(tmp_path: Path) -> None:
    first = await SqliteGraphStore.open(tmp_path / "graph.db")
    await first.ingest([_decision("e1")])
    await first.close()
    second = await SqliteGraphStore.open(tmp_path / "graph.db")
    try:
        await second.ingest([_decision("e2")])
        report = await verify_store(second, page=1)
    finally:
        await second.close()
    assert report.ok
    assert report.records == 2


async def test_an_empty_chain_verifies(store: GraphStore) -> None:
    report = await verify_store(store)
    assert report.ok
    assert report.records == 0
    assert report.head is None


# --- tampering with the database ------------------------------------------------------------


def _neo4j_edits(entries: Sequence[AuditEntry]) -> dict[str, tuple[str, dict[str, object], str, int]]:
    """Cypher someone with database access could run, and what verify must name."""
    forged = canonical(orjson.loads(entries[2].record) | {"decision": "DENY"})
    inserted = canonical({"sequence": 2})
    return {
        "edit": ("MATCH (a:BastionAudit {seq: 3}) SET a.record = $forged", {"forged": forged}, "altered", 3),
        "delete": ("MATCH (a:BastionAudit {seq: 4}) DELETE a", {}, "removed", 4),
        "insert": (
            "MATCH (a:BastionAudit) WHERE a.seq >= 2 SET a.seq = a.seq + 100 WITH count(*) AS moved "
            "MATCH (a:BastionAudit) WHERE a.seq >= 102 SET a.seq = a.seq - 99 WITH count(*) AS back "
            "CREATE (:BastionAudit {seq: 2, event_id: 'forged', kind: 'decision', prev_hash: $prev, "
            "hash: $digest, record: $record, recorded_ns: 0, at_ns: 0})",
            {"prev": entries[0].hash, "digest": "00" * 32, "record": inserted},
            "inserted",
            2,
        ),
    }


@pytest.mark.parametrize("edit", ["edit", "delete", "insert"])
async def test_verify_names_a_record_edited_deleted_or_inserted_in_neo4j(neo4j_server: Neo4jServer, edit: str) -> None:
    # Neo4j's community edition has no triggers: anyone with database access can change
    # audit nodes. The chain still tells, and names the record by sequence number.
    wipe_neo4j(neo4j_server.url)
    store = await Neo4jGraphStore.open(neo4j_server.url)
    try:
        await store.ingest([_decision(f"e{n}") for n in range(1, 7)])
        query, parameters, kind, sequence = _neo4j_edits(await store.audit_entries())[edit]
        with neo4j.GraphDatabase.driver(neo4j_server.url, auth=None) as driver:
            driver.execute_query(query, parameters)
        report = await verify_store(store)
    finally:
        await store.close()

    assert report.problem is not None
    assert (report.problem.kind, report.problem.sequence) == (kind, sequence), report.problem


async def _tampered(tmp_path: Path) -> tuple[SqliteGraphStore, Sequence[AuditEntry]]:
    """A store with six records, and its file opened up the way someone with the file would."""
    store = await SqliteGraphStore.open(tmp_path / "graph.db")
    await store.ingest([_decision(f"e{n}") for n in range(1, 7)])
    entries = await store.audit_entries()
    with sqlite3.connect(tmp_path / "graph.db") as db:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("DELETE FROM audit WHERE seq = 1")
        db.execute("DROP TRIGGER audit_no_update")
        db.execute("DROP TRIGGER audit_no_delete")
    return store, entries


def _edit(tmp_path: Path, sql: str, *params: object) -> None:
    with sqlite3.connect(tmp_path / "graph.db") as db:
        db.execute(sql, params)


async def test_verify_names_an_edited_record(tmp_path: Path) -> None:
    store, entries = await _tampered(tmp_path)
    forged = orjson.loads(entries[2].record) | {"decision": "DENY"}
    _edit(tmp_path, "UPDATE audit SET record = ? WHERE seq = 3", canonical(forged))
    report = await verify_store(store)
    await store.close()

    assert report.problem is not None
    assert (report.problem.kind, report.problem.sequence) == ("altered", 3)
    assert "content was edited" in report.problem.detail


async def test_verify_names_an_edited_record_whose_hash_was_recomputed(tmp_path: Path) -> None:
    store, entries = await _tampered(tmp_path)
    forged = canonical(orjson.loads(entries[3].record) | {"agent_id": "someone-else"})
    _edit(tmp_path, "UPDATE audit SET record = ?, hash = ? WHERE seq = 4", forged, chain_hash(entries[2].hash, forged))
    report = await verify_store(store)
    await store.close()

    assert report.problem is not None
    assert (report.problem.kind, report.problem.sequence) == ("altered", 4), report.problem
    assert "hash recomputed: #5 links to" in report.problem.detail


async def test_verify_names_a_deleted_record(tmp_path: Path) -> None:
    store, _ = await _tampered(tmp_path)
    _edit(tmp_path, "DELETE FROM audit WHERE seq = 4")
    report = await verify_store(store)
    await store.close()

    assert report.problem is not None
    assert (report.problem.kind, report.problem.sequence) == ("removed", 4)
    assert report.problem.detail == "record #4 was removed (the chain jumps to #5)"


async def test_verify_names_a_record_inserted_with_a_valid_hash(tmp_path: Path) -> None:
    store, entries = await _tampered(tmp_path)
    forged = canonical(orjson.loads(entries[2].record) | {"sequence": 3, "event_id": "forged"})
    with sqlite3.connect(tmp_path / "graph.db") as db:
        for seq in range(6, 2, -1):  # make room at #3
            db.execute("UPDATE audit SET seq = seq + 1 WHERE seq = ?", (seq,))
        db.execute(
            "INSERT INTO audit (seq, event_id, kind, at_ns, recorded_ns, blocked, rule_id, fallback, prev_hash, "
            "hash, record) VALUES (3, 'forged', 'decision', 0, 0, 0, '', 0, ?, ?, ?)",
            (entries[1].hash, chain_hash(entries[1].hash, forged), forged),
        )
    report = await verify_store(store)
    await store.close()

    assert report.problem is not None
    assert (report.problem.kind, report.problem.sequence) == ("inserted", 3)


async def test_verify_names_a_record_inserted_without_a_valid_hash(tmp_path: Path) -> None:
    store, entries = await _tampered(tmp_path)
    with sqlite3.connect(tmp_path / "graph.db") as db:
        for seq in range(6, 1, -1):
            db.execute("UPDATE audit SET seq = seq + 1 WHERE seq = ?", (seq,))
        db.execute(
            "INSERT INTO audit (seq, event_id, kind, at_ns, recorded_ns, blocked, rule_id, fallback, prev_hash, "
            "hash, record) VALUES (2, 'forged', 'decision', 0, 0, 0, '', 0, ?, ?, ?)",
            (entries[0].hash, "00" * 32, b'{"sequence":2}'),
        )
    report = await verify_store(store)
    await store.close()

    assert report.problem is not None
    assert (report.problem.kind, report.problem.sequence) == ("inserted", 2)


def test_a_record_that_says_another_sequence_number_is_reordered() -> None:
    verifier = ChainVerifier()
    record = canonical({"sequence": 2})
    verifier.feed(AuditEntry(1, GENESIS, chain_hash(GENESIS, record), record))
    problem = verifier.report().problem
    assert problem is not None
    assert (problem.kind, problem.sequence) == ("reordered", 1)


async def test_a_version_1_file_is_upgraded_with_its_decisions_chained(tmp_path: Path) -> None:
    path = tmp_path / "graph.db"
    store = await SqliteGraphStore.open(path)
    await store.ingest([_decision("e1"), _protocol("e2"), _decision("e3", outcome=graph_pb2.BLOCKED)])
    await store.close()
    with sqlite3.connect(path) as db:  # back to what version 1 had: no chain, events as protobuf JSON
        db.execute("DROP TABLE audit")
        for event_id, document in db.execute("SELECT event_id, event FROM nodes").fetchall():
            legacy = json_format.MessageToJson(graph_pb2.Event.FromString(document), preserving_proto_field_name=True)
            db.execute("UPDATE nodes SET event = ? WHERE event_id = ?", (legacy, event_id))
        db.execute("PRAGMA user_version = 1")

    upgraded = await SqliteGraphStore.open(path)
    try:
        records = await _records(upgraded)
        report = await verify_store(upgraded)
        page = await upgraded.nodes("wf-1")
        assert page is not None
        nodes = sorted(page.items, key=lambda node: node.event.event_id)
    finally:
        await upgraded.close()
    assert [r["event_id"] for r in records] == ["e1", "e3"]
    assert report.ok
    assert [node.event for node in nodes if node.event.node_type != graph_pb2.VERIFICATION] == [
        _decision("e1"),
        _protocol("e2"),
        _decision("e3", outcome=graph_pb2.BLOCKED),
    ]
    # Each allowed decision's verifier answer is a VERIFICATION node of its own, never chained.
    verifications = [node.event for node in nodes if node.event.node_type == graph_pb2.VERIFICATION]
    assert [(node.node_id, node.verifier.deviation_score) for node in verifications] == [
        ("node-e1:verification:1", 0.25),
        ("node-e3:verification:1", 0.25),
    ]


_JSON_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
_JSON = st.recursive(
    _JSON_LEAF,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(_JSON)
def test_the_fast_canonical_form_is_byte_for_byte_rfc8785(value: Any) -> None:
    assert canonical({"v": value}) == rfc8785.dumps({"v": value})


@pytest.mark.parametrize(
    "text", ["\x00\x01\x08\t\n\x0b\x0c\r\x1f", '"\\/', "\x7f\u2028\u2029é€😀", "\ud7ff\ue000\uffff"]
)
def test_strings_are_escaped_as_rfc8785_escapes_them(text: str) -> None:
    assert canonical({"s": text, text[:1] or "k": 1.5}) == rfc8785.dumps({"s": text, text[:1] or "k": 1.5})


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.integers(min_value=-(10**18), max_value=253_402_300_798 * 10**9), min_size=1, max_size=5))
def test_rfc3339_writes_what_strftime_writes_whatever_second_it_saw_before(stamps: list[int]) -> None:
    # rfc3339 keeps the last second's text: consecutive stamps in one second, in another,
    # before the epoch and back must all read exactly as the plain strftime form.
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for ns in [*stamps, stamps[0] + 1, stamps[0] - 1_000_000_000]:
        assert rfc3339(ns) == (epoch + timedelta(microseconds=ns // 1000)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def test_a_chains_every_link_is_in_the_hashed_record_and_unchained_records_are_unchanged(
    store: GraphStore,
) -> None:
    chained = _decision("e1")
    chained.verifier.CopyFrom(
        verifier_pb2.ScoreResponse(scorer="ref+ext", deviation_score=0.3, threshold=0.8, verdict=verifier_pb2.PASS)
    )
    chained.verifications.extend(
        [
            verifier_pb2.ScoreResponse(scorer="ref", deviation_score=0.3, threshold=0.8, verdict=verifier_pb2.PASS),
            verifier_pb2.ScoreResponse(scorer="chained verifier 2", reasons=["chained verifier 2 unavailable"]),
        ]
    )
    await store.ingest([chained, _decision("e2")])

    first, second = await _records(store)
    assert first["verifications"] == [
        {"deviation_score": 0.3, "threshold": 0.8, "verdict": "PASS", "scorer": "ref", "fallback": False},
        {
            "deviation_score": 0,
            "threshold": 0,
            "verdict": "VERDICT_UNSPECIFIED",
            "scorer": "chained verifier 2",
            "fallback": True,
        },
    ]
    assert "verifications" not in second
    # Editing a link's answer breaks the chain like any other field.
    entries = await store.audit_entries()
    assert entries[0].hash == hashlib.sha256(bytes.fromhex(GENESIS) + entries[0].record).hexdigest()
    assert b'"verifications"' in entries[0].record
