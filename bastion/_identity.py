"""Who is calling: agent/operator JWTs, agent API keys, the stack's dev signing key, the service token.

A bearer credential is either a JWT — verified against the configured keys (bastion._jwks:
a JWKS chosen from by `kid`, PEM files, or the dev key), with `iss`, `aud`, `exp`, `nbf`,
`iat`, a maximum lifetime and the tenant claim checked — or an API key `bk_<id>.<secret>`,
matched against the salted digest pushed by the policy service (bastion._apikeys).
Revocations (a token's `jti`, an API key, every credential of an agent issued up to a
time) are pushed the same way and checked on every call, cached credential or not. Until
the first push has arrived a service cannot tell a revoked JWT from a good one, so JWTs
are refused then (RevocationsUnavailable, 503: fail closed), except on the proxy's agent
routes, where every action also waits for a decision from the policy service that pushes
them (proxy/_stages.py IdentityStage forwards nothing meanwhile).

Dev keys and the service token live under $BASTION_HOME and are created on first use.
Several services start at once, so creation is race-free: the secret is written to a
temporary file and hard-linked into place, and whoever loses the race reads the winner's.
"""

from __future__ import annotations

import math
import os
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ._apikeys import API_KEY_PREFIX, ApiKey, IdentityState, parse_api_key
from ._appconfig import AuthConfig, is_url
from ._errors import AuthError, ConfigError, RevocationsUnavailable
from ._identifiers import InvalidIdentity, check_identifier
from ._jwks import Jwks, KeySource, StaticKeys, jwk_thumbprint, shown

DEV_KEY_FILE = "keys/dev-ed25519.pem"
SERVICE_TOKEN_FILE = "keys/service-token"  # noqa: S105 - a file name, not a secret
#: The role that acts in every tenant (API keys, revocations, the graph's views).
ADMIN_ROLE = "admin"
OPERATOR_ROLES = frozenset({"operator", ADMIN_ROLE})
#: Real JWTs are a few hundred bytes to a few KiB; anything near this is not a token.
MAX_TOKEN_CHARS = 16 * 1024
MAX_TENANT_CHARS = 128
MAX_TOKEN_ID_CHARS = 256
DEFAULT_TENANT = "default"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    subject: str
    tenant: str
    roles: tuple[str, ...]
    #: Unix time; infinite for an API key without expiry.
    expires_at: float
    #: The JWT's `jti` ("" without one), or `key:<key id>` for an API key.
    token_id: str = ""
    #: The JWT's `iat`, or when the API key was created.
    issued_at: float = 0.0
    #: The API key's id when the caller sent one.
    key_id: str = ""

    @property
    def is_operator(self) -> bool:
        return not OPERATOR_ROLES.isdisjoint(self.roles)


def _create_once(path: Path, content: bytes) -> bytes:
    """Write `content` to `path` unless it exists; return what is there afterwards."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists():
        return path.read_bytes()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_bytes()


def ensure_dev_key(home: Path) -> Ed25519PrivateKey:
    """The stack's dev signing key (Ed25519), generated under $BASTION_HOME on first use."""
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    stored = _create_once(home / DEV_KEY_FILE, pem)
    key = serialization.load_pem_private_key(stored, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{home / DEV_KEY_FILE} is not an Ed25519 private key")
    return key


def ensure_service_token(home: Path, configured: str | None) -> str:
    """$BASTION_SERVICE_TOKEN if set, else the token generated under $BASTION_HOME."""
    if configured:
        return configured
    return _create_once(home / SERVICE_TOKEN_FILE, secrets.token_urlsafe(32).encode()).decode().strip()


def issue_token(
    key: Ed25519PrivateKey,
    *,
    subject: str,
    roles: tuple[str, ...] = (),
    tenant: str = DEFAULT_TENANT,
    ttl_seconds: int = 3600,
    auth: AuthConfig | None = None,
) -> str:
    """A JWT signed with `key` (the dev key), under the key's RFC 7638 thumbprint as `kid`.

    The lifetime is cut to `auth.max_token_lifetime_s`: a longer-lived token would be refused.
    """
    settings = auth or AuthConfig()
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": subject,
        settings.tenant_claim: tenant,
        "roles": list(roles),
        "iss": settings.issuer,
        "aud": settings.audience,
        "iat": now,
        "nbf": now,
        "exp": now + min(ttl_seconds, settings.max_token_lifetime_s),
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": jwk_thumbprint(key.public_key())})


def load_public_keys(auth: AuthConfig, home: Path) -> list[Any]:
    """The PEM keys of `auth.public_keys`, else the dev key (for `auth.jwks` use TokenVerifier.from_config)."""
    if auth.jwks is not None:
        # Falling back to the dev key here would trust a key the configuration never named.
        raise ConfigError("auth.jwks is set: build the verifier with TokenVerifier.from_config(auth, home)")
    if not auth.public_keys:
        return [ensure_dev_key(home).public_key()]
    keys: list[Any] = []
    for path in auth.public_keys:
        try:
            keys.append(serialization.load_pem_public_key(path.read_bytes()))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"auth.public_keys: cannot load {path}: {exc}") from exc
    return keys


