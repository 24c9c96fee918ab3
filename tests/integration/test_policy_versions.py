"""Policy versions end to end: signed bundles over the admin REST, activation while deciding,
Watch, restarts, refusals of bad input, and the `bastion policy` CLI against a running service."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from fixtures.policycli import policy_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from bastion._appconfig import AppConfig, AuthConfig
from bastion._hosts import HostCheck
from bastion._identity import TokenVerifier, ensure_dev_key, issue_token, load_public_keys
from bastion._rpc import auth_metadata
from bastion.policy import BundleVerifier, PolicyRegistry, PolicySettings, PolicyStore, serve, sign_bundle
from bastion.policy._api import create_app
from bastion.policy._bundles import load_policy_keys
from bastion.v1 import policy_pb2, policy_pb2_grpc

TOKEN = "versions-test-service-token"
DEADLINE = 5.0
V1 = """apiVersion: bastion.dev/v1
kind: AgentPolicy
metadata: {name: pay, version: 1}
spec:
  rules:
    - {id: add-v1, match: {tools: ['demo__add']}, effect: allow}
"""


def _version(number: int, rule: str | None = None, effect: str = "allow") -> str:
    return (
        V1.replace("version: 1", f"version: {number}")
        .replace("add-v1", rule or f"add-v{number}")
        .replace("effect: allow", f"effect: {effect}")
    )


@dataclass(frozen=True)
class Running:
    grpc_addr: str
    http_url: str
    home: Path

    def bearer(self, *roles: str, subject: str = "ops-alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {issue_token(ensure_dev_key(self.home), subject=subject, roles=roles)}"}

    def sign(self, text: str, **kwargs: Any) -> str:
        return sign_bundle(text, ensure_dev_key(self.home), kid=kwargs.pop("kid", "dev"), **kwargs)


@contextlib.asynccontextmanager
async def _running(home: Path, policies: tuple[Path, ...] = (), **extra: Any) -> AsyncIterator[Running]:
    options = {"home": home, "policy_grpc_addr": "127.0.0.1:0", "policy_addr": "127.0.0.1:0", **extra}
    settings_ = PolicySettings(service_token=SecretStr(TOKEN), **options)
    bound: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings_, AppConfig(policies=policies), bound.set_result, stop))
    first: list[asyncio.Future[Any]] = [task, bound]
    await asyncio.wait(first, timeout=DEADLINE, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    addresses = bound.result()
    try:
        yield Running(addresses["grpc"], f"http://{addresses['http']}", home)
    finally:
        stop.set()
        await asyncio.wait_for(task, DEADLINE)


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Running]:
    policy = tmp_path / "pay.yaml"
    policy.write_text(V1)
    async with _running(tmp_path / "home", (policy,)) as running:
        yield running


async def _post(
    running: Running, path: str, body: Any = None, *, roles: tuple[str, ...] = ("operator",)
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=running.http_url, timeout=DEADLINE) as http:
        return await http.post(path, json=body, headers=running.bearer(*roles))


async def _get(running: Running, path: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=running.http_url, timeout=DEADLINE) as http:
        return await http.get(path, headers=running.bearer("auditor"))


async def _decide(running: Running, tool: str = "add") -> policy_pb2.Decision:
    async with grpc.aio.insecure_channel(running.grpc_addr) as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        request = policy_pb2.DecideRequest(
            action=policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server="demo", tool=tool),
            ctx=policy_pb2.Context(agent_id="agent-1"),
        )
        return await stub.Decide(request, metadata=auth_metadata(TOKEN), timeout=DEADLINE)


async def _version_numbers(running: Running, name: str = "pay") -> list[int]:
    reply = await _get(running, f"/v1/policies/{name}/versions")
    return [item["version"] for item in reply.json()["versions"]] if reply.status_code == 200 else []


# --- create, read, activate -------------------------------------------------------------------


async def test_a_signed_bundle_is_stored_with_author_kid_and_diff_then_activated(service: Running) -> None:
    created = await _post(service, "/v1/policies", {"bundle": service.sign(_version(2))})
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["name"], body["version"], body["created"], len(body["digest"])) == ("pay", 2, True, 64)
    assert (await _decide(service)).rule_id == "add-v1"  # stored, not active yet

    detail = (await _get(service, "/v1/policies/pay/versions/2")).json()
    assert (detail["author"], detail["signature_kid"], detail["active"], detail["document"]) == (
        "ops-alice",
        "dev",
        False,
        _version(2),
    )
    assert "-    id: add-v1\n+    id: add-v2\n" in detail["diff"]

    activated = await _post(service, "/v1/policies/pay/versions/2/activate")
    assert activated.json() == {"name": "pay", "version": 2, "digest": body["digest"], "previous_version": 1}
    assert (await _decide(service)).rule_id == "add-v2"
    listing = (await _get(service, "/v1/policies/pay/versions")).json()
    assert (listing["active_version"], [item["active"] for item in listing["versions"]]) == (2, [False, True])
    assert [item["author"] for item in listing["versions"]] == ["bastion.yaml", "ops-alice"]


async def test_the_same_bundle_again_is_a_200_no_op(service: Running) -> None:
    first = await _post(service, "/v1/policies", {"bundle": service.sign(_version(2))})
    again = await _post(service, "/v1/policies", {"bundle": service.sign(_version(2) + "# re-signed\n")})
    assert (first.status_code, again.status_code, again.json()["created"]) == (201, 200, False)
    assert await _version_numbers(service) == [1, 2]


async def test_validate_reports_problems_and_stores_nothing(service: Running) -> None:
    good = await _post(service, "/v1/policies/validate", {"document": _version(5)})
    bad = await _post(service, "/v1/policies/validate", {"document": _version(6).replace("effect:", "efect:")})
    assert good.json()["valid"] is True
    assert good.json()["version"] == 5
    assert bad.json()["valid"] is False
    assert any("did you mean 'effect'" in problem for problem in bad.json()["problems"])
    assert await _version_numbers(service) == [1]


async def test_watch_sends_the_active_set_then_an_activation_within_a_second(service: Running) -> None:
    async with grpc.aio.insecure_channel(service.grpc_addr) as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        call = stub.Watch(policy_pb2.WatchRequest(), metadata=auth_metadata(TOKEN), timeout=10)
        first = await call.read()
        assert isinstance(first, policy_pb2.BundleEvent)
        assert (first.kind, first.policy_name, first.version) == (policy_pb2.BundleEvent.LOADED, "pay", 1)
        assert orjson.loads(first.settings_json) == {
            "agents": ["*"],
            "limits": None,
            "taint": None,
            "verifier": None,
        }
        await _post(service, "/v1/policies", {"bundle": service.sign(_version(2))})
        created = await asyncio.wait_for(call.read(), 1.0)
        assert isinstance(created, policy_pb2.BundleEvent)
        assert (created.kind, created.version) == (policy_pb2.BundleEvent.CREATED, 2)
        started = time.monotonic()
        await _post(service, "/v1/policies/pay/versions/2/activate")
        activated = await asyncio.wait_for(call.read(), 1.0)
        assert time.monotonic() - started < 1.0
        assert isinstance(activated, policy_pb2.BundleEvent)
        assert (activated.kind, activated.version) == (policy_pb2.BundleEvent.ACTIVATED, 2)
        assert activated.bundle_digest == (await _get(service, "/v1/policies/pay/versions/2")).json()["digest"]
        call.cancel()


async def test_decisions_during_activations_are_each_entirely_old_or_new(service: Running) -> None:
    await _post(service, "/v1/policies", {"bundle": service.sign(_version(2, effect="deny"))})
    seen: set[tuple[str, int]] = set()
    stop = asyncio.Event()

    async def decide() -> None:
        async with grpc.aio.insecure_channel(service.grpc_addr) as channel:
            stub = policy_pb2_grpc.PolicyServiceStub(channel)
            request = policy_pb2.DecideRequest(
                action=policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server="demo", tool="add"),
                ctx=policy_pb2.Context(agent_id="agent-1"),
            )
            while not stop.is_set():
                decision = await stub.Decide(request, metadata=auth_metadata(TOKEN), timeout=DEADLINE)
                seen.add((decision.rule_id, decision.effect))

    deciders = [asyncio.create_task(decide()) for _ in range(4)]
    for version in (2, 1, 2, 1, 2):
        assert (await _post(service, f"/v1/policies/pay/versions/{version}/activate")).status_code == 200
    stop.set()
    await asyncio.gather(*deciders)
    assert seen <= {("add-v1", policy_pb2.ALLOW), ("add-v2", policy_pb2.DENY)}
    assert ("add-v2", policy_pb2.DENY) in seen or ("add-v1", policy_pb2.ALLOW) in seen


async def test_the_active_version_survives_a_restart(tmp_path: Path) -> None:
    policy = tmp_path / "pay.yaml"
    policy.write_text(V1)
    async with _running(tmp_path / "home", (policy,)) as running:
        await _post(running, "/v1/policies", {"bundle": running.sign(_version(2))})
        await _post(running, "/v1/policies/pay/versions/2/activate")
    async with _running(tmp_path / "home", (policy,)) as running:
        assert (await _decide(running)).rule_id == "add-v2"
        assert await _version_numbers(running) == [1, 2]


# --- refusals ---------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _tamper(bundle: str) -> str:
    header, payload, signature = bundle.split(".")
    text = base64.urlsafe_b64decode(payload + "==").decode().replace("effect: allow", "effect: deny")
    return f"{header}.{_b64(text.encode())}.{signature}"


def _unsigned(alg: str) -> str:
    header = orjson.dumps({"alg": alg, "kid": "dev", "iat": int(time.time()), "exp": int(time.time()) + 60})
    return f"{_b64(header)}.{_b64(_version(2).encode())}.{_b64(b'x' * 32)}"


@pytest.mark.parametrize(
    ("reason", "make"),
    [
        ("signature", lambda running: _tamper(running.sign(_version(2)))),
        ("expired", lambda running: running.sign(_version(2), ttl_seconds=1, now=int(time.time()) - 3600)),
        ("not_yet_valid", lambda running: running.sign(_version(2), now=int(time.time()) + 3600)),
        ("unknown_kid", lambda running: running.sign(_version(2), kid="retired")),
        ("signature", lambda running: sign_bundle(_version(2), Ed25519PrivateKey.generate(), kid="dev")),
        ("algorithm", lambda running: _unsigned("none")),
        ("algorithm", lambda running: _unsigned("HS256")),
    ],
    ids=["tampered", "expired", "not-yet-valid", "unknown-kid", "foreign-key", "alg-none", "hs256"],
)
async def test_bad_bundles_are_422_with_the_reason_counted_and_nothing_stored(
    service: Running, reason: str, make: Any
) -> None:
    reply = await _post(service, "/v1/policies", {"bundle": make(service)})
    assert reply.status_code == 422
    assert reply.json()["error"]["code"] == "bastion.policy.signature"
    assert f"({reason})" in reply.json()["error"]["message"]
    async with httpx.AsyncClient(base_url=service.http_url) as http:
        metrics = (await http.get("/metrics")).text
    assert f'bastion_policy_bundle_refusals_total{{reason="{reason}"}} 1.0' in metrics
    assert await _version_numbers(service) == [1]


async def test_an_unsigned_document_is_refused_unless_signing_is_switched_off(tmp_path: Path) -> None:
    async with _running(tmp_path / "strict") as running:
        reply = await _post(running, "/v1/policies", {"document": _version(2)})
        assert (reply.status_code, reply.json()["error"]["code"]) == (422, "bastion.policy.signature")
        assert "(unsigned)" in reply.json()["error"]["message"]
    async with _running(tmp_path / "lax", policy_require_signed=False) as running:
        reply = await _post(running, "/v1/policies", {"document": _version(2)})
        assert reply.status_code == 201
        assert (await _get(running, "/v1/policies/pay/versions/2")).json()["signature_kid"] is None


_ALIAS = _version(2).replace("spec:\n  rules:\n", "spec:\n  rules: &r\n") + "x: *r\n"


@pytest.mark.parametrize(
    ("path", "raw", "status", "code"),
    [
        ("/v1/policies", b'{"bundle": "a.b.c", "extra": 1}', 422, "bastion.invalid_request"),
        ("/v1/policies", b'{"bundle": 5}', 422, "bastion.invalid_request"),
        ("/v1/policies", b'{"bundle": "a", "bundle": "b"}', 422, "bastion.invalid_request"),
        ("/v1/policies", b"{}", 422, "bastion.invalid_request"),
        ("/v1/policies", b"[]", 422, "bastion.invalid_request"),
        ("/v1/policies", b"not json", 422, "bastion.invalid_request"),
        ("/v1/policies", b"\xff\xfe", 422, "bastion.invalid_request"),
        ("/v1/policies", b'{"bundle": "' + b"x" * (3 * 1024 * 1024) + b'"}', 413, "bastion.protocol.too_large"),
    ],
    ids=["unknown-field", "wrong-type", "duplicate-key", "empty", "array", "not-json", "not-utf8", "oversized"],
)
async def test_malformed_bodies_are_precise_4xx_and_store_nothing(
    service: Running, path: str, raw: bytes, status: int, code: str
) -> None:
    async with httpx.AsyncClient(base_url=service.http_url, timeout=DEADLINE) as http:
        reply = await http.post(
            path, content=raw, headers={**service.bearer("operator"), "content-type": "application/json"}
        )
    assert (reply.status_code, reply.json()["error"]["code"]) == (status, code), reply.text
    assert await _version_numbers(service) == [1]


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        (_version(2).replace("rules:", "rules:\n  rules:"), "duplicate key"),
        (_ALIAS, "aliases"),
        (_version(2).replace("effect: allow", "effect: [allow]"), "effect"),
        (_version(2) + "extra: 1\n", "unknown field 'extra'"),
    ],
    ids=["duplicate-yaml-key", "yaml-alias", "wrong-type", "unknown-field"],
)
async def test_invalid_documents_in_signed_bundles_are_422_and_store_nothing(
    service: Running, document: str, fragment: str
) -> None:
    reply = await _post(service, "/v1/policies", {"bundle": service.sign(document)})
    assert (reply.status_code, reply.json()["error"]["code"]) == (422, "bastion.policy.invalid")
    assert fragment in reply.json()["error"]["message"]
    assert await _version_numbers(service) == [1]


async def test_a_stored_version_with_other_content_is_409(service: Running) -> None:
    reply = await _post(service, "/v1/policies", {"bundle": service.sign(_version(1, rule="sneaky"))})
    assert (reply.status_code, reply.json()["error"]["code"]) == (409, "bastion.policy.version_exists")
    assert (await _decide(service)).rule_id == "add-v1"


async def test_put_refuses_a_body_that_disagrees_with_the_url(service: Running) -> None:
    async with httpx.AsyncClient(base_url=service.http_url, timeout=DEADLINE) as http:
        headers = service.bearer("operator")
        wrong = await http.put(
            "/v1/policies/pay/versions/3", json={"bundle": service.sign(_version(2))}, headers=headers
        )
        right = await http.put(
            "/v1/policies/pay/versions/2", json={"bundle": service.sign(_version(2))}, headers=headers
        )
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (422, "bastion.policy.invalid")
    assert "the URL names policy 'pay' v3 but the document is 'pay' v2" in wrong.json()["error"]["message"]
    assert right.status_code == 201
    assert await _version_numbers(service) == [1, 2]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/policies/PAY/versions", 422),
        ("/v1/policies/p%C3%A0y/versions", 422),
        ("/v1/policies/%EF%BD%90ay/versions", 422),
        ("/v1/policies/pay%20/versions", 422),
        ("/v1/policies/nobody/versions", 404),
        ("/v1/policies/pay/versions/7", 404),
        ("/v1/policies/pay/versions/0", 422),
        ("/v1/policies/pay/versions/99999999999999999999999", 422),
        ("/v1/policies/pay/versions/one", 422),
        # Spellings int() reads as a stored version: one address per version, so an
        # activation quoted in a log or an audit trail means the same to every reader.
        ("/v1/policies/pay/versions/02", 422),
        ("/v1/policies/pay/versions/+2", 422),
        ("/v1/policies/pay/versions/%202", 422),
        ("/v1/policies/pay/versions/2.0", 422),
        ("/v1/policies/pay/versions/1_0", 422),
    ],
)
async def test_name_and_version_variants_never_resolve_to_another_policy(
    service: Running, path: str, status: int
) -> None:
    assert (await _get(service, path)).status_code == status
    activate = await _post(service, path + ("/activate" if "/versions/" in path else ""))
    assert activate.status_code in (status, 404, 405)
    assert (await _decide(service)).rule_id == "add-v1"


@pytest.mark.parametrize("roles", [(), ("agent",), ("auditor",)])
async def test_writes_need_an_operator(service: Running, roles: tuple[str, ...]) -> None:
    bundle = {"bundle": service.sign(_version(2))}
    for path, body in [
        ("/v1/policies", bundle),
        ("/v1/policies/validate", bundle),
        ("/v1/policies/pay/versions/1/activate", None),
    ]:
        assert (await _post(service, path, body, roles=roles)).status_code == 403, path
    async with httpx.AsyncClient(base_url=service.http_url) as http:
        assert (await http.post("/v1/policies", json=bundle)).status_code == 401
    assert await _version_numbers(service) == [1]


async def test_an_operator_of_another_tenant_may_not_create_or_activate_versions(service: Running) -> None:
    # A policy governs the agents of every tenant: its changes belong to the deployment's own tenant.
    key = ensure_dev_key(service.home)
    globex = {"Authorization": f"Bearer {issue_token(key, subject='ops-globex', roles=('operator',), tenant='globex')}"}
    stored = await _post(service, "/v1/policies", {"bundle": service.sign(_version(2, effect="deny"))})
    assert stored.status_code == 201, stored.text
    async with httpx.AsyncClient(base_url=service.http_url, timeout=DEADLINE) as http:
        refused = [
            await http.post("/v1/policies", json={"bundle": service.sign(_version(3))}, headers=globex),
            await http.put("/v1/policies/pay/versions/4", json={"bundle": service.sign(_version(4))}, headers=globex),
            await http.post("/v1/policies/pay/versions/2/activate", headers=globex),
        ]
        # Reads and validation change nothing and stay open to every operator.
        validated = await http.post("/v1/policies/validate", json={"bundle": service.sign(_version(5))}, headers=globex)
        listed = await http.get("/v1/policies/pay/versions", headers=globex)

    for response in refused:
        assert response.status_code == 403, response.request.url
        assert response.json()["error"] == {
            "code": "bastion.auth.forbidden",
            "message": "'ops-globex' of tenant 'globex' may not change policies: a policy governs the agents of "
            "every tenant, so only admins and the 'default' tenant's operators may",
        }
    assert (validated.status_code, listed.status_code) == (200, 200)
    assert await _version_numbers(service) == [1, 2]
    assert (await _decide(service)).rule_id == "add-v1", "v1 stays in force"


async def test_an_admin_of_any_tenant_and_an_operator_of_the_default_one_change_policies(service: Running) -> None:
    key = ensure_dev_key(service.home)
    admin = {"Authorization": f"Bearer {issue_token(key, subject='root', roles=('admin',), tenant='globex')}"}
    async with httpx.AsyncClient(base_url=service.http_url, timeout=DEADLINE) as http:
        created = await http.post("/v1/policies", json={"bundle": service.sign(_version(2))}, headers=admin)
        activated = await http.post("/v1/policies/pay/versions/2/activate", headers=admin)
    back = await _post(service, "/v1/policies/pay/versions/1/activate")  # an operator of tenant 'default'

    assert (created.status_code, activated.status_code, back.status_code) == (201, 200, 200)
    assert back.json()["previous_version"] == 2


# --- the CLI against a running service --------------------------------------------------------


async def _cli(running: Running, *args: str) -> tuple[int, str, str]:
    return await policy_cli(running.http_url, running.home, *args)


async def test_cli_apply_versions_diff_activate(service: Running, tmp_path: Path) -> None:
    file = tmp_path / "v2.yaml"
    file.write_text(_version(2))
    code, out, err = await _cli(service, "apply", str(file), "--json")
    assert code == 0, err
    applied = orjson.loads(out)
    assert (applied["version"], applied["created"], applied["activated"], applied["previous_version"]) == (
        2,
        True,
        True,
        1,
    )
    assert (await _decide(service)).rule_id == "add-v2"

    code, out, _ = await _cli(service, "versions", "pay", "--json")
    versions = orjson.loads(out)["versions"]
    assert [(item["version"], item["signature_kid"], item["active"]) for item in versions] == [
        (1, None, False),
        (2, "dev", True),
    ]

    code, out, _ = await _cli(service, "diff", "pay", "1", "2")
    assert code == 0
    assert "-    id: add-v1\n+    id: add-v2" in out

    code, out, _ = await _cli(service, "activate", "pay", "1")
    assert (code, out.strip()) == (0, "pay v1 active (was v2)")
    assert (await _decide(service)).rule_id == "add-v1"

    code, _, err = await _cli(service, "apply", str(file), "--unsigned")
    assert code == 1
    assert "(unsigned)" in err

    bad = tmp_path / "bad.yaml"
    bad.write_text(_version(3).replace("effect:", "efect:"))
    code, out, _ = await _cli(service, "validate", str(bad))
    assert code == 1
    assert "did you mean 'effect'" in out
    code, _, err = await _cli(service, "activate", "pay", "9")
    assert (code, "404" in err) == (1, True)
    code, _, err = await _cli(service, "versions", "pay", "--token", "not-a-jwt")
    assert (code, "401" in err) == (2, True)


# --- fuzz -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lax_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, PolicyStore, dict[str, str]]]:
    home = tmp_path_factory.mktemp("fuzz")
    store = PolicyStore(home / "versions.db")
    app = create_app(
        policies=PolicyRegistry(store),
        bundles=BundleVerifier(load_policy_keys(AppConfig(), home)),
        verifier=TokenVerifier(AuthConfig(), load_public_keys(AuthConfig(), home)),
        hosts=HostCheck(("testserver",), "127.0.0.1"),
        registry=CollectorRegistry(),
        is_ready=lambda: True,
        require_signed=False,
    )
    headers = {"Authorization": f"Bearer {issue_token(ensure_dev_key(home), subject='fuzz', roles=('operator',))}"}
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, store, headers
    store.close()


_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20), st.floats(allow_nan=False))
_YAMLISH = st.one_of(
    st.text(max_size=200),
    st.builds(lambda cut, junk: V1[:cut] + junk + V1[cut:], st.integers(0, len(V1)), st.text(max_size=10)),
    st.builds(lambda n: _version(n), st.integers(-(2**70), 2**70)),
)
_BODIES = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda value: json.dumps(value).encode(),
        st.recursive(
            _SCALARS, lambda inner: st.lists(inner) | st.dictionaries(st.text(max_size=8), inner), max_leaves=10
        ),
    ),
    st.builds(lambda text: orjson.dumps({"document": text}), _YAMLISH),
    st.builds(lambda text: orjson.dumps({"bundle": text}), st.text(max_size=200)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_BODIES)
def test_fuzzed_create_bodies_never_5xx_and_never_store_garbage(
    lax_app: tuple[TestClient, PolicyStore, dict[str, str]], body: bytes
) -> None:
    client, _store, headers = lax_app
    before = client.get("/v1/policies/pay/versions", headers=headers)
    reply = client.post("/v1/policies", content=body, headers={**headers, "content-type": "application/json"})
    after = client.get("/v1/policies/pay/versions", headers=headers)
    assert reply.status_code < 500, reply.text
    assert reply.json().get("error") is not None or reply.status_code in (200, 201)
    if reply.status_code != 201:
        assert after.json() == before.json()
