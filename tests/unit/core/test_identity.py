from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.algorithms import OKPAlgorithm

from bastion import AuthError, ConfigError, RevocationsUnavailable
from bastion._apikeys import IdentityState, new_api_key
from bastion._appconfig import AuthConfig
from bastion._identifiers import InvalidIdentity, check_identifier
from bastion._identity import (
    MAX_TOKEN_CHARS,
    TokenVerifier,
    ensure_dev_key,
    ensure_service_token,
    issue_token,
    load_public_keys,
)
from bastion._jwks import jwk_thumbprint
from bastion.v1 import policy_pb2

ISSUER, AUDIENCE = "bastion-dev", "bastion"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _verifier(home: Path, auth: AuthConfig | None = None, identity: IdentityState | None = None) -> TokenVerifier:
    auth = auth or AuthConfig()
    return TokenVerifier(auth, load_public_keys(auth, home), identity=identity)


def _claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "agent-1",
        "tenant": "acme",
        "roles": [],
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": "jti-1",
        **changes,
    }
    return {name: value for name, value in claims.items() if value is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256(secret: bytes, claims: dict[str, Any]) -> str:
    """HS256 by hand: PyJWT refuses an HMAC secret that looks like a public key, which is the attack."""
    signing_input = f"{_b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def _public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


# --- issuing -------------------------------------------------------------------------------------


def test_issued_token_verifies_to_its_principal(tmp_path: Path) -> None:
    token = issue_token(ensure_dev_key(tmp_path), subject="agent-1", roles=("operator",), tenant="acme")
    principal = _verifier(tmp_path).verify_header(f"Bearer {token}")
    assert (principal.subject, principal.tenant, principal.roles) == ("agent-1", "acme", ("operator",))
    assert principal.is_operator
    assert len(principal.token_id) == 32
    assert principal.key_id == ""
    assert principal.expires_at - principal.issued_at == 3600


def test_an_issued_token_has_a_fresh_jti_and_the_keys_thumbprint_as_kid(tmp_path: Path) -> None:
    key = ensure_dev_key(tmp_path)
    first, second = issue_token(key, subject="a"), issue_token(key, subject="a")
    assert jwt.get_unverified_header(first)["kid"] == jwk_thumbprint(key.public_key())
    ids = {jwt.decode(token, options={"verify_signature": False})["jti"] for token in (first, second)}
    assert len(ids) == 2


def test_the_thumbprint_is_rfc_7638s() -> None:
    # RFC 8037 appendix A.3: the thumbprint of its example Ed25519 key.
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    assert jwk_thumbprint(OKPAlgorithm.from_jwk(jwk)) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_issue_token_cuts_the_lifetime_to_the_maximum(tmp_path: Path) -> None:
    auth = AuthConfig(max_token_lifetime_s=600)
    token = issue_token(ensure_dev_key(tmp_path), subject="a", ttl_seconds=30 * 86400, auth=auth)
    principal = _verifier(tmp_path, auth).verify(token)
    assert principal.expires_at - principal.issued_at == 600


def test_agent_without_operator_role_is_not_an_operator(tmp_path: Path) -> None:
    token = issue_token(ensure_dev_key(tmp_path), subject="agent-1")
    assert not _verifier(tmp_path).verify(token).is_operator


# --- the attack table ----------------------------------------------------------------------------

#: name -> (token from the stack's key, the refusal's wording)
ATTACKS: dict[str, tuple[Callable[[Ed25519PrivateKey], str], str]] = {
    "expired": (
        lambda key: jwt.encode(_claims(iat=int(time.time()) - 600, exp=int(time.time()) - 120), key, "EdDSA"),
        r"^invalid token: expired$",
    ),
    "nbf-in-the-future": (
        lambda key: jwt.encode(_claims(nbf=int(time.time()) + 3600), key, "EdDSA"),
        r"not yet valid \('nbf' is in the future\)",
    ),
    "iat-in-the-future": (
        lambda key: jwt.encode(
            _claims(iat=int(time.time()) + 3600, nbf=None, exp=int(time.time()) + 7200), key, "EdDSA"
        ),
        r"not yet valid \('iat' is in the future\)",
    ),
    "wrong-audience": (lambda key: jwt.encode(_claims(aud="another"), key, "EdDSA"), "wrong audience"),
    "wrong-issuer": (lambda key: jwt.encode(_claims(iss="https://elsewhere"), key, "EdDSA"), "wrong issuer"),
    "no-iat": (lambda key: jwt.encode(_claims(iat=None), key, "EdDSA"), "no 'iat' claim"),
    "no-exp": (lambda key: jwt.encode(_claims(exp=None), key, "EdDSA"), "no 'exp' claim"),
    "alg-none": (lambda _: jwt.encode(_claims(), "", "none"), "algorithm 'none' is not allowed"),
    "hs256-keyed-with-the-public-pem": (lambda key: _hs256(_public_pem(key), _claims()), "'HS256' is not allowed"),
    "hs256-keyed-with-the-public-jwk": (
        lambda key: _hs256(OKPAlgorithm.to_jwk(key.public_key()).encode(), _claims()),
        "'HS256' is not allowed",
    ),
    "rs256-when-only-eddsa-is-allowed": (
        lambda _: jwt.encode(_claims(), RSA_KEY, "RS256"),
        r"algorithm 'RS256' is not allowed \(allowed: EdDSA\)",
    ),
    "signed-by-another-key": (
        lambda _: jwt.encode(_claims(), Ed25519PrivateKey.generate(), "EdDSA"),
        "invalid token: the signature does not verify",
    ),
    "lifetime-above-the-maximum": (
        lambda key: jwt.encode(_claims(exp=int(time.time()) + 2 * 86400), key, "EdDSA"),
        r"token lifetime of 172800 s \(exp - iat\) exceeds the maximum of 86400 s",
    ),
    # A probe's: an integer no float holds passed PyJWT's checks and was a 500 on every service.
    "exp-beyond-a-float": (
        lambda key: jwt.encode(_claims(exp=10**400), key, "EdDSA"),
        "'iat' and 'exp' must be times a float can hold",
    ),
    "tenant-a-number": (lambda key: jwt.encode(_claims(tenant=7), key, "EdDSA"), "tenant claim 'tenant' must be"),
    "tenant-empty": (lambda key: jwt.encode(_claims(tenant=""), key, "EdDSA"), "tenant claim 'tenant' must be"),
    "tenant-too-long": (lambda key: jwt.encode(_claims(tenant="t" * 129), key, "EdDSA"), "at most 128 characters"),
    "jti-a-number": (lambda key: jwt.encode(_claims(jti=7), key, "EdDSA"), "invalid token: JWT ID must be a string"),
    "sub-empty": (lambda key: jwt.encode(_claims(sub=""), key, "EdDSA"), "'sub' must be a non-empty string"),
    # What the revocation store could not name: such an agent could never be revoked.
    "sub-over-256-characters": (
        lambda key: jwt.encode(_claims(sub="agent-" + "a" * 251), key, "EdDSA"),
        r"^invalid token: 'sub' is longer than 256 characters \(such a token could not be revoked\)$",
    ),
    "sub-with-a-newline": (
        lambda key: jwt.encode(_claims(sub="agent-7\nroot"), key, "EdDSA"),
        r"'sub' contains a control character \(such a token could not be revoked\)",
    ),
    "sub-with-nul": (
        lambda key: jwt.encode(_claims(sub="agent-8\x00"), key, "EdDSA"),
        "'sub' contains a control character",
    ),
    "sub-with-a-bidi-override": (
        lambda key: jwt.encode(_claims(sub="agent-\u202e9"), key, "EdDSA"),
        r"'sub' contains an invisible formatting character \(U\+202E\)",
    ),
    "tenant-with-a-control-character": (
        lambda key: jwt.encode(_claims(tenant="acme\x01"), key, "EdDSA"),
        "the tenant claim 'tenant' contains a control character",
    ),
    "jti-with-a-control-character": (
        lambda key: jwt.encode(_claims(jti="jti\r\n"), key, "EdDSA"),
        "'jti' contains a control character",
    ),
    "roles-a-string": (lambda key: jwt.encode(_claims(roles="operator"), key, "EdDSA"), "'roles' must be a list"),
    "not-a-jwt": (lambda _: "not.a.jwt", "invalid token: malformed"),
    "oversized": (lambda _: "x" * (MAX_TOKEN_CHARS + 1), f"longer than {MAX_TOKEN_CHARS}"),
}


@pytest.mark.parametrize(("build", "refusal"), list(ATTACKS.values()), ids=list(ATTACKS))
def test_each_bad_token_is_refused_with_its_own_reason(
    tmp_path: Path, build: Callable[[Ed25519PrivateKey], str], refusal: str
) -> None:
    token = build(ensure_dev_key(tmp_path))
    with pytest.raises(AuthError, match=refusal) as refused:
        _verifier(tmp_path).verify(token)
    assert token not in str(refused.value)


def test_the_table_token_with_nothing_broken_is_accepted(tmp_path: Path) -> None:
    principal = _verifier(tmp_path).verify(jwt.encode(_claims(), ensure_dev_key(tmp_path), "EdDSA"))
    assert (principal.subject, principal.tenant, principal.token_id) == ("agent-1", "acme", "jti-1")


def test_a_token_expired_within_the_leeway_is_accepted_and_one_beyond_it_is_not(tmp_path: Path) -> None:
    key, now = ensure_dev_key(tmp_path), int(time.time())
    verifier = _verifier(tmp_path, AuthConfig(leeway_s=30))
    assert verifier.verify(jwt.encode(_claims(iat=now - 600, exp=now - 5), key, "EdDSA")).subject == "agent-1"
    with pytest.raises(AuthError, match="expired"):
        verifier.verify(jwt.encode(_claims(iat=now - 600, exp=now - 45), key, "EdDSA"))


def test_an_algorithm_allowed_but_unfit_for_every_key_is_refused(tmp_path: Path) -> None:
    auth = AuthConfig(algorithms=("EdDSA", "ES256"))
    token = jwt.encode(_claims(), ec.generate_private_key(ec.SECP256R1()), "ES256")
    with pytest.raises(AuthError, match="algorithm 'ES256' fits none of the configured keys"):
        _verifier(tmp_path, auth).verify(token)


def test_the_tenant_comes_from_the_configured_claim(tmp_path: Path) -> None:
    key = ensure_dev_key(tmp_path)
    auth = AuthConfig(tenant_claim="org")
    verifier = _verifier(tmp_path, auth)
    assert verifier.verify(jwt.encode(_claims(tenant=None, org="acme"), key, "EdDSA")).tenant == "acme"
    assert verifier.verify(jwt.encode(_claims(tenant="ignored", jti="j2"), key, "EdDSA")).tenant == "default"
    assert verifier.verify(issue_token(key, subject="a", tenant="beta", auth=auth)).tenant == "beta"
    with pytest.raises(AuthError, match="tenant claim 'org' must be"):
        verifier.verify(jwt.encode(_claims(org=["acme"]), key, "EdDSA"))


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer", "Bearer not.a.jwt"])
def test_missing_or_malformed_authorization_is_an_auth_error(tmp_path: Path, header: str | None) -> None:
    ensure_dev_key(tmp_path)
    with pytest.raises(AuthError):
        _verifier(tmp_path).verify_header(header)


def test_an_oversized_authorization_header_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    key = ensure_dev_key(tmp_path)
    verifier = TokenVerifier(AuthConfig(), [key.public_key()])
    # A validly signed token, padded past the cap: the cap alone refuses it.
    huge = issue_token(key, subject="agent", tenant="t" * (MAX_TOKEN_CHARS + 1))
    with pytest.raises(AuthError, match="longer than"):
        verifier.verify_header(f"Bearer {huge}")
    assert verifier.verify_header(f"Bearer {issue_token(key, subject='agent')}").subject == "agent"


def test_a_public_key_unfit_for_the_allowed_algorithms_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"RSA 2048 key .* fits none of auth.algorithms \(EdDSA\)"):
        TokenVerifier(AuthConfig(), [RSA_KEY.public_key()])


