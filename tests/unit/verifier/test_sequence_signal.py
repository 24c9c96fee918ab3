"""The reference scorer's sequence signal: a per-agent Markov model of tool transitions,
learnt from request histories, with a cold start, bounded memory and a durable store."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from bastion import ConfigError
from bastion._appconfig import AppConfig
from bastion._rpc import auth_metadata
from bastion.v1 import policy_pb2, verifier_pb2, verifier_pb2_grpc
from bastion.verifier import ReferenceScorer, ScorerConfig, VerifierSettings
from bastion.verifier._sequence import MAX_NAME, START, SequenceConfig, SequenceModel
from bastion.verifier._sequence_store import SEQUENCE_STORE, SequenceStore, flush, run_flusher
from bastion.verifier._server import serve

# Only the sequence signal: no argument or taint signal can fire on these requests anyway.
CONFIG = ScorerConfig(argument_weight=0.0, contradiction_weight=0.0, taint_weight=0.0)
SMALL = SequenceConfig(min_transitions=20, rare_probability=0.05)


def scorer(model: SequenceModel | None = None) -> ReferenceScorer:
    return ReferenceScorer(CONFIG, SequenceModel(SMALL) if model is None else model)


def node(n: int, tool: str, effect: policy_pb2.Effect.ValueType = policy_pb2.ALLOW) -> verifier_pb2.HistoryNode:
    return verifier_pb2.HistoryNode(node_id=f"n{n}", kind=policy_pb2.TOOL_CALL, server="app", tool=tool, effect=effect)


def request(
    tool: str, history: Sequence[verifier_pb2.HistoryNode] = (), *, agent: str = "alice", workflow: str = "wf"
) -> verifier_pb2.ScoreRequest:
    return verifier_pb2.ScoreRequest(
        action=policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server="app", tool=tool),
        ctx=policy_pb2.Context(agent_id=agent, tenant="t1", workflow_id=workflow),
        history=history,
    )


def run_workflow(s: ReferenceScorer, tools: Sequence[str], *, agent: str = "alice", workflow: str = "wf") -> None:
    """Score each tool in turn, as the proxy would, each one allowed into the next request's history."""
    history: list[verifier_pb2.HistoryNode] = []
    for n, tool in enumerate(tools):
        s.score(request(tool, history, agent=agent, workflow=workflow))
        history.append(node(n, tool))


def trained(s: ReferenceScorer, workflows: int = 10, *, agent: str = "alice") -> ReferenceScorer:
    # search -> read -> send -> log, ten times. A step is learnt when a later request shows it
    # allowed, so the last one (log) is not: 3 transitions each (START -> search, ...) = 30 learnt.
    for i in range(workflows):
        run_workflow(s, ["search", "read", "send", "log"], agent=agent, workflow=f"wf-{i}")
    return s


HISTORY = [node(0, "search"), node(1, "read")]


def test_a_rare_transition_for_an_agent_with_history_is_flagged_with_its_weight() -> None:
    s = trained(scorer())
    result = s.score(request("delete", HISTORY, workflow="new"))
    assert result.verdict == verifier_pb2.FLAG
    assert result.deviation_score == pytest.approx(0.3)
    assert list(result.reasons) == [
        "rare transition for this agent: app__delete after app__read, 0 of 10 times (under 5%) (weight 0.30)"
    ]


def test_the_same_transition_for_a_cold_start_agent_abstains_and_says_so() -> None:
    s = trained(scorer(), workflows=5)  # 15 transitions, + search -> read of this request
    result = s.score(request("delete", HISTORY, workflow="new"))
    assert result.verdict == verifier_pb2.PASS
    assert result.deviation_score == 0.0
    assert list(result.reasons) == [
        "sequence abstains: cold start, 16 of 20 transitions learnt for this agent (weight 0.00)"
    ]


def test_another_agent_does_not_inherit_a_warm_agents_model() -> None:
    s = trained(scorer())
    result = s.score(request("delete", HISTORY, agent="bob", workflow="new"))
    # Bob's own history (search -> read) is learnt before scoring: 1 transition, his.
    assert list(result.reasons) == [
        "sequence abstains: cold start, 1 of 20 transitions learnt for this agent (weight 0.00)"
    ]
    # The tenant is part of who the agent is.
    other_tenant = request("delete", HISTORY, workflow="new")
    other_tenant.ctx.tenant = "t2"
    assert "cold start, 1 of 20" in s.score(other_tenant).reasons[0]


