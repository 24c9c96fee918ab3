"""The durable store of policy versions and of which version of each policy is active.

Contract
--------
* One SQLite file, `$BASTION_HOME/policy/versions.db`, WAL, `synchronous=FULL`: a version
  or an activation this store has answered for is on disk and survives a crash.
* One writer: every statement runs on one dedicated thread, so nothing blocks the
  event loop and no two writes interleave. Callers `await` the coroutine methods.
* Versions are immutable and content-addressed. A version is keyed by (name, version);
  its digest is `version_digest(document)` (below). Adding a (name, version) that is
  stored with the same digest changes nothing; with another digest it raises
  `VersionExists`, and nothing changes.
* The active version per policy is a row of its own; activating writes that row and the
  activation's time and author in one transaction. Policies keep the order in which
  they were first activated (their evaluation order, see bastion.policy._registry).

Canonical form and digest
-------------------------
The digest of a version is the sha256 (hex) of its *submitted* document in canonical
form: the document as parsed and validated (`PolicyDocument`), dumped to JSON data with
only the fields the author wrote (`exclude_unset`, defaults not filled in, field names
as written, e.g. `apiVersion`), serialised by orjson with sorted keys, no whitespace,
UTF-8 without escaping, integers as integers and integral floats too (`max: 100` is
`100` whether the schema reads it as a float or not): for what documents hold, the bytes
of RFC 8785 (JCS). A version stored before integral floats were so written keeps its
digest, and re-submitting its document is the same content, not a conflict. So
formatting, key order, comments and YAML-vs-JSON never change a digest, and adding a
field with a default to the schema never changes an existing one; spelling
out a default (`default: deny`) is a different submission and a different digest.

Rollouts and the audit outbox
-----------------------------
Canary rollouts (bastion.policy._rollouts) are rows of `rollouts`; a partial unique
index allows one running rollout per policy. Each rollout step writes its audit record
(a graph `Event`, protobuf bytes) into `audit_outbox` in the same transaction as the
step itself, and a promotion writes the activation in that transaction too: a step is
either fully recorded (state, activation, audit record) or not at all. The outbox is
emptied by the shipper once the graph has acknowledged the records.

Errors: `VersionExists` (a conflict, HTTP 409 at the edge), `RolloutConflict` (409),
`UnknownVersion` (404), and `StoreError` for anything SQLite raises.
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
import yaml

from bastion._errors import PolicyValidationError, StoreError

from ._document import PolicyDocument
from ._outbox import POLICY_WORKFLOW, outbox_event

STORE_FILE = "policy/versions.db"
#: Versions are SQLite INTEGERs and proto int64s: a larger number is refused, not overflowed.
MAX_VERSION = 2**63 - 1

_T = TypeVar("_T")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS versions ("
    " name TEXT NOT NULL, version INTEGER NOT NULL, digest TEXT NOT NULL, document TEXT NOT NULL,"
    " canonical TEXT NOT NULL, author TEXT NOT NULL, created_at REAL NOT NULL,"
    " signature TEXT, kid TEXT, diff TEXT NOT NULL, PRIMARY KEY (name, version)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS active ("
    " name TEXT PRIMARY KEY, version INTEGER NOT NULL, position INTEGER NOT NULL,"
    " activated_at REAL NOT NULL, activated_by TEXT NOT NULL) WITHOUT ROWID",
    # Canary rollouts (bastion.policy._rollouts): one row each, `spec` and `counts` JSON.
    # The partial unique index makes "one running rollout per policy" a property of the
    # file, not only of the code that writes it.
    "CREATE TABLE IF NOT EXISTS rollouts ("
    " id TEXT PRIMARY KEY, policy TEXT NOT NULL, state TEXT NOT NULL, spec TEXT NOT NULL,"
    " counts TEXT NOT NULL, reason TEXT NOT NULL, ended_at REAL, ended_by TEXT) WITHOUT ROWID",
    "CREATE UNIQUE INDEX IF NOT EXISTS rollouts_running ON rollouts (policy) WHERE state = 'running'",
    # Audit records (graph Events, protobuf bytes) waiting to be shipped to the graph;
    # written in the same transaction as the change they record, deleted once ingested.
    "CREATE TABLE IF NOT EXISTS audit_outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, event BLOB NOT NULL)",
)


class RolloutConflict(Exception):
    """A rollout change that the rollouts' state refuses (HTTP 409 at the edge)."""


