"""Who is calling: agent/operator JWTs, the stack's dev signing key, the service token.

Dev keys and the service token live under $BASTION_HOME and are created on first use.
Several services start at once, so creation is race-free: the secret is written to a
temporary file and hard-linked into place, and whoever loses the race reads the winner's.
"""

from __future__ import annotations

import os
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ._appconfig import AuthConfig
from ._errors import AuthError, ConfigError

DEV_KEY_FILE = "keys/dev-ed25519.pem"
SERVICE_TOKEN_FILE = "keys/service-token"  # noqa: S105 - a file name, not a secret
OPERATOR_ROLES = frozenset({"operator", "admin"})
#: Real JWTs are a few hundred bytes to a few KiB; anything near this is not a token.
MAX_TOKEN_CHARS = 16 * 1024


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    subject: str
    tenant: str
    roles: tuple[str, ...]
    expires_at: float

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
    tenant: str = "default",
    ttl_seconds: int = 3600,
    auth: AuthConfig | None = None,
) -> str:
    settings = auth or AuthConfig()
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": subject,
        "tenant": tenant,
        "roles": list(roles),
        "iss": settings.issuer,
        "aud": settings.audience,
        "iat": now,
        "nbf": now,
        "exp": now + ttl_seconds,
    }
    return jwt.encode(claims, key, algorithm="EdDSA")


def load_public_keys(auth: AuthConfig, home: Path) -> list[Any]:
    if not auth.public_keys:
        return [ensure_dev_key(home).public_key()]
    keys: list[Any] = []
    for path in auth.public_keys:
        try:
            keys.append(serialization.load_pem_public_key(path.read_bytes()))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"auth.public_keys: cannot load {path}: {exc}") from exc
    return keys


class TokenVerifier:
    """Verifies bearer JWTs, caching good ones until they expire.

    Signature verification costs tens of microseconds; agents reuse one token for
    many calls, so the hot path pays it once per token.
    """

    def __init__(self, auth: AuthConfig, public_keys: list[Any], cache_size: int = 4096) -> None:
        if not public_keys:
            raise ConfigError("no public keys to verify tokens with")
        self._auth = auth
        self._keys = public_keys
        self._cache: OrderedDict[str, Principal] = OrderedDict()
        self._cache_size = cache_size

    def verify_header(self, authorization: str | None) -> Principal:
        if not authorization:
            raise AuthError("missing bearer token: send 'Authorization: Bearer <jwt>'")
        if len(authorization) > MAX_TOKEN_CHARS:
            # Refused before any parsing: a megabyte of header would otherwise be split,
            # base64-decoded and hashed on the event loop before the inevitable 401.
            raise AuthError(f"bearer token longer than {MAX_TOKEN_CHARS} characters")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthError("Authorization header must be 'Bearer <jwt>'")
        return self.verify(token.strip())

    def verify(self, token: str) -> Principal:
        cached = self._cache.get(token)
        if cached is not None:
            if cached.expires_at > time.time():
                self._cache.move_to_end(token)
                return cached
            del self._cache[token]
        principal = self._decode(token)
        self._cache[token] = principal
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return principal

    def _decode(self, token: str) -> Principal:
        last: Exception | None = None
        for key in self._keys:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=list(self._auth.algorithms),
                    audience=self._auth.audience,
                    issuer=self._auth.issuer,
                    options={"require": ["sub", "exp", "iat"]},
                )
            except jwt.InvalidSignatureError as exc:
                last = exc
                continue
            except jwt.PyJWTError as exc:
                raise AuthError(f"invalid token: {exc}") from exc
            roles = claims.get("roles", [])
            if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
                raise AuthError("invalid token: 'roles' must be a list of strings")
            subject = claims["sub"]
            if not isinstance(subject, str) or not subject:
                raise AuthError("invalid token: 'sub' must be a non-empty string")
            return Principal(
                subject=subject,
                tenant=str(claims.get("tenant", "default")),
                roles=tuple(roles),
                expires_at=float(claims["exp"]),
            )
        raise AuthError(f"invalid token: {last or 'signature verification failed'}")