# --- API keys ------------------------------------------------------------------------------------


def _record(
    key_id: str,
    salt: bytes,
    digest: bytes,
    *,
    agent: str = "agent-k",
    tenant: str = "acme",
    created_at: float | None = None,
    expires_at: float | None = None,
    revoked: bool = False,
) -> policy_pb2.ApiKeyRecord:
    record = policy_pb2.ApiKeyRecord(
        key_id=key_id, salt=salt.hex(), digest=digest.hex(), agent_id=agent, tenant=tenant, revoked=revoked
    )
    record.created_at.FromNanoseconds(int((time.time() - 60 if created_at is None else created_at) * 1e9))
    if expires_at is not None:
        record.expires_at.FromNanoseconds(int(expires_at * 1e9))
    return record


def _revocation(kind: int, value: str, *, tenant: str = "acme", at: float | None = None) -> policy_pb2.Revocation:
    revocation = policy_pb2.Revocation(kind=kind, value=value, tenant=tenant)  # type: ignore[arg-type]
    revocation.at.FromNanoseconds(int((time.time() if at is None else at) * 1e9))
    return revocation


def _identity(*records: policy_pb2.ApiKeyRecord, revocations: tuple[policy_pb2.Revocation, ...] = ()) -> IdentityState:
    state = IdentityState()
    state.apply(policy_pb2.IdentityEvent(snapshot=True, keys=records, revocations=revocations))
    return state


