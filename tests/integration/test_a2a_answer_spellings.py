"""Agents' answers under the spellings the a2a-sdk client reads and Bastion used not to:
protobuf's reader (1.0, 0.3 HTTP+JSON) takes a field's proto name (`task_id`,
`next_page_token`, `supported_interfaces`, 0.3's `msg`) as well as its JSON name, and the
0.3 JSON-RPC client validates by name too and guesses a result without `kind`. Each test
first shows, with the real client through Bastion, that the client does read the answer,
then that Bastion read it as well: the task has an owner, the page is filtered, the card
points at Bastion. Also answers whose Content-Type the client reads otherwise than a
media-type check would (a single answer labelled an event stream)."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.compat.v0_3 import a2a_v0_3_pb2
from a2a.compat.v0_3 import types as types_v03
from a2a.helpers.proto_helpers import new_text_message
from a2a.types.a2a_pb2 import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    GetExtendedAgentCardRequest,
    ListTasksRequest,
    Role,
    SendMessageRequest,
    StreamResponse,
)
from fixtures.a2a_scripted import Call, Reply, ScriptedAgent, scripted_agent
from fixtures.a2a_stack import A2aStack, a2a_stack
from google.protobuf.json_format import ParseDict

POLICY = """\
apiVersion: bastion.dev/v1
kind: AgentPolicy
metadata: {name: a2a-spellings, version: 1}
spec:
  default: deny
  rules:
    - id: everyone-everything
      match: {agents: ["planner", "mallory"], a2a: ["raw__*"]}
      effect: allow
"""
TASK = "task-of-planner"
_A2A = {"Content-Type": "application/json", "A2A-Version": "1.0"}


def _task(task_id: str) -> dict[str, Any]:
    return {"id": task_id, "contextId": "c", "status": {"state": "TASK_STATE_COMPLETED"}}


def _reads(send: Reply) -> Callable[[Call], Reply]:
    """An agent answering every send with `send` and every read with the task it names."""

    def handler(call: Call) -> Reply:
        if call.method in ("SendMessage", "SendStreamingMessage", "message/send", "POST /v1/message:send"):
            return send
        return Reply(_task(call.params.get("id", "")))

    return handler


@pytest.fixture
def agent() -> Iterator[ScriptedAgent]:
    with scripted_agent(_reads(Reply({}))) as running:
        yield running


def _stack(tmp_path: Path, agent: ScriptedAgent) -> AbstractAsyncContextManager[A2aStack]:
    (tmp_path / "policy.yaml").write_text(POLICY)
    return a2a_stack(tmp_path, tmp_path / "policy.yaml", {"raw": agent.url})


def _client_card(stack: A2aStack, binding: str, version: str, *, streaming: bool = False) -> AgentCard:
    url = f"{stack.proxy}/a2a/raw"
    return AgentCard(
        name="raw",
        supported_interfaces=[AgentInterface(url=url, protocol_binding=binding, protocol_version=version)],
        capabilities=AgentCapabilities(streaming=streaming, extended_agent_card=True),
    )


async def _sdk_send(stack: A2aStack, binding: str, version: str, *, streaming: bool) -> list[StreamResponse]:
    """What the real a2a-sdk client, as planner, makes of the agent's answer to a send."""
    async with httpx.AsyncClient(headers=stack.headers("planner"), timeout=30) as http:
        config = ClientConfig(httpx_client=http, supported_protocol_bindings=[binding], streaming=streaming)
        client = ClientFactory(config).create(_client_card(stack, binding, version, streaming=streaming))
        request = SendMessageRequest(message=new_text_message("hello", role=Role.ROLE_USER))
        return [event async for event in client.send_message(request)]


