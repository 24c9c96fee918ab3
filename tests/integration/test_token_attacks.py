"""Forged, malformed and misused bearer tokens against a real stack (policy, verifier,
graph and proxy in-process on port 0, the demo MCP server as a subprocess).

What the proxy verifies (bastion._identity.TokenVerifier): a compact JWS, EdDSA only,
signed by the stack's key, issuer `bastion-dev`, audience `bastion`, `exp`, `iat` and
`sub` present and in force, at most a day between `iat` and `exp`, `sub` a non-empty
string, `roles` a list of strings, the tenant a non-empty string; or an API key
`bk_<id>.<secret>` the policy service has pushed.
Every attack below breaks exactly one of those and must be refused with 401 before
anything is decided or forwarded, audited under the `bastion.rejected` workflow, and
leave the proxy serving everyone else. All attacks run against one stack, in turn.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fixtures import inprocess
from fixtures.graphapi import auditor_token, poll
from fixtures.mcpcalls import ProxyClient, headers, tool_call
from fixtures.upstream import DemoUpstream, demo_upstream

from bastion._apikeys import new_api_key
from bastion._identity import ensure_dev_key

pytestmark = pytest.mark.asyncio(loop_scope="module")

DEMO_POLICY = Path(__file__).resolve().parents[2] / "examples" / "policies" / "demo.yaml"
ISSUER = "bastion-dev"
AUDIENCE = "bastion"
#: Any other Ed25519 key: the one an attacker signs with.
FOREIGN = Ed25519PrivateKey.generate()

#: Builds the Authorization header value of one attack from the stack's own signing key
#: (used only where the attacker is assumed to hold a genuine token of their own).
Attack = Callable[[Ed25519PrivateKey], str]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoUpstream]:
    with demo_upstream(tmp_path_factory.mktemp("upstream")) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def demo(tmp_path_factory: pytest.TempPathFactory, upstream: DemoUpstream) -> AsyncIterator[ProxyClient]:
    """One stack for the whole table: that the proxy keeps serving is part of what is tested."""
    home = tmp_path_factory.mktemp("stack")
    async with inprocess.stack(home, inprocess.app_config(upstream.url, DEMO_POLICY)) as running:
        yield ProxyClient(home, running.proxy, running.graph)


# --- building tokens by hand ------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(value: dict[str, Any]) -> str:
    return _b64(orjson.dumps(value))


def _claims(*, drop: tuple[str, ...] = (), **changes: Any) -> dict[str, Any]:
    """The claims of a genuine agent token, with `changes` applied and `drop` left out."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "mallory",
        "tenant": "default",
        "roles": [],
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        **changes,
    }
    for name in drop:
        del claims[name]
    return claims


def _eddsa(key: Ed25519PrivateKey, claims: dict[str, Any], **header: Any) -> str:
    return jwt.encode(claims, key, algorithm="EdDSA", headers=header or None)


def _hs256(secret: bytes, claims: dict[str, Any]) -> str:
    """HS256 by hand: PyJWT refuses an HMAC secret that looks like a PEM key, which is the point."""
    signing_input = f"{_segment({'alg': 'HS256', 'typ': 'JWT'})}.{_segment(claims)}"
    return f"{signing_input}.{_b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def _public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _public_raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _public_jwk(key: Ed25519PrivateKey) -> bytes:
    return orjson.dumps({"kty": "OKP", "crv": "Ed25519", "x": _b64(_public_raw(key))})


def _json_signature(key: Ed25519PrivateKey, payload: str) -> dict[str, str]:
    """One entry of a JWS JSON serialisation's `signatures`, valid over `payload`."""
    protected = _segment({"alg": "EdDSA"})
    return {"protected": protected, "signature": _b64(key.sign(f"{protected}.{payload}".encode()))}


def _json_general(stack_key: Ed25519PrivateKey) -> str:
    """Two signatures over one payload, one of them genuine: JWTs are compact JWS only (RFC 7519 §7.2)."""
    payload = _segment(_claims(roles=["operator"]))
    document = {
        "payload": payload,
        "signatures": [_json_signature(stack_key, payload), _json_signature(FOREIGN, payload)],
    }
    return f"Bearer {orjson.dumps(document).decode()}"


def _json_flattened(stack_key: Ed25519PrivateKey) -> str:
    payload = _segment(_claims())
    return f"Bearer {orjson.dumps({'payload': payload, **_json_signature(stack_key, payload)}).decode()}"


