"""The shared REST edge on a small app: bastion._auth's role guards, bastion._rest's error
body and its Host check, driven over ASGI (httpx, or a hand-made scope where httpx would
merge duplicate headers)."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import Depends, FastAPI
from fixtures.graphapi import bearer

from bastion._apikeys import IdentityState
from bastion._appconfig import AuthConfig
from bastion._auth import require_home_operator, require_operator, require_reader
from bastion._hosts import HostCheck
from bastion._identity import Principal, TokenVerifier, ensure_dev_key, issue_token, load_public_keys
from bastion._rest import rest_app
from bastion.v1 import policy_pb2


def _app(home: Path, identity: IdentityState | None = None) -> FastAPI:
    verifier = TokenVerifier(AuthConfig(), load_public_keys(AuthConfig(), home), identity=identity)
    app = rest_app(title="test", hosts=HostCheck((), "127.0.0.1"))
    # Defaults, not Annotated aliases: FastAPI resolves string annotations in module globals.
    reader = Depends(require_reader(verifier))
    operator = Depends(require_operator(verifier))
    home_operator = Depends(require_home_operator(verifier, "change shared things", "they govern every tenant"))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/things")
    async def read(who: Principal = reader) -> dict[str, str]:
        return {"subject": who.subject}

    @app.post("/things")
    async def change(who: Principal = operator) -> dict[str, str]:
        return {"subject": who.subject}

    @app.post("/shared")
    async def change_shared(who: Principal = home_operator) -> dict[str, str]:
        return {"subject": who.subject}

    @app.get("/bug")
    async def bug() -> None:
        raise RuntimeError("a bug")

    return app


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=_app(tmp_path), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080") as http:
        yield http


def _token(home: Path, *roles: str, ttl: int = 3600, tenant: str = "default") -> dict[str, str]:
    return bearer(issue_token(ensure_dev_key(home), subject="someone", roles=roles, ttl_seconds=ttl, tenant=tenant))


def test_the_guards_are_async_because_the_verifier_cache_is_not_thread_safe(tmp_path: Path) -> None:
    verifier = TokenVerifier(AuthConfig(), load_public_keys(AuthConfig(), tmp_path))
    assert inspect.iscoroutinefunction(require_reader(verifier))
    assert inspect.iscoroutinefunction(require_operator(verifier))


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic c29tZW9uZTpzZWNyZXQ="},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not-a-jwt"},
    ],
    ids=["missing", "basic", "empty", "garbage"],
)
async def test_no_usable_token_is_401_with_a_bearer_challenge(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    for method in ("GET", "POST"):
        response = await client.request(method, "/things", headers=headers)
        assert response.status_code == 401, method
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"]["code"] == "bastion.auth.unauthenticated"


async def test_an_expired_token_or_one_signed_by_another_key_is_401(client: httpx.AsyncClient, tmp_path: Path) -> None:
    expired = await client.get("/things", headers=_token(tmp_path, "operator", ttl=-60))
    foreign = await client.get("/things", headers=_token(tmp_path / "elsewhere", "operator"))

    assert (expired.status_code, foreign.status_code) == (401, 401)
    assert "expired" in expired.json()["error"]["message"]
    assert "invalid token" in foreign.json()["error"]["message"]


@pytest.mark.parametrize("roles", [(), ("agent",), ("billing", "viewer")])
async def test_a_token_without_an_operator_or_auditor_role_is_403_everywhere(
    client: httpx.AsyncClient, tmp_path: Path, roles: tuple[str, ...]
) -> None:
    for method in ("GET", "POST"):
        response = await client.request(method, "/things", headers=_token(tmp_path, *roles))
        assert response.status_code == 403, method
        assert "www-authenticate" not in response.headers
        assert response.json()["error"]["code"] == "bastion.auth.forbidden"
        assert "'someone' may not" in response.json()["error"]["message"]


async def test_an_auditor_reads_but_may_not_change(client: httpx.AsyncClient, tmp_path: Path) -> None:
    read = await client.get("/things", headers=_token(tmp_path, "auditor"))
    change = await client.post("/things", headers=_token(tmp_path, "auditor"))

    assert (read.status_code, read.json()) == (200, {"subject": "someone"})
    assert change.status_code == 403
    assert "role 'operator' or 'admin' required" in change.json()["error"]["message"]


@pytest.mark.parametrize("role", ["operator", "admin"])
async def test_operators_and_admins_read_and_change(client: httpx.AsyncClient, tmp_path: Path, role: str) -> None:
    read = await client.get("/things", headers=_token(tmp_path, role))
    change = await client.post("/things", headers=_token(tmp_path, "agent", role))

    assert (read.status_code, change.status_code) == (200, 200)


@pytest.mark.parametrize(
    ("roles", "tenant"),
    [(("operator",), "default"), (("admin",), "globex"), (("operator", "admin"), "default")],
    ids=["home-operator", "admin-of-another-tenant", "home-admin"],
)
async def test_what_every_tenant_shares_is_changed_by_admins_and_home_operators(
    client: httpx.AsyncClient, tmp_path: Path, roles: tuple[str, ...], tenant: str
) -> None:
    response = await client.post("/shared", headers=_token(tmp_path, *roles, tenant=tenant))
    assert (response.status_code, response.json()) == (200, {"subject": "someone"})


@pytest.mark.parametrize(
    ("roles", "tenant", "refusal"),
    [
        (
            ("operator",),
            "globex",
            "'someone' of tenant 'globex' may not change shared things: they govern every tenant",
        ),
        (("auditor",), "default", "role 'operator' or 'admin' required"),
        ((), "default", "role 'operator' or 'admin' required"),
    ],
    ids=["operator-of-another-tenant", "auditor", "agent"],
)
async def test_what_every_tenant_shares_is_refused_to_others_with_the_reason(
    client: httpx.AsyncClient, tmp_path: Path, roles: tuple[str, ...], tenant: str, refusal: str
) -> None:
    response = await client.post("/shared", headers=_token(tmp_path, *roles, tenant=tenant))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "bastion.auth.forbidden"
    assert refusal in response.json()["error"]["message"]


async def test_every_guard_refuses_jwts_with_503_until_the_revocations_arrive_and_logs_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    identity = IdentityState()
    identity.unsynced_reason = "its WatchIdentity stream failed: UNAVAILABLE"
    transport = httpx.ASGITransport(app=_app(tmp_path, identity))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080") as http:
        token = _token(tmp_path, "admin")
        refused = [
            await http.get("/things", headers=token),
            await http.post("/things", headers=token),
            await http.post("/shared", headers=token),
        ]
        identity.apply(policy_pb2.IdentityEvent(snapshot=True))
        served = await http.get("/things", headers=token)

    for response in refused:
        assert response.status_code == 503
        assert "www-authenticate" not in response.headers
        assert response.json()["error"]["code"] == "bastion.auth.revocations_unavailable"
        assert "revocations not loaded" in response.json()["error"]["message"]
        assert "its WatchIdentity stream failed: UNAVAILABLE" in response.json()["error"]["message"]
    assert [r.message for r in caplog.records if r.name == "bastion.auth"] == [
        f"refused a token: {refused[0].json()['error']['message']}"
    ] * 3
    assert served.status_code == 200


async def test_a_foreign_host_is_refused_before_auth_and_probes_skip_the_check(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    evil = {"Host": "evil.example.com"}
    refused = await client.get("/things", headers={**_token(tmp_path, "operator"), **evil})
    anonymous = await client.get("/things", headers=evil)
    probe = await client.get("/healthz", headers=evil)

    assert refused.status_code == anonymous.status_code == 403
    assert refused.json() == {
        "error": {
            "code": "bastion.host_not_allowed",
            "message": "Host 'evil.example.com' is not allowed (allowed_hosts in bastion.yaml)",
        }
    }
    assert anonymous.json()["error"]["code"] == "bastion.host_not_allowed"
    assert probe.status_code == 200


async def test_a_bug_is_a_500_in_the_same_body(client: httpx.AsyncClient) -> None:
    response = await client.get("/bug")

    assert response.status_code == 500
    assert response.json()["error"]["code"] == "bastion.internal"
    assert "a bug" not in response.text


async def _asgi(app: FastAPI, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, Any]:
    """One GET through the ASGI app with exactly these raw headers (duplicates kept)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8080),
    }
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, orjson.loads(body)


