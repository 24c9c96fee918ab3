"""A credential revoked while its call waits (for an operator's approval) is refused when the
call would go on: the proxy checks the caller once more as the last stage before forwarding.
An attacker's probe had a call held for approval forwarded after its API key was revoked."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import orjson
from fixtures import inprocess
from fixtures.mcpcalls import headers, tool_call
from fixtures.upstream import DemoUpstream

from bastion._identity import ensure_dev_key, issue_token

POLICY = {
    "apiVersion": "bastion.dev/v1",
    "kind": "AgentPolicy",
    "metadata": {"name": "revoked-while-waiting", "version": 1},
    "spec": {
        "default": "deny",
        "rules": [
            {"id": "deletes-need-a-human", "match": {"tools": ["demo__delete_file"]}, "effect": "require_approval"},
            {"id": "rest", "match": {"tools": ["demo__*"]}, "effect": "allow"},
        ],
    },
}


async def _pending(
    http: httpx.AsyncClient, proxy: str, operator: dict[str, str], call: asyncio.Task[httpx.Response]
) -> list[dict[str, Any]]:
    for _ in range(400):
        found = (await http.get(f"{proxy}/v1/approvals", params={"state": "pending"}, headers=operator)).json()
        if found["items"]:
            return list(found["items"])
        if call.done():
            raise AssertionError(f"the call was answered without waiting for approval: {call.result().text}")
        await asyncio.sleep(0.05)
    raise AssertionError("no approval request was opened")


async def _known(http: httpx.AsyncClient, proxy: str, key: str) -> None:
    """Until the proxy has the new key (it arrives over WatchIdentity): a call it allows passes."""
    for _ in range(400):
        answer = await http.post(
            f"{proxy}/mcp/demo",
            content=orjson.dumps(tool_call("add", {"a": 1, "b": 2})),
            headers=headers(key, name="add"),
        )
        if answer.status_code == 200 and "result" in answer.json():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the proxy never took the new key: {answer.text}")


async def test_a_call_waiting_for_approval_is_not_forwarded_once_its_key_is_revoked(
    tmp_path: Path, upstream: DemoUpstream
) -> None:
    (tmp_path / "policy.json").write_text(json.dumps(POLICY))
    app = inprocess.app_config(upstream.url, tmp_path / "policy.json")
    operator = {"Authorization": "Bearer " + issue_token(ensure_dev_key(tmp_path), subject="ops", roles=("operator",))}
    path = "/revoked/while-waiting"
    async with (
        inprocess.policy(tmp_path, app) as policy,
        inprocess.verifier(tmp_path, app) as verifier,
        inprocess.graph(tmp_path, app, policy_addr=policy["grpc"]) as graph,
        inprocess.proxy(
            tmp_path,
            app,
            policy_addr=policy["grpc"],
            verifier_addr=verifier["grpc"],
            graph_addr=graph["grpc"],
            approval_wait_s=30,
        ) as addresses,
        httpx.AsyncClient(timeout=60) as http,
    ):
        await inprocess.synced(addresses["http"], "proxy")
        proxy, admin = f"http://{addresses['http']}", f"http://{policy['http']}"
        created = (await http.post(f"{admin}/v1/keys", json={"agent": "leaky"}, headers=operator)).json()
        await _known(http, proxy, created["key"])
        body = orjson.dumps(tool_call("delete_file", {"path": path}))
        call = asyncio.create_task(
            http.post(f"{proxy}/mcp/demo", content=body, headers=headers(created["key"], name="delete_file"))
        )
        (request,) = await _pending(http, proxy, operator, call)
        revoked = await http.post(
            f"{admin}/v1/keys/{created['key_id']}/revoke", json={"reason": "leaked"}, headers=operator
        )
        assert revoked.status_code == 200, revoked.text
        # Revocations reach the proxy over WatchIdentity: a new request shows when they have.
        for _ in range(200):
            fresh = await http.post(
                f"{proxy}/mcp/demo",
                content=orjson.dumps(tool_call("add", {"a": 1, "b": 2})),
                headers=headers(created["key"]),
            )
            if fresh.status_code == 401:
                break
            await asyncio.sleep(0.05)
        assert fresh.status_code == 401
        approved = await http.post(
            f"{proxy}/v1/approvals/{request['approval_id']}/approve", json={"reason": "looks fine"}, headers=operator
        )
        assert approved.status_code == 200, approved.text
        answer = await call
    error = answer.json()["error"]
    assert error["code"] == -32003, answer.text
    assert error["data"]["rule_id"] == "bastion.auth.revoked"
    assert "revoked" in error["data"]["reason"]
    assert not [line for line in upstream.executed() if path in line], "the upstream ran a revoked caller's call"
