"""The keys agent JWTs are verified against: PEM files, or a JWKS chosen from by `kid`.

A key is usable only with the algorithms its type allows (Ed25519: EdDSA; P-256: ES256;
RSA of 2048 bits or more: RS*/PS*) that `auth.algorithms` also names, so a token's `alg`
header can never make a public key serve as an HMAC secret or choose `none`.

A JWKS file or URL is read once at start (a failure is a ConfigError), then again every
`auth.jwks_refresh_s`, and early — at most every `UNKNOWN_KID_REFETCH_S` — when a token
names a kid the set does not hold (an issuer rotating its keys). Reads run in a worker
thread, never on the event loop; a failed or unusable read keeps the keys held and logs.
The token that revealed the new kid is refused (verification never waits on the
network); the issuer's next try, once the refresh has landed, passes.

    Jwks(location, algorithms, refresh_s=...)   .load() now, or `await .start()`; `await .close()`
    StaticKeys(keys, algorithms)                 PEM keys or the dev key (kid ignored)
    jwk_thumbprint(public_key)                   RFC 7638 kid of a key
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import http.client
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt import PyJWK, PyJWTError
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from ._appconfig import ASYMMETRIC_ALGORITHMS, is_url
from ._errors import AuthError, ConfigError

log = logging.getLogger("bastion.identity")

#: The least time between two reads of a JWKS caused by unknown kids: a stream of forged
#: kids must not become a stream of requests to the issuer.
UNKNOWN_KID_REFETCH_S = 30.0
#: Real key sets are a few KiB.
MAX_JWKS_BYTES = 1 << 20
MIN_RSA_BITS = 2048
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
#: RFC 7638 §3.2: the members a thumbprint covers, by key type.
_THUMBPRINT_MEMBERS = {"OKP": ("crv", "kty", "x"), "EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")}


class JwksError(Exception):
    """A key set that cannot be read or holds no usable key."""


class _Unusable(ValueError):
    """One key that cannot be used, and why."""


@dataclass(frozen=True, slots=True)
class VerificationKey:
    #: None for a PEM key, or a JWK without a `kid`.
    kid: str | None
    #: A `cryptography` public key.
    key: Any
    #: What this key may verify: its type's algorithms that auth.algorithms also names.
    algorithms: frozenset[str]
    #: e.g. "Ed25519", "EC secp256r1", "RSA 2048".
    kind: str


class KeySource(Protocol):
    """Where a TokenVerifier finds the keys a token may be signed with."""

    def candidates(self, kid: object) -> Sequence[VerificationKey]: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


def key_algorithms(key: Any) -> tuple[frozenset[str], str]:
    """The algorithms a public key's type can verify, and a name for the type."""
    if isinstance(key, Ed25519PublicKey):
        return frozenset({"EdDSA"}), "Ed25519"
    if isinstance(key, EllipticCurvePublicKey):
        algorithm = _EC_ALGORITHMS.get(key.curve.name)
        if algorithm is None:
            raise _Unusable(f"curve {key.curve.name} is not supported (use P-256, P-384 or P-521)")
        return frozenset({algorithm}), f"EC {key.curve.name}"
    if isinstance(key, RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise _Unusable(f"RSA key of {key.key_size} bits (at least {MIN_RSA_BITS})")
        return _RSA_ALGORITHMS, f"RSA {key.key_size}"
    raise _Unusable(f"{type(key).__name__} is not a supported signing key (Ed25519, EC or RSA public keys)")


def _verification_key(kid: str | None, key: Any, allowed: frozenset[str], named: str | None = None) -> VerificationKey:
    algorithms, kind = key_algorithms(key)
    if named is not None:
        algorithms &= {named}
    algorithms &= allowed
    if not algorithms:
        wanted = named or ", ".join(sorted(key_algorithms(key)[0]))
        raise _Unusable(f"{kind} key ({wanted}) fits none of auth.algorithms ({', '.join(sorted(allowed))})")
    return VerificationKey(kid=kid, key=key, algorithms=algorithms, kind=kind)


def jwk_thumbprint(public_key: Any) -> str:
    """The RFC 7638 thumbprint of a public key: a kid that names the key itself."""
    jwk: dict[str, Any]
    if isinstance(public_key, Ed25519PublicKey):
        jwk = OKPAlgorithm.to_jwk(public_key, as_dict=True)
    elif isinstance(public_key, EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public_key, as_dict=True)
    elif isinstance(public_key, RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    else:
        raise TypeError(f"no thumbprint for {type(public_key).__name__}")
    members = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def parse_jwks(document: bytes, allowed: Iterable[str]) -> tuple[tuple[VerificationKey, ...], list[str]]:
    """The usable keys of a JWKS document, and why the others were skipped."""
    try:
        data = json.loads(document)
    except ValueError as exc:
        raise JwksError(f"not JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise JwksError('not a JWKS: expected {"keys": [...]}')
    wanted = frozenset(allowed)
    keys: list[VerificationKey] = []
    skipped: list[str] = []
    for index, entry in enumerate(data["keys"]):
        try:
            key = _parse_jwk(entry, wanted)
        except _Unusable as exc:
            kid = entry.get("kid") if isinstance(entry, dict) else None
            skipped.append(f"key {kid!r}: {exc}" if isinstance(kid, str) else f"key #{index + 1}: {exc}")
            continue
        if key.kid is not None and any(held.kid == key.kid for held in keys):
            raise JwksError(f"two usable keys have kid {key.kid!r}: a token could not say which it was signed with")
        keys.append(key)
    if not keys:
        raise JwksError("no usable signing key" + (f" ({'; '.join(skipped)})" if skipped else ""))
    return tuple(keys), skipped


def _parse_jwk(entry: object, allowed: frozenset[str]) -> VerificationKey:
    if not isinstance(entry, dict):
        raise _Unusable("not a JSON object")
    kid = entry.get("kid")
    if kid is not None and (not isinstance(kid, str) or not kid):
        raise _Unusable("'kid' must be a non-empty string")
    use = entry.get("use")
    if use is not None and use != "sig":
        raise _Unusable(f"use {use!r}, not 'sig'")
    if entry.get("kty") == "oct":
        raise _Unusable("a symmetric key: only public keys verify tokens")
    if "d" in entry:
        raise _Unusable("holds private key material: publish only the public key")
    named = entry.get("alg")
    if named is not None and named not in ASYMMETRIC_ALGORITHMS:
        raise _Unusable(f"alg {named!r} is not accepted")
    try:
        jwk = PyJWK(entry)
    except (PyJWTError, ValueError, TypeError) as exc:
        raise _Unusable(f"cannot be loaded (kty {entry.get('kty')!r}, crv {entry.get('crv')!r})") from exc
    return _verification_key(kid, jwk.key, allowed, named)


class StaticKeys:
    """PEM keys from auth.public_keys, or the stack's dev key: tried in turn, kid ignored."""

    def __init__(self, keys: Sequence[Any], algorithms: Iterable[str]) -> None:
        if not keys:
            raise ConfigError("no public keys to verify tokens with")
        allowed = frozenset(algorithms)
        loaded: list[VerificationKey] = []
        for index, key in enumerate(keys):
            try:
                loaded.append(_verification_key(None, key, allowed))
            except _Unusable as exc:
                raise ConfigError(f"auth: public key #{index + 1}: {exc}") from exc
        self._keys = tuple(loaded)

    def candidates(self, kid: object) -> Sequence[VerificationKey]:
        return self._keys

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class _KeySet:
    keys: tuple[VerificationKey, ...] = ()
    by_kid: dict[str, VerificationKey] = field(default_factory=dict)


class Jwks:
    """A JWKS file or URL, its keys chosen by kid, refreshed in the background (see the module doc)."""

    def __init__(
        self,
        location: str,
        algorithms: Iterable[str],
        *,
        refresh_s: float = 300.0,
        min_refetch_s: float = UNKNOWN_KID_REFETCH_S,
        timeout_s: float = 10.0,
    ) -> None:
        self.location = location
        self._allowed = frozenset(algorithms)
        self._refresh_s = refresh_s
        self._min_refetch_s = min_refetch_s
        self._timeout_s = timeout_s
        # Replaced whole by a refresh, so a verification sees one set or the next, never a mix.
        self._set = _KeySet()
        self._read_at = -float("inf")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        #: Reads that replaced the set (the first included).
        self.loads = 0

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._set.by_kid)

    def load(self) -> None:
        """Read the set now, in this thread (for a file at start-up); ConfigError if unusable."""
        self._read_at = time.monotonic()
        try:
            self._install(*self._read())
        except JwksError as exc:
            raise ConfigError(f"auth.jwks: {exc}") from exc

    async def start(self) -> None:
        """Read the set unless it is held (ConfigError if that fails), then refresh in the background."""
        if self._task is not None:
            return
        if not self._set.keys:
            self._read_at = time.monotonic()
            try:
                self._install(*await asyncio.to_thread(self._read))
            except JwksError as exc:
                raise ConfigError(f"auth.jwks: {exc}") from exc
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="bastion-jwks-refresh")

    async def close(self) -> None:
        task, self._task = self._task, None
        self._wake = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def refresh(self) -> bool:
        """Read the set again now; on failure keep the keys held. True when the set was replaced."""
        self._read_at = time.monotonic()
        try:
            keys, skipped = await asyncio.to_thread(self._read)
        except JwksError as exc:
            log.warning("auth.jwks: refresh failed, keeping the %d keys held: %s", len(self._set.keys), exc)
            return False
        self._install(keys, skipped)
        return True

    def candidates(self, kid: object) -> Sequence[VerificationKey]:
        held = self._set
        if not held.keys:
            raise AuthError("invalid token: the signing keys are not loaded yet")
        if kid is None:
            if len(held.keys) == 1:
                return held.keys
            raise AuthError(f"invalid token: no key id ('kid') in its header, and the key set holds {len(held.keys)}")
        if not isinstance(kid, str):
            raise AuthError("invalid token: 'kid' must be a string")
        key = held.by_kid.get(kid)
        if key is None:
            self._unknown_kid()
            raise AuthError(f"invalid token: unknown key id {shown(kid)}")
        return (key,)

    def _unknown_kid(self) -> None:
        wake, loop = self._wake, self._loop
        if wake is None or loop is None or time.monotonic() - self._read_at < self._min_refetch_s:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
        else:
            loop.call_soon_threadsafe(wake.set)

    async def _run(self) -> None:
        assert self._wake is not None
        wake = self._wake
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self._refresh_s)
            wake.clear()
            try:
                await self.refresh()
            except Exception:  # a bug here must not end refreshing for the life of the process
                log.exception("auth.jwks: refresh failed unexpectedly")

    def _read(self) -> tuple[tuple[VerificationKey, ...], list[str]]:
        url = is_url(self.location)
        document = _fetch(self.location, self._timeout_s) if url else _read_file(Path(self.location))
        return parse_jwks(document, self._allowed)

    def _install(self, keys: tuple[VerificationKey, ...], skipped: list[str]) -> None:
        before = self.kids
        self._set = _KeySet(keys, {key.kid: key for key in keys if key.kid is not None})
        self.loads += 1
        if self.loads == 1 or self.kids != before:
            log.info("auth.jwks: %d keys (kids %s)", len(keys), ", ".join(sorted(self.kids)) or "none")
            for reason in skipped:
                log.warning("auth.jwks: skipped %s", reason)