def test_an_api_key_verifies_to_its_agent_without_roles(tmp_path: Path) -> None:
    full, key_id, salt, digest = new_api_key()
    verifier = _verifier(tmp_path, identity=_identity(_record(key_id, salt, digest)))
    principal = verifier.verify_header(f"Bearer {full}")
    assert (principal.subject, principal.tenant, principal.roles) == ("agent-k", "acme", ())
    assert (principal.key_id, principal.token_id, principal.expires_at) == (key_id, f"key:{key_id}", math.inf)
    assert verifier.verify(full) is principal


def test_an_api_key_can_never_be_an_operator(tmp_path: Path) -> None:
    full, key_id, salt, digest = new_api_key()
    principal = _verifier(tmp_path, identity=_identity(_record(key_id, salt, digest))).verify(full)
    assert not principal.is_operator


def test_an_api_key_with_the_wrong_secret_is_refused(tmp_path: Path) -> None:
    _, key_id, salt, digest = new_api_key()
    other, _, _, _ = new_api_key()
    forged = f"bk_{key_id}.{other.split('.', 1)[1]}"
    with pytest.raises(AuthError, match=f"the secret does not match key '{key_id}'"):
        _verifier(tmp_path, identity=_identity(_record(key_id, salt, digest))).verify(forged)


