"""A2A answers the proxy could not read but the a2a-sdk client can: gzip despite the
proxy's `Accept-Encoding: identity`, UTF-16, a BOM, NaN. The client (httpx, `json.loads`)
decodes them all; the task sniffer and the ListTasks filter read the bytes with orjson,
so (an attacker's probe) another caller's tasks were listed, and a task created through
such an answer had no owner, so anyone could read it."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fixtures.a2a_stack import A2aStack, a2a_stack
from fixtures.local_http import Handler, LocalHttp

POLICY = """\
apiVersion: bastion.dev/v1
kind: AgentPolicy
metadata: {name: a2a-answers, version: 1}
spec:
  default: deny
  rules:
    - id: everyone-everything
      match: {agents: ["planner", "mallory"], a2a: ["raw__*"]}
      effect: allow
"""
_A2A = {"Content-Type": "application/json", "A2A-Version": "1.0"}


class _RawAgent(LocalHttp):
    """A JSON-RPC A2A agent that answers in the encoding a test sets (`mode`)."""

    def __init__(self) -> None:
        self.mode = "identity"
        self.tasks: list[str] = []
        self.methods: list[str] = []
        agent = self

        class AgentHandler(Handler):
            protocol_version = "HTTP/1.1"  # chunked answers

            def do_POST(self) -> None:
                message = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
                method = message["method"]
                agent.methods.append(method)
                if method == "SendMessage":
                    task = f"task-{len(agent.tasks)}"
                    agent.tasks.append(task)
                    # History first: a large one puts the id far into the answer.
                    history = [{"role": "ROLE_USER", "parts": [{"text": "x" * (80 << 10)}]}]
                    state = {"contextId": "c", "status": {"state": "TASK_STATE_COMPLETED"}}
                    result: Any = {"task": {"history": history if agent.mode == "large" else [], "id": task, **state}}
                elif method == "GetTask":
                    result = {"id": message["params"]["id"], "contextId": "c"}
                elif method == "GetExtendedAgentCard":
                    here = f"http://{agent.addr}/"
                    result = {"name": "raw", "supportedInterfaces": [{"url": here, "protocolBinding": "JSONRPC"}]}
                else:  # ListTasks
                    result = {"tasks": [{"id": task, "contextId": "c"} for task in agent.tasks]}
                body, headers = _encode(agent.mode, {"jsonrpc": "2.0", "id": message["id"], "result": result})
                if agent.mode == "chunked":
                    self._chunked(body)
                else:
                    self.answer(203 if agent.mode == "203" else 200, body, headers)

            def _chunked(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for start in range(0, len(body), 16):
                    piece = body[start : start + 16]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")

        super().__init__(AgentHandler)

    def __enter__(self) -> _RawAgent:
        super().__enter__()
        return self


def _encode(mode: str, answer: Any) -> tuple[bytes, dict[str, str]]:
    text = json.dumps(answer)
    if mode == "gzip":
        return gzip.compress(text.encode()), {"Content-Encoding": "gzip"}
    if mode == "utf-16":  # no charset: json.loads tells UTF-16 from its bytes
        return text.encode("utf-16-le"), {}
    if mode == "utf-16-declared":
        return text.encode("utf-16"), {"Content-Type": "application/json; charset=utf-16"}
    if mode == "bom":
        return b"\xef\xbb\xbf" + text.encode(), {}
    return text.encode(), {}


@pytest.fixture
def agent() -> Iterator[_RawAgent]:
    with _RawAgent() as running:
        yield running


async def _rpc(stack: A2aStack, caller: str, method: str, params: dict[str, Any]) -> httpx.Response:
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    async with httpx.AsyncClient(base_url=stack.proxy, timeout=30) as http:
        return await http.post("/a2a/raw", content=body, headers={**stack.headers(caller), **_A2A})


_SEND = {"message": {"role": "ROLE_USER", "messageId": "m", "parts": [{"text": "hello"}]}}
_MODES = ["gzip", "utf-16", "utf-16-declared", "bom", "chunked", "203"]
#: Answers the client reads only after decoding what its headers declare: refused.
_NOT_RELAYED = ("gzip", "utf-16-declared")


@pytest.mark.parametrize("mode", _MODES)
async def test_a_list_answer_the_filter_cannot_read_never_shows_another_callers_task(
    tmp_path: Path, agent: _RawAgent, mode: str
) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    async with a2a_stack(tmp_path, tmp_path / "policy.yaml", {"raw": f"http://{agent.addr}/"}) as stack:
        sent = await _rpc(stack, "planner", "SendMessage", _SEND)
        planners = sent.json()["result"]["task"]["id"]
        agent.mode = mode
        listed = await _rpc(stack, "mallory", "ListTasks", {})
    assert planners not in _text(listed), listed.content
    if listed.status_code == 200 and "result" in listed.json():
        assert listed.json()["result"]["tasks"] == []


@pytest.mark.parametrize("mode", [*_MODES, "large"])
async def test_a_task_created_by_an_answer_in_another_encoding_still_belongs_to_its_sender(
    tmp_path: Path, agent: _RawAgent, mode: str
) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    async with a2a_stack(tmp_path, tmp_path / "policy.yaml", {"raw": f"http://{agent.addr}/"}) as stack:
        agent.mode = mode
        sent = await _rpc(stack, "planner", "SendMessage", _SEND)
        planners = agent.tasks[-1]
        agent.mode = "identity"
        foreign = await _rpc(stack, "mallory", "GetTask", {"id": planners})
    if mode in _NOT_RELAYED:
        # Bastion cannot read it, so nobody learns the task from it.
        assert sent.status_code == 502, sent.text
        assert sent.json()["error"]["message"] == "UPSTREAM_UNAVAILABLE"
        assert planners not in sent.text
    else:
        assert planners in _text(sent)
        assert foreign.status_code == 403, foreign.text
        assert agent.methods == ["SendMessage"]


def _text(response: httpx.Response) -> str:
    try:
        return str(response.json())
    except ValueError:
        return response.text


@pytest.mark.parametrize("mode", _MODES)
async def test_an_extended_card_in_another_encoding_never_names_the_agents_own_url(
    tmp_path: Path, agent: _RawAgent, mode: str
) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    async with a2a_stack(tmp_path, tmp_path / "policy.yaml", {"raw": f"http://{agent.addr}/"}) as stack:
        agent.mode = mode
        card = await _rpc(stack, "planner", "GetExtendedAgentCard", {})
    assert agent.addr not in _text(card), card.content