class VersionExists(Exception):
    """(name, version) is stored with another digest: versions are immutable."""


class UnknownVersion(LookupError):
    """No such policy or version."""


def canonical_json(document: PolicyDocument) -> bytes:
    """The canonical form of a submitted document (see the module docstring)."""
    return _canonical(document.model_dump(mode="json", by_alias=True, exclude_unset=True))


def _canonical(data: Any) -> bytes:
    return orjson.dumps(_as_written(data), option=orjson.OPT_SORT_KEYS)


def _as_written(value: Any) -> Any:
    """`value` with every integral float as an integer. The schema reads some numbers as
    floats (`args.*.max`, `verifier.threshold`, `limits.budget.cost`), so `max: 100` comes
    back as 100.0, which orjson writes `100.0`; the author wrote `100`, and JCS (RFC 8785)
    writes either as `100`. Without this the digest was not the submitted document's."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {key: _as_written(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_written(item) for item in value]
    return value


def _same_content(stored_canonical: str, digest: str) -> bool:
    """Whether a version stored before integral floats were written as integers
    (`_as_written`) holds the content whose digest is now `digest`: re-adding the same file
    after an upgrade must not be refused as a new version under a taken number."""
    return hashlib.sha256(_canonical(orjson.loads(stored_canonical))).hexdigest() == digest


def version_digest(document: PolicyDocument) -> str:
    return hashlib.sha256(canonical_json(document)).hexdigest()


@dataclass(frozen=True, slots=True)
class Signature:
    """The JWS a version was submitted in, and the id of the key that verified it."""

    jws: str
    kid: str


@dataclass(frozen=True, slots=True)
class VersionRecord:
    name: str
    version: int
    digest: str
    #: The submitted text (the JWS payload for a signed bundle).
    document: str
    #: canonical_json of the document, as text.
    canonical: str
    #: Subject of the operator token that created it, or "bastion.yaml".
    author: str
    created_at: float
    signature: Signature | None
    #: Unified diff of the canonical YAML against the highest lower version ("" for the first).
    diff: str


@dataclass(frozen=True, slots=True)
class Activation:
    name: str
    version: int
    activated_at: float
    activated_by: str


class PolicyStore:
    """Versions and activations on disk; see the module docstring for the contract."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bastion-policy-store")
        self._db = self._executor.submit(self._open, path).result()

    @classmethod
    def under(cls, home: Path) -> PolicyStore:
        return cls(home / STORE_FILE)

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            for statement in _SCHEMA:
                db.execute(statement)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the policy version store {path}: {exc}") from exc
        return db

    async def _run(self, function: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._guarded, function, *args)

    def _guarded(self, function: Any, *args: Any) -> Any:
        try:
            return function(*args)
        except sqlite3.Error as exc:
            raise StoreError(f"policy version store {self._path} failed: {exc}") from exc

    # --- versions -------------------------------------------------------------------------

    async def add(
        self, document: PolicyDocument, text: str, *, author: str, signature: Signature | None = None
    ) -> tuple[VersionRecord, bool]:
        """Store a version; return it and whether it is new (False: the same content was stored)."""
        name, version = document.metadata.name, document.metadata.version
        if version > MAX_VERSION:
            raise PolicyValidationError(f"policy {name!r} v{version}: version must be at most {MAX_VERSION}")
        canonical = canonical_json(document)
        digest = hashlib.sha256(canonical).hexdigest()
        result: tuple[VersionRecord, bool] = await self._run(
            self._add, name, version, digest, text, canonical.decode(), author, signature
        )
        return result

    def _add(
        self,
        name: str,
        version: int,
        digest: str,
        text: str,
        canonical: str,
        author: str,
        signature: Signature | None,
    ) -> tuple[VersionRecord, bool]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            existing = self._get(name, version)
            if existing is not None:
                self._db.execute("ROLLBACK")
                if existing.digest != digest and not _same_content(existing.canonical, digest):
                    raise VersionExists(
                        f"policy {name!r} v{version} already exists with digest {existing.digest}; versions are "
                        f"immutable: give this content a new metadata.version (the highest is v{self._highest(name)})"
                    )
                return existing, False
            previous = self._db.execute(
                "SELECT version, canonical FROM versions WHERE name = ? AND version < ? ORDER BY version DESC LIMIT 1",
                (name, version),
            ).fetchone()
            diff = (
                unified_diff(str(previous[1]), canonical, f"{name} v{previous[0]}", f"{name} v{version}")
                if previous
                else ""
            )
            record = VersionRecord(name, version, digest, text, canonical, author, time.time(), signature, diff)
            self._db.execute(
                "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    version,
                    digest,
                    text,
                    canonical,
                    author,
                    record.created_at,
                    signature.jws if signature else None,
                    signature.kid if signature else None,
                    diff,
                ),
            )
            details = {
                "policy": name,
                "version": version,
                "digest": digest,
                "signed_by": signature.kid if signature else "",
            }
            self._audit("policy.created", record.created_at, author, details)
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        return record, True

    def _highest(self, name: str) -> int:
        row = self._db.execute("SELECT MAX(version) FROM versions WHERE name = ?", (name,)).fetchone()
        return int(row[0] or 0)

    async def get(self, name: str, version: int) -> VersionRecord:
        record: VersionRecord | None = await self._run(self._get, name, version)
        if record is None:
            raise UnknownVersion(f"policy {name!r} has no version {version}")
        return record

    def _get(self, name: str, version: int) -> VersionRecord | None:
        if not 1 <= version <= MAX_VERSION:
            return None
        row = self._db.execute(
            "SELECT name, version, digest, document, canonical, author, created_at, signature, kid, diff "
            "FROM versions WHERE name = ? AND version = ?",
            (name, version),
        ).fetchone()
        return _record(row) if row else None

    async def versions(
        self, name: str, *, after: int = 0, limit: int | None = None, summaries: bool = False
    ) -> list[VersionRecord]:
        """The versions of `name` above `after`, lowest first, at most `limit`; empty when the
        policy is unknown. `summaries`: without their document, canonical form and diff (a
        listing's rows: a policy with thousands of versions must not be read whole)."""
        texts = (
            "'', '', author, created_at, signature, kid, ''"
            if summaries
            else ("document, canonical, author, created_at, signature, kid, diff")
        )
        rows: list[tuple[Any, ...]] = await self._run(
            lambda: self._db.execute(
                f"SELECT name, version, digest, {texts} FROM versions "  # noqa: S608 - a fixed column list
                "WHERE name = ? AND version > ? ORDER BY version LIMIT ?",
                (name, after, -1 if limit is None else limit),
            ).fetchall()
        )
        return [_record(row) for row in rows]

    # --- activations ----------------------------------------------------------------------

    async def activate(self, name: str, version: int, *, by: str, during_rollout: bool = False) -> Activation:
        """Make (name, version) the active version of `name`; it must be stored. RolloutConflict
        while a rollout of `name` runs, unless `during_rollout` (bastion.yaml at start): its
        stable arm would go on naming the version this replaces."""
        activation: Activation = await self._run(self._activate, name, version, by, during_rollout)
        return activation

    def _activate(self, name: str, version: int, by: str, during_rollout: bool) -> Activation:
        with self._transaction():
            running = self._running_rollout(name)
            if running is not None and not during_rollout:
                raise RolloutConflict(
                    f"policy {name!r} has a running rollout {running}; promote or roll it back "
                    "before activating a version"
                )
            previous = self._db.execute("SELECT version FROM active WHERE name = ?", (name,)).fetchone()
            activation = self._activate_in(name, version, by)
            details: dict[str, Any] = {
                "policy": name,
                "version": version,
                "previous_version": int(previous[0]) if previous else 0,
                "during_rollout": running or "",
            }
            self._audit("policy.activated", activation.activated_at, by, details)
            return activation

    def _running_rollout(self, policy: str) -> str | None:
        """The id of `policy`'s running rollout (at most one: a partial unique index), or None."""
        row = self._db.execute("SELECT id FROM rollouts WHERE policy = ? AND state = 'running'", (policy,)).fetchone()
        return str(row[0]) if row is not None else None

    def _audit(self, step: str, at: float, by: str, details: dict[str, Any]) -> None:
        """Into the outbox, in the caller's transaction (see the module docstring)."""
        event = outbox_event(POLICY_WORKFLOW, step, at, by, {**details, "step": step, "by": by})
        self._db.execute("INSERT INTO audit_outbox (event) VALUES (?)", (event,))

    def _activate_in(self, name: str, version: int, by: str) -> Activation:
        if self._get(name, version) is None:
            raise UnknownVersion(f"policy {name!r} has no version {version}; create it first")
        row = self._db.execute("SELECT position FROM active WHERE name = ?", (name,)).fetchone()
        if row is None:
            row = self._db.execute("SELECT COALESCE(MAX(position), 0) + 1 FROM active").fetchone()
        activation = Activation(name, version, time.time(), by)
        self._db.execute(
            "INSERT OR REPLACE INTO active VALUES (?, ?, ?, ?, ?)",
            (name, version, int(row[0]), activation.activated_at, by),
        )
        return activation

    async def active(self) -> list[Activation]:
        """The active version of every policy, in activation order."""
        rows: list[tuple[Any, ...]] = await self._run(
            lambda: self._db.execute(
                "SELECT name, version, activated_at, activated_by FROM active ORDER BY position"
            ).fetchall()
        )
        return [Activation(str(row[0]), int(row[1]), float(row[2]), str(row[3])) for row in rows]

    # --- rollouts and the audit outbox (bastion.policy._rollouts) -------------------------

    async def start_rollout(self, row: RolloutRow, audit: bytes) -> None:
        """Store a new running rollout and its audit record; RolloutConflict when its policy has one."""
        await self._run(self._start_rollout, row, audit)

    def _start_rollout(self, row: RolloutRow, audit: bytes) -> None:
        with self._transaction():
            running = self._running_rollout(row.policy)
            if running is not None:
                raise RolloutConflict(
                    f"policy {row.policy!r} already has a running rollout {running}; "
                    "promote or roll it back before starting another"
                )
            self._db.execute(
                "INSERT INTO rollouts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (row.id, row.policy, row.state, row.spec, row.counts, row.reason, row.ended_at, row.ended_by),
            )
            self._db.execute("INSERT INTO audit_outbox (event) VALUES (?)", (audit,))

    async def end_rollout(self, row: RolloutRow, audit: bytes, activate: tuple[str, int] | None) -> Activation | None:
        """Record how a running rollout ended (and, for a promotion, activate its version) in one
        transaction with its audit record; RolloutConflict when it is no longer running."""
        result: Activation | None = await self._run(self._end_rollout, row, audit, activate)
        return result

    def _end_rollout(self, row: RolloutRow, audit: bytes, activate: tuple[str, int] | None) -> Activation | None:
        with self._transaction():
            state = self._db.execute("SELECT state FROM rollouts WHERE id = ?", (row.id,)).fetchone()
            if state is None or state[0] != "running":
                raise RolloutConflict(f"rollout {row.id} is {state[0] if state else 'unknown'}, not running")
            activation = self._activate_in(activate[0], activate[1], row.ended_by or "") if activate else None
            self._db.execute(
                "UPDATE rollouts SET state = ?, counts = ?, reason = ?, ended_at = ?, ended_by = ? WHERE id = ?",
                (row.state, row.counts, row.reason, row.ended_at, row.ended_by, row.id),
            )
            self._db.execute("INSERT INTO audit_outbox (event) VALUES (?)", (audit,))
        return activation

    async def save_rollout_counts(self, counts: dict[str, str]) -> None:
        """Write the running counts of rollouts (id -> counts JSON); ended ones are left alone."""
        await self._run(
            lambda: self._db.executemany(
                "UPDATE rollouts SET counts = ? WHERE id = ? AND state = 'running'",
                [(value, key) for key, value in counts.items()],
            )
        )

    async def rollouts(
        self, *, policy: str | None = None, running: bool = False, after: str | None = None, limit: int = -1
    ) -> list[RolloutRow]:
        """Rollouts, oldest first (ids are uuid7: time-ordered), optionally of one policy or running
        only, with an id above `after`, at most `limit` of them (-1: all)."""
        query = "SELECT id, policy, state, spec, counts, reason, ended_at, ended_by FROM rollouts WHERE 1 = 1"
        params: list[Any] = []
        if policy is not None:
            query += " AND policy = ?"
            params.append(policy)
        if running:
            query += " AND state = 'running'"
        if after is not None:
            query += " AND id > ?"
            params.append(after)
        rows: list[tuple[Any, ...]] = await self._run(
            lambda: self._db.execute(query + " ORDER BY id LIMIT ?", [*params, limit]).fetchall()
        )
        return [RolloutRow(*row) for row in rows]

    async def rollout(self, rollout_id: str) -> RolloutRow | None:
        row = await self._run(
            lambda: self._db.execute(
                "SELECT id, policy, state, spec, counts, reason, ended_at, ended_by FROM rollouts WHERE id = ?",
                (rollout_id,),
            ).fetchone()
        )
        return RolloutRow(*row) if row else None

    async def outbox(self, limit: int) -> list[tuple[int, bytes]]:
        """The oldest audit records not yet shipped: (seq, Event bytes)."""
        rows: list[tuple[int, bytes]] = await self._run(
            lambda: self._db.execute("SELECT seq, event FROM audit_outbox ORDER BY seq LIMIT ?", (limit,)).fetchall()
        )
        return rows

    async def outbox_shipped(self, last: int) -> None:
        """Forget the audit records up to `last` (the graph has acknowledged them)."""
        await self._run(lambda: self._db.execute("DELETE FROM audit_outbox WHERE seq <= ?", (last,)))

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def close(self) -> None:
        self._executor.submit(self._db.close).result()
        self._executor.shutdown()


