"""The proxy's durable journal: an append-only, segmented write-ahead log (DESIGN §1 ⑥).

The proxy appends every event here BEFORE it forwards the action; the shipper
(`_shipper.py`) later delivers the records to the graph service.

Layout: segments `journal-000000000001.wal`, `journal-000000000002.wal`, … in one
directory. A record is `<u32 LE length><u32 LE crc32(payload)><payload>`; a record is
never split, and the writer rolls to the next segment before a record would take the
current one past `segment_bytes`.

Durability contract:

- Process crash (the proxy dies, the machine stays up): nothing is lost once `append`
  has returned. `append` is one `writev(2)` into the kernel; the page cache outlives us.
- Machine crash or power loss: at most the last `fsync_interval` seconds of records (plus
  one fsync's duration) are lost. A background task fsyncs at most once per
  `fsync_interval`, and only when something was written (group commit), so the hot path
  never waits for the disk (DESIGN §14 (4)). `flush()` fsyncs now.
- A crash in the middle of a write leaves a torn record at the end of the last segment;
  `Journal.open` truncates it so appends continue from a record boundary. A *complete*
  record whose crc fails is corruption, not a tear, and the records after it are not
  given up with it: `Journal.open` copies everything from it on into
  `quarantine/journal-<segment>.<offset>.wal.corrupt`, writes the valid records that follow
  it to a new segment, which the shipper then delivers, and only then truncates
  (`_recover_segment`; an attacker's probe flipped one byte a third into a segment and 28
  forwarded calls vanished with a warning). Every segment is checked at open; records
  recovered from an older one are delivered after the newest's. A record that rots after
  open, in bytes that are final (a sealed segment, or before the fsynced end), is read past
  by the live reader from its declared end the same way: a copy of it in quarantine, the
  records after it delivered, an error logged (`JournalReader._past_corruption`).
- An OSError raises JournalError, and the proxy blocks the action (fail closed). A failed
  write leaves the file as it was and the next append may succeed; a failed fsync breaks
  the journal for good, because the kernel may have dropped the dirty pages and a later
  fsync would report success for data that is gone.

One journal, one writer: `Journal.open` takes an exclusive `flock` on `journal.lock` in
the directory and holds it until `close` (the kernel drops it when the process dies, so
a crash never leaves it stuck). A second proxy pointed at the same `$BASTION_HOME` fails
at start with JournalError naming the holder's pid, instead of interleaving its records
with the first's and corrupting both.

Readers (`JournalReader`) see only complete, crc-valid records. The reader returned by
`Journal.reader()` also stops at the last *fsynced* record: the shipper must not
acknowledge to its cursor a record that a power cut could still erase, or after restart
the cursor would point past the end of the journal into records appended later.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import struct
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bastion._errors import JournalError

from ._journal_times import AppendTimes

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")
_PREFIX = "journal-"
_SUFFIX = ".wal"
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
_SCAN_BYTES = 1 << 20
#: Longest record salvaged: the recorder keeps every event within 256 KiB (MAX_EVENT_BYTES).
_SALVAGE_MAX_RECORD = (256 << 10) + 4096
QUARANTINE = "quarantine"
#: Free space under which the journal says it is not fit to take traffic (`problem`): four
#: of the largest events the recorder writes.
MIN_FREE_BYTES = 1 << 20
_CLOSED = "the journal is closed"
LOCK_NAME = "journal.lock"


@dataclass(frozen=True, slots=True, order=True)
class Cursor:
    """A position in the journal: just before the record at `offset` of segment `segment`."""

    segment: int
    offset: int


def segment_path(directory: Path, segment: int) -> Path:
    return directory / f"{_PREFIX}{segment:012d}{_SUFFIX}"


def _lock(directory: Path) -> int:
    """An fd holding the directory's exclusive writer lock; JournalError when another holds it."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise JournalError(
            f"the journal in {directory} is in use by another proxy (pid {holder}): two proxies must not share "
            "one journal; give each proxy its own BASTION_HOME"
        ) from None
    except OSError:
        os.close(fd)
        raise
    with contextlib.suppress(OSError):  # the pid is only for the message above
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def list_segments(directory: Path) -> list[int]:
    """Segment numbers present in `directory`, oldest first."""
    numbers = []
    for name in os.listdir(directory):
        digits = name[len(_PREFIX) : -len(_SUFFIX)]
        if name.startswith(_PREFIX) and name.endswith(_SUFFIX) and digits.isdigit():
            numbers.append(int(digits))
    return sorted(numbers)


