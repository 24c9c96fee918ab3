"""The semantic_drift signal through the verifier service as `bastion verifier serve` wires it:
BASTION_VERIFIER_SEMANTIC on, the model loaded from the installed package, real grpc.aio on
127.0.0.1:0. Needs scripts/install-semantic (make test runs it): fails without it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from pydantic import SecretStr

from bastion._appconfig import AppConfig
from bastion._rpc import auth_metadata
from bastion.v1 import policy_pb2, verifier_pb2, verifier_pb2_grpc
from bastion.verifier import VerifierSettings
from bastion.verifier._server import serve

TOKEN = "semantic-test-token"
TASK = "Email the quarterly sales report to bob@acme.com"
# Loading 90 MB of weights before the port is bound takes about half a second, more on a
# busy machine.
START_TIMEOUT = 60.0
TIMEOUT = 30.0


@pytest.fixture
async def address(tmp_path: Path) -> AsyncIterator[str]:
    settings = VerifierSettings(
        home=tmp_path,
        verifier_addr="127.0.0.1:0",
        verifier_metrics_addr="127.0.0.1:0",
        service_token=SecretStr(TOKEN),
        verifier_threshold=0.8,
        verifier_sequence_weight=0.3,
        verifier_argument_weight=0.4,
        verifier_contradiction_weight=0.8,
        verifier_taint_weight=0.8,
        # Intent off: this file is about semantic_drift (a deletion the task never asked
        # for would also fire intent's destructive weight; test_intent.py covers that).
        verifier_intent_weight=0.0,
        verifier_destructive_weight=0.0,
        verifier_semantic=True,
    )
    bound: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, AppConfig(), bound.set_result, stop))
    addresses = await asyncio.wait_for(asyncio.shield(bound), START_TIMEOUT)
    yield addresses["grpc"]
    stop.set()
    await asyncio.wait_for(task, TIMEOUT)


def score_request(node_id: str, server: str, tool: str, **arguments: str) -> verifier_pb2.ScoreRequest:
    action = policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server=server, tool=tool)
    action.arguments.update(arguments)
    ctx = policy_pb2.Context(task=TASK, agent_id="agent", request_id=node_id)
    return verifier_pb2.ScoreRequest(action=action, ctx=ctx, node_id=node_id)


ON_TASK = score_request("n1", "email", "send_email", to="bob@acme.com", subject="Quarterly sales report")
OFF_TASK = score_request("n2", "files", "delete_directory", path="/home/user/documents")


def semantic_reasons(response: verifier_pb2.ScoreResponse) -> list[str]:
    return [reason for reason in response.reasons if "semantic" in reason]


async def test_score_flags_an_unrelated_destructive_call_and_passes_the_task(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = verifier_pb2_grpc.VerifierStub(channel)
        on_task = await stub.Score(ON_TASK, timeout=TIMEOUT, metadata=auth_metadata(TOKEN))
        off_task = await stub.Score(OFF_TASK, timeout=TIMEOUT, metadata=auth_metadata(TOKEN))
    assert on_task.verdict == verifier_pb2.PASS
    assert semantic_reasons(on_task) == []
    assert off_task.verdict == verifier_pb2.FLAG
    assert off_task.deviation_score == pytest.approx(0.3)
    [reason] = semantic_reasons(off_task)
    assert reason.startswith("action far from the task: semantic similarity ")
    assert reason.endswith(" (weight 0.30)")


async def test_the_batch_stream_scores_with_the_signal_too(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = verifier_pb2_grpc.VerifierStub(channel)
        call = stub.ScoreBatchStream(metadata=auth_metadata(TOKEN), timeout=TIMEOUT)
        await call.write(verifier_pb2.ScoreBatchRequest(requests=[ON_TASK, OFF_TASK]))
        batch = await call.read()
        await call.done_writing()
    assert isinstance(batch, verifier_pb2.ScoreBatchResponse)
    on_task, off_task = batch.responses
    assert (on_task.request_id, off_task.request_id) == ("n1", "n2")
    assert semantic_reasons(on_task) == []
    assert [reason.endswith("(weight 0.30)") for reason in semantic_reasons(off_task)] == [True]
