"""Delivers the journal to GraphService.Ingest, at least once (DESIGN §1, the journal arrow).

One background task: read a batch from the cursor, send it as one IngestBatch message
(the records framed as they are on disk; per-event Ingest to a graph without it), and
only once the graph has acknowledged it persist the cursor (JSON,
written to a temporary file, fsynced, renamed over the old one) and delete the segments
now fully shipped. A failure keeps the cursor and retries with exponential backoff; the
graph deduplicates by event_id, so sending a batch twice is harmless while losing one is
not. Stopping never loses anything: whatever is not acknowledged stays in the journal and
is sent by the next run, which resumes from the persisted cursor.

Retrying is right only while the graph is unreachable or failing (UNAVAILABLE,
DEADLINE_EXCEEDED, UNAUTHENTICATED, …): those never cost an event. A record the graph
can never take would stop every later event of every agent, so it is set aside in
`dead-letter.jsonl` beside the cursor and shipping goes on:

- `too_large`: its encoding exceeds `max_event_bytes` (by default gRPC's 16 MiB message
  limit, bastion._rpc); it is never sent.
- `resource_exhausted`: the graph answered RESOURCE_EXHAUSTED. Bastion's graph does so
  only through gRPC's receive limit, so this is a property of the event; a gateway
  that answered it for rate limiting would have to answer UNAVAILABLE instead.
- `invalid_argument`: the graph refused it as malformed.
- `unreadable`: the record is not an Event at all.

The graph refuses a whole batch for one such event, so a refused batch is halved until
the event is alone. Each dead-letter line is one JSON object: `event_id`, `reason`,
`detail` (the graph's message, at most 1 KiB), `size` and `sha256` of the journal
record, `cut`, and `event` (base64): the record itself when it is at most
MAX_EVENT_BYTES (256 KiB), else the event cut to the journal's bounds (arguments a
prefix of at most 64 KiB, `arguments_truncated` set, see `_recorder.py`) — so a line
stays under ~350 KB. An unreadable record has no `event_id` or `event`, and keeps its
bytes in `record` when they are at most 256 KiB. The original stays in its journal
segment only until that segment is shipped and deleted. Lines are written at least
once: a crash before the cursor is saved writes them again on the next run.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError

from bastion._errors import JournalError
from bastion.v1 import graph_pb2

from ._journal import Cursor, JournalReader
from ._recorder import MAX_EVENT_BYTES, cut_text, encode_event

if TYPE_CHECKING:
    from bastion.v1.graph_pb2_grpc import GraphServiceAsyncStub

log = logging.getLogger(__name__)

# Keep a batch well under the gRPC receive limit (16 MiB, bastion._rpc).
_BATCH_MAX_BYTES = 4 << 20
#: The graph's receive limit for one message (bastion._rpc); each streamed Event is one.
MAX_MESSAGE_BYTES = 16 << 20
#: Why a record went to the dead-letter file (the `reason` label of the metric).
DEAD_LETTER_REASONS = ("too_large", "resource_exhausted", "invalid_argument", "unreadable")
# Codes with which the graph refuses an event for what it is, not for its own state.
_REFUSED = {
    grpc.StatusCode.RESOURCE_EXHAUSTED: "resource_exhausted",
    grpc.StatusCode.INVALID_ARGUMENT: "invalid_argument",
}
_DETAIL_MAX = 1024
_ID_MAX = 512
# With the backoff cap of ~2 s, one warning a minute while the graph stays down.
_LOG_EVERY_FAILURES = 30


#: Room under the message limit for gRPC's own framing.
_FRAME_SLACK = 1024
#: GraphService.IngestBatch taking the EventBatch's bytes as they are (see `frame_events`).
RawIngestBatch = Callable[..., Awaitable[graph_pb2.IngestAck]]


def raw_ingest_batch(channel: grpc.aio.Channel) -> RawIngestBatch:
    """IngestBatch without a request serializer: the shipper sends bytes it framed itself."""
    call: RawIngestBatch = channel.unary_unary(
        "/bastion.v1.GraphService/IngestBatch",
        request_serializer=None,
        response_deserializer=graph_pb2.IngestAck.FromString,
    )
    return call


def frame_events(records: list[bytes]) -> bytes:
    """The bytes of `EventBatch{events: records}` from the records' own bytes.

    A repeated message field is each element as field 1, wire type 2 (length-delimited):
    tag 0x0A, the length as a varint, the bytes. The journal's records are serialised
    Events, so this is the EventBatch the graph parses — without the proxy decoding and
    re-encoding every event (the per-event gRPC messages it replaces cost the proxy more
    CPU than its decisions, py-spy under load)."""
    parts: list[bytes] = []
    for record in records:
        parts.append(b"\x0a" + _varint(len(record)))
        parts.append(record)
    return b"".join(parts)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@dataclass(frozen=True, slots=True, eq=False)
class _Item:
    event: graph_pb2.Event
    record: bytes  # as journaled: its size and digest go into a dead-letter line


@dataclass(frozen=True, slots=True)
class _Reject:
    record: bytes
    reason: str
    detail: str


@dataclass(slots=True)
class _Batch:
    items: list[_Item]
    cursor: Cursor  # where the journal continues after this batch
    # Records found undeliverable when the batch was read; emptied once dead-lettered.
    rejects: list[_Reject] = field(default_factory=list)


class Shipper:
    """Ships the records `reader` (the live `Journal.reader()`) returns; `wake` is the journal's `has_data`.

    `start()` after `Journal.open` (it loads the cursor; a missing cursor file means the
    start of the oldest segment), `await stop()` before `Journal.close`.
    `on_dead_letter(reason)` is called once per record set aside (for the metric).
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
        max_event_bytes: int = MAX_MESSAGE_BYTES,
        on_dead_letter: Callable[[str], None] | None = None,
        ingest_batch: RawIngestBatch | None = None,
    ) -> None:
        """`ingest_batch` (from `raw_ingest_batch`) ships each batch as one message;
        without it, or once the graph answered UNIMPLEMENTED, every event is its own."""
        self._ingest_batch = ingest_batch
        if reader.times is None:
            # The lag gauge dates records by their appends: only the live journal knows them.
            raise ValueError("the shipper needs the live journal's reader, Journal.reader()")
        self._times = reader.times
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
        self._max_event_bytes = max_event_bytes
        self._on_dead_letter = on_dead_letter
        self._cursor = Cursor(0, 0)
        self._batch: _Batch | None = None
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
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
        """Records set aside in dead-letter.jsonl since start (see the module docstring)."""
        return self._skipped

    @property
    def lag_seconds(self) -> float:
        """How long the oldest record not yet acknowledged by the graph has waited (at most one
        group commit more), 0 when none waits: the `bastion_journal_lag_seconds` gauge
        (`_journal_times`)."""
        oldest = self._times.oldest(self._cursor)
        return max(0.0, time.monotonic() - oldest) if oldest is not None else 0.0

    def start(self) -> None:
        if self._task is not None:
            return
        self._cursor = self._load_cursor()
        self._date_backlog()
        self._batch = None
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="bastion-journal-shipper")

    def _date_backlog(self) -> None:
        """Date the records an earlier run left by the first one's event time (`AppendTimes.
        found_aged`): one record read at start. Anything unreadable leaves them dated by the
        start, as before; the shipper reads them again when it ships them."""
        try:
            records, _ = self._reader.read(self._cursor, 1, self._max_event_bytes)
            if not records:
                return
            event = graph_pb2.Event.FromString(records[0])
        except (OSError, JournalError, DecodeError):
            return
        stamp = event.started_at if event.HasField("started_at") else event.decided_at
        if stamp.seconds:
            self._times.found_aged(time.time() - stamp.ToNanoseconds() / 1e9)

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
                full = len(self._batch.items) + len(self._batch.rejects) >= self._batch_max
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
            return None
        batch = _Batch([], cursor)
        for record in records:
            if len(record) > self._max_event_bytes:
                detail = f"{len(record)} bytes, over the {self._max_event_bytes}-byte limit of one gRPC message"
                batch.rejects.append(_Reject(record, "too_large", detail))
                continue
            try:
                batch.items.append(_Item(graph_pb2.Event.FromString(record), record))
            except DecodeError:
                batch.rejects.append(_Reject(record, "unreadable", f"not an Event (batch ending at {cursor})"))
        # A batch may have no events (only rejects or a segment change): the cursor still moves.
        return batch

    async def _ship(self, batch: _Batch) -> None:
        while batch.rejects:
            reject = batch.rejects[0]
            await self._set_aside(reject.record, reject.reason, reject.detail)
            batch.rejects.pop(0)  # a retry of the batch must not write it again
        if batch.items:
            await self._deliver(batch, list(batch.items))
        await asyncio.to_thread(self._commit, batch.cursor)
        self._cursor = batch.cursor
        self._shipped += len(batch.items)
        # Between two scrapes a busy journal commits thousands of groups: those delivered
        # are forgotten now, or they would fill the table and merge into a stale entry.
        self._times.shipped(batch.cursor)

    async def _deliver(self, batch: _Batch, items: list[_Item]) -> None:
        """Ingest `items`; isolate and set aside any event the graph refuses for good.

        The graph refuses a whole batch for one bad event (INVALID_ARGUMENT), and a
        batch may be too large only as a whole (RESOURCE_EXHAUSTED). Retrying either
        would stop all shipping for good, so the batch is halved until the refused
        event is alone, and that one goes to the dead-letter file. Halves already
        stored are resent harmlessly: the graph ingests idempotently by event_id.
        """
        try:
            await self._send(items)
        except grpc.aio.AioRpcError as exc:
            reason = _REFUSED.get(exc.code())
            if reason is None:
                raise
            if len(items) == 1:
                await self._set_aside(items[0].record, reason, exc.details() or "refused")
                batch.items.remove(items[0])  # a retry of the batch must not send it again
                return
            middle = len(items) // 2
            await self._deliver(batch, items[:middle])
            await self._deliver(batch, items[middle:])

    async def _send(self, items: list[_Item]) -> None:
        """One IngestBatch message of the records as journaled (framed, never re-encoded);
        per-event Ingest to a graph without IngestBatch or for a batch too large for one message."""
        if self._ingest_batch is not None:
            message = frame_events([item.record for item in items])
            if len(message) <= MAX_MESSAGE_BYTES - _FRAME_SLACK:
                try:
                    await self._ingest_batch(message, timeout=self._rpc_timeout, metadata=self._metadata)
                    return
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                        raise
                    log.info("the graph does not offer IngestBatch; shipping one message per event")
                    self._ingest_batch = None
        await self._stub.Ingest((item.event for item in items), timeout=self._rpc_timeout, metadata=self._metadata)

    async def _set_aside(self, record: bytes, reason: str, detail: str) -> None:
        detail = detail[:_DETAIL_MAX]
        event_id = await asyncio.to_thread(self._write_dead_letter, record, reason, detail)
        self._skipped += 1
        log.error(
            "journal event %s set aside in %s (%s, %d bytes): %s; shipping goes on",
            event_id or "(unreadable record)",
            self._dead_letter_path,
            reason,
            len(record),
            detail,
            extra={"fields": {"event_id": event_id, "reason": reason, "size": len(record), "detail": detail}},
        )
        if self._on_dead_letter is not None:
            self._on_dead_letter(reason)

    def _write_dead_letter(self, record: bytes, reason: str, detail: str) -> str:
        """Append one bounded line for `record` (module docstring); return its event id."""
        entry: dict[str, Any] = {
            "event_id": "",
            "reason": reason,
            "detail": detail,
            "size": len(record),
            "sha256": hashlib.sha256(record).hexdigest(),
        }
        try:
            event = graph_pb2.Event.FromString(record)
        except DecodeError:
            if len(record) <= MAX_EVENT_BYTES:
                entry["record"] = base64.b64encode(record).decode()
        else:
            # The graph's id limit; a longer id is in `event`, cut like any other string.
            entry["event_id"] = cut_text(event.event_id, _ID_MAX)[0]
            entry["cut"] = len(record) > MAX_EVENT_BYTES
            if entry["cut"]:
                action = event.action
                event.ClearField("action")
                record = encode_event(event, action)
            entry["event"] = base64.b64encode(record).decode()
        with self._dead_letter_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return str(entry["event_id"])

    async def _idle(self) -> None:
        # Poll too, so a missed or foreign wake-up only delays shipping by idle_interval.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self._idle_interval)

    def _commit(self, cursor: Cursor) -> None:
        # Delivered segments go first: on a full disk they are what makes room for the cursor
        # file (an attacker's probe filled the disk; the cursor could never be written, so no
        # segment was ever deleted and every call stayed blocked after the graph came back).
        # A crash before the cursor is saved is safe: an old cursor in a deleted segment moves
        # on to the next one, and the graph ingests what is sent twice idempotently.
        self._reader.delete_delivered(cursor)
        tmp = self._cursor_path.with_name(self._cursor_path.name + ".tmp")
        with tmp.open("w") as f:
            json.dump({"segment": cursor.segment, "offset": cursor.offset}, f)
            f.flush()
            os.fsync(f.fileno())
        # No directory fsync: if a power cut loses the rename we resend from the old cursor.
        os.replace(tmp, self._cursor_path)

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
