"""The audit chain in SQLite: its table, the writer's append, and the readers' queries.

The contract: one row per audit record (bastion.graph._audit), appended by the store's
single writer in the same transaction as the ingest that produced it, so an event is
stored with its record or not at all, and a redelivered event (not stored again) adds
none. Triggers refuse UPDATE and DELETE on the table, which stops the application and
a careless `sqlite3` session; anyone who drops them can edit rows, and `GET /audit/verify`
then names the first record changed. Sequence numbers have no gaps and `recorded_ns`
never decreases along them, so a time range of records is a contiguous piece of the
chain that verifies on its own.

The columns beside `record` (kind, times, rule, fallback) serve queries (/audit/slo,
exports by time) and are not hashed: `record` is the authority.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence

from bastion.v1 import graph_pb2

from .._audit import AuditEntry, ChainHead
from ._base import DecisionStats, StoredCheckpoint
from ._chain import ChainCursor, nearest_ranks

AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq         INTEGER PRIMARY KEY,
    event_id    TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL,
    at_ns       INTEGER NOT NULL,
    recorded_ns INTEGER NOT NULL,
    latency_ns  INTEGER,
    blocked     INTEGER NOT NULL,
    rule_id     TEXT NOT NULL,
    fallback    INTEGER NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL,
    record      BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_recorded ON audit (recorded_ns);
CREATE INDEX IF NOT EXISTS audit_by_kind_time ON audit (kind, at_ns);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit chain is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit chain is append-only'); END;

CREATE TABLE IF NOT EXISTS audit_checkpoints (
    seq   INTEGER PRIMARY KEY,
    hash  TEXT NOT NULL,
    token TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
"""

_INSERT = """
INSERT INTO audit (seq, event_id, kind, at_ns, recorded_ns, latency_ns, blocked, rule_id, fallback,
                   prev_hash, hash, record)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_SELECT_HEAD = "SELECT seq, hash, recorded_ns FROM audit ORDER BY seq DESC LIMIT 1"


class AuditAppender:
    """The writer's view of the chain's head. `fork()` before a transaction, keep the
    fork only once it commits: a rolled-back batch leaves the head where it was."""

    __slots__ = ("_cursor",)

    def __init__(self, cursor: ChainCursor | None = None) -> None:
        self._cursor = cursor or ChainCursor()

    @classmethod
    def load(cls, connection: sqlite3.Connection) -> AuditAppender:
        row = connection.execute(_SELECT_HEAD).fetchone()
        return cls(ChainCursor(*row) if row is not None else None)

    def fork(self) -> AuditAppender:
        return AuditAppender(self._cursor.fork())

    def add(self, connection: sqlite3.Connection, event: graph_pb2.Event, received_ns: int) -> None:
        """Append `event`'s record when it is an audit record (bastion.graph._audit.audit_kind)."""
        row = self._cursor.next_row(event, received_ns)
        if row is None:
            return
        connection.execute(
            _INSERT,
            (
                row.sequence,
                row.event_id,
                row.kind,
                row.at_ns,
                row.recorded_ns,
                row.latency_ns,
                int(row.blocked),
                row.rule_id,
                int(row.fallback),
                row.prev_hash,
                row.hash,
                row.record,
            ),
        )


def insert_checkpoint(connection: sqlite3.Connection, checkpoint: StoredCheckpoint) -> bool:
    inserted = connection.execute(
        "INSERT INTO audit_checkpoints (seq, hash, token) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        (checkpoint.sequence, checkpoint.hash, checkpoint.token),
    )
    return inserted.rowcount > 0


def select_checkpoints(connection: sqlite3.Connection, after: int, limit: int) -> list[StoredCheckpoint]:
    rows = connection.execute(
        "SELECT seq, hash, token FROM audit_checkpoints WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
    )
    return [StoredCheckpoint(*row) for row in rows]


def select_last_checkpoint(connection: sqlite3.Connection) -> StoredCheckpoint | None:
    row = connection.execute("SELECT seq, hash, token FROM audit_checkpoints ORDER BY seq DESC LIMIT 1").fetchone()
    return StoredCheckpoint(*row) if row is not None else None


def select_head(connection: sqlite3.Connection) -> ChainHead | None:
    row = connection.execute(_SELECT_HEAD).fetchone()
    return ChainHead(sequence=row[0], hash=row[1]) if row is not None else None


def select_entries(
    connection: sqlite3.Connection,
    after: int,
    limit: int,
    *,
    through: int | None,
    since_ns: int | None,
    until_ns: int | None,
) -> list[AuditEntry]:
    """Up to `limit` entries with sequence > `after` (and <= `through`), recorded in [since, until)."""
    clauses, params = ["seq > ?"], [after]
    for clause, value in (("seq <= ?", through), ("recorded_ns >= ?", since_ns), ("recorded_ns < ?", until_ns)):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    sql = f"SELECT seq, prev_hash, hash, record FROM audit WHERE {' AND '.join(clauses)} ORDER BY seq LIMIT ?"  # noqa: S608
    return [
        AuditEntry(sequence=seq, prev_hash=prev, hash=digest, record=bytes(record))
        for seq, prev, digest, record in connection.execute(sql, (*params, limit))
    ]


def select_decision_stats(connection: sqlite3.Connection, since_ns: int, percentiles: Sequence[float]) -> DecisionStats:
    window = "kind = 'decision' AND at_ns >= ?"
    decisions, blocked, fallbacks = connection.execute(
        f"SELECT count(*), coalesce(sum(blocked), 0), coalesce(sum(fallback), 0) FROM audit WHERE {window}",  # noqa: S608
        (since_ns,),
    ).fetchone()
    by_rule = {
        rule: (count, rule_blocked)
        for rule, count, rule_blocked in connection.execute(
            f"SELECT rule_id, count(*), sum(blocked) FROM audit WHERE {window} GROUP BY rule_id",  # noqa: S608
            (since_ns,),
        )
    }
    (timed,) = connection.execute(
        f"SELECT count(*) FROM audit WHERE {window} AND latency_ns IS NOT NULL",  # noqa: S608
        (since_ns,),
    ).fetchone()
    latencies: dict[float, int] = {}
    if timed:
        # One sorted pass, keeping only the values at the wanted ranks: memory stays
        # constant however many decisions the window holds.
        ranks = nearest_ranks(percentiles, timed)
        rows: Iterator[tuple[int]] = connection.execute(
            f"SELECT latency_ns FROM audit WHERE {window} AND latency_ns IS NOT NULL ORDER BY latency_ns",  # noqa: S608
            (since_ns,),
        )
        last = max(ranks)
        for index, (value,) in enumerate(rows):
            for p in ranks.get(index, ()):
                latencies[p] = value
            if index == last:
                break
    return DecisionStats(decisions, blocked, fallbacks, latencies, by_rule)