async def _rest_send_03(stack: A2aStack) -> str:
    """The task the a2a-sdk 0.3 HTTP+JSON client's reader (protobuf, the 0.3 proto) finds in
    the answer to a send (the request sent by hand; that client's own sends go through too:
    tests/integration/test_a2a_rest03.py)."""
    message = {"messageId": "m", "role": "ROLE_USER", "content": [{"text": "hi"}]}
    async with httpx.AsyncClient(base_url=stack.proxy, timeout=30) as http:
        headers = {**stack.headers("planner"), **_A2A, "A2A-Version": "0.3"}
        sent = await http.post("/a2a/raw/v1/message:send", content=orjson.dumps({"message": message}), headers=headers)
    read = ParseDict(sent.json(), a2a_v0_3_pb2.SendMessageResponse(), ignore_unknown_fields=True)
    assert read.WhichOneof("payload") == "msg"
    return read.msg.task_id


def _task_of(event: StreamResponse) -> str:
    payload = event.WhichOneof("payload")
    if payload == "task":
        return event.task.id
    if payload == "message":
        return event.message.task_id
    return event.status_update.task_id if payload == "status_update" else event.artifact_update.task_id


async def _rpc(stack: A2aStack, caller: str, method: str, params: dict[str, Any]) -> httpx.Response:
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    async with httpx.AsyncClient(base_url=stack.proxy, timeout=30) as http:
        return await http.post("/a2a/raw", content=body, headers={**stack.headers(caller), **_A2A})


_MESSAGE = {"message_id": "m1", "task_id": TASK, "role": "ROLE_AGENT", "parts": [{"text": "done"}]}
_MESSAGE_03 = {"kind": "message", "message_id": "m1", "task_id": TASK, "role": "agent", "parts": []}
_STATUS = {"task_id": TASK, "context_id": "c", "status": {"state": "TASK_STATE_WORKING"}}
#: (binding, version, streaming, the agent's answer to the send)
SNAKE_SENDS = {
    "1.0 message.task_id": ("JSONRPC", "1.0", False, Reply({"message": _MESSAGE})),
    "1.0 stream status_update": ("JSONRPC", "1.0", True, Reply([{"status_update": _STATUS}], events=True)),
    "0.3 message task_id": ("JSONRPC", "0.3", False, Reply(_MESSAGE_03)),
    "0.3 task without kind": (
        "JSONRPC",
        "0.3",
        False,
        Reply({"id": TASK, "context_id": "c", "status": {"state": "completed"}}),
    ),
    "0.3 HTTP+JSON msg": ("HTTP+JSON", "0.3", False, Reply({"msg": {"message_id": "m1", "task_id": TASK}})),
    # Labelled an event stream, yet a single answer the client reads as JSON.
    "1.0 send as event-stream": (
        "JSONRPC",
        "1.0",
        False,
        Reply({"task": _task(TASK)}, content_type="text/event-stream", chunked=True),
    ),
}


@pytest.mark.parametrize("case", SNAKE_SENDS)
async def test_a_task_an_answer_names_in_any_spelling_the_client_reads_belongs_to_its_sender(
    tmp_path: Path, agent: ScriptedAgent, case: str
) -> None:
    binding, version, streaming, answer = SNAKE_SENDS[case]
    agent.handler = _reads(answer)
    async with _stack(tmp_path, agent) as stack:
        if binding == "HTTP+JSON":
            assert await _rest_send_03(stack) == TASK
        else:
            events = await _sdk_send(stack, binding, version, streaming=streaming)
            assert [_task_of(event) for event in events] == [TASK]  # the client learnt the task
        before = len(agent.calls)
        foreign = await _rpc(stack, "mallory", "GetTask", {"id": TASK})
        own = await _rpc(stack, "planner", "GetTask", {"id": TASK})
    assert foreign.status_code == 403, foreign.text
    assert "created by another principal" in foreign.json()["error"]["data"]["reason"]
    assert own.json()["result"]["id"] == TASK
    assert agent.methods()[before:] == ["GetTask"]  # only the owner's read reached the agent