def test_a_common_transition_passes_without_reasons() -> None:
    s = trained(scorer())
    result = s.score(request("send", HISTORY, workflow="new"))
    assert result.verdict == verifier_pb2.PASS
    assert list(result.reasons) == []
    first = s.score(request("search", workflow="new2"))
    assert first.verdict == verifier_pb2.PASS


def test_an_unusual_first_step_is_judged_from_start() -> None:
    s = trained(scorer())
    result = s.score(request("delete", workflow="new"))
    assert list(result.reasons) == [
        "rare transition for this agent: app__delete as a first step, 0 of 10 times (under 5%) (weight 0.30)"
    ]


def test_a_history_seen_again_by_every_later_request_is_learnt_once() -> None:
    model = SequenceModel(SMALL)
    s = scorer(model)
    history = [node(0, "search"), node(1, "read")]
    for _ in range(5):
        s.score(request("send", history))
    # Only search -> read (its predecessor START was not seen: no request with an empty history).
    assert model.assess("t1/alice", "app__search", "app__read").count == 1
    assert model.assess("t1/alice", "app__search", "app__read").learnt == 1


def test_blocked_steps_are_never_learnt_and_do_not_break_transitions() -> None:
    model = SequenceModel(SMALL)
    s = scorer(model)
    s.score(request("search"))
    history = [node(0, "search"), node(1, "wipe", policy_pb2.DENY), node(2, "read")]
    s.score(request("send", history))
    assert model.assess("t1/alice", "app__search", "app__wipe").count == 0
    assert model.assess("t1/alice", "app__search", "app__read").count == 1
    assert model.assess("t1/alice", START, "app__search").count == 1


def test_a_request_without_an_agent_id_abstains() -> None:
    result = scorer().score(request("send", HISTORY, agent=""))
    assert list(result.reasons) == ["sequence abstains: no agent id to learn from (weight 0.00)"]
    assert result.verdict == verifier_pb2.PASS


def test_the_signal_is_deterministic_for_the_same_sequence_of_requests() -> None:
    answers = []
    for _ in range(2):
        s = trained(scorer())
        answers.append([s.score(request(t, HISTORY, workflow="x")).SerializeToString() for t in ("send", "delete")])
    assert answers[0] == answers[1]


def test_memory_stays_bounded_with_many_agents_and_tools() -> None:
    config = SequenceConfig(min_transitions=1, max_agents=8, max_edges=16, max_workflows=32)
    model = SequenceModel(config)
    s = scorer(model)
    for agent in range(40):
        for wf in range(3):
            run_workflow(s, [f"tool{(agent * 7 + i) % 60}" for i in range(12)], agent=f"a{agent}", workflow=f"w{wf}")
    assert model.agents == 8
    assert len(model._cursors) <= 32
    assert all(len(m.edges) <= 16 for m in model._models.values())
    # The most recent agents are the ones kept.
    assert set(model._models) == {f"t1/a{agent}" for agent in range(32, 40)}


def test_when_an_agents_model_is_full_old_counts_fade_so_new_habits_can_enter() -> None:
    model = SequenceModel(SequenceConfig(min_transitions=1, max_edges=4))
    for i in range(4):
        model.observe("a", f"w{i}", [("x", "s0"), ("y", f"s{i + 1}")])
    assert len(model._models["a"].edges) == 4
    model.observe("a", "w9", [("x", "s0"), ("y", "new")])
    edges = model._models["a"].edges
    assert len(edges) <= 4
    # Halving dropped the edges seen once and kept none at a count it never had.
    assert all(count >= 1 for count in edges.values())


@pytest.mark.parametrize("size", [MAX_NAME + 1, 100_000])
def test_huge_names_are_neither_learnt_nor_crash_the_scorer(size: int) -> None:
    model = SequenceModel(SMALL)
    s = scorer(model)
    big = "x" * size
    s.score(request(big, [node(0, big), node(1, big)], agent=big))
    s.score(request(big, [node(0, big), node(1, big)]))
    assert model.agents == 0 or all(len(a) <= MAX_NAME for a in model._models)
    assert all(max(len(e[0]), len(e[1])) <= MAX_NAME for m in model._models.values() for e in m.edges)