@pytest.mark.parametrize(
    "extra",
    [
        [(b"host", b"evil.example.com"), (b"host", b"127.0.0.1:8080")],
        [(b"host", b"127.0.0.1:8080"), (b"host", b"evil.example.com")],
        [(b"host", b"127.0.0.1:8080"), (b"origin", b"http://127.0.0.1:8080"), (b"origin", b"http://evil.example.com")],
    ],
    ids=["bad-host-first", "good-host-first", "two-origins"],
)
async def test_duplicate_host_or_origin_headers_are_refused_even_with_an_operator_token(
    tmp_path: Path, extra: list[tuple[bytes, bytes]]
) -> None:
    token = issue_token(ensure_dev_key(tmp_path), subject="ops", roles=("operator",))
    headers = [*extra, (b"authorization", f"Bearer {token}".encode())]

    status, body = await _asgi(_app(tmp_path), "/things", headers)

    assert status == 403
    assert body["error"]["code"] == "bastion.host_not_allowed"
    assert body["error"]["message"].startswith("more than one")


async def test_a_websocket_from_a_foreign_host_is_closed_before_the_app_sees_it(tmp_path: Path) -> None:
    # Browsers apply no same-origin rule to WebSockets, so rebinding matters most there.
    scope = {"type": "websocket", "path": "/things", "headers": [(b"host", b"evil.example.com")]}
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await _app(tmp_path)(scope, receive, send)

    assert sent == [{"type": "websocket.close", "code": 1008}]
