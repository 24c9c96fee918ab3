"""VERIFICATION nodes derived at ingest from an allowed ACTION's verifier answers
(bastion.graph._verifications), on both backends: one per answer, linked ACTION
-VERIFIED_BY-> VERIFICATION; one saying so when the verifier did not answer; none where
the verifier's say did not decide; never duplicated by a re-delivery; not audit records."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import orjson
import pytest
from fixtures.graphstores import BACKENDS, opened_store

from bastion import ProtocolError
from bastion.graph import Edge, GraphStore
from bastion.graph._export import verify_store
from bastion.v1 import graph_pb2, policy_pb2, verifier_pb2

_T0_NS = 1_767_225_600 * 10**9
_UNAVAILABLE = "verifier unavailable (UNAVAILABLE): not reachable; fallback block (proxy default)"


def _call(
    n: int,
    *,
    effect: policy_pb2.Effect.ValueType = policy_pb2.ALLOW,
    verifier: verifier_pb2.ScoreResponse | None = None,
    members: Sequence[verifier_pb2.ScoreResponse] = (),
    outcome: graph_pb2.Outcome.ValueType = graph_pb2.FORWARDED,
    block_code: str = "",
    block_reason: str = "",
    fallback: bool = False,
) -> graph_pb2.Event:
    event = graph_pb2.Event(
        event_id=f"e{n}",
        workflow_id="wf-1",
        node_id=f"node-{n}",
        parent_ids=[f"node-{n - 1}"] if n > 1 else [],
        node_type=graph_pb2.ACTION,
        agent_id="agent-a",
        tenant="default",
        session_id="s-1",
        action=policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server="mail", tool="send", method="tools/call"),
        decision=policy_pb2.Decision(effect=effect, rule_id="r1", policy_name="mail", policy_version=3),
        verifier=verifier,
        verifications=members,
        outcome=outcome,
        block_code=block_code,
        block_reason=block_reason,
        verifier_fallback=fallback,
    )
    if outcome != graph_pb2.FORWARDED:
        event.violation_id = f"v-{n}"
    event.started_at.FromNanoseconds(_T0_NS + n * 10**9)
    event.decided_at.FromNanoseconds(_T0_NS + n * 10**9 + 1_500_000)
    return event


def _score(scorer: str, value: float, verdict: verifier_pb2.Verdict.ValueType) -> verifier_pb2.ScoreResponse:
    return verifier_pb2.ScoreResponse(
        deviation_score=value, threshold=0.8, verdict=verdict, scorer=scorer, reasons=[f"{scorer} saw {value}"]
    )


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[GraphStore]:
    async with opened_store(request, request.param, tmp_path) as opened:
        yield opened


async def _graph(store: GraphStore) -> tuple[list[graph_pb2.Event], list[Edge]]:
    snapshot = await store.snapshot("wf-1")
    assert snapshot is not None
    assert not snapshot.truncated
    return [node.event for node in snapshot.nodes], list(snapshot.edges)


def _verified_by(edges: Sequence[Edge]) -> list[tuple[str, str, str]]:
    return [(edge.source, edge.target, edge.reason) for edge in edges if edge.type == "VERIFIED_BY"]


async def test_an_allowed_calls_verifier_answer_is_a_verification_node_the_action_is_verified_by(
    store: GraphStore,
) -> None:
    answer = _score("reference/1", 0.25, verifier_pb2.PASS)
    await store.ingest([_call(1, verifier=answer)])

    nodes, edges = await _graph(store)
    action, verification = nodes
    assert action == _call(1, verifier=answer)  # the action's own document is untouched
    assert (verification.node_id, verification.event_id) == ("node-1:verification:1", "e1:verification:1")
    assert (verification.node_type, verification.workflow_id) == (graph_pb2.VERIFICATION, "wf-1")
    assert (verification.agent_id, verification.tenant, verification.session_id) == ("agent-a", "default", "s-1")
    assert verification.verifier == answer
    assert (verification.verifier_fallback, verification.outcome, verification.block_reason) == (False, 0, "")
    assert verification.started_at == action.started_at
    assert _verified_by(edges) == [
        ("node-1", "node-1:verification:1", "reference/1: PASS, score 0.25 (threshold 0.80)")
    ]
    summary = await store.workflow("wf-1")
    assert summary is not None
    assert (summary.node_count, summary.violation_count) == (2, 0)


async def test_each_chained_verifiers_answer_is_a_node_of_its_own_and_one_that_failed_says_why(
    store: GraphStore,
) -> None:
    first = _score("reference/1", 0.25, verifier_pb2.PASS)
    failed = verifier_pb2.ScoreResponse(scorer="chained verifier 2", reasons=[_UNAVAILABLE])
    combined = _score("reference/1+guard/1", 0.25, verifier_pb2.PASS)
    await store.ingest([_call(1, verifier=combined, members=[first, _score("guard/1", 0.1, verifier_pb2.PASS)])])
    await store.ingest(
        [
            _call(
                2,
                members=[first, failed],
                outcome=graph_pb2.BLOCKED,
                block_code="bastion.verifier_unavailable",
                block_reason=f"chained {_UNAVAILABLE}",
            )
        ]
    )

    nodes, edges = await _graph(store)
    verifications = [node for node in nodes if node.node_type == graph_pb2.VERIFICATION]
    assert [(node.node_id, node.verifier.scorer) for node in verifications] == [
        ("node-1:verification:1", "reference/1"),
        ("node-1:verification:2", "guard/1"),
        ("node-2:verification:1", "reference/1"),
        ("node-2:verification:2", "chained verifier 2"),
    ]
    down = verifications[3]
    assert (down.verifier.verdict, down.verifier_fallback) == (verifier_pb2.VERDICT_UNSPECIFIED, True)
    assert list(down.verifier.reasons) == [_UNAVAILABLE]
    assert down.block_reason == f"chained {_UNAVAILABLE}"
    assert not verifications[2].verifier_fallback  # the first member did answer
    assert [target for _, target, _ in _verified_by(edges)] == [node.node_id for node in verifications]
    assert _verified_by(edges)[3] == ("node-2", "node-2:verification:2", "chained verifier 2 did not answer")
    # A derived node is never a violation, whatever its action's outcome.
    summary = await store.workflow("wf-1")
    assert summary is not None
    assert (summary.node_count, summary.violation_count) == (6, 1)


@pytest.mark.parametrize(
    ("outcome", "block_code", "fallback"),
    [
        (graph_pb2.BLOCKED, "bastion.verifier_unavailable", False),
        (graph_pb2.BLOCKED, "bastion.verifier_queued", False),
        (graph_pb2.FORWARDED, "", True),
    ],
)
async def test_a_verifier_that_did_not_answer_is_a_node_with_the_reason(
    store: GraphStore, outcome: graph_pb2.Outcome.ValueType, block_code: str, fallback: bool
) -> None:
    await store.ingest([_call(1, outcome=outcome, block_code=block_code, block_reason=_UNAVAILABLE, fallback=fallback)])

    nodes, edges = await _graph(store)
    assert [node.node_type for node in nodes] == [graph_pb2.ACTION, graph_pb2.VERIFICATION]
    verification = nodes[1]
    assert not verification.verifier.scorer
    assert verification.verifier.verdict == verifier_pb2.VERDICT_UNSPECIFIED
    assert list(verification.verifier.reasons) == [_UNAVAILABLE]
    assert (verification.verifier_fallback, verification.block_reason) == (True, _UNAVAILABLE)
    assert _verified_by(edges) == [("node-1", "node-1:verification:1", "verifier did not answer")]


async def test_calls_whose_verifier_did_not_decide_and_other_events_get_none(store: GraphStore) -> None:
    answer = _score("reference/1", 0.9, verifier_pb2.BLOCK)
    denied = _call(1, effect=policy_pb2.DENY, verifier=answer, outcome=graph_pb2.BLOCKED, block_code="r1")
    held = _call(2, effect=policy_pb2.REQUIRE_APPROVAL, verifier=answer, outcome=graph_pb2.BLOCKED, block_code="r1")
    approval = graph_pb2.Event(
        event_id="e3",
        workflow_id="wf-1",
        node_id="node-3",
        node_type=graph_pb2.VERIFICATION,
        action=policy_pb2.Action(kind=policy_pb2.MCP_REQUEST, method="bastion.approval/approve"),
        outcome=graph_pb2.FORWARDED,
        parent_ids=["node-2"],
    )
    protocol = graph_pb2.Event(
        event_id="e4",
        workflow_id="wf-1",
        node_id="node-4",
        node_type=graph_pb2.ACTION,
        action=policy_pb2.Action(kind=policy_pb2.MCP_REQUEST, method="notifications/initialized"),
        outcome=graph_pb2.FORWARDED,
    )
    rejected = graph_pb2.Event(
        event_id="e5", workflow_id="wf-1", node_id="node-5", node_type=graph_pb2.ACTION, outcome=graph_pb2.REJECTED
    )
    allowed = _call(6, verifier=_score("reference/1", 0.1, verifier_pb2.PASS))
    result = graph_pb2.Event(
        event_id="r6",
        workflow_id="wf-1",
        node_id="node-6",
        tenant="default",
        result=graph_pb2.ActionResult(outcome=graph_pb2.COMPLETED),
    )
    await store.ingest([denied, held, approval, protocol, rejected, allowed, result])

    nodes, edges = await _graph(store)
    # The approval's own VERIFICATION event (stamped when received: listed last) and the allowed call's.
    assert sorted(node.node_id for node in nodes if node.node_type == graph_pb2.VERIFICATION) == [
        "node-3",
        "node-6:verification:1",
    ]
    assert [target for _, target, _ in _verified_by(edges)] == ["node-6:verification:1"]
    summary = await store.workflow("wf-1")
    assert summary is not None
    assert summary.node_count == 7


async def test_redelivery_adds_no_verification_node_or_edge_and_they_are_not_audit_records(
    store: GraphStore,
) -> None:
    members = [_score("reference/1", 0.2, verifier_pb2.PASS), _score("guard/1", 0.3, verifier_pb2.FLAG)]
    first = await store.ingest([_call(1, members=members, verifier=members[1]), _call(1, members=members)])
    before = await _graph(store)
    again = await store.ingest([_call(1, members=members, verifier=members[1]), _call(2, verifier=members[0])])

    assert (first.accepted, first.duplicates) == (1, 1)
    assert (again.accepted, again.duplicates) == (1, 1)
    nodes, edges = await _graph(store)
    assert nodes[:3] == before[0]
    assert [node.node_id for node in nodes] == [
        "node-1",
        "node-1:verification:1",
        "node-1:verification:2",
        "node-2",
        "node-2:verification:1",
    ]
    assert len(_verified_by(edges)) == 3
    summary = await store.workflow("wf-1")
    assert summary is not None
    assert summary.node_count == 5
    assert [orjson.loads(entry.record)["event_id"] for entry in await store.audit_entries()] == ["e1", "e2"]
    assert (await verify_store(store)).ok


async def test_an_event_reusing_a_derived_id_is_refused_and_one_that_took_it_first_keeps_it(
    store: GraphStore,
) -> None:
    await store.ingest([_call(1, verifier=_score("reference/1", 0.2, verifier_pb2.PASS))])
    squatter = graph_pb2.Event(
        event_id="x2", workflow_id="wf-1", node_id="node-2:verification:1", node_type=graph_pb2.ACTION
    )
    with pytest.raises(ProtocolError, match="reuses node_id 'node-1:verification:1'"):
        await store.ingest([graph_pb2.Event(event_id="x1", workflow_id="wf-1", node_id="node-1:verification:1")])
    await store.ingest([squatter])
    await store.ingest([_call(2, verifier=_score("reference/1", 0.3, verifier_pb2.PASS))])

    nodes, edges = await _graph(store)
    taken = next(node for node in nodes if node.node_id == "node-2:verification:1")
    assert taken.event_id == "x2"  # the first event keeps its node; the action stores without it
    assert [target for _, target, _ in _verified_by(edges)] == ["node-1:verification:1"]
    summary = await store.workflow("wf-1")
    assert summary is not None
    assert summary.node_count == 4


async def test_a_call_whose_policy_waived_scoring_gets_none_but_a_forged_waiver_does_not_hide_an_answer(
    store: GraphStore,
) -> None:
    waived = _call(1, block_reason="verifier waived: policy 'mail' v3 says verifier none")
    waived.decision.verifier.name = "none"
    # A waiver claimed beside an answer the event carries: the answer is still a node.
    answered = _call(2, verifier=_score("reference/1", 0.2, verifier_pb2.PASS))
    answered.decision.verifier.name = "none"
    # Any other name without an answer is a verifier that did not answer.
    lookalike = _call(3, block_reason=_UNAVAILABLE)
    lookalike.decision.verifier.name = "None"
    # Waived, then refused by a limit: no verifier was asked either.
    limited = _call(4, outcome=graph_pb2.BLOCKED, block_code="bastion.limit.rate", block_reason="rate limit")
    limited.decision.verifier.name = "none"
    # Scored after all (the proxy's settings said so) and failed, whatever the decision names.
    failed = _call(5, outcome=graph_pb2.BLOCKED, block_code="bastion.verifier_unavailable", block_reason=_UNAVAILABLE)
    failed.decision.verifier.name = "none"
    fell_back = _call(6, block_reason=_UNAVAILABLE, fallback=True)
    fell_back.decision.verifier.name = "none"
    await store.ingest([waived, answered, lookalike, limited, failed, fell_back])

    nodes, _ = await _graph(store)
    assert sorted(node.node_id for node in nodes if node.node_type == graph_pb2.VERIFICATION) == [
        "node-2:verification:1",
        "node-3:verification:1",
        "node-5:verification:1",
        "node-6:verification:1",
    ]
