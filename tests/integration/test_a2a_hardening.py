"""Hostile and broken A2A requests: each gets the transport's precise error, is journaled,
and nothing reaches the agent undecided (the agent's own request log is the evidence)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
from fixtures.a2a_agent import Agent, a2a_agent
from fixtures.a2a_stack import A2aStack, a2a_stack, jsonrpc

pytestmark = pytest.mark.asyncio(loop_scope="module")

POLICY = """\
apiVersion: bastion.dev/v1
kind: AgentPolicy
metadata: {name: a2a-hardening, version: 1}
spec:
  default: deny
  rules:
    - id: everyone-everything
      match: {a2a: ["echo__*"]}
      effect: allow
"""
MAX_BODY = 64 * 1024


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def agent() -> AsyncIterator[Agent]:
    async with a2a_agent() as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory, agent: Agent) -> AsyncIterator[A2aStack]:
    home = tmp_path_factory.mktemp("a2a-hardening")
    (home / "policy.yaml").write_text(POLICY)
    async with a2a_stack(home, home / "policy.yaml", {"echo": agent.url}, max_body=MAX_BODY) as running:
        yield running


def _rpc(method: str, params: Any, **extra: Any) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": 9, "method": method, "params": params, **extra})


def _nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"k": value}
    return value


_SEND = {"message": {"messageId": "m", "role": "ROLE_USER", "parts": [{"text": "hi"}]}}
#: raw body, JSON-RPC code, Bastion code in the journal
BAD_JSONRPC: list[tuple[str, bytes, int, str]] = [
    ("not-json", b'{"jsonrpc": "2.0", "id": 1, "method": ', -32700, "bastion.protocol.parse_error"),
    ("batch", b"[" + _rpc("SendMessage", _SEND) + b"]", -32600, "bastion.protocol.invalid_request"),
    (
        "no-version",
        b'{"id": 1, "method": "GetTask", "params": {"id": "t"}}',
        -32600,
        "bastion.protocol.invalid_request",
    ),
    (
        "notification",
        b'{"jsonrpc": "2.0", "method": "CancelTask", "params": {"id": "t"}}',
        -32600,
        "bastion.protocol.invalid_request",
    ),
    ("response", b'{"jsonrpc": "2.0", "id": 1, "result": {}}', -32600, "bastion.protocol.invalid_request"),
    ("params-list", _rpc("GetTask", ["t"]), -32602, "bastion.protocol.invalid_params"),
    (
        "deep-params",
        _rpc("SendMessage", {"metadata": _nested(40), **_SEND}),
        -32602,
        "bastion.protocol.arguments_too_large",
    ),
    (
        "wide-params",
        _rpc("SendMessage", {"metadata": {"v": [0] * 5000}, **_SEND}),
        -32602,
        "bastion.protocol.arguments_too_large",
    ),
    ("lowercase", _rpc("sendmessage", _SEND), -32601, "bastion.protocol.method_not_allowed"),
    ("trailing-space", _rpc("SendMessage ", _SEND), -32601, "bastion.protocol.method_not_allowed"),
    ("zero-width", _rpc("Send\u200bMessage", _SEND), -32601, "bastion.protocol.method_not_allowed"),
    ("fullwidth", _rpc("\uff33endMessage", _SEND), -32601, "bastion.protocol.method_not_allowed"),
    ("legacy-case", _rpc("Message/Send", _SEND), -32601, "bastion.protocol.method_not_allowed"),
    ("a2a-0.2-name", _rpc("tasks/send", _SEND), -32601, "bastion.protocol.method_not_allowed"),
    ("vendor", _rpc("x/debugDump", {}), -32601, "bastion.protocol.method_not_allowed"),
    # A key given twice: decided on the last copy, read by an agent that keeps the first.
    (
        "method-twice",
        b'{"jsonrpc":"2.0","id":9,"method":"CancelTask","params":{"id":"t"},"method":"GetTask"}',
        -32600,
        "bastion.protocol.invalid_request",
    ),
    (
        "task-id-twice",
        b'{"jsonrpc": "2.0", "id": 9, "method": "GetTask", "params": {"id": "mine", "id": "theirs"}}',
        -32600,
        "bastion.protocol.invalid_request",
    ),
]


@pytest.mark.parametrize(("raw", "code", "audited"), [row[1:] for row in BAD_JSONRPC], ids=[r[0] for r in BAD_JSONRPC])
async def test_bad_jsonrpc_gets_a_precise_error_is_journaled_and_never_forwarded(
    stack: A2aStack, agent: Agent, raw: bytes, code: int, audited: str
) -> None:
    before = len(agent.received)
    response = await jsonrpc(stack, "echo", "mallory", raw)
    assert response.status_code == 200
    error = response.json()["error"]
    assert error["code"] == code
    assert error["data"]["reason"]
    assert len(agent.received) == before
    await stack.audited("bastion.rejected", 1, rule_id=audited, agent_id="mallory")


async def test_a_case_variant_of_a_method_is_named_in_the_error(stack: A2aStack) -> None:
    response = await jsonrpc(stack, "echo", "mallory", _rpc("getTask", {"id": "t"}))
    assert "did you mean 'GetTask'" in response.json()["error"]["data"]["reason"]


@pytest.mark.parametrize(
    ("headers", "status", "audited"),
    [
        ({}, 401, "bastion.auth.unauthenticated"),
        ({"Authorization": "Bearer not-a-token"}, 401, "bastion.auth.unauthenticated"),
        ({"Authorization": "Basic bWFsbG9yeTpwdw=="}, 401, "bastion.auth.unauthenticated"),
    ],
    ids=["no-token", "bad-token", "basic-auth"],
)
async def test_unauthenticated_requests_get_401_before_anything_else(
    stack: A2aStack, agent: Agent, headers: dict[str, str], status: int, audited: str
) -> None:
    before = len(agent.received)
    async with httpx.AsyncClient(base_url=stack.proxy) as http:
        for path in ("/a2a/echo", "/a2a/echo/message:send"):
            response = await http.post(path, content=_rpc("SendMessage", _SEND), headers=headers)
            assert response.status_code == status
            assert response.headers["www-authenticate"] == "Bearer"
        card = await http.get("/a2a/echo/.well-known/agent-card.json", headers=headers)
        assert card.status_code == status
    assert len(agent.received) == before
    await stack.audited("bastion.rejected", 1, rule_id=audited)


async def test_oversized_body_is_refused_with_413_and_not_forwarded(stack: A2aStack, agent: Agent) -> None:
    before = len(agent.received)
    part = {"text": "x" * (MAX_BODY + 1)}
    raw = _rpc("SendMessage", {"message": {"messageId": "m", "role": "ROLE_USER", "parts": [part]}})
    response = await jsonrpc(stack, "echo", "mallory", raw)
    assert response.status_code == 413
    async with httpx.AsyncClient(base_url=stack.proxy, headers=stack.headers("mallory")) as http:
        rest = await http.post("/a2a/echo/message:send", content=raw)
    assert rest.status_code == 413
    assert rest.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert len(agent.received) == before


BAD_REST: list[tuple[str, str, bytes | None, int]] = [
    ("GET", "/tasks/..%2F..%2Fadmin", None, 400),
    ("GET", "/tasks/a%2Fb", None, 400),
    ("GET", "/tasks/%2e%2e", None, 400),
    ("GET", "/tasks//x", None, 400),
    ("GET", "/a/b/tasks/t", None, 404),
    ("PUT", "/tasks/t", b"{}", 405),
    ("POST", "/message:sendx", b"{}", 404),
    ("POST", "/message:send", b"[1]", 400),
    ("POST", "/message:send", b"{not json", 400),
    ("POST", "/tasks/t-1:cancel", b'{"id": "t-2"}', 400),
    ("GET", "/tasks/t-1?id=t-2", None, 400),
    # More than twice the values the stack's budget (2,000) allows: refused before parsing.
    ("POST", "/message:send", b'{"metadata": {"v": [' + b"0," * 5000 + b"0]}}", 400),
    ("POST", "/message:send", b'{"message": {"messageId": "a"}, "message": {"messageId": "b"}}', 400),
]


@pytest.mark.parametrize(("verb", "path", "body", "status"), BAD_REST, ids=[f"{r[0]} {r[1]}" for r in BAD_REST])
async def test_bad_rest_requests_get_the_bindings_error_body_and_are_not_forwarded(
    stack: A2aStack, agent: Agent, verb: str, path: str, body: bytes | None, status: int
) -> None:
    before = len(agent.received)
    async with httpx.AsyncClient(base_url=stack.proxy, headers=stack.headers("mallory")) as http:
        response = await http.request(verb, f"/a2a/echo{path}", content=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == status
    assert error["details"][0]["metadata"]["violation_id"]
    assert len(agent.received) == before


async def test_unknown_agent_foreign_host_and_duplicate_version_header_are_refused(
    stack: A2aStack, agent: Agent
) -> None:
    before = len(agent.received)
    body = _rpc("GetTask", {"id": "t"})
    async with httpx.AsyncClient(base_url=stack.proxy, headers=stack.headers("mallory")) as http:
        assert (await http.post("/a2a/nobody", content=body)).status_code == 404
        assert (await http.post("/a2a/echo", content=body, headers={"Host": "evil.example.com"})).status_code == 403
        assert (await http.get("/a2a/echo")).status_code == 405
        twice = [("A2A-Version", "1.0"), ("A2A-Version", "0.3"), ("content-type", "application/json")]
        request = http.build_request("POST", "/a2a/echo", content=body)
        request.headers = httpx.Headers([*request.headers.multi_items(), *twice])
        assert (await http.send(request)).status_code == 400
    assert len(agent.received) == before


async def test_the_agent_sees_the_workflow_but_never_the_callers_credentials(stack: A2aStack, agent: Agent) -> None:
    seen: list[dict[str, str]] = []
    agent.on_request = lambda headers: seen.append(headers)
    try:
        response = await jsonrpc(
            stack, "echo", "planner", _rpc("GetTask", {"id": "t"}), **{"Bastion-Workflow-Id": "wf-propagate"}
        )
    finally:
        agent.on_request = None
    [headers] = seen
    assert "authorization" not in headers
    assert headers["bastion-workflow-id"] == "wf-propagate"
    assert headers["bastion-node-id"] == response.headers["bastion-node-id"]


async def test_another_callers_task_id_is_refused_and_journaled_with_the_reader(stack: A2aStack, agent: Agent) -> None:
    headers = {"Bastion-Workflow-Id": "wf-alice", "A2A-Version": "1.0"}
    sent = await jsonrpc(stack, "echo", "alice", _rpc("SendMessage", _SEND), **headers)
    task_id = sent.json()["result"]["task"]["id"]
    before = list(agent.methods())
    peek = await jsonrpc(stack, "echo", "mallory", _rpc("GetTask", {"id": task_id}), **{"Bastion-Workflow-Id": "wf-m"})
    assert peek.status_code == 403
    assert agent.methods() == before
    refused = await stack.audited("bastion.rejected", 1, rule_id="bastion.a2a.task_foreign")
    assert refused[0]["agent_id"] == "mallory"
