"""Delivers the journal to GraphService.Ingest, at least once (DESIGN §1, the journal arrow).

One background task: read a batch from the cursor, send it as one client-streaming
Ingest call, and only once the graph has acknowledged it persist the cursor (JSON,
written to a temporary file, fsynced, renamed over the old one) and delete the segments
now fully shipped. A failure keeps the cursor and retries with exponential backoff; the
graph deduplicates by event_id, so sending a batch twice is harmless while losing one is
not. Stopping never loses anything: whatever is not acknowledged stays in the journal and
is sent by the next run, which resumes from the persisted cursor.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from google.protobuf.message import DecodeError

from bastion.v1 import graph_pb2

from ._journal import Cursor, JournalReader

if TYPE_CHECKING:
    from bastion.v1.graph_pb2_grpc import GraphServiceAsyncStub

log = logging.getLogger(__name__)

# Keep a batch well under the gRPC receive limit (16 MiB, bastion._rpc).
_BATCH_MAX_BYTES = 4 << 20
# With the backoff cap of ~2 s, one warning a minute while the graph stays down.
_LOG_EVERY_FAILURES = 30


@dataclass(frozen=True, slots=True)
class _Batch:
    events: list[graph_pb2.Event]
    cursor: Cursor  # where the journal continues after this batch


class Shipper:
    """Ships the records `reader` returns; `wake` is the journal's `has_data`.

    `start()` after `Journal.open` (it loads the cursor; a missing cursor file means the
    start of the oldest segment), `await stop()` before `Journal.close`.
    """

    def __init__(
        self,
        reader: JournalReader,
        cursor_path: Path,
        stub: GraphServiceAsyncStub,
        metadata: tuple[tuple[str, str], ...],
        *,
        wake: asyncio.Event,
        batch_max: int = 512,
        idle_interval: float = 0.05,
        linger: float = 0.05,
        rpc_timeout: float = 5.0,
        backoff_initial: float = 0.05,
        backoff_max: float = 2.0,
    ) -> None:
        self._reader = reader
        self._cursor_path = cursor_path
        self._dead_letter_path = cursor_path.with_name("dead-letter.jsonl")
        self._stub = stub
        self._metadata = metadata
        self._wake = wake
        self._batch_max = batch_max
        self._idle_interval = idle_interval
        self._linger = linger
        self._rpc_timeout = rpc_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._cursor = Cursor(0, 0)
        self._batch: _Batch | None = None
        self._behind = False  # a read found records; cleared when a read finds none
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._caught_up_at = time.monotonic()
        self._shipped = 0
        self._skipped = 0

    @property
    def cursor(self) -> Cursor:
        """Where the journal continues after the last acknowledged record."""
        return self._cursor

    @property
    def shipped(self) -> int:
        """Events acknowledged by the graph since start (redeliveries included)."""
        return self._shipped

    @property
    def skipped(self) -> int:
        """Records that could never be delivered: not an Event (dropped) or refused by the
        graph as malformed (kept in dead-letter.jsonl beside the cursor)."""
        return self._skipped

    @property
    def lag_seconds(self) -> float:
        """Time since the journal was last seen fully shipped, while records are pending; else 0.

        An upper bound on the age of the oldest unshipped record, for the
        `bastion_journal_lag_seconds` gauge.
        """
        if not self._behind and not self._wake.is_set():
            return 0.0
        return time.monotonic() - self._caught_up_at

    def start(self) -> None:
        if self._task is not None:
            return
        self._cursor = self._load_cursor()
        self._batch = None
        self._stopping.clear()
        self._caught_up_at = time.monotonic()
        self._task = asyncio.create_task(self._run(), name="bastion-journal-shipper")

    async def stop(self, grace: float = 2.0) -> None:
        """Ship what can be shipped within `grace` seconds, then stop."""
        task = self._task
        if task is None:
            return
        self._task = None
        self._stopping.set()
        self._wake.set()
        done, _ = await asyncio.wait({task}, timeout=grace)
        if not done:
            # Cancelling an unacknowledged Ingest loses nothing: the cursor has not moved.
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        elif not task.cancelled() and (exc := task.exception()) is not None:
            log.error("the journal shipper had stopped on an unexpected error", exc_info=exc)

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                if self._batch is None:
                    self._batch = await self._next_batch()
                if self._batch is None:
                    if self._stopping.is_set():
                        return
                    await self._idle()
                    continue
                full = len(self._batch.events) >= self._batch_max
                await self._ship(self._batch)
                self._batch = None
                if failures:
                    log.info("journal shipping resumed after %d failed attempts", failures)
                failures = 0
                if not full and not self._stopping.is_set():
                    # Linger so a busy proxy ships one batch per interval instead of one
                    # RPC, cursor fsync and graph transaction per group commit: those
                    # compete for the same cores as the hot path.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), self._linger)
            except (grpc.RpcError, OSError) as exc:
                if self._stopping.is_set():
                    return  # the graph is down: leave the rest for the next run
                failures += 1
                delay = min(self._backoff_max, self._backoff_initial * 2 ** min(failures - 1, 16))
                if failures % _LOG_EVERY_FAILURES == 1:
                    log.warning("journal shipping failed (attempt %d), retrying in %.2fs: %s", failures, delay, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)

    async def _next_batch(self) -> _Batch | None:
        # Clear before reading: records made durable after this read set it again.
        self._wake.clear()
        records, cursor = await asyncio.to_thread(self._reader.read, self._cursor, self._batch_max, _BATCH_MAX_BYTES)
        if cursor == self._cursor:
            self._behind = False
            self._caught_up_at = time.monotonic()
            return None
        self._behind = True
        events = []
        for record in records:
            try:
                events.append(graph_pb2.Event.FromString(record))
            except DecodeError:
                # Parsed once per batch, so logged once; retrying could never deliver it.
                self._skipped += 1
                log.error(
                    "journal record of %d bytes in the batch ending at %s is not an Event; skipping it",
                    len(record),
                    cursor,
                )
        # A batch may have no events (only skipped records or a segment change): the cursor still moves.
        return _Batch(events, cursor)

    async def _ship(self, batch: _Batch) -> None:
        if batch.events:
            await self._deliver(batch.events)
        await asyncio.to_thread(self._commit, batch.cursor)
        self._cursor = batch.cursor
        self._shipped += len(batch.events)

    async def _deliver(self, events: list[graph_pb2.Event]) -> None:
        """Ingest `events`; isolate and set aside any the graph refuses as malformed.

        The graph refuses a whole batch for one bad event (INVALID_ARGUMENT). Retrying it
        would stop all shipping for good, so the batch is halved until the bad event is
        alone, and that one goes to the dead-letter file. Halves already stored are
        resent harmlessly: the graph ingests idempotently by event_id.
        """
        try:
            await self._stub.Ingest(iter(events), timeout=self._rpc_timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            if len(events) == 1:
                await asyncio.to_thread(self._dead_letter, events[0], exc.details() or "refused")
                return
            middle = len(events) // 2
            await self._deliver(events[:middle])
            await self._deliver(events[middle:])

    def _dead_letter(self, event: graph_pb2.Event, reason: str) -> None:
        self._skipped += 1
        log.error(
            "the graph refused event %s (%s); it is kept in %s and shipping goes on",
            event.event_id,
            reason,
            self._dead_letter_path,
        )
        entry = {
            "event_id": event.event_id,
            "reason": reason,
            "event": base64.b64encode(event.SerializeToString()).decode(),
        }
        with self._dead_letter_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

    async def _idle(self) -> None:
        # Poll too, so a missed or foreign wake-up only delays shipping by idle_interval.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self._idle_interval)

    def _commit(self, cursor: Cursor) -> None:
        tmp = self._cursor_path.with_name(self._cursor_path.name + ".tmp")
        with tmp.open("w") as f:
            json.dump({"segment": cursor.segment, "offset": cursor.offset}, f)
            f.flush()
            os.fsync(f.fileno())
        # No directory fsync: if a power cut loses the rename we resend from the old cursor,
        # which is safe; a cursor in a segment deleted below moves on to the next one.
        os.replace(tmp, self._cursor_path)
        self._reader.delete_through(cursor.segment - 1)

    def _load_cursor(self) -> Cursor:
        try:
            data = json.loads(self._cursor_path.read_text())
            cursor = Cursor(int(data["segment"]), int(data["offset"]))
        except FileNotFoundError:
            return self._reader.first()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning(
                "journal cursor %s is unreadable (%s); resending the journal from its start", self._cursor_path, exc
            )
            return self._reader.first()
        end = self._reader.end()
        if cursor > end:
            # A cursor past the journal's end belongs to a journal that no longer exists
            # (the directory was wiped or restored from elsewhere). Kept, it would skip or
            # misread the new journal's records; resending from the start is safe because
            # the graph ingests idempotently.
            log.warning(
                "journal cursor %s points past the journal's end %s; resending the journal from its start",
                cursor,
                end,
            )
            return self._reader.first()
        return cursor
