"""An agent's redirect is never relayed: its `Location` names the agent itself, and a
client that follows redirects would fetch the agent's own card (not Bastion's rewrite) or
send its message straight to the agent, around every decision. The card, the extended
card, a send and a read are each answered with a structured 502 instead, and the
redirect's target never reaches the client; a card revalidation's 304 still passes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fixtures.a2a_stack import A2aStack, a2a_stack
from fixtures.graphapi import auditor_token, poll
from fixtures.local_http import Handler, LocalHttp

POLICY = """\
apiVersion: bastion.dev/v1
kind: AgentPolicy
metadata: {name: a2a-redirects, version: 1}
spec:
  default: deny
  rules:
    - id: planner-everything
      match: {agents: ["planner"], a2a: ["moved__*"]}
      effect: allow
"""
_A2A = {"Content-Type": "application/json", "A2A-Version": "1.0"}


class _Redirecting(Handler):
    """Sends every request to the same path on itself (307 keeps a POST a POST); answers
    a revalidation of its card with 304 (and, wrongly, a Location)."""

    status = 302
    seen: list[str] = []

    def _moved(self) -> None:
        self.seen.append(f"{self.command} {self.path}")
        location = f"http://{self.headers.get('Host', '')}{self.path}"  # the agent itself
        if self.headers.get("If-None-Match"):
            self.answer(304, b"", {"Location": location, "ETag": '"card-1"'})
            return
        self.answer(self.status, b"", {"Location": location})

    def do_GET(self) -> None:
        self._moved()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._moved()


@pytest.fixture
def agent(request: pytest.FixtureRequest) -> Iterator[tuple[str, type[_Redirecting]]]:
    handler = type("Redirecting", (_Redirecting,), {"status": getattr(request, "param", 302), "seen": []})
    with LocalHttp(handler) as server:
        yield server.addr, handler


@pytest.fixture
async def stack(tmp_path: Path, agent: tuple[str, type[_Redirecting]]) -> AsyncIterator[A2aStack]:
    (tmp_path / "policy.yaml").write_text(POLICY)
    async with a2a_stack(tmp_path, tmp_path / "policy.yaml", {"moved": f"http://{agent[0]}/"}) as running:
        yield running


def _rpc(method: str, params: dict[str, Any]) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": 7, "method": method, "params": params})


_SEND = {"message": {"messageId": "m", "role": "ROLE_USER", "parts": [{"text": "hi"}]}}


@pytest.mark.parametrize("agent", [301, 302, 303, 307, 308], indirect=True)
async def test_no_redirect_reaches_the_client_on_any_route(
    stack: A2aStack, agent: tuple[str, type[_Redirecting]]
) -> None:
    addr, handler = agent
    # A client that follows redirects, as many do: it must stay on Bastion.
    async with httpx.AsyncClient(
        base_url=stack.proxy, headers=stack.headers("planner"), follow_redirects=True, timeout=30
    ) as http:
        answers = {
            "card": await http.get("/a2a/moved/.well-known/agent-card.json"),
            "0.3 card": await http.get("/a2a/moved/.well-known/agent.json"),
            "REST extended card": await http.get("/a2a/moved/extendedAgentCard", headers=_A2A),
            "REST send": await http.post("/a2a/moved/message:send", content=orjson.dumps(_SEND), headers=_A2A),
            "REST get": await http.get("/a2a/moved/tasks/t-1", headers=_A2A),
            "JSON-RPC send": await http.post("/a2a/moved", content=_rpc("SendMessage", _SEND), headers=_A2A),
            "JSON-RPC get": await http.post("/a2a/moved", content=_rpc("GetTask", {"id": "t-1"}), headers=_A2A),
            "JSON-RPC extended card": await http.post(
                "/a2a/moved", content=_rpc("GetExtendedAgentCard", {}), headers=_A2A
            ),
        }
        sent_node = answers["JSON-RPC send"].headers["bastion-node-id"]
        workflow = answers["JSON-RPC send"].headers["bastion-workflow-id"]
    # Each request reached the agent once, through Bastion; none was followed to it.
    assert len(handler.seen) == len(answers), handler.seen
    for name, response in answers.items():
        assert response.status_code == 502, (name, response.status_code, response.text)
        assert "location" not in response.headers, name
        assert addr not in response.text, name
        assert not response.history, name  # nothing was relayed for the client to follow
        if name.startswith("JSON-RPC"):
            error = response.json()["error"]
            assert (error["code"], error["message"]) == (-32603, "UPSTREAM_UNAVAILABLE"), name
            assert "redirect" in error["data"]["reason"], name
        else:
            detail = response.json()["error"]["details"][0]
            assert (detail["reason"], detail["domain"]) == ("UPSTREAM_UNAVAILABLE", "bastion.dev"), name
            assert "redirect" in response.json()["error"]["message"], name
    result = await _result(stack, workflow, sent_node)
    assert result["outcome"] == "UPSTREAM_ERROR"
    assert "redirect" in result["detail"]


async def test_a_card_revalidation_is_relayed_as_304_without_a_location(stack: A2aStack) -> None:
    async with httpx.AsyncClient(base_url=stack.proxy, headers=stack.headers("planner"), timeout=30) as http:
        response = await http.get("/a2a/moved/.well-known/agent-card.json", headers={"If-None-Match": '"card-1"'})
    assert response.status_code == 304
    assert response.headers["etag"] == '"card-1"'
    assert "location" not in response.headers


async def _result(stack: A2aStack, workflow: str, node_id: str) -> dict[str, Any]:
    def done(node: dict[str, Any]) -> bool:
        return node["node_id"] == node_id and bool(node.get("result"))

    nodes = await poll(stack.graph, f"/graphs/{workflow}/nodes", {}, 1, auditor_token(stack.home), where=done)
    result: dict[str, Any] = nodes[0]["result"]
    return result
