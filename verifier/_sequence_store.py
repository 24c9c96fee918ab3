"""Durable home of the sequence model: `$BASTION_HOME/verifier/sequence.sqlite3`.

Contract: one row per agent (its serialised transition counts, `_sequence.SequenceModel`).
The model learns on the event loop with no I/O; every `flush_s` seconds the flusher takes
the agents changed since the last flush (serialised on the loop, a few KiB each at most)
and writes them in one transaction on a worker thread, `synchronous=FULL`, so a flush that
returned is on disk. A crash loses at most the learning of the last interval, which only
delays an agent's warm-up; a stop flushes first. On start the newest `max_agents` rows are
loaded; a row that does not parse is skipped and logged (it cannot make anything look
familiar, only unknown). Workflow cursors are not stored: after a restart, a workflow's
first visible step is learnt without a predecessor, and the transitions still in its
history window are counted again (at most one window per running workflow).

Flushes are serial (one flusher task), so the connection is only ever used by one thread
at a time, whichever worker thread runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from pathlib import Path

from bastion._errors import StoreError

from ._sequence import SequenceModel

log = logging.getLogger("bastion.verifier")

#: Where the learnt sequence models live, under BASTION_HOME.
SEQUENCE_STORE = Path("verifier") / "sequence.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    agent TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL
)
"""


class SequenceStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
            row = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM agents").fetchone()
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the sequence model store {path}: {exc}; check the directory") from exc
        self._seq: int = row[0]

    def load(self, model: SequenceModel) -> int:
        """Fill `model` with the newest stored agents; how many were loaded."""
        limit = model.config.max_agents
        try:
            rows = self._db.execute(
                "SELECT agent, data FROM (SELECT agent, seq, data FROM agents ORDER BY seq DESC LIMIT ?) ORDER BY seq",
                (limit,),
            ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the sequence model store {self.path}: {exc}") from exc
        loaded = 0
        for agent, data in rows:
            if isinstance(agent, str) and isinstance(data, bytes) and model.restore(agent, data):
                loaded += 1
            else:
                log.warning("skipped an unreadable sequence model row", extra={"fields": {"agent": str(agent)[:80]}})
        return loaded

    def write(self, rows: list[tuple[str, bytes | None]]) -> None:
        """Store changed agents and delete dropped ones, in one transaction."""
        if not rows:
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
            for agent, data in rows:
                if data is None:
                    self._db.execute("DELETE FROM agents WHERE agent = ?", (agent,))
                else:
                    self._seq += 1
                    self._db.execute(
                        "INSERT INTO agents (agent, seq, data) VALUES (?, ?, ?) "
                        "ON CONFLICT (agent) DO UPDATE SET seq = excluded.seq, data = excluded.data",
                        (agent, self._seq, data),
                    )
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise StoreError(f"cannot write the sequence model store {self.path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()


async def flush(model: SequenceModel, store: SequenceStore) -> None:
    """Write what the model learnt since the last flush (taken on the loop, written off it)."""
    rows = model.take_dirty()
    if rows:
        await asyncio.to_thread(store.write, rows)


async def run_flusher(model: SequenceModel, store: SequenceStore, interval_s: float, stop: asyncio.Event) -> None:
    """Flush every `interval_s` until `stop` is set, then once more. A failed write is
    logged and its rows are lost (their agents are re-sent when they next learn)."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
        try:
            await flush(model, store)
        except StoreError:
            log.exception("sequence model flush failed")
        if stop.is_set():
            return
