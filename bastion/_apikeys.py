"""API keys and revocations as a verifier holds them (DESIGN §8).

The policy service owns keys and revocations (created by operators over its admin REST,
stored durably) and pushes them to every proxy over `PolicyService.WatchIdentity`; each
service applies what it receives to one `IdentityState`, which `TokenVerifier` consults
on every call (set and dict lookups: nothing is fetched per call).

An API key is `bk_<key_id>.<secret>`: the key id is public (it names the key in lists and
logs), the secret is 32 random bytes shown once at creation; only
`sha256(salt || secret)` and the salt are stored and pushed.

    state.apply(event)                                  a WatchIdentity event (snapshot or delta)
    state.api_key(key_id)                               the key's record, or None
    state.token_revoked(jti)                            why the token is revoked, or None
    state.agent_revoked(tenant, agent_id, issued_at, leeway)
                                                        why the agent's credential is revoked, or None
    state.synced / state.unsynced_reason                whether a snapshot arrived; if not, why
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from bastion.v1 import policy_pb2

API_KEY_PREFIX = "bk_"
#: `bk_` + 16 hex digits + `.` + 43 url-safe base64 characters (32 bytes).
_API_KEY = re.compile(r"^bk_([0-9a-f]{16})\.([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    salt: bytes
    digest: bytes
    agent_id: str
    tenant: str
    created_at: float
    #: 0: never expires.
    expires_at: float
    revoked: bool
    name: str = ""

    @classmethod
    def from_proto(cls, record: policy_pb2.ApiKeyRecord) -> ApiKey:
        return cls(
            key_id=record.key_id,
            salt=bytes.fromhex(record.salt),
            digest=bytes.fromhex(record.digest),
            agent_id=record.agent_id,
            tenant=record.tenant,
            created_at=record.created_at.ToNanoseconds() / 1e9,
            expires_at=record.expires_at.ToNanoseconds() / 1e9 if record.HasField("expires_at") else 0.0,
            revoked=record.revoked,
            name=record.name,
        )

    def matches(self, secret: str) -> bool:
        return hmac.compare_digest(digest_secret(self.salt, secret), self.digest)


def new_api_key() -> tuple[str, str, bytes, bytes]:
    """(full key shown once, key id, salt, digest) for a fresh key."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    return f"{API_KEY_PREFIX}{key_id}.{secret}", key_id, salt, digest_secret(salt, secret)


def digest_secret(salt: bytes, secret: str) -> bytes:
    # The secret is 256 random bits, so a fast salted hash is enough: there is no
    # password to stretch against guessing.
    return hashlib.sha256(salt + secret.encode("ascii")).digest()


def parse_api_key(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed API key, else None."""
    match = _API_KEY.fullmatch(token)
    return (match.group(1), match.group(2)) if match else None


@dataclass(frozen=True, slots=True)
class _AgentRevocation:
    at: float
    reason: str


class IdentityState:
    """What a service knows of API keys and revocations, as pushed by the policy service."""

    def __init__(self) -> None:
        self._keys: dict[str, ApiKey] = {}
        self._tokens: dict[str, str] = {}
        self._agents: dict[tuple[str, str], _AgentRevocation] = {}
        #: Set once the first snapshot arrived. Until then no API key can be verified, and a
        #: JWT only where every call is also decided (bastion._identity.TokenVerifier.verify).
        self.synced = False
        #: Why no snapshot has arrived yet, for the refusals (set by bastion._identity_watch).
        self.unsynced_reason = "the policy service has not sent them yet"

    def apply(self, event: policy_pb2.IdentityEvent) -> None:
        # Parsed before anything changes: a record that does not parse (bad hex) raises here and
        # leaves the state as it was, rather than a snapshot half-applied with its revocations lost.
        keys = [ApiKey.from_proto(record) for record in event.keys]
        if event.snapshot:
            self._keys, self._tokens, self._agents = {}, {}, {}
            self.synced = True
        for key in keys:
            self._keys[key.key_id] = key
        for revocation in event.revocations:
            reason = revocation.reason or "revoked"
            if revocation.kind == policy_pb2.Revocation.TOKEN:
                self._tokens[revocation.value] = reason
            elif revocation.kind == policy_pb2.Revocation.AGENT:
                at = revocation.at.ToNanoseconds() / 1e9
                agent = (revocation.tenant, revocation.value)
                known = self._agents.get(agent)
                if known is None or known.at < at:
                    self._agents[agent] = _AgentRevocation(at, reason)

    def api_key(self, key_id: str) -> ApiKey | None:
        return self._keys.get(key_id)

    def token_revoked(self, token_id: str) -> str | None:
        return self._tokens.get(token_id) if token_id else None

    def agent_revoked(self, tenant: str, agent_id: str, issued_at: float, leeway: float = 0.0) -> str | None:
        """Why a credential of this agent issued at `issued_at` is revoked, or None.

        `leeway` is the clock skew the verifier tolerates on `iat` (a JWT's `auth.leeway_s`):
        a token the agent already held when it was revoked may carry an `iat` up to that far
        ahead of the revocation's time (an issuer clock running fast), and is revoked all the
        same. A token issued within `leeway` after the revocation is refused too: the two
        cannot be told apart. An API key's time is the policy service's own clock: no leeway."""
        revocation = self._agents.get((tenant, agent_id))
        if revocation is not None and issued_at <= revocation.at + leeway:
            return revocation.reason
        return None
