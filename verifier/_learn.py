"""`bastion verifier learn`: seed the sequence models from recorded graph data, so that
agents with a recorded past do not start cold.

    bastion verifier learn --from FILE [--from FILE ...]     JSON exports of graph nodes
    bastion verifier learn --graph [--addr A] [--token T] [--max-workflows N]

A file holds what the graph's REST API answers: a node page (`GET /graphs/{wf}/nodes`,
`{"items": [...]}`), a workflow (`GET /graphs/{wf}`, `{"nodes": [...]}`), a JSON list of
either or of nodes, or JSON lines of any of these. `--graph` reads the graph service
itself: its workflows, most recently active first (`GET /graphs`), each one's nodes page by
page, at most `--max-workflows` of them. Either way, a node counts as an allowed step when
its outcome is FORWARDED (what the verifier's `history` calls ALLOW), and nodes are taken
in each workflow's order, oldest first; a workflow's first node follows START.

The models are merged into `$BASTION_HOME/verifier/sequence.sqlite3` with the same bounds
as the service (`BASTION_VERIFIER_SEQUENCE_*`). A running verifier keeps its own copy in
memory and overwrites an agent's row when that agent next learns: run this before
starting the verifier, or restart it after. Transitions are attributed to the agent of the
later node; for a workflow of one agent that is exactly what the service learns live.
Exit codes: 0 done; 1 the graph refused or failed, or a file could not be read; 2 bad
usage or credentials.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from bastion._errors import BastionError
from bastion._rest_client import TIMEOUT_S, CliFailed, bearer_from, response_json
from bastion.v1 import policy_pb2

from ._config import load_settings
from ._sequence import START, SequenceModel, step_key
from ._sequence_store import SEQUENCE_STORE, SequenceStore

#: The options are declared in bastion._cli (with the CLI's other parsers), run here.
DEFAULT_GRAPH_ADDR = "127.0.0.1:8080"
_PAGE = 500


def run_learn(args: argparse.Namespace) -> int:
    if bool(args.files) == bool(args.graph) or args.max_workflows < 1:
        print("bastion verifier learn: give --from FILE ... or --graph (one of them)", file=sys.stderr)
        return 2
    try:
        settings = load_settings()
    except BastionError as exc:
        print(f"bastion verifier learn: {exc}", file=sys.stderr)
        return 2
    try:
        if args.graph:
            nodes = asyncio.run(_read_graph(args))
        else:
            nodes = [node for path in args.files for node in read_export(path)]
    except CliFailed as exc:
        print(f"bastion verifier learn: {exc}", file=sys.stderr)
        return exc.code
    except (OSError, ValueError, httpx.HTTPError) as exc:
        print(f"bastion verifier learn: {exc}", file=sys.stderr)
        return 1
    model = SequenceModel(settings.sequence_config())
    store = SequenceStore(settings.home.resolve() / SEQUENCE_STORE)
    try:
        store.load(model)
        model.take_dirty()  # what was loaded is already stored
        learnt = seed(model, nodes)
        store.write(model.take_dirty())
    except BastionError as exc:
        print(f"bastion verifier learn: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(f"learnt {learnt} transitions from {len(nodes)} nodes; {model.agents} agents in {store.path}")
    return 0


def seed(model: SequenceModel, nodes: Iterable[dict[str, Any]]) -> int:
    """Learn the transitions of `nodes` (graph NodeView objects, each workflow's oldest
    first); how many transitions were learnt. Malformed nodes are skipped."""
    # Grouped by workflow, in the order given (each workflow's oldest first).
    workflows: dict[str, list[tuple[str, str, str]]] = {}
    for node in nodes:
        parsed = _step(node)
        if parsed is not None:
            workflow, agent, node_id, step = parsed
            workflows.setdefault(workflow, []).append((agent, node_id, step))
    learnt = 0
    for steps in workflows.values():
        previous = START
        for agent, _, step in steps:
            learnt += model.learn(agent, previous, step)
            previous = step
    return learnt


def _step(node: Any) -> tuple[str, str, str, str] | None:
    """(workflow, agent key, node id, step) of an allowed step, else None."""
    if not isinstance(node, dict) or node.get("outcome") != "FORWARDED":
        return None
    action = node.get("action")
    workflow, agent_id, tenant, node_id = (node.get(k, "") for k in ("workflow_id", "agent_id", "tenant", "node_id"))
    if not (isinstance(action, dict) and _texts(workflow, agent_id, tenant, node_id) and agent_id and node_id):
        return None
    kind_name, server, tool = action.get("kind"), action.get("server"), action.get("tool")
    if not (isinstance(kind_name, str) and _texts(server, tool)):
        return None
    try:
        kind = policy_pb2.ActionKind.Value(kind_name)
    except ValueError:
        return None
    step = step_key(kind, str(server), str(tool))
    return (str(workflow), f"{tenant}/{agent_id}", str(node_id), step) if step else None


def _texts(*values: Any) -> bool:
    return all(isinstance(value, str) for value in values)


def read_export(path: Path) -> Iterator[dict[str, Any]]:
    """The nodes of one export file (formats in the module docstring)."""
    data = path.read_bytes()
    try:
        documents = [orjson.loads(data)]
    except orjson.JSONDecodeError:
        try:
            documents = [orjson.loads(line) for line in data.splitlines() if line.strip()]
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{path}: neither JSON nor JSON lines: {exc}") from exc
    for document in documents:
        yield from _nodes_in(document)


def _nodes_in(document: Any) -> Iterator[dict[str, Any]]:
    if isinstance(document, list):
        for item in document:
            yield from _nodes_in(item)
    elif isinstance(document, dict):
        inner = document.get("items", document.get("nodes"))
        if isinstance(inner, list):
            yield from (node for node in inner if isinstance(node, dict))
        elif "node_id" in document:
            yield document


async def _read_graph(args: argparse.Namespace) -> list[dict[str, Any]]:
    addr = args.addr or os.environ.get("BASTION_GRAPH_ADDR") or DEFAULT_GRAPH_ADDR
    headers = bearer_from(args)
    async with httpx.AsyncClient(base_url=f"http://{addr}", headers=headers, timeout=TIMEOUT_S) as http:
        return await read_graph(http, args.max_workflows)


async def read_graph(http: httpx.AsyncClient, max_workflows: int) -> list[dict[str, Any]]:
    """Every node of the graph's most recently active `max_workflows` workflows, oldest first in each."""
    workflows: list[str] = []
    async for page in _pages(http, "/graphs", min(_PAGE, max(1, max_workflows))):
        workflows.extend(str(item["workflow_id"]) for item in page if isinstance(item, dict) and "workflow_id" in item)
        if len(workflows) >= max_workflows:
            break
    nodes: list[dict[str, Any]] = []
    for workflow in workflows[:max_workflows]:
        async for page in _pages(http, f"/graphs/{quote(workflow, safe='')}/nodes", _PAGE):
            nodes.extend(node for node in page if isinstance(node, dict))
    return nodes


async def _pages(http: httpx.AsyncClient, path: str, limit: int) -> Any:
    cursor: str | None = None
    while True:
        params = {"limit": str(limit), **({"cursor": cursor} if cursor else {})}
        response = await http.get(path, params=params)
        payload = response_json(response)
        if response.status_code >= 400:
            code = 2 if response.status_code in (401, 403) else 1
            raise CliFailed(f"GET {path}: {response.status_code}: {response.text[:300]}", code)
        items = payload.get("items") if isinstance(payload, dict) else None
        yield items if isinstance(items, list) else []
        cursor = payload.get("next_cursor") if isinstance(payload, dict) else None
        if not cursor:
            return