@pytest.mark.parametrize(
    "answer",
    [
        {"message": {"taskId": TASK, "task_id": "another-task", "messageId": "m"}},
        {"task": _task(TASK), "statusUpdate": {"taskId": "another-task"}},
        {"message": {"messageId": "m", "taskId": TASK}, "msg": {"messageId": "m", "taskId": "another-task"}},
    ],
)
async def test_an_answer_naming_two_tasks_or_one_field_twice_differently_is_not_relayed(
    tmp_path: Path, agent: ScriptedAgent, answer: dict[str, Any]
) -> None:
    agent.handler = _reads(Reply(answer))
    async with _stack(tmp_path, agent) as stack:
        sent = await _rpc(stack, "planner", "SendMessage", {"message": {"messageId": "m", "parts": []}})
    assert sent.status_code == 502, sent.text
    assert "another-task" not in sent.text


def _listing(tasks: list[str], **extra: Any) -> Callable[[Call], Reply]:
    """Sends create `tasks` in turn; ListTasks answers all of them with `extra`."""
    created = iter(tasks)

    def handler(call: Call) -> Reply:
        if call.method == "SendMessage":
            return Reply({"task": _task(next(created))})
        return Reply({"tasks": [_task(task) for task in tasks], **extra.get("fields", {})}, **extra.get("reply", {}))

    return handler


async def _sdk_list(stack: A2aStack, caller: str) -> Any:
    async with httpx.AsyncClient(headers=stack.headers(caller), timeout=30) as http:
        config = ClientConfig(httpx_client=http, supported_protocol_bindings=["JSONRPC"], streaming=False)
        return await ClientFactory(config).create(_client_card(stack, "JSONRPC", "1.0")).list_tasks(ListTasksRequest())


_SEND = {"message": {"messageId": "m", "role": "ROLE_USER", "parts": [{"text": "hi"}]}}
#: The agent's cursor: base64 of the last task's id, as common agents make it.
_CURSOR = base64.b64encode(TASK.encode()).decode()


@pytest.mark.parametrize(
    "listing",
    [
        {"fields": {"next_page_token": _CURSOR, "total_size": 2}},
        {"reply": {"content_type": "text/event-stream", "chunked": True}},
    ],
    ids=["snake_case token and size", "single answer as event-stream"],
)
async def test_a_list_page_the_client_reads_shows_no_other_callers_task_nor_its_cursor(
    tmp_path: Path, agent: ScriptedAgent, listing: dict[str, Any]
) -> None:
    agent.handler = _listing([TASK, "task-of-mallory"], **listing)
    async with _stack(tmp_path, agent) as stack:
        assert (await _rpc(stack, "planner", "SendMessage", _SEND)).status_code == 200
        assert (await _rpc(stack, "mallory", "SendMessage", _SEND)).status_code == 200
        page = await _sdk_list(stack, "mallory")
    assert [task.id for task in page.tasks] == ["task-of-mallory"]
    assert TASK not in str(page)
    assert _CURSOR not in str(page)
    if "fields" in listing:
        assert page.next_page_token.startswith("bst1.")  # sealed: the client read it
        assert page.total_size == 0  # other pages unknown: unset


async def test_a_stream_type_one_client_reads_as_a_stream_and_another_not_is_not_relayed(
    tmp_path: Path, agent: ScriptedAgent
) -> None:
    # The a2a-sdk looks for "text/event-stream" case-sensitively, so it reads this single
    # JSON answer whole and learns the task; a media-type reader sees an (empty) stream.
    agent.handler = _reads(Reply({"task": _task(TASK)}, content_type="Text/Event-Stream", chunked=True))
    async with _stack(tmp_path, agent) as stack:
        sent = await _rpc(stack, "planner", "SendStreamingMessage", _SEND)
    assert sent.status_code == 502, sent.text
    assert TASK not in sent.text


def _snake_card(url: str) -> dict[str, Any]:
    interfaces = [{"url": url, "protocol_binding": "JSONRPC", "protocol_version": "1.0"}]
    return {"name": "raw", "supported_interfaces": interfaces, "capabilities": {"extended_agent_card": True}}