class Journal:
    """The single writer. Build it with `Journal.open`; `append` from the event loop."""

    def __init__(
        self,
        directory: Path,
        segment: int,
        fd: int,
        size: int,
        dir_fd: int,
        fsync_interval: float,
        segment_bytes: int,
        lock_fd: int = -1,
    ) -> None:
        self._dir = directory
        self._lock_fd = lock_fd
        self._segment = segment
        self._fd = fd
        self._size = size
        self._dir_fd = dir_fd
        self._fsync_interval = fsync_interval
        self._segment_bytes = segment_bytes
        # Earlier segments' fds, kept open until one last fsync has covered them.
        self._retired: list[int] = []
        self._dir_dirty = False
        self._durable = Cursor(segment, size)
        self._broken: str | None = None
        #: A write failed (disk full): the next append starts a new segment, so that the
        #: shipper, once it has delivered this one, can delete it and give the space back.
        self._roll_next = False
        self._dirty = asyncio.Event()
        self._sync_lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None
        # One dedicated thread: fsyncs never queue behind unrelated work in the default pool.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bastion-journal-fsync")
        #: Set whenever newly appended records become durable (once per group commit).
        self.has_data = asyncio.Event()
        #: When records were appended, for the shipper's lag (`_journal_times`).
        self.times = AppendTimes()
        self.times.found(self._durable)

    @classmethod
    def open(cls, directory: Path, *, fsync_interval: float = 0.005, segment_bytes: int = 64 << 20) -> Journal:
        """Open (creating if needed) the journal in `directory` and recover from a crash."""
        try:
            directory.mkdir(parents=True, exist_ok=True)
            lock_fd = _lock(directory)
        except OSError as exc:
            raise JournalError(f"cannot open the journal in {directory}: {exc}") from exc
        try:
            return cls._recover(directory, lock_fd, fsync_interval, segment_bytes)
        except BaseException:
            os.close(lock_fd)  # releases the lock
            raise

    @classmethod
    def _recover(cls, directory: Path, lock_fd: int, fsync_interval: float, segment_bytes: int) -> Journal:
        try:
            segments = list_segments(directory)
            segment = segments[-1] if segments else 1
            # Every segment is read whole: the shipper deletes a delivered one, so corruption
            # not caught here would take the records after it with it (the newest first,
            # then older ones, whose records go on after the newest's).
            for number in [segment, *segments[:-1]]:
                path = segment_path(directory, number)
                size = path.stat().st_size if path.exists() else 0
                valid = _valid_end(path) if size else 0
                if valid < size and _recover_segment(directory, number, valid, size, segment + 1):
                    segment += 1
                elif segments and number != segments[-1]:
                    # What a crashed process left in the page cache is durable from now on.
                    _fsync_path(path)
            path = segment_path(directory, segment)
            fd = os.open(path, _OPEN_FLAGS, 0o644)
            valid = os.fstat(fd).st_size
            os.fsync(fd)
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            os.fsync(dir_fd)
        except OSError as exc:
            raise JournalError(f"cannot open the journal in {directory}: {exc}") from exc
        return cls(directory, segment, fd, valid, dir_fd, fsync_interval, segment_bytes, lock_fd)

    @property
    def durable(self) -> Cursor:
        """End of the fsynced records."""
        return self._durable

    def reader(self) -> JournalReader:
        """A reader that never goes past the fsynced records (see the module docstring)."""
        return JournalReader(self._dir, limit=lambda: self._durable, times=self.times)

    def append(self, payload: bytes) -> None:
        """Write one record into the OS (no fsync); raise JournalError when that fails."""
        if self._broken is not None:
            raise JournalError(self._broken)
        if not payload:
            raise JournalError("an empty record cannot be journaled (no event is empty)")
        length = _HEADER.size + len(payload)
        fd = self._fd
        if (self._roll_next or self._size + length > self._segment_bytes) and self._size:
            # After a failed write too: a full disk gets its space back only from segments
            # the shipper has delivered and may delete, and it never deletes the newest.
            fd = self._roll()
        self._roll_next = False
        try:
            # writev: one syscall without copying the payload into a framed buffer.
            written = os.writev(fd, (_HEADER.pack(len(payload), zlib.crc32(payload)), payload))
        except (OSError, struct.error) as exc:
            self._roll_next = isinstance(exc, OSError)
            raise JournalError(f"cannot write a {len(payload)}-byte record to the journal: {exc}") from exc
        if written != length:
            self._roll_next = True
            self._undo_short_write(written)
        self._size += length
        self.times.appended()
        self._dirty.set()

    def problem(self) -> str | None:
        """Why the journal cannot take records now (broken, closed, or its disk nearly full),
        or None. For readiness: a replica that must block every call should get none."""
        if self._broken is not None:
            return self._broken
        try:
            stat = os.statvfs(self._dir)
        except OSError as exc:
            return f"the journal's directory cannot be read: {exc}"
        free = stat.f_bavail * stat.f_frsize
        if free < MIN_FREE_BYTES:
            return f"the journal's disk has {free} bytes free (under {MIN_FREE_BYTES})"
        return None

    def _roll(self) -> int:
        segment = self._segment + 1
        try:
            fd = os.open(segment_path(self._dir, segment), _OPEN_FLAGS, 0o644)
        except OSError as exc:
            raise JournalError(f"cannot start journal segment {segment} in {self._dir}: {exc}") from exc
        self._retired.append(self._fd)
        self._fd, self._segment, self._size = fd, segment, 0
        self._dir_dirty = True
        # Durable once fsynced even if no record follows (its first write may fail on a full
        # disk): readers then pass the sealed segment, and the shipper may delete it.
        self._dirty.set()
        return fd

    def _undo_short_write(self, written: int) -> None:
        # A partial record (disk full) would wedge readers at it; cut it off again.
        try:
            os.ftruncate(self._fd, self._size)
        except OSError as exc:
            self._broken = f"journal left a partial record and cannot remove it: {exc}"
            raise JournalError(self._broken) from exc
        raise JournalError(f"journal write stopped after {written} bytes (disk full?); the record was not recorded")

    async def start(self) -> None:
        """Start the group-commit task."""
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._run_flusher(), name="bastion-journal-fsync")

    async def flush(self) -> None:
        """fsync everything appended so far."""
        async with self._sync_lock:
            if self._broken is not None:
                raise JournalError(self._broken)
            self._dirty.clear()
            target = Cursor(self._segment, self._size)
            retired, self._retired = self._retired, []
            dir_fd = self._dir_fd if self._dir_dirty else -1
            self._dir_dirty = False
            self.times.sync_started()
            try:
                await asyncio.get_running_loop().run_in_executor(self._executor, _fsync, self._fd, retired, dir_fd)
            except OSError as exc:
                self._broken = f"journal fsync failed, records may be lost; restart the proxy: {exc}"
                raise JournalError(self._broken) from exc
            self.times.synced(target)
            if target != self._durable:
                self._durable = target
                self.has_data.set()

    async def _run_flusher(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._dirty.wait()
            started = loop.time()
            try:
                await self.flush()
            except JournalError as exc:
                log.error("%s", exc)
                return
            # Appends during the wait are batched into the next fsync (group commit).
            await asyncio.sleep(max(0.0, self._fsync_interval - (loop.time() - started)))

    async def close(self) -> None:
        """Stop the group commit, fsync what is left, close the files. Appends then fail."""
        if self._broken == _CLOSED:
            return
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        try:
            if self._broken is None:
                await self.flush()
        finally:
            self._broken = _CLOSED
            # The single worker runs jobs in order, so a cancelled fsync has finished by now.
            await asyncio.get_running_loop().run_in_executor(self._executor, _close_all, [*self._retired, self._fd])
            self._retired = []
            os.close(self._dir_fd)
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # last: the journal is whole before another writer may open it
                self._lock_fd = -1
            self._executor.shutdown(wait=False)


def _fsync(fd: int, retired: list[int], dir_fd: int) -> None:
    try:
        for old in retired:
            os.fsync(old)
        os.fsync(fd)
        if dir_fd >= 0:
            # A new segment's directory entry must be durable too, or its records vanish with it.
            os.fsync(dir_fd)
    finally:
        _close_all(retired)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_tail(path: Path, offset: int, size: int) -> bytes:
    with path.open("rb", buffering=0) as f:
        return os.pread(f.fileno(), size - offset, offset)


def _torn(tail: bytes) -> bool:
    """Whether the bytes after the last valid record are a record cut short (a crash during
    its write), or zeros (a file system that extended the file but lost the data on a power
    cut), rather than a complete record whose crc fails."""
    return len(tail) < _HEADER.size or _HEADER.size + _HEADER.unpack_from(tail)[0] > len(tail) or not tail.strip(b"\0")


def _recover_segment(directory: Path, segment: int, valid: int, size: int, into: int) -> bool:
    """Cut the bytes after the last valid record of `segment`, keeping what may be kept;
    whether valid records after a corrupt one were written to the new segment `into`.

    A header whose length runs past the end is a write a crash cut short: nothing after it
    was ever acknowledged, so it is cut (a copy kept when the disk allows). A complete
    record whose crc fails is corruption: a copy of everything from it on must be kept
    first, then the valid records that follow it back to back (read from its declared end,
    never from inside it, where a caller's argument bytes could pose as a record) are
    written to `into`, made durable, and only then is `segment` cut. A crash between the
    two leaves both, and the next start recovers them once more: nothing is lost, and what
    is delivered twice the graph ingests once (by event id)."""
    path = segment_path(directory, segment)
    tail = _read_tail(path, valid, size)
    if _torn(tail):
        try:
            kept: Path | str = _quarantine(directory, segment, valid, tail)
        except OSError as exc:  # a torn write was never acknowledged: losing it loses nothing
            kept = f"nowhere ({exc})"
        _truncate(path, valid)
        log.warning(
            "journal %s: truncated %d bytes of a torn or corrupt tail at offset %d (kept in %s)",
            path,
            size - valid,
            valid,
            kept,
        )
        return False
    kept = _quarantine(directory, segment, valid, tail)  # raises: cut nothing that is not kept
    salvaged, used = _chain(tail, _HEADER.size + _HEADER.unpack_from(tail)[0])
    if salvaged:
        target = segment_path(directory, into)
        tmp = target.with_name(target.name + ".tmp")
        _write_durably(tmp, b"".join(_HEADER.pack(len(p), zlib.crc32(p)) + p for p in salvaged))
        os.replace(tmp, target)
        _fsync_path(directory)
    _truncate(path, valid)
    log.error(
        "journal %s: a corrupt record at offset %d; the %d bytes from it on kept in %s; %d valid records after "
        "it recovered into segment %d, %d bytes after those unreadable; the corrupt record is lost",
        path,
        valid,
        len(tail),
        kept,
        len(salvaged),
        into if salvaged else segment,
        len(tail) - used,
    )
    return bool(salvaged)


def _chain(tail: bytes, pos: int) -> tuple[list[bytes], int]:
    """The valid records back to back from `pos` of `tail`, and where they end."""
    found: list[bytes] = []
    view = memoryview(tail)
    while pos + _HEADER.size <= len(tail):
        length, crc = _HEADER.unpack_from(tail, pos)
        end = pos + _HEADER.size + length
        if (
            not 0 < length <= _SALVAGE_MAX_RECORD
            or end > len(tail)
            or zlib.crc32(view[pos + _HEADER.size : end]) != crc
        ):
            break
        found.append(bytes(view[pos + _HEADER.size : end]))
        pos = end
    return found, pos


def _truncate(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes) -> None:
    """`data` as the whole of a new file at `path`, fsynced; OSError when any of it is not."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if os.stat(path).st_size != len(data):
        raise OSError(f"{path} holds {os.stat(path).st_size} of {len(data)} bytes")


def _quarantine(directory: Path, segment: int, offset: int, tail: bytes) -> Path:
    """Keep `tail` (segment `segment` from `offset` on) in the quarantine directory, durably,
    under a name no earlier copy holds."""
    folder = directory / QUARANTINE
    folder.mkdir(exist_ok=True)
    for attempt in range(1000):
        suffix = f".{attempt}" if attempt else ""
        path = folder / f"{_PREFIX}{segment:012d}.{offset}{_SUFFIX}{suffix}.corrupt"
        if not path.exists():
            break
    _write_durably(path, tail)
    _fsync_path(folder)
    return path


def _valid_end(path: Path) -> int:
    """Offset just past the last complete, crc-valid record of a segment."""
    offset = 0
    while True:
        chunk = _read_segment(path, offset, None, _SCAN_BYTES, _SCAN_BYTES)
        offset = chunk.end
        if chunk.exhausted:
            return offset


class JournalReader:
    """Reads records in order; safe to use while the journal is being appended to.

    `limit`, when given, returns a position the reader must not pass (the fsynced end);
    `times`, when its records' append times are known (the live journal's reader).
    """

    def __init__(
        self, directory: Path, *, limit: Callable[[], Cursor] | None = None, times: AppendTimes | None = None
    ) -> None:
        self._dir = directory
        self._limit = limit
        self.times = times
        #: The furthest position whose corrupt bytes were kept and logged: a read retried from
        #: an earlier cursor (the graph down, an error further on) must not copy them again.
        self._kept = Cursor(0, 0)

    def first(self) -> Cursor:
        """The start of the oldest segment."""
        segments = list_segments(self._dir)
        return Cursor(segments[0] if segments else 1, 0)

    def end(self) -> Cursor:
        """Where readable records end now: the limit, else the end of the newest segment."""
        if self._limit is not None:
            return self._limit()
        segments = list_segments(self._dir)
        if not segments:
            return Cursor(1, 0)
        return Cursor(segments[-1], segment_path(self._dir, segments[-1]).stat().st_size)

    def read(self, cursor: Cursor, max_records: int, max_bytes: int) -> tuple[list[bytes], Cursor]:
        """Up to `max_records` records (about `max_bytes`, but at least one) from `cursor`, and the next cursor."""
        records: list[bytes] = []
        while len(records) < max_records and max_bytes > 0:
            limit = self._limit() if self._limit is not None else None
            if limit is not None and cursor >= limit:
                break
            # Decide "sealed" BEFORE reading: the writer finishes a segment before it creates
            # the next one, so what we then read of a sealed segment is final, and anything
            # unreadable in it is corruption rather than a record still being written.
            if limit is not None:
                sealed = limit.segment > cursor.segment
            else:
                sealed = segment_path(self._dir, cursor.segment + 1).exists()
            end = limit.offset if limit is not None and not sealed else None
            try:
                chunk = _read_segment(
                    segment_path(self._dir, cursor.segment), cursor.offset, end, max_records - len(records), max_bytes
                )
            except FileNotFoundError:
                moved = self._skip_missing(cursor)
                if moved is None:
                    break
                cursor = moved
                continue
            records += chunk.records
            max_bytes -= chunk.end - cursor.offset
            cursor = Cursor(cursor.segment, chunk.end)
            if chunk.corrupt and (sealed or limit is not None):
                # Bytes that are final (sealed, or fsynced): a crc failure is corruption, not
                # a record being written. Kept, then read past, not a reason to give up the
                # segment's later records, which its deletion once shipped would lose.
                resumed = self._past_corruption(cursor, chunk.size)
                if resumed is not None:
                    cursor = resumed
                    continue
            if not (chunk.exhausted and sealed):
                break
            if chunk.size > chunk.end and cursor > self._kept:
                # Never wedge delivery on bytes that can never be read (e.g. a power cut
                # tore the end of a segment whose successor survived); a copy is kept for
                # the incident record, once.
                log.error(
                    "journal segment %d: %d bytes from offset %d are corrupt and cannot be delivered; skipping them "
                    "(kept in %s)",
                    cursor.segment,
                    chunk.size - chunk.end,
                    chunk.end,
                    self._keep(cursor, chunk.size),
                )
            cursor = Cursor(cursor.segment + 1, 0)
        return records, cursor

    def _past_corruption(self, cursor: Cursor, size: int) -> Cursor | None:
        """Just after the corrupt record at `cursor` (a copy kept in the quarantine directory)
        when a valid record follows it back to back, read from its declared end as
        `_recover_segment` does at open; None when nothing can be read past it. Reads at most
        the record and the next one, whatever the segment's size."""
        path = segment_path(self._dir, cursor.segment)
        head = _read_tail(path, cursor.offset, min(size, cursor.offset + _HEADER.size))
        if len(head) < _HEADER.size:
            return None
        declared = _HEADER.size + _HEADER.unpack_from(head)[0]
        if declared - _HEADER.size > _SALVAGE_MAX_RECORD:
            return None
        tail = _read_tail(path, cursor.offset, min(size, cursor.offset + declared + _HEADER.size + _SALVAGE_MAX_RECORD))
        if not _chain(tail, declared)[0]:
            return None
        if cursor > self._kept:
            log.error(
                "journal segment %d: the record at offset %d is corrupt and lost, with whatever its %d bytes "
                "as framed cover if its length rotted too (kept in %s); the records after it are delivered",
                cursor.segment,
                cursor.offset,
                declared,
                self._keep(cursor, cursor.offset + declared),
            )
        return Cursor(cursor.segment, cursor.offset + declared)

    def _keep(self, cursor: Cursor, end: int) -> str:
        """A copy of the segment's bytes from `cursor` to `end` in the quarantine directory,
        best effort (the reader is giving them up either way): where, or why nowhere. Once
        per position (`_kept`)."""
        self._kept = max(self._kept, cursor)
        try:
            tail = _read_tail(segment_path(self._dir, cursor.segment), cursor.offset, end)
            return str(_quarantine(self._dir, cursor.segment, cursor.offset, tail))
        except OSError as exc:
            return f"nowhere ({exc})"

    def _skip_missing(self, cursor: Cursor) -> Cursor | None:
        segments = list_segments(self._dir)
        later = [n for n in segments if n > cursor.segment]
        if later:
            return Cursor(later[0], 0)
        if segments and segments[-1] < cursor.segment:
            log.warning("journal cursor %s is past the end of the journal (was it recreated?); rereading it", cursor)
            return Cursor(segments[0], 0)
        return None

    def delete_delivered(self, cursor: Cursor) -> None:
        """Delete the segments wholly before `cursor`: its own too when it stands at the end
        of a sealed segment (the writer has moved on). Never the newest (the writer's)."""
        segments = list_segments(self._dir)
        through = cursor.segment - 1
        if segments and cursor.segment < segments[-1]:
            try:
                if cursor.offset >= segment_path(self._dir, cursor.segment).stat().st_size:
                    through = cursor.segment
            except FileNotFoundError:
                through = cursor.segment
        self._delete(segments, through)

    def delete_through(self, segment: int) -> None:
        """Delete segments numbered up to `segment`, except the newest (the writer's)."""
        self._delete(list_segments(self._dir), segment)

    def _delete(self, segments: list[int], through: int) -> None:
        for number in segments[:-1]:
            if number <= through:
                segment_path(self._dir, number).unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class _Chunk:
    records: list[bytes]
    end: int
    #: No further record can be read at `end` now (clean end, partial record, or bad crc).
    exhausted: bool
    size: int
    #: The record at `end` is complete but its crc fails.
    corrupt: bool = False


