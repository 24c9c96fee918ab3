"""An A2A task belongs to the principal whose message created it through Bastion: another
caller naming it (read, cancel, subscribe, push config; either binding) is refused before
any decision and the agent never sees the request, even when policy would allow it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fixtures.a2a_agent import Agent, a2a_agent
from fixtures.a2a_stack import A2aStack, a2a_stack

POLICY = """\
apiVersion: bastion.dev/v1
kind: AgentPolicy
metadata: {name: a2a-tasks, version: 1}
spec:
  default: deny
  rules:
    - id: everyone-everything
      match: {agents: ["planner", "mallory"], a2a: ["echo__*"]}
      effect: allow
"""
_A2A = {"Content-Type": "application/json", "A2A-Version": "1.0"}


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[A2aStack, Agent]]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    async with a2a_agent() as agent, a2a_stack(tmp_path, policy, {"echo": agent.url}) as stack:
        yield stack, agent


async def _rpc(stack: A2aStack, caller: str, method: str, params: dict[str, Any]) -> httpx.Response:
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    async with httpx.AsyncClient(base_url=stack.proxy, timeout=30) as http:
        return await http.post("/a2a/echo", content=body, headers={**stack.headers(caller), **_A2A})


def _message(text: str) -> dict[str, Any]:
    return {"message": {"role": "ROLE_USER", "messageId": f"m-{text}", "parts": [{"text": text}]}}


def _into(task_id: str, text: str, role: str = "ROLE_USER") -> dict[str, Any]:
    message = {"role": role, "messageId": f"m-{text}", "taskId": task_id, "parts": [{"text": text}]}
    return {"message": message}


def _snake_into(task_id: str) -> dict[str, Any]:
    return {"message": {"role": "ROLE_USER", "message_id": "m-snake", "task_id": task_id, "parts": [{"text": "x"}]}}


def _referring(task_id: str) -> dict[str, Any]:
    message = {"role": "ROLE_USER", "messageId": "m-ref", "referenceTaskIds": [task_id], "parts": [{"text": "x"}]}
    return {"message": message}


async def test_a_field_given_under_both_spellings_with_two_values_is_refused(running: tuple[A2aStack, Agent]) -> None:
    stack, agent = running
    mine = (await _rpc(stack, "mallory", "SendMessage", _message("mine"))).json()["result"]["task"]["id"]
    before = list(agent.methods())
    both = {"taskId": mine, "task_id": "someone-elses", "id": "c1", "url": "http://example.com/hook"}
    response = await _rpc(stack, "mallory", "CreateTaskPushNotificationConfig", both)
    assert response.json()["error"]["code"] == -32602
    assert "'taskId' and 'task_id' are both given" in response.json()["error"]["data"]["reason"]
    assert agent.methods() == before


async def test_another_principal_cannot_touch_a_task_it_did_not_create(running: tuple[A2aStack, Agent]) -> None:
    stack, agent = running
    sent = await _rpc(stack, "planner", "SendMessage", _message("hello"))
    task_id = sent.json()["result"]["task"]["id"]
    assert (await _rpc(stack, "planner", "GetTask", {"id": task_id})).json()["result"]["id"] == task_id
    # Its creator may write into it (the agent answers for the task's state).
    followed = await _rpc(stack, "planner", "SendMessage", _into(task_id, "more"))
    assert followed.status_code == 200
    before = list(agent.methods())
    attempts = {
        "GetTask": await _rpc(stack, "mallory", "GetTask", {"id": task_id}),
        "CancelTask": await _rpc(stack, "mallory", "CancelTask", {"id": task_id}),
        "ListTaskPushNotificationConfigs": await _rpc(
            stack, "mallory", "ListTaskPushNotificationConfigs", {"taskId": task_id}
        ),
        "0.3 tasks/get": await _rpc(stack, "mallory", "tasks/get", {"id": task_id}),
        # A message into the task: it would join the task's history and be answered with its state.
        "SendMessage": await _rpc(stack, "mallory", "SendMessage", _into(task_id, "send")),
        "SendStreamingMessage": await _rpc(stack, "mallory", "SendStreamingMessage", _into(task_id, "stream")),
        "0.3 message/send": await _rpc(stack, "mallory", "message/send", _into(task_id, "send03", role="user")),
        # The proto's own field names, which the agent's parsers read too (an attacker's probe
        # set a push config on another caller's task with `task_id`), and a reference.
        "push config, task_id": await _rpc(
            stack,
            "mallory",
            "CreateTaskPushNotificationConfig",
            {"task_id": task_id, "id": "c1", "url": "http://evil.example/hook"},
        ),
        "0.3 push config, task_id": await _rpc(
            stack,
            "mallory",
            "tasks/pushNotificationConfig/set",
            {"task_id": task_id, "pushNotificationConfig": {"url": "http://evil.example/x"}},
        ),
        "message.task_id": await _rpc(stack, "mallory", "SendMessage", _snake_into(task_id)),
        "referenceTaskIds": await _rpc(stack, "mallory", "SendMessage", _referring(task_id)),
    }
    async with httpx.AsyncClient(base_url=stack.proxy, timeout=30) as http:
        headers = {**stack.headers("mallory"), **_A2A}
        rest = await http.get(f"/a2a/echo/tasks/{task_id}", headers=headers)
        into = orjson.dumps(_into(task_id, "r"))
        rest_send = await http.post("/a2a/echo/message:send", content=into, headers=headers)
        message = {"messageId": "mz", "taskId": task_id, "role": "ROLE_USER", "content": [{"text": "injected"}]}
        request_field = await http.post(
            "/a2a/echo/v1/message:send",
            content=orjson.dumps({"request": message}),
            headers={**headers, "A2A-Version": "0.3"},
        )
    for name, response in attempts.items():
        assert response.status_code == 403, (name, response.text)
        assert "created by another principal" in response.json()["error"]["data"]["reason"], name
    assert rest.status_code == 403
    assert rest_send.status_code == 403
    # The 0.3 proto's own name for the message field, which the agent's 0.3 HTTP+JSON parser
    # reads too (a fifth probe wrote into another caller's task with it): read as the message.
    assert request_field.status_code == 403, request_field.text
    assert "created by another principal" in request_field.text
    assert agent.methods() == before  # none of them reached the agent
    refused = await stack.audited("bastion.rejected", 14, rule_id="bastion.a2a.task_foreign")
    assert {item["agent_id"] for item in refused} == {"mallory"}


async def test_a_task_created_by_a_stream_is_claimed_as_it_streams(running: tuple[A2aStack, Agent]) -> None:
    stack, _ = running
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "SendStreamingMessage", "params": _message("streamed")})
    task_id = None
    async with httpx.AsyncClient(base_url=stack.proxy, timeout=30) as http:
        headers = {**stack.headers("planner"), **_A2A, "Accept": "text/event-stream"}
        async with http.stream("POST", "/a2a/echo", content=body, headers=headers) as response:
            async for line in response.aiter_lines():
                if line.startswith("data:") and task_id is None:
                    event = orjson.loads(line[5:])["result"]
                    task_id = (event.get("task") or {}).get("id") or (event.get("statusUpdate") or {}).get("taskId")
    assert task_id
    assert (await _rpc(stack, "mallory", "GetTask", {"id": task_id})).status_code == 403
    assert (await _rpc(stack, "planner", "GetTask", {"id": task_id})).status_code == 200


async def test_a_task_bastion_never_saw_is_left_to_policy_and_the_agent(running: tuple[A2aStack, Agent]) -> None:
    stack, agent = running
    response = await _rpc(stack, "mallory", "GetTask", {"id": "never-created-here"})
    assert response.status_code == 200
    assert "error" in response.json()  # the agent's own "task not found"
    assert agent.methods()[-1] == "GetTask"


async def test_list_tasks_shows_each_caller_only_its_own(running: tuple[A2aStack, Agent]) -> None:
    stack, _ = running
    mine = (await _rpc(stack, "planner", "SendMessage", _message("mine"))).json()["result"]["task"]["id"]
    theirs = (await _rpc(stack, "mallory", "SendMessage", _message("theirs"))).json()["result"]["task"]["id"]
    planner = {task["id"] for task in (await _rpc(stack, "planner", "ListTasks", {})).json()["result"]["tasks"]}
    mallory = {task["id"] for task in (await _rpc(stack, "mallory", "ListTasks", {})).json()["result"]["tasks"]}
    assert mine in planner
    assert theirs not in planner
    assert theirs in mallory
    assert mine not in mallory


async def test_list_tasks_pages_leak_no_other_callers_task_and_tokens_are_sealed_to_the_caller(
    running: tuple[A2aStack, Agent],
) -> None:
    # Found by an attacker's probe: the agent's nextPageToken is base64 of the page's last
    # task id, and totalSize counted every caller's tasks; both were handed on as they came.
    stack, _ = running
    planner = {
        (await _rpc(stack, "planner", "SendMessage", _message(f"p{n}"))).json()["result"]["task"]["id"]
        for n in range(3)
    }
    mallory = {
        (await _rpc(stack, "mallory", "SendMessage", _message(f"m{n}"))).json()["result"]["task"]["id"]
        for n in range(2)
    }
    seen: set[str] = set()
    params: dict[str, Any] = {"pageSize": 1}
    tokens = []
    for _ in range(20):
        answer = await _rpc(stack, "mallory", "ListTasks", params)
        assert not any(task in answer.text for task in planner), answer.text
        result = answer.json()["result"]
        assert "totalSize" not in result  # a page of several: what others' pages hold is not known
        seen |= {task["id"] for task in result["tasks"]}
        if not result.get("nextPageToken"):
            break
        tokens.append(result["nextPageToken"])
        params = {"pageSize": 1, "pageToken": result["nextPageToken"]}
    assert seen == mallory
    assert tokens
    assert all(token.startswith("bst1.") for token in tokens)
    # A token is the caller's own: another caller, a forged or an agent's raw token are refused.
    for caller, token in (("planner", tokens[0]), ("mallory", tokens[0][:-4] + "AAAA"), ("mallory", "eyJ0cyI6MX0")):
        refused = await _rpc(stack, caller, "ListTasks", {"pageSize": 1, "pageToken": token})
        assert refused.json()["error"]["code"] == -32602, refused.text
        snake = await _rpc(stack, caller, "ListTasks", {"pageSize": 1, "page_token": token})
        assert "not issued" in snake.json()["error"]["data"]["reason"], snake.text
    # The proto's own spelling carries a sealed token as well as the JSON name does.
    following = await _rpc(stack, "mallory", "ListTasks", {"pageSize": 1, "page_token": tokens[0]})
    assert "result" in following.json(), following.text
    async with httpx.AsyncClient(base_url=stack.proxy, timeout=30) as http:
        headers = {**stack.headers("mallory"), **_A2A}
        first = await http.get("/a2a/echo/tasks", params={"pageSize": "1"}, headers=headers)
        assert first.status_code == 200, first.text
        token = first.json()["nextPageToken"]
        assert token.startswith("bst1.")
        following = await http.get("/a2a/echo/tasks", params={"pageSize": "1", "pageToken": token}, headers=headers)
        assert following.status_code == 200, following.text
        for name in ("pageToken", "page_token"):
            forged = await http.get("/a2a/echo/tasks", params={name: "eyJ0cyI6MX0"}, headers=headers)
            assert forged.status_code == 400, name
