"""A2A through Bastion with real a2a-sdk clients and a real a2a-sdk agent: every method
decided, journaled and forwarded, or blocked in the transport's error shape and never
seen by the agent (its own request log is the evidence)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.client.client import Client
from a2a.client.errors import A2AClientError
from a2a.helpers.proto_helpers import new_text_message
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    DeleteTaskPushNotificationConfigRequest,
    GetExtendedAgentCardRequest,
    GetTaskPushNotificationConfigRequest,
    GetTaskRequest,
    ListTaskPushNotificationConfigsRequest,
    Role,
    SendMessageConfiguration,
    SendMessageRequest,
    SubscribeToTaskRequest,
    TaskPushNotificationConfig,
    TaskState,
)
from a2a.utils.errors import A2AError
from fixtures.a2a_agent import Agent, a2a_agent
from fixtures.a2a_stack import A2aStack, a2a_stack, jsonrpc

pytestmark = pytest.mark.asyncio(loop_scope="module")

POLICY = """\
apiVersion: bastion.dev/v1
kind: AgentPolicy
metadata: {name: a2a-tests, version: 1}
spec:
  default: deny
  rules:
    - id: no-push-delete
      match: {a2a: ["echo__DeleteTaskPushNotificationConfig"]}
      effect: deny
    - id: planner-everything
      match: {agents: ["planner"], a2a: ["echo__*"]}
      effect: allow
    - id: reader-reads
      match: {agents: ["reader"], a2a: ["echo__GetTask", "echo__ListTasks", "echo__SubscribeToTask"]}
      effect: allow
"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def agent() -> AsyncIterator[Agent]:
    async with a2a_agent() as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory, agent: Agent) -> AsyncIterator[A2aStack]:
    home = tmp_path_factory.mktemp("a2a")
    policy_file = home / "a2a.yaml"
    policy_file.write_text(POLICY)
    async with a2a_stack(home, policy_file, {"echo": agent.url}) as running:
        yield running


def _message(text: str, *, immediately: bool = False) -> SendMessageRequest:
    return SendMessageRequest(
        message=new_text_message(text, role=Role.ROLE_USER),
        configuration=SendMessageConfiguration(return_immediately=immediately),
    )


async def _client(stack: A2aStack, http: httpx.AsyncClient, binding: str, *, streaming: bool = True) -> Client:
    config = ClientConfig(httpx_client=http, supported_protocol_bindings=[binding], streaming=streaming)
    return await ClientFactory(config).create_from_url(f"{stack.proxy}/a2a/echo")


def _rpc(method: str, params: dict[str, Any], msg_id: int | str = 1) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})


# --- the SDK client, both bindings ------------------------------------------------------


@pytest.mark.parametrize("binding", ["JSONRPC", "HTTP+JSON"])
async def test_sdk_client_sends_through_bastion_and_gets_the_agents_answer(
    stack: A2aStack, agent: Agent, binding: str
) -> None:
    async with httpx.AsyncClient(headers=stack.headers("planner")) as http:
        client = await _client(stack, http, binding)
        events = [event async for event in client.send_message(_message("hello"))]
    assert [event.WhichOneof("payload") for event in events] == ["task", "artifact_update", "status_update"]
    assert events[1].artifact_update.artifact.parts[0].text == "echo: hello"
    assert agent.methods()[-1] == ("SendStreamingMessage" if binding == "JSONRPC" else "POST /message:stream")


