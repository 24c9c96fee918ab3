"""A2A tenants and task ownership: an agent may number each tenant's tasks on its own, so
one task id under two tenants is two callers' tasks, and each reaches its own (it was
refused before: ownership was keyed by the id alone). No tenant string — another
caller's, a case or Unicode variant, none at all — reaches a task another caller holds,
whether the agent tells tenants apart, folds them, or ignores them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fixtures.a2a_scripted import Call, Reply, ScriptedAgent, scripted_agent
from fixtures.a2a_stack import A2aStack, a2a_stack

from bastion._identity import Principal
from bastion.proxy._a2a_tasks import claim, may_reach, store_key
from bastion.proxy._owners import WorkflowOwners

POLICY = """\
apiVersion: bastion.dev/v1
kind: AgentPolicy
metadata: {name: a2a-tenants, version: 1}
spec:
  default: deny
  rules:
    - id: everyone-everything
      match: {agents: ["planner", "mallory"], a2a: ["multi__*"]}
      effect: allow
"""
_A2A = {"Content-Type": "application/json", "A2A-Version": "1.0"}
FULL_WIDTH = "\uff41\uff43\uff4d\uff45"  # "acme" in full-width letters


class _Tenants:
    """An agent numbering each tenant's tasks from 1, tenants told apart exactly (or
    folded by `fold`); over JSON-RPC (`tenant` field) and HTTP+JSON (`/{tenant}/…`)."""

    def __init__(self, fold: bool = False) -> None:
        self.fold = fold
        self.tasks: dict[str, list[str]] = {}

    def __call__(self, call: Call) -> Reply:
        method, params = call.method, call.params
        tenant = str(params.get("tenant", ""))
        if not call.jsonrpc:  # "VERB /{tenant}/route…"
            path = method.partition(" ")[2]
            segments = path.strip("/").split("/")
            if segments[0] not in ("tasks", "message:send"):
                tenant, segments = segments[0], segments[1:]
            method = {"message:send": "SendMessage", "tasks": "ListTasks"}[segments[0]]
            if len(segments) == 2:
                method, params = "GetTask", {"id": segments[1]}
        held = self.tasks.setdefault(tenant.casefold() if self.fold else tenant, [])
        if method == "SendMessage":
            held.append(f"task-{len(held) + 1}")
            return Reply({"task": _task(held[-1], tenant)})
        if method == "ListTasks":
            return Reply({"tasks": [{"id": task, "contextId": f"ctx-{tenant}"} for task in held]})
        if params.get("id") in held:
            return Reply(_task(params["id"], tenant))
        return Reply({"code": 404, "message": "no such task"}, status=404)


def _task(task_id: str, tenant: str) -> dict[str, Any]:
    return {"id": task_id, "contextId": f"ctx-{tenant}", "status": {"state": "TASK_STATE_COMPLETED"}}


@pytest.fixture
def tenants() -> _Tenants:
    return _Tenants()


@pytest.fixture
def agent(tenants: _Tenants) -> Iterator[ScriptedAgent]:
    with scripted_agent(tenants) as running:
        yield running


def _stack(tmp_path: Path, agent: ScriptedAgent) -> AbstractAsyncContextManager[A2aStack]:
    (tmp_path / "policy.yaml").write_text(POLICY)
    return a2a_stack(tmp_path, tmp_path / "policy.yaml", {"multi": agent.url})


async def _rpc(stack: A2aStack, caller: str, method: str, params: dict[str, Any]) -> httpx.Response:
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    async with httpx.AsyncClient(base_url=stack.proxy, timeout=30) as http:
        return await http.post("/a2a/multi", content=body, headers={**stack.headers(caller), **_A2A})


async def _rest(stack: A2aStack, caller: str, path: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=stack.proxy, timeout=30) as http:
        return await http.get(f"/a2a/multi/{path}", headers={**stack.headers(caller), **_A2A})


def _send(tenant: str | None) -> dict[str, Any]:
    message = {"messageId": "m", "role": "ROLE_USER", "parts": [{"text": "hi"}]}
    return {"message": message} if tenant is None else {"message": message, "tenant": tenant}


async def test_one_task_id_under_two_tenants_is_each_callers_own(tmp_path: Path, agent: ScriptedAgent) -> None:
    async with _stack(tmp_path, agent) as stack:
        planners = (await _rpc(stack, "planner", "SendMessage", _send("acme"))).json()["result"]["task"]["id"]
        # Over HTTP+JSON, the tenant as a path segment.
        async with httpx.AsyncClient(base_url=stack.proxy, timeout=30) as http:
            sent = await http.post(
                "/a2a/multi/globex/message:send",
                content=orjson.dumps(_send(None)),
                headers={**stack.headers("mallory"), **_A2A},
            )
        mallorys = sent.json()["task"]["id"]
        assert planners == mallorys == "task-1"  # the agent numbers each tenant's tasks
        own = {
            "JSON-RPC": await _rpc(stack, "mallory", "GetTask", {"id": "task-1", "tenant": "globex"}),
            "HTTP+JSON": await _rest(stack, "mallory", "globex/tasks/task-1"),
            "planner's own": await _rpc(stack, "planner", "GetTask", {"id": "task-1", "tenant": "acme"}),
        }
        listed = await _rpc(stack, "mallory", "ListTasks", {"tenant": "globex"})
        others = await _rpc(stack, "mallory", "ListTasks", {"tenant": "acme"})
        foreign = {
            "planner's tenant": await _rpc(stack, "mallory", "GetTask", {"id": "task-1", "tenant": "acme"}),
            "planner's tenant, path": await _rest(stack, "mallory", "acme/tasks/task-1"),
            "planner, mallory's tenant": await _rpc(stack, "planner", "GetTask", {"id": "task-1", "tenant": "globex"}),
            "no tenant": await _rpc(stack, "mallory", "GetTask", {"id": "task-1"}),
            "case variant": await _rpc(stack, "mallory", "GetTask", {"id": "task-1", "tenant": "ACME"}),
            "case variant, path": await _rest(stack, "mallory", "Acme/tasks/task-1"),
            "full-width variant": await _rpc(stack, "mallory", "GetTask", {"id": "task-1", "tenant": FULL_WIDTH}),
            "padded": await _rpc(stack, "mallory", "GetTask", {"id": "task-1", "tenant": "acme "}),
            "a send into it": await _rpc(
                stack,
                "mallory",
                "SendMessage",
                {**_send("acme"), "message": {**_send(None)["message"], "taskId": "task-1"}},
            ),
        }
    for name, response in own.items():
        assert response.status_code == 200, (name, response.text)
        assert "error" not in response.json(), (name, response.text)
    assert [task["id"] for task in listed.json()["result"]["tasks"]] == ["task-1"]
    assert others.json()["result"]["tasks"] == []
    for name, response in foreign.items():
        assert response.status_code == 403, (name, response.text)


async def test_a_tenant_the_agent_ignores_reaches_no_other_callers_task(tmp_path: Path, agent: ScriptedAgent) -> None:
    # An agent that ignores tenants (or folds them): any tenant string reaches the one task.
    agent.handler = _Tenants(fold=True)
    async with _stack(tmp_path, agent) as stack:
        assert (await _rpc(stack, "planner", "SendMessage", _send("acme"))).status_code == 200
        before = len(agent.calls)
        attempts = [
            await _rpc(stack, "mallory", "GetTask", {"id": "task-1", "tenant": tenant})
            for tenant in ("ACME", "Acme", "acme\u200b", "other", "")
        ]
        mine = await _rpc(stack, "planner", "GetTask", {"id": "task-1", "tenant": "ACME"})
    assert [response.status_code for response in attempts] == [403] * 5
    assert len(agent.calls) == before + 1  # only the owner's own read reached the agent
    assert mine.json()["result"]["id"] == "task-1"


async def test_a_tenant_that_is_not_a_string_or_disagrees_with_the_path_is_refused(
    tmp_path: Path, agent: ScriptedAgent
) -> None:
    async with _stack(tmp_path, agent) as stack:
        odd = await _rpc(stack, "mallory", "GetTask", {"id": "task-1", "tenant": ["acme"]})
        async with httpx.AsyncClient(base_url=stack.proxy, timeout=30) as http:
            split = await http.post(
                "/a2a/multi/globex/message:send",
                content=orjson.dumps(_send("acme")),
                headers={**stack.headers("mallory"), **_A2A},
            )
    assert odd.json()["error"]["code"] == -32602
    assert split.status_code == 400, split.text
    assert agent.calls == []


def _principal(subject: str) -> Principal:
    return Principal(subject=subject, tenant="t", roles=(), expires_at=float("inf"))


async def test_a_claim_from_before_tenants_were_recorded_still_keeps_others_out(tmp_path: Path) -> None:
    owners = WorkflowOwners(tmp_path / "owners.sqlite3")
    try:
        planner, mallory = _principal("planner"), _principal("mallory")
        assert await owners.claim(store_key("a", "t1"), planner)  # the record an older Bastion wrote
        assert await may_reach(owners, "a", "any-tenant", "t1", planner)
        assert not await may_reach(owners, "a", "", "t1", mallory)
        assert not await may_reach(owners, "a", "any-tenant", "t1", mallory)
        # A second principal holding the same id under its own tenant: each its own, and the
        # id alone (any other tenant) is no longer anyone's.
        assert await claim(owners, "a", "x", "t2", planner)
        assert await claim(owners, "a", "y", "t2", mallory)
        assert not await claim(owners, "a", "x", "t2", mallory)
        assert await may_reach(owners, "a", "x", "t2", planner)
        assert await may_reach(owners, "a", "y", "t2", mallory)
        assert not await may_reach(owners, "a", "y", "t2", planner)
        assert not await may_reach(owners, "a", "X", "t2", planner)
        assert not await may_reach(owners, "a", "", "t2", mallory)
    finally:
        owners.close()
    reopened = WorkflowOwners(tmp_path / "owners.sqlite3")  # durable, the shared mark too
    try:
        assert not await may_reach(reopened, "a", "z", "t2", _principal("planner"))
        assert await may_reach(reopened, "a", "y", "t2", _principal("mallory"))
    finally:
        reopened.close()
