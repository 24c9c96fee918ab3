"""API keys and revocations end to end (DESIGN §8): created and revoked by operators at the
policy service's admin REST, pushed to every proxy over WatchIdentity, honoured on every
call. A real stack in-process on port 0 (graph, verifier, policy, two proxy replicas) in
front of a real SDK MCP server that records what it ran.

The 30 s guarantee is asserted as a deadline; how fast a change really lands (milliseconds)
is printed, not asserted (timing targets belong in eval/bench)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
import orjson
import pytest
import pytest_asyncio
from fixtures import inprocess
from fixtures.graphapi import auditor_token, bearer, poll
from fixtures.mcpcalls import headers, tool_call
from fixtures.policystack import free_addr
from fixtures.sdk_upstream import serving_mcp
from mcp.server import MCPServer

from bastion._appconfig import AppConfig, ServerConfig
from bastion._identity import SERVICE_TOKEN_FILE, ensure_dev_key, issue_token
from bastion._rpc import auth_metadata
from bastion.policy import PolicySettings
from bastion.policy import serve as policy_serve
from bastion.v1 import policy_pb2, policy_pb2_grpc

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: DESIGN §8: a revocation holds on every proxy within 30 s.
WITHIN_S = 30.0
POLICY = """apiVersion: bastion.dev/v1
kind: AgentPolicy
metadata: {name: keys, version: 1}
spec:
  rules:
    - {id: everything, match: {tools: ['demo__*']}, effect: allow}
"""


@dataclass
class Stack:
    home: Path
    policy: str
    graph: str
    proxies: list[str]
    graph_grpc: str
    verifier_grpc: str
    policy_grpc: str
    app: AppConfig
    #: The `text` of every `note` call the upstream actually ran.
    ran: list[str] = field(default_factory=list)
    #: One client for every request (making one costs about 0.1 s).
    http: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(timeout=30))

    def operator(self, subject: str = "ops-alice") -> dict[str, str]:
        return bearer(issue_token(ensure_dev_key(self.home), subject=subject, roles=("operator",)))

    async def admin(
        self, method: str, path: str, body: Any = None, *, who: dict[str, str] | None = None
    ) -> httpx.Response:
        headers = self.operator() if who is None else who
        return await self.http.request(method, f"http://{self.policy}{path}", json=body, headers=headers)

    async def call(
        self, proxy: str, credential: str, tool: str = "add", workflow: str | None = None, **arguments: Any
    ) -> httpx.Response:
        body = orjson.dumps(tool_call(tool, arguments or {"a": 2, "b": 3}))
        hdrs = headers(credential, workflow=workflow, name=tool)
        return await self.http.post(f"http://{proxy}/mcp/demo", content=body, headers=hdrs)

    async def accepted(self, proxy: str, credential: str) -> bool:
        return (await self.call(proxy, credential)).status_code == 200

    async def refused(self, proxy: str, credential: str) -> bool:
        return (await self.call(proxy, credential)).status_code == 401

    async def create_key(self, agent: str, **extra: Any) -> dict[str, Any]:
        response = await self.admin("POST", "/v1/keys", {"agent": agent, **extra})
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created


def _upstream(ran: list[str]) -> MCPServer:
    server = MCPServer("demo")

    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    def note(text: str) -> str:
        """Record that this call reached the upstream."""
        ran.append(text)
        return text

    server.add_tool(add, name="add")
    server.add_tool(note, name="note")
    return server


def _proxy(stack: Stack, home: Path) -> contextlib.AbstractAsyncContextManager[dict[str, str]]:
    return inprocess.proxy(
        home,
        stack.app,
        policy_addr=stack.policy_grpc,
        verifier_addr=stack.verifier_grpc,
        graph_addr=stack.graph_grpc,
    )


def _replica_home(stack: Stack, name: str) -> Path:
    """A home of its own (journal, owners) holding the stack's keys: the service token and dev key."""
    home = stack.home.parent / name
    shutil.copytree(stack.home / "keys", home / "keys", dirs_exist_ok=True)
    return home


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    root = tmp_path_factory.mktemp("keys")
    home = root / "var"
    policy_file = root / "policy.yaml"
    policy_file.write_text(POLICY)
    ran: list[str] = []
    async with serving_mcp(_upstream(ran)) as url:
        app = AppConfig(servers={"demo": ServerConfig(url=url)}, policies=(policy_file,))
        policy_grpc = free_addr()  # where the graph learns revocations
        async with (
            inprocess.graph(home, app, policy_addr=policy_grpc) as graph,
            inprocess.verifier(home, app) as verifier,
            inprocess.serving(
                policy_serve,
                PolicySettings(
                    home=home, policy_grpc_addr=policy_grpc, policy_addr=inprocess.ANY, graph_grpc_addr=graph["grpc"]
                ),
                app,
            ) as policy,
        ):
            running = Stack(
                home, policy["http"], graph["http"], [], graph["grpc"], verifier["grpc"], policy["grpc"], app, ran
            )
            async with (
                _proxy(running, home) as first,
                _proxy(running, _replica_home(running, "replica")) as second,
            ):
                for address, service in ((graph["http"], "graph"), (first["http"], "proxy"), (second["http"], "proxy")):
                    await inprocess.synced(address, service)
                running.proxies = [first["http"], second["http"]]
                async with running.http:
                    yield running