def test_garbage_history_nodes_are_ignored() -> None:
    model = SequenceModel(SMALL)
    s = scorer(model)
    garbage = [
        verifier_pb2.HistoryNode(),
        verifier_pb2.HistoryNode(kind=policy_pb2.MCP_REQUEST, effect=policy_pb2.ALLOW),
        verifier_pb2.HistoryNode(node_id="z", effect=policy_pb2.ALLOW),  # no server, no tool
        node(5, "read", policy_pb2.EFFECT_UNSPECIFIED),
    ]
    result = s.score(request("send", garbage))
    assert result.verdict == verifier_pb2.PASS
    assert model.assess("t1/alice", START, "app__send").learnt == 0

    # Steps without node ids cannot be told from the last request's: never learnt (no double counting).
    anonymous = [verifier_pb2.HistoryNode(kind=policy_pb2.TOOL_CALL, server="app", tool=t, effect=policy_pb2.ALLOW)
                 for t in ("a", "b")]  # fmt: skip
    for _ in range(3):
        s.score(request("send", anonymous))
    assert model.assess("t1/alice", "app__a", "app__b").learnt == 0


@pytest.mark.parametrize(
    "overrides",
    [{"min_transitions": 0}, {"rare_probability": 0.0}, {"rare_probability": float("nan")}, {"max_agents": 0}],
)
def test_an_out_of_range_sequence_config_is_refused(overrides: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match=next(iter(overrides))):
        SequenceConfig(**overrides)  # type: ignore[arg-type]


# -- the store --------------------------------------------------------------------------


def test_the_model_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "verifier" / "sequence.sqlite3"
    model = SequenceModel(SMALL)
    trained(scorer(model))
    store = SequenceStore(path)
    asyncio.run(flush(model, store))
    store.close()

    restarted = SequenceModel(SMALL)
    store = SequenceStore(path)
    assert store.load(restarted) == 1
    store.close()
    s = scorer(restarted)
    rare = s.score(request("delete", HISTORY, workflow="after-restart"))
    assert list(rare.reasons) == [
        "rare transition for this agent: app__delete after app__read, 0 of 10 times (under 5%) (weight 0.30)"
    ]
    assert s.score(request("send", HISTORY, workflow="after-restart-2")).verdict == verifier_pb2.PASS


def test_dropped_agents_are_deleted_from_the_store_and_the_newest_are_loaded(tmp_path: Path) -> None:
    path = tmp_path / "sequence.sqlite3"
    model = SequenceModel(SequenceConfig(max_agents=2))
    store = SequenceStore(path)
    for agent in ("a", "b", "c"):
        model.observe(agent, "w", [("1", "x"), ("2", "y")])
        asyncio.run(flush(model, store))
    assert sorted(r[0] for r in sqlite3.connect(path).execute("SELECT agent FROM agents")) == ["b", "c"]
    small = SequenceModel(SequenceConfig(max_agents=1))
    assert store.load(small) == 1
    assert list(small._models) == ["c"]
    store.close()


def test_unreadable_rows_are_skipped_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "sequence.sqlite3"
    SequenceStore(path).close()
    with sqlite3.connect(path) as db:
        rows = [
            ("ok", 1, b'[["a","b",3]]'),
            ("not-json", 2, b"{"),
            ("negative", 3, b'[["a","b",-1]]'),
            ("float", 4, b'[["a","b",1.5]]'),
            ("shape", 5, b'{"a": 1}'),
            ("long", 6, b'[["' + b"x" * (MAX_NAME + 1) + b'","b",1]]'),
        ]
        db.executemany("INSERT INTO agents VALUES (?, ?, ?)", rows)
    model = SequenceModel()
    store = SequenceStore(path)
    assert store.load(model) == 1
    store.close()
    assert model.assess("ok", "a", "b").count == 3


