"""The verifier's HTTP side on BASTION_VERIFIER_METRICS_ADDR: /metrics counting scores by
verdict with a latency histogram, /healthz and /readyz, served next to the real gRPC server."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from bastion import ConfigError
from bastion._appconfig import AppConfig
from bastion._rpc import auth_metadata
from bastion.v1 import policy_pb2, verifier_pb2, verifier_pb2_grpc
from bastion.verifier import VerifierSettings
from bastion.verifier._api import OpsApp
from bastion.verifier._config import load_settings
from bastion.verifier._metrics import VerifierMetrics
from bastion.verifier._server import serve

TIMEOUT = 5.0
TOKEN = "verifier-metrics-test-token"


@dataclass(frozen=True)
class Served:
    grpc: str
    http: str


def _settings(home: Path, metrics_addr: str = "127.0.0.1:0") -> VerifierSettings:
    return VerifierSettings(
        home=home, verifier_addr="127.0.0.1:0", verifier_metrics_addr=metrics_addr, service_token=SecretStr(TOKEN)
    )


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    bound: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(_settings(tmp_path), AppConfig(), bound.set_result, stop))
    addresses = await asyncio.wait_for(asyncio.shield(bound), TIMEOUT)
    yield Served(addresses["grpc"], addresses["http"])
    stop.set()
    await asyncio.wait_for(task, TIMEOUT)


def _request(tool: str, *, task: str = "", to: str = "") -> verifier_pb2.ScoreRequest:
    action = policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server="demo", tool=tool)
    if to:
        action.arguments.update({"to": to})
    history = [verifier_pb2.HistoryNode(node_id="n1", server="demo", tool="add", effect=policy_pb2.ALLOW)]
    return verifier_pb2.ScoreRequest(action=action, ctx=policy_pb2.Context(task=task), history=history)


async def _samples(http: str) -> dict[tuple[str, str], float]:
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"http://{http}/metrics", timeout=TIMEOUT)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, sample.labels.get("verdict", "")): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
        if sample.name.startswith("bastion_verifier_") and sample.labels.get("le") in (None, "+Inf")
    }


async def test_metrics_count_unary_and_stream_scores_by_verdict_and_time_each(served: Served) -> None:
    before = await _samples(served.http)
    assert {before[("bastion_verifier_scores_total", v)] for v in ("PASS", "FLAG", "BLOCK", "ERROR")} == {0}

    async with grpc.aio.insecure_channel(served.grpc) as channel:
        stub = verifier_pb2_grpc.VerifierStub(channel)
        metadata = auth_metadata(TOKEN)
        passed = await stub.Score(_request("add"), timeout=TIMEOUT, metadata=metadata)
        blocked = await stub.Score(
            _request("send", task="mail bob@acme.com", to="eve@evil.example"), timeout=TIMEOUT, metadata=metadata
        )
        # On the stream a request without an action is answered with no verdict: ERROR.
        stream = stub.ScoreStream(iter([_request("add"), verifier_pb2.ScoreRequest()]), metadata=metadata)
        streamed = [response.verdict async for response in stream]
    assert (passed.verdict, blocked.verdict) == (verifier_pb2.PASS, verifier_pb2.BLOCK)
    assert streamed == [verifier_pb2.PASS, verifier_pb2.VERDICT_UNSPECIFIED]

    after = await _samples(served.http)
    assert after[("bastion_verifier_scores_total", "PASS")] == 2
    assert after[("bastion_verifier_scores_total", "BLOCK")] == 1
    assert after[("bastion_verifier_scores_total", "ERROR")] == 1
    assert after[("bastion_verifier_scores_total", "FLAG")] == 0
    assert after[("bastion_verifier_score_seconds_count", "")] == 4
    assert after[("bastion_verifier_score_seconds_bucket", "")] == 4
    assert 0 < after[("bastion_verifier_score_seconds_sum", "")] < 1


async def test_healthz_and_readyz_answer_while_the_grpc_server_serves(served: Served) -> None:
    async with httpx.AsyncClient(base_url=f"http://{served.http}", timeout=TIMEOUT) as client:
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


async def test_readyz_is_503_when_not_serving_and_other_routes_answer_the_error_body() -> None:
    app = OpsApp(VerifierMetrics(), lambda: False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://verifier") as client:
        not_ready = await client.get("/readyz")
        unknown = await client.get("/graphs")
        posted = await client.post("/metrics")
    assert (not_ready.status_code, not_ready.json()) == (503, {"status": "not serving scores"})
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "bastion.not_found")
    assert (posted.status_code, posted.json()["error"]["code"]) == (405, "bastion.method_not_allowed")
    assert posted.headers["allow"] == "GET"


def test_a_bad_metrics_address_is_a_config_error_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_VERIFIER_METRICS_ADDR", "localhost")
    with pytest.raises(ConfigError, match="BASTION_VERIFIER_METRICS_ADDR"):
        load_settings()


async def test_a_metrics_port_in_use_stops_the_start_with_the_address(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        addr = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(ConfigError, match=f"cannot listen on {addr}"):
            await serve(_settings(tmp_path, addr), AppConfig(), lambda _: None, asyncio.Event())
