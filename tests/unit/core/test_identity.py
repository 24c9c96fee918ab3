from __future__ import annotations

import threading
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion import AuthError
from bastion._appconfig import AuthConfig
from bastion._identity import (
    MAX_TOKEN_CHARS,
    TokenVerifier,
    ensure_dev_key,
    ensure_service_token,
    issue_token,
    load_public_keys,
)


def _verifier(home: Path, auth: AuthConfig | None = None) -> TokenVerifier:
    auth = auth or AuthConfig()
    return TokenVerifier(auth, load_public_keys(auth, home))


def test_issued_token_verifies_to_its_principal(tmp_path: Path) -> None:
    token = issue_token(ensure_dev_key(tmp_path), subject="agent-1", roles=("operator",), tenant="acme")
    principal = _verifier(tmp_path).verify_header(f"Bearer {token}")
    assert (principal.subject, principal.tenant, principal.roles) == ("agent-1", "acme", ("operator",))
    assert principal.is_operator


def test_agent_without_operator_role_is_not_an_operator(tmp_path: Path) -> None:
    token = issue_token(ensure_dev_key(tmp_path), subject="agent-1")
    assert not _verifier(tmp_path).verify(token).is_operator


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer", "Bearer not.a.jwt"])
def test_missing_or_malformed_authorization_is_an_auth_error(tmp_path: Path, header: str | None) -> None:
    ensure_dev_key(tmp_path)
    with pytest.raises(AuthError):
        _verifier(tmp_path).verify_header(header)


def test_token_signed_by_another_key_is_rejected(tmp_path: Path) -> None:
    ensure_dev_key(tmp_path)
    forged = issue_token(Ed25519PrivateKey.generate(), subject="agent-1")
    with pytest.raises(AuthError, match="invalid token"):
        _verifier(tmp_path).verify(forged)


def test_expired_token_is_rejected(tmp_path: Path) -> None:
    key = ensure_dev_key(tmp_path)
    now = int(time.time())
    claims = {"sub": "a", "iss": "bastion-dev", "aud": "bastion", "iat": now - 100, "exp": now - 10}
    with pytest.raises(AuthError, match="expired"):
        _verifier(tmp_path).verify(jwt.encode(claims, key, algorithm="EdDSA"))


def test_wrong_audience_is_rejected(tmp_path: Path) -> None:
    token = issue_token(ensure_dev_key(tmp_path), subject="a", auth=AuthConfig(audience="someone-else"))
    with pytest.raises(AuthError):
        _verifier(tmp_path).verify(token)


def test_unsigned_token_is_rejected(tmp_path: Path) -> None:
    ensure_dev_key(tmp_path)
    now = int(time.time())
    claims = {"sub": "a", "iss": "bastion-dev", "aud": "bastion", "iat": now, "exp": now + 60}
    unsigned = jwt.encode(claims, "", algorithm="none")
    with pytest.raises(AuthError):
        _verifier(tmp_path).verify(unsigned)


def test_dev_key_and_service_token_are_created_once_even_under_a_race(tmp_path: Path) -> None:
    keys: list[bytes] = []
    tokens: list[str] = []

    def create() -> None:
        keys.append(ensure_dev_key(tmp_path).public_key().public_bytes_raw())
        tokens.append(ensure_service_token(tmp_path, None))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(keys)) == 1
    assert len(set(tokens)) == 1
    assert (tmp_path / "keys" / "dev-ed25519.pem").stat().st_mode & 0o077 == 0


def test_configured_service_token_wins(tmp_path: Path) -> None:
    assert ensure_service_token(tmp_path, "configured") == "configured"
    assert not (tmp_path / "keys" / "service-token").exists()


def test_an_oversized_authorization_header_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    key = ensure_dev_key(tmp_path)
    verifier = TokenVerifier(AuthConfig(), [key.public_key()])
    # A validly signed token, padded past the cap: the cap alone refuses it.
    huge = issue_token(key, subject="agent", tenant="t" * (MAX_TOKEN_CHARS + 1))
    with pytest.raises(AuthError, match="longer than"):
        verifier.verify_header(f"Bearer {huge}")
    assert verifier.verify_header(f"Bearer {issue_token(key, subject='agent')}").subject == "agent"
