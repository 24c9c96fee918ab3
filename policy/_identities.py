"""API keys and revocations: stored by the policy service, pushed to every proxy (DESIGN §8).

Contract
--------
* Two tables, `api_keys` and `revocations`, in the policy service's SQLite file
  (`$BASTION_HOME/policy/versions.db`, bastion.policy._store): WAL, `synchronous=FULL`,
  so a key or revocation this store has answered for is on disk and survives a crash.
  This store has its own connection on its own writer thread; the version store has
  another. Both write with `BEGIN IMMEDIATE` and wait up to `BUSY_S` for the other's
  transaction (all of them take milliseconds) instead of failing.
* A change and its audit record are one transaction: each writes a graph `Event` into
  the version store's `audit_outbox` (shipped by bastion.policy._audit, `on_audit` wakes
  the shipper), naming who, when and what, never a secret or a digest.
* A key is stored as its salt and `sha256(salt || secret)` only (bastion._apikeys); the
  full `bk_…` key exists once, in `create_key`'s answer.
* The whole set is also held in memory (loaded at open, updated right after each
  commit): snapshots and listings never touch the disk, and `state`, this process's
  `IdentityState`, is updated in the same step (the policy service's own REST honours
  revocations without a round trip).
* Revoking an agent revokes every API key it holds in that tenant (they become
  `revoked`, in the same transaction) and every token issued to it up to that moment
  (the verifiers compare `iat` with the revocation's time). Revoking a key or token id
  twice is a conflict; revoking an agent again moves its cut-off forward.
* Watchers (`PolicyService.WatchIdentity`, `watch_identity` below) get a snapshot, then
  a delta for every change as soon as it is committed. The snapshot is sent in parts of
  at most `SNAPSHOT_PART_BYTES` (revocations first, then keys), the first with
  `snapshot=true`, and is closed by an event carrying nothing: a watcher that buffers
  until then swaps its whole state at once (bastion/_identity_watch.py). A watcher that
  falls `WATCH_BACKLOG` deltas behind is cut off and reconnects for a fresh snapshot.
* Bounds: at most `MAX_KEYS` keys and `MAX_REVOCATIONS` revocations (revoked keys
  included: a snapshot always holds them); agent ids, tenants, token ids and names are
  1-256 characters (names and reasons may be empty) with no control characters
  (bastion._identifiers: the token verifier refuses a JWT that breaks the same rule, so
  whatever it accepts can be revoked).

Errors: `InvalidIdentity` (HTTP 422), `NotFound` (404), `Conflict` (409: already revoked,
or a bound reached), `StoreError` for anything SQLite raises.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import grpc
import uuid6

from bastion._apikeys import IdentityState, new_api_key
from bastion._errors import Conflict, NotFound, StoreError
from bastion._identifiers import InvalidIdentity, check_identifier
from bastion.v1 import policy_pb2

from ._outbox import outbox_event, stamp
from ._store import STORE_FILE, _Transaction

MAX_KEYS = 100_000
MAX_REVOCATIONS = 100_000
MAX_REASON_CHARS = 512
#: Ten years: a longer-lived key is a key that never expires, and should say so.
MAX_TTL_S = 10 * 365 * 86400
WATCH_BACKLOG = 1024
#: Well under the 16 MiB a proxy's channel receives in one message (bastion._rpc).
SNAPSHOT_PART_BYTES = 1024 * 1024
BUSY_S = 10.0
AUDIT_WORKFLOW = "bastion.identity"

Kind = Literal["token", "agent"]
_PROTO_KIND: dict[str, policy_pb2.Revocation.Kind.ValueType] = {
    "token": policy_pb2.Revocation.TOKEN,
    "agent": policy_pb2.Revocation.AGENT,
}

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS api_keys ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT, key_id TEXT NOT NULL UNIQUE, salt BLOB NOT NULL,"
    " digest BLOB NOT NULL, agent_id TEXT NOT NULL, tenant TEXT NOT NULL, name TEXT NOT NULL,"
    " created_at REAL NOT NULL, created_by TEXT NOT NULL, expires_at REAL, audit_node TEXT NOT NULL,"
    " revoked_at REAL, revoked_by TEXT, revoked_reason TEXT)",
    "CREATE TABLE IF NOT EXISTS revocations ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, value TEXT NOT NULL, tenant TEXT NOT NULL,"
    " at REAL NOT NULL, by TEXT NOT NULL, reason TEXT NOT NULL)",
    # The version store creates this table too (the same statement): whichever opens the
    # file first does, and both write their audit records into it.
    "CREATE TABLE IF NOT EXISTS audit_outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, event BLOB NOT NULL)",
)
_SELECT_KEYS = (
    "SELECT seq, key_id, salt, digest, agent_id, tenant, name, created_at, created_by, expires_at, audit_node,"
    " revoked_at, revoked_by, revoked_reason FROM api_keys ORDER BY seq"
)


@dataclass(frozen=True, slots=True)
class StoredKey:
    """An API key as stored: everything but the secret."""

    seq: int
    key_id: str
    salt: bytes
    digest: bytes
    agent_id: str
    tenant: str
    name: str
    created_at: float
    created_by: str
    #: None: never expires.
    expires_at: float | None
    #: The id of the graph node that recorded its creation (its revocation's parent).
    audit_node: str
    revoked_at: float | None = None
    revoked_by: str | None = None
    revoked_reason: str | None = None

    def to_proto(self) -> policy_pb2.ApiKeyRecord:
        record = policy_pb2.ApiKeyRecord(
            key_id=self.key_id,
            salt=self.salt.hex(),
            digest=self.digest.hex(),
            agent_id=self.agent_id,
            tenant=self.tenant,
            created_at=stamp(self.created_at),
            revoked=self.revoked_at is not None,
            name=self.name,
            created_by=self.created_by,
        )
        if self.expires_at is not None:
            record.expires_at.CopyFrom(stamp(self.expires_at))
        return record


@dataclass(frozen=True, slots=True)
class StoredRevocation:
    #: Increasing: the order revocations were made in.
    id: int
    kind: Kind
    value: str
    tenant: str
    at: float
    by: str
    reason: str

    def to_proto(self) -> policy_pb2.Revocation:
        return policy_pb2.Revocation(
            kind=_PROTO_KIND[self.kind],
            value=self.value,
            tenant=self.tenant,
            at=stamp(self.at),
            by=self.by,
            reason=self.reason,
        )


@dataclass(eq=False)
class IdentityWatcher:
    queue: asyncio.Queue[policy_pb2.IdentityEvent] = field(default_factory=lambda: asyncio.Queue(WATCH_BACKLOG))
    overflowed: bool = False


class IdentityStore:
    """Keys and revocations on disk and in memory; see the module docstring for the contract."""

    def __init__(self, path: Path, *, on_audit: Callable[[], None] = lambda: None) -> None:
        self._path = path
        self._on_audit = on_audit
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bastion-identity-store")
        self._db, keys, revocations = self._executor.submit(self._open, path).result()
        self._keys: dict[str, StoredKey] = {key.key_id: key for key in keys}
        self._revocations: list[StoredRevocation] = revocations
        self._tokens = {item.value for item in revocations if item.kind == "token"}
        self._watchers: set[IdentityWatcher] = set()
        # Changes are checked against memory, written, then applied to memory: one at a time.
        self._lock = asyncio.Lock()
        #: What this process's verifier consults (kept equal to the store).
        self.state = IdentityState()
        for event in self.snapshot():
            self.state.apply(event)

    @classmethod
    def under(cls, home: Path, *, on_audit: Callable[[], None] = lambda: None) -> IdentityStore:
        return cls(home / STORE_FILE, on_audit=on_audit)

    @staticmethod
    def _open(path: Path) -> tuple[sqlite3.Connection, list[StoredKey], list[StoredRevocation]]:
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_S)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            for statement in _SCHEMA:
                db.execute(statement)
            keys = [_key(row) for row in db.execute(_SELECT_KEYS)]
            revocations = [
                _revocation(row)
                for row in db.execute("SELECT seq, kind, value, tenant, at, by, reason FROM revocations ORDER BY seq")
            ]
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the identity store {path}: {exc}") from exc
        return db, keys, revocations

    async def _run(self, function: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._guarded, function, *args)

    def _guarded(self, function: Callable[..., Any], *args: Any) -> Any:
        try:
            return function(*args)
        except sqlite3.Error as exc:
            raise StoreError(f"identity store {self._path} failed: {exc}") from exc

    def close(self) -> None:
        self._executor.submit(self._db.close).result()
        self._executor.shutdown()

    # --- changes --------------------------------------------------------------------------

    async def create_key(
        self, *, agent: str, tenant: str, name: str = "", ttl_s: int | None = None, by: str
    ) -> tuple[str, StoredKey]:
        """A new key for `agent` in `tenant`: (the full `bk_…` key, shown only now; the stored record)."""
        check_identifier("agent", agent)
        check_identifier("tenant", tenant)
        check_identifier("name", name, empty=True)
        if ttl_s is not None and not 1 <= ttl_s <= MAX_TTL_S:
            raise InvalidIdentity(f"ttl_s must be 1 to {MAX_TTL_S} seconds (or absent: never expires)")
        async with self._lock:
            if len(self._keys) >= MAX_KEYS:
                raise Conflict(f"this service holds {MAX_KEYS} API keys, the most it stores: none can be added")
            return await self._create_key(agent, tenant, name, ttl_s, by)

    async def _create_key(
        self, agent: str, tenant: str, name: str, ttl_s: int | None, by: str
    ) -> tuple[str, StoredKey]:
        secret, key_id, salt, digest = new_api_key()
        now = time.time()
        key = StoredKey(
            seq=0,
            key_id=key_id,
            salt=salt,
            digest=digest,
            agent_id=agent,
            tenant=tenant,
            name=name,
            created_at=now,
            created_by=by,
            expires_at=now + ttl_s if ttl_s is not None else None,
            audit_node=str(uuid6.uuid7()),
        )
        audit = _audit_event(
            "apikey.created",
            now,
            by,
            {
                "key_id": key_id,
                "agent": agent,
                "tenant": tenant,
                "name": name,
                "expires_at": key.expires_at or 0.0,
            },
            node=key.audit_node,
        )
        stored: StoredKey = await self._run(self._insert_key, key, audit)
        self._changed([stored], [])
        return secret, stored

    def _insert_key(self, key: StoredKey, audit: bytes) -> StoredKey:
        with _Transaction(self._db):
            cursor = self._db.execute(
                "INSERT INTO api_keys (key_id, salt, digest, agent_id, tenant, name, created_at, created_by,"
                " expires_at, audit_node) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key.key_id,
                    key.salt,
                    key.digest,
                    key.agent_id,
                    key.tenant,
                    key.name,
                    key.created_at,
                    key.created_by,
                    key.expires_at,
                    key.audit_node,
                ),
            )
            self._db.execute("INSERT INTO audit_outbox (event) VALUES (?)", (audit,))
        return replace(key, seq=int(cursor.lastrowid or 0))

    async def revoke_key(self, key_id: str, *, by: str, reason: str = "") -> StoredKey:
        """Revoke one key; NotFound when there is none, Conflict when it is already revoked."""
        check_identifier("reason", reason, empty=True, limit=MAX_REASON_CHARS)
        async with self._lock:
            return await self._revoke_key(key_id, by, reason)

    async def _revoke_key(self, key_id: str, by: str, reason: str) -> StoredKey:
        key = self._keys.get(key_id)
        if key is None:
            raise NotFound(f"no API key {key_id[:64]!r}")
        if key.revoked_at is not None:
            raise Conflict(f"API key {key_id} was already revoked by {key.revoked_by} ({key.revoked_reason or '-'})")
        now = time.time()
        revoked = replace(key, revoked_at=now, revoked_by=by, revoked_reason=reason)
        audit = _audit_event(
            "apikey.revoked",
            now,
            by,
            {"key_id": key_id, "agent": key.agent_id, "tenant": key.tenant, "reason": reason},
            parent=key.audit_node,
        )
        await self._run(self._update_keys, [revoked], audit)
        self._changed([revoked], [])
        return revoked

    async def revoke(
        self, kind: Kind, value: str, *, tenant: str = "default", by: str, reason: str = ""
    ) -> tuple[StoredRevocation, list[StoredKey]]:
        """Revoke a token id or an agent: (the revocation, the agent's keys it revoked)."""
        if kind not in _PROTO_KIND:
            raise InvalidIdentity(f"kind must be 'token' or 'agent', not {kind!r}")
        check_identifier("value", value)
        check_identifier("tenant", tenant)
        check_identifier("reason", reason, empty=True, limit=MAX_REASON_CHARS)
        async with self._lock:
            return await self._revoke(kind, value, tenant, by, reason)

    async def _revoke(
        self, kind: Kind, value: str, tenant: str, by: str, reason: str
    ) -> tuple[StoredRevocation, list[StoredKey]]:
        if kind == "token" and value in self._tokens:
            raise Conflict(f"token id {value!r} is already revoked")
        if len(self._revocations) >= MAX_REVOCATIONS:
            raise Conflict(f"this service holds {MAX_REVOCATIONS} revocations, the most it stores: none can be added")
        now = time.time()
        revocation = StoredRevocation(0, kind, value, tenant, now, by, reason)
        keys = [
            replace(
                key,
                revoked_at=now,
                revoked_by=by,
                revoked_reason=f"agent revoked: {reason}" if reason else "agent revoked",
            )
            for key in self._keys.values()
            if kind == "agent" and key.revoked_at is None and (key.agent_id, key.tenant) == (value, tenant)
        ]
        details: dict[str, Any] = {"kind": kind, "value": value, "tenant": tenant, "reason": reason}
        if keys:
            details["keys_revoked"] = [key.key_id for key in keys]
        audit = _audit_event(f"{kind}.revoked", now, by, details)
        revocation = await self._run(self._insert_revocation, revocation, keys, audit)
        self._changed(keys, [revocation])
        return revocation, keys

    def _insert_revocation(self, revocation: StoredRevocation, keys: list[StoredKey], audit: bytes) -> StoredRevocation:
        with _Transaction(self._db):
            cursor = self._db.execute(
                "INSERT INTO revocations (kind, value, tenant, at, by, reason) VALUES (?, ?, ?, ?, ?, ?)",
                (revocation.kind, revocation.value, revocation.tenant, revocation.at, revocation.by, revocation.reason),
            )
            self._write_revoked(keys)
            self._db.execute("INSERT INTO audit_outbox (event) VALUES (?)", (audit,))
        return replace(revocation, id=int(cursor.lastrowid or 0))

    def _update_keys(self, keys: list[StoredKey], audit: bytes) -> None:
        with _Transaction(self._db):
            self._write_revoked(keys)
            self._db.execute("INSERT INTO audit_outbox (event) VALUES (?)", (audit,))

    def _write_revoked(self, keys: list[StoredKey]) -> None:
        self._db.executemany(
            "UPDATE api_keys SET revoked_at = ?, revoked_by = ?, revoked_reason = ? WHERE key_id = ?",
            [(key.revoked_at, key.revoked_by, key.revoked_reason, key.key_id) for key in keys],
        )

    def _changed(self, keys: list[StoredKey], revocations: list[StoredRevocation]) -> None:
        # Committed: memory, this process's state and every watcher, in one step of the loop.
        for key in keys:
            self._keys[key.key_id] = key
        for revocation in revocations:
            self._revocations.append(revocation)
            if revocation.kind == "token":
                self._tokens.add(revocation.value)
        event = policy_pb2.IdentityEvent(
            keys=[key.to_proto() for key in keys], revocations=[item.to_proto() for item in revocations]
        )
        self.state.apply(event)
        for watcher in list(self._watchers):
            try:
                watcher.queue.put_nowait(event)
            except asyncio.QueueFull:
                watcher.overflowed = True
                self._watchers.discard(watcher)
        self._on_audit()

    # --- reads ----------------------------------------------------------------------------

    def key(self, key_id: str) -> StoredKey | None:
        return self._keys.get(key_id)

    def keys(
        self, *, agent: str | None = None, tenant: str | None = None, after: str | None = None, limit: int = 100
    ) -> tuple[list[StoredKey], str | None]:
        """Keys in creation order, optionally of one agent and/or tenant, from after the key id
        `after`; (at most `limit` of them, the key id to continue after or None)."""
        found = [
            key
            for key in self._keys.values()
            if (agent is None or key.agent_id == agent) and (tenant is None or key.tenant == tenant)
        ]
        if after is not None:
            cursor = self._keys.get(after)
            # Another tenant's key is no cursor: a 200 for it would tell an operator of one tenant
            # that another tenant's key exists, which revoking it never does (an attacker's probe).
            if cursor is None or (tenant is not None and cursor.tenant != tenant):
                raise NotFound(f"no API key {after[:64]!r} to continue after")
            found = [key for key in found if key.seq > cursor.seq]
        page = found[:limit]
        return page, page[-1].key_id if len(found) > limit else None

    def revocations(
        self, *, kind: Kind | None = None, tenant: str | None = None, after: int = 0, limit: int = 100
    ) -> tuple[list[StoredRevocation], int | None]:
        """Revocations oldest first, optionally of one kind and/or tenant, with an id above `after`;
        (at most `limit` of them, the id to continue after or None)."""
        found = [
            item
            for item in self._revocations
            if item.id > after and (kind is None or item.kind == kind) and (tenant is None or item.tenant == tenant)
        ]
        page = found[:limit]
        return page, page[-1].id if len(found) > limit else None

    # --- watchers -------------------------------------------------------------------------

    def subscribe(self) -> IdentityWatcher:
        watcher = IdentityWatcher()
        self._watchers.add(watcher)
        return watcher

    def unsubscribe(self, watcher: IdentityWatcher) -> None:
        self._watchers.discard(watcher)

    def snapshot(self, part_bytes: int = SNAPSHOT_PART_BYTES) -> list[policy_pb2.IdentityEvent]:
        """Every revocation and key (revoked ones included) as IdentityEvents of at most about
        `part_bytes` each, the first marked `snapshot`, closed by an empty event."""
        parts = [policy_pb2.IdentityEvent(snapshot=True)]
        size = 0
        records: list[policy_pb2.Revocation | policy_pb2.ApiKeyRecord] = [
            *(item.to_proto() for item in self._revocations),
            *(key.to_proto() for key in self._keys.values()),
        ]
        for record in records:
            record_size = record.ByteSize() + 8
            if size + record_size > part_bytes and size:
                parts.append(policy_pb2.IdentityEvent())
                size = 0
            if isinstance(record, policy_pb2.Revocation):
                parts[-1].revocations.append(record)
            else:
                parts[-1].keys.append(record)
            size += record_size
        parts.append(policy_pb2.IdentityEvent())
        return parts


async def watch_identity(
    store: IdentityStore | None, closed: asyncio.Event, context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncGenerator[policy_pb2.IdentityEvent, None]:
    """`PolicyService.WatchIdentity`: the snapshot, then every change, until `closed` is set
    (the server is stopping) or the watcher falls too far behind (RESOURCE_EXHAUSTED)."""
    if store is None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this policy service keeps no API keys or revocations")
        return
    # Subscribed before the snapshot is taken, and both happen in one step of the event
    # loop (the snapshot comes from memory): no change can fall between the two.
    watcher = store.subscribe()
    stopping = asyncio.ensure_future(closed.wait())
    change: asyncio.Future[policy_pb2.IdentityEvent] | None = None
    try:
        for part in store.snapshot():
            yield part
        while True:
            change = asyncio.ensure_future(watcher.queue.get())
            await asyncio.wait((change, stopping), return_when=asyncio.FIRST_COMPLETED)
            if not change.done():
                return  # the server is stopping: end the stream cleanly
            if watcher.overflowed:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, "watcher fell too far behind; reconnect to resynchronise"
                )
            yield change.result()
    finally:
        stopping.cancel()
        if change is not None:
            change.cancel()
        store.unsubscribe(watcher)


def _audit_event(
    step: str, at: float, by: str, details: dict[str, Any], *, node: str | None = None, parent: str | None = None
) -> bytes:
    """The graph Event recording one change (serialised, for the outbox); never a secret."""
    tenant = str(details.get("tenant", ""))
    return outbox_event(
        AUDIT_WORKFLOW, step, at, by, {**details, "step": step, "by": by}, node=node, parent=parent, tenant=tenant
    )


def _key(row: tuple[Any, ...]) -> StoredKey:
    (seq, key_id, salt, digest, agent, tenant, name, created_at, created_by, expires_at, node, at, by, reason) = row
    return StoredKey(
        seq=int(seq),
        key_id=str(key_id),
        salt=bytes(salt),
        digest=bytes(digest),
        agent_id=str(agent),
        tenant=str(tenant),
        name=str(name),
        created_at=float(created_at),
        created_by=str(created_by),
        expires_at=float(expires_at) if expires_at is not None else None,
        audit_node=str(node),
        revoked_at=float(at) if at is not None else None,
        revoked_by=str(by) if by is not None else None,
        revoked_reason=str(reason) if reason is not None else None,
    )


def _revocation(row: tuple[Any, ...]) -> StoredRevocation:
    seq, kind, value, tenant, at, by, reason = row
    return StoredRevocation(int(seq), kind, str(value), str(tenant), float(at), str(by), str(reason))
