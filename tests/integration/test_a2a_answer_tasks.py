"""Every task an agent's answer to a send names belongs to the sender, and an answer naming
a task another principal created through Bastion is not relayed.

A stream names many tasks as readily as one: an agent may report on several tasks, or
continue one a caller's reused contextId points at. Bastion used to claim only the first
task a stream named, leaving the others for any caller to read, cancel or subscribe to;
and an answer naming another caller's task was relayed to the sender with that task's
state (the claim just failed). Here a scripted agent answers so, and the real a2a-sdk
client shows what a sender gets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import orjson
import pytest
from a2a.client import ClientConfig, ClientFactory
from a2a.client.client import Client
from a2a.client.errors import A2AClientError
from a2a.helpers.proto_helpers import new_text_message
from a2a.types.a2a_pb2 import AgentCapabilities, AgentCard, AgentInterface, Role, SendMessageRequest, StreamResponse
from a2a.utils.errors import A2AError
from fixtures.a2a_scripted import Call, Reply, ScriptedAgent, scripted_agent
from fixtures.a2a_stack import A2aStack, a2a_stack
from fixtures.graphapi import auditor_token, poll

from bastion._errors import StoreError
from bastion.proxy._owners import WorkflowOwners

POLICY = """\
apiVersion: bastion.dev/v1
kind: AgentPolicy
metadata: {name: a2a-answer-tasks, version: 1}
spec:
  default: deny
  rules:
    - id: everyone-everything
      match: {agents: ["planner", "mallory"], a2a: ["raw__*"]}
      effect: allow
