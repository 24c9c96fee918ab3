"""Signed policy bundles: a policy document inside a JWS, verified against keys chosen by `kid`.

A bundle is a JWS in compact serialisation, `BASE64URL(header).BASE64URL(payload).BASE64URL(sig)`:

    header    {"alg": "EdDSA" | "ES256", "kid": "<key id>", "iat": <unix s>, "exp": <unix s>,
               "typ": "bastion-policy+jws"}      (typ and cty optional; nothing else allowed)
    payload   the policy document text (YAML or JSON), UTF-8

`iat` and `exp` live in the protected header because the payload is the document itself,
not a claims set. Verification is done here with `cryptography`, not by a general JWT
library, so that nothing outside this list is ever honoured:

* only `EdDSA` (Ed25519) and `ES256` (P-256, raw r||s signature); `none`, `HS256` and
  every other algorithm are refused before any key is looked at, and the key found by
  `kid` must be of the algorithm's type (an ES256 header cannot use an Ed25519 key);
* the `kid` must be in the key set: `policy_keys:` in bastion.yaml, else the stack's dev
  key under kid `dev`. Keys rotate by adding the new kid, re-signing, then removing the
  old one;
* any other header (`crit`, `b64`, `jku`, `x5u`, …) is refused: an extension this code
  does not implement must not be silently ignored;
* base64url must be canonical (no padding, no stray characters), so one bundle has one
  encoding; the header must be a JSON object without duplicate keys;
* `iat` more than LEEWAY_S in the future is "not yet valid"; `exp` in the past (less
  LEEWAY_S) is "expired"; both must be integers.

Every refusal raises BundleSignatureError (HTTP 422, gRPC PERMISSION_DENIED) naming the
reason, is logged, and is counted in `bastion_policy_bundle_refusals_total{reason}`.

A bundle's `exp` is the signer's approval lifetime, like a certificate's: `sign_bundle` (and
so `bastion policy apply`) signs for `DEFAULT_TTL_S`, 30 days, unless told otherwise. The
signature is checked once, on submission. After its `exp` a version is never put in force
again: activating it, starting a rollout to it or promoting it is refused (`check_in_force`,
reason `expired`, counted and logged like a refused submission). A version already active
stays served after its `exp` — denying everything at that moment would take production
down — and the `exp` of each active version's bundle is exported as
`bastion_policy_bundle_expiry_timestamp_seconds{policy,version}` (`BundleExpiryCollector`) so
the alerts BastionPolicyBundleExpiringSoon / BastionPolicyBundleExpired ask for a re-signed
version before, and after, the signer's approval runs out.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bastion._appconfig import AppConfig
from bastion._errors import BundleSignatureError, ConfigError
from bastion._identity import ensure_dev_key
from bastion._json import loads_strict

from ._document import MAX_DOCUMENT_CHARS
from ._store import VersionRecord

log = logging.getLogger("bastion.policy.bundles")

DEV_KID = "dev"
BUNDLE_TYPE = "bastion-policy+jws"
ALGORITHMS = ("EdDSA", "ES256")
#: Clock skew tolerated between the signer and this service.
LEEWAY_S = 60
#: How long a signer's approval lasts unless the signer says otherwise (`--ttl`).
DEFAULT_TTL_S = 30 * 86400
#: A document at its size limit, base64url-encoded, plus header and signature.
MAX_BUNDLE_CHARS = MAX_DOCUMENT_CHARS * 4 // 3 + 4096
_HEADERS = frozenset({"alg", "kid", "iat", "exp", "typ", "cty"})
#: The label values of bastion_policy_bundle_refusals_total.
REASONS = ("unsigned", "malformed", "algorithm", "unknown_kid", "signature", "expired", "not_yet_valid")

PublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey
PrivateKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class VerifiedBundle:
    text: str
    kid: str
    issued_at: int
    expires_at: int


def load_policy_keys(app: AppConfig, home: Path) -> dict[str, PublicKey]:
    """kid → public key from bastion.yaml `policy_keys:`, else the dev key under kid 'dev'."""
    if not app.policy_keys:
        return {DEV_KID: ensure_dev_key(home).public_key()}
    keys: dict[str, PublicKey] = {}
    for entry in app.policy_keys:
        if entry.kid in keys:
            raise ConfigError(f"policy_keys: kid {entry.kid!r} is listed twice; each kid names one key")
        try:
            key = serialization.load_pem_public_key(entry.public_key.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"policy_keys: cannot load {entry.public_key} (kid {entry.kid!r}): {exc}") from exc
        if not isinstance(key, Ed25519PublicKey) and not (
            isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
        ):
            raise ConfigError(f"policy_keys: {entry.public_key} (kid {entry.kid!r}) is neither Ed25519 nor P-256")
        keys[entry.kid] = key
    return keys


class BundleVerifier:
    """Verifies bundles against a key set; counts and logs every refusal."""

    def __init__(
        self,
        keys: Mapping[str, PublicKey],
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = dict(keys)
        self._clock = clock
        self._refusals = Counter(
            "bastion_policy_bundle_refusals_total",
            "Policy bundles refused, by reason (unsigned, tampered, expired, unknown kid, …).",
            ["reason"],
            registry=registry,
        )
        for reason in REASONS:  # exported at 0 from the start, so rate() works at once
            self._refusals.labels(reason=reason)

    def refuse(self, reason: str, message: str) -> BundleSignatureError:
        """Count and log a refusal; return the error for the caller to raise."""
        self._refusals.labels(reason=reason).inc()
        log.warning("refused a policy bundle: %s", message, extra={"fields": {"reason": reason}})
        return BundleSignatureError(f"bundle refused ({reason}): {message}")

    def verify(self, bundle: str) -> VerifiedBundle:
        if len(bundle) > MAX_BUNDLE_CHARS:
            raise self.refuse("malformed", f"bundle is {len(bundle)} characters; the limit is {MAX_BUNDLE_CHARS}")
        parts = bundle.split(".")
        if len(parts) != 3:
            raise self.refuse("malformed", "not a JWS in compact serialisation (header.payload.signature)")
        header_b64, payload_b64, signature_b64 = parts
        header = self._header(header_b64)
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise self.refuse("algorithm", f"algorithm {alg!r} is not accepted; sign with EdDSA or ES256")
        extra = sorted(set(header) - _HEADERS)
        if extra:
            raise self.refuse("malformed", f"unsupported header field(s) {', '.join(map(repr, extra))}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise self.refuse("unknown_kid", "the header names no 'kid'")
        key = self._keys.get(kid)
        if key is None:
            raise self.refuse(
                "unknown_kid", f"kid {kid[:64]!r} is not in the policy key set (bastion.yaml policy_keys)"
            )
        payload = _b64decode(payload_b64)
        if payload is None:
            # Before the signature: its input must be ASCII (a non-ASCII payload was a 500, uncounted).
            raise self.refuse("malformed", "the payload is not base64url-encoded UTF-8 text")
        signature = _b64decode(signature_b64)
        if signature is None or not _verifies(key, alg, signature, f"{header_b64}.{payload_b64}".encode("ascii")):
            raise self.refuse("signature", "the signature does not verify (tampered, or signed by another key)")
        issued_at, expires_at = header.get("iat"), header.get("exp")
        if (
            not isinstance(issued_at, int)
            or not isinstance(expires_at, int)
            or bool in (type(issued_at), type(expires_at))
        ):
            raise self.refuse("malformed", "the header must carry integer 'iat' and 'exp' (unix seconds)")
        now = self._clock()
        if issued_at > now + LEEWAY_S:
            raise self.refuse("not_yet_valid", f"issued at {issued_at}, in the future (now {int(now)})")
        if _expired(expires_at, now):
            raise self.refuse("expired", f"expired at {expires_at} (now {int(now)}); sign it again")
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise self.refuse("malformed", "the payload is not base64url-encoded UTF-8 text") from None
        return VerifiedBundle(text=text, kid=kid, issued_at=issued_at, expires_at=expires_at)

    def check_in_force(self, record: VersionRecord) -> None:
        """Refuse to put a stored version in force (activate, roll out, promote) when the bundle
        it was submitted in has expired; a version stored unsigned has no `exp` and passes."""
        expires_at = bundle_expiry(record.signature.jws) if record.signature is not None else None
        now = self._clock()
        if expires_at is None or not _expired(expires_at, now):
            return
        raise self.refuse(
            "expired",
            f"policy {record.name!r} v{record.version} was signed until {_iso(expires_at)} "
            f"(exp {expires_at}, now {int(now)}): the signer's approval has run out, so it cannot be "
            "activated, rolled out or promoted. Active versions keep being served; sign the document "
            "again under a new metadata.version (`bastion policy apply`) and roll that out",
        )

    def _header(self, encoded: str) -> dict[str, Any]:
        raw = _b64decode(encoded)
        try:
            header = loads_strict(raw) if raw is not None else None
        except ValueError as exc:
            raise self.refuse("malformed", f"the JWS header is not valid JSON: {exc}") from exc
        if not isinstance(header, dict):
            raise self.refuse("malformed", "the JWS header is not a base64url-encoded JSON object")
        return header


def bundle_expiry(bundle: str) -> int | None:
    """The `exp` of a stored bundle's header (it was verified on submission); None if unreadable."""
    raw = _b64decode(bundle.partition(".")[0])
    try:
        header = loads_strict(raw) if raw is not None else None
    except ValueError:
        return None
    expires_at = header.get("exp") if isinstance(header, dict) else None
    return expires_at if type(expires_at) is int else None