def _oversized(size: int) -> str:
    """A well-formed EdDSA token of at least `size` bytes, signed by another key."""
    token = _eddsa(FOREIGN, _claims(pad="x" * (size * 3 // 4)))
    assert len(token) >= size
    return token


ATTACKS: dict[str, Attack] = {
    "alg-none": lambda _: f"Bearer {_segment({'alg': 'none', 'typ': 'JWT'})}.{_segment(_claims())}.",
    "alg-None": lambda _: f"Bearer {_segment({'alg': 'None', 'typ': 'JWT'})}.{_segment(_claims())}.",
    "hs256-keyed-with-public-key-pem": lambda key: f"Bearer {_hs256(_public_pem(key), _claims())}",
    "hs256-keyed-with-raw-public-key": lambda key: f"Bearer {_hs256(_public_raw(key), _claims())}",
    "es256-key-not-the-stacks": lambda _: (
        "Bearer " + jwt.encode(_claims(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")
    ),
    "eddsa-signed-with-another-ed25519-key": lambda _: f"Bearer {_eddsa(FOREIGN, _claims())}",
    "expired": lambda key: f"Bearer {_eddsa(key, _claims(iat=int(time.time()) - 7200, exp=int(time.time()) - 60))}",
    "nbf-in-the-future": lambda key: f"Bearer {_eddsa(key, _claims(nbf=int(time.time()) + 3600))}",
    "wrong-aud": lambda key: f"Bearer {_eddsa(key, _claims(aud='another-service'))}",
    "wrong-iss": lambda key: f"Bearer {_eddsa(key, _claims(iss='https://issuer.example'))}",
    "missing-exp": lambda key: f"Bearer {_eddsa(key, _claims(drop=('exp',)))}",
    "missing-sub": lambda key: f"Bearer {_eddsa(key, _claims(drop=('sub',)))}",
    "missing-iat": lambda key: f"Bearer {_eddsa(key, _claims(drop=('iat',)))}",
    "sub-empty": lambda key: f"Bearer {_eddsa(key, _claims(sub=''))}",
    "sub-a-number": lambda key: f"Bearer {_eddsa(key, _claims(sub=42))}",
    "sub-a-list": lambda key: f"Bearer {_eddsa(key, _claims(sub=['mallory']))}",
    "roles-a-string": lambda key: f"Bearer {_eddsa(key, _claims(roles='operator'))}",
    "roles-not-strings": lambda key: f"Bearer {_eddsa(key, _claims(roles=['operator', 1]))}",
    "token-of-64-kib": lambda _: f"Bearer {_oversized(64 << 10)}",
    "not-base64": lambda _: "Bearer %%%.***.$$$",
    "not-a-jwt": lambda _: "Bearer not-a-jwt",
    "bearer-without-token": lambda _: "Bearer",
    "kid-jku-x5u-pointing-elsewhere": lambda _: (
        "Bearer "
        + _eddsa(
            FOREIGN,
            _claims(),
            kid="attacker-key",
            jku="https://attacker.example/jwks.json",
            x5u="https://attacker.example/cert.pem",
        )
    ),
    "embedded-jwk": lambda _: (
        "Bearer " + _eddsa(FOREIGN, _claims(), jwk={"kty": "OKP", "crv": "Ed25519", "x": _b64(_public_raw(FOREIGN))})
    ),
    "jws-json-general-two-signatures": _json_general,
    "jws-json-flattened": _json_flattened,
    "compact-with-two-signatures": lambda key: (
        f"Bearer {_eddsa(key, _claims())}.{_eddsa(FOREIGN, _claims()).rsplit('.', 1)[1]}"
    ),
    "hs256-keyed-with-public-jwk": lambda key: f"Bearer {_hs256(_public_jwk(key), _claims())}",
    "rs256-when-only-eddsa-is-allowed": lambda _: (
        "Bearer " + jwt.encode(_claims(), rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")
    ),
    "iat-in-the-future": lambda key: (
        f"Bearer {_eddsa(key, _claims(iat=int(time.time()) + 3600, exp=int(time.time()) + 7200, drop=('nbf',)))}"
    ),
    "lifetime-above-the-maximum": lambda key: f"Bearer {_eddsa(key, _claims(exp=int(time.time()) + 2 * 86400))}",
    "tenant-a-number": lambda key: f"Bearer {_eddsa(key, _claims(tenant=7))}",
    "tenant-too-long": lambda key: f"Bearer {_eddsa(key, _claims(tenant='t' * 129))}",
    "jti-a-number": lambda key: f"Bearer {_eddsa(key, _claims(jti=7))}",
    "api-key-malformed": lambda _: "Bearer bk_0123456789abcdef.too-short",
    "api-key-unknown": lambda _: f"Bearer {new_api_key()[0]}",
}

#: What the 401 says, for the attacks one check refuses (the message never repeats the token).
WORDING: dict[str, str] = {
    "alg-none": "algorithm 'none' is not allowed",
    "alg-None": "algorithm 'None' is not allowed",
    "hs256-keyed-with-public-key-pem": "algorithm 'HS256' is not allowed",
    "hs256-keyed-with-raw-public-key": "algorithm 'HS256' is not allowed",
    "hs256-keyed-with-public-jwk": "algorithm 'HS256' is not allowed",
    "es256-key-not-the-stacks": "algorithm 'ES256' is not allowed",
    "rs256-when-only-eddsa-is-allowed": "algorithm 'RS256' is not allowed",
    "eddsa-signed-with-another-ed25519-key": "the signature does not verify",
    "expired": "invalid token: expired",
    "nbf-in-the-future": "'nbf' is in the future",
    "iat-in-the-future": "'iat' is in the future",
    "wrong-aud": "wrong audience",
    "wrong-iss": "wrong issuer",
    "missing-exp": "no 'exp' claim",
    "missing-iat": "no 'iat' claim",
    "lifetime-above-the-maximum": "token lifetime of 172800 s .* exceeds the maximum of 86400 s",
    "tenant-a-number": "the tenant claim 'tenant' must be a non-empty string",
    "tenant-too-long": "at most 128 characters",
    "token-of-64-kib": "longer than 16384 characters",
    "api-key-malformed": "malformed API key",
    "api-key-unknown": "unknown API key|API keys are not available yet",
}


# --- the table --------------------------------------------------------------------------------


async def _add_succeeds(demo: ProxyClient, authorization: str) -> None:
    hdrs = {**headers(demo.token("agent-ok"), workflow="wf-token-ok"), "Authorization": authorization}
    response = await demo.post(tool_call("add", {"a": 2, "b": 3}), hdrs)
    assert response.status_code == 200, response.text
    assert response.json()["result"]["structuredContent"] == {"result": 5}


@pytest.mark.parametrize(("name", "attack"), list(ATTACKS.items()), ids=list(ATTACKS))
async def test_a_forged_or_malformed_token_is_refused_with_401_audited_and_never_forwarded(
    demo: ProxyClient, upstream: DemoUpstream, name: str, attack: Attack
) -> None:
    path = f"/attack/{name}"
    executed_before = upstream.executed()
    hdrs = {
        **headers(demo.token("mallory"), workflow="wf-token-attack"),
        "Authorization": attack(ensure_dev_key(demo.home)),
    }

    response = await demo.post(tool_call("delete_file", {"path": path}), hdrs)

    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "bastion.auth.unauthenticated"
    assert re.search(WORDING.get(name, "."), error["message"]), error["message"]
    _, _, token = hdrs["Authorization"].partition(" ")
    assert not token or token not in error["message"]
    assert upstream.executed() == executed_before, f"the upstream ran {path}"
    audited = await poll(
        demo.graph,
        "/audit/violations",
        {"workflow_id": "bastion.rejected", "limit": "500"},
        1,
        auditor_token(demo.home),
        where=lambda violation: violation["violation_id"] == error["violation_id"],
    )
    assert audited[0]["rule_id"] == "bastion.auth.unauthenticated"
    # The proxy keeps serving: after this attack (and every one before it) an honest agent gets through.
    await _add_succeeds(demo, f"Bearer {demo.token('agent-ok')}")


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "bEaReR"])
async def test_the_bearer_scheme_is_matched_case_insensitively(demo: ProxyClient, scheme: str) -> None:
    """RFC 9110 §11.1: the auth scheme is case-insensitive; only the token is checked."""
    await _add_succeeds(demo, f"{scheme} {demo.token('agent-ok')}")


async def test_the_tables_token_with_nothing_broken_is_accepted(demo: ProxyClient) -> None:
    """The control: the claim attacks are signed with the stack's own key and differ from
    this token in one claim only, so that claim is what the proxy refuses them for."""
    await _add_succeeds(demo, f"Bearer {_eddsa(ensure_dev_key(demo.home), _claims())}")
