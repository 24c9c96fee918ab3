"""SIGKILL of the proxy or of the graph service under load loses and duplicates nothing.

A few agents send a steady stream of tools/call (allowed `add`, denied `delete_file`)
through the proxy of a `bastion up` stack, each in its own workflow. One service is
killed with SIGKILL mid-stream and started again on the same addresses. Afterwards every
call the proxy answered (forwarded or blocked) is in the graph exactly once: the journal
was written before the answer, the shipper resends what the graph may not have committed,
and the graph ingests by event id. A call whose answer the kill swallowed may be there
or not, but never twice.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest
from fixtures.graphapi import auditor_token, bearer, workflow_nodes
from fixtures.mcpcalls import headers, tool_call
from fixtures.restart import kill_service, restarted
from fixtures.stack import ROOT, Stack, bastion_up, write_config
from fixtures.upstream import DemoUpstream

from bastion._identity import ensure_dev_key, issue_token

pytestmark = pytest.mark.e2e

AGENTS = 4
#: Answers the clients collect between two steps of a scenario (kill, restart, stop).
PHASE = 100
#: Longest wait for a phase's answers, or for the graph to catch up.
DEADLINE = 30.0
#: The graph listing's page size: small enough that every workflow spans several pages.
PAGE = 40
#: Where the proxy's shipper keeps how far the graph has acknowledged its journal.
SHIPPER_CURSOR = Path("journal") / "shipper.cursor"


@pytest.fixture
def stack(tmp_path: Path, upstream: DemoUpstream) -> Iterator[Stack]:
    """A stack of the test's own (overrides the module's shared one): these tests take a service down."""
    config = write_config(tmp_path / "bastion.yaml", upstream.url, [ROOT / "examples" / "policies" / "demo.yaml"])
    with bastion_up(tmp_path, config) as running:
        yield running


@dataclass
class Load:
    """The clients' shared state: each call's outcome, and whether to send at all."""

    #: The tool of each answered call, by workflow and node id (the `Bastion-Node-Id` answered).
    answered: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Node ids answered more than once (a workflow's, or one reused across workflows).
    repeated: list[str] = field(default_factory=list)
    #: Calls sent whose answer never came (the proxy died under them, or refused the connection).
    lost: Counter[str] = field(default_factory=Counter)
    #: Cleared while the proxy is down, so the clients wait for it instead of piling up lost calls.
    proxy_up: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    #: The clients themselves, once started.
    agents: asyncio.Future[list[None]] | None = None

    def count(self) -> int:
        return sum(map(len, self.answered.values()))

    async def reach(self, answers: int) -> None:
        """Wait until the clients have collected `answers` answers in all."""
        deadline = time.monotonic() + DEADLINE
        while self.count() < answers:
            if self.agents is not None and self.agents.done():
                self.agents.result()  # a client failed: raise its error now
                raise AssertionError("the clients stopped before they were told to")
            assert time.monotonic() < deadline, f"{self.count()} answers after {DEADLINE:.0f}s, waiting for {answers}"
            await asyncio.sleep(0.01)


def _check_answer(response: httpx.Response, tool: str, n: int) -> None:
    """An allowed call answers with the upstream's result, a denied one with the policy's block."""
    assert response.status_code == 200, response.text
    body = response.json()
    if tool == "add":
        assert "result" in body, body
        assert body["result"]["structuredContent"] == {"result": n + 1}, body
    else:
        assert body["error"]["code"] == -32003, body
        assert body["error"]["data"]["rule_id"] == "no-file-deletes", body


async def _agent(load: Load, proxy: str, token: str, workflow: str) -> None:
    """Send calls one after another until told to stop; a third of them are denied."""
    load.answered[workflow] = answered = {}
    async with httpx.AsyncClient(base_url=proxy, timeout=DEADLINE) as http:
        n = 0
        while not load.stop.is_set():
            await load.proxy_up.wait()
            n += 1
            tool, arguments = (
                ("delete_file", {"path": f"/crash/{workflow}/{n}"}) if n % 3 == 0 else ("add", {"a": n, "b": 1})
            )
            try:
                response = await http.post(
                    "/mcp/demo",
                    content=orjson.dumps(tool_call(tool, arguments, n)),
                    headers=headers(token, workflow=workflow, name=tool),
                )
            except httpx.TransportError:
                load.lost[workflow] += 1
                continue
            _check_answer(response, tool, n)
            node_id = response.headers["bastion-node-id"]
            if node_id in answered:
                load.repeated.append(node_id)
            answered[node_id] = tool


async def _assert_graph_holds_each_answer_once(stack: Stack, load: Load) -> None:
    """Wait until the graph holds every answered call's node, then check none is there twice."""
    deadline = time.monotonic() + DEADLINE
    async with httpx.AsyncClient(base_url=stack.graph, headers=bearer(auditor_token(stack.home))) as http:
        assert load.repeated == [], f"the proxy answered two calls with one node id: {load.repeated[:3]}"
        for workflow, answered in load.answered.items():
            while True:
                every = await workflow_nodes(http, workflow, PAGE)
                # One ACTION node per call; its verifier's answer is a VERIFICATION node of its own.
                nodes = [node for node in every if node["node_type"] == "ACTION"]
                stored = [node["node_id"] for node in nodes]
                missing = answered.keys() - set(stored)
                if not missing:
                    break
                assert time.monotonic() < deadline, (
                    f"{workflow}: {len(missing)} answered calls not in the graph, e.g. {sorted(missing)[:3]}"
                )
                await asyncio.sleep(0.1)
            twice = [node for node, times in Counter(stored).items() if times > 1]
            assert twice == [], f"{workflow}: {len(twice)} nodes stored more than once, e.g. {twice[:3]}"
            # Every node is one call: an answered one, or at most one per lost answer.
            unanswered = set(stored) - answered.keys()
            assert len(unanswered) <= load.lost[workflow], f"{workflow}: nodes no call made: {unanswered}"
            recorded = {node["node_id"]: (node["action"]["tool"], node["outcome"]) for node in nodes}
            expected = {"add": "FORWARDED", "delete_file": "BLOCKED"}
            wrong = {
                node: recorded[node] for node, tool in answered.items() if recorded[node] != (tool, expected[tool])
            }
            assert wrong == {}, f"{workflow}: nodes that do not record what the proxy answered: {wrong}"
            # Exactly the calls policy allowed have their verifier's answer as a VERIFICATION node.
            verified = sorted(node["node_id"] for node in every if node["node_type"] == "VERIFICATION")
            allowed = [node for node in nodes if (node["decision"] or {}).get("effect") == "ALLOW"]
            assert verified == sorted(f"{node['node_id']}:verification:1" for node in allowed), workflow
            assert len(every) == len(nodes) + len(verified), workflow