@pytest.mark.parametrize("binding", ["JSONRPC", "HTTP+JSON"])
async def test_task_lifecycle_get_subscribe_cancel_and_push_configs_through_bastion(
    stack: A2aStack, agent: Agent, binding: str
) -> None:
    async with httpx.AsyncClient(headers=stack.headers("planner")) as http:
        client = await _client(stack, http, binding, streaming=False)
        [sent] = [event async for event in client.send_message(_message("hold on", immediately=True))]
        task_id = sent.task.id
        got = await client.get_task(GetTaskRequest(id=task_id))
        assert got.id == task_id
        config = TaskPushNotificationConfig(task_id=task_id, id="hook-1", url="https://hooks.example.com/a2a")
        created = await client.create_task_push_notification_config(config)
        assert created.url == config.url
        fetched = await client.get_task_push_notification_config(
            GetTaskPushNotificationConfigRequest(task_id=task_id, id="hook-1")
        )
        assert fetched.url == config.url
        listed = await client.list_task_push_notification_configs(
            ListTaskPushNotificationConfigsRequest(task_id=task_id)
        )
        assert [item.id for item in listed.configs] == ["hook-1"]
        # Policy denies deleting push configs to everyone: the SDK surfaces the block.
        before = len(agent.received)
        # JSON-RPC: the -32003 error; HTTP+JSON: the 403 the SDK reports as such.
        with pytest.raises(A2AError if binding == "JSONRPC" else A2AClientError, match=r"POLICY_VIOLATION|403"):
            await client.delete_task_push_notification_config(
                DeleteTaskPushNotificationConfigRequest(task_id=task_id, id="hook-1")
            )
        assert len(agent.received) == before
        streaming = await _client(stack, http, binding)
        subscription = streaming.subscribe(SubscribeToTaskRequest(id=task_id))
        first = await anext(subscription)
        assert first.WhichOneof("payload") in ("task", "status_update")
        cancelled = await client.cancel_task(CancelTaskRequest(id=task_id))
        assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
        states = [event.status_update.status.state async for event in subscription if event.HasField("status_update")]
        assert states[-1] == TaskState.TASK_STATE_CANCELED


async def test_legacy_0_3_sdk_client_works_through_bastion(stack: A2aStack, agent: Agent) -> None:
    async with httpx.AsyncClient(headers=stack.headers("planner")) as http:
        card = await A2ACardResolver(http, f"{stack.proxy}/a2a/echo").get_agent_card()
        # The same agent offered as 0.3: the SDK then speaks 0.3 (`message/send`, `tasks/get`).
        for interface in card.supported_interfaces:
            interface.protocol_version = "0.3"
        config = ClientConfig(httpx_client=http, supported_protocol_bindings=["JSONRPC"], streaming=False)
        client = ClientFactory(config).create(card)
        [sent] = [event async for event in client.send_message(_message("old client"))]
        got = await client.get_task(GetTaskRequest(id=sent.task.id))
    assert got.artifacts[0].parts[0].text == "echo: old client"
    assert agent.methods()[-2:] == ["message/send", "tasks/get"]


# --- decisions per method ---------------------------------------------------------------

_SEND = {"message": {"messageId": "m-1", "role": "ROLE_USER", "parts": [{"text": "hi"}]}}
_SEND_03 = {"message": {"messageId": "m-1", "role": "user", "parts": [{"kind": "text", "text": "hi"}]}}
_HOOK = {"taskId": "t-none", "id": "c-1", "url": "https://hooks.example.com/x"}
#: method, params, whether `reader` may (policy: reads only)
METHOD_TABLE: list[tuple[str, dict[str, Any], bool]] = [
    ("SendMessage", _SEND, False),
    ("GetTask", {"id": "t-none"}, True),
    ("ListTasks", {}, True),
    ("CancelTask", {"id": "t-none"}, False),
    ("CreateTaskPushNotificationConfig", _HOOK, False),
    ("GetTaskPushNotificationConfig", {"taskId": "t-none", "id": "c-1"}, False),
    ("ListTaskPushNotificationConfigs", {"taskId": "t-none"}, False),
    ("DeleteTaskPushNotificationConfig", {"taskId": "t-none", "id": "c-1"}, False),
    ("GetExtendedAgentCard", {}, False),
    ("message/send", _SEND_03, False),
    ("tasks/get", {"id": "t-none"}, True),
    ("tasks/cancel", {"id": "t-none"}, False),
    ("tasks/pushNotificationConfig/set", {"taskId": "t-none", "pushNotificationConfig": {"url": "https://h"}}, False),
    ("tasks/pushNotificationConfig/get", {"id": "t-none"}, False),
    ("tasks/pushNotificationConfig/list", {"id": "t-none"}, False),
    ("tasks/pushNotificationConfig/delete", {"id": "t-none", "pushNotificationConfigId": "c"}, False),
    ("agent/getAuthenticatedExtendedCard", {}, False),
]


