"""The a2a-sdk's own A2A 0.3 HTTP+JSON client sends through Bastion to a real a2a-sdk
agent. It writes a send as the 0.3 proto names it — `{"request": {"message_id",
"task_id", "content": [...]}}`, where JSON-RPC and 1.0 clients write `{"message":
{"messageId", "taskId", "parts": [...]}}` — and the agent's 0.3 reader (protobuf) takes
either. Bastion used to refuse it (400). Now it takes every spelling the agent takes, shows
policy and the verifier one message whichever was used, and still refuses a body whose two
spellings disagree."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.client.client import Client
from a2a.client.errors import A2AClientError
from a2a.helpers.proto_helpers import new_text_message
from a2a.types.a2a_pb2 import GetTaskRequest, Role, SendMessageRequest
from a2a.utils.errors import A2AError
from fixtures.a2a_agent import Agent, a2a_agent
from fixtures.a2a_stack import A2aStack, a2a_stack

# One rule reads the message's text, one its task: each must see a 0.3 HTTP+JSON send's.
POLICY = """\
apiVersion: bastion.dev/v1
kind: AgentPolicy
metadata: {name: a2a-rest03, version: 1}
spec:
  default: deny
  rules:
    - id: no-wire-transfers
      match: {a2a: ["echo__Send*"]}
      when: "args.message.parts.exists(p, 'text' in p && p.text.contains('wire transfer'))"
      effect: deny
    - id: no-writing-into-task-zero
      match: {a2a: ["echo__Send*"]}
      when: "'taskId' in args.message && args.message.taskId == 'task-zero'"
      effect: deny
    - id: callers-everything
      match: {agents: ["planner", "mallory"], a2a: ["echo__*"]}
      effect: allow
"""
_REST_03 = {"Content-Type": "application/json", "A2A-Version": "0.3"}


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[A2aStack, Agent]]:
    (tmp_path / "policy.yaml").write_text(POLICY)
    async with a2a_agent() as agent, a2a_stack(tmp_path, tmp_path / "policy.yaml", {"echo": agent.url}) as stack:
        yield stack, agent


async def _client(stack: A2aStack, http: httpx.AsyncClient, binding: str, version: str, *, streaming: bool) -> Client:
    """The SDK's client for Bastion's card, the agent offered as `version` (the SDK then
    speaks 0.3: `CompatRestTransport`, under `/v1`)."""
    card = await A2ACardResolver(http, f"{stack.proxy}/a2a/echo").get_agent_card()
    for interface in card.supported_interfaces:
        interface.protocol_version = version
    config = ClientConfig(httpx_client=http, supported_protocol_bindings=[binding], streaming=streaming)
    return ClientFactory(config).create(card)


def _send(text: str, task_id: str = "") -> SendMessageRequest:
    message = new_text_message(text, role=Role.ROLE_USER)
    if task_id:
        message.task_id = task_id
    return SendMessageRequest(message=message)


@pytest.mark.parametrize("streaming", [False, True], ids=["message:send", "message:stream"])
async def test_the_sdk_0_3_rest_client_sends_through_bastion(running: tuple[A2aStack, Agent], streaming: bool) -> None:
    stack, agent = running
    async with httpx.AsyncClient(headers=stack.headers("planner"), timeout=30) as http:
        client = await _client(stack, http, "HTTP+JSON", "0.3", streaming=streaming)
        events = [event async for event in client.send_message(_send("old rest client"))]
        task_id = events[0].task.id
        got = await client.get_task(GetTaskRequest(id=task_id))
    assert got.artifacts[0].parts[0].text == "echo: old rest client"
    route = "/v1/message:stream" if streaming else "/v1/message:send"
    assert agent.methods()[-2:] == [f"POST {route}", f"GET /v1/tasks/{task_id}"]
    # The task its answer named is the sender's (claimed as on every other binding).
    async with httpx.AsyncClient(base_url=stack.proxy, headers=stack.headers("mallory"), timeout=30) as http:
        foreign = await http.get(f"/a2a/echo/v1/tasks/{task_id}", headers=_REST_03)
    assert foreign.status_code == 403, foreign.text


@pytest.mark.parametrize(
    ("binding", "version"), [("HTTP+JSON", "0.3"), ("JSONRPC", "0.3"), ("HTTP+JSON", "1.0"), ("JSONRPC", "1.0")]
)
async def test_policy_sees_the_same_message_whatever_spelling_carried_it(
    running: tuple[A2aStack, Agent], binding: str, version: str
) -> None:
    stack, agent = running
    async with httpx.AsyncClient(headers=stack.headers("planner"), timeout=30) as http:
        client = await _client(stack, http, binding, version, streaming=False)
        before = len(agent.received)
        for request in (_send("please make a wire transfer"), _send("more", task_id="task-zero")):
            # JSON-RPC: the -32003 error; HTTP+JSON: the 403 the SDK reports as such.
            with pytest.raises((A2AError, A2AClientError), match=r"POLICY_VIOLATION|403"):
                await anext(aiter(client.send_message(request)))
    assert len(agent.received) == before  # neither reached the agent


async def test_a_0_3_rest_send_into_another_callers_task_is_refused(running: tuple[A2aStack, Agent]) -> None:
    stack, agent = running
    async with httpx.AsyncClient(headers=stack.headers("planner"), timeout=30) as http:
        planner = await _client(stack, http, "HTTP+JSON", "0.3", streaming=False)
        [sent] = [event async for event in planner.send_message(_send("mine"))]
    async with httpx.AsyncClient(headers=stack.headers("mallory"), timeout=30) as http:
        mallory = await _client(stack, http, "HTTP+JSON", "0.3", streaming=False)
        before = len(agent.received)
        with pytest.raises(A2AClientError, match="403"):
            await anext(aiter(mallory.send_message(_send("injected", task_id=sent.task.id))))
    assert len(agent.received) == before


_MESSAGE_03 = {"message_id": "m", "role": "ROLE_USER", "content": [{"text": "hi"}]}


@pytest.mark.parametrize(
    "body",
    [
        {"message": {**_MESSAGE_03, "message_id": "m2"}, "request": _MESSAGE_03},
        {"request": {**_MESSAGE_03, "messageId": "m3"}},
        {"request": {**_MESSAGE_03, "parts": [{"text": "something else"}]}},
        {"message": _MESSAGE_03, "configuration": {"history_length": 1, "historyLength": 2}},
    ],
    ids=["message and request", "message_id and messageId", "content and parts", "history_length twice"],
)
async def test_a_send_giving_one_field_under_two_spellings_that_disagree_is_refused(
    running: tuple[A2aStack, Agent], body: dict[str, Any]
) -> None:
    stack, agent = running
    before = len(agent.received)
    async with httpx.AsyncClient(base_url=stack.proxy, headers=stack.headers("planner"), timeout=30) as http:
        rest = await http.post("/a2a/echo/v1/message:send", content=orjson.dumps(body), headers=_REST_03)
        rpc = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "message/send", "params": body})
        jsonrpc = await http.post("/a2a/echo", content=rpc, headers=_REST_03)
    assert rest.status_code == 400, rest.text
    assert rest.json()["error"]["details"][0]["reason"] == "bastion.protocol.invalid_params"
    assert jsonrpc.json()["error"]["code"] == -32602, jsonrpc.text
    assert len(agent.received) == before
