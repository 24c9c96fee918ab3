"""Chained verifiers (`BASTION_VERIFIER_CHAIN`): the reference verifier and the third-party
example (`examples/external_verifier.py`, nothing from Bastion but the stubs) are both
asked about every call through the real proxy; the strictest answer decides, and a
chained verifier that fails cannot be skipped: the fallback applies."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from fixtures import inprocess
from fixtures.mcpcalls import ProxyClient, headers, tool_call
from fixtures.stack import ROOT
from fixtures.upstream import DemoUpstream
from pydantic import ValidationError

from bastion._identity import ensure_service_token
from bastion.proxy._config import ProxySettings, chain_addresses
from bastion.proxy._pipeline import strictest
from bastion.v1 import verifier_pb2

ALLOW_ALL = """\
apiVersion: bastion.dev/v1
kind: AgentPolicy
metadata: {name: chain, version: 1}
spec:
  default: deny
  rules:
    - {id: demo-tools, match: {tools: ["demo__*"]}, effect: allow}
"""


async def _external(home: Path) -> tuple[Any, int]:
    spec = importlib.util.spec_from_file_location("external_verifier_chain", ROOT / "examples" / "external_verifier.py")
    assert spec is not None
    assert spec.loader is not None
    example: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    server, port = await example.start(0, ensure_service_token(home, None))
    return server, port


@pytest.fixture
async def chained(tmp_path: Path, upstream: DemoUpstream) -> AsyncIterator[tuple[ProxyClient, Any]]:
    (tmp_path / "policy.yaml").write_text(ALLOW_ALL)
    app = inprocess.app_config(upstream.url, tmp_path / "policy.yaml")
    server, port = await _external(tmp_path)
    try:
        async with inprocess.stack(tmp_path, app, verifier_chain=f"127.0.0.1:{port}") as running:
            yield ProxyClient(tmp_path, running.proxy, running.graph), server
    finally:
        await server.stop(None)


async def test_both_verifiers_answer_every_call_and_the_chained_one_can_block(
    chained: tuple[ProxyClient, Any],
) -> None:
    client, _ = chained
    token = client.token("agent-chain")
    passed = await client.post(tool_call("add", {"a": 1, "b": 2}), headers(token, workflow="wf-chain"))
    blocked = await client.post(tool_call("delete_file", {"path": "notes.txt"}), headers(token, workflow="wf-chain"))
    assert passed.json()["result"]["structuredContent"] == {"result": 3}, passed.text
    error = blocked.json()["error"]
    assert error["code"] == -32003, blocked.text
    assert error["data"]["rule_id"] == "bastion.verifier_block"
    # The reference scorer passed it; the chained verifier's block decided.
    assert "delete-guard/1: demo__delete_file deletes data" in error["data"]["reason"]
    # Two calls, each with a VERIFICATION node per verifier of the chain.
    nodes = await client.nodes("wf-chain", 6)
    assert len(nodes) == 6
    assert [node["node_type"] for node in nodes] == ["ACTION", "VERIFICATION", "VERIFICATION"] * 2
    scorers = [node["verifier"]["scorer"] for node in nodes if node["node_type"] == "ACTION"]
    assert scorers[0].startswith("reference/"), scorers
    assert scorers[0].endswith("+delete-guard/1"), scorers
    assert scorers[1].startswith("delete-guard/1+reference/"), scorers


async def test_a_chained_verifier_that_goes_away_blocks_whatever_the_first_says(
    chained: tuple[ProxyClient, Any],
) -> None:
    client, server = chained
    await server.stop(None)
    answer = await client.post(tool_call("add", {"a": 1, "b": 2}), headers(client.token("agent-chain")))
    error = answer.json()["error"]
    assert error["data"]["rule_id"] == "bastion.verifier_unavailable", answer.text
    assert "fallback block" in error["data"]["reason"]
    assert error["data"]["reason"].startswith("chained verifier 2 unavailable"), error["data"]["reason"]


def _score(verdict: verifier_pb2.Verdict.ValueType, value: float, scorer: str) -> verifier_pb2.ScoreResponse:
    return verifier_pb2.ScoreResponse(
        verdict=verdict, deviation_score=value, threshold=0.8, scorer=scorer, reasons=[f"{scorer} says {value}"]
    )


def test_the_strictest_answer_wins_with_every_verifiers_reasons() -> None:
    merged = strictest([_score(verifier_pb2.FLAG, 0.5, "a"), _score(verifier_pb2.PASS, 0.7, "b")])
    assert isinstance(merged, verifier_pb2.ScoreResponse)
    assert (merged.verdict, merged.deviation_score, merged.scorer) == (verifier_pb2.FLAG, 0.5, "a+b")
    assert list(merged.reasons) == ["a: a says 0.5", "b: b says 0.7"]
    tie = strictest([_score(verifier_pb2.PASS, 0.1, "a"), _score(verifier_pb2.PASS, 0.3, "b")])
    assert isinstance(tie, verifier_pb2.ScoreResponse)
    assert (tie.deviation_score, tie.scorer) == (0.3, "b+a")


def test_any_failure_or_garbage_in_the_chain_is_the_chains_answer() -> None:
    down = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata())
    assert strictest([_score(verifier_pb2.PASS, 0.1, "a"), down]) is down
    garbage = strictest([_score(verifier_pb2.PASS, 0.1, "a"), _score(verifier_pb2.FLAG, 7.0, "b")])
    assert isinstance(garbage, ValueError)
    assert "verifier 2 of the chain (b)" in str(garbage)
    assert "outside 0..1" in str(garbage)
    # A BLOCK is the chain's answer whatever its score (combine() heeds it, never falls back).
    blocked = _score(verifier_pb2.BLOCK, 7.0, "b")
    assert strictest([_score(verifier_pb2.PASS, 0.1, "a"), blocked]) is blocked
    assert strictest([down, blocked]) is blocked


@pytest.mark.parametrize(
    "chain",
    ["localhost", "127.0.0.1:0", "127.0.0.1:99999", "host:port", "a b:1", ",".join(f"h{i}:1" for i in range(9))],
)
def test_a_chain_setting_that_is_not_a_list_of_host_port_is_refused(chain: str) -> None:
    with pytest.raises(ValidationError):
        ProxySettings(verifier_chain=chain)


def test_a_chain_setting_is_read_in_order_without_blanks() -> None:
    assert chain_addresses(" a:1, ,b.example:50052,") == ["a:1", "b.example:50052"]
    assert ProxySettings(verifier_chain="a:1,b:2").verifier_chain == "a:1,b:2"
