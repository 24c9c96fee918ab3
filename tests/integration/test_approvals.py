"""Approvals end to end: a real stack, the demo MCP server as a subprocess (it records each
`delete_file` it actually runs), the MCP SDK client as the agent, operators on the proxy's
`/v1/approvals` routes.

Policy: `demo__delete_file` requires approval, `demo__add` is allowed. What must hold: the
call is parked (-32004 with an approval id) and never forwarded until an operator approves
that exact call; the identical retry is forwarded exactly once; other arguments need a
new approval; a denial, an expiry, another tenant and the agent itself get nowhere; every
step is in the graph.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fixtures import inprocess
from fixtures.graphapi import bearer
from fixtures.mcp_client import mcp_client
from fixtures.mcpcalls import ProxyClient, headers, tool_call
from fixtures.upstream import DemoUpstream, demo_upstream
from mcp.shared.exceptions import MCPError

from bastion._cli import main
from bastion._identity import ensure_dev_key, issue_token
from bastion.proxy._approvals import ApprovalStore
from bastion.proxy._approvals_api import ApprovalsApi

pytestmark = pytest.mark.asyncio(loop_scope="module")

POLICY = {
    "apiVersion": "bastion.dev/v1",
    "kind": "AgentPolicy",
    "metadata": {"name": "approvals", "version": 1},
    "spec": {
        "default": "deny",
        "rules": [
            {"id": "deletes-need-a-human", "match": {"tools": ["demo__delete_file"]}, "effect": "require_approval"},
            {"id": "add", "match": {"tools": ["demo__add"]}, "effect": "allow"},
        ],
    },
}


class Stack:
    def __init__(self, client: ProxyClient, upstream: DemoUpstream) -> None:
        self.client = client
        self.upstream = upstream
        key = ensure_dev_key(client.home)
        self.operator = bearer(issue_token(key, subject="ops-1", roles=("operator",)))

    def token(self, agent: str, tenant: str = "default") -> str:
        return self.client.token(agent, tenant)

    def deleted(self) -> list[str]:
        return [json.loads(line)["path"] for line in self.upstream.executed()]

    async def call(self, path: str, hdrs: dict[str, str]) -> tuple[dict[str, Any], httpx.Response]:
        body = tool_call("delete_file", {"path": path})
        response = await self.client.post(body, {**hdrs, "Mcp-Name": "delete_file"})
        return response.json(), response

    async def rest(self, method: str, path: str, hdrs: dict[str, str], **kwargs: Any) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.client.proxy, timeout=30) as http:
            return await http.request(method, path, headers=hdrs, **kwargs)


def _policy_file(home: Path) -> Path:
    path = home / "approvals.json"
    path.write_text(json.dumps(POLICY))
    return path


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoUpstream]:
    with demo_upstream(tmp_path_factory.mktemp("upstream")) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory, upstream: DemoUpstream) -> AsyncIterator[Stack]:
    home = tmp_path_factory.mktemp("stack")
    async with inprocess.stack(home, inprocess.app_config(upstream.url, _policy_file(home))) as running:
        yield Stack(ProxyClient(home, running.proxy, running.graph), upstream)


async def test_the_approval_flow_with_the_sdk_client(stack: Stack) -> None:
    workflow = "wf-approval-flow"
    url = f"{stack.client.proxy}/mcp/demo"
    async with mcp_client(url, stack.token("agent-flow"), "legacy", workflow_id=workflow) as agent:
        with pytest.raises(MCPError) as parked:
            await agent.call_tool("delete_file", {"path": "/data/q3.csv"})
        error = parked.value.error
        assert (error.code, error.message) == (-32004, "APPROVAL_REQUIRED")
        assert isinstance(error.data, dict)
        approval_id = error.data["approval_id"]
        assert error.data["approval_state"] == "pending"
        assert error.data["rule_id"] == "deletes-need-a-human"
        assert error.data["policy_version"] == 1
        # Asking again before anyone decided: the same request, not a second one.
        with pytest.raises(MCPError) as again:
            await agent.call_tool("delete_file", {"path": "/data/q3.csv"})
        assert isinstance(again.value.error.data, dict)
        assert again.value.error.data["approval_id"] == approval_id
        assert stack.deleted() == []

        listed = await stack.rest("GET", "/v1/approvals", stack.operator, params={"state": "pending"})
        assert listed.status_code == 200, listed.text
        mine = [item for item in listed.json()["items"] if item["approval_id"] == approval_id]
        assert len(mine) == 1
        assert mine[0]["agent_id"] == "agent-flow"
        assert mine[0]["action"]["tool"] == "delete_file"
        assert mine[0]["action"]["arguments"] == {"path": "/data/q3.csv"}

        approved = await stack.rest(
            "POST", f"/v1/approvals/{approval_id}/approve", stack.operator, json={"reason": "quarter close"}
        )
        assert approved.status_code == 200, approved.text
        assert (approved.json()["state"], approved.json()["decided_by"]) == ("approved", "ops-1")

        # Other arguments are another call: a new request, nothing forwarded.
        with pytest.raises(MCPError) as other:
            await agent.call_tool("delete_file", {"path": "/data/everything"})
        assert other.value.error.code == -32004
        assert isinstance(other.value.error.data, dict)
        assert other.value.error.data["approval_id"] != approval_id

        result = await agent.call_tool("delete_file", {"path": "/data/q3.csv"})
        assert not result.is_error
        # Exactly once: the next identical call needs a new approval.
        with pytest.raises(MCPError) as used:
            await agent.call_tool("delete_file", {"path": "/data/q3.csv"})
        assert used.value.error.code == -32004
        assert isinstance(used.value.error.data, dict)
        assert used.value.error.data["approval_id"] != approval_id

    assert stack.deleted() == ["/data/q3.csv"]
    shown = await stack.rest("GET", f"/v1/approvals/{approval_id}", stack.operator)
    assert shown.json()["state"] == "used"
    # Every step in the graph: the parked calls, the operator's decision, the forwarded call.
    # The graph ingests asynchronously: wait for the nodes asserted on, not for any six.
    await stack.client.nodes(workflow, 1, where=lambda node: node["action"].get("method") == "bastion.approval/approve")
    await stack.client.nodes(workflow, 1, where=lambda node: node["outcome"] == "FORWARDED")
    nodes = await stack.client.nodes(workflow, 6)
    decision = [node for node in nodes if node["action"].get("method") == "bastion.approval/approve"]
    assert len(decision) == 1
    assert decision[0]["node_type"] == "VERIFICATION"
    forwarded = [node for node in nodes if node["outcome"] == "FORWARDED" and node["action"].get("tool")]
    assert len(forwarded) == 1
    assert approval_id in forwarded[0]["block_reason"]
    graph = await _graph(stack, workflow)
    assert {"source": forwarded[0]["node_id"], "target": decision[0]["node_id"]} in [
        {"source": edge["source"], "target": edge["target"]} for edge in graph["edges"] if edge["type"] == "VERIFIED_BY"
    ]


async def _graph(stack: Stack, workflow: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=stack.client.graph, timeout=10) as http:
        response = await http.get(f"/graphs/{workflow}", headers=bearer(stack.client._auditor))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _parked(stack: Stack, path: str, token: str, workflow: str | None = None) -> str:
    body, _ = await stack.call(path, headers(token, workflow=workflow))
    assert body["error"]["code"] == -32004, body
    approval_id: str = body["error"]["data"]["approval_id"]
    return approval_id


async def test_an_approved_call_retried_concurrently_is_forwarded_exactly_once(stack: Stack) -> None:
    token = stack.token("agent-race")
    approval_id = await _parked(stack, "/race/one", token)
    response = await stack.rest("POST", f"/v1/approvals/{approval_id}/approve", stack.operator)
    assert response.status_code == 200, response.text

    answers = await asyncio.gather(*(stack.call("/race/one", headers(token)) for _ in range(20)))

    forwarded = [body for body, _ in answers if "result" in body]
    assert len(forwarded) == 1, answers
    assert all(body["error"]["code"] == -32004 for body, _ in answers if "result" not in body)
    assert stack.deleted().count("/race/one") == 1


async def _decision_nodes(stack: Stack, workflow: str, approval_id: str, count: int) -> list[dict[str, Any]]:
    def decision(node: dict[str, Any]) -> bool:
        method = str(node["action"].get("method", ""))
        return method.startswith("bastion.approval/") and node["action"]["arguments"]["approval_id"] == approval_id

    return await stack.client.nodes(workflow, count, where=decision)


async def test_concurrent_decisions_on_one_request_journal_one_decision(stack: Stack) -> None:
    """Eight operators' approve/deny at once: one 200, seven 409, and one decision node. A
    probe found every concurrent decision journaled, approve and deny nodes side by side,
    with nothing in the graph saying which took effect."""
    workflow = "wf-decision-race"
    approval_id = await _parked(stack, "/race/decide", stack.token("agent-decide"), workflow)
    steps = ["approve", "deny"] * 4
    answers = await asyncio.gather(
        *(stack.rest("POST", f"/v1/approvals/{approval_id}/{step}", stack.operator) for step in steps)
    )
    assert sorted(answer.status_code for answer in answers) == [200] + [409] * 7, [a.text for a in answers]
    state = next(answer.json()["state"] for answer in answers if answer.status_code == 200)
    # A marker after the decisions: once it is in the graph, every decision node is too.
    await stack.call("/race/decide-marker", headers(stack.token("agent-decide"), workflow=workflow))
    await stack.client.nodes(
        workflow, 1, where=lambda node: node["action"].get("arguments", {}).get("path") == "/race/decide-marker"
    )
    nodes = await _decision_nodes(stack, workflow, approval_id, 1)
    step = {"approved": "approve", "denied": "deny"}[state]
    assert [node["action"]["method"] for node in nodes] == [f"bastion.approval/{step}"]


async def test_a_decision_another_replica_beat_is_journaled_as_superseded(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replicas sharing the store: the other one decides between this one's check and its
    change (injected: the window is too short to hit on purpose). The journaled approve
    gets a `superseded` node saying it did not take effect."""
    workflow = "wf-decision-replica"
    approval_id = await _parked(stack, "/replica/one", stack.token("agent-replica"), workflow)
    other = ApprovalStore(stack.client.home / "proxy" / "approvals.sqlite3", ttl=600)
    journal = ApprovalsApi._journal

    def journal_then_lose(self: ApprovalsApi, *args: Any, **kwargs: Any) -> str:
        node_id = journal(self, *args, **kwargs)
        if kwargs.get("step") == "approve":
            other.decide(approval_id, approve=False, by="ops-other", reason="replica", node_id="n-other", tenant=None)
        return node_id

    monkeypatch.setattr(ApprovalsApi, "_journal", journal_then_lose)
    try:
        lost = await stack.rest("POST", f"/v1/approvals/{approval_id}/approve", stack.operator)
    finally:
        other.close()
    assert (lost.status_code, lost.json()["error"]["code"]) == (409, "bastion.conflict"), lost.text
    nodes = await _decision_nodes(stack, workflow, approval_id, 2)
    approve, superseded = sorted(nodes, key=lambda node: node["action"]["method"])
    assert approve["action"]["method"] == "bastion.approval/approve"
    assert superseded["action"]["method"] == "bastion.approval/superseded"
    assert superseded["action"]["arguments"]["reason"].startswith("did not take effect: ")
    assert "denied" in superseded["action"]["arguments"]["reason"]
    graph = await _graph(stack, workflow)
    caused = {(edge["source"], edge["target"]) for edge in graph["edges"] if edge["type"] == "CAUSED_BY"}
    assert (superseded["node_id"], approve["node_id"]) in caused
    assert "/replica/one" not in stack.deleted()


