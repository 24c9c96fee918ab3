"""Signed checkpoints of the audit chain, on both backends: written every N records, and
what they catch that the chain alone cannot (a chain cut short, a chain rewritten with
every hash recomputed), and a checkpoint that is not by the stack's key."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import neo4j
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fixtures.graphstores import BACKENDS, opened_store, wipe_neo4j
from fixtures.neo4j import Neo4jServer

from bastion.graph import GraphStore, Neo4jGraphStore, SqliteGraphStore
from bastion.graph._audit import canonical, chain_hash
from bastion.graph._checkpoints import Checkpointer, read, sign
from bastion.graph._export import verify_store
from bastion.graph._store import StoredCheckpoint
from bastion.v1 import graph_pb2, policy_pb2

KEY = Ed25519PrivateKey.generate()
KEYS = [KEY.public_key()]


def _decision(n: int) -> graph_pb2.Event:
    event = graph_pb2.Event(
        event_id=f"e{n}",
        workflow_id="wf-1",
        node_id=f"node-{n}",
        node_type=graph_pb2.ACTION,
        agent_id="agent-a",
        action=policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server="mail", tool="send", method="tools/call"),
        decision=policy_pb2.Decision(effect=policy_pb2.ALLOW, rule_id="r1", policy_name="mail", policy_version=3),
        outcome=graph_pb2.FORWARDED,
    )
    event.started_at.FromNanoseconds(1_767_225_600 * 10**9 + n)
    return event


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[GraphStore]:
    async with opened_store(request, request.param, tmp_path) as opened:
        yield opened


async def _seven_records_checkpointed_every_two(store: GraphStore) -> int:
    await store.ingest([_decision(n) for n in range(1, 8)])
    return await Checkpointer(store, KEY, every=2).catch_up()


async def test_a_checkpoint_is_signed_every_n_records_and_each_pass_adds_only_the_new_ones(store: GraphStore) -> None:
    written = await _seven_records_checkpointed_every_two(store)
    again = await Checkpointer(store, KEY, every=2).catch_up()
    await store.ingest([_decision(8)])
    later = await Checkpointer(store, KEY, every=2).catch_up()

    marks = await store.checkpoints()
    entries = {entry.sequence: entry.hash for entry in await store.audit_entries()}
    assert (written, again, later) == (3, 0, 1)
    assert [mark.sequence for mark in marks] == [2, 4, 6, 8]
    for mark in marks:
        claims = read(mark.token, KEYS)
        assert (claims.sequence, claims.hash) == (mark.sequence, entries[mark.sequence])
    assert await store.last_checkpoint() == marks[-1]
    report = await verify_store(store, keys=KEYS)
    assert (report.ok, report.checkpoints) == (True, 4)


async def test_a_second_checkpoint_for_a_sequence_is_not_stored(store: GraphStore) -> None:
    await _seven_records_checkpointed_every_two(store)
    (first, *_) = await store.checkpoints()

    assert not await store.add_checkpoint(
        StoredCheckpoint(first.sequence, "0" * 64, sign(KEY, first.sequence, "0" * 64))
    )
    assert (await store.checkpoints())[0] == first


async def test_a_checkpoint_signed_by_another_key_is_named_forged(store: GraphStore) -> None:
    await store.ingest([_decision(n) for n in range(1, 4)])
    entry = (await store.audit_entries())[1]
    await store.add_checkpoint(StoredCheckpoint(2, entry.hash, sign(Ed25519PrivateKey.generate(), 2, entry.hash)))

    report = await verify_store(store, keys=KEYS)

    assert report.problem is not None
    assert (report.problem.kind, report.problem.sequence) == ("forged", 2)
    assert "not by the stack's key" in report.problem.detail


async def test_checkpoint_tokens_that_are_not_checkpoints_are_refused() -> None:
    with pytest.raises(ValueError, match="not a JWS"):
        read("garbage", KEYS)
    import jwt

    other = jwt.encode({"sequence": 1, "hash": "h", "iat": 1}, KEY, algorithm="EdDSA", headers={"typ": "JWT"})
    with pytest.raises(ValueError, match="typ is 'JWT'"):
        read(other, KEYS)


# --- what the chain alone cannot see -------------------------------------------------------------


async def test_a_chain_cut_short_in_sqlite_is_named_by_the_checkpoint_past_its_end(tmp_path: Path) -> None:
    store = await SqliteGraphStore.open(tmp_path / "graph.db")
    try:
        await _seven_records_checkpointed_every_two(store)
        with sqlite3.connect(tmp_path / "graph.db") as db:
            db.execute("DROP TRIGGER audit_no_delete")
            db.execute("DELETE FROM audit WHERE seq >= 6")
        db.close()
        report = await verify_store(store, keys=KEYS)
    finally:
        await store.close()

    assert report.problem is not None
    assert (report.problem.kind, report.problem.sequence) == ("removed", 6)
    assert "the chain ends at #5, but checkpoint #6" in report.problem.detail
    assert report.checkpoints == 2


async def test_a_chain_rewritten_with_recomputed_hashes_in_sqlite_is_named_at_the_next_checkpoint(
    tmp_path: Path,
) -> None:
    store = await SqliteGraphStore.open(tmp_path / "graph.db")
    try:
        await _seven_records_checkpointed_every_two(store)
        entries = await store.audit_entries()
        with sqlite3.connect(tmp_path / "graph.db") as db:
            db.execute("DROP TRIGGER audit_no_update")
            prev = entries[1].hash
            for entry in entries[2:]:  # from #3 on, every record re-linked: the chain alone holds
                record = orjson.loads(entry.record)
                if entry.sequence == 3:
                    record["decision"] = "DENY"
                data = canonical(record)
                digest = chain_hash(prev, data)
                db.execute(
                    "UPDATE audit SET record = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                    (data, prev, digest, entry.sequence),
                )
                prev = digest
        db.close()
        report = await verify_store(store, keys=KEYS)
    finally:
        await store.close()

    assert report.problem is not None
    assert (report.problem.kind, report.problem.sequence) == ("altered", 4)
    assert "rewritten up to here" in report.problem.detail


async def test_a_chain_cut_short_in_neo4j_is_named_by_the_checkpoint_past_its_end(neo4j_server: Neo4jServer) -> None:
    wipe_neo4j(neo4j_server.url)
    store = await Neo4jGraphStore.open(neo4j_server.url)
    try:
        await _seven_records_checkpointed_every_two(store)
        with neo4j.GraphDatabase.driver(neo4j_server.url, auth=None) as driver:
            # What someone with database access would do to hide records: delete them and move the head back.
            driver.execute_query("MATCH (a:BastionAudit) WHERE a.seq >= 6 DELETE a")
            driver.execute_query("MATCH (h:BastionAuditHead), (a:BastionAudit {seq: 5}) SET h.seq = 5, h.hash = a.hash")
        report = await verify_store(store, keys=KEYS)
    finally:
        await store.close()

    assert report.problem is not None
    assert (report.problem.kind, report.problem.sequence) == ("removed", 6)


async def test_an_empty_or_short_chain_has_no_checkpoint_and_verifies(store: GraphStore) -> None:
    assert await Checkpointer(store, KEY, every=2).catch_up() == 0
    await store.ingest([_decision(1)])
    assert await Checkpointer(store, KEY, every=2).catch_up() == 0
    report = await verify_store(store, keys=KEYS)
    assert (report.ok, report.records, report.checkpoints) == (True, 1, 0)