@dataclass(frozen=True, slots=True)
class _Verified:
    principal: Principal
    #: Cached until then (Unix time).
    valid_until: float
    #: The record an API key was verified against: the entry holds while the pushed state holds it.
    api_key: ApiKey | None = None


class TokenVerifier:
    """Verifies bearer JWTs and API keys, caching good ones until they expire.

    Signature verification costs tens of microseconds; agents reuse one token for many
    calls, so the hot path pays it once per token. Revocation is looked up on every call,
    hits included (a few dict lookups), so a pushed revocation takes effect at once; a
    revoked credential stays cached, so retrying it in a loop stays cheap.
    Not thread-safe: use it from one event loop.

        TokenVerifier.from_config(auth, home, identity=...)   then `await start()` ... `await close()`
        verify_header("Bearer ...") / verify(token) -> Principal, or AuthError (401)

    Before the identity state has synced, a JWT raises RevocationsUnavailable (503) unless
    the caller passes `allow_unsynced=True`: only the proxy's agent routes do, whose every
    action is decided by the policy service (down, or not yet pushing: nothing is forwarded).
    """

    def __init__(
        self,
        auth: AuthConfig,
        public_keys: Sequence[Any] | KeySource,
        cache_size: int = 4096,
        *,
        identity: IdentityState | None = None,
    ) -> None:
        self._auth = auth
        self._keys: KeySource = (
            StaticKeys(public_keys, auth.algorithms) if isinstance(public_keys, Sequence) else public_keys
        )
        self._algorithms = frozenset(auth.algorithms)
        self._identity = identity
        self._cache: OrderedDict[str, _Verified] = OrderedDict()
        self._cache_size = cache_size

    @classmethod
    def from_config(
        cls, auth: AuthConfig, home: Path, *, identity: IdentityState | None = None, cache_size: int = 4096
    ) -> TokenVerifier:
        """The verifier `auth` describes. A JWKS file is read here; a JWKS URL in `start()`."""
        if auth.jwks is None:
            return cls(auth, load_public_keys(auth, home), cache_size, identity=identity)
        jwks = Jwks(auth.jwks, auth.algorithms, refresh_s=auth.jwks_refresh_s)
        if not is_url(auth.jwks):
            jwks.load()
        return cls(auth, jwks, cache_size, identity=identity)

    async def start(self) -> None:
        """Fetch a JWKS URL (ConfigError if that fails) and keep a JWKS refreshed; else nothing."""
        await self._keys.start()

    async def close(self) -> None:
        await self._keys.close()

    def verify_header(self, authorization: str | None, *, allow_unsynced: bool = False) -> Principal:
        if not authorization:
            raise AuthError("missing bearer token: send 'Authorization: Bearer <jwt or API key>'")
        if len(authorization) > MAX_TOKEN_CHARS:
            # Refused before any parsing: a megabyte of header would otherwise be split,
            # base64-decoded and hashed on the event loop before the inevitable 401.
            raise AuthError(f"bearer token longer than {MAX_TOKEN_CHARS} characters")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthError("Authorization header must be 'Bearer <jwt or API key>'")
        return self.verify(token.strip(), allow_unsynced=allow_unsynced)

    def verify(self, token: str, *, allow_unsynced: bool = False) -> Principal:
        if len(token) > MAX_TOKEN_CHARS:
            raise AuthError(f"bearer token longer than {MAX_TOKEN_CHARS} characters")
        verified = self._cache.get(token)
        if verified is not None and self._still_good(verified):
            self._cache.move_to_end(token)
        else:
            if verified is not None:
                del self._cache[token]
            verified = self._api_key(token) if token.startswith(API_KEY_PREFIX) else self._jwt(token)
            self._cache[token] = verified
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        self._check_revocations(verified.principal)
        if not allow_unsynced:
            self.check_synced()
        return verified.principal

    def _still_good(self, verified: _Verified) -> bool:
        if verified.valid_until <= time.time():
            return False
        # A changed record (revoked, expiry moved, a new snapshot) means verifying again.
        return verified.api_key is None or (
            self._identity is not None and self._identity.api_key(verified.principal.key_id) is verified.api_key
        )

    def check_synced(self) -> None:
        """RevocationsUnavailable until the revocation list has arrived (see `verify`)."""
        identity = self._identity
        # Without an identity state (an app alone, in tests) there is nothing to wait for.
        if identity is not None and not identity.synced:
            raise RevocationsUnavailable(
                f"revocations not loaded: this service has not received the revocation list from the policy "
                f"service ({identity.unsynced_reason}), so no token can be checked against it; "
                "retry once the policy service is reachable"
            )

    def recheck(self, principal: Principal) -> None:
        """AuthError when `principal`'s credential was revoked since it was verified: its
        token, its agent, or its API key. For a call that waited between its check and its
        forwarding (an operator's approval, a queue release, a slow decision): an attacker's
        probe had a call held for approval forwarded after its API key was revoked."""
        self._check_revocations(principal)
        identity = self._identity
        if principal.key_id and identity is not None:
            record = identity.api_key(principal.key_id)
            if record is None or record.revoked:
                raise AuthError(f"API key {principal.key_id!r} revoked")

    def _check_revocations(self, principal: Principal) -> None:
        identity = self._identity
        if identity is None:
            return
        # The operator's reason is not repeated to the caller: it may say what was suspected.
        if identity.token_revoked(principal.token_id) is not None:
            raise AuthError("token revoked: ask for a new one")
        # A JWT's `iat` may be ahead of this clock by up to the leeway; an API key's time is the
        # policy service's own, like the revocation's.
        leeway = 0.0 if principal.key_id else float(self._auth.leeway_s)
        if identity.agent_revoked(principal.tenant, principal.subject, principal.issued_at, leeway) is not None:
            raise AuthError(
                f"agent {principal.subject!r} revoked: its credentials issued before the revocation "
                "(or within the clock leeway after it, auth.leeway_s) are refused"
            )

    # --- API keys -----------------------------------------------------------------------------

    def _api_key(self, token: str) -> _Verified:
        parsed = parse_api_key(token)
        if parsed is None:
            raise AuthError(f"malformed API key: expected {API_KEY_PREFIX}<16 hex digits>.<43-character secret>")
        key_id, secret = parsed
        identity = self._identity
        if identity is None or not identity.synced:
            raise AuthError(
                "API keys are not available yet: this service has not received them from the policy service"
            )
        record = identity.api_key(key_id)
        if record is None:
            raise AuthError(f"unknown API key {key_id!r}")
        # The secret first: only its holder learns whether the key is revoked or expired.
        if not record.matches(secret):
            raise AuthError(f"invalid API key: the secret does not match key {key_id!r}")
        if record.revoked:
            raise AuthError(f"API key {key_id!r} revoked")
        if record.expires_at and record.expires_at <= time.time():
            raise AuthError(f"API key {key_id!r} expired")
        expires_at = record.expires_at or math.inf
        principal = Principal(
            subject=record.agent_id,
            tenant=record.tenant,
            # An API key is an agent's credential, held in the agent's configuration: it never
            # carries operator roles, so a leaked key can never approve, grant or change policy.
            roles=(),
            expires_at=expires_at,
            token_id=f"key:{key_id}",
            issued_at=record.created_at,
            key_id=key_id,
        )
        return _Verified(principal, expires_at, record)

    # --- JWTs ---------------------------------------------------------------------------------

    def _jwt(self, token: str) -> _Verified:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: malformed ({exc})") from exc
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self._algorithms:
            allowed = ", ".join(self._auth.algorithms)
            raise AuthError(f"invalid token: algorithm {shown(algorithm)} is not allowed (allowed: {allowed})")
        kid = header.get("kid")
        candidates = self._keys.candidates(kid)
        keys = [key for key in candidates if algorithm in key.algorithms]
        if not keys:
            if len(candidates) == 1 and candidates[0].kid is not None:
                raise AuthError(
                    f"invalid token: algorithm {algorithm!r} does not fit key {shown(candidates[0].kid)} "
                    f"({', '.join(sorted(candidates[0].algorithms))})"
                )
            raise AuthError(f"invalid token: algorithm {algorithm!r} fits none of the configured keys")
        for key in keys:
            try:
                claims = jwt.decode(
                    token,
                    key.key,
                    algorithms=[algorithm],
                    audience=self._auth.audience,
                    issuer=self._auth.issuer,
                    leeway=self._auth.leeway_s,
                    options={"require": ["sub", "exp", "iat"]},
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as exc:
                raise AuthError(_claims_refusal(exc)) from exc
            principal = self._principal(claims)
            return _Verified(principal, principal.expires_at + self._auth.leeway_s)
        raise AuthError("invalid token: the signature does not verify")

    def _principal(self, claims: dict[str, Any]) -> Principal:
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise AuthError("invalid token: 'sub' must be a non-empty string")
        roles = claims.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise AuthError("invalid token: 'roles' must be a list of strings")
        claim = self._auth.tenant_claim
        tenant = claims.get(claim, DEFAULT_TENANT)
        if not isinstance(tenant, str) or not tenant or len(tenant) > MAX_TENANT_CHARS:
            raise AuthError(
                f"invalid token: the tenant claim {claim!r} must be a non-empty string "
                f"of at most {MAX_TENANT_CHARS} characters"
            )
        token_id = claims.get("jti", "")
        if not isinstance(token_id, str) or len(token_id) > MAX_TOKEN_ID_CHARS:
            raise AuthError(f"invalid token: 'jti' must be a string of at most {MAX_TOKEN_ID_CHARS} characters")
        _revocable(subject, tenant, claim, token_id)
        try:
            issued_at, expires_at = float(claims["iat"]), float(claims["exp"])
        except OverflowError:
            # An `exp` of 10**400 passes PyJWT (Python ints compare at any size) and was a 500.
            raise AuthError("invalid token: 'iat' and 'exp' must be times a float can hold") from None
        lifetime, most = expires_at - issued_at, self._auth.max_token_lifetime_s
        if lifetime > most:
            raise AuthError(
                f"invalid token: token lifetime of {lifetime:.0f} s (exp - iat) exceeds the maximum of {most} s"
            )
        return Principal(
            subject=subject,
            tenant=tenant,
            roles=tuple(roles),
            expires_at=expires_at,
            token_id=token_id,
            issued_at=issued_at,
        )


def _revocable(subject: str, tenant: str, claim: str, token_id: str) -> None:
    """Refuse what the revocation store would refuse to name (bastion._identifiers): an agent
    or token the verifier lets in must be one an operator can revoke."""
    try:
        check_identifier("'sub'", subject)
        check_identifier(f"the tenant claim {claim!r}", tenant)
        if token_id:
            check_identifier("'jti'", token_id)
    except InvalidIdentity as exc:
        raise AuthError(f"invalid token: {exc} (such a token could not be revoked)") from exc


def _claims_refusal(exc: jwt.PyJWTError) -> str:
    """What is wrong with a validly signed token's claims; one message per check."""
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "invalid token: expired"
    if isinstance(exc, jwt.ImmatureSignatureError):
        claim = "iat" if "(iat)" in str(exc) else "nbf"
        return f"invalid token: not yet valid ({claim!r} is in the future)"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "invalid token: wrong audience (not this stack's auth.audience)"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "invalid token: wrong issuer (not this stack's auth.issuer)"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"invalid token: no {exc.claim!r} claim"
    return f"invalid token: {exc}"