def test_an_unknown_api_key_is_refused(tmp_path: Path) -> None:
    full, _, _, _ = new_api_key()
    _, key_id, salt, digest = new_api_key()
    with pytest.raises(AuthError, match="unknown API key"):
        _verifier(tmp_path, identity=_identity(_record(key_id, salt, digest))).verify(full)


@pytest.mark.parametrize(
    "token", ["bk_", "bk_0123.abc", "bk_0123456789abcdef.short", "bk_ZZZZZZZZZZZZZZZZ." + "a" * 43]
)
def test_a_malformed_api_key_is_refused(tmp_path: Path, token: str) -> None:
    with pytest.raises(AuthError, match="malformed API key"):
        _verifier(tmp_path, identity=_identity()).verify(token)


@pytest.mark.parametrize("identity", [None, IdentityState()], ids=["no-identity", "not-synced"])
def test_api_keys_before_the_first_push_are_not_available_yet(tmp_path: Path, identity: IdentityState | None) -> None:
    full, _, _, _ = new_api_key()
    with pytest.raises(AuthError, match="API keys are not available yet"):
        _verifier(tmp_path, identity=identity).verify(full)


def test_an_expired_api_key_is_refused(tmp_path: Path) -> None:
    full, key_id, salt, digest = new_api_key()
    identity = _identity(_record(key_id, salt, digest, expires_at=time.time() - 1))
    with pytest.raises(AuthError, match=f"API key '{key_id}' expired"):
        _verifier(tmp_path, identity=identity).verify(full)


def test_an_api_key_revoked_after_it_was_cached_is_refused_at_once_and_every_retry(tmp_path: Path) -> None:
    full, key_id, salt, digest = new_api_key()
    identity = _identity(_record(key_id, salt, digest))
    verifier = _verifier(tmp_path, identity=identity)
    verifier.verify(full)

    identity.apply(policy_pb2.IdentityEvent(keys=[_record(key_id, salt, digest, revoked=True)]))

    for _ in range(3):
        with pytest.raises(AuthError, match=f"API key '{key_id}' revoked"):
            verifier.verify(full)


def test_an_api_key_dropped_by_a_snapshot_is_unknown(tmp_path: Path) -> None:
    full, key_id, salt, digest = new_api_key()
    identity = _identity(_record(key_id, salt, digest))
    verifier = _verifier(tmp_path, identity=identity)
    verifier.verify(full)
    identity.apply(policy_pb2.IdentityEvent(snapshot=True))
    with pytest.raises(AuthError, match="unknown API key"):
        verifier.verify(full)


# --- revocations ---------------------------------------------------------------------------------