async def test_a_decision_the_store_fails_to_confirm_is_journaled_as_unconfirmed(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by an attacker's probe (a write lock held on approvals.sqlite3, or Redis paused):
    the approve was journaled, the store refused it (503), and nothing in the trail said it
    had not taken effect. The store's failure is injected here; the lock takes 5 s."""
    workflow = "wf-decision-store-down"
    approval_id = await _parked(stack, "/store/down", stack.token("agent-store-down"), workflow)

    def locked(self: ApprovalStore, *args: Any, **kwargs: Any) -> Any:
        raise sqlite3.OperationalError("database is locked")

    with monkeypatch.context() as patched:
        patched.setattr(ApprovalStore, "decide", locked)
        failed = await stack.rest("POST", f"/v1/approvals/{approval_id}/approve", stack.operator)
    assert (failed.status_code, failed.json()["error"]["code"]) == (503, "bastion.store"), failed.text
    nodes = await _decision_nodes(stack, workflow, approval_id, 2)
    approve, unconfirmed = sorted(nodes, key=lambda node: node["action"]["method"])
    assert unconfirmed["action"]["method"] == "bastion.approval/unconfirmed"
    assert unconfirmed["action"]["arguments"]["reason"].startswith("not confirmed by the store (OperationalError)")
    graph = await _graph(stack, workflow)
    caused = {(edge["source"], edge["target"]) for edge in graph["edges"] if edge["type"] == "CAUSED_BY"}
    assert (unconfirmed["node_id"], approve["node_id"]) in caused
    # The request is still pending and can be decided once the store is back.
    state = await stack.rest("GET", f"/v1/approvals/{approval_id}", stack.operator)
    assert state.json()["state"] == "pending"
    denied = await stack.rest("POST", f"/v1/approvals/{approval_id}/deny", stack.operator)
    assert (denied.status_code, denied.json()["state"]) == (200, "denied"), denied.text


async def test_a_denied_call_stays_blocked_and_is_not_asked_again(stack: Stack) -> None:
    token = stack.token("agent-denied")
    approval_id = await _parked(stack, "/deny/me", token)
    denied = await stack.rest("POST", f"/v1/approvals/{approval_id}/deny", stack.operator, json={"reason": "no"})
    assert (denied.status_code, denied.json()["state"]) == (200, "denied")

    body, _ = await stack.call("/deny/me", headers(token))

    assert body["error"]["code"] == -32003
    assert body["error"]["data"]["approval_id"] == approval_id
    assert "denied by ops-1: no" in body["error"]["data"]["reason"]
    assert "/deny/me" not in stack.deleted()
    # Deciding again is a conflict, whichever way.
    for step in ("approve", "deny"):
        again = await stack.rest("POST", f"/v1/approvals/{approval_id}/{step}", stack.operator)
        assert (again.status_code, again.json()["error"]["code"]) == (409, "bastion.conflict")


async def test_a_call_an_operator_could_not_be_shown_in_full_is_refused_not_put_to_one(stack: Stack) -> None:
    # An attacker's probe: padded past the view's bound, the call was put to an operator as
    # "_truncated" (and its journaled node cut to a prefix), so the approve button bound a
    # call no one could read. It stays blocked instead, and nothing is asked.
    token = stack.token("agent-padded")
    path = "/padded/" + "p" * 70_000 + "/and-everything-else"

    body, _ = await stack.call(path, headers(token, workflow="wf-padded"))

    assert body["error"]["code"] == -32003, body
    reason = body["error"]["data"]["reason"]
    assert "not put to an operator: its arguments are over the 65536 bytes an operator can be shown" in reason
    assert "approval_id" not in body["error"]["data"]
    assert path not in stack.deleted()
    # A call that fits is still put to an operator, and it is the only one this agent has.
    short = await _parked(stack, "/padded/short", token)
    listed = await stack.rest("GET", "/v1/approvals", stack.operator, params={"state": "pending"})
    assert listed.status_code == 200, listed.text
    assert [item["approval_id"] for item in listed.json()["items"] if item["agent_id"] == "agent-padded"] == [short]


async def test_only_operators_of_the_tenant_decide_and_never_on_their_own_calls(stack: Stack) -> None:
    approval_id = await _parked(stack, "/tenant/a", stack.token("agent-tenant", tenant="acme"))
    key = ensure_dev_key(stack.client.home)

    def who(subject: str, *roles: str, tenant: str = "default") -> dict[str, str]:
        return bearer(issue_token(key, subject=subject, roles=roles, tenant=tenant))

    agent = {"Authorization": f"Bearer {stack.token('agent-tenant', tenant='acme')}"}
    auditor = who("auditor-acme", "auditor", tenant="acme")
    other_tenant = who("ops-other", "operator", tenant="globex")
    itself = who("agent-tenant", "operator", tenant="acme")
    approve = f"/v1/approvals/{approval_id}/approve"

    assert (await stack.rest("POST", approve, {})).status_code == 401
    assert (await stack.rest("POST", approve, agent)).status_code == 403
    assert (await stack.rest("POST", approve, auditor)).status_code == 403
    assert (await stack.rest("GET", f"/v1/approvals/{approval_id}", auditor)).status_code == 200
    assert (await stack.rest("POST", approve, other_tenant)).status_code == 404
    assert (await stack.rest("GET", f"/v1/approvals/{approval_id}", other_tenant)).status_code == 404
    listing = await stack.rest("GET", "/v1/approvals", other_tenant)
    assert approval_id not in [item["approval_id"] for item in listing.json()["items"]]
    own = await stack.rest("POST", approve, itself)
    assert own.status_code == 403
    assert "its own call" in own.json()["error"]["message"]
    operator = who("ops-acme", "operator", tenant="acme")
    assert (await stack.rest("GET", f"/v1/approvals/{approval_id}", operator)).json()["state"] == "pending"
    # An admin decides across tenants.
    admin = who("root", "admin")
    assert (await stack.rest("POST", approve, admin)).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/v1/approvals/apr_" + "0" * 32 + "/approve", None, 404, "bastion.not_found"),
        ("POST", "/v1/approvals/../../mcp/demo/approve", None, 404, "bastion.not_found"),
        ("POST", "/v1/approvals/APR_" + "A" * 32 + "/approve", None, 404, "bastion.not_found"),
        ("POST", "/v1/approvals/apr_" + "0" * 32 + "/grant", None, 404, "bastion.not_found"),
        ("GET", "/v1/approvals?state=everything", None, 400, "bastion.invalid_request"),
        ("GET", "/v1/approvals?limit=100000", None, 400, "bastion.invalid_request"),
        ("GET", "/v1/approvals?tenant=globex", None, 400, "bastion.invalid_request"),
        ("GET", "/v1/approvals?state=pending&state=used", None, 400, "bastion.invalid_request"),
        # Taken by Python's int() and float(), refused here: `?state=` filtered nothing, NaN
        # and infinities are no time, `1_0` and full-width digits are no way to write one.
        ("GET", "/v1/approvals?state=", None, 400, "bastion.invalid_request"),
        ("GET", "/v1/approvals?agent=", None, 400, "bastion.invalid_request"),
        ("GET", "/v1/approvals?agent=" + "a" * 257, None, 400, "bastion.invalid_request"),
        ("GET", "/v1/approvals?agent=a%0Ab", None, 400, "bastion.invalid_request"),
        ("GET", "/v1/approvals?limit=1_0", None, 400, "bastion.invalid_request"),
        ("GET", "/v1/approvals?limit=%2B5", None, 400, "bastion.invalid_request"),
        ("GET", "/v1/approvals?limit=%EF%BC%95", None, 400, "bastion.invalid_request"),
        ("GET", "/v1/approvals?before=nan", None, 400, "bastion.invalid_request"),
        ("GET", "/v1/approvals?before=inf", None, 400, "bastion.invalid_request"),
        ("GET", "/v1/approvals?before=1e400", None, 400, "bastion.invalid_request"),
        ("GET", "/v1/approvals?before=-1", None, 400, "bastion.invalid_request"),
        ("DELETE", "/v1/approvals", None, 405, "bastion.method_not_allowed"),
        ("GET", "/v1/approvals/{id}/approve", None, 405, "bastion.method_not_allowed"),
        (
            "POST",
            "/v1/approvals/{id}/approve",
            b'{"reason": "ok", "approve_all": true}',
            422,
            "bastion.invalid_request",
        ),
        ("POST", "/v1/approvals/{id}/approve", b"[1]", 422, "bastion.invalid_request"),
        ("POST", "/v1/approvals/{id}/approve", b"{not json", 422, "bastion.invalid_request"),
        ("POST", "/v1/approvals/{id}/approve", b'{"reason": 7}', 422, "bastion.invalid_request"),
        ("POST", "/v1/approvals/{id}/approve", b'{"reason": "a", "reason": "b"}', 422, "bastion.invalid_request"),
        ("POST", "/v1/approvals/{id}/approve", b'{"reason": NaN}', 422, "bastion.invalid_request"),
        (
            "POST",
            "/v1/approvals/{id}/approve",
            b'{"reason": "' + b"x" * 5000 + b'"}',
            413,
            "bastion.protocol.too_large",
        ),
    ],
)
async def test_bad_requests_get_precise_errors_and_change_nothing(
    stack: Stack, method: str, path: str, body: bytes | None, status: int, code: str
) -> None:
    approval_id = await _parked(stack, f"/bad/{status}/{len(path)}/{len(body or b'')}", stack.token("agent-bad"))
    response = await stack.rest(method, path.replace("{id}", approval_id), stack.operator, content=body)

    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    shown = await stack.rest("GET", f"/v1/approvals/{approval_id}", stack.operator)
    assert shown.json()["state"] == "pending"


