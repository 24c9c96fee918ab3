"""The policy service in-process: real grpc.aio and REST servers on port 0, real tokens."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

import grpc
import httpx
import orjson
import pytest
import uvicorn
from fixtures.graphapi import (
    DUPLICATE_HOST_IDS,
    DUPLICATE_HOSTS,
    OPEN_PATHS,
    app_routes,
    callers,
    guarded_routes,
    open_path,
    raw_get,
    statuses,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from bastion import ConfigError, PolicyValidationError
from bastion._appconfig import AppConfig, AuthConfig
from bastion._hosts import HostCheck
from bastion._identity import SERVICE_TOKEN_FILE, TokenVerifier, ensure_dev_key, issue_token, load_public_keys
from bastion._rpc import MAX_BATCH_REQUESTS, auth_metadata
from bastion._web import start_web_server
from bastion.policy import (
    BundleVerifier,
    PolicyRegistry,
    PolicySettings,
    PolicyStore,
    load_policy,
    serve,
    version_digest,
)
from bastion.policy._api import create_app
from bastion.policy._bundles import load_policy_keys
from bastion.policy._rollouts import RolloutManager, RolloutRequest
from bastion.v1 import policy_pb2, policy_pb2_grpc

if TYPE_CHECKING:
    from bastion.v1.policy_pb2_grpc import PolicyServiceAsyncStub

DEMO_PATH = Path(__file__).resolve().parents[2] / "examples" / "policies" / "demo.yaml"
TOKEN = "integration-test-service-token"
DEADLINE = 5.0


@dataclass(frozen=True)
class Running:
    grpc_addr: str
    http_url: str
    home: Path
    token: str
    stop: asyncio.Event


@contextlib.asynccontextmanager
async def _running(
    home: Path,
    policies: tuple[Path, ...] = (DEMO_PATH,),
    *,
    token: str | None = TOKEN,
    grpc_addr: str = "127.0.0.1:0",
    http_addr: str = "127.0.0.1:0",
) -> AsyncIterator[Running]:
    settings = PolicySettings(
        home=home,
        policy_grpc_addr=grpc_addr,
        policy_addr=http_addr,
        service_token=SecretStr(token) if token else None,
    )
    bound: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, AppConfig(policies=policies), bound.set_result, stop))
    first: list[asyncio.Future[Any]] = [task, bound]
    await asyncio.wait(first, timeout=DEADLINE, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    addresses = bound.result()
    used_token = token or (home / SERVICE_TOKEN_FILE).read_text().strip()
    try:
        yield Running(addresses["grpc"], f"http://{addresses['http']}", home, used_token, stop)
    finally:
        stop.set()
        await asyncio.wait_for(task, DEADLINE)


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Running]:
    async with _running(tmp_path / "home") as running:
        yield running


@contextlib.asynccontextmanager
async def _stub(running: Running) -> AsyncIterator[PolicyServiceAsyncStub]:
    async with grpc.aio.insecure_channel(running.grpc_addr) as channel:
        yield policy_pb2_grpc.PolicyServiceStub(channel)


def _request(tool: str, agent: str = "agent-1", server: str = "demo") -> policy_pb2.DecideRequest:
    return policy_pb2.DecideRequest(
        action=policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server=server, tool=tool, method="tools/call"),
        ctx=policy_pb2.Context(agent_id=agent, workflow_id="wf-1"),
    )


async def _decide(running: Running, request: policy_pb2.DecideRequest) -> policy_pb2.Decision:
    async with _stub(running) as stub:
        return await stub.Decide(request, metadata=auth_metadata(running.token), timeout=DEADLINE)


# --- Decide / DecideBatch over gRPC ---------------------------------------------------------


async def test_decide_allows_demo_add_with_the_service_token(service: Running) -> None:
    decision = await _decide(service, _request("add"))
    assert decision.effect == policy_pb2.ALLOW
    assert decision.reason == f"rule '{decision.rule_id}' allows demo__add for agent 'agent-1'"
    assert (decision.policy_name, decision.policy_version) == ("demo", 1)
    assert len(decision.bundle_digest) == 64
    assert decision.rollout_arm == policy_pb2.ROLLOUT_ARM_UNSPECIFIED  # no rollout touches 'demo'


async def test_decide_denies_delete_file_by_the_explicit_rule(service: Running) -> None:
    decision = await _decide(service, _request("delete_file"))
    assert (decision.effect, decision.rule_id) == (policy_pb2.DENY, "no-file-deletes")


async def test_decide_denies_an_unlisted_tool_by_default(service: Running) -> None:
    decision = await _decide(service, _request("echo", agent="a"))
    assert (decision.effect, decision.rule_id) == (policy_pb2.DENY, "default")
    assert decision.reason == "no rule matched demo__echo for agent 'a' (default deny)"


async def test_decide_denies_kinds_this_version_does_not_govern(service: Running) -> None:
    request = _request("add")
    request.action.kind = policy_pb2.LLM_CALL
    decision = await _decide(service, request)
    assert decision.effect == policy_pb2.DENY
    assert decision.reason == "action kind LLM_CALL is not governed by this policy version"


@pytest.mark.parametrize("metadata", [(), auth_metadata("wrong-token"), (("authorization", TOKEN),)])
async def test_decide_without_the_right_service_token_is_unauthenticated(
    service: Running, metadata: tuple[tuple[str, str], ...]
) -> None:
    async with _stub(service) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Decide(_request("add"), metadata=metadata, timeout=DEADLINE)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_decide_batch_returns_one_decision_per_request_in_order(service: Running) -> None:
    tools = ["delete_file", "add", "echo", "add"]
    batch = policy_pb2.DecideBatchRequest(requests=[_request(tool) for tool in tools])
    async with _stub(service) as stub:
        reply = await stub.DecideBatch(batch, metadata=auth_metadata(service.token), timeout=DEADLINE)
    assert [decision.effect for decision in reply.decisions] == [
        policy_pb2.DENY,
        policy_pb2.ALLOW,
        policy_pb2.DENY,
        policy_pb2.ALLOW,
    ]
    assert [decision.reason.split(" ")[3] for decision in reply.decisions[:2]] == ["demo__delete_file", "demo__add"]


async def test_a_batch_over_the_request_bound_is_invalid_and_the_service_serves_on(service: Running) -> None:
    # An attacker's probe with the service token: 729,000 requests in one message held the
    # loop for 16-34 s at 1.5 GB, and every other caller's decision missed its deadline.
    over = policy_pb2.DecideBatchRequest(requests=[_request("add")] * (MAX_BATCH_REQUESTS + 1))
    at_the_bound = policy_pb2.DecideBatchRequest(requests=[_request("add")] * MAX_BATCH_REQUESTS)
    metadata = auth_metadata(service.token)
    async with _stub(service) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await stub.DecideBatch(over, metadata=metadata, timeout=DEADLINE)
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            async for _ in stub.DecideBatchStream(iter([over]), metadata=metadata, timeout=DEADLINE):
                pass
        answered = await stub.DecideBatch(at_the_bound, metadata=metadata, timeout=DEADLINE)
    for refused in (unary.value, streamed.value):
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"at most {MAX_BATCH_REQUESTS}" in (refused.details() or "")
    assert len(answered.decisions) == MAX_BATCH_REQUESTS
    assert (await _decide(service, _request("add"))).effect == policy_pb2.ALLOW


async def test_service_without_policies_denies_everything(tmp_path: Path) -> None:
    async with _running(tmp_path, policies=()) as running:
        decision = await _decide(running, _request("add"))
    assert decision.effect == policy_pb2.DENY
    assert decision.reason == "no policy loaded (default deny)"


async def test_service_token_is_generated_under_home_when_none_is_configured(tmp_path: Path) -> None:
    async with _running(tmp_path, token=None) as running:
        assert running.token
        assert (await _decide(running, _request("add"))).effect == policy_pb2.ALLOW


# --- Watch and health ---------------------------------------------------------------------


async def test_watch_streams_a_loaded_event_per_policy_then_stays_open(service: Running) -> None:
    async with _stub(service) as stub:
        call = stub.Watch(policy_pb2.WatchRequest(), metadata=auth_metadata(service.token), timeout=DEADLINE)
        event = await call.read()
        assert isinstance(event, policy_pb2.BundleEvent)
        assert event.kind == policy_pb2.BundleEvent.LOADED
        assert (event.policy_name, event.version) == ("demo", 1)
        assert event.bundle_digest == version_digest(load_policy(DEMO_PATH))
        assert orjson.loads(event.settings_json) == {
            "agents": ["*"],
            "limits": None,
            "taint": None,
            "verifier": None,
        }
        assert event.at.seconds > 0
        await asyncio.sleep(0.2)
        assert not call.done()
        call.cancel()
        assert await call.code() == grpc.StatusCode.CANCELLED


async def test_watch_ends_cleanly_when_the_service_stops(tmp_path: Path) -> None:
    async with _running(tmp_path) as running, _stub(running) as stub:
        call = stub.Watch(policy_pb2.WatchRequest(policy_name="demo"), metadata=auth_metadata(running.token))
        event = await call.read()
        assert isinstance(event, policy_pb2.BundleEvent)
        assert event.policy_name == "demo"
        running.stop.set()
        assert await asyncio.wait_for(call.read(), DEADLINE) is grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK


async def test_grpc_health_reports_serving_without_the_token(service: Running) -> None:
    async with grpc.aio.insecure_channel(service.grpc_addr) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service="bastion.v1.PolicyService"), timeout=DEADLINE)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


# --- admin REST -------------------------------------------------------------------------------


def _bearer(running: Running, *roles: str) -> dict[str, str]:
    token = issue_token(ensure_dev_key(running.home), subject="someone", roles=roles)
    return {"Authorization": f"Bearer {token}"}


async def test_probes_report_alive_and_ready(service: Running) -> None:
    async with httpx.AsyncClient(base_url=service.http_url, timeout=DEADLINE) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


async def test_admin_rest_responses_name_neither_the_server_software_nor_the_date(service: Running) -> None:
    async with httpx.AsyncClient(base_url=service.http_url, timeout=DEADLINE) as client:
        reply = await client.get("/healthz")
    assert reply.status_code == 200
    assert "server" not in reply.headers
    assert "date" not in reply.headers


async def test_metrics_count_decisions_by_effect_and_rule(service: Running) -> None:
    async with httpx.AsyncClient(base_url=service.http_url, timeout=DEADLINE) as client:
        before = (await client.get("/metrics")).text
        await _decide(service, _request("add"))
        await _decide(service, _request("delete_file"))
        await _decide(service, _request("delete_file"))
        after = await client.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    assert 'bastion_decisions_total{effect="DENY",rule="default"} 0.0' in before
    assert 'bastion_decisions_total{effect="ALLOW",rule="allow-add"} 1.0' in after.text
    assert 'bastion_decisions_total{effect="DENY",rule="no-file-deletes"} 2.0' in after.text


async def test_list_policies_without_a_token_is_401(service: Running) -> None:
    async with httpx.AsyncClient(base_url=service.http_url, timeout=DEADLINE) as client:
        reply = await client.get("/v1/policies")
    assert reply.status_code == 401
    assert reply.headers["www-authenticate"] == "Bearer"
    assert reply.json()["error"]["code"] == "bastion.auth.unauthenticated"


async def test_list_policies_with_a_token_signed_by_another_key_is_401(service: Running, tmp_path: Path) -> None:
    foreign = issue_token(ensure_dev_key(tmp_path / "elsewhere"), subject="ops", roles=("operator",))
    async with httpx.AsyncClient(base_url=service.http_url, timeout=DEADLINE) as client:
        reply = await client.get("/v1/policies", headers={"Authorization": f"Bearer {foreign}"})
    assert reply.status_code == 401
    assert "invalid token" in reply.json()["error"]["message"]


async def test_list_policies_with_an_agent_token_is_403(service: Running) -> None:
    async with httpx.AsyncClient(base_url=service.http_url, timeout=DEADLINE) as client:
        reply = await client.get("/v1/policies", headers=_bearer(service, "agent"))
    assert reply.status_code == 403
    assert reply.json()["error"]["code"] == "bastion.auth.forbidden"


@pytest.mark.parametrize("role", ["operator", "admin", "auditor"])
async def test_list_policies_shows_the_active_policies_to_operators_and_auditors(service: Running, role: str) -> None:
    async with httpx.AsyncClient(base_url=service.http_url, timeout=DEADLINE) as client:
        reply = await client.get("/v1/policies", headers=_bearer(service, role))
    assert reply.status_code == 200
    body = reply.json()
    assert body["bundle_digest"] == (await _decide(service, _request("add"))).bundle_digest
    assert [
        {key: policy[key] for key in ("name", "version", "digest", "rule_count", "activated_by")}
        for policy in body["policies"]
    ] == [
        {
            "name": "demo",
            "version": 1,
            "digest": version_digest(load_policy(DEMO_PATH)),
            "rule_count": 2,
            "activated_by": "bastion.yaml",
        }
    ]


async def test_every_admin_route_but_the_probes_needs_a_token_and_changes_need_an_operator(tmp_path: Path) -> None:
    verifier = TokenVerifier(AuthConfig(), load_public_keys(AuthConfig(), tmp_path))
    store = PolicyStore(tmp_path / "versions.db")
    policies = PolicyRegistry(store)
    await policies.apply_files((DEMO_PATH,))
    # A running rollout, so its routes are exercised on an id that exists.
    registry = CollectorRegistry()
    rollouts = RolloutManager(policies, registry=registry)
    await policies.create(DEMO_PATH.read_text().replace("version: 1", "version: 2"), author="test")
    rollout = await rollouts.start(RolloutRequest(policy="demo", version=2, percent=10), by="test")
    app = create_app(
        policies=policies,
        bundles=BundleVerifier(load_policy_keys(AppConfig(), tmp_path)),
        verifier=verifier,
        hosts=HostCheck((), "127.0.0.1"),
        registry=registry,
        is_ready=lambda: True,
        rollouts=rollouts,
    )
    routes = guarded_routes(app, {"name": "demo", "version": "1", "id": rollout.id})
    who = callers(tmp_path, tmp_path / "elsewhere")
    server = await start_web_server(app, "127.0.0.1:0")
    try:
        url = f"http://{server.address}"
        answered = {route: await statuses(url, *route, who) for route in routes}
        async with httpx.AsyncClient(base_url=url) as http:
            open_routes = [(method, path) for method, path in app_routes(app) if path in OPEN_PATHS]
            unauthenticated = {
                path: (await http.request(method, open_path(path))).status_code for method, path in open_routes
            }
    finally:
        await server.stop()
        store.close()

    assert ("GET", "/v1/policies") in routes
    assert ("POST", "/v1/policies/demo/versions/1/activate") in routes
    assert ("POST", f"/v1/rollouts/{rollout.id}/promote") in routes
    assert set(unauthenticated.values()) == {200}, unauthenticated
    refused = {"anonymous": 401, "garbage": 401, "expired": 401, "foreign": 401, "agent": 403}
    for (method, path), got in answered.items():
        assert {caller: got[caller] for caller in refused} == refused, (method, path)
        if method == "GET":
            assert {got["auditor"], got["operator"], got["admin"]} == {200}, (method, path)
        else:
            assert got["auditor"] == 403, (method, path)
            assert got["operator"] not in (401, 403), (method, path)
            assert got["admin"] not in (401, 403), (method, path)


async def test_a_foreign_host_is_403_on_the_admin_rest_even_with_an_operator_token(service: Running) -> None:
    operator = _bearer(service, "operator")
    async with httpx.AsyncClient(base_url=service.http_url, timeout=DEADLINE) as client:
        refused = await client.get("/v1/policies", headers={**operator, "Host": "evil.example.com"})
        accepted = await client.get("/v1/policies", headers=operator)
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "bastion.host_not_allowed")
    assert accepted.status_code == 200


@pytest.mark.parametrize("headers", DUPLICATE_HOSTS, ids=DUPLICATE_HOST_IDS)
async def test_duplicate_host_or_origin_headers_are_403_on_the_admin_rest(
    service: Running, headers: list[tuple[str, str]]
) -> None:
    operator = list(_bearer(service, "operator").items())
    status, body = await raw_get(service.http_url.removeprefix("http://"), "/v1/policies", [*headers, *operator])
    assert (status, body["error"]["code"]) == (403, "bastion.host_not_allowed")
    assert body["error"]["message"].startswith("more than one")


# --- startup failures -------------------------------------------------------------------------


def _never_ready() -> Callable[[dict[str, str]], None]:
    def ready(addresses: dict[str, str]) -> None:
        raise AssertionError(f"reported ready despite a startup failure: {addresses}")

    return ready


async def test_bad_policy_file_stops_startup_with_the_clear_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEMO_PATH.read_text(encoding="utf-8").replace("effect: allow", "efect: allow"), encoding="utf-8")
    settings = PolicySettings(home=tmp_path, policy_grpc_addr="127.0.0.1:0", policy_addr="127.0.0.1:0")
    with pytest.raises(PolicyValidationError) as caught:
        await serve(settings, AppConfig(policies=(bad,)), _never_ready(), asyncio.Event())
    assert f"{bad}: policy 'demo' v1 rule 'allow-add': unknown field 'efect' (did you mean 'effect'?)" in str(
        caught.value
    )


@pytest.mark.parametrize("taken", ["grpc_addr", "http_addr"])
async def test_a_taken_port_is_a_config_error_naming_the_address(tmp_path: Path, taken: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as occupied:
        addr = f"127.0.0.1:{occupied.getsockname()[1]}"
        with pytest.raises(ConfigError, match=f"cannot listen on {addr}"):
            async with _running(
                tmp_path,
                grpc_addr=addr if taken == "grpc_addr" else "127.0.0.1:0",
                http_addr=addr if taken == "http_addr" else "127.0.0.1:0",
            ):
                pass


async def test_a_taken_admin_port_names_the_variable_to_change(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as occupied:
        addr = f"127.0.0.1:{occupied.getsockname()[1]}"
        with pytest.raises(ConfigError) as caught:
            async with _running(tmp_path, http_addr=addr):
                pass
    assert str(caught.value) == f"cannot listen on {addr} (BASTION_POLICY_ADDR): Address already in use"


async def test_service_fails_with_the_error_when_the_admin_rest_server_dies(tmp_path: Path) -> None:
    settings = PolicySettings(home=tmp_path, policy_grpc_addr="127.0.0.1:0", policy_addr="127.0.0.1:0")
    reported: list[dict[str, str]] = []
    serving = asyncio.Event()

    def ready(addresses: dict[str, str]) -> None:
        reported.append(addresses)
        serving.set()

    async def crash_once_serving(server: uvicorn.Server) -> None:
        await serving.wait()
        # Close the listener as uvicorn's own shutdown would, so the fault leaks no socket.
        for listener in server.servers:
            listener.close()
        raise RuntimeError("admin REST server crashed")

    stop = asyncio.Event()
    with mock.patch.object(uvicorn.Server, "main_loop", crash_once_serving):
        task = asyncio.create_task(serve(settings, AppConfig(policies=(DEMO_PATH,)), ready, stop))
        done, _ = await asyncio.wait({task}, timeout=DEADLINE)
        stop.set()  # lets a service that missed the crash finish, so the assertions below can fail cleanly
        with pytest.raises(RuntimeError, match="admin REST server crashed"):
            await task
    assert done == {task}, "the service kept running without its admin REST server"
    assert [set(addresses) for addresses in reported] == [{"grpc", "http"}]
