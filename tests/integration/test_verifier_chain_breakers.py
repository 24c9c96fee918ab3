"""A circuit breaker per chained verifier (BASTION_VERIFIER_CHAIN): a second verifier that
keeps failing opens its own circuit, after which the proxy no longer waits for it (the
chain takes the fallback at once, saying the circuit is open: the link is never skipped),
and the chain is asked again once it is back after the cool-down."""

from __future__ import annotations

import asyncio
import importlib.util
import re
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from fixtures import inprocess
from fixtures.mcpcalls import ProxyClient, headers, tool_call
from fixtures.stack import ROOT
from fixtures.upstream import DemoUpstream

from bastion._identity import ensure_service_token
from bastion._rpc import auth_metadata, open_channel, start_grpc_server
from bastion._verdicts import VERIFIER_UNAVAILABLE
from bastion.proxy._breaker import CircuitBreaker
from bastion.proxy._pipeline import Governor
from bastion.proxy._workflows import new_id
from bastion.v1 import policy_pb2, policy_pb2_grpc, verifier_pb2, verifier_pb2_grpc

ALLOW_ALL = """\
apiVersion: bastion.dev/v1
kind: AgentPolicy
metadata: {name: chain, version: 1}
spec:
  default: deny
  rules:
    - {id: demo-tools, match: {tools: ["demo__*"]}, effect: allow}
"""


class _HangingVerifier(verifier_pb2_grpc.VerifierServicer):
    """Takes every Score and never answers in time (no streams: the proxy calls Score)."""

    def __init__(self) -> None:
        self.calls = 0

    async def Score(self, request: verifier_pb2.ScoreRequest, context: Any) -> verifier_pb2.ScoreResponse:
        self.calls += 1
        await asyncio.sleep(30)
        return verifier_pb2.ScoreResponse()

    async def Info(self, request: object, context: Any) -> verifier_pb2.VerifierInfo:
        return verifier_pb2.VerifierInfo()

    def ScoreStream(self, request_iterator: Any, context: Any) -> Any:
        # The base class's answer, UNIMPLEMENTED: the proxy then calls Score.
        return verifier_pb2_grpc.VerifierServicer.ScoreStream(self, request_iterator, context)

    def ScoreBatchStream(self, request_iterator: Any, context: Any) -> Any:
        return verifier_pb2_grpc.VerifierServicer.ScoreBatchStream(self, request_iterator, context)


async def test_a_hanging_second_verifier_opens_its_own_circuit_and_is_not_waited_for(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(ALLOW_ALL)
    app = inprocess.app_config("http://127.0.0.1:1/mcp", tmp_path / "policy.yaml")
    token = ensure_service_token(tmp_path, None)
    hanging = _HangingVerifier()
    server = await start_grpc_server(
        "127.0.0.1:0",
        token=token,
        register=[partial(verifier_pb2_grpc.add_VerifierServicer_to_server, hanging)],
        service_names=["bastion.v1.Verifier"],
    )
    async with inprocess.policy(tmp_path, app) as policy, inprocess.verifier(tmp_path, app) as verifier:
        governor = Governor(
            policy_pb2_grpc.PolicyServiceStub(open_channel(policy["grpc"])),
            verifier_pb2_grpc.VerifierStub(open_channel(verifier["grpc"])),
            auth_metadata(token),
            policy_timeout=2.0,
            verifier_timeout=0.3,
            fallback_allow=False,
            breaker=CircuitBreaker(failures=3, cooldown_s=60),
            chain=[verifier_pb2_grpc.VerifierStub(open_channel(server.address))],
        )
        action = policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server="demo", tool="add", method="tools/call")
        try:
            waited = [await _decide(governor, action) for _ in range(3)]
            # On a loaded machine a deadline can pass before a call reaches the server (a
            # fresh channel's connect, the stream tried first): count what reached it.
            reached = hanging.calls
            skipped = [await _decide(governor, action) for _ in range(5)]
        finally:
            await governor.close()
            await server.stop(0)

    assert 1 <= reached <= 3
    assert hanging.calls == reached  # after three timeouts the second verifier is left alone
    for outcome, _ in (*waited, *skipped):
        assert (outcome.allowed, outcome.block_code) == (False, VERIFIER_UNAVAILABLE)  # fail closed throughout
        assert outcome.decision is not None  # policy was still asked
    assert all("no answer within the deadline" in outcome.block_reason for outcome, _ in waited)
    assert all(seconds >= 0.3 for _, seconds in waited)
    for outcome, _ in skipped:
        assert "circuit open after 3 consecutive failures; chained verifier 2 is tried again" in outcome.block_reason
    # The answering first verifier's circuit stays closed: only the failing link's opens.
    assert [breaker.state for breaker in governor.breakers] == ["closed", "open"]
    assert governor.breaker is governor.breakers[0]


async def _decide(governor: Governor, action: policy_pb2.Action) -> tuple[Any, float]:
    ctx = policy_pb2.Context(agent_id="agent-1", workflow_id="wf", request_id=new_id())
    started = time.monotonic()
    outcome = await governor.decide(action, ctx, [], new_id())
    return outcome, time.monotonic() - started


