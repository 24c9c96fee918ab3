"""bastion_audit_chain_ok on the graph's /metrics: unknown (NaN) until GET /audit/verify runs,
then 1 for an intact chain and 0 once a verify finds an edited record (the alert's input)."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fixtures.graphapi import auditor_token, bearer
from prometheus_client.parser import text_string_to_metric_families

from bastion._appconfig import AuthConfig
from bastion._hosts import HostCheck
from bastion._identity import TokenVerifier, load_public_keys
from bastion.graph import SqliteGraphStore, create_app
from bastion.v1 import graph_pb2, policy_pb2

_T0_NS = 1_767_225_600 * 10**9


def _event(event_id: str) -> graph_pb2.Event:
    event = graph_pb2.Event(
        event_id=event_id,
        workflow_id="wf-1",
        node_id=f"node-{event_id}",
        node_type=graph_pb2.ACTION,
        agent_id="agent-a",
        action=policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server="mail", tool="send", method="tools/call"),
        decision=policy_pb2.Decision(effect=policy_pb2.ALLOW, rule_id="r1", policy_name="mail", policy_version=1),
        outcome=graph_pb2.FORWARDED,
    )
    event.started_at.FromNanoseconds(_T0_NS)
    event.decided_at.FromNanoseconds(_T0_NS + 1_000_000)
    return event


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    store = await SqliteGraphStore.open(tmp_path / "graph.db")
    await store.ingest([_event(f"e{n}") for n in range(1, 4)])
    verifier = TokenVerifier(AuthConfig(), load_public_keys(AuthConfig(), tmp_path))
    app = create_app(store, verifier=verifier, hosts=HostCheck(("graph",), "127.0.0.1"))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://graph", headers=bearer(auditor_token(tmp_path))
    ) as opened:
        yield opened
    await store.close()


async def _gauges(client: httpx.AsyncClient) -> dict[str, float]:
    text = (await client.get("/metrics")).text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("bastion_audit_chain")
        for sample in family.samples
    }


async def test_audit_chain_ok_is_unknown_then_1_then_0_after_a_record_is_edited(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    before = await _gauges(client)
    assert math.isnan(before["bastion_audit_chain_ok"])
    assert before["bastion_audit_chain_verified_timestamp_seconds"] == 0

    assert (await client.get("/audit/verify")).json()["ok"] is True
    intact = await _gauges(client)
    assert intact["bastion_audit_chain_ok"] == 1
    assert intact["bastion_audit_chain_verified_timestamp_seconds"] > 0

    with sqlite3.connect(tmp_path / "graph.db") as db:
        db.execute("DROP TRIGGER audit_no_update")
        db.execute("UPDATE audit SET record = ? WHERE seq = 2", (b'{"forged":true}',))
    assert (await client.get("/audit/verify")).json()["ok"] is False
    assert (await _gauges(client))["bastion_audit_chain_ok"] == 0