def test_the_flusher_writes_periodically_and_once_more_on_stop(tmp_path: Path) -> None:
    path = tmp_path / "sequence.sqlite3"
    model = SequenceModel()
    store = SequenceStore(path)

    async def scenario() -> int:
        stop = asyncio.Event()
        task = asyncio.create_task(run_flusher(model, store, 3600, stop))
        model.observe("a", "w", [("1", "x"), ("2", "y")])
        stop.set()
        await task
        return len(store._db.execute("SELECT agent FROM agents").fetchall())

    assert asyncio.run(scenario()) == 1
    store.close()


# -- the service ------------------------------------------------------------------------


async def _serve_and_score(home: Path, requests: Sequence[verifier_pb2.ScoreRequest]) -> list[list[str]]:
    """Start `bastion verifier serve` (real gRPC server, port 0) under `home`, score `requests`, stop."""
    settings = VerifierSettings(
        home=home,
        verifier_addr="127.0.0.1:0",
        verifier_metrics_addr="127.0.0.1:0",
        service_token=SecretStr("t"),
        verifier_sequence_min_transitions=20,
        verifier_sequence_flush_s=3600,  # only the flush on stop
    )
    bound: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, AppConfig(), bound.set_result, stop))
    address = (await asyncio.wait_for(asyncio.shield(bound), 10))["grpc"]
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = verifier_pb2_grpc.VerifierStub(channel)
            return [list((await stub.Score(r, timeout=10, metadata=auth_metadata("t"))).reasons) for r in requests]
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def _workflow_requests(tools: Sequence[str], workflow: str) -> list[verifier_pb2.ScoreRequest]:
    return [
        request(tool, [node(n, t) for n, t in enumerate(tools[:i])], workflow=workflow) for i, tool in enumerate(tools)
    ]


async def test_the_service_learns_persists_on_stop_and_remembers_after_a_restart(tmp_path: Path) -> None:
    training = [r for i in range(10) for r in _workflow_requests(["search", "read", "send", "log"], f"wf-{i}")]
    answers = await _serve_and_score(tmp_path, [*training, request("delete", HISTORY, workflow="probe")])
    assert answers[0] == ["sequence abstains: cold start, 0 of 20 transitions learnt for this agent (weight 0.00)"]
    assert answers[-1][0].startswith("rare transition for this agent: app__delete after app__read, 0 of 10")
    assert (tmp_path / SEQUENCE_STORE).exists()

    (after,) = await _serve_and_score(tmp_path, [request("delete", HISTORY, workflow="after-restart")])
    assert after[0].startswith("rare transition for this agent: app__delete after app__read, 0 of 10")


_tools = st.sampled_from(["a", "b", "c", "", "x" * (MAX_NAME + 5)])
_histories = st.lists(
    st.builds(
        verifier_pb2.HistoryNode,
        node_id=st.sampled_from(["n1", "n2", "n3", "n4", ""]),
        kind=st.sampled_from(list(policy_pb2.ActionKind.values())),
        server=st.sampled_from(["app", ""]),
        tool=_tools,
        effect=st.sampled_from(list(policy_pb2.Effect.values())),
    ),
    max_size=6,
)


@given(
    calls=st.lists(
        st.tuples(_tools, _histories, st.sampled_from(["a1", "a2", ""]), st.sampled_from(["w1", "w2"])), max_size=30
    )
)
def test_any_sequence_of_requests_keeps_the_bounds_and_scores_zero_or_the_weight(
    calls: list[tuple[str, list[verifier_pb2.HistoryNode], str, str]],
) -> None:
    config = SequenceConfig(min_transitions=1, max_agents=2, max_edges=3, max_workflows=2)
    model = SequenceModel(config)
    s = scorer(model)
    for tool, history, agent, workflow in calls:
        result = s.score(request(tool, history, agent=agent, workflow=workflow))
        assert result.deviation_score in (0.0, CONFIG.sequence_weight)
        assert len(result.reasons) <= 1
        assert all(reason.endswith(f"(weight {result.deviation_score:.2f})") for reason in result.reasons)
    assert model.agents <= 2
    assert len(model._cursors) <= 2
    assert all(len(m.edges) <= 3 and m.total == sum(m.edges.values()) for m in model._models.values())
