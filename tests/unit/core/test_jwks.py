"""Agent JWTs verified against a JWKS file or URL, the key chosen by `kid` (bastion._jwks).

The URL cases run a real HTTP server (the standard library's, in a thread, on port 0)
whose document a test changes to rotate keys or make the issuer fail.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fixtures.local_http import Handler, LocalHttp
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from bastion import AuthError, ConfigError
from bastion._appconfig import AuthConfig, load_app_config
from bastion._identity import TokenVerifier, ensure_dev_key, issue_token, load_public_keys
from bastion._jwks import Jwks, parse_jwks

ED_A, ED_B = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
EC_C = ec.generate_private_key(ec.SECP256R1())
RSA_D = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ALL = ("EdDSA", "ES256", "RS256")


def _jwk(key: Any, kid: str | None, **extra: Any) -> dict[str, Any]:
    public = key.public_key()
    if isinstance(key, Ed25519PrivateKey):
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    return {**jwk, **({"kid": kid} if kid is not None else {}), **extra}


def _jwks(*keys: dict[str, Any]) -> bytes:
    return json.dumps({"keys": list(keys)}).encode()


def _token(key: Any, algorithm: str, kid: str | None, **claims: Any) -> str:
    now = int(time.time())
    body = {"sub": "agent-1", "iss": "bastion-dev", "aud": "bastion", "iat": now, "exp": now + 600, **claims}
    return jwt.encode(body, key, algorithm=algorithm, headers={"kid": kid} if kid is not None else None)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _by_hand(header: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A token PyJWT would refuse to make: the header as given, signed by `sign`."""
    now = int(time.time())
    claims = {"sub": "agent-1", "iss": "bastion-dev", "aud": "bastion", "iat": now, "exp": now + 600}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(sign(signing_input.encode()))}"


def _file_verifier(tmp_path: Path, document: bytes, algorithms: tuple[str, ...] = ALL) -> TokenVerifier:
    path = tmp_path / "jwks.json"
    path.write_bytes(document)
    return TokenVerifier.from_config(AuthConfig(jwks=str(path), algorithms=algorithms), tmp_path)


# --- a JWKS file ---------------------------------------------------------------------------------


def test_each_key_of_a_jwks_file_verifies_the_tokens_naming_its_kid(tmp_path: Path) -> None:
    verifier = _file_verifier(tmp_path, _jwks(_jwk(ED_A, "a"), _jwk(EC_C, "c"), _jwk(RSA_D, "d")))
    assert verifier.verify(_token(ED_A, "EdDSA", "a", sub="via-a")).subject == "via-a"
    assert verifier.verify(_token(EC_C, "ES256", "c", sub="via-c")).subject == "via-c"
    assert verifier.verify(_token(RSA_D, "RS256", "d", sub="via-d")).subject == "via-d"


#: name -> (token, the refusal's wording), against the set {a: Ed25519, c: P-256}
KID_ATTACKS: dict[str, tuple[Callable[[], str], str]] = {
    "unknown-kid": (lambda: _token(ED_B, "EdDSA", "zzz"), r"unknown key id 'zzz'"),
    "no-kid-with-two-keys": (lambda: _token(ED_A, "EdDSA", None), r"no key id \('kid'\) in its header"),
    "kid-not-a-string": (
        lambda: _by_hand({"alg": "EdDSA", "kid": 7}, ED_A.sign),
        "malformed \\(Key ID header parameter must be a string",
    ),
    "kid-of-another-key-type": (
        lambda: _token(EC_C, "ES256", "a"),
        r"algorithm 'ES256' does not fit key 'a' \(EdDSA\)",
    ),
    "kid-of-a-key-that-did-not-sign": (lambda: _token(ED_B, "EdDSA", "a"), "the signature does not verify"),
    "hs256-keyed-with-the-jwk": (
        lambda: _by_hand(
            {"alg": "HS256", "kid": "a"},
            lambda data: hmac.new(json.dumps(_jwk(ED_A, "a")).encode(), data, hashlib.sha256).digest(),
        ),
        "algorithm 'HS256' is not allowed",
    ),
    "alg-none": (lambda: jwt.encode({"sub": "x"}, "", "none", headers={"kid": "a"}), "'none' is not allowed"),
    "long-unknown-kid-is-cut-short": (lambda: _token(ED_A, "EdDSA", "k" * 500), r"unknown key id 'k{64}…'$"),
}