"""
_A2A = {"Content-Type": "application/json", "A2A-Version": "1.0"}
#: The planner's task, and what only its owner may see of it.
HELD = "task-of-planner"
SECRET = "the planner's private state"


def _task(task_id: str, state: str = "TASK_STATE_WORKING") -> dict[str, Any]:
    return {"id": task_id, "contextId": "ctx", "status": {"state": state}}


def _status(task_id: str) -> dict[str, Any]:
    status = {"state": "TASK_STATE_WORKING", "message": {"messageId": "s", "parts": [{"text": SECRET}]}}
    return {"taskId": task_id, "contextId": "ctx", "status": status}


def _artifact(task_id: str) -> dict[str, Any]:
    return {"taskId": task_id, "contextId": "ctx", "artifact": {"artifactId": "a", "parts": [{"text": SECRET}]}}


def _text(call: Call) -> str:
    message = call.params.get("message") or {}
    parts = message.get("parts") or [{}]
    return str(parts[0].get("text", ""))


def _agent(sends: Callable[[Call], Reply]) -> Callable[[Call], Reply]:
    """Sends answered by `sends`; a read answered with the task it names."""

    def handler(call: Call) -> Reply:
        if "message" in call.params:
            return sends(call)
        return Reply(_task(str(call.params.get("id", ""))))

    return handler


@pytest.fixture
def agent() -> Iterator[ScriptedAgent]:
    with scripted_agent(_agent(lambda call: Reply({}))) as running:
        yield running


def _stack(tmp_path: Path, agent: ScriptedAgent) -> AbstractAsyncContextManager[A2aStack]:
    (tmp_path / "policy.yaml").write_text(POLICY)
    return a2a_stack(tmp_path, tmp_path / "policy.yaml", {"raw": agent.url})


def _send(text: str, **message: Any) -> dict[str, Any]:
    return {"message": {"messageId": f"m-{text}", "role": "ROLE_USER", "parts": [{"text": text}], **message}}


async def _rpc(stack: A2aStack, caller: str, method: str, params: dict[str, Any], **headers: str) -> httpx.Response:
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    async with httpx.AsyncClient(base_url=stack.proxy, timeout=30) as http:
        return await http.post("/a2a/raw", content=body, headers={**stack.headers(caller), **_A2A, **headers})


async def _stream(stack: A2aStack, caller: str, path: str, body: dict[str, Any], version: str) -> str:
    async with httpx.AsyncClient(base_url=stack.proxy, timeout=30) as http:
        headers = {**stack.headers(caller), **_A2A, "A2A-Version": version, "Accept": "text/event-stream"}
        response = await http.post(path, content=orjson.dumps(body), headers=headers)
    assert response.status_code == 200, response.text
    return response.text


def _client(stack: A2aStack, http: httpx.AsyncClient, binding: str, *, streaming: bool) -> Client:
    url = f"{stack.proxy}/a2a/raw"
    card = AgentCard(
        name="raw",
        supported_interfaces=[AgentInterface(url=url, protocol_binding=binding, protocol_version="1.0")],
        capabilities=AgentCapabilities(streaming=streaming),
    )
    return ClientFactory(
        ClientConfig(httpx_client=http, supported_protocol_bindings=[binding], streaming=streaming)
    ).create(card)


async def _collect(events: AsyncIterator[StreamResponse], into: list[StreamResponse]) -> None:
    async for event in events:
        into.append(event)


async def _result(stack: A2aStack, workflow: str, node_id: str) -> dict[str, Any]:
    def done(node: dict[str, Any]) -> bool:
        return node["node_id"] == node_id and bool(node.get("result"))

    nodes = await poll(stack.graph, f"/graphs/{workflow}/nodes", {}, 1, auditor_token(stack.home), where=done)
    result: dict[str, Any] = nodes[0]["result"]
    return result


_T = ("task-one", "task-two", "task-three")
_EVENTS_10 = [{"task": _task(_T[0])}, {"statusUpdate": _status(_T[1])}, {"artifactUpdate": _artifact(_T[2])}]
_EVENTS_03 = [
    {"kind": "task", **_task(_T[0], "working")},
    {"kind": "status-update", "final": False, **_status(_T[1])},
    {"kind": "artifact-update", **_artifact(_T[2])},
]
#: (path, method or None for HTTP+JSON, A2A-Version, the agent's events)
STREAMS = {
    "1.0 JSON-RPC": ("/a2a/raw", "SendStreamingMessage", "1.0", _EVENTS_10),
    "0.3 JSON-RPC": ("/a2a/raw", "message/stream", "0.3", _EVENTS_03),
    "1.0 HTTP+JSON": ("/a2a/raw/message:stream", None, "1.0", _EVENTS_10),
}


@pytest.mark.parametrize("chunked", [True, False], ids=["relayed as it comes", "read whole"])
@pytest.mark.parametrize("case", STREAMS)
async def test_every_task_a_streamed_answer_names_belongs_to_its_sender(
    tmp_path: Path, agent: ScriptedAgent, case: str, chunked: bool
) -> None:
    path, method, version, answer = STREAMS[case]
    agent.handler = _agent(lambda call: Reply(answer, events=True, chunked=chunked))
    params = _send("many tasks")
    body = params if method is None else {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    async with _stack(tmp_path, agent) as stack:
        relayed = await _stream(stack, "planner", path, body, version)
        before = len(agent.calls)
        foreign = [await _rpc(stack, "mallory", "GetTask", {"id": task}) for task in _T]
        cancels = [await _rpc(stack, "mallory", "CancelTask", {"id": task}) for task in _T]
        own = [await _rpc(stack, "planner", "GetTask", {"id": task}) for task in _T]
    assert all(task in relayed for task in _T)  # the sender got every event
    assert [response.status_code for response in foreign + cancels] == [403] * 6, [r.text for r in foreign]
    assert [response.json()["result"]["id"] for response in own] == list(_T)
    assert agent.methods()[before:] == ["GetTask"] * 3  # only the owner's reads reached the agent


def _continuing(call: Call) -> Reply:
    """An agent that continues the planner's task for any message in its context (a reused
    contextId), or, for `fresh`, starts a task of the sender's own first."""
    if _text(call) == "fresh":
        return Reply([{"task": _task("task-of-mallory")}, {"statusUpdate": _status(HELD)}], events=True, chunked=True)
    return Reply({"task": {**_task(HELD), "history": [{"messageId": "h", "parts": [{"text": SECRET}]}]}})


async def test_an_answer_naming_another_callers_task_is_refused_and_journaled(
    tmp_path: Path, agent: ScriptedAgent
) -> None:
    agent.handler = _agent(_continuing)
    async with _stack(tmp_path, agent) as stack:
        first = await _rpc(stack, "planner", "SendMessage", _send("start", contextId="ctx"))
        assert first.json()["result"]["task"]["id"] == HELD  # the planner's now
        stolen = await _rpc(
            stack, "mallory", "SendMessage", _send("me too", contextId="ctx"), **{"Bastion-Workflow-Id": "wf-m"}
        )
        async with httpx.AsyncClient(base_url=stack.proxy, timeout=30) as http:
            headers = {**stack.headers("mallory"), **_A2A}
            rest = await http.post("/a2a/raw/message:send", content=orjson.dumps(_send("rest")), headers=headers)
        result = await _result(stack, "wf-m", stolen.headers["bastion-node-id"])
        # The owner continuing its own task is answered as ever.
        again = await _rpc(stack, "planner", "SendMessage", _send("more", contextId="ctx", taskId=HELD))
    assert stolen.status_code == 502, stolen.text
    error = stolen.json()["error"]
    assert (error["code"], error["message"]) == (-32603, "UPSTREAM_UNAVAILABLE")
    assert "another principal" in error["data"]["reason"]
    assert rest.status_code == 502, rest.text
    assert rest.json()["error"]["details"][0]["reason"] == "UPSTREAM_UNAVAILABLE"
    for response in (stolen, rest):
        assert SECRET not in response.text
        assert HELD not in response.text
    assert result["outcome"] == "UPSTREAM_ERROR"
    assert "another principal" in result["detail"]
    assert again.json()["result"]["task"]["id"] == HELD


