"""5,000 calls through a stack whose proxy and then graph are SIGKILLed mid-stream: in the
end the graph holds every forwarded and every denied call exactly once (issue #22).

A few lean clients share 5,000 tools/call to a fast upstream that logs every call it
runs (tests/fixtures/logged_server.py); the policy denies a third of them by argument.
After ~1,500 answers the proxy is killed and started again on the same $BASTION_HOME
(its journal is recovered, the shipper resumes from its cursor); after ~3,000 the graph
is killed and started again, and the proxy answers and journals on while it starts
(hundreds of calls on a 2-core machine). A call whose attempt got no answer is sent
again as a new attempt, and every attempt carries its own text, so each one is told
apart in the upstream's log and in the graph; a forwarded attempt whose answer the kill
swallowed is one the upstream really ran, and its retry another.

Takes 45-65 s on a 2-core machine (a third of it `bastion up`), hence the timeout.

What is counted, once the proxy's journal has been shipped:

- the upstream's log is the truth for what was forwarded: each logged text is in the
  graph exactly once, as a FORWARDED node, and no text is logged twice;
- each attempt answered with a block envelope is in the graph exactly once, BLOCKED;
- an attempt the kill left unanswered is in the graph at most once, and one that never
  connected not at all; no node id or event id is stored twice.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fixtures.graphapi import auditor_token, bearer, workflow_nodes
from fixtures.mcpcalls import headers, tool_call
from fixtures.restart import kill_service, restarted
from fixtures.stack import Stack, bastion_up, write_config
from fixtures.upstream import LoggedUpstream, logged_upstream

from bastion._errors import UpstreamError
from bastion._identity import ensure_dev_key, issue_token
from bastion.proxy._upstream import UpstreamPool

pytestmark = pytest.mark.e2e

CALLS = 5000
CLIENTS = 4
#: Every third call is denied: its text starts with "deny-" (POLICY's first rule).
DENY_EVERY = 3
#: Answers collected before each kill; each service is started again at once, and the
#: clients go on calling while it starts (seconds, on a 2-core machine).
KILL_PROXY_AT = 1500
KILL_GRAPH_AT = 3000
#: A client's pause before it sends an unanswered call again (the proxy is down).
RETRY_PAUSE = 0.05
#: Longest a client keeps trying one call.
CALL_DEADLINE = 30.0
#: Longest the clients may take to reach the next kill (~10 s on a busy 2-core machine).
STEP_DEADLINE = 90.0
#: Longest wait for the graph to hold everything once the calls are done.
SETTLE = 60.0
WORKFLOW_PAGE = 1000
POLICY = """\
apiVersion: bastion.dev/v1
kind: AgentPolicy
metadata: {name: crash-5000, version: 1}
spec:
  default: deny
  rules:
    - id: deny-marked
      match: {tools: ["demo__echo"]}
      when: "args.text.startsWith('deny-')"
      effect: deny
    - id: allow-echo
      match: {tools: ["demo__echo"]}
      effect: allow
"""


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[LoggedUpstream]:
    with logged_upstream(tmp_path) as server:
        yield server


@pytest.fixture
def stack(tmp_path: Path, upstream: LoggedUpstream) -> Iterator[Stack]:
    """The test's own stack: it takes services down."""
    policy = tmp_path / "crash-5000.yaml"
    policy.write_text(POLICY)
    with bastion_up(tmp_path, write_config(tmp_path / "bastion.yaml", upstream.url, [policy])) as running:
        yield running