# --- calling through a proxy --------------------------------------------------------------------


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = WITHIN_S) -> float:
    """Seconds until `check()` holds; fails the test after `timeout`."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def _everywhere(stack: Stack, check: Callable[[str, str], Awaitable[bool]], credential: str, what: str) -> None:
    for proxy in stack.proxies:
        took = await _until(functools.partial(check, proxy, credential), f"{what} at {proxy}")
        print(f"{what} at {proxy}: {took * 1000:.0f} ms")


def _token_id(token: str) -> str:
    """The `jti` of a token `issue_token` made (`bastion token issue` prints the same kind)."""
    jti: str = jwt.decode(token, options={"verify_signature": False})["jti"]
    return jti


# --- tests ----------------------------------------------------------------------------------------


async def test_a_key_created_by_an_operator_authenticates_its_agent_on_every_proxy(stack: Stack) -> None:
    created = await stack.create_key("billing-bot", name="nightly job")

    assert created["key"].startswith(f"bk_{created['key_id']}.")
    assert (created["agent"], created["tenant"], created["name"], created["expires_at"]) == (
        "billing-bot",
        "default",
        "nightly job",
        None,
    )
    await _everywhere(stack, stack.accepted, created["key"], "a new key accepted")
    answer = await stack.call(stack.proxies[0], created["key"], workflow="wf-billing-bot")
    assert answer.json()["result"]["structuredContent"] == {"result": 5}
    nodes = await poll(
        f"http://{stack.graph}",
        "/graphs/wf-billing-bot/nodes",
        {},
        1,
        auditor_token(stack.home),
        where=lambda node: node["agent_id"] == "billing-bot",
    )
    assert nodes[0]["decision"]["effect"] == "ALLOW"


async def test_listing_never_shows_a_secret_or_a_digest(stack: Stack) -> None:
    created = await stack.create_key("lister")
    secret = created["key"].split(".", 1)[1]

    for role in ("operator", "auditor"):
        who = bearer(issue_token(ensure_dev_key(stack.home), subject="reader", roles=(role,)))
        listing = await stack.admin("GET", "/v1/keys?agent=lister", who=who)
        assert listing.status_code == 200, listing.text
        [key] = listing.json()["keys"]
        assert key["key_id"] == created["key_id"]
        assert key["state"] == "active"
        assert key["created_by"] == "ops-alice"
        assert not {"key", "secret", "digest", "salt"} & key.keys()
        assert secret not in listing.text


async def test_a_revoked_key_is_refused_on_both_replicas_within_30_s_and_audited(stack: Stack) -> None:
    created = await stack.create_key("soon-revoked")
    await _everywhere(stack, stack.accepted, created["key"], "a new key accepted")

    revoked = await stack.admin("POST", f"/v1/keys/{created['key_id']}/revoke", {"reason": "leaked in a log"})

    assert revoked.status_code == 200, revoked.text
    assert (revoked.json()["state"], revoked.json()["revoked_by"]) == ("revoked", "ops-alice")
    await _everywhere(stack, stack.refused, created["key"], "a revoked key refused")
    refusal = await stack.call(stack.proxies[1], created["key"])
    error = refusal.json()["error"]
    assert error["code"] == "bastion.auth.unauthenticated"
    assert refusal.headers["www-authenticate"] == "Bearer"
    audited = await poll(
        f"http://{stack.graph}",
        "/audit/violations",
        {"workflow_id": "bastion.rejected", "limit": "500"},
        1,
        auditor_token(stack.home),
        where=lambda violation: violation["violation_id"] == error["violation_id"],
    )
    assert audited[0]["rule_id"] == "bastion.auth.unauthenticated"


async def test_a_revoked_key_retried_in_a_loop_is_refused_every_time_and_never_forwarded(stack: Stack) -> None:
    created = await stack.create_key("retrier")
    await _everywhere(stack, stack.accepted, created["key"], "a new key accepted")
    await stack.admin("POST", f"/v1/keys/{created['key_id']}/revoke")
    await _everywhere(stack, stack.refused, created["key"], "a revoked key refused")
    marker = f"retried-{uuid.uuid4().hex}"

    answers = [await stack.call(stack.proxies[index % 2], created["key"], "note", text=marker) for index in range(50)]

    assert {answer.status_code for answer in answers} == {401}
    assert marker not in stack.ran
    violation_ids = {answer.json()["error"]["violation_id"] for answer in answers}
    assert len(violation_ids) == 50
    await poll(
        f"http://{stack.graph}",
        "/audit/violations",
        {"workflow_id": "bastion.rejected", "limit": "500"},
        50,
        auditor_token(stack.home),
        where=lambda violation: violation["violation_id"] in violation_ids,
    )
    # Both replicas keep serving everyone else.
    honest = issue_token(ensure_dev_key(stack.home), subject="honest-agent")
    for proxy in stack.proxies:
        assert (await stack.call(proxy, honest, "note", text=f"{marker}-honest")).status_code == 200
    assert stack.ran.count(f"{marker}-honest") == 2


async def test_revoking_a_token_id_refuses_that_token_and_no_other(stack: Stack) -> None:
    revoked, kept = (issue_token(ensure_dev_key(stack.home), subject="jti-agent") for _ in range(2))
    await _everywhere(stack, stack.accepted, revoked, "a token accepted")

    answer = await stack.admin("POST", "/v1/revocations", {"kind": "token", "value": _token_id(revoked)})

    assert answer.status_code == 201, answer.text
    assert answer.json()["kind"] == "token"
    await _everywhere(stack, stack.refused, revoked, "a revoked jti refused")
    for proxy in stack.proxies:
        assert await stack.accepted(proxy, kept)
    again = await stack.admin("POST", "/v1/revocations", {"kind": "token", "value": _token_id(revoked)})
    assert (again.status_code, again.json()["error"]["code"]) == (409, "bastion.conflict")


async def test_revoking_an_agent_refuses_its_tokens_and_keys_and_marks_the_keys_revoked(stack: Stack) -> None:
    key = await stack.create_key("rogue")
    token = issue_token(ensure_dev_key(stack.home), subject="rogue")
    other = issue_token(ensure_dev_key(stack.home), subject="rogue", tenant="elsewhere")
    await _everywhere(stack, stack.accepted, key["key"], "a key accepted")

    answer = await stack.admin("POST", "/v1/revocations", {"kind": "agent", "value": "rogue", "reason": "compromised"})

    assert answer.status_code == 201, answer.text
    assert answer.json()["keys_revoked"] == [key["key_id"]]
    for credential in (key["key"], token):
        await _everywhere(stack, stack.refused, credential, "a revoked agent's credential refused")
    for proxy in stack.proxies:
        assert await stack.accepted(proxy, other), "the same agent id in another tenant is another agent"
    listing = (await stack.admin("GET", "/v1/keys?agent=rogue")).json()["keys"]
    assert [(item["state"], item["revoked_reason"]) for item in listing] == [("revoked", "agent revoked: compromised")]
    revocations = (await stack.admin("GET", "/v1/revocations?kind=agent")).json()["revocations"]
    assert [(item["value"], item["reason"], item["by"]) for item in revocations] == [
        ("rogue", "compromised", "ops-alice")
    ]


async def test_a_proxy_started_after_a_revocation_has_it_from_its_first_snapshot(stack: Stack) -> None:
    revoked, kept = await stack.create_key("late-1"), await stack.create_key("late-2")
    await stack.admin("POST", f"/v1/keys/{revoked['key_id']}/revoke")

    async with _proxy(stack, _replica_home(stack, "late-replica")) as late:
        # From its first request: a proxy listens only once it holds the snapshot.
        assert await stack.refused(late["http"], revoked["key"])
        assert await stack.accepted(late["http"], kept["key"])


async def test_key_changes_are_audited_in_the_graph_without_the_key(stack: Stack) -> None:
    created = await stack.create_key("audited-agent", name="audit me")
    await stack.admin("POST", f"/v1/keys/{created['key_id']}/revoke", {"reason": "rotation"})

    nodes = await poll(
        f"http://{stack.graph}",
        "/graphs/bastion.identity/nodes",
        {"limit": "500"},
        2,
        auditor_token(stack.home),
        where=lambda node: created["key_id"] in orjson.dumps(node).decode(),
    )

    methods = sorted(node["action"]["method"] for node in nodes)
    assert methods == ["bastion.dev/apikey.created", "bastion.dev/apikey.revoked"]
    assert {node["agent_id"] for node in nodes} == {"ops-alice"}
    text = orjson.dumps(nodes).decode()
    assert created["key"] not in text
    assert created["key"].split(".", 1)[1] not in text
    assert "rotation" in text


async def test_change_routes_refuse_agents_auditors_api_keys_and_anonymous_callers(stack: Stack) -> None:
    key = await stack.create_key("would-be-operator")
    dev_key = ensure_dev_key(stack.home)
    callers = {
        "anonymous": ({}, 401),
        "agent": (bearer(issue_token(dev_key, subject="agent-1")), 403),
        "auditor": (bearer(issue_token(dev_key, subject="auditor-1", roles=("auditor",))), 403),
        "api key": (bearer(key["key"]), 403),
    }
    changes = [
        ("POST", "/v1/keys", {"agent": "x"}),
        ("POST", f"/v1/keys/{key['key_id']}/revoke", {}),
        ("POST", "/v1/revocations", {"kind": "agent", "value": "x"}),
    ]
    reads = ["/v1/keys", "/v1/revocations"]

    for name, (who, status) in callers.items():
        for method, path, body in changes:
            answer = await stack.admin(method, path, body, who=who)
            assert answer.status_code == status, (name, path, answer.text)
        for path in reads:
            expected = 200 if name == "auditor" else status
            assert (await stack.admin("GET", path, who=who)).status_code == expected, (name, path)
    listing = (await stack.admin("GET", "/v1/keys?agent=would-be-operator")).json()["keys"]
    assert listing[0]["state"] == "active", "a refused revocation changed nothing"
    assert (await stack.admin("GET", "/v1/keys?agent=x")).json()["keys"] == []


async def test_operators_and_auditors_act_in_their_own_tenant_and_admins_in_every_one(stack: Stack) -> None:
    dev_key = ensure_dev_key(stack.home)
    acme = bearer(issue_token(dev_key, subject="ops-acme", tenant="acme", roles=("operator",)))
    acme_auditor = bearer(issue_token(dev_key, subject="aud-acme", tenant="acme", roles=("auditor",)))
    root = bearer(issue_token(dev_key, subject="root", tenant="default", roles=("admin",)))
    theirs = await stack.create_key("tenant-default-agent")

    own = await stack.admin("POST", "/v1/keys", {"agent": "acme-bot"}, who=acme)
    assert (own.status_code, own.json()["tenant"]) == (201, "acme")
    other = await stack.admin("POST", "/v1/keys", {"agent": "acme-bot", "tenant": "default"}, who=acme)
    assert (other.status_code, other.json()["error"]["code"]) == (403, "bastion.auth.forbidden")
    revoked = await stack.admin("POST", f"/v1/keys/{theirs['key_id']}/revoke", who=acme)
    assert revoked.status_code == 404, "another tenant's key is not even said to exist"
    agent = await stack.admin("POST", "/v1/revocations", {"kind": "agent", "value": "x", "tenant": "default"}, who=acme)
    assert agent.status_code == 403
    for who in (acme, acme_auditor):
        listed = (await stack.admin("GET", "/v1/keys", who=who)).json()["keys"]
        assert {key["tenant"] for key in listed} == {"acme"}
        assert (await stack.admin("GET", "/v1/keys?tenant=default", who=who)).status_code == 403
        assert {
            item["tenant"] for item in (await stack.admin("GET", "/v1/revocations", who=who)).json()["revocations"]
        } <= {"acme"}

    everything = (await stack.admin("GET", "/v1/keys?limit=1000", who=root)).json()["keys"]
    assert {"acme", "default"} <= {key["tenant"] for key in everything}
    made = await stack.admin("POST", "/v1/keys", {"agent": "x", "tenant": "acme"}, who=root)
    assert (made.status_code, made.json()["tenant"]) == (201, "acme")
    assert (await stack.admin("POST", f"/v1/keys/{own.json()['key_id']}/revoke", who=root)).status_code == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/keys", {"agent": "a", "role": "operator"}),
        ("/v1/keys", {"agent": "a", "ttl_s": "30d"}),
        ("/v1/keys", {"agent": "a", "ttl_s": 0}),
        ("/v1/keys", {"agent": ""}),
        ("/v1/keys", {"agent": "a" * 257}),
        ("/v1/keys", {"agent": "line\nbreak"}),
        ("/v1/keys", {"agent": "a", "tenant": "t\u0000"}),
        ("/v1/revocations", {"kind": "session", "value": "x"}),
        ("/v1/revocations", {"kind": "token", "value": "x", "extra": True}),
        ("/v1/revocations", {"kind": "agent"}),
    ],
)
async def test_unknown_fields_and_bad_values_are_422_and_change_nothing(
    stack: Stack, path: str, body: dict[str, Any]
) -> None:
    before = (await stack.admin("GET", "/v1/keys?limit=1000")).json()["keys"]
    answer = await stack.admin("POST", path, body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] == "bastion.invalid_request"
    assert (await stack.admin("GET", "/v1/keys?limit=1000")).json()["keys"] == before


@pytest.mark.parametrize(
    "path", ["/v1/keys", "/v1/revocations", "/v1/policies", "/v1/policies/validate", "/v1/rollouts"]
)
async def test_a_body_of_many_unknown_fields_gets_a_short_422(stack: Stack, path: str) -> None:
    # Found by an attacker's probe: 180,000 unknown keys answered 7 MB of "kN: Extra inputs
    # are not permitted; …" on every policy admin route that takes a body.
    body = b"{" + b",".join(b'"k%d":1' % index for index in range(20_000)) + b"}"
    answer = await stack.http.post(f"http://{stack.policy}{path}", content=body, headers=stack.operator())
    assert answer.status_code == 422, answer.text[:300]
    message = answer.json()["error"]["message"]
    assert len(message) < 2_000, message[:300]
    assert "more" in message


async def test_an_oversized_body_is_413_and_not_json_is_422(stack: Stack) -> None:
    body = b'{"kind": "token", "value": "' + b"x" * (3 * 1024 * 1024) + b'"}'
    big = await stack.http.post(f"http://{stack.policy}/v1/revocations", content=body, headers=stack.operator())
    garbage = await stack.http.post(f"http://{stack.policy}/v1/keys", content=b"{not json", headers=stack.operator())
    assert (big.status_code, big.json()["error"]["code"]) == (413, "bastion.protocol.too_large")
    assert garbage.status_code == 422


async def test_an_unknown_key_is_404_and_a_key_revoked_twice_409(stack: Stack) -> None:
    unknown = await stack.admin("POST", "/v1/keys/0123456789abcdef/revoke")
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "bastion.not_found")
    key = await stack.create_key("twice")
    assert (await stack.admin("POST", f"/v1/keys/{key['key_id']}/revoke")).status_code == 200
    again = await stack.admin("POST", f"/v1/keys/{key['key_id']}/revoke")
    assert (again.status_code, again.json()["error"]["code"]) == (409, "bastion.conflict")


async def test_an_expiring_key_shows_its_expiry(stack: Stack) -> None:
    key = await stack.create_key("short-lived", ttl_s=3600)
    assert key["expires_at"] is not None
    await _everywhere(stack, stack.accepted, key["key"], "an expiring key accepted")


# --- the CLI ---------------------------------------------------------------------------------------


async def _bastion(stack: Stack, *args: str, token: str | None = None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `bastion ARGS` against the stack's policy service; the
    operator token is minted from the dev key under its home unless `token` is given."""
    env = {**os.environ, "BASTION_HOME": str(stack.home), "BASTION_POLICY_ADDR": stack.policy}
    env.pop("BASTION_TOKEN", None)
    if token is not None:
        env["BASTION_TOKEN"] = token
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bastion", *args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_cli_creates_lists_and_revokes_a_key(stack: Stack) -> None:
    code, out, err = await _bastion(stack, "keys", "create", "--agent", "cli-bot", "--name", "laptop", "--ttl", "30d")
    assert code == 0, err
    key = out.strip()
    assert key.startswith("bk_")
    assert "shown only now" in err
    await _everywhere(stack, stack.accepted, key, "a key made by the CLI accepted")

    code, out, err = await _bastion(stack, "keys", "list", "--agent", "cli-bot", "--json")
    assert code == 0, err
    [listed] = orjson.loads(out)["keys"]
    assert (listed["name"], listed["state"]) == ("laptop", "active")
    assert listed["expires_at"] is not None
    assert key.split(".", 1)[1] not in out
    code, out, _ = await _bastion(stack, "keys", "list", "--agent", "cli-bot")
    assert listed["key_id"] in out

    code, out, err = await _bastion(stack, "keys", "revoke", listed["key_id"], "--reason", "laptop lost")
    assert (code, out.strip()) == (0, f"API key {listed['key_id']} of default/cli-bot revoked"), err
    await _everywhere(stack, stack.refused, key, "a key revoked by the CLI refused")
    code, _, err = await _bastion(stack, "keys", "revoke", listed["key_id"])
    assert code == 1
    assert "409 bastion.conflict" in err