@dataclass(frozen=True, slots=True)
class RolloutRow:
    """One rollout as stored; `spec` and `counts` are JSON (bastion.policy._rollouts reads them)."""

    id: str
    policy: str
    #: running | promoted | rolled_back | auto_rolled_back
    state: str
    spec: str
    counts: str
    reason: str
    ended_at: float | None
    ended_by: str | None


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT on the writer thread; ROLLBACK on any exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if kind is None:
            self._db.execute("COMMIT")
        elif self._db.in_transaction:
            self._db.execute("ROLLBACK")


def _record(row: tuple[Any, ...]) -> VersionRecord:
    name, version, digest, document, canonical, author, created_at, jws, kid, diff = row
    return VersionRecord(
        name=str(name),
        version=int(version),
        digest=str(digest),
        document=str(document),
        canonical=str(canonical),
        author=str(author),
        created_at=float(created_at),
        signature=Signature(str(jws), str(kid)) if jws is not None else None,
        diff=str(diff),
    )


def canonical_yaml(canonical: str) -> str:
    """The canonical JSON as block YAML with sorted keys: what diffs are made of."""
    return yaml.safe_dump(orjson.loads(canonical), sort_keys=True, allow_unicode=True, default_flow_style=False)


def unified_diff(old: str, new: str, fromfile: str, tofile: str) -> str:
    """Unified diff of two canonical JSON texts, shown as sorted block YAML."""
    return "".join(
        difflib.unified_diff(
            canonical_yaml(old).splitlines(keepends=True),
            canonical_yaml(new).splitlines(keepends=True),
            fromfile=fromfile,
            tofile=tofile,
        )
    )


def diff_versions(old: VersionRecord, new: VersionRecord) -> str:
    """Unified diff of two versions' canonical YAML."""
    return unified_diff(old.canonical, new.canonical, f"{old.name} v{old.version}", f"{new.name} v{new.version}")
