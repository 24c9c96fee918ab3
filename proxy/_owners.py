"""Who owns a session or a client-named workflow, so no caller can write into another's.

A probe showed agent B, naming agent A's workflow id or reusing A's `Mcp-Session-Id`,
becoming the causal parent of A's next node, seeding A's "trusted" task first, and
running inside A's upstream session. Two bindings close that:

* **Sessions** belong to the principal (tenant, agent) whose `initialize` created them.
  A request carrying a session id is refused for anyone else (403), and a session id
  this proxy never saw initialised is unknown (404, which makes MCP clients start a new
  session). Kept in memory: after a proxy restart every client re-initialises once.
* **Client-named workflow ids** (`Bastion-Workflow-Id`, `_meta`) belong to the first
  principal that names them. Anyone else naming the same id is given a different
  workflow, `<id>~<12 hex of sha256(tenant, agent)>`, deterministic so the same caller
  keeps landing in its own, and returned in `Bastion-Workflow-Id`. Isolation rather than
  refusal: two agents of one multi-agent run legitimately tag their calls with the same
  run id, and each still gets a history no one else can write into. Ownership is stored
  in SQLite under $BASTION_HOME so it survives restarts (otherwise the first caller after
  a restart would own every id); claims run on one dedicated thread, and known ids are
  answered from a bounded in-memory cache without touching the event loop's time.

The same store holds who created each A2A task through Bastion (`_a2a_tasks`): a task
under each tenant, and the task id alone, whose holder becomes SHARED once two principals
hold it under different tenants (`claim_in`, one transaction).
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bastion._errors import SessionForeign, SessionUnknown, StoreError
from bastion._identity import Principal

from ._lru import Lru

#: The holder of a group of keys (`WorkflowOwners.claim_in`) held by more than one principal.
#: Never an owner key, which always holds a ":" (`owner_key`).
SHARED = "*"
#: A workflow id names a graph workflow and a URL path segment: a safe character set.
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")
MAX_WORKFLOW_ID = 128


def owner_key(principal: Principal) -> str:
    # Length-prefixed, so no choice of tenant and agent id can collide with another pair.
    return f"{len(principal.tenant)}:{principal.tenant}/{principal.subject}"


def is_safe_id(value: str) -> bool:
    return 0 < len(value) <= MAX_WORKFLOW_ID and value[0].isalnum() and _SAFE.issuperset(value)


def scoped_id(workflow_id: str, owner: str) -> str:
    """The workflow a non-owner gets when it names someone else's workflow id."""
    return f"{workflow_id}~{hashlib.sha256(owner.encode()).hexdigest()[:12]}"


class SessionOwners:
    """Mcp-Session-Id → owner, bounded (the oldest session is forgotten first)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._owners = Lru[str, str](capacity)

    def bind(self, session_id: str, principal: Principal) -> None:
        self._owners.put(session_id, owner_key(principal))

    def forget(self, session_id: str) -> None:
        self._owners.pop(session_id)

    def check(self, session_id: str, principal: Principal) -> None:
        owner = self._owners.get(session_id)
        if owner is None:
            raise SessionUnknown(
                "Mcp-Session-Id is not a session this proxy initialised (expired, deleted, or from before a "
                "restart): send initialize to start a new session"
            )
        if owner != owner_key(principal):
            raise SessionForeign("Mcp-Session-Id belongs to another principal; sessions cannot be shared")


class WorkflowOwners:
    """Client-named workflow id → owner, durable; see the module docstring."""

    def __init__(self, path: Path, cache_size: int = 100_000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bastion-workflow-owners")
        self._db = self._executor.submit(self._open, path).result()
        self._cache = Lru[str, str](cache_size)

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            # A lost claim after a power cut only means the next caller may claim the id
            # again; it never loses an event. NORMAL spares an fsync per new workflow.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS workflow_owners ("
                "workflow_id TEXT PRIMARY KEY, owner TEXT NOT NULL, claimed_at REAL NOT NULL) WITHOUT ROWID"
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the workflow ownership store {path}: {exc}") from exc
        return db

    async def effective(self, workflow_id: str, principal: Principal) -> str:
        """The workflow id `principal` writes to when it names `workflow_id`."""
        owner = owner_key(principal)
        known = self._cache.get(workflow_id)
        if known is None:
            loop = asyncio.get_running_loop()
            known = await loop.run_in_executor(self._executor, self._claim, workflow_id, owner)
            self._cache.put(workflow_id, known)
        return workflow_id if known == owner else scoped_id(workflow_id, owner)

    def _claim(self, workflow_id: str, owner: str) -> str:
        try:
            self._db.execute(
                "INSERT OR IGNORE INTO workflow_owners VALUES (?, ?, ?)", (workflow_id, owner, time.time())
            )
            row = self._db.execute("SELECT owner FROM workflow_owners WHERE workflow_id = ?", (workflow_id,)).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"workflow ownership store failed: {exc}") from exc
        return str(row[0])

    async def claim(self, key: str, principal: Principal) -> bool:
        """Claim `key` (an A2A task, …) for `principal` unless someone holds it; True when
        `principal` holds it now."""
        owner = owner_key(principal)
        known = self._cache.get(key)
        if known is None:
            known = await asyncio.get_running_loop().run_in_executor(self._executor, self._claim, key, owner)
            self._cache.put(key, known)
        return known == owner

    async def claim_in(self, key: str, group: str, principal: Principal) -> bool:
        """Claim `key` for `principal` unless someone holds it (`claim`), and note on `group`
        (the key of what several keys are parts of: an A2A task, whose keys are its tenants)
        who holds its keys: the one principal that does, or SHARED once two do. True when
        `principal` holds `key` now."""
        owner = owner_key(principal)
        loop = asyncio.get_running_loop()
        held, grouped = await loop.run_in_executor(self._executor, self._claim_in, key, group, owner)
        self._cache.put(key, held)
        if grouped is not None:
            self._cache.put(group, grouped)
        return held == owner

    def _claim_in(self, key: str, group: str, owner: str) -> tuple[str, str | None]:
        # One transaction: a key claimed with no word on its group would leave the group
        # looking unheld, and anyone may name an unheld task under another tenant.
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                held = self._claim(key, owner)
                grouped = self._claim(group, owner) if held == owner else None
                if grouped is not None and grouped not in (owner, SHARED):
                    self._db.execute("UPDATE workflow_owners SET owner = ? WHERE workflow_id = ?", (SHARED, group))
                    grouped = SHARED
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"ownership store failed: {exc}") from exc
        return held, grouped

    async def holder(self, key: str) -> str | None:
        """Who holds `key` (an owner key), or None when nobody has claimed it."""
        known = self._cache.get(key)
        if known is not None:
            return known
        found = await asyncio.get_running_loop().run_in_executor(self._executor, self._lookup, key)
        if found is not None:
            self._cache.put(key, found)
        return found

    def _lookup(self, key: str) -> str | None:
        try:
            row = self._db.execute("SELECT owner FROM workflow_owners WHERE workflow_id = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"ownership store failed: {exc}") from exc
        return str(row[0]) if row is not None else None

    def close(self) -> None:
        self._executor.submit(self._db.close).result()
        self._executor.shutdown()