async def test_the_listing_pages_by_the_time_it_hands_back(stack: Stack) -> None:
    token = stack.token("agent-pages")
    parked = [await _parked(stack, f"/pages/{n}", token) for n in range(3)]

    first = (await stack.rest("GET", "/v1/approvals?agent=agent-pages&limit=2", stack.operator)).json()
    query = f"/v1/approvals?agent=agent-pages&limit=2&before={first['next_before']!r}"
    second = (await stack.rest("GET", query, stack.operator)).json()

    assert len(first["items"]) == 2
    assert len(second["items"]) == 1
    assert second["next_before"] is None
    assert sorted(item["approval_id"] for item in first["items"] + second["items"]) == sorted(parked)


async def test_an_approval_expires(tmp_path: Path, upstream: DemoUpstream) -> None:
    app = inprocess.app_config(upstream.url, _policy_file(tmp_path))
    # 3 s: the approve must land before it expires, also on a loaded machine.
    async with inprocess.stack(tmp_path, app, approval_ttl_s=3.0) as running:
        stack = Stack(ProxyClient(tmp_path, running.proxy, running.graph), upstream)
        token = stack.token("agent-late")
        approval_id = await _parked(stack, "/late", token)
        approved = await stack.rest("POST", f"/v1/approvals/{approval_id}/approve", stack.operator)
        assert approved.status_code == 200
        await asyncio.sleep(3.2)

        body, _ = await stack.call("/late", headers(token))
        shown = await stack.rest("GET", f"/v1/approvals/{approval_id}", stack.operator)

    assert body["error"]["code"] == -32004
    assert body["error"]["data"]["approval_id"] != approval_id
    assert shown.json()["state"] == "expired"
    assert "/late" not in stack.deleted()