@pytest.mark.parametrize(("build", "refusal"), list(KID_ATTACKS.values()), ids=list(KID_ATTACKS))
def test_a_token_naming_no_usable_key_is_refused(tmp_path: Path, build: Callable[[], str], refusal: str) -> None:
    verifier = _file_verifier(tmp_path, _jwks(_jwk(ED_A, "a"), _jwk(EC_C, "c")))
    with pytest.raises(AuthError, match=refusal):
        verifier.verify(build())


def test_a_token_without_kid_is_verified_by_a_single_key_set(tmp_path: Path) -> None:
    verifier = _file_verifier(tmp_path, _jwks(_jwk(ED_A, None)))
    assert verifier.verify(_token(ED_A, "EdDSA", None)).subject == "agent-1"


def test_the_algorithm_allowlist_governs_which_keys_are_used(tmp_path: Path) -> None:
    verifier = _file_verifier(tmp_path, _jwks(_jwk(ED_A, "a"), _jwk(RSA_D, "d")), algorithms=("EdDSA",))
    assert verifier.verify(_token(ED_A, "EdDSA", "a")).subject == "agent-1"
    with pytest.raises(AuthError, match="algorithm 'RS256' is not allowed"):
        verifier.verify(_token(RSA_D, "RS256", "d"))


def test_a_keys_alg_narrows_what_it_verifies(tmp_path: Path) -> None:
    verifier = _file_verifier(tmp_path, _jwks(_jwk(RSA_D, "d", alg="PS256")), algorithms=("RS256", "PS256"))
    assert verifier.verify(_token(RSA_D, "PS256", "d")).subject == "agent-1"
    with pytest.raises(AuthError, match=r"algorithm 'RS256' does not fit key 'd' \(PS256\)"):
        verifier.verify(_token(RSA_D, "RS256", "d"))


UNUSABLE: dict[str, tuple[dict[str, Any], str]] = {
    "symmetric": ({"kty": "oct", "k": "c2VjcmV0", "kid": "s"}, "a symmetric key"),
    "private": (_jwk(ED_B, "p", d="AAAA"), "holds private key material"),
    "encryption": (_jwk(ED_B, "e", use="enc"), "use 'enc'"),
    "short-rsa": (
        _jwk(rsa.generate_private_key(public_exponent=65537, key_size=1024), "r"),  # noqa: S505 - the point
        "RSA key of 1024 bits",
    ),
    "hmac-alg": (_jwk(ED_B, "h", alg="HS256"), "alg 'HS256' is not accepted"),
    "alg-against-the-key-type": (_jwk(ED_B, "x", alg="ES256"), "cannot be loaded"),
    "unknown-kty": ({"kty": "XYZ", "kid": "u"}, "cannot be loaded"),
    "not-an-object": ("a string", "not a JSON object"),  # type: ignore[dict-item]
    "not-allowed": (_jwk(RSA_D, "n"), r"RSA 2048 key \(PS256, PS384, PS512, RS256, RS384, RS512\) fits none"),
}


@pytest.mark.parametrize(("entry", "reason"), list(UNUSABLE.values()), ids=list(UNUSABLE))
def test_an_unusable_key_is_skipped_with_its_reason(entry: dict[str, Any], reason: str) -> None:
    keys, skipped = parse_jwks(_jwks(_jwk(ED_A, "a"), entry), ("EdDSA", "ES256"))
    assert [key.kid for key in keys] == ["a"]
    assert len(skipped) == 1
    assert re.search(reason, skipped[0]), skipped


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        (b"{", "not JSON"),
        (b'{"kys": []}', "not a JWKS"),
        (_jwks(), "no usable signing key"),
        (_jwks({"kty": "oct", "k": "c2VjcmV0"}), r"no usable signing key \(key #1: a symmetric key"),
        (_jwks(_jwk(ED_A, "a"), _jwk(ED_B, "a")), "two usable keys have kid 'a'"),
    ],
)
def test_an_unusable_jwks_file_is_a_config_error(tmp_path: Path, document: bytes, problem: str) -> None:
    with pytest.raises(ConfigError, match=f"auth.jwks: {problem}"):
        _file_verifier(tmp_path, document)