async def test_the_cli_revokes_a_token_id_and_an_agent(stack: Stack) -> None:
    token = issue_token(ensure_dev_key(stack.home), subject="cli-agent")
    jti = _token_id(issue_token(ensure_dev_key(stack.home), subject="cli-agent-2"))

    code, out, err = await _bastion(stack, "token", "revoke", "--jti", jti, "--reason", "rotated")
    assert (code, out.strip()) == (0, f"token {jti} revoked"), err
    code, out, err = await _bastion(stack, "token", "revoke", "--agent", "cli-agent")
    assert code == 0, err
    assert out.startswith("agent default/cli-agent revoked")
    await _everywhere(stack, stack.refused, token, "a token of an agent revoked by the CLI refused")

    code, out, err = await _bastion(stack, "token", "revocations", "--json")
    assert code == 0, err
    listed = {(item["kind"], item["value"]) for item in orjson.loads(out)["revocations"]}
    assert {("token", jti), ("agent", "cli-agent")} <= listed


async def test_the_cli_with_an_auditor_token_may_list_but_not_change(stack: Stack) -> None:
    auditor = auditor_token(stack.home)
    code, _, err = await _bastion(stack, "keys", "create", "--agent", "x", token=auditor)
    assert code == 2
    assert "403 bastion.auth.forbidden" in err
    code, _, err = await _bastion(stack, "keys", "list", token=auditor)
    assert code == 0, err


