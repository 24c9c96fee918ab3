"""`bastion verifier learn`: seeding the sequence models from recorded graph nodes (an export
file, or the graph's REST API), merged into the store the service loads at start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bastion._cli import main as cli
from bastion.verifier._learn import read_export, read_graph, seed
from bastion.verifier._sequence import START, SequenceConfig, SequenceModel
from bastion.verifier._sequence_store import SEQUENCE_STORE, SequenceStore


def graph_node(n: int, tool: str, *, workflow: str = "wf-1", agent: str = "alice", outcome: str = "FORWARDED") -> Any:
    """A node as GET /graphs/{wf}/nodes answers it (only the fields learning reads, and some it does not)."""
    return {
        "node_id": f"{workflow}-n{n}",
        "workflow_id": workflow,
        "agent_id": agent,
        "tenant": "t1",
        "action": {"kind": "TOOL_CALL", "server": "app", "tool": tool, "method": "tools/call", "arguments": {}},
        "outcome": outcome,
        "decision": {"effect": "ALLOW"},
    }


WORKFLOW = [graph_node(0, "search"), graph_node(1, "read"), graph_node(2, "send")]


def test_seeding_learns_each_workflows_transitions_from_start() -> None:
    model = SequenceModel()
    assert seed(model, WORKFLOW) == 3
    assert model.assess("t1/alice", START, "app__search").count == 1
    assert model.assess("t1/alice", "app__search", "app__read").count == 1
    assert model.assess("t1/alice", "app__read", "app__send").count == 1


def test_blocked_rejected_and_malformed_nodes_are_not_steps() -> None:
    nodes = [
        graph_node(0, "search"),
        graph_node(1, "wipe", outcome="BLOCKED"),
        graph_node(2, "x", outcome="REJECTED"),
        {"node_id": "junk"},
        "not a node",
        {**graph_node(3, "y"), "action": {"kind": "NO_SUCH_KIND", "server": "app", "tool": "y"}},
        {**graph_node(4, "y"), "agent_id": 7},
        {**graph_node(5, "", agent="alice"), "action": {"kind": "TOOL_LIST", "server": "app", "tool": ""}},
        graph_node(6, "read"),
    ]
    model = SequenceModel()
    assert seed(model, nodes) == 2
    assert model.assess("t1/alice", "app__search", "app__read").count == 1


def test_transitions_go_to_the_later_nodes_agent_and_workflows_do_not_mix() -> None:
    nodes = [
        graph_node(0, "plan", agent="boss"),
        graph_node(1, "pay", agent="clerk"),
        graph_node(0, "pay", workflow="wf-2", agent="clerk"),
    ]
    model = SequenceModel()
    seed(model, nodes)
    assert model.assess("t1/clerk", "app__plan", "app__pay").count == 1
    assert model.assess("t1/clerk", START, "app__pay").count == 1
    assert model.assess("t1/boss", START, "app__plan").count == 1
    assert model.assess("t1/boss", "app__plan", "app__pay").count == 0


def test_seeding_keeps_to_the_models_bounds() -> None:
    model = SequenceModel(SequenceConfig(max_agents=2, max_edges=4))
    nodes = [graph_node(i, f"tool{i % 9}", agent=f"a{i % 5}", workflow=f"w{i % 5}") for i in range(200)]
    seed(model, nodes)
    assert model.agents == 2
    assert all(len(m.edges) <= 4 for m in model._models.values())


@pytest.mark.parametrize(
    "content",
    [
        orjson.dumps({"workflow_id": "wf-1", "items": WORKFLOW, "next_cursor": None}),
        orjson.dumps({"workflow_id": "wf-1", "nodes": WORKFLOW, "edges": []}),
        orjson.dumps(WORKFLOW),
        orjson.dumps([{"items": WORKFLOW[:2]}, {"items": WORKFLOW[2:]}]),
        b"\n".join(orjson.dumps(node) for node in WORKFLOW) + b"\n",
    ],
    ids=["node-page", "workflow", "list", "pages", "json-lines"],
)
def test_every_export_shape_reads_the_same_nodes(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "export.json"
    path.write_bytes(content)
    assert [node["node_id"] for node in read_export(path)] == [node["node_id"] for node in WORKFLOW]


def test_a_file_that_is_not_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "export.json"
    path.write_bytes(b"{not json\n")
    with pytest.raises(ValueError, match="neither JSON nor JSON lines"):
        list(read_export(path))


def test_bastion_verifier_learn_merges_an_export_into_the_store_the_service_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BASTION_HOME", str(tmp_path))
    export = tmp_path / "nodes.json"
    export.write_bytes(orjson.dumps({"items": WORKFLOW}))
    assert cli(["verifier", "learn", "--from", str(export)]) == 0
    assert cli(["verifier", "learn", "--from", str(export)]) == 0  # merged: counts add up
    assert "learnt 3 transitions from 3 nodes; 1 agents" in capsys.readouterr().out

    model = SequenceModel()
    store = SequenceStore(tmp_path / SEQUENCE_STORE)
    assert store.load(model) == 1
    store.close()
    assert model.assess("t1/alice", "app__read", "app__send").count == 2


def test_bastion_verifier_learn_needs_exactly_one_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_HOME", str(tmp_path))
    assert cli(["verifier", "learn"]) == 2
    assert cli(["verifier", "learn", "--graph", "--from", str(tmp_path / "x.json")]) == 2
    assert cli(["verifier", "learn", "--from", str(tmp_path / "missing.json")]) == 1


def _fake_graph(workflows: dict[str, list[Any]], page: int) -> Starlette:
    """The graph's two listing routes, paged by an index cursor, as graph/_api.py answers them."""

    def paged(items: list[Any], request: Request) -> JSONResponse:
        start = int(request.query_params.get("cursor", "0"))
        limit = min(page, int(request.query_params["limit"]))
        following = start + limit if start + limit < len(items) else None
        return JSONResponse(
            {"items": items[start : start + limit], "next_cursor": str(following) if following else None}
        )

    async def graphs(request: Request) -> JSONResponse:
        return paged([{"workflow_id": wf} for wf in workflows], request)

    async def nodes(request: Request) -> JSONResponse:
        workflow = request.path_params["wf"]
        if workflow not in workflows:
            return JSONResponse({"error": {"code": "bastion.not_found", "message": "no"}}, status_code=404)
        return paged(workflows[workflow], request)

    return Starlette(routes=[Route("/graphs", graphs), Route("/graphs/{wf}/nodes", nodes)])


async def test_reading_the_graph_pages_through_workflows_and_their_nodes() -> None:
    workflows = {f"wf-{w}": [graph_node(i, f"t{i}", workflow=f"wf-{w}") for i in range(5)] for w in range(3)}
    transport = httpx.ASGITransport(app=_fake_graph(workflows, page=2))
    async with httpx.AsyncClient(transport=transport, base_url="http://graph") as http:
        nodes = await read_graph(http, max_workflows=10)
        assert [n["node_id"] for n in nodes] == [n["node_id"] for wf in workflows.values() for n in wf]
        assert len(await read_graph(http, max_workflows=1)) == 5
    model = SequenceModel()
    assert seed(model, nodes) == 15