async def _external(home: Path, port: int = 0) -> tuple[Any, int]:
    spec = importlib.util.spec_from_file_location(
        "external_verifier_breakers", ROOT / "examples" / "external_verifier.py"
    )
    assert spec is not None
    assert spec.loader is not None
    example: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    server, bound = await example.start(port, ensure_service_token(home, None))
    return server, bound


@pytest.fixture
async def chained(tmp_path: Path, upstream: DemoUpstream) -> AsyncIterator[tuple[ProxyClient, Any, int]]:
    (tmp_path / "policy.yaml").write_text(ALLOW_ALL)
    app = inprocess.app_config(upstream.url, tmp_path / "policy.yaml")
    server, port = await _external(tmp_path)
    servers = [server]
    try:
        async with inprocess.stack(
            tmp_path,
            app,
            verifier_chain=f"127.0.0.1:{port}",
            verifier_breaker_failures=2,
            # Long enough that the open-circuit calls below all land inside it on a loaded machine.
            verifier_breaker_cooldown_ms=3000,
        ) as running:
            yield ProxyClient(tmp_path, running.proxy, running.graph), servers, port
    finally:
        for each in servers:
            await each.stop(None)


async def _circuits(client: ProxyClient) -> dict[str, float]:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{client.proxy}/metrics")).text
    found = {
        f"chain {position}": float(value)
        for position, value in re.findall(r'^bastion_verifier_chain_circuit_open\{verifier="(\d)"\} (\S+)$', text, re.M)
    }
    (first,) = re.findall(r"^bastion_verifier_circuit_open (\S+)$", text, re.M)
    found["first"] = float(first)
    return found


async def test_a_killed_second_verifier_fails_fast_once_its_circuit_opens_and_recovers_when_back(
    chained: tuple[ProxyClient, list[Any], int], tmp_path: Path
) -> None:
    client, servers, port = chained
    token = client.token("agent-chain")
    call = tool_call("add", {"a": 1, "b": 2})
    assert (await client.post(call, headers(token))).json()["result"]["structuredContent"] == {"result": 3}
    assert await _circuits(client) == {"chain 1": 0.0, "chain 2": 0.0, "first": 0.0}

    await servers[0].stop(None)
    failures = [(await client.post(call, headers(token))).json()["error"]["data"] for _ in range(2)]
    open_ = [(await client.post(call, headers(token))).json()["error"]["data"] for _ in range(3)]

    for data in (*failures, *open_):
        assert data["rule_id"] == "bastion.verifier_unavailable"
        assert "fallback block" in data["reason"]
    # The reason names the link that failed, not only "verifier".
    assert all("chained verifier 2 unavailable (UNAVAILABLE): not reachable" in data["reason"] for data in failures)
    for data in open_:
        assert "circuit open after 2 consecutive failures; chained verifier 2 is tried again" in data["reason"]
    # The first verifier's circuit (and its metric) is untouched; the chain's second is open.
    assert await _circuits(client) == {"chain 1": 0.0, "chain 2": 1.0, "first": 0.0}

    back, _ = await _external(tmp_path, port)
    servers.append(back)
    deadline = time.monotonic() + 20
    while True:  # the cool-down, then the channel's reconnect (at most 2 s apart)
        answer = (await client.post(call, headers(token))).json()
        if "result" in answer or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert answer.get("result", {}).get("structuredContent") == {"result": 3}, answer
    assert await _circuits(client) == {"chain 1": 0.0, "chain 2": 0.0, "first": 0.0}


@pytest.mark.parametrize("own_token", [True, False], ids=["chain-token", "service-token"])
async def test_chained_verifiers_get_their_own_token_when_one_is_set(
    tmp_path: Path, upstream: DemoUpstream, own_token: bool
) -> None:
    # An attacker's probe: a third-party chained verifier was sent the service token, and
    # with it wrote forged operator approvals into the audit chain and read API key digests.
    (tmp_path / "policy.yaml").write_text(ALLOW_ALL)
    app = inprocess.app_config(upstream.url, tmp_path / "policy.yaml")
    spec = importlib.util.spec_from_file_location("external_verifier_token", ROOT / "examples" / "external_verifier.py")
    assert spec is not None
    assert spec.loader is not None
    example: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    server, port = await example.start(0, "chain-only-secret")  # accepts this token and no other
    settings: dict[str, Any] = {"verifier_chain": f"127.0.0.1:{port}"}
    if own_token:
        settings["verifier_chain_token"] = "chain-only-secret"
    try:
        async with inprocess.stack(tmp_path, app, **settings) as running:
            client = ProxyClient(tmp_path, running.proxy, running.graph)
            answer = (await client.post(tool_call("add", {"a": 1, "b": 2}), headers(client.token("agent-tok")))).json()
    finally:
        await server.stop(None)
    if own_token:
        assert answer["result"]["structuredContent"] == {"result": 3}, answer
    else:  # the service token is refused by a verifier that expects its own: fail closed
        assert answer["error"]["data"]["rule_id"] == "bastion.verifier_unavailable", answer
        assert "chained verifier 2 unavailable (UNAUTHENTICATED)" in answer["error"]["data"]["reason"]