@pytest.mark.parametrize("binding", ["JSONRPC", "HTTP+JSON"])
async def test_a_stream_naming_another_callers_task_ends_there_with_an_error_event(
    tmp_path: Path, agent: ScriptedAgent, binding: str
) -> None:
    agent.handler = _agent(_continuing)
    async with _stack(tmp_path, agent) as stack:
        await _rpc(stack, "planner", "SendMessage", _send("start", contextId="ctx"))
        received: list[StreamResponse] = []
        async with httpx.AsyncClient(headers=stack.headers("mallory"), timeout=30) as http:
            client = _client(stack, http, binding, streaming=True)
            request = SendMessageRequest(message=new_text_message("fresh", role=Role.ROLE_USER))
            with pytest.raises((A2AError, A2AClientError), match=r"UPSTREAM_UNAVAILABLE|another principal") as raised:
                await _collect(client.send_message(request), received)
        raw = await _stream(stack, "mallory", "/a2a/raw/message:stream", _send("fresh"), "1.0")
        own = await _rpc(stack, "mallory", "GetTask", {"id": "task-of-mallory"})
    # The sender's own task went by; the event about the planner's task did not.
    assert [event.task.id for event in received] == ["task-of-mallory"]
    assert SECRET not in str(raised.value)
    assert raw.count("event: error") == 1
    assert SECRET not in raw
    assert HELD not in raw
    assert own.json()["result"]["id"] == "task-of-mallory"


async def test_an_answer_whose_task_cannot_be_recorded_is_not_relayed(tmp_path: Path, agent: ScriptedAgent) -> None:
    # Relayed with no owner recorded, the task would be anyone's to read next: fail closed.
    agent.handler = _agent(lambda call: Reply({"task": _task("task-unrecorded")}))

    async def broken(*args: Any) -> bool:
        raise StoreError("ownership store failed: disk I/O error")

    async with _stack(tmp_path, agent) as stack:
        with mock.patch.object(WorkflowOwners, "claim_in", broken):
            sent = await _rpc(stack, "planner", "SendMessage", _send("hello"))
    assert sent.status_code == 502, sent.text
    assert "cannot record who owns" in sent.json()["error"]["data"]["reason"]
    assert "task-unrecorded" not in sent.text


def _answers_with_held(call: Call) -> Reply:
    """An agent that answers a read of mallory's task with the planner's (a task id it maps
    to another, or a hostile agent): a send starts each caller's own task."""
    if "message" in call.params:
        return Reply({"task": _task("task-of-planner" if _text(call) == "start" else "task-of-mallory")})
    held = {**_task(HELD), "history": [{"messageId": "h", "parts": [{"text": SECRET}]}]}
    if "subscribe" in call.method.lower():
        return Reply([{"task": held}], events=True, chunked=True)
    return Reply(held)


@pytest.mark.parametrize("method", ["GetTask", "CancelTask", "SubscribeToTask"])
async def test_a_read_answered_with_another_callers_task_is_refused(
    tmp_path: Path, agent: ScriptedAgent, method: str
) -> None:
    # The request named the caller's own task and passed the ownership check; the answer
    # is read for its task too, or the agent could hand any caller another's state.
    agent.handler = _answers_with_held
    async with _stack(tmp_path, agent) as stack:
        await _rpc(stack, "planner", "SendMessage", _send("start"))
        await _rpc(stack, "mallory", "SendMessage", _send("mine"))
        if method == "SubscribeToTask":
            answer = await _stream(stack, "mallory", "/a2a/raw/tasks/task-of-mallory:subscribe", {}, "1.0")
        else:
            response = await _rpc(stack, "mallory", method, {"id": "task-of-mallory"})
            assert response.status_code == 502, response.text
            assert "another principal" in response.json()["error"]["data"]["reason"]
            answer = response.text
        own = await _rpc(stack, "planner", method if method != "SubscribeToTask" else "GetTask", {"id": HELD})
    assert SECRET not in answer
    assert HELD not in answer
    if method == "SubscribeToTask":
        assert answer.count("event: error") == 1
    # The planner reading its own task is answered as ever.
    assert own.status_code == 200, own.text
    assert own.json()["result"]["id"] == HELD