def test_a_missing_jwks_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"auth\.jwks: cannot read"):
        TokenVerifier.from_config(AuthConfig(jwks=str(tmp_path / "absent.json")), tmp_path)


def test_a_jwks_path_is_relative_to_bastion_yaml(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "jwks.json").write_bytes(_jwks(_jwk(ED_A, "a")))
    (tmp_path / "bastion.yaml").write_text("auth:\n  jwks: keys/jwks.json\n")
    auth = load_app_config(tmp_path / "bastion.yaml").auth
    assert auth.jwks == str(tmp_path / "keys" / "jwks.json")
    assert TokenVerifier.from_config(auth, tmp_path / "home").verify(_token(ED_A, "EdDSA", "a")).subject


def test_with_a_jwks_the_dev_key_is_not_trusted(tmp_path: Path) -> None:
    verifier = _file_verifier(tmp_path, _jwks(_jwk(ED_A, "a")))
    with pytest.raises(AuthError, match="unknown key id"):
        verifier.verify(issue_token(ensure_dev_key(tmp_path), subject="agent-1"))
    with pytest.raises(ConfigError, match=r"TokenVerifier\.from_config"):
        load_public_keys(AuthConfig(jwks=str(tmp_path / "jwks.json")), tmp_path)


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"jwks": "a.json", "public_keys": ["k.pem"]}, "'jwks' or 'public_keys', not both"),
        ({"jwks": "http://idp.example/jwks.json"}, "must use https"),
        ({"jwks": "https:///jwks.json"}, "names no host"),
        ({"algorithms": ["HS256"]}, "'HS256' is not accepted"),
        ({"algorithms": ["none"]}, "'none' is not accepted"),
        ({"algorithms": []}, "name at least one"),
        ({"tenant_claim": "sub"}, "registered claim"),
        ({"max_token_lifetime_s": 0}, "max_token_lifetime_s"),
        ({"leeway_s": 3600}, "leeway_s"),
        ({"jwks_refresh_s": 0}, "jwks_refresh_s"),
        ({"jwks_url": "https://idp.example"}, "jwks_url"),
    ],
)
def test_bad_auth_settings_are_refused_at_load(settings: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        AuthConfig.model_validate(settings)


@pytest.mark.parametrize("url", ["https://idp.example/jwks.json", "http://127.0.0.1:8080/j", "http://localhost/j"])
def test_https_or_loopback_http_jwks_urls_are_accepted(url: str) -> None:
    assert AuthConfig(jwks=url).jwks == url


# --- a JWKS URL ----------------------------------------------------------------------------------


class _Issuer(LocalHttp):
    """An identity provider's JWKS endpoint: `document` and `status` are what it answers now."""

    def __init__(self, document: bytes) -> None:
        self.document = document
        self.status = 200
        self.location = ""
        self.hits = 0
        issuer = self

        class JwksHandler(Handler):
            def do_GET(self) -> None:
                issuer.hits += 1
                headers = {"Location": issuer.location} if issuer.location else None
                self.answer(issuer.status, issuer.document, headers)

        super().__init__(JwksHandler)
        self.url = f"http://{self.addr}/jwks.json"

    def __enter__(self) -> _Issuer:
        super().__enter__()
        return self


@pytest.fixture
def issuer() -> Iterator[_Issuer]:
    with _Issuer(_jwks(_jwk(ED_A, "a"))) as server:
        yield server


@contextlib.asynccontextmanager
async def _running(jwks: Jwks) -> AsyncIterator[TokenVerifier]:
    verifier = TokenVerifier(AuthConfig(), jwks)
    await verifier.start()
    try:
        yield verifier
    finally:
        await verifier.close()


async def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def _accepts(verifier: TokenVerifier, token: str) -> bool:
    try:
        verifier.verify(token)
    except AuthError:
        return False
    return True


async def test_a_jwks_url_is_fetched_at_start(issuer: _Issuer, tmp_path: Path) -> None:
    verifier = TokenVerifier.from_config(AuthConfig(jwks=issuer.url), tmp_path)
    with pytest.raises(AuthError, match="signing keys are not loaded yet"):
        verifier.verify(_token(ED_A, "EdDSA", "a"))
    await verifier.start()
    try:
        assert verifier.verify(_token(ED_A, "EdDSA", "a")).subject == "agent-1"
        assert issuer.hits == 1
    finally:
        await verifier.close()


@pytest.mark.parametrize(
    ("status", "location", "problem"),
    [
        (500, "", "answered HTTP 500"),
        (302, "https://elsewhere.example/jwks.json", r"answered HTTP 302 \(redirects are not followed\)"),
    ],
)
async def test_a_jwks_url_failing_at_start_is_a_config_error(
    issuer: _Issuer, status: int, location: str, problem: str
) -> None:
    issuer.status, issuer.location = status, location
    with pytest.raises(ConfigError, match=f"auth.jwks: {issuer.url} {problem}"):
        await Jwks(issuer.url, ALL).start()


async def test_an_unreachable_jwks_url_is_a_config_error() -> None:
    with _Issuer(b"") as gone:
        url = gone.url
    with pytest.raises(ConfigError, match=f"auth.jwks: cannot fetch {url}"):
        await Jwks(url, ALL, timeout_s=2).start()


async def test_a_new_kid_is_fetched_when_first_seen_but_at_most_once_per_interval(issuer: _Issuer) -> None:
    jwks = Jwks(issuer.url, ALL, refresh_s=3600, min_refetch_s=0.5)
    async with _running(jwks) as verifier:
        issuer.document = _jwks(_jwk(ED_A, "a"), _jwk(ED_B, "b"))  # the issuer rotates
        rotated = _token(ED_B, "EdDSA", "b")

        # Right after the start-up read: refused, and no read of the issuer.
        with pytest.raises(AuthError, match="unknown key id 'b'"):
            verifier.verify(rotated)
        await asyncio.sleep(0.1)
        assert issuer.hits == 1

        # Once the interval has passed, the unknown kid causes one read, and then passes.
        await asyncio.sleep(0.5)
        with pytest.raises(AuthError, match="unknown key id 'b'"):
            verifier.verify(rotated)
        await _eventually(lambda: _accepts(verifier, rotated))
        assert issuer.hits == 2
        assert verifier.verify(_token(ED_A, "EdDSA", "a")).subject == "agent-1"


async def test_a_flood_of_unknown_kids_does_not_flood_the_issuer(issuer: _Issuer) -> None:
    jwks = Jwks(issuer.url, ALL, refresh_s=3600, min_refetch_s=0.3)
    async with _running(jwks) as verifier:
        await asyncio.sleep(0.3)
        for index in range(200):
            with pytest.raises(AuthError, match="unknown key id"):
                verifier.verify(_token(ED_B, "EdDSA", f"forged-{index}"))
        await asyncio.sleep(0.2)
        assert issuer.hits == 2


async def test_the_jwks_is_read_again_every_period(issuer: _Issuer) -> None:
    async with _running(Jwks(issuer.url, ALL, refresh_s=0.1)) as verifier:
        issuer.document = _jwks(_jwk(ED_B, "b"))
        await _eventually(lambda: _accepts(verifier, _token(ED_B, "EdDSA", "b")))
        with pytest.raises(AuthError, match="unknown key id 'a'"):
            verifier.verify(_token(ED_A, "EdDSA", "a", jti="new"))


@pytest.mark.parametrize(
    ("status", "document"), [(500, b"oops"), (200, b"<html>"), (200, _jwks({"kty": "oct", "k": "c2VjcmV0"}))]
)
async def test_a_failed_refresh_keeps_the_keys_held(
    issuer: _Issuer, status: int, document: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    jwks = Jwks(issuer.url, ALL, refresh_s=3600)
    async with _running(jwks) as verifier:
        issuer.status, issuer.document = status, document
        assert not await jwks.refresh()
        assert verifier.verify(_token(ED_A, "EdDSA", "a")).subject == "agent-1"
        assert jwks.kids == {"a"}
    assert "refresh failed, keeping the 1 keys held" in caplog.text


async def test_closing_stops_the_refreshes(issuer: _Issuer) -> None:
    jwks = Jwks(issuer.url, ALL, refresh_s=0.05)
    async with _running(jwks):
        await _eventually(lambda: issuer.hits >= 3)
    hits = issuer.hits
    await asyncio.sleep(0.2)
    assert issuer.hits == hits