def _snake_card_03(url: str) -> dict[str, Any]:
    return {
        "name": "raw",
        "description": "d",
        "version": "1",
        "url": url,
        "preferred_transport": "HTTP+JSON",
        "additional_interfaces": [{"url": url, "transport": "JSONRPC"}],
        "capabilities": {},
        "default_input_modes": [],
        "default_output_modes": [],
        "skills": [],
    }


def _serving(agent: ScriptedAgent, card: Callable[[str], dict[str, Any]], status: int = 200) -> None:
    agent.handler = lambda call: Reply(card(agent.url), status=status)


@pytest.mark.parametrize(("status", "card"), [(200, _snake_card), (203, _snake_card), (200, _snake_card_03)])
async def test_a_public_card_in_any_spelling_or_2xx_the_client_reads_points_only_at_bastion(
    tmp_path: Path, agent: ScriptedAgent, status: int, card: Callable[[str], dict[str, Any]]
) -> None:
    _serving(agent, card, status)
    async with _stack(tmp_path, agent) as stack, httpx.AsyncClient(headers=stack.headers("planner")) as http:
        resolved = await A2ACardResolver(http, f"{stack.proxy}/a2a/raw").get_agent_card()
        raw = (await http.get(f"{stack.proxy}/a2a/raw/.well-known/agent-card.json")).json()
    urls = [interface.url for interface in resolved.supported_interfaces]
    assert urls
    assert all(url.startswith(f"{stack.proxy}/a2a/raw") for url in urls), urls
    # And as the 0.3 SDK reads a card (pydantic, by name as well as by alias).
    if card is _snake_card_03:
        legacy = types_v03.AgentCard.model_validate(raw)
        assert agent.addr not in str(legacy.url) + str(legacy.additional_interfaces), legacy


async def test_an_extended_card_in_snake_case_points_only_at_bastion(tmp_path: Path, agent: ScriptedAgent) -> None:
    agent.handler = lambda call: Reply((_snake_card_03 if call.method.startswith("agent/") else _snake_card)(agent.url))
    async with _stack(tmp_path, agent) as stack, httpx.AsyncClient(headers=stack.headers("planner")) as http:
        config = ClientConfig(httpx_client=http, supported_protocol_bindings=["JSONRPC"], streaming=False)
        client = ClientFactory(config).create(_client_card(stack, "JSONRPC", "1.0"))
        extended = await client.get_extended_agent_card(GetExtendedAgentCardRequest())
        legacy = await _rpc(stack, "planner", "agent/getAuthenticatedExtendedCard", {})
    assert [interface.url for interface in extended.supported_interfaces] == [f"{stack.proxy}/a2a/raw"]
    # As the 0.3 client reads the legacy method's answer (pydantic, by name as well).
    read = types_v03.AgentCard.model_validate(legacy.json()["result"])
    assert agent.addr not in str(read.url) + str(read.additional_interfaces), read


async def test_a_card_giving_its_interfaces_twice_differently_is_not_relayed(
    tmp_path: Path, agent: ScriptedAgent
) -> None:
    def both(url: str) -> dict[str, Any]:
        bastion_side = [{"url": url, "protocolBinding": "JSONRPC"}]
        direct = [{"url": "http://agent.elsewhere.example/", "protocolBinding": "JSONRPC"}]
        return {"name": "raw", "supportedInterfaces": bastion_side, "supported_interfaces": direct}

    _serving(agent, both)
    async with _stack(tmp_path, agent) as stack, httpx.AsyncClient(headers=stack.headers("planner")) as http:
        public = await http.get(f"{stack.proxy}/a2a/raw/.well-known/agent-card.json")
        extended = await _rpc(stack, "planner", "GetExtendedAgentCard", {})
    assert public.status_code == 502, public.text
    assert extended.status_code == 502, extended.text
    assert "elsewhere" not in public.text + extended.text
