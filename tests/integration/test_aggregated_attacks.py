"""The aggregated `POST /mcp` and `bastion wrap`, probed as an attacker would.

One stack for the whole module (its startup dominates the run time): the conformance
fixture over HTTP (`conf`), the demo server twice as stdio children (`demo`, `demo2`,
both with --record so an execution is visible) and once over HTTP as a subprocess the
test may kill (`victim`). Every probe uses an agent of its own, so their audit trails do
not mix. Every network call is bounded: a hang is a failure, not a stuck run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import orjson
import pytest
import pytest_asyncio
from fixtures import inprocess
from fixtures.graphapi import auditor_token, poll
from fixtures.mcpcalls import MODERN_META, ProxyClient
from fixtures.stack import LOADED_DEADLINES
from fixtures.upstream import conformance_upstream

from bastion._appconfig import AppConfig, ServerConfig
from bastion.proxy._aggregate import FanOut
from bastion.proxy._links import Link
from bastion.proxy._session_host import HostedSession

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo_server.py"
MAX_BODY = 256 * 1024
CALL_TIMEOUT = 30.0
POLICY = {
    "apiVersion": "bastion.dev/v1",
    "kind": "AgentPolicy",
    "metadata": {"name": "aggregated-attacks", "version": 1},
    "spec": {
        "default": "deny",
        "rules": [
            {"id": "no-delete", "match": {"tools": ["demo__delete_file"]}, "effect": "deny"},
            {"id": "tools", "match": {"tools": ["demo__*", "conf__*", "victim__*"]}, "effect": "allow"},
            # Both readers of the shared URI are allowed: an ambiguity refusal cannot be policy's.
            {"id": "notes", "match": {"resources": ["demo__demo://*", "demo2__demo://*"]}, "effect": "allow"},
        ],
    },
}
JSON_ONLY = "application/json"
BOTH = "application/json, text/event-stream"


@dataclass(frozen=True)
class Stack:
    client: ProxyClient
    records: dict[str, Path]
    #: The environment a `bastion wrap` subprocess needs to find this stack's services.
    env: dict[str, str]
    victim: subprocess.Popen[bytes]

    @property
    def home(self) -> Path:
        return self.client.home

    def executed(self, server: str) -> list[dict[str, Any]]:
        record = self.records[server]
        return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


@contextlib.contextmanager
def _killable_demo(workdir: Path, record: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """The demo server over HTTP and its MCP URL, with the process so a test can kill it."""
    port_file = workdir / "victim.port"
    argv = [sys.executable, str(DEMO), "--port", "0", "--port-file", str(port_file), "--record", str(record)]
    proc = subprocess.Popen(argv)
    try:
        deadline = time.monotonic() + 30
        # Polled as fixtures/upstream.py does: the child writes the file once it listens.
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None, f"demo server exited with {proc.returncode}"
            assert time.monotonic() < deadline, "demo server did not start"
            time.sleep(0.05)
        yield proc, f"http://127.0.0.1:{port_file.read_text().strip()}/mcp"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    home = tmp_path_factory.mktemp("attacks")
    policy = home / "policy.yaml"
    policy.write_text(json.dumps(POLICY))
    records = {name: home / f"{name}.jsonl" for name in ("demo", "demo2", "victim")}

    def stdio(name: str) -> ServerConfig:
        return ServerConfig(command=(sys.executable, str(DEMO), "--stdio", "--record", str(records[name])))

    with (
        conformance_upstream(home) as conf_url,
        _killable_demo(home, records["victim"]) as (victim, victim_url),
    ):
        servers = {
            "conf": ServerConfig(url=conf_url),
            "demo": stdio("demo"),
            "demo2": stdio("demo2"),
            "victim": ServerConfig(url=victim_url),
        }
        app = AppConfig(servers=servers, policies=(policy,))
        async with (
            inprocess.policy(home, app) as policy_addrs,
            inprocess.verifier(home, app) as verifier_addrs,
            inprocess.graph(home, app, policy_addr=policy_addrs["grpc"]) as graph_addrs,
            inprocess.proxy(
                home,
                app,
                policy_addr=policy_addrs["grpc"],
                verifier_addr=verifier_addrs["grpc"],
                graph_addr=graph_addrs["grpc"],
                max_body=MAX_BODY,
            ) as proxy_addrs,
        ):
            env = {
                **LOADED_DEADLINES,
                "BASTION_HOME": str(home),
                "BASTION_POLICY_GRPC_ADDR": policy_addrs["grpc"],
                "BASTION_VERIFIER_ADDR": verifier_addrs["grpc"],
                "BASTION_GRAPH_GRPC_ADDR": graph_addrs["grpc"],
                "BASTION_LOG_LEVEL": "WARNING",
                "BASTION_MAX_BODY": "1024",
            }
            client = ProxyClient(home, proxy_addrs["http"], graph_addrs["http"])
            yield Stack(client, records, env, victim)


# --- raw streamable HTTP ------------------------------------------------------------------------


def _auth(stack: Stack, agent: str, accept: str = JSON_ONLY) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.client.token(agent)}", "Accept": accept}


async def _open_session(http: httpx.AsyncClient, hdrs: dict[str, str]) -> dict[str, str]:
    """The 2025-11 handshake; the headers of every later request of the session."""
    params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "attacker", "version": "1"}}
    init = await http.post(
        "/mcp", json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params}, headers=hdrs
    )
    assert init.status_code == 200, init.text
    session = {**hdrs, "Mcp-Session-Id": init.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}
    done = await http.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
    assert done.status_code == 202, done.text
    return session


def _call(name: str, arguments: dict[str, Any], msg_id: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": {"name": name, "arguments": arguments}}


async def _post(http: httpx.AsyncClient, hdrs: dict[str, str], body: Any = None, raw: bytes = b"") -> httpx.Response:
    content = raw or orjson.dumps(body)
    return await asyncio.wait_for(http.post("/mcp", content=content, headers=hdrs), CALL_TIMEOUT)


def _error_code(response: httpx.Response) -> int:
    answer = response.json()
    assert "result" not in answer, answer
    return int(answer["error"]["code"])


async def _audited(stack: Stack, agent: str, count: int) -> list[dict[str, Any]]:
    """Every violation (policy block or refusal before a decision) journaled for `agent`."""
    params = {"agent_id": agent, "limit": "500"}
    return await poll(stack.client.graph, "/audit/violations", params, count, auditor_token(stack.home))


# --- (a) names that look like demo__delete_file -------------------------------------------------

DELETE_VARIANTS = [
    # case
    "Demo__delete_file",
    "DEMO__DELETE_FILE",
    "demo__Delete_File",
    "demo__DELETE_FILE",
    "demo__deleteFile",
    # separators
    "demo___delete_file",
    "demo____delete_file",
    "demo_delete_file",
    "__demo__delete_file",
    "demo.__delete_file",
    "demo__delete-file",
    "demo__delete.file",
    "demo-_delete_file",
    # whitespace and control
    " demo__delete_file",
    "demo__delete_file ",
    "demo__delete_file\n",
    "\tdemo__delete_file",
    "demo__delete_file\r",
    "demo__delete_file\x00",
    "demo__delete\x00_file",
    "demo__delete_file\u00a0",
    # confusables
    "demo\u2010\u2010delete_file",
    "demo__delete\u2010file",
    "\uff44\uff45\uff4d\uff4f__delete_file",
    "\uff24\uff25\uff2d\uff2f__delete_file",
    "demo__\uff44elete_file",
    "d\u0435mo__delete_file",
    "dem\u043e__delete_file",
    "demo__delet\u0435_file",
    "demo__delete_\ufb01le",
    "demo__dele\u0301te_file",
    # invisible
    "demo__\u200bdelete_file",
    "demo__delete\u200d_file",
    "\ufeffdemo__delete_file",
    "demo__delete_file\u180e",
    # paths and encodings
    "demo/delete_file",
    "demo\\delete_file",
    "demo__../delete_file",
    "demo__./delete_file",
    "demo__delete_file/",
    "conf__../demo__delete_file",
    "demo__delete%5Ffile",
    "demo%5F%5Fdelete_file",
    "demo__delete_file%00",
]


async def test_no_spelling_of_a_denied_tool_reaches_the_upstream_and_every_refusal_is_audited(stack: Stack) -> None:
    agent = "agent-variants"
    async with httpx.AsyncClient(base_url=stack.client.proxy, timeout=CALL_TIMEOUT) as http:
        session = await _open_session(http, _auth(stack, agent, BOTH))
        hdrs = {**session, "Accept": JSON_ONLY}
        answers = {name: await _post(http, hdrs, _call(name, {"path": "/etc"})) for name in DELETE_VARIANTS}
        # The same name through JSON escapes, and a duplicate key a first-wins reader would see as add.
        escaped = b'"demo\\u005f\\u005fdelete\\u005ffile"'
        raw_bodies = [
            b'{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":' + escaped + b',"arguments":{}}}',
            b'{"jsonrpc":"2.0","id":9,"method":"tools/call",'
            b'"params":{"name":"demo__add","name":"demo__delete_file","arguments":{"path":"/"}}}',
        ]
        for raw in raw_bodies:
            answers[raw.decode()] = await _post(http, hdrs, raw=raw)
        still_works = await _post(http, hdrs, _call("demo__add", {"a": 2, "b": 3}))
    for name, response in answers.items():
        code = _error_code(response)
        # A key given twice is refused before any name is read (-32600, proxy/_mcp.py).
        expected = (-32600,) if '"name":"demo__add","name"' in name else (-32602, -32003)
        assert code in expected, (name, response.text)
    assert still_works.json()["result"]["structuredContent"] == {"result": 5}
    assert stack.executed("demo") == []
    violations = await _audited(stack, agent, len(answers))
    assert len(violations) == len(answers)
    assert {v["agent_id"] for v in violations} == {agent}


# --- (b) malformed and oversized requests -------------------------------------------------------


async def test_malformed_requests_get_their_protocol_error_and_execute_nothing(stack: Stack) -> None:
    agent = "agent-malformed"
    deep: Any = 1
    for _ in range(64):
        deep = [deep]
    async with httpx.AsyncClient(base_url=stack.client.proxy, timeout=CALL_TIMEOUT) as http:
        session = await _open_session(http, _auth(stack, agent, BOTH))
        hdrs = {**session, "Accept": JSON_ONLY}
        oversized = await _post(http, hdrs, _call("demo__echo", {"text": "x" * MAX_BODY}))
        deep_args = await _post(http, hdrs, _call("demo__echo", {"text": deep}))
        wide_args = await _post(http, hdrs, _call("demo__echo", {"text": list(range(20_000))}))
        batch = await _post(http, hdrs, [_call("demo__delete_file", {"path": "/"}), _call("demo__add", {})])
        unknown = await _post(http, hdrs, {"jsonrpc": "2.0", "id": 4, "method": "tools/execute", "params": {}})
        cased = await _post(http, hdrs, {**_call("demo__delete_file", {"path": "/"}), "method": "Tools/Call"})
        twice = httpx.Headers([*hdrs.items(), ("Mcp-Session-Id", "0" * 32)])
        doubled = await asyncio.wait_for(
            http.post("/mcp", content=orjson.dumps(_call("demo__add", {"a": 1, "b": 1})), headers=twice),
            CALL_TIMEOUT,
        )
        # 2026-07 stateless: the Mcp-Name a gateway reads must be the name Bastion decides on.
        stateless = {**_auth(stack, agent, BOTH), "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call"}
        body = _call("demo__delete_file", {"path": "/"})
        body["params"]["_meta"] = dict(MODERN_META)
        mismatch = await _post(http, {**stateless, "Mcp-Name": "demo__add"}, body)
    assert oversized.status_code == 413
    assert _error_code(deep_args) == -32602
    assert _error_code(wide_args) == -32602
    assert _error_code(batch) == -32600
    assert _error_code(unknown) == -32601
    assert _error_code(cased) == -32601
    assert "did you mean 'tools/call'" in cased.json()["error"]["data"]["reason"]
    assert doubled.status_code == 400
    assert "more than once" in doubled.text
    assert _error_code(mismatch) == -32020
    assert stack.executed("demo") == []
    # The doubled header is refused before the token is read: it is journaled without an agent.
    await _audited(stack, agent, 7)


# --- (c) another agent's session ----------------------------------------------------------------


async def _status_of_stream(http: httpx.AsyncClient, hdrs: dict[str, str]) -> int:
    """The status of a GET stream, without waiting for a stream that would stay open."""

    async def opened() -> int:
        async with http.stream("GET", "/mcp", headers=hdrs) as response:
            return response.status_code

    return await asyncio.wait_for(opened(), CALL_TIMEOUT)


async def test_another_agents_session_is_refused_on_every_verb_and_keeps_working(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.client.proxy, timeout=CALL_TIMEOUT) as http:
        owner = await _open_session(http, _auth(stack, "agent-victim", BOTH))
        # The owner starts a call, so there is a request stream to try to resume.
        async with http.stream("POST", "/mcp", json=_call("demo__count", {"to": 2}, 5), headers=owner) as first:
            event_id = ""
            async for line in first.aiter_lines():
                if line.startswith("id:"):
                    event_id = line[3:].strip()
                    break  # hang up: the rest of the stream waits for a Last-Event-ID
        assert event_id
        thief = {**_auth(stack, "agent-thief", BOTH), "Mcp-Session-Id": owner["Mcp-Session-Id"]}
        thief["MCP-Protocol-Version"] = "2025-11-25"
        post = await _post(http, {**thief, "Accept": JSON_ONLY}, _call("demo__add", {"a": 1, "b": 1}))
        # A resource read must not look anything up in the owner's session before the owner check.
        read = {"jsonrpc": "2.0", "id": 2, "method": "resources/read", "params": {"uri": "demo://nothing-here"}}
        read_answer = await _post(http, {**thief, "Accept": JSON_ONLY}, read)
        invented = await _post(http, {**thief, "Accept": JSON_ONLY, "Mcp-Session-Id": "f" * 32}, read)
        stream = await _status_of_stream(http, thief)
        resumed = await _status_of_stream(http, {**thief, "Last-Event-ID": event_id})
        deleted = await asyncio.wait_for(http.delete("/mcp", headers=thief), CALL_TIMEOUT)
        still_owned = await _post(http, {**owner, "Accept": JSON_ONLY}, _call("demo__add", {"a": 4, "b": 5}, 6))
    assert post.status_code == 403
    assert read_answer.status_code == 403, read_answer.text
    assert invented.status_code == 404, invented.text
    assert (stream, resumed, deleted.status_code) == (403, 403, 403)
    assert still_owned.json()["result"]["structuredContent"] == {"result": 9}
    await _audited(stack, "agent-thief", 5)


# --- the shared session of stateless callers -----------------------------------------------------


class _RecordingLink:
    """Stands in for one upstream's link: what the fan-out would send it."""

    server = "up"

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def notify(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


async def test_stateless_callers_cannot_cancel_or_answer_each_others_upstream_requests() -> None:
    """2026-07 requests without a session, from every agent, share one fan-out (the host
    remaps their ids to `bastion-N`). Neither the host's ids nor the ids given to an
    upstream's questions may let one agent act on another's call. The upstream asking
    on a request's stream is injected here: the SDK's servers cannot ask a stateless
    client anything, other servers may."""
    session = HostedSession("shared", remap=True)
    fan = FanOut(session, {}, _never_allowed)
    link = _RecordingLink()
    fan._active["up"] = cast(Link, link)
    # Agent A's call in flight, exactly as FanOut._forward tracks it.
    _, outgoing, _ = session.begin({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {}})
    fan._pending[("up", "bastion-up-1")] = outgoing["id"]
    fan._from_upstream("up")({"jsonrpc": "2.0", "id": 0, "method": "elicitation/create"}, "bastion-up-1")
    asked = orjson.loads(session._pending[orjson.dumps(outgoing["id"])][0].events[-1][1])
    # Agent B guesses: the host's id of A's call, and the first ids a counter would give.
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": outgoing["id"]}}
    await fan.deliver(cancel, orjson.dumps(cancel), None)
    for guess in (f"bastion-ask-{n}" for n in range(1, 50)):
        await fan.deliver({"jsonrpc": "2.0", "id": guess, "result": {"action": "accept"}}, b"", None)
    await asyncio.gather(*fan._tasks)
    assert link.sent == []
    assert not re.fullmatch(r"bastion-ask-\d+", asked["id"]), asked
    # A's own answer still reaches the upstream, under the upstream's id.
    await fan.deliver({"jsonrpc": "2.0", "id": asked["id"], "result": {"action": "decline"}}, b"", None)
    await asyncio.gather(*fan._tasks)
    assert link.sent == [{"jsonrpc": "2.0", "id": 0, "result": {"action": "decline"}}]


async def _never_allowed(caller: Any, actions: Any) -> list[bool]:
    return [False] * len(actions)


# --- (e) a URI two upstreams list ---------------------------------------------------------------


async def test_a_resource_two_upstreams_list_is_refused_as_ambiguous(stack: Stack) -> None:
    read = {"jsonrpc": "2.0", "id": 3, "method": "resources/read", "params": {"uri": "demo://notes/readme"}}
    async with httpx.AsyncClient(base_url=stack.client.proxy, timeout=CALL_TIMEOUT) as http:
        session = await _open_session(http, _auth(stack, "agent-ambiguous", BOTH))
        hdrs = {**session, "Accept": JSON_ONLY}
        cold = await _post(http, hdrs, read)  # before the client listed anything
        listed = await _post(http, hdrs, {"jsonrpc": "2.0", "id": 4, "method": "resources/list", "params": {}})
        warm = await _post(http, hdrs, read)
    assert _error_code(cold) == -32602
    assert "several upstreams" in cold.json()["error"]["data"]["reason"]
    assert "result" in listed.json()
    assert _error_code(warm) == -32602
    assert stack.executed("demo") == []
    assert stack.executed("demo2") == []


# --- (d) an upstream killed between calls -------------------------------------------------------


async def test_a_killed_upstream_fails_its_call_without_a_hang_and_the_others_keep_working(stack: Stack) -> None:
    workflow = "wf-attacks-killed"
    async with httpx.AsyncClient(base_url=stack.client.proxy, timeout=CALL_TIMEOUT) as http:
        session = await _open_session(http, {**_auth(stack, "agent-killed", BOTH), "Bastion-Workflow-Id": workflow})
        hdrs = {**session, "Accept": JSON_ONLY}
        before = await _post(http, hdrs, _call("victim__add", {"a": 1, "b": 1}, 1))
        assert before.json()["result"]["structuredContent"] == {"result": 2}
        # Mid-call: `confirm` waits for the client's answer to its elicitation; kill it there.
        midway = await asyncio.wait_for(_killed_while_asking(http, session, stack.victim), CALL_TIMEOUT)
        after = await _post(http, hdrs, _call("victim__add", {"a": 2, "b": 2}, 2))
        demo = await _post(http, hdrs, _call("demo__add", {"a": 3, "b": 3}, 3))
        conf = await _post(http, hdrs, _call("conf__test_simple_text", {}, 4))
    assert midway["id"] == 8
    assert "result" not in midway
    assert midway["error"]["code"] == -32603
    assert after.json()["id"] == 2
    assert _error_code(after) == -32603
    assert demo.json()["result"]["structuredContent"] == {"result": 6}
    assert conf.json()["result"]["content"]
    failed = after.headers["bastion-node-id"]
    nodes = await poll(
        stack.client.graph,
        f"/graphs/{workflow}/nodes",
        {},
        1,
        auditor_token(stack.home),
        where=lambda node: node["node_id"] == failed and node["result"] is not None,
    )
    result = nodes[0]["result"]
    assert result["outcome"] == "UPSTREAM_ERROR" or result.get("jsonrpc_error_code"), result


async def _killed_while_asking(
    http: httpx.AsyncClient, session: dict[str, str], victim: subprocess.Popen[bytes]
) -> dict[str, Any]:
    """Call victim__confirm, kill the upstream once it asks the client, return the call's answer."""
    call = _call("victim__confirm", {"question": "Go?"}, 8)
    async with http.stream("POST", "/mcp", json=call, headers=session) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            event = json.loads(line[5:])
            if event.get("method") == "elicitation/create":
                victim.kill()
                victim.wait(10)
            elif event.get("id") == 8:
                return dict(event)
    raise AssertionError("the call's stream ended without an answer")


# --- bastion wrap: garbage on stdin -------------------------------------------------------------


async def test_garbage_lines_on_the_wraps_stdin_get_errors_and_the_session_keeps_working(stack: Stack) -> None:
    wrapped = [sys.executable, str(DEMO), "--stdio", "--record", str(stack.home / "wrapped.jsonl")]
    argv = ["-m", "bastion", "wrap", "--name", "demo", "--agent", "agent-wrap", "--", *wrapped]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=stack.env
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    async def send(line: bytes) -> None:
        stdin.write(line + b"\n")
        await stdin.drain()

    async def answer() -> dict[str, Any]:
        line = await asyncio.wait_for(stdout.readline(), CALL_TIMEOUT)
        assert line, "the wrap closed its stdout"
        found: dict[str, Any] = json.loads(line)
        return found

    try:
        params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}
        await send(orjson.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params}))
        assert "result" in await answer()
        await send(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
        garbage = [b"this is not json", b"\xff\xfe\x00garbage", b'{"jsonrpc":"2.0","id":1,', b"x" * 4096]
        codes = []
        for line in garbage:
            await send(line)
            codes.append((await answer())["error"]["code"])
        # An overlong line and a good one in one write: only the overlong one is dropped.
        await send(b"y" * 3000 + b"\n" + orjson.dumps({"jsonrpc": "2.0", "id": 6, "method": "ping"}))
        codes.append((await answer())["error"]["code"])
        pinged = await answer()
        await send(orjson.dumps(_call("add", {"a": 20, "b": 22}, 7)))
        added = await answer()
    finally:
        stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), CALL_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    assert codes == [-32700] * 5
    # The lines that arrived whole went to the proxy, which refused and journaled them.
    refused = await _audited(stack, "agent-wrap", 3)
    assert {item["rule_id"] for item in refused} >= {"bastion.protocol.parse_error"}
    assert pinged == {"jsonrpc": "2.0", "id": 6, "result": {}}
    assert added["id"] == 7
    assert added["result"]["structuredContent"] == {"result": 42}
    assert proc.returncode == 0


async def test_listing_templates_again_and_again_holds_each_template_once() -> None:
    """Every stateless caller shares one fan-out; each `resources/templates/list` (and each
    read of an unknown URI, which lists again) appended every template once more, so any
    agent could grow the proxy's memory without bound, one listing at a time."""
    fan = FanOut(HostedSession("shared", remap=True), {}, _never_allowed)
    listed = {"uriTemplate": "test://template/{id}/data", "name": "template"}
    for _ in range(1000):
        renamed = fan._rename("resources/templates/list", "conf", listed)
    assert renamed["name"] == "conf__template"
    assert list(fan.templates) == [("test://template/", "conf")]
    assert fan._template_of("test://template/7/data") == "conf"
    fan._rename("resources/templates/list", "demo", {"uriTemplate": "test://template/{id}/other"})
    assert fan._template_of("test://template/7/data") == ""  # two servers claim it: neither is guessed
