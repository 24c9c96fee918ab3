"""A graph and a proxy restarted while the policy service is down have no revocation list:
they refuse operator JWTs (503, saying why) instead of serving a revoked one, audit the
refusals, keep blocking agent calls as before, and honour the revocations once the
policy service is back. Found by an attacker's probe: a revoked operator read the graph and
approved a parked call after such a restart.

A real stack in-process on port 0, the policy service on an address fixed up front so it
can come back where the others look for it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
from fixtures import inprocess
from fixtures.graphapi import auditor_token, bearer, poll
from fixtures.mcpcalls import ProxyClient, headers, request, tool_call
from fixtures.policystack import free_addr
from fixtures.upstream import DemoUpstream

from bastion._identity import ensure_dev_key, issue_token

POLICY = {
    "apiVersion": "bastion.dev/v1",
    "kind": "AgentPolicy",
    "metadata": {"name": "unsynced", "version": 1},
    "spec": {
        "default": "deny",
        "rules": [
            {"id": "deletes-need-a-human", "match": {"tools": ["demo__delete_file"]}, "effect": "require_approval"}
        ],
    },
}
UNSYNCED = "bastion.auth.revocations_unavailable"


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.05)


async def _delete(client: ProxyClient, agent: str) -> dict[str, Any]:
    hdrs = headers(client.token(agent), workflow="wf-unsynced", name="delete_file")
    answer: dict[str, Any] = (await client.post(tool_call("delete_file", {"path": "/prod"}), hdrs)).json()
    return answer


async def test_a_revoked_operator_is_refused_by_services_restarted_while_the_policy_service_is_down(
    tmp_path: Path, upstream: DemoUpstream
) -> None:
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(POLICY))
    app = inprocess.app_config(upstream.url, policy_file)
    key = ensure_dev_key(tmp_path)
    fired_token = issue_token(key, subject="ops-fired", roles=("operator",))
    fired, staying = bearer(fired_token), bearer(issue_token(key, subject="ops-staying", roles=("operator",)))
    admin = bearer(issue_token(key, subject="root", roles=("admin",)))
    policy_grpc = free_addr()

    async with inprocess.verifier(tmp_path, app) as verifier, httpx.AsyncClient(timeout=30) as http:

        def proxy(graph: dict[str, str]) -> Any:
            return inprocess.proxy(
                tmp_path, app, policy_addr=policy_grpc, verifier_addr=verifier["grpc"], graph_addr=graph["grpc"]
            )

        async with (
            inprocess.policy(tmp_path, app, grpc_addr=policy_grpc) as policy,
            inprocess.graph(tmp_path, app, policy_addr=policy_grpc) as graph,
            proxy(graph) as running,
        ):
            parked = await _delete(ProxyClient(tmp_path, running["http"], graph["http"]), "agent-1")
            approval_id = parked["error"]["data"]["approval_id"]
            jti = jwt.decode(fired_token, options={"verify_signature": False})["jti"]
            revoked = await http.post(
                f"http://{policy['http']}/v1/revocations", json={"kind": "token", "value": jti}, headers=admin
            )
            assert revoked.status_code == 201, revoked.text

            async def refused_everywhere() -> bool:
                on_graph = await http.get(f"http://{graph['http']}/graphs", headers=fired)
                on_proxy = await http.get(f"http://{running['http']}/v1/approvals", headers=fired)
                return on_graph.status_code == on_proxy.status_code == 401

            await _until(refused_everywhere, "the revocation pushed to the graph and the proxy")

        # The policy service is down; the graph and the proxy restart (a deploy, a crash).
        async with inprocess.graph(tmp_path, app, policy_addr=policy_grpc) as graph, proxy(graph) as running:
            client = ProxyClient(tmp_path, running["http"], graph["http"])
            p, g = f"http://{running['http']}", f"http://{graph['http']}"
            refusals = [
                await http.get(f"{g}/graphs", headers=fired),
                await http.get(f"{g}/graphs", headers=staying),  # nobody's token can be checked
                await http.post(f"{p}/v1/approvals/{approval_id}/approve", headers=fired),
                await http.get(f"{p}/v1/approvals", headers=staying),
                await http.get(f"{p}/v1/queue", headers=staying),
                await http.get(f"{p}/v1/tools", headers=staying),
            ]
            for response in refusals:
                assert response.status_code == 503, (response.request.url, response.text)
                error = response.json()["error"]
                assert error["code"] == UNSYNCED
                assert error["message"].startswith("revocations not loaded: this service has not received")
                assert "its WatchIdentity stream failed: UNAVAILABLE" in error["message"]
            # Protocol traffic, which no decision governs, is not forwarded either: a revoked
            # agent could otherwise answer a tool's elicitation or read a session's stream (a
            # re-probe had initialize, answers, ping, GET and DELETE all reach the upstream).
            agent = client.token("agent-1")
            ping = await client.post(request("ping", {}), headers(agent, "ping"))
            stream = await http.get(f"{p}/mcp/demo", headers={**headers(agent, "GET"), "Accept": "text/event-stream"})
            for response in (ping, stream):
                assert response.status_code == 503, response.text
                assert response.json()["error"]["code"] == UNSYNCED
            # Agent calls are blocked as they always were with the policy service down.
            blocked = await _delete(client, "agent-1")
            assert (blocked["error"]["code"], blocked["error"]["data"]["rule_id"]) == (
                -32003,
                "bastion.policy_unavailable",
            )

            async with inprocess.policy(tmp_path, app, grpc_addr=policy_grpc):

                async def revocations_back() -> bool:
                    on_graph = await http.get(f"{g}/graphs", headers=fired)
                    on_proxy = await http.post(f"{p}/v1/approvals/{approval_id}/approve", headers=fired)
                    return on_graph.status_code == on_proxy.status_code == 401

                await _until(revocations_back, "the revocations received after the policy service came back")
                assert (await http.get(f"{g}/graphs", headers=staying)).status_code == 200
                retried = await _delete(client, "agent-1")
                # The proxy's refusals (approve, list approvals, list the queue) reach the graph's
                # audit trail like every refusal before a decision.
                audited = await poll(
                    g,
                    "/audit/violations",
                    {"workflow_id": "bastion.rejected"},
                    3,
                    auditor_token(tmp_path),
                    where=lambda item: item["rule_id"] == UNSYNCED,
                )

    assert retried["error"]["message"] == "APPROVAL_REQUIRED", retried
    assert retried["error"]["data"]["approval_state"] == "pending", "the revoked operator's approval never took"
    assert upstream.executed() == []
    assert all(item["reason"].startswith("revocations not loaded") for item in audited)