async def test_a_held_call_is_forwarded_when_approved_while_it_waits(tmp_path: Path, upstream: DemoUpstream) -> None:
    app = inprocess.app_config(upstream.url, _policy_file(tmp_path))
    async with inprocess.stack(tmp_path, app, approval_wait_s=20.0) as running:
        stack = Stack(ProxyClient(tmp_path, running.proxy, running.graph), upstream)
        call = asyncio.create_task(stack.call("/held", headers(stack.token("agent-held"))))
        pending: list[dict[str, Any]] = []
        while not pending:
            await asyncio.sleep(0.05)
            listed = await stack.rest("GET", "/v1/approvals", stack.operator, params={"agent": "agent-held"})
            pending = listed.json()["items"]
        assert not call.done()
        approved = await stack.rest("POST", f"/v1/approvals/{pending[0]['approval_id']}/approve", stack.operator)
        assert approved.status_code == 200
        body, _ = await asyncio.wait_for(call, 10)

    assert "result" in body, body
    assert stack.deleted().count("/held") == 1


async def test_the_cli_lists_and_decides(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    approval_id = await _parked(stack, "/cli/one", stack.token("agent-cli"))
    key = ensure_dev_key(stack.client.home)
    operator = issue_token(key, subject="ops-cli", roles=("operator",))
    agent = stack.token("agent-cli")
    addr = stack.client.proxy.removeprefix("http://")

    def run(*argv: str, token: str = operator) -> int:
        return main(["approvals", *argv, "--addr", addr, "--token", token])

    listed = await asyncio.to_thread(run, "list", "--state", "pending", "--agent", "agent-cli", "--json")
    page = json.loads(capsys.readouterr().out)
    shown = await asyncio.to_thread(run, "show", approval_id)
    detail = capsys.readouterr().out
    as_agent = await asyncio.to_thread(run, "approve", approval_id, token=agent)
    unknown = await asyncio.to_thread(run, "approve", "apr_" + "f" * 32)
    approved = await asyncio.to_thread(run, "approve", approval_id, "--reason", "checked")
    out = capsys.readouterr().out
    body, _ = await stack.call("/cli/one", headers(stack.token("agent-cli")))

    assert (listed, shown, as_agent, unknown, approved) == (0, 0, 2, 1, 0)
    assert [item["approval_id"] for item in page["items"]] == [approval_id]
    assert "/cli/one" in detail
    assert "deletes-need-a-human" in detail
    assert f"{approval_id}: approved by ops-cli" in out
    assert "result" in body


async def test_refusals_on_the_approval_routes_are_audited(stack: Stack) -> None:
    guessed = "apr_" + "9" * 32
    agent = {"Authorization": f"Bearer {stack.token('agent-guesser')}"}
    assert (await stack.rest("POST", f"/v1/approvals/{guessed}/approve", stack.operator)).status_code == 404
    forbidden = await stack.rest("GET", "/v1/approvals", agent)
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["violation_id"]

    async def audited(code: str, text: str) -> list[dict[str, Any]]:
        rejected = await stack.client.violations("bastion.rejected", 1)
        return [v for v in rejected if v["rule_id"] == code and text in json.dumps(v)]

    for _ in range(100):
        found = await audited("bastion.not_found", guessed), await audited("bastion.auth.forbidden", "agent-guesser")
        if all(found):
            break
        await asyncio.sleep(0.1)
    assert all(found), found
    # The refused agent is the record's caller, not only a name in its reason (an attacker's
    # probe: it was recorded with no agent and no tenant, so its tenant's auditors and a
    # search by agent never found it).
    assert [(v["agent_id"], v["violation_id"]) for v in found[1]] == [
        ("agent-guesser", forbidden.json()["error"]["violation_id"])
    ]


async def test_refusals_outside_the_protocols_are_audited_with_secrets_in_paths_redacted(stack: Stack) -> None:
    """An attacker's probe found these refused and never recorded: an agent asking GET
    /v1/tools, a path with no route, bytes that are not HTTP; and a token written into a
    refused path (`POST /mcp/ghp_…`) journaled in clear."""
    agent = {"Authorization": f"Bearer {stack.token('agent-lister')}"}
    tools = await stack.rest("GET", "/v1/tools", agent)
    nowhere = await stack.rest("GET", "/no-route-here", {})
    secret = "ghp_" + "a1B2c3D4e5" * 4
    leaked = await stack.rest("POST", f"/mcp/{secret}", {})
    assert (tools.status_code, nowhere.status_code, leaked.status_code) == (403, 404, 404)
    host, port = stack.client.proxy.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /mcp/demo HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello")
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), answer
    assert json.loads(body)["error"]["code"] == "bastion.protocol"

    wanted = {
        tools.json()["error"]["violation_id"]: ("bastion.auth.forbidden", "agent-lister"),
        nowhere.json()["error"]["violation_id"]: ("bastion.not_found", ""),
        leaked.json()["error"]["violation_id"]: ("bastion.unknown_server", ""),
    }
    for _ in range(100):
        rejected = await stack.client.violations("bastion.rejected", 1)
        seen = {v["violation_id"]: v for v in rejected}
        not_http = [v for v in rejected if v["rule_id"] == "bastion.protocol" and "not valid HTTP" in v["reason"]]
        if set(wanted) <= set(seen) and not_http:
            break
        await asyncio.sleep(0.1)
    assert set(wanted) <= set(seen), rejected
    assert not_http, rejected
    for violation_id, (rule, agent_id) in wanted.items():
        assert (seen[violation_id]["rule_id"], seen[violation_id]["agent_id"]) == (rule, agent_id)
    nodes = await stack.client.nodes("bastion.rejected", 1)
    assert secret not in json.dumps(nodes)
    assert secret not in json.dumps(rejected)


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_the_proxys_probes_answer_reads_only(stack: Stack, path: str) -> None:
    # A probe's nit: they answered 200 to PUT, DELETE and TRACE.
    assert (await stack.rest("GET", path, {})).status_code == 200
    for method in ("PUT", "DELETE", "TRACE", "POST"):
        refused = await stack.rest(method, path, {})
        assert (refused.status_code, refused.headers["allow"]) == (405, "GET"), method
        assert refused.json()["error"]["code"] == "bastion.method_not_allowed"