@pytest.mark.parametrize(("method", "params", "allowed"), METHOD_TABLE, ids=[row[0] for row in METHOD_TABLE])
async def test_every_jsonrpc_method_is_decided_and_only_allowed_ones_reach_the_agent(
    stack: A2aStack, agent: Agent, method: str, params: dict[str, Any], allowed: bool
) -> None:
    before = len(agent.received)
    response = await jsonrpc(stack, "echo", "reader", _rpc(method, params, "req-7"))
    assert response.status_code == 200
    answer = response.json()
    assert answer["id"] == "req-7"
    if allowed:
        assert agent.methods()[before:] == [method]
        assert answer.get("error", {}).get("code") != -32003
        return
    assert len(agent.received) == before
    error = answer["error"]
    assert (error["code"], error["message"]) == (-32003, "POLICY_VIOLATION")
    data = error["data"]
    assert data["rule_id"] in ("default", "no-push-delete")
    assert data["agent_id"] == "reader"
    assert data["blocked_action"]["target_agent"] == "echo"
    assert data["blocked_action"]["method"] == method
    assert data["violation_id"]


async def test_a_denied_send_is_journaled_with_its_rule(stack: A2aStack, agent: Agent) -> None:
    response = await jsonrpc(stack, "echo", "reader", _rpc("SendMessage", _SEND), **{"Bastion-Workflow-Id": "wf-deny"})
    assert response.json()["error"]["code"] == -32003
    assert response.headers["bastion-workflow-id"] == "wf-deny"
    [violation] = await stack.audited("wf-deny", 1)
    assert violation["rule_id"] == "default"
    assert violation["violation_id"] == response.json()["error"]["data"]["violation_id"]


REST_TABLE: list[tuple[str, str, dict[str, Any] | None, str, bool]] = [
    ("POST", "/message:send", _SEND, "POST /message:send", False),
    ("GET", "/tasks/t-none", None, "GET /tasks/t-none", True),
    ("GET", "/tasks?pageSize=5", None, "GET /tasks", True),
    ("POST", "/tasks/t-none:cancel", {}, "POST /tasks/t-none:cancel", False),
    ("GET", "/tasks/t-none/pushNotificationConfigs", None, "GET /tasks/t-none/pushNotificationConfigs", False),
    ("DELETE", "/tasks/t-none/pushNotificationConfigs/c-1", None, "-", False),
    ("GET", "/extendedAgentCard", None, "-", False),
    ("GET", "/v1/tasks/t-none", None, "GET /v1/tasks/t-none", True),
    ("POST", "/v1/message:send", _SEND_03, "-", False),
]


@pytest.mark.parametrize(("verb", "path", "body", "seen", "allowed"), REST_TABLE, ids=[r[0] + r[1] for r in REST_TABLE])
async def test_every_rest_route_is_decided_and_blocks_come_in_the_bindings_error_shape(
    stack: A2aStack, agent: Agent, verb: str, path: str, body: dict[str, Any] | None, seen: str, allowed: bool
) -> None:
    before = len(agent.received)
    async with httpx.AsyncClient(base_url=stack.proxy, headers=stack.headers("reader")) as http:
        content = orjson.dumps(body) if body is not None else None
        response = await http.request(verb, f"/a2a/echo{path}", content=content)
    if allowed:
        assert agent.methods()[before:] == [seen]
        assert response.status_code != 403
        return
    assert len(agent.received) == before
    assert response.status_code == 403
    error = response.json()["error"]
    assert (error["code"], error["status"]) == (403, "PERMISSION_DENIED")
    [info] = error["details"]
    assert info["reason"] == "POLICY_VIOLATION"
    assert info["metadata"]["rule_id"] in ("default", "no-push-delete")
    assert info["metadata"]["agent_id"] == "reader"
    assert info["metadata"]["violation_id"]