# --- WatchIdentity itself ---------------------------------------------------------------------------


async def test_watch_identity_streams_a_snapshot_then_changes_and_ends_when_the_service_stops(tmp_path: Path) -> None:
    home = tmp_path / "var"
    settings = PolicySettings(home=home, policy_grpc_addr=inprocess.ANY, policy_addr=inprocess.ANY)
    operator = bearer(issue_token(ensure_dev_key(home), subject="ops", roles=("operator",)))
    stop = asyncio.Event()
    bound: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(policy_serve(settings, AppConfig(), bound.set_result, stop))
    addrs = await asyncio.wait_for(bound, 30)
    token = (home / SERVICE_TOKEN_FILE).read_text().strip()
    try:
        async with httpx.AsyncClient(base_url=f"http://{addrs['http']}", headers=operator, timeout=30) as http:
            created = (await http.post("/v1/keys", json={"agent": "watched"})).json()
            async with grpc.aio.insecure_channel(addrs["grpc"]) as channel:
                stub = policy_pb2_grpc.PolicyServiceStub(channel)
                refused = stub.WatchIdentity(policy_pb2.WatchIdentityRequest(), metadata=auth_metadata("wrong"))
                assert await refused.code() == grpc.StatusCode.UNAUTHENTICATED
                call = stub.WatchIdentity(policy_pb2.WatchIdentityRequest(), metadata=auth_metadata(token))
                snapshot, closing = await call.read(), await call.read()
                assert isinstance(snapshot, policy_pb2.IdentityEvent)
                assert snapshot.snapshot
                assert [(key.key_id, key.agent_id, key.revoked) for key in snapshot.keys] == [
                    (created["key_id"], "watched", False)
                ]
                assert closing == policy_pb2.IdentityEvent()
                await http.post(f"/v1/keys/{created['key_id']}/revoke")
                delta = await asyncio.wait_for(call.read(), 10)
                assert isinstance(delta, policy_pb2.IdentityEvent)
                assert [(key.key_id, key.revoked) for key in delta.keys] == [(created["key_id"], True)]
                stop.set()
                assert await asyncio.wait_for(call.read(), 10) is grpc.aio.EOF
                assert await call.code() == grpc.StatusCode.OK
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_the_graph_refuses_a_revoked_operator_within_30_s(tmp_path: Path) -> None:
    # The graph REST learns revocations from the policy service like the proxies do.
    app = AppConfig()
    async with (
        inprocess.policy(tmp_path, app) as policy,
        inprocess.graph(tmp_path, app, policy_addr=policy["grpc"]) as graph,
        httpx.AsyncClient(timeout=10) as http,
    ):
        key = ensure_dev_key(tmp_path)
        leaving = issue_token(key, subject="ops-leaving", roles=("operator",))
        staying = issue_token(key, subject="ops-staying", roles=("auditor",))

        async def status(token: str) -> int:
            return (await http.get(f"http://{graph['http']}/graphs", headers=bearer(token))).status_code

        assert await status(leaving) == 200
        revoke = await http.post(
            f"http://{policy['http']}/v1/revocations",
            json={"kind": "token", "value": _token_id(leaving), "reason": "left the team"},
            headers=bearer(issue_token(key, subject="ops-admin", roles=("admin",))),
        )
        assert revoke.status_code == 201, revoke.text

        async def refused() -> bool:
            return await status(leaving) == 401

        took = await _until(refused, "a revoked operator token refused by the graph")
        print(f"graph refused the revoked token after {took * 1000:.0f} ms")
        assert await status(staying) == 200
