"""The SQLite graph store's schema and how an older file is brought up to it.

`prepare` runs on the writer's connection when the store opens: WAL and synchronous=FULL
(see bastion.graph._store._sqlite), then, for a file of an older `PRAGMA user_version`,
the tables and columns added since and the data they need, all in one transaction, so a
crash mid-upgrade leaves the file as it was. A file newer than this code is refused.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson

from bastion._errors import StoreError

from ._common import parse_legacy_node, parse_legacy_result
from ._sqlite_audit import AUDIT_SCHEMA, AuditAppender

# 1: nodes, edges, workflows. 2: the audit chain (_sqlite_audit.py), backfilled from the nodes.
# 3: events (and parked results) stored as protobuf bytes instead of protobuf JSON.
# 4: signed checkpoints of the audit chain (audit_checkpoints).
# 5: payload retention (nodes.payload_expired).
# 6: who sent a parked result (pending_results.workflow_id, tenant), backfilled from its audit record.
SCHEMA_VERSION = 6
SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    event_id    TEXT PRIMARY KEY,
    node_id     TEXT NOT NULL UNIQUE,
    workflow_id TEXT NOT NULL,
    session_id  TEXT NOT NULL,
    agent_id    TEXT NOT NULL,
    tenant      TEXT NOT NULL,
    node_type   TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    violation   INTEGER NOT NULL,
    at_ns       INTEGER NOT NULL,
    server      TEXT NOT NULL,
    tool        TEXT NOT NULL,
    received_ns INTEGER NOT NULL,
    event       BLOB NOT NULL,
    payload_expired INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS nodes_by_workflow ON nodes (workflow_id, at_ns, event_id);
CREATE INDEX IF NOT EXISTS violations_by_time ON nodes (at_ns, event_id) WHERE violation = 1;
CREATE INDEX IF NOT EXISTS violations_by_agent ON nodes (agent_id, at_ns, event_id) WHERE violation = 1;

CREATE TABLE IF NOT EXISTS edges (
    workflow_id TEXT NOT NULL,
    source      TEXT NOT NULL,
    target      TEXT NOT NULL,
    type        TEXT NOT NULL,
    reason      TEXT NOT NULL,
    PRIMARY KEY (source, target, type)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS edges_by_workflow ON edges (workflow_id);

CREATE TABLE IF NOT EXISTS workflows (
    workflow_id     TEXT PRIMARY KEY,
    first_seen_ns   INTEGER NOT NULL,
    last_seen_ns    INTEGER NOT NULL,
    node_count      INTEGER NOT NULL,
    violation_count INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS workflows_by_recency ON workflows (last_seen_ns, workflow_id);

-- Result events that arrived before their action's node (a redelivery can reorder them);
-- merged into the node when it arrives, if they were sent as its workflow and tenant
-- (NULL: not known, a result parked before schema 6 that no audit record names).
CREATE TABLE IF NOT EXISTS pending_results (
    node_id     TEXT PRIMARY KEY,
    event_id    TEXT NOT NULL,
    result      BLOB NOT NULL,
    workflow_id TEXT,
    tenant      TEXT
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS workflow_agents (
    workflow_id TEXT NOT NULL,
    agent_id    TEXT NOT NULL,
    PRIMARY KEY (workflow_id, agent_id)
) WITHOUT ROWID;
"""


def prepare(connection: sqlite3.Connection, path: Path) -> None:
    (mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
    if mode != "wal":
        raise StoreError(f"{path}: SQLite cannot use WAL mode here (got {mode!r}); put the file on a local disk")
    connection.execute("PRAGMA synchronous = FULL")  # acknowledged means on disk: see _sqlite's docstring
    (version,) = connection.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} has graph schema version {version}, newer than this Bastion knows ({SCHEMA_VERSION}); "
            "upgrade Bastion or point BASTION_GRAPH_URL at another file"
        )
    if version < SCHEMA_VERSION:
        connection.executescript(f"BEGIN IMMEDIATE;{SCHEMA}{AUDIT_SCHEMA}")
        try:
            _upgrade(connection, version)
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise


def _upgrade(connection: sqlite3.Connection, version: int) -> None:
    """What a file of `version` (0 when new: the tables were just created) lacks."""
    if version == 1:
        _backfill_audit(connection)
    if version in (1, 2):
        _upgrade_documents(connection)
    if "payload_expired" not in _columns(connection, "nodes"):  # a file from before version 5
        connection.execute("ALTER TABLE nodes ADD COLUMN payload_expired INTEGER NOT NULL DEFAULT 0")
    # After the column exists, whichever way it came to.
    connection.execute(
        "CREATE INDEX IF NOT EXISTS nodes_to_expire ON nodes (at_ns, event_id) WHERE payload_expired = 0"
    )
    if "workflow_id" not in _columns(connection, "pending_results"):  # a file from before version 6
        connection.execute("ALTER TABLE pending_results ADD COLUMN workflow_id TEXT")
        connection.execute("ALTER TABLE pending_results ADD COLUMN tenant TEXT")
        _backfill_senders(connection)


def _columns(connection: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}


def _backfill_audit(connection: sqlite3.Connection) -> None:
    """Chain the decisions a version-1 file already holds, in the order they arrived.

    Their results were merged into the nodes without keeping the result events, so
    only the decisions are chained; every result from now on is.
    """
    chain = AuditAppender.load(connection)
    rows = connection.execute("SELECT event, received_ns FROM nodes ORDER BY received_ns, event_id")
    for document, received_ns in rows.fetchall():
        event = parse_legacy_node(document, received_ns).event
        event.ClearField("result")
        chain.add(connection, event, received_ns)


def _upgrade_documents(connection: sqlite3.Connection) -> None:
    """Version 3 stores protobuf bytes where versions 1 and 2 stored protobuf JSON.

    Converted a page at a time, by key, so a large file never sits in memory whole."""
    after = ""
    while rows := connection.execute(
        "SELECT event_id, event FROM nodes WHERE event_id > ? ORDER BY event_id LIMIT 1000", (after,)
    ).fetchall():
        for event_id, document in rows:
            upgraded = parse_legacy_node(document, 0).event.SerializeToString()
            connection.execute("UPDATE nodes SET event = ? WHERE event_id = ?", (upgraded, event_id))
        after = rows[-1][0]
    for node_id, result in connection.execute("SELECT node_id, result FROM pending_results").fetchall():
        connection.execute(
            "UPDATE pending_results SET result = ? WHERE node_id = ?", (parse_legacy_result(result), node_id)
        )


def _backfill_senders(connection: sqlite3.Connection) -> None:
    """The workflow and tenant each parked result was sent as, from its audit record (every
    result event accepted since version 2 has one, written with it): without them the check
    made when its action arrives could not be made, and a result another tenant parked for a
    node id it guessed would be merged into that tenant's node. One a version-1 file parked
    has no record and stays NULL: refused when its action arrives (fail closed)."""
    parked = connection.execute("SELECT node_id, event_id FROM pending_results").fetchall()
    for node_id, event_id in parked:
        row = connection.execute("SELECT record FROM audit WHERE event_id = ?", (event_id,)).fetchone()
        if row is None:
            continue
        record = orjson.loads(row[0])
        connection.execute(
            "UPDATE pending_results SET workflow_id = ?, tenant = ? WHERE node_id = ?",
            (str(record.get("workflow_id", "")), str(record.get("tenant", "")), node_id),
        )
