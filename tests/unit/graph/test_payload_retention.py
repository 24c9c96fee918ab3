"""Payload retention, on both backends: old nodes lose what the agent sent and received,
keep their digests, decisions and edges, and the audit chain is untouched."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fixtures.graphstores import BACKENDS, opened_store

from bastion.graph import GraphStore
from bastion.graph._export import verify_store
from bastion.graph._retention import Retention
from bastion.v1 import graph_pb2, policy_pb2

_DAY_NS = 86_400 * 10**9
_NOW_NS = 1_767_225_600 * 10**9


def _call(n: int, *, days_ago: int, parents: tuple[str, ...] = ()) -> graph_pb2.Event:
    event = graph_pb2.Event(
        event_id=f"e{n}",
        workflow_id="wf-1",
        node_id=f"node-{n}",
        parent_ids=parents,
        node_type=graph_pb2.ACTION,
        agent_id="agent-a",
        action=policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server="bank", tool="transfer", method="tools/call"),
        decision=policy_pb2.Decision(effect=policy_pb2.ALLOW, rule_id="r1", policy_name="bank", policy_version=1),
        outcome=graph_pb2.FORWARDED,
        payload_digest=f"sha256-of-call-{n}",
        arguments_json=b'{"iban": "DE89370400440532013000", "amount": 9007199254740993}',
    )
    event.action.arguments.update({"iban": "DE89370400440532013000", "amount": 12.5})
    event.started_at.FromNanoseconds(_NOW_NS - days_ago * _DAY_NS)
    return event


def _result(n: int) -> graph_pb2.Event:
    result = graph_pb2.ActionResult(outcome=graph_pb2.COMPLETED, result_digest=f"sha256-of-answer-{n}")
    result.redacted_result.update({"balance": 1000})
    return graph_pb2.Event(event_id=f"r{n}", workflow_id="wf-1", node_id=f"node-{n}", result=result)


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[GraphStore]:
    async with opened_store(request, request.param, tmp_path) as opened:
        yield opened


async def test_old_nodes_lose_their_payloads_and_keep_digests_decisions_edges_and_the_chain(store: GraphStore) -> None:
    await store.ingest(
        [
            _call(1, days_ago=40),
            _result(1),
            _call(2, days_ago=35, parents=("node-1",)),
            _call(3, days_ago=1, parents=("node-2",)),
            _result(3),
        ]
    )
    chain_before = await store.audit_entries()

    trimmed = await Retention(store, days=30, batch=1).run_once(now_ns=_NOW_NS)
    again = await Retention(store, days=30).run_once(now_ns=_NOW_NS)

    page = await store.nodes("wf-1")
    assert page is not None
    nodes = {node.event.event_id: node.event for node in page.items}
    # The two old calls and the VERIFICATION node each allowed call gets (no verifier
    # answer recorded: one saying it did not answer), which retention may mark but not break.
    assert (trimmed, again) == (4, 0)
    assert len(nodes) == 6
    for old in ("e1", "e2"):
        verification = nodes[f"{old}:verification:1"]
        assert verification.payload_expired
        assert (verification.node_type, verification.verifier_fallback) == (graph_pb2.VERIFICATION, True)
        assert list(verification.verifier.reasons) == ["the verifier did not answer"]
        event = nodes[old]
        assert event.payload_expired
        assert not event.action.HasField("arguments")
        assert not event.arguments_json
        assert event.payload_digest == f"sha256-of-call-{old[1:]}"
        assert (event.decision.rule_id, event.outcome) == ("r1", graph_pb2.FORWARDED)
    assert nodes["e1"].result.result_digest == "sha256-of-answer-1"
    assert not nodes["e1"].result.HasField("redacted_result")
    assert list(nodes["e2"].parent_ids) == ["node-1"]
    recent = nodes["e3"]
    assert not recent.payload_expired
    assert recent.arguments_json == _call(3, days_ago=1).arguments_json
    assert recent.result.redacted_result["balance"] == 1000
    assert await store.audit_entries() == chain_before  # the chain is never rewritten
    assert (await verify_store(store)).ok


async def test_zero_days_keeps_every_payload(store: GraphStore) -> None:
    await store.ingest([_call(1, days_ago=10_000)])

    assert await Retention(store, days=0).run_once(now_ns=_NOW_NS) == 0
    page = await store.nodes("wf-1")
    assert page is not None
    assert page.items[0].event.arguments_json