def test_a_token_whose_jti_is_revoked_after_it_was_cached_is_refused(tmp_path: Path) -> None:
    identity = _identity()
    verifier = _verifier(tmp_path, identity=identity)
    token = issue_token(ensure_dev_key(tmp_path), subject="agent-1", tenant="acme")
    jti = verifier.verify(token).token_id

    identity.apply(policy_pb2.IdentityEvent(revocations=[_revocation(policy_pb2.Revocation.TOKEN, jti)]))

    with pytest.raises(AuthError, match="token revoked"):
        verifier.verify(token)
    assert verifier.verify(issue_token(ensure_dev_key(tmp_path), subject="agent-1", tenant="acme")).subject


def test_an_agent_revocation_refuses_what_was_issued_before_it_and_accepts_what_came_after(tmp_path: Path) -> None:
    key, now = ensure_dev_key(tmp_path), int(time.time())
    identity = _identity()
    verifier = _verifier(tmp_path, identity=identity)
    before = jwt.encode(_claims(iat=now - 120, jti="before"), key, "EdDSA")
    after = jwt.encode(_claims(iat=now, jti="after"), key, "EdDSA")
    elsewhere = jwt.encode(_claims(iat=now - 120, tenant="beta", jti="elsewhere"), key, "EdDSA")
    verifier.verify(before)

    revocation = _revocation(policy_pb2.Revocation.AGENT, "agent-1", tenant="acme", at=now - 60)
    identity.apply(policy_pb2.IdentityEvent(revocations=[revocation]))

    with pytest.raises(AuthError, match="agent 'agent-1' revoked"):
        verifier.verify(before)
    assert verifier.verify(after).subject == "agent-1"
    assert verifier.verify(elsewhere).tenant == "beta"


def test_an_agent_revocation_covers_its_api_keys_created_before_it(tmp_path: Path) -> None:
    full, key_id, salt, digest = new_api_key()
    identity = _identity(_record(key_id, salt, digest, agent="agent-k", created_at=time.time() - 60))
    verifier = _verifier(tmp_path, identity=identity)
    verifier.verify(full)
    identity.apply(policy_pb2.IdentityEvent(revocations=[_revocation(policy_pb2.Revocation.AGENT, "agent-k")]))
    with pytest.raises(AuthError, match="agent 'agent-k' revoked"):
        verifier.verify(full)


def test_a_snapshot_replaces_what_was_revoked(tmp_path: Path) -> None:
    identity = _identity()
    verifier = _verifier(tmp_path, identity=identity)
    token = issue_token(ensure_dev_key(tmp_path), subject="agent-1", tenant="acme")
    jti = verifier.verify(token).token_id
    revocations = [_revocation(policy_pb2.Revocation.TOKEN, jti), _revocation(policy_pb2.Revocation.AGENT, "agent-1")]
    identity.apply(policy_pb2.IdentityEvent(revocations=revocations))
    with pytest.raises(AuthError, match="revoked"):
        verifier.verify(token)

    identity.apply(policy_pb2.IdentityEvent(snapshot=True))

    assert verifier.verify(token).token_id == jti


def test_a_snapshot_with_a_record_that_does_not_parse_changes_nothing(tmp_path: Path) -> None:
    identity = _identity()
    verifier = _verifier(tmp_path, identity=identity)
    token = issue_token(ensure_dev_key(tmp_path), subject="agent-1", tenant="acme")
    jti = verifier.verify(token).token_id
    identity.apply(policy_pb2.IdentityEvent(revocations=[_revocation(policy_pb2.Revocation.TOKEN, jti)]))
    _, key_id, salt, digest = new_api_key()
    bad = _record(key_id, salt, digest)
    bad.salt = "not hex"

    with pytest.raises(ValueError, match="non-hexadecimal"):
        identity.apply(policy_pb2.IdentityEvent(snapshot=True, keys=[bad]))

    with pytest.raises(AuthError, match="token revoked"):
        verifier.verify(token)


def test_an_agent_revocation_refuses_a_token_whose_iat_is_ahead_of_it_within_the_leeway(tmp_path: Path) -> None:
    # An issuer clock 20 s fast: the token the agent held at its revocation says it was issued after it.
    key, now = ensure_dev_key(tmp_path), int(time.time())
    identity = _identity()
    verifier = _verifier(tmp_path, AuthConfig(leeway_s=30), identity=identity)
    held = jwt.encode(_claims(iat=now + 20, nbf=now, jti="held"), key, "EdDSA")
    verifier.verify(held)

    identity.apply(policy_pb2.IdentityEvent(revocations=[_revocation(policy_pb2.Revocation.AGENT, "agent-1", at=now)]))

    with pytest.raises(AuthError, match="agent 'agent-1' revoked"):
        verifier.verify(held)