def _read_segment(path: Path, offset: int, end: int | None, max_records: int, max_bytes: int) -> _Chunk:
    with path.open("rb", buffering=0) as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size if end is None else min(end, os.fstat(fd).st_size)
        available = size - offset
        if available <= 0:
            return _Chunk([], offset, True, size)
        buf = os.pread(fd, min(available, max(max_bytes, _HEADER.size)), offset)
        records, used, ok = _parse(buf, max_records)
        if not ok:
            exhausted = True
        elif len(records) == max_records:
            exhausted = False
        elif len(buf) == available:
            exhausted = True
        elif records:
            exhausted = False  # stopped by max_bytes
        else:
            # The next record alone is larger than max_bytes: return it by itself rather than never.
            length = _HEADER.size + _HEADER.unpack_from(buf)[0]
            if length > available:
                exhausted = True  # incomplete: being written now, or torn
            else:
                records, used, ok = _parse(os.pread(fd, length, offset), 1)
                exhausted = not ok
    return _Chunk(records, offset + used, exhausted, size, corrupt=not ok)


def _parse(buf: bytes, max_records: int) -> tuple[list[bytes], int, bool]:
    """Complete records at the start of `buf`: (records, bytes used, False if a crc failed)."""
    records: list[bytes] = []
    pos = 0
    while len(records) < max_records and len(buf) - pos >= _HEADER.size:
        length, crc = _HEADER.unpack_from(buf, pos)
        if not length:
            # No record is empty (every one is an event), and crc32(b"") is 0: eight zero
            # bytes (a zero-filled tail after a power cut) would pass for a record.
            return records, pos, False
        start = pos + _HEADER.size
        if start + length > len(buf):
            break
        payload = buf[start : start + length]
        if zlib.crc32(payload) != crc:
            return records, pos, False
        records.append(payload)
        pos = start + length
    return records, pos, True
