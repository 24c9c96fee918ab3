"""Signed policy bundles: what verifies, and every way a bundle is refused, counted by reason."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry

from bastion import BundleSignatureError, ConfigError
from bastion._appconfig import AppConfig, PolicyKeyConfig
from bastion._json import loads_strict
from bastion.policy import BundleVerifier, sign_bundle
from bastion.policy._bundles import DEV_KID, load_policy_keys

TEXT = "apiVersion: bastion.dev/v1\nkind: AgentPolicy\nmetadata: {name: p, version: 1}\nspec: {}\n"
NOW = 1_800_000_000


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _verifier(keys: dict[str, object], registry: CollectorRegistry | None = None, now: float = NOW) -> BundleVerifier:
    return BundleVerifier(keys, registry=registry, clock=lambda: now)  # type: ignore[arg-type]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(header: dict[str, object], key: Ed25519PrivateKey, payload: str = TEXT) -> str:
    signing_input = f"{_b64(orjson.dumps(header))}.{_b64(payload.encode())}"
    return f"{signing_input}.{_b64(key.sign(signing_input.encode()))}"


def _refusals(registry: CollectorRegistry, reason: str) -> float:
    value = registry.get_sample_value("bastion_policy_bundle_refusals_total", {"reason": reason})
    return value or 0.0


def test_an_ed25519_bundle_verifies_and_yields_the_document_text_and_kid(key: Ed25519PrivateKey) -> None:
    bundle = sign_bundle(TEXT, key, kid="k1", ttl_seconds=600, now=NOW)
    verified = _verifier({"k1": key.public_key()}).verify(bundle)
    assert (verified.text, verified.kid, verified.issued_at, verified.expires_at) == (TEXT, "k1", NOW, NOW + 600)


def test_an_es256_bundle_verifies() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    bundle = sign_bundle(TEXT, key, kid="ec", now=NOW)
    assert orjson.loads(base64.urlsafe_b64decode(bundle.split(".")[0] + "=="))["alg"] == "ES256"
    assert _verifier({"ec": key.public_key()}).verify(bundle).text == TEXT


def test_keys_rotate_by_kid(key: Ed25519PrivateKey) -> None:
    new = Ed25519PrivateKey.generate()
    verifier = _verifier({"old": key.public_key(), "new": new.public_key()})
    assert verifier.verify(sign_bundle(TEXT, key, kid="old", now=NOW)).kid == "old"
    assert verifier.verify(sign_bundle(TEXT, new, kid="new", now=NOW)).kid == "new"
    with pytest.raises(BundleSignatureError, match=r"\(signature\)"):
        verifier.verify(sign_bundle(TEXT, new, kid="old", now=NOW))


def _tampered(bundle: str) -> str:
    header, payload, signature = bundle.split(".")
    evil = base64.urlsafe_b64decode(payload + "==").replace(b"spec: {}", b"spec: {default: allow}")
    return f"{header}.{_b64(evil)}.{signature}"


def _non_ascii_payload(bundle: str) -> str:
    header, payload, signature = bundle.split(".")
    return f"{header}.{payload}\u00e9.{signature}"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda key: _tampered(sign_bundle(TEXT, key, kid="k1", now=NOW)), "signature"),
        (lambda key: sign_bundle(TEXT, Ed25519PrivateKey.generate(), kid="k1", now=NOW), "signature"),
        (lambda key: sign_bundle(TEXT, key, kid="k1", ttl_seconds=60, now=NOW - 3600), "expired"),
        (lambda key: sign_bundle(TEXT, key, kid="k1", now=NOW + 3600), "not_yet_valid"),
        (lambda key: sign_bundle(TEXT, key, kid="stranger", now=NOW), "unknown_kid"),
        (lambda key: _forge({"alg": "EdDSA", "iat": NOW, "exp": NOW + 60}, key), "unknown_kid"),
        (lambda key: _b64(b'{"alg":"none","kid":"k1"}') + "." + _b64(TEXT.encode()) + ".", "algorithm"),
        (lambda key: _forge({"alg": "HS256", "kid": "k1", "iat": NOW, "exp": NOW + 60}, key), "algorithm"),
        (lambda key: _forge({"alg": "ES256", "kid": "k1", "iat": NOW, "exp": NOW + 60}, key), "signature"),
        (
            lambda key: _forge({"alg": "EdDSA", "kid": "k1", "iat": NOW, "exp": NOW + 60, "crit": ["x"]}, key),
            "malformed",
        ),
        (
            lambda key: _forge({"alg": "EdDSA", "kid": "k1", "iat": NOW, "exp": NOW + 60, "b64": False}, key),
            "malformed",
        ),
        (lambda key: _forge({"alg": "EdDSA", "kid": "k1", "iat": NOW}, key), "malformed"),
        (lambda key: _forge({"alg": "EdDSA", "kid": "k1", "iat": True, "exp": NOW + 60}, key), "malformed"),
        (lambda key: _forge({"alg": "EdDSA", "kid": "k1", "iat": "now", "exp": NOW + 60}, key), "malformed"),
        (lambda key: sign_bundle(TEXT, key, kid="k1", now=NOW) + "=", "signature"),
        (lambda key: "only.two", "malformed"),
        (lambda key: "a.b.c.d", "malformed"),
        (lambda key: "!!!.e30.sig", "malformed"),
        (lambda key: _non_ascii_payload(sign_bundle(TEXT, key, kid="k1", now=NOW)), "malformed"),
        (lambda key: "x" * 3_000_000, "malformed"),
    ],
    ids=[
        "tampered",
        "signed-by-another-key",
        "expired",
        "not-yet-valid",
        "unknown-kid",
        "no-kid",
        "alg-none",
        "hs256",
        "alg-key-mismatch",
        "crit-header",
        "b64-header",
        "no-exp",
        "bool-iat",
        "string-iat",
        "padded-signature",
        "two-parts",
        "four-parts",
        "bad-base64",
        "non-ascii-payload",  # found by an attacker's probe: a 500, and not counted
        "oversized",
    ],
)
def test_bad_bundles_are_refused_with_the_reason_and_counted(key: Ed25519PrivateKey, make: object, reason: str) -> None:
    registry = CollectorRegistry()
    verifier = _verifier({"k1": key.public_key()}, registry)
    bundle = make(key)  # type: ignore[operator]
    with pytest.raises(BundleSignatureError, match=rf"bundle refused \({reason}\)") as caught:
        verifier.verify(bundle)
    assert caught.value.http_status == 422
    assert _refusals(registry, reason) == 1.0


def test_a_header_with_a_repeated_field_is_refused(key: Ed25519PrivateKey) -> None:
    header = b'{"alg":"EdDSA","kid":"k1","kid":"k2","iat":1800000000,"exp":1800000060}'
    signing_input = f"{_b64(header)}.{_b64(TEXT.encode())}"
    bundle = f"{signing_input}.{_b64(key.sign(signing_input.encode()))}"
    with pytest.raises(BundleSignatureError, match="duplicate key"):
        _verifier({"k1": key.public_key(), "k2": key.public_key()}).verify(bundle)


def test_refusal_counters_are_exported_at_zero_from_the_start() -> None:
    registry = CollectorRegistry()
    _verifier({}, registry)
    assert _refusals(registry, "expired") == 0.0
    assert registry.get_sample_value("bastion_policy_bundle_refusals_total", {"reason": "unsigned"}) == 0.0


def test_the_dev_key_is_the_default_key_set_under_kid_dev(tmp_path: Path) -> None:
    keys = load_policy_keys(AppConfig(), tmp_path)
    assert list(keys) == [DEV_KID]


def test_policy_keys_load_from_bastion_yaml_and_duplicate_kids_are_refused(tmp_path: Path) -> None:
    pem = tmp_path / "k.pem"
    pem.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    app = AppConfig(policy_keys=(PolicyKeyConfig(kid="prod-2026", public_key=pem),))
    assert list(load_policy_keys(app, tmp_path)) == ["prod-2026"]
    twice = AppConfig(policy_keys=(PolicyKeyConfig(kid="a", public_key=pem), PolicyKeyConfig(kid="a", public_key=pem)))
    with pytest.raises(ConfigError, match="listed twice"):
        load_policy_keys(twice, tmp_path)
    with pytest.raises(ConfigError, match="cannot load"):
        load_policy_keys(AppConfig(policy_keys=(PolicyKeyConfig(kid="x", public_key=tmp_path / "none"),)), tmp_path)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b'{"a": 1, "a": 2}', "duplicate key 'a'"),
        (b"[NaN]", "NaN is not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b"{", "Expecting property name"),
    ],
)
def test_strict_json_refuses_duplicates_nan_depth_and_garbage(raw: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        loads_strict(raw)


def test_sign_bundle_uses_the_current_time_by_default(key: Ed25519PrivateKey) -> None:
    bundle = sign_bundle(TEXT, key, kid="k1")
    verified = BundleVerifier({"k1": key.public_key()}).verify(bundle)
    assert abs(verified.issued_at - time.time()) < 5
