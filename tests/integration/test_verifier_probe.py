"""Findings of an attacker's probe of the proxy↔verifier path, end to end: a real proxy,
policy service and graph, the demo MCP server as a subprocess (it records each
`delete_file` it actually runs), and a verifier the test controls.

A release an operator gave for a call the verifier could not score stands for the
verifier's missing say only: the identical call queued by a *rule* (a `when:` that holds
in another workflow) is parked anew for the operator to judge, never forwarded on it —
least of all when the verifier, back, says BLOCK.

A half-open circuit's trial call that is cancelled (the proxy stopping, a caller gone)
hands its trial on: kept, the circuit stayed half-open for good and the verifier, back,
was never asked again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import httpx
from fixtures import inprocess
from fixtures.fake_verifier import fake_verifier, policy_file
from fixtures.graphapi import bearer
from fixtures.mcpcalls import ProxyClient, headers, tool_call
from fixtures.stack import ROOT
from fixtures.upstream import demo_upstream

from bastion._appconfig import AppConfig, ServerConfig
from bastion._identity import ensure_dev_key, ensure_service_token, issue_token
from bastion._rpc import auth_metadata, open_channel
from bastion.proxy._breaker import CLOSED, HALF_OPEN, CircuitBreaker
from bastion.proxy._pipeline import Governor
from bastion.proxy._workflows import new_id
from bastion.v1 import policy_pb2, policy_pb2_grpc, verifier_pb2, verifier_pb2_grpc

RULES = [
    {
        "id": "park-in-wf-b",
        "match": {"tools": ["demo__delete_file"]},
        "when": "ctx.workflow_id == 'wf-b'",
        "effect": "queue",
    },
    {"id": "deletes", "match": {"tools": ["demo__delete_file"]}, "effect": "allow"},
]
VERIFIER = {"timeout_ms": 100, "fallback": "queue"}


async def _call(client: ProxyClient, token: str, workflow: str) -> dict[str, Any]:
    body = tool_call("delete_file", {"path": "/data/ledger.csv"})
    response = await client.post(body, headers(token, workflow=workflow, name="delete_file"))
    answer: dict[str, Any] = response.json()
    return answer


async def test_a_release_for_a_verifier_outage_does_not_pass_the_call_a_rule_queues(tmp_path: Path) -> None:
    (tmp_path / "upstream").mkdir()
    with demo_upstream(tmp_path / "upstream") as upstream:
        app = AppConfig(
            servers={"demo": ServerConfig(url=upstream.url)},
            policies=(policy_file(tmp_path, "probe", RULES, VERIFIER),),
        )
        async with (
            inprocess.policy(tmp_path, app) as policy,
            inprocess.graph(tmp_path, app, policy_addr=policy["grpc"]) as graph,
            fake_verifier(tmp_path) as (verifier, servicer),  # hangs until told a score
            inprocess.proxy(
                tmp_path, app, policy_addr=policy["grpc"], verifier_addr=verifier, graph_addr=graph["grpc"]
            ) as proxy,
            httpx.AsyncClient(base_url=f"http://{proxy['http']}", timeout=30) as http,
        ):
            for _ in range(200):  # until the proxy learnt the policy's verifier stanza from Watch
                if 'bastion_proxy_policy_version{policy="probe"} 1.0' in (await http.get("/metrics")).text:
                    break
                await asyncio.sleep(0.05)
            client = ProxyClient(tmp_path, proxy["http"], graph["http"])
            token = client.token("agent-probe", "default")
            operator = bearer(issue_token(ensure_dev_key(tmp_path), subject="ops-1", roles=("operator",)))

            outage = await _call(client, token, "wf-a")
            assert outage["error"]["data"]["rule_id"] == "bastion.verifier_queued", outage
            queue_id = outage["error"]["data"]["queue_id"]
            released = await http.post(f"/v1/queue/{queue_id}/release", headers=operator, json={"reason": "outage"})
            assert released.status_code == 200, released.text

            # The verifier is back and blocks; in wf-b a rule queues the identical call.
            servicer.score, servicer.verdict = 1.0, verifier_pb2.BLOCK
            ruled = await _call(client, token, "wf-b")
            error = ruled["error"]
            assert (error["code"], error["message"]) == (-32004, "QUEUED"), ruled
            assert error["data"]["rule_id"] == "park-in-wf-b"
            assert error["data"]["queue_id"] != queue_id
            assert [json.loads(line)["path"] for line in upstream.executed()] == []
            shown = await http.get(f"/v1/queue/{queue_id}", headers=operator)
            assert shown.json()["state"] == "released"  # still unused


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _add() -> tuple[policy_pb2.Action, policy_pb2.Context, list[verifier_pb2.HistoryNode], str]:
    action = policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server="demo", tool="add", method="tools/call")
    return action, policy_pb2.Context(agent_id="agent-1", workflow_id="wf", request_id=new_id()), [], new_id()


async def test_a_cancelled_half_open_trial_is_handed_on_and_the_verifier_asked_again(tmp_path: Path) -> None:
    app = inprocess.app_config("http://127.0.0.1:1/mcp", ROOT / "examples" / "policies" / "demo.yaml")
    clock = _Clock()
    breaker = CircuitBreaker(failures=1, cooldown_s=5, clock=clock)
    async with inprocess.policy(tmp_path, app) as policy, fake_verifier(tmp_path) as (verifier, servicer):
        governor = Governor(
            policy_pb2_grpc.PolicyServiceStub(open_channel(policy["grpc"])),
            verifier_pb2_grpc.VerifierStub(open_channel(verifier)),
            auth_metadata(ensure_service_token(tmp_path, None)),
            policy_timeout=5.0,
            # Long enough that the trial is still waiting when it is looked at on a loaded
            # machine, where a shorter deadline could pass before a call reaches the server.
            verifier_timeout=1.0,
            fallback_allow=False,
            breaker=breaker,
        )
        try:
            assert not (await governor.decide(*_add())).allowed  # the hanging verifier opens it
            clock.now += 5
            before = servicer.calls
            trial = asyncio.create_task(governor.decide(*_add()))
            for _ in range(500):  # until the trial call reached the (still hanging) verifier
                if servicer.calls > before:
                    break
                await asyncio.sleep(0.002)
            assert servicer.calls == before + 1
            assert breaker.state == HALF_OPEN
            trial.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await trial

            servicer.score = 0.1  # the verifier is back
            outcome = await governor.decide(*_add())
        finally:
            await governor.close()
    assert outcome.allowed, outcome.block_reason
    assert servicer.calls == before + 2
    assert breaker.state == CLOSED