def test_an_agent_revocation_spares_tokens_issued_beyond_the_leeway_after_it(tmp_path: Path) -> None:
    key, now = ensure_dev_key(tmp_path), int(time.time())
    revocation = _revocation(policy_pb2.Revocation.AGENT, "agent-1", at=now - 100)
    verifier = _verifier(tmp_path, AuthConfig(leeway_s=30), identity=_identity(revocations=(revocation,)))

    with pytest.raises(AuthError, match="agent 'agent-1' revoked"):
        verifier.verify(jwt.encode(_claims(iat=now - 75, jti="within"), key, "EdDSA"))
    assert verifier.verify(jwt.encode(_claims(iat=now - 65, jti="beyond"), key, "EdDSA")).token_id == "beyond"


def test_an_api_key_created_just_after_its_agent_was_revoked_passes_without_leeway(tmp_path: Path) -> None:
    # Both times come from the policy service's clock: there is no skew to allow for.
    full, key_id, salt, digest = new_api_key()
    now = time.time()
    identity = _identity(
        _record(key_id, salt, digest, agent="agent-k", created_at=now - 5),
        revocations=(_revocation(policy_pb2.Revocation.AGENT, "agent-k", at=now - 10),),
    )
    assert _verifier(tmp_path, identity=identity).verify(full).subject == "agent-k"


SIGNING_KEY = Ed25519PrivateKey.generate()


@settings(max_examples=200, deadline=None)
@given(subject=st.text(min_size=1, max_size=300))
def test_the_verifier_accepts_exactly_the_subjects_the_revocation_store_can_name(subject: str) -> None:
    verifier = TokenVerifier(AuthConfig(), [SIGNING_KEY.public_key()])
    token = jwt.encode(_claims(sub=subject, jti=None), SIGNING_KEY, "EdDSA")
    try:
        check_identifier("agent", subject)
    except InvalidIdentity:
        with pytest.raises(AuthError, match="could not be revoked"):
            verifier.verify(token)
    else:
        assert verifier.verify(token).subject == subject


# --- before the first push of revocations --------------------------------------------------------


def test_a_jwt_before_the_revocations_arrive_is_refused_with_503_and_why(tmp_path: Path) -> None:
    identity = IdentityState()
    identity.unsynced_reason = "its WatchIdentity stream failed: UNAVAILABLE"
    verifier = _verifier(tmp_path, identity=identity)
    token = issue_token(ensure_dev_key(tmp_path), subject="ops-1", roles=("operator",))

    for _ in range(2):  # the second time from the cache
        with pytest.raises(RevocationsUnavailable, match="revocations not loaded") as refused:
            verifier.verify_header(f"Bearer {token}")
        assert refused.value.http_status == 503
        assert refused.value.code == "bastion.auth.revocations_unavailable"
        assert "its WatchIdentity stream failed: UNAVAILABLE" in str(refused.value)

    identity.apply(policy_pb2.IdentityEvent(snapshot=True))

    assert verifier.verify_header(f"Bearer {token}").subject == "ops-1"


def test_a_jwt_before_the_revocations_arrive_is_read_where_the_caller_allows_it(tmp_path: Path) -> None:
    # The proxy's agent routes: every action still waits for the policy service.
    token = issue_token(ensure_dev_key(tmp_path), subject="agent-1")
    verifier = _verifier(tmp_path, identity=IdentityState())
    assert verifier.verify_header(f"Bearer {token}", allow_unsynced=True).subject == "agent-1"
    with pytest.raises(RevocationsUnavailable):
        verifier.verify(token)


def test_a_verifier_without_identity_state_has_no_revocations_to_wait_for(tmp_path: Path) -> None:
    token = issue_token(ensure_dev_key(tmp_path), subject="ops-1", roles=("operator",))
    assert _verifier(tmp_path).verify(token).subject == "ops-1"


def test_a_bad_token_before_the_revocations_arrive_is_still_401(tmp_path: Path) -> None:
    with pytest.raises(AuthError, match="signature does not verify") as refused:
        _verifier(tmp_path, identity=IdentityState()).verify(
            issue_token(Ed25519PrivateKey.generate(), subject="ops-1", roles=("operator",))
        )
    assert refused.value.http_status == 401


# --- dev key and service token -------------------------------------------------------------------


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