@dataclass
class Ledger:
    """Every attempt the clients made, by its text, and what it got back."""

    #: Call numbers still to send; each client takes the next one.
    calls: Iterator[int] = field(default_factory=lambda: iter(range(CALLS)))
    #: Calls answered (forwarded or blocked), each counted once however many attempts it took.
    answered: int = 0
    forwarded: set[str] = field(default_factory=set)
    #: Attempts answered with a block envelope, and the rule that blocked each.
    blocked: dict[str, str] = field(default_factory=dict)
    #: Attempts that reached the proxy, or may have, and got no answer (it died under them).
    unanswered: set[str] = field(default_factory=set)
    #: Attempts that never connected (the proxy was down): nothing of them may exist anywhere.
    unsent: set[str] = field(default_factory=set)
    #: Attempts answered with anything but the upstream's result or a block envelope.
    unexpected: dict[str, str] = field(default_factory=dict)
    #: (what happened, seconds since the clients started, answers by then), for the report.
    timeline: list[tuple[str, float, int]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def mark(self, what: str) -> None:
        self.timeline.append((what, time.monotonic() - self.started, self.answered))

    def record(self, text: str, status: int, payload: bytes) -> None:
        body: Any = orjson.loads(payload) if payload.startswith(b"{") else {}
        if status == 200 and "result" in body:
            self.forwarded.add(text)
        elif status == 200 and body.get("error", {}).get("code") == -32003:
            self.blocked[text] = body["error"]["data"]["rule_id"]
        else:
            self.unexpected[text] = f"HTTP {status}: {payload[:300]!r}"
        self.answered += 1

    def summary(self, executed: list[str]) -> str:
        return (
            f"{CALLS} calls in {self.attempts()} attempts: {len(self.forwarded)} answered by the upstream, "
            f"{len(self.blocked)} blocked, {len(self.unanswered)} unanswered, {len(self.unsent)} never connected, "
            f"{len(self.unexpected)} answered otherwise; blocked by {dict(Counter(self.blocked.values()))}; "
            f"the upstream's log has {len(executed)} lines; "
            + ", ".join(f"{what} at {at:.1f}s/{answers} answers" for what, at, answers in self.timeline)
        )

    def attempts(self) -> int:
        return len(self.forwarded) + len(self.blocked) + len(self.unanswered) + len(self.unsent) + len(self.unexpected)


async def _client(ledger: Ledger, proxy: str, token: str, workflow: str) -> None:
    """Send the next call until none is left; send an unanswered one again as a new attempt.

    The client is the proxy's own keep-alive HTTP/1.1 pool, as `bastion bench` drives the
    stack with: httpx would cost the machine more CPU than the proxy per call. It never
    replays a POST, so each attempt reaches the proxy at most once.
    """
    pool = UpstreamPool(f"{proxy}/mcp/demo", timeout=CALL_DEADLINE, max_idle=1)
    path = pool.path.encode()
    sent = [
        (name.lower().encode(), value.encode())
        for name, value in headers(token, workflow=workflow, name="echo").items()
    ]
    try:
        for n in ledger.calls:
            verdict = "deny" if n % DENY_EVERY == 0 else "allow"
            deadline = time.monotonic() + CALL_DEADLINE
            for attempt in itertools.count():
                text = f"{verdict}-{n}-{attempt}"
                try:
                    response = await pool.request(
                        b"POST", path, sent, orjson.dumps(tool_call("echo", {"text": text}, n))
                    )
                    payload = await response.read(CALL_DEADLINE)
                except UpstreamError as exc:
                    # Refused at connect: the proxy was down and never saw the attempt.
                    refused = isinstance(exc.__cause__, ConnectionRefusedError)
                    (ledger.unsent if refused else ledger.unanswered).add(text)
                else:
                    ledger.record(text, response.status, payload)
                    break
                assert time.monotonic() < deadline, f"call {n} unanswered for {CALL_DEADLINE:.0f}s"
                await asyncio.sleep(RETRY_PAUSE)
    finally:
        pool.close()


async def _reach(ledger: Ledger, clients: asyncio.Future[list[None]], answers: int) -> None:
    deadline = time.monotonic() + STEP_DEADLINE
    while ledger.answered < answers:
        if clients.done():
            clients.result()  # a client failed: raise its error
            raise AssertionError(f"the clients finished after {ledger.answered} answers, expected {answers}")
        assert time.monotonic() < deadline, (
            f"{ledger.answered} answers after {STEP_DEADLINE:.0f}s, waiting for {answers}"
        )
        await asyncio.sleep(0.01)


async def _kill_midway(stack: Stack, ledger: Ledger, clients: asyncio.Future[list[None]], services: ExitStack) -> None:
    for service, answers in (("proxy", KILL_PROXY_AT), ("graph", KILL_GRAPH_AT)):
        await _reach(ledger, clients, answers)
        await asyncio.to_thread(kill_service, stack, service)
        ledger.mark(f"{service} killed")
        killed_at = ledger.answered
        await asyncio.to_thread(services.enter_context, restarted(stack, service))
        ledger.mark(f"{service} back")
    # The proxy answers on with the graph down: its journal holds those events.
    assert ledger.answered > killed_at, "no call was answered while the graph was down"


async def _journal_lag(proxy: httpx.AsyncClient) -> float:
    response = await proxy.get("/metrics")
    assert response.status_code == 200, response.text
    for line in response.text.splitlines():
        if line.startswith("bastion_journal_lag_seconds "):
            return float(line.split()[1])
    raise AssertionError("the proxy's /metrics has no bastion_journal_lag_seconds")


async def _workflows(graph: httpx.AsyncClient) -> dict[str, int]:
    """Each workflow in the graph and its node count."""
    found: dict[str, int] = {}
    params: dict[str, Any] = {"limit": 500}
    while True:
        response = await graph.get("/graphs", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        found |= {item["workflow_id"]: item["node_count"] for item in page["items"]}
        if not page["next_cursor"]:
            return found
        params["cursor"] = page["next_cursor"]


async def _settled_nodes(stack: Stack, ledger: Ledger, expected: int) -> list[dict[str, Any]]:
    """Wait (at most SETTLE seconds) until the proxy's journal is shipped and the graph holds
    at least `expected` nodes, the same number twice in a row; then return every node of
    every workflow. A graph that never gets there is left to the checks to describe."""
    async with (
        httpx.AsyncClient(base_url=stack.proxy) as proxy,
        httpx.AsyncClient(base_url=stack.graph, headers=bearer(auditor_token(stack.home))) as graph,
    ):
        deadline = time.monotonic() + SETTLE
        lag, stored, last = -1.0, -1, -1
        while time.monotonic() < deadline:
            lag = await _journal_lag(proxy)
            stored = sum((await _workflows(graph)).values())
            if lag == 0 and stored >= expected and stored == last:
                ledger.mark("journal shipped")
                break
            last = stored
            await asyncio.sleep(0.5)
        else:
            ledger.mark(f"gave up waiting (journal lag {lag}s, {stored} nodes)")
        nodes: list[dict[str, Any]] = []
        for workflow in await _workflows(graph):
            nodes += await workflow_nodes(graph, workflow, WORKFLOW_PAGE)
        return nodes


def _problems(ledger: Ledger, executed: list[str], nodes: list[dict[str, Any]]) -> list[str]:
    """Each way the graph, the upstream's log and the answers disagree, with examples."""
    problems: list[str] = []

    def check(bad: Any, what: str) -> None:
        if bad:
            problems.append(f"{len(bad)} {what}, e.g. {sorted(bad)[:5]}")

    # One ACTION node per call; an allowed call's verifier answer is a VERIFICATION node beside it.
    verified = Counter(node["node_id"] for node in nodes if node["node_type"] == "VERIFICATION")
    nodes = [node for node in nodes if node["node_type"] == "ACTION"]
    allowed = {node["node_id"] for node in nodes if (node["decision"] or {}).get("effect") == "ALLOW"}
    check(
        verified.keys() ^ {f"{node_id}:verification:1" for node_id in allowed},
        "allowed calls without their one VERIFICATION node (or the reverse)",
    )
    ran = Counter(executed)
    texts = Counter(node["action"]["arguments"].get("text") for node in nodes)
    stored = {node["action"]["arguments"].get("text"): node for node in nodes}
    outcome = {text: node["outcome"] for text, node in stored.items()}
    check(ledger.unexpected.items(), "attempts answered neither by the upstream nor with a block envelope")
    check([text for text, times in ran.items() if times > 1], "calls the upstream ran more than once")
    check([text for text in ran if text.startswith("deny-")], "denied calls the upstream ran")
    check(ledger.forwarded - ran.keys(), "calls answered with a result the upstream never logged")
    check([text for text, times in texts.items() if times > 1], "calls stored as more than one node")
    check([i for i, times in Counter(node["node_id"] for node in nodes).items() if times > 1], "repeated node ids")
    check([i for i, times in Counter(node["event_id"] for node in nodes).items() if times > 1], "repeated event ids")
    check(ran.keys() - stored.keys(), "calls the upstream ran that the graph lacks")
    check([t for t in ran if outcome.get(t, "FORWARDED") != "FORWARDED"], "calls the upstream ran not stored FORWARDED")
    check(ledger.blocked.keys() - stored.keys(), "blocked calls the graph lacks")
    check([t for t in ledger.blocked if outcome.get(t, "BLOCKED") != "BLOCKED"], "blocked calls not stored BLOCKED")
    check(ledger.unsent & stored.keys(), "calls that never connected stored in the graph")
    sent = ledger.forwarded | ledger.blocked.keys() | ledger.unanswered
    check(stored.keys() - sent - ledger.unsent, "nodes of no call the clients made")
    # A node of an unanswered attempt is there because the proxy journaled it before it died.
    check(
        [t for t, o in outcome.items() if o == "FORWARDED" and t not in ran and t not in ledger.unanswered],
        "FORWARDED nodes of calls neither run nor unanswered",
    )
    check(
        [t for t, o in outcome.items() if o == "BLOCKED" and t not in ledger.blocked and t not in ledger.unanswered],
        "BLOCKED nodes of calls neither blocked nor unanswered",
    )
    check([t for t, o in outcome.items() if o not in ("FORWARDED", "BLOCKED")], "nodes neither FORWARDED nor BLOCKED")
    # The result is journaled once the answer is relayed: only a call answered just before
    # the proxy's kill may have lost it, at most one per client.
    resultless = [t for t in ledger.forwarded if t in stored and stored[t]["result"] is None]
    if len(resultless) > CLIENTS:
        problems.append(f"{len(resultless)} answered calls with no result event, e.g. {sorted(resultless)[:5]}")
    return problems


@pytest.mark.timeout(240)
async def test_5000_calls_across_sigkills_of_proxy_and_graph_are_each_in_the_graph_exactly_once(
    stack: Stack, upstream: LoggedUpstream
) -> None:
    ledger = Ledger()
    key = ensure_dev_key(stack.home)
    clients = asyncio.gather(
        *(
            _client(ledger, stack.proxy, issue_token(key, subject=f"agent-5000-{i}"), f"wf-5000-{i}")
            for i in range(CLIENTS)
        )
    )
    with ExitStack() as services:
        try:
            await _kill_midway(stack, ledger, clients, services)
            await clients
        finally:
            for _ in ledger.calls:  # let the clients run dry
                pass
            await asyncio.gather(clients, return_exceptions=True)
        ledger.mark("calls done")
        executed = upstream.executed()
        expected = len(set(executed) | ledger.blocked.keys())
        nodes = await _settled_nodes(stack, ledger, expected)
    ledger.mark("graph read")
    problems = _problems(ledger, executed, nodes)
    kinds = Counter(f"{n['outcome']}/{(n['result'] or {}).get('outcome', 'no result')}" for n in nodes)
    summary = f"{ledger.summary(executed)}; the graph holds {len(nodes)} nodes: {dict(kinds)}"
    print(summary)
    assert problems == [], summary + "\n" + "\n".join(problems)