# --- streaming ---------------------------------------------------------------------------


@pytest.mark.parametrize("binding", ["JSONRPC", "HTTP+JSON"])
async def test_stream_events_cross_bastion_before_the_task_finishes(
    stack: A2aStack, agent: Agent, binding: str
) -> None:
    gate = f"stream-{binding}"
    async with httpx.AsyncClient(headers=stack.headers("planner")) as http:
        client = await _client(stack, http, binding)
        stream = client.send_message(_message(f"gate {gate}"))
        first = await anext(stream)
        second = await anext(stream)
        # The agent is still waiting on the gate: these events were relayed as they came.
        assert not agent.gate(gate).is_set()
        assert first.WhichOneof("payload") == "task"
        assert second.status_update.status.state == TaskState.TASK_STATE_WORKING
        agent.release(gate)
        rest = [event async for event in stream]
    assert rest[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED


# --- the agent card ---------------------------------------------------------------------


async def test_card_points_only_at_bastion_and_keeps_its_cache_headers(stack: A2aStack, agent: Agent) -> None:
    async with httpx.AsyncClient(base_url=stack.proxy, headers=stack.headers("reader")) as http:
        response = await http.get("/a2a/echo/.well-known/agent-card.json")
        assert response.status_code == 200
        card = response.json()
        direct = await http.get(f"{agent.url}/.well-known/agent-card.json")
        assert response.headers["etag"] == direct.headers["etag"]
        assert response.headers["cache-control"] == "public, max-age=60"
        revalidated = await http.get(
            "/a2a/echo/.well-known/agent-card.json", headers={"If-None-Match": response.headers["etag"]}
        )
    base = f"{stack.proxy}/a2a/echo"
    assert [(i["url"], i["protocolBinding"]) for i in card["supportedInterfaces"]] == [
        (base, "JSONRPC"),
        (base, "HTTP+JSON"),
    ]
    assert agent.url.split("//")[1] not in response.text
    assert card["skills"] == direct.json()["skills"]
    assert revalidated.status_code == 304


@pytest.mark.parametrize("binding", ["JSONRPC", "HTTP+JSON"])
async def test_extended_card_is_rewritten_like_the_public_one(stack: A2aStack, agent: Agent, binding: str) -> None:
    async with httpx.AsyncClient(headers=stack.headers("planner")) as http:
        client = await _client(stack, http, binding)
        card = await client.get_extended_agent_card(GetExtendedAgentCardRequest())
    assert [(i.url, i.protocol_binding) for i in card.supported_interfaces] == [
        (f"{stack.proxy}/a2a/echo", "JSONRPC"),
        (f"{stack.proxy}/a2a/echo", "HTTP+JSON"),
    ]
    assert agent.methods()[-1] in ("GetExtendedAgentCard", "GET /extendedAgentCard")


# --- transparency -----------------------------------------------------------------------


async def test_a2a_version_is_passed_through_and_an_unsupported_one_is_answered_by_the_agent(
    stack: A2aStack, agent: Agent
) -> None:
    body = _rpc("GetTask", {"id": "t-none"})
    through = await jsonrpc(stack, "echo", "reader", body, **{"A2A-Version": "9.9"})
    async with httpx.AsyncClient() as http:
        headers = {"A2A-Version": "9.9", "content-type": "application/json"}
        direct = await http.post(agent.url, content=body, headers=headers)
    assert agent.methods()[-2:] == ["GetTask", "GetTask"]
    assert through.json()["error"] == direct.json()["error"]