def shown(value: object) -> str:
    """A caller-supplied value for a message: quoted, cut short."""
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:64] + "…" if len(text) > 64 else text)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect could move the key set to a host (or to plain http) the configuration never named.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect())


def _fetch(url: str, timeout: float) -> bytes:
    # The scheme is http(s): AuthConfig refuses any other URL, and a non-URL is read as a file.
    request = urllib.request.Request(  # noqa: S310
        url, headers={"Accept": "application/jwk-set+json, application/json", "User-Agent": "bastion"}
    )
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            document: bytes = response.read(MAX_JWKS_BYTES + 1)
    except urllib.error.HTTPError as exc:
        exc.close()
        extra = " (redirects are not followed)" if 300 <= exc.code < 400 else ""
        raise JwksError(f"{url} answered HTTP {exc.code}{extra}") from exc
    except urllib.error.URLError as exc:
        raise JwksError(f"cannot fetch {url}: {exc.reason}") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise JwksError(f"cannot fetch {url}: {exc}") from exc
    if len(document) > MAX_JWKS_BYTES:
        raise JwksError(f"{url} sent more than {MAX_JWKS_BYTES} bytes")
    return document


def _read_file(path: Path) -> bytes:
    try:
        with path.open("rb") as file:
            document = file.read(MAX_JWKS_BYTES + 1)
    except OSError as exc:
        raise JwksError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(document) > MAX_JWKS_BYTES:
        raise JwksError(f"{path} is larger than {MAX_JWKS_BYTES} bytes")
    return document
