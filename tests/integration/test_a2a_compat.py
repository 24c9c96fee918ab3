"""`POST /a2a/tasks/send`, the seed's simple A2A endpoint: translated to `message/send`
and governed exactly like `/a2a/{agent}` (decided, journaled, blocked, or forwarded to the
real a2a-sdk agent), and its own bad input refused and journaled."""

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
metadata: {name: a2a-compat, version: 1}
spec:
  default: deny
  rules:
    - id: planner-sends
      match: {agents: ["planner"], a2a: ["echo__SendMessage"]}
      effect: allow
"""


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[A2aStack, Agent]]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    async with a2a_agent() as agent, a2a_stack(tmp_path, policy, {"echo": agent.url}) as stack:
        yield stack, agent


def _tasks_send(params: dict[str, Any], method: str = "tasks/send") -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": 9, "method": method, "params": params})


_MESSAGE = {"role": "user", "parts": [{"type": "text", "text": "hello"}]}


async def _post(stack: A2aStack, caller: str | None, body: bytes, **headers: str) -> httpx.Response:
    hdrs = {"Content-Type": "application/json", **headers}
    if caller is not None:
        hdrs["Authorization"] = f"Bearer {stack.token(caller)}"
    async with httpx.AsyncClient(base_url=stack.proxy, timeout=30) as http:
        return await http.post("/a2a/tasks/send", content=body, headers=hdrs)


async def test_a_0_2_tasks_send_reaches_the_agent_as_message_send(running: tuple[A2aStack, Agent]) -> None:
    stack, agent = running
    response = await _post(stack, "planner", _tasks_send({"agent": "echo", "id": "task-1", "message": _MESSAGE}))
    assert response.status_code == 200, response.text
    assert "result" in response.json(), response.text
    result = response.json()["result"]
    assert "echo: hello" in orjson.dumps(result).decode()
    assert agent.methods() == ["message/send"]
    assert response.headers["bastion-node-id"]


async def test_the_compat_route_is_decided_like_any_send(running: tuple[A2aStack, Agent]) -> None:
    stack, agent = running
    denied = await _post(stack, "stranger", _tasks_send({"agent": "echo", "message": _MESSAGE}))
    assert denied.json()["error"]["code"] == -32003
    assert agent.methods() == []


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "bastion.protocol.parse_error"),
        (_tasks_send({"message": _MESSAGE}), 400, "bastion.protocol.invalid_params"),
        (_tasks_send({"agent": "echo", "message": "hi"}), 400, "bastion.protocol.invalid_params"),
        (
            _tasks_send({"agent": "echo", "message": _MESSAGE}, method="tasks/get"),
            400,
            "bastion.protocol.method_not_allowed",
        ),
        (b'[{"jsonrpc": "2.0", "id": 1, "method": "tasks/send"}]', 400, "bastion.protocol.invalid_request"),
    ],
)
async def test_bad_compat_requests_are_refused_and_journaled(
    running: tuple[A2aStack, Agent], body: bytes, status: int, code: str
) -> None:
    stack, agent = running
    response = await _post(stack, "planner", body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"] == code
    assert agent.methods() == []
    refused = await stack.audited("bastion.rejected", 1, rule_id=code)
    assert refused


async def test_the_compat_route_needs_a_token_and_a_known_agent(running: tuple[A2aStack, Agent]) -> None:
    stack, agent = running
    anonymous = await _post(stack, None, _tasks_send({"agent": "echo", "message": _MESSAGE}))
    unknown = await _post(stack, "planner", _tasks_send({"agent": "nobody", "message": _MESSAGE}))
    async with httpx.AsyncClient(base_url=stack.proxy) as http:
        get = await http.get("/a2a/tasks/send", headers={"Authorization": f"Bearer {stack.token('planner')}"})
    assert anonymous.status_code == 401
    assert unknown.status_code == 404
    assert get.status_code == 405
    assert agent.methods() == []


@pytest.mark.parametrize("name", ["tasks/send", "echo/v1/message:send", "echo/", "Echo", "tasks"])
async def test_the_named_agent_must_be_one_of_bastion_yaml_not_a_path(
    running: tuple[A2aStack, Agent], name: str
) -> None:
    # An attacker's probe: `tasks/send` sent the translated request back to this route, over
    # and over, to a 500 at Python's recursion limit (nothing journaled); `echo/v1/message:send`
    # routed it into the HTTP+JSON binding.
    stack, agent = running
    response = await _post(
        stack, "planner", _tasks_send({"agent": name, "message": _MESSAGE}), **{"Bastion-Agent": name}
    )
    assert response.status_code == 404, response.text
    assert response.json()["error"]["message"] == "bastion.unknown_agent"
    assert "no A2A agent named" in response.json()["error"]["data"]["reason"]
    assert agent.methods() == []
    assert await stack.audited("bastion.rejected", 1, rule_id="bastion.unknown_agent")