def _start_agents(stack: Stack, load: Load) -> asyncio.Future[list[None]]:
    key = ensure_dev_key(stack.home)
    load.proxy_up.set()
    load.agents = asyncio.gather(
        *(
            _agent(load, stack.proxy, issue_token(key, subject=f"agent-crash-{i}"), f"wf-crash-{i}")
            for i in range(AGENTS)
        )
    )
    return load.agents


async def test_sigkill_of_the_proxy_under_load_loses_and_duplicates_no_call(
    stack: Stack, upstream: DemoUpstream
) -> None:
    executed_before = upstream.executed()
    load = Load()
    agents = _start_agents(stack, load)
    cursor = stack.home / SHIPPER_CURSOR
    with ExitStack() as services:
        try:
            await load.reach(PHASE // 2)
            earlier = cursor.read_bytes() if cursor.exists() else None
            await load.reach(PHASE)
            # The clients send nothing new until the proxy is back; the kill cuts off those in flight.
            load.proxy_up.clear()
            await asyncio.to_thread(kill_service, stack, "proxy")
            # The worst moment for the kill is after the graph committed a batch and before
            # the proxy saved its cursor past it: the restarted proxy sends the batch again.
            # Putting back a cursor the proxy saved earlier makes that moment certain.
            assert earlier != cursor.read_bytes(), "nothing was shipped between the two looks at the cursor"
            if earlier is None:
                cursor.unlink()
            else:
                cursor.write_bytes(earlier)
            await asyncio.to_thread(services.enter_context, restarted(stack, "proxy"))
            load.proxy_up.set()
            await load.reach(load.count() + PHASE)
        finally:
            load.stop.set()
            load.proxy_up.set()
            await agents
        await _assert_graph_holds_each_answer_once(stack, load)
    assert upstream.executed() == executed_before, "the upstream ran a denied delete_file"


async def test_sigkill_of_the_graph_under_load_loses_and_duplicates_no_call(
    stack: Stack, upstream: DemoUpstream
) -> None:
    executed_before = upstream.executed()
    load = Load()
    agents = _start_agents(stack, load)
    with ExitStack() as services:
        try:
            await load.reach(PHASE)
            await asyncio.to_thread(kill_service, stack, "graph")
            # The proxy keeps answering with the graph down: its journal holds the events.
            await load.reach(load.count() + PHASE)
            await asyncio.to_thread(services.enter_context, restarted(stack, "graph"))
            await load.reach(load.count() + PHASE)
        finally:
            load.stop.set()
            await agents
        assert sum(load.lost.values()) == 0, f"calls went unanswered with only the graph down: {load.lost}"
        await _assert_graph_holds_each_answer_once(stack, load)
    assert upstream.executed() == executed_before, "the upstream ran a denied delete_file"
