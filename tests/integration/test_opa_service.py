"""`BASTION_POLICY_ENGINE=opa`: the policy service deciding through a real OPA server —
the same decisions as the native engine over gRPC, end to end through the proxy, and
fail closed when OPA goes away."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fixtures import inprocess
from fixtures.a2a_agent import a2a_agent
from fixtures.mcpcalls import ProxyClient, headers, tool_call
from fixtures.opa import INSTALL_TIMEOUT_S, OpaServer, running_opa
from fixtures.policy_pack import PACKS, Case
from fixtures.stack import ROOT
from fixtures.upstream import DemoUpstream, demo_upstream

from bastion._appconfig import AgentConfig, AppConfig
from bastion._identity import ensure_dev_key, ensure_service_token, issue_token
from bastion._rpc import auth_metadata, open_channel
from bastion.policy import PolicySet, PolicySettings, validate_policy
from bastion.policy import serve as policy_serve
from bastion.v1 import policy_pb2, policy_pb2_grpc

pytestmark = pytest.mark.timeout(INSTALL_TIMEOUT_S + 120)
DEMO_POLICY = ROOT / "examples" / "policies" / "demo.yaml"
# A whole pack (≈ 110 requests) arrives on one stream and goes to OPA at once; on a loaded
# 2-vCPU machine the last answers came after the 500 ms default and were (rightly) denied.
# These tests check decisions and correlation, not the deadline (tested below with 300 ms).
BURST_DEADLINE_MS = 10_000


@pytest.fixture(scope="module")
def opa() -> Iterator[OpaServer]:
    with running_opa() as server:
        yield server


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoUpstream]:
    with demo_upstream(tmp_path_factory.mktemp("upstream")) as server:
        yield server


def _files(tmp_path: Path, documents: tuple[dict[str, Any], ...]) -> tuple[Path, ...]:
    paths = []
    for index, document in enumerate(documents):
        path = tmp_path / f"policy-{index}.yaml"
        path.write_text(json.dumps(document))
        paths.append(path)
    return tuple(paths)


def _settings(home: Path, opa_url: str, **extra: Any) -> PolicySettings:
    return PolicySettings(
        home=home,
        policy_grpc_addr=inprocess.ANY,
        policy_addr=inprocess.ANY,
        policy_engine="opa",
        opa_url=opa_url,
        **extra,
    )


def _request(case: Case, request_id: str) -> policy_pb2.DecideRequest:
    # A kind this build has no name for travels as an unknown number (proto3 enums are open).
    known = dict(policy_pb2.ActionKind.items())
    kind = known.get(case.kind, 999)
    action = policy_pb2.Action(
        kind=kind,  # type: ignore[arg-type]
        server=case.server,
        tool=case.tool,
        resource=case.resource,
        prompt=case.prompt,
    )
    return policy_pb2.DecideRequest(
        action=action, ctx=policy_pb2.Context(agent_id=case.agent_id, request_id=request_id)
    )


@pytest.fixture
def decide(tmp_path: Path) -> Any:
    async def on_stream(grpc_addr: str, requests: list[policy_pb2.DecideRequest]) -> dict[str, policy_pb2.Decision]:
        async with open_channel(grpc_addr) as channel:
            stub = policy_pb2_grpc.PolicyServiceStub(channel)
            call = stub.DecideStream(iter(requests), metadata=auth_metadata(ensure_service_token(tmp_path, None)))
            return {answer.request_id: answer async for answer in call}

    return on_stream


@pytest.mark.parametrize("pack", PACKS, ids=[pack.name for pack in PACKS])
async def test_the_service_in_opa_mode_decides_as_the_native_engine(
    tmp_path: Path, opa: OpaServer, decide: Any, pack: Any
) -> None:
    app = AppConfig(policies=_files(tmp_path, pack.documents))
    native = PolicySet.compile([validate_policy(document) for document in pack.documents])
    settings = _settings(tmp_path, opa.url, opa_deadline_ms=BURST_DEADLINE_MS)
    async with inprocess.serving(policy_serve, settings, app) as addrs:
        requests = [_request(case, f"r{index}") for index, case in enumerate(pack.cases)]
        answers = await decide(addrs["grpc"], requests)
    assert len(answers) == len(pack.cases)
    for index, case in enumerate(pack.cases):
        expected = native.evaluate(
            kind=case.kind, agent_id=case.agent_id, server=case.server, tool=case.tool,
            resource=case.resource, prompt=case.prompt,
        )  # fmt: skip
        got = answers[f"r{index}"]
        assert policy_pb2.Effect.Name(got.effect).lower() == expected.effect.value, (case.name, str(got))
        assert got.rule_id == expected.rule_id, case.name


async def test_calls_through_the_proxy_are_decided_by_opa(
    tmp_path: Path, opa: OpaServer, upstream: DemoUpstream
) -> None:
    app = inprocess.app_config(upstream.url, DEMO_POLICY)
    async with (
        inprocess.serving(policy_serve, _settings(tmp_path, opa.url), app) as policy,
        inprocess.verifier(tmp_path, app) as verifier,
        inprocess.graph(tmp_path, app) as graph,
        inprocess.proxy(
            tmp_path, app, policy_addr=policy["grpc"], verifier_addr=verifier["grpc"], graph_addr=graph["grpc"]
        ) as proxy,
    ):
        client = ProxyClient(tmp_path, proxy["http"], graph["http"])
        token = client.token("agent-1")
        allowed = await client.post(tool_call("add", {"a": 1, "b": 2}), headers(token, workflow="wf-opa"))
        denied = await client.post(tool_call("delete_file", {"path": "/x"}), headers(token, workflow="wf-opa"))
    assert allowed.json()["result"]["structuredContent"] == {"result": 3}
    data = denied.json()["error"]["data"]
    assert (data["rule_id"], data["policy_name"], data["policy_version"]) == ("no-file-deletes", "demo", 1)


A2A_POLICY = {
    "apiVersion": "bastion.dev/v1",
    "kind": "AgentPolicy",
    "metadata": {"name": "a2a-opa", "version": 1},
    "spec": {
        "default": "deny",
        "rules": [
            {"id": "no-cancel", "match": {"a2a": ["echo__CancelTask"]}, "effect": "deny"},
            {"id": "planner-sends", "match": {"agents": ["planner"], "a2a": ["echo__SendMessage"]}, "effect": "allow"},
            {"id": "tools-only", "match": {"agents": ["planner"], "tools": ["echo__*"]}, "effect": "allow"},
        ],
    },
}


async def test_a2a_through_the_proxy_is_decided_by_opa(tmp_path: Path, opa: OpaServer) -> None:
    def rpc(method: str, params: dict[str, Any]) -> bytes:
        return orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})

    send = rpc("SendMessage", {"message": {"messageId": "m-1", "role": "ROLE_USER", "parts": [{"text": "hi"}]}})
    async with a2a_agent() as agent:
        app = AppConfig(agents={"echo": AgentConfig(url=agent.url)}, policies=_files(tmp_path, (A2A_POLICY,)))
        async with (
            inprocess.serving(policy_serve, _settings(tmp_path, opa.url), app) as policy,
            inprocess.verifier(tmp_path, app) as verifier,
            inprocess.graph(tmp_path, app) as graph,
            inprocess.proxy(
                tmp_path, app, policy_addr=policy["grpc"], verifier_addr=verifier["grpc"], graph_addr=graph["grpc"]
            ) as proxy,
            httpx.AsyncClient(base_url=f"http://{proxy['http']}") as http,
        ):
            answers = {}
            for name, caller, body in (
                ("sent", "planner", send),
                ("other agent", "mallory", send),
                # `tools-only` names only the tool family: it never allows an A2A action.
                ("not a tool", "planner", rpc("GetTask", {"id": "t-none"})),
                ("denied", "planner", rpc("CancelTask", {"id": "t-none"})),
            ):
                token = issue_token(ensure_dev_key(tmp_path), subject=caller)
                headers = {"authorization": f"Bearer {token}", "content-type": "application/json", "a2a-version": "1.0"}
                answers[name] = (await http.post("/a2a/echo", content=body, headers=headers)).json()
    assert answers["sent"]["result"]["task"]["artifacts"][0]["parts"][0]["text"] == "echo: hi"
    blocked = {name: answer["error"]["data"] for name, answer in answers.items() if name != "sent"}
    assert {name: (data["rule_id"], data["policy_name"]) for name, data in blocked.items()} == {
        "other agent": ("default", "a2a-opa"),
        "not a tool": ("default", "a2a-opa"),
        "denied": ("no-cancel", "a2a-opa"),
    }
    assert agent.methods() == ["SendMessage"]


async def test_with_opa_gone_every_decision_is_a_deny_with_the_reason(tmp_path: Path, decide: Any) -> None:
    app = AppConfig(policies=(DEMO_POLICY,))
    allowed = Case("add", "TOOL_CALL", "agent-1", "demo", "allow", "allow-add", tool="add")
    # The deadline leaves a freshly started OPA's first answer time to come on a loaded
    # machine (300 ms failed one CI run before OPA was stopped); a stopped OPA refuses the
    # connection at once, so the deny after it does not wait for the deadline.
    with running_opa() as own:
        async with inprocess.serving(policy_serve, _settings(tmp_path, own.url, opa_deadline_ms=2000), app) as addrs:
            before = await decide(addrs["grpc"], [_request(allowed, "before")])
            own.stop()
            after = await decide(addrs["grpc"], [_request(allowed, "after")])
    assert before["before"].effect == policy_pb2.ALLOW
    assert after["after"].effect == policy_pb2.DENY
    assert after["after"].reason.startswith("opa: ")
    assert "127.0.0.1" not in after["after"].reason


async def test_a_policy_bastion_rego_cannot_evaluate_stops_the_start(tmp_path: Path, opa: OpaServer) -> None:
    document = {
        "apiVersion": "bastion.dev/v1",
        "kind": "AgentPolicy",
        "metadata": {"name": "conditional", "version": 1},
        "spec": {
            "rules": [
                {"id": "small", "match": {"tools": ["pay__refund"]}, "when": "args.amount < 10", "effect": "allow"}
            ]
        },
    }
    app = AppConfig(policies=_files(tmp_path, (document,)))
    with pytest.raises(Exception, match="when") as failed:
        async with inprocess.serving(policy_serve, _settings(tmp_path, opa.url), app):
            pass
    assert "native engine" in str(failed.value)


async def test_the_opa_engine_needs_a_url(tmp_path: Path) -> None:
    settings = PolicySettings(
        home=tmp_path, policy_grpc_addr=inprocess.ANY, policy_addr=inprocess.ANY, policy_engine="opa"
    )
    with pytest.raises(Exception, match="BASTION_OPA_URL"):
        async with inprocess.serving(policy_serve, settings, AppConfig()):
            pass


async def test_decide_stream_answers_out_of_order_in_opa_mode(tmp_path: Path, opa: OpaServer, decide: Any) -> None:
    # Many requests on one stream: every one answered once, matched by request id.
    app = AppConfig(policies=(DEMO_POLICY,))
    case = Case("add", "TOOL_CALL", "agent-1", "demo", "allow", "allow-add", tool="add")
    settings = _settings(tmp_path, opa.url, opa_deadline_ms=BURST_DEADLINE_MS)
    async with inprocess.serving(policy_serve, settings, app) as addrs:
        answers = await decide(addrs["grpc"], [_request(case, f"q{i}") for i in range(100)])
    assert sorted(answers) == sorted(f"q{i}" for i in range(100))
    assert {answer.effect for answer in answers.values()} == {policy_pb2.ALLOW}
