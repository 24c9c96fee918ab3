"""POST /v1/simulate and `bastion policy simulate`: calls driven through the real proxy are
replayed from the graph against a candidate version; posted events; bad input; auth; a graph
that cannot be read."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fixtures import inprocess
from fixtures.graphapi import auditor_token, poll
from fixtures.mcpcalls import headers, tool_call
from fixtures.policycli import policy_cli
from fixtures.policystack import PolicyStack, policy_stack
from fixtures.stack import ROOT
from fixtures.upstream import DemoUpstream, demo_upstream

from bastion._identity import ensure_dev_key, issue_token
from bastion.policy._simulate import MAX_EVENTS, MAX_WORKFLOWS

POLICY = ROOT / "examples" / "policies" / "demo.yaml"
WORKFLOW = "wf-sim"
#: The demo policy, but `add` is denied: exactly the recorded `add` calls change.
NO_ADD = (
    POLICY.read_text()
    .replace("version: 1", "version: 2")
    .replace("id: allow-add", "id: no-add")
    .replace(
        'agents: ["*"]\n        tools: ["demo__add"]\n      effect: allow',
        'agents: ["*"]\n        tools: ["demo__add"]\n      effect: deny',
    )
)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoUpstream]:
    with demo_upstream(tmp_path_factory.mktemp("upstream")) as server:
        yield server


@pytest.fixture
async def stack(tmp_path: Path, upstream: DemoUpstream) -> AsyncIterator[PolicyStack]:
    async with policy_stack(tmp_path, inprocess.app_config(upstream.url, POLICY)) as running:
        yield running


async def _record(stack: PolicyStack) -> dict[str, str]:
    """Drive add, echo (denied now), add through the proxy; return node id → tool once the graph has them."""
    token = issue_token(ensure_dev_key(stack.home), subject="agent-sim")
    sent: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=f"http://{stack.proxy}", timeout=30) as http:
        calls: list[tuple[str, dict[str, Any]]] = [
            ("add", {"a": 1, "b": 2}),
            ("echo", {"text": "hi"}),
            ("add", {"a": 3, "b": 4}),
        ]
        for number, (tool, arguments) in enumerate(calls):
            response = await http.post(
                "/mcp/demo",
                content=orjson.dumps(tool_call(tool, arguments, number)),
                headers=headers(token, "tools/call", WORKFLOW, tool),
            )
            assert response.status_code == 200, response.text
            sent[response.headers["bastion-node-id"]] = tool
    graph = f"http://{stack.graph}"
    await poll(
        graph, f"/graphs/{WORKFLOW}/nodes", {}, 3, auditor_token(stack.home), where=lambda n: n["node_type"] == "ACTION"
    )
    return sent


async def test_a_candidate_denying_add_names_exactly_the_recorded_add_calls_as_newly_denied(stack: PolicyStack) -> None:
    sent = await _record(stack)
    created = await stack.policy_post("/v1/policies", {"bundle": stack.sign(NO_ADD)})
    assert created.status_code == 201, created.text

    response = await stack.policy_post("/v1/simulate", {"policy": "demo", "version": 2, "workflow_ids": [WORKFLOW]})
    assert response.status_code == 200, response.text
    report = response.json()
    newly_denied = {
        e["node_id"]
        for e in report["events"]
        if e["current"]["effect"] == "allow" and e["candidate"]["effect"] != "allow"
    }
    assert newly_denied == {node for node, tool in sent.items() if tool == "add"}
    assert {e["node_id"] for e in report["events"] if e["changed"]} == newly_denied
    assert report["totals"] == {
        "events": 3,
        "changed": 2,
        "newly_denied": 2,
        "newly_allowed": 0,
        "skipped": report["totals"]["skipped"],
    }
    add = next(e for e in report["events"] if e["changed"])
    assert (add["action"], add["current"]["rule_id"], add["candidate"]["rule_id"]) == (
        "TOOL_CALL demo__add",
        "allow-add",
        "no-add",
    )
    assert (report["policy"], report["version"], report["truncated"]) == ("demo", 2, False)

    # Still only a simulation: v1 is active and decides as before.
    listing = await _get(stack, "/v1/policies")
    assert [(p["name"], p["version"]) for p in listing["policies"]] == [("demo", 1)]

    code, out, err = await _cli(stack, "simulate", "demo", "2", "--workflow", WORKFLOW)
    assert code == 0, err
    assert out.count("TOOL_CALL demo__add by agent-sim") == 2
    assert "3 actions replayed, 2 changed, 2 newly denied, 0 newly allowed" in out


async def test_posted_events_are_replayed_against_an_inline_document(stack: PolicyStack, tmp_path: Path) -> None:
    await _record(stack)
    nodes = await _get_graph(stack, f"/graphs/{WORKFLOW}/nodes")
    inline = NO_ADD.replace("version: 2", "version: 3")
    response = await stack.policy_post("/v1/simulate", {"policy": "demo", "document": inline, "events": nodes["items"]})
    assert response.status_code == 200, response.text
    assert response.json()["totals"]["newly_denied"] == 2
    assert response.json()["version"] == 3

    minimal = {"agent_id": "agent-x", "action": {"kind": "TOOL_CALL", "server": "demo", "tool": "delete_file"}}
    allowing = POLICY.read_text().replace("version: 1", "version: 4").replace("effect: deny", "effect: allow")
    answer = await stack.policy_post("/v1/simulate", {"policy": "demo", "document": allowing, "events": [minimal]})
    assert answer.json()["totals"] == {"events": 1, "changed": 1, "newly_denied": 0, "newly_allowed": 1, "skipped": 0}

    events_file = tmp_path / "events.json"
    events_file.write_bytes(orjson.dumps(nodes))
    await stack.policy_post("/v1/policies", {"bundle": stack.sign(NO_ADD)})
    code, out, err = await _cli(stack, "simulate", "demo", "2", "--events", str(events_file), "--json")
    assert code == 0, err
    assert orjson.loads(out)["totals"]["newly_denied"] == 2


def _event(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"agent_id": "a", "action": {"kind": "TOOL_CALL", "server": "demo", "tool": "add"}}
    return {**event, **changes}


BAD: list[tuple[str, Any, int, str]] = [
    ("not json", b"{nope", 422, "not valid JSON"),
    ("empty", {}, 422, "policy"),
    ("no source", {"policy": "demo", "version": 1}, 422, "exactly one of 'workflow_ids'"),
    (
        "both sources",
        {"policy": "demo", "version": 1, "workflow_ids": ["w"], "events": [_event()]},
        422,
        "exactly one of 'workflow_ids'",
    ),
    ("no candidate", {"policy": "demo", "events": [_event()]}, 422, "exactly one of 'version'"),
    ("empty ids", {"policy": "demo", "version": 1, "workflow_ids": []}, 422, "is empty"),
    (
        "too many ids",
        {"policy": "demo", "version": 1, "workflow_ids": [f"w{i}" for i in range(MAX_WORKFLOWS + 1)]},
        422,
        f"at most {MAX_WORKFLOWS}",
    ),
    ("twice", {"policy": "demo", "version": 1, "workflow_ids": ["w", "w"]}, 422, "twice"),
    ("empty events", {"policy": "demo", "version": 1, "events": []}, 422, "is empty"),
    (
        "too many events",
        {"policy": "demo", "version": 1, "events": [_event()] * (MAX_EVENTS + 1)},
        422,
        f"at most {MAX_EVENTS}",
    ),
    ("unknown key", {"policy": "demo", "version": 1, "events": [_event()], "extra": 1}, 422, "extra: unknown field"),
    (
        "event without agent",
        {"policy": "demo", "version": 1, "events": [{"action": _event()["action"]}]},
        422,
        "events[0].agent_id",
    ),
    (
        "event unknown field",
        {"policy": "demo", "version": 1, "events": [_event(surprise=1)]},
        422,
        "events[0].surprise: unknown field",
    ),
    (
        "bad kind",
        {"policy": "demo", "version": 1, "events": [_event(action={"kind": "NUKE", "server": "demo"})]},
        422,
        "not an action kind",
    ),
    ("unknown version", {"policy": "demo", "version": 99, "events": [_event()]}, 404, "bastion.not_found"),
    ("unknown policy", {"policy": "nope", "version": 1, "events": [_event()]}, 404, "bastion.not_found"),
    (
        "invalid document",
        {"policy": "demo", "document": "kind: nope", "events": [_event()]},
        422,
        "bastion.policy.invalid",
    ),
    (
        "document of another policy",
        {"policy": "other", "document": POLICY.read_text(), "events": [_event()]},
        422,
        "not 'other'",
    ),
    ("unknown workflow", {"policy": "demo", "version": 1, "workflow_ids": ["wf-never"]}, 404, "wf-never"),
]


async def test_bad_input_is_a_precise_4xx_and_simulate_needs_an_operator(stack: PolicyStack) -> None:
    async with httpx.AsyncClient(base_url=f"http://{stack.policy}", timeout=30) as http:
        for name, body, status, text in BAD:
            content = body if isinstance(body, bytes) else orjson.dumps(body)
            response = await http.post("/v1/simulate", content=content, headers=stack.bearer("operator"))
            assert response.status_code == status, (name, response.text)
            assert text in response.text, (name, response.text)
        ok = {"policy": "demo", "version": 1, "events": [_event()]}
        for roles, status in [((), 403), (("auditor",), 403), (("admin",), 200), (("operator",), 200)]:
            response = await http.post("/v1/simulate", json=ok, headers=stack.bearer(*roles))
            assert response.status_code == status, (roles, response.text)
        assert (await http.post("/v1/simulate", json=ok)).status_code == 401


async def test_a_graph_that_cannot_be_read_is_503_with_the_reason(tmp_path: Path, upstream: DemoUpstream) -> None:
    app = inprocess.app_config(upstream.url, POLICY)
    async with policy_stack(tmp_path, app) as stack:
        pass  # the graph is stopped now; start a policy service pointing at its old address
    from bastion.policy import PolicySettings
    from bastion.policy import serve as policy_serve

    settings = PolicySettings(
        home=tmp_path, policy_grpc_addr=inprocess.ANY, policy_addr=inprocess.ANY, graph_addr=stack.graph
    )
    async with inprocess.serving(policy_serve, settings, app) as addrs:
        orphan = PolicyStack(tmp_path, stack.proxy, stack.graph, addrs["http"])
        response = await orphan.policy_post("/v1/simulate", {"policy": "demo", "version": 1, "workflow_ids": ["wf"]})
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "bastion.policy.graph_unavailable"
    assert f"the graph at {stack.graph} (BASTION_GRAPH_ADDR) is unreachable" in error["message"]


#: The demo policy with a condition CEL runs in ≈ 12 ms on 250 ids (nesting 2: 62,500 of
#: the 100,000 steps a decision may take), before `allow-add`.
COSTLY = POLICY.read_text().replace(
    "  rules:\n",
    '  rules:\n    - id: unique-ids\n      match:\n        tools: ["demo__add"]\n'
    '      when: "args.ids.all(x, args.ids.exists_one(y, y == x))"\n      effect: deny\n',
)


async def test_a_costly_replay_stops_at_its_deadline_off_the_event_loop_and_runs_alone(
    tmp_path: Path, upstream: DemoUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by probing: the replay decided every action twice on the event loop, so one
    # costly condition over 5,000 posted actions held up every live decision of the service.
    monkeypatch.setattr("bastion.policy._simulate.REPLAY_DEADLINE_S", 2.0)
    costly = {"kind": "TOOL_CALL", "server": "demo", "tool": "add", "arguments": {"ids": list(range(250))}}
    body = {"policy": "demo", "document": COSTLY, "events": [_event(action=costly)] * 1000}
    tiny = {"policy": "demo", "document": COSTLY, "events": [_event()]}
    async with (
        policy_stack(tmp_path, inprocess.app_config(upstream.url, POLICY), proxy_up=False) as stack,
        httpx.AsyncClient(base_url=f"http://{stack.policy}", timeout=30, headers=stack.bearer("operator")) as http,
    ):
        replay = asyncio.create_task(stack.policy_post("/v1/simulate", body))
        # Until the replay holds the service's one simulation (reading and validating its
        # 1,000 events first takes a while on a loaded machine); while a probe holds it, the
        # replay is the one refused, and is sent again.
        waited = time.monotonic() + 60
        while (second := await http.post("/v1/simulate", json=tiny)).status_code == 200:
            assert time.monotonic() < waited, "the replay never started"
            if replay.done() and replay.result().status_code == 429:
                replay = asyncio.create_task(stack.policy_post("/v1/simulate", body))
        assert second.status_code == 429, second.text
        assert second.json()["error"]["code"] == "bastion.policy.simulation_busy"
        assert int(second.headers["retry-after"]) >= 1
        served = 0
        while not replay.done():  # a replay on the event loop would let none of these through
            assert (await http.get("/v1/policies")).status_code == 200
            served += 1
        assert served >= 20, served
        report = (await replay).json()
        assert (report["truncated"], report["stopped"]) == (True, "deadline"), report["totals"]
        assert 0 < report["totals"]["events"] < 1000
        assert report["events"][0]["candidate"]["rule_id"] == "unique-ids"
        # Alone again: the next one runs.
        ok = await http.post("/v1/simulate", json={"policy": "demo", "version": 1, "events": [_event()]})
        assert ok.status_code == 200, ok.text
        assert (ok.json()["truncated"], ok.json()["stopped"]) == (False, "")


async def _get(stack: PolicyStack, path: str) -> Any:
    async with httpx.AsyncClient(base_url=f"http://{stack.policy}", timeout=30) as http:
        return (await http.get(path, headers=stack.bearer("auditor"))).json()


async def _get_graph(stack: PolicyStack, path: str) -> Any:
    async with httpx.AsyncClient(base_url=f"http://{stack.graph}", timeout=30) as http:
        return (await http.get(path, headers=stack.bearer("auditor"))).json()


async def _cli(stack: PolicyStack, *args: str) -> tuple[int, str, str]:
    return await policy_cli(stack.policy, stack.home, *args)