class BundleExpiryCollector(Collector):
    """`bastion_policy_bundle_expiry_timestamp_seconds{policy,version}`, read at each scrape from
    `active()`: (name, version, exp) of the active versions; unsigned ones (exp None) are left out."""

    def __init__(self, active: Callable[[], Iterable[tuple[str, int, int | None]]]) -> None:
        self._active = active

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "bastion_policy_bundle_expiry_timestamp_seconds",
            "exp (unix seconds) of the signed bundle of each active policy version; absent when applied unsigned.",
            labels=["policy", "version"],
        )
        for name, version, expires_at in self._active():
            if expires_at is not None:
                family.add_metric([name, str(version)], expires_at)
        yield family


def sign_bundle(
    text: str, key: PrivateKey, *, kid: str, ttl_seconds: int = DEFAULT_TTL_S, now: int | None = None
) -> str:
    """A bundle of `text` signed with `key` (Ed25519 → EdDSA, P-256 → ES256), valid `ttl_seconds`."""
    issued_at = int(time.time()) if now is None else now
    alg = "EdDSA" if isinstance(key, Ed25519PrivateKey) else "ES256"
    header = {"alg": alg, "kid": kid, "iat": issued_at, "exp": issued_at + ttl_seconds, "typ": BUNDLE_TYPE}
    signing_input = f"{_b64encode(orjson.dumps(header))}.{_b64encode(text.encode('utf-8'))}"
    if isinstance(key, Ed25519PrivateKey):
        signature = key.sign(signing_input.encode("ascii"))
    else:
        r, s = decode_dss_signature(key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{signing_input}.{_b64encode(signature)}"


def _expired(expires_at: int, now: float) -> bool:
    # The same leeway on submission and on activation: a bundle the service would still
    # accept can still be put in force.
    return expires_at < now - LEEWAY_S


def _iso(timestamp: int) -> str:
    try:
        return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):  # an exp no calendar holds
        return str(timestamp)


def _verifies(key: PublicKey, alg: str, signature: bytes, message: bytes) -> bool:
    try:
        if alg == "EdDSA" and isinstance(key, Ed25519PublicKey):
            key.verify(signature, message)
            return True
        if alg == "ES256" and isinstance(key, ec.EllipticCurvePublicKey) and len(signature) == 64:
            der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
            key.verify(der, message, ec.ECDSA(hashes.SHA256()))
            return True
    except InvalidSignature:
        return False
    return False  # the kid's key is not of the header's algorithm


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes | None:
    """Strict base64url without padding; None unless `text` is the canonical encoding."""
    if not text.isascii():
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return data if _b64encode(data) == text else None
