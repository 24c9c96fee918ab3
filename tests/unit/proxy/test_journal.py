from __future__ import annotations

import asyncio
import logging
import os
import struct
import subprocess
import sys
import tempfile
import textwrap
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion._errors import JournalError
from bastion.proxy._journal import QUARANTINE, Cursor, Journal, JournalReader, list_segments, segment_path


def frame(payload: bytes) -> bytes:
    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


def read_all(reader: JournalReader, max_records: int = 1000, max_bytes: int = 1 << 20) -> tuple[list[bytes], Cursor]:
    records: list[bytes] = []
    cursor = reader.first()
    while True:
        batch, after = reader.read(cursor, max_records, max_bytes)
        if after == cursor:
            return records, cursor
        records += batch
        cursor = after


async def test_appended_records_read_back_in_order(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    payloads = [f"event-{i}".encode() for i in range(10)]
    for payload in payloads:
        journal.append(payload)
    await journal.close()

    records, end = JournalReader(tmp_path).read(Cursor(1, 0), 100, 1 << 20)

    assert records == payloads
    assert end == Cursor(1, sum(len(frame(p)) for p in payloads))
    assert segment_path(tmp_path, 1).read_bytes() == b"".join(frame(p) for p in payloads)


async def test_many_records_roll_across_segments_and_read_back_in_order(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, segment_bytes=100)
    payloads = [f"event-{i:04d}".encode() for i in range(300)]  # 18 bytes framed: 5 per segment
    for payload in payloads:
        journal.append(payload)
    await journal.close()

    segments = list_segments(tmp_path)
    assert segments == list(range(1, 61))
    assert all(segment_path(tmp_path, n).stat().st_size == 90 for n in segments)
    assert read_all(JournalReader(tmp_path), max_records=7)[0] == payloads


async def test_a_record_larger_than_a_segment_or_the_read_budget_is_kept_whole(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, segment_bytes=64)
    payloads = [b"small", b"x" * 500, b"after"]
    for payload in payloads:
        journal.append(payload)
    await journal.close()

    assert list_segments(tmp_path) == [1, 2, 3]
    assert read_all(JournalReader(tmp_path), max_records=10, max_bytes=16)[0] == payloads


async def test_torn_tail_is_truncated_on_open_and_appends_continue(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal.open(tmp_path)
    journal.append(b"one")
    journal.append(b"two")
    await journal.close()
    path = segment_path(tmp_path, 1)
    good_size = path.stat().st_size
    with path.open("ab") as f:
        f.write(frame(b"three, torn by a crash")[:13])

    with caplog.at_level(logging.WARNING, logger="bastion.proxy._journal"):
        journal = Journal.open(tmp_path)
    journal.append(b"four")
    await journal.close()

    kept = tmp_path / QUARANTINE / f"journal-000000000001.{good_size}.wal.corrupt"
    assert [r.getMessage() for r in caplog.records] == [
        f"journal {path}: truncated 13 bytes of a torn or corrupt tail at offset {good_size} (kept in {kept})"
    ]
    assert kept.read_bytes() == frame(b"three, torn by a crash")[:13]
    assert read_all(JournalReader(tmp_path))[0] == [b"one", b"two", b"four"]


async def test_a_record_still_being_written_is_not_returned_until_complete(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    journal.append(b"done")
    await journal.close()
    path = segment_path(tmp_path, 1)
    partial = frame(b"in flight")
    with path.open("ab") as f:
        f.write(partial[:10])
    reader = JournalReader(tmp_path)

    records, cursor = reader.read(Cursor(1, 0), 10, 1 << 20)
    assert records == [b"done"]
    assert reader.read(cursor, 10, 1 << 20) == ([], cursor)

    with path.open("ab") as f:
        f.write(partial[10:])
    assert reader.read(cursor, 10, 1 << 20) == ([b"in flight"], Cursor(1, cursor.offset + len(partial)))


async def test_corrupt_crc_stops_the_reader_at_that_record(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    for payload in (b"first", b"second", b"third"):
        journal.append(payload)
    await journal.close()
    path = segment_path(tmp_path, 1)
    data = bytearray(path.read_bytes())
    second = len(frame(b"first"))
    data[second + 8] ^= 0xFF  # first payload byte of "second"
    path.write_bytes(bytes(data))
    reader = JournalReader(tmp_path)

    records, cursor = reader.read(Cursor(1, 0), 10, 1 << 20)

    assert records == [b"first"]
    assert cursor == Cursor(1, second)
    assert reader.read(cursor, 10, 1 << 20) == ([], cursor)


async def test_corruption_in_a_sealed_segment_is_skipped_so_delivery_continues(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal.open(tmp_path, segment_bytes=40)
    for payload in (b"a-first", b"a-second", b"b-first"):  # 15 bytes each: two per segment
        journal.append(payload)
    await journal.close()
    path = segment_path(tmp_path, 1)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))

    with caplog.at_level(logging.ERROR, logger="bastion.proxy._journal"):
        records, _ = read_all(JournalReader(tmp_path))

    assert records == [b"a-first", b"b-first"]
    assert "16 bytes from offset 15 are corrupt" in caplog.text


async def test_append_after_close_raises_journal_error(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    await journal.start()
    await journal.close()

    with pytest.raises(JournalError, match="closed"):
        journal.append(b"late")


async def test_append_never_fsyncs_and_one_group_commit_covers_a_burst(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal.open(tmp_path, fsync_interval=0.005)
    fsynced: list[int] = []
    real_fsync = os.fsync

    def observe(fd: int) -> None:  # observation only: the real fsync still runs
        real_fsync(fd)
        fsynced.append(os.fstat(fd).st_ino)

    monkeypatch.setattr(os, "fsync", observe)
    await journal.start()

    for _ in range(100):
        journal.append(b"x")
    assert fsynced == []
    assert journal.durable == Cursor(1, 0)

    async with asyncio.timeout(5):
        await journal.has_data.wait()
    assert journal.durable == Cursor(1, 100 * len(frame(b"x")))
    assert fsynced == [segment_path(tmp_path, 1).stat().st_ino]
    await journal.close()


async def test_durable_reader_returns_only_fsynced_records(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, segment_bytes=40)
    reader = journal.reader()
    for payload in (b"one", b"two", b"three", b"four"):
        journal.append(payload)

    assert reader.read(Cursor(1, 0), 10, 1 << 20) == ([], Cursor(1, 0))
    await journal.flush()
    assert read_all(reader)[0] == [b"one", b"two", b"three", b"four"]
    await journal.close()


def test_records_survive_a_crash_of_the_writing_process(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import os, sys
        from pathlib import Path
        from bastion.proxy._journal import Journal
        journal = Journal.open(Path(sys.argv[1]), segment_bytes=4096)
        for i in range(1000):
            journal.append(b"event-%d" % i)
        os._exit(0)  # no flush, no close: as if the proxy had crashed
        """
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, timeout=60)

    assert read_all(JournalReader(tmp_path))[0] == [b"event-%d" % i for i in range(1000)]


async def test_a_failed_fsync_breaks_the_journal_for_good(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = Journal.open(tmp_path)
    journal.append(b"maybe lost")

    def failing_fsync(fd: int) -> None:  # fault injection: a disk error cannot be produced otherwise
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(JournalError, match="fsync failed"):
        await journal.flush()
    monkeypatch.undo()

    with pytest.raises(JournalError, match="fsync failed"):
        journal.append(b"next")
    await journal.close()


async def test_a_short_write_is_undone_and_the_next_append_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal.open(tmp_path)
    journal.append(b"before")

    def short_writev(fd: int, buffers: list[bytes]) -> int:  # fault injection: a disk filling up mid-write
        return os.write(fd, b"".join(buffers)[:5])

    monkeypatch.setattr(os, "writev", short_writev)
    with pytest.raises(JournalError, match="disk full"):
        journal.append(b"half")
    monkeypatch.undo()
    journal.append(b"after")
    await journal.close()

    assert read_all(JournalReader(tmp_path))[0] == [b"before", b"after"]


async def test_delete_through_keeps_the_active_segment(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, segment_bytes=20)
    for i in range(4):
        journal.append(b"record-%d" % i)  # 16 bytes framed: one per segment
    await journal.close()
    reader = JournalReader(tmp_path)

    reader.delete_through(2)
    assert list_segments(tmp_path) == [3, 4]
    reader.delete_through(10)
    assert list_segments(tmp_path) == [4]
    assert read_all(reader)[0] == [b"record-3"]


@settings(max_examples=60, deadline=None)
@given(
    payloads=st.lists(st.binary(min_size=1, max_size=200), max_size=40),
    segment_bytes=st.integers(min_value=8, max_value=1024),
    max_records=st.integers(min_value=1, max_value=10),
    max_bytes=st.integers(min_value=1, max_value=512),
)
async def test_any_payloads_round_trip_in_order(
    payloads: list[bytes], segment_bytes: int, max_records: int, max_bytes: int
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        journal = Journal.open(Path(directory), segment_bytes=segment_bytes)
        for payload in payloads:
            journal.append(payload)
        await journal.close()

        assert read_all(JournalReader(Path(directory)), max_records, max_bytes)[0] == payloads


# --- one journal, one writer ------------------------------------------------------------------


async def test_a_second_writer_on_the_same_directory_is_refused_until_the_first_closes(tmp_path: Path) -> None:
    first = Journal.open(tmp_path)
    first.append(b"one")

    with pytest.raises(JournalError, match=rf"in use by another proxy \(pid {os.getpid()}\).*own BASTION_HOME"):
        Journal.open(tmp_path)
    await first.close()
    second = Journal.open(tmp_path)
    second.append(b"two")
    await second.close()

    assert read_all(JournalReader(tmp_path))[0] == [b"one", b"two"]


def test_a_writer_killed_with_sigkill_leaves_no_lock_behind(tmp_path: Path) -> None:
    # The lock is the kernel's (flock): it goes with the process, so a crash never
    # keeps the restarted proxy from opening its journal.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import sys, time
                from pathlib import Path
                from bastion.proxy._journal import Journal
                Journal.open(Path({str(tmp_path)!r})).append(b"held")
                print("open", flush=True)
                time.sleep(60)
            """),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"open\n"
        with pytest.raises(JournalError, match=rf"pid {holder.pid}"):
            Journal.open(tmp_path)
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()

    journal = Journal.open(tmp_path)
    assert read_all(journal.reader())[0] == [b"held"]
    asyncio.run(journal.close())


def _corrupt_journal(tmp_path: Path, count: int = 10) -> tuple[list[bytes], Path, bytes, int]:
    """A journal of `count` records with one byte of the fourth record's payload flipped:
    its records, its file, the file's bytes, and where the fourth record starts."""
    payloads = [f"record {n:02d}".encode() * 3 for n in range(count)]
    path = segment_path(tmp_path, 1)
    bad = sum(len(frame(p)) for p in payloads[:3])
    data = bytearray(b"".join(frame(p) for p in payloads))
    data[bad + 12] ^= 0xFF
    path.write_bytes(bytes(data))
    return payloads, path, bytes(data), bad


async def test_a_corrupt_record_is_quarantined_and_the_valid_records_after_it_are_recovered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # An attacker's probe flipped one byte a third into a segment: every record after it was
    # truncated away with a warning, 28 forwarded calls lost from the journal and the graph.
    payloads, _, data, bad = _corrupt_journal(tmp_path)

    with caplog.at_level(logging.WARNING, logger="bastion.proxy._journal"):
        journal = Journal.open(tmp_path)
    journal.append(b"after the restart")
    await journal.close()

    records = read_all(JournalReader(tmp_path))[0]
    assert records == [*payloads[:3], *payloads[4:], b"after the restart"]
    [message] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert f"a corrupt record at offset {bad}" in message.getMessage()
    assert "6 valid records after it recovered into segment 2, 0 bytes after those unreadable" in message.getMessage()
    [kept] = (tmp_path / QUARANTINE).iterdir()
    assert kept.read_bytes() == bytes(data[bad:])
    assert list_segments(tmp_path) == [1, 2]


async def test_a_length_that_runs_past_the_end_is_a_tear_and_a_record_inside_it_is_never_salvaged(
    tmp_path: Path,
) -> None:
    # A reviewer's probe: salvage searched byte by byte inside a torn record, where a caller's
    # argument bytes can hold a whole frame, and shipped it as the proxy's own event.
    forged = frame(b"FORGED-EVENT")
    path = segment_path(tmp_path, 1)
    torn = frame(b"\x00" * 40 + forged + b"\x00" * 40)[:-20]
    path.write_bytes(frame(b"legit-1") + torn)

    journal = Journal.open(tmp_path)
    await journal.close()

    assert read_all(JournalReader(tmp_path))[0] == [b"legit-1"]
    assert list_segments(tmp_path) == [1]
    [kept] = (tmp_path / QUARANTINE).iterdir()
    assert kept.read_bytes() == torn


async def test_a_crash_between_writing_the_recovered_records_and_the_cut_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payloads, *_ = _corrupt_journal(tmp_path)

    def crash(*_: object) -> None:  # fault injection: the process dies before the old segment is cut
        raise OSError(5, "crashed")

    monkeypatch.setattr("bastion.proxy._journal._truncate", crash)
    with pytest.raises(JournalError, match="crashed"):
        Journal.open(tmp_path)
    monkeypatch.undo()
    assert list_segments(tmp_path) == [1, 2]

    journal = Journal.open(tmp_path)  # recovers segment 1 again: the graph ingests by event id
    await journal.close()
    records = read_all(JournalReader(tmp_path))[0]
    assert records == [*payloads[:3], *payloads[4:], *payloads[4:]]


async def test_nothing_is_cut_when_the_corrupt_bytes_cannot_be_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, path, data, _ = _corrupt_journal(tmp_path)

    def full(*_: object) -> None:  # fault injection: a full disk
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("bastion.proxy._journal._write_durably", full)
    with pytest.raises(JournalError, match="No space left"):
        Journal.open(tmp_path)
    assert path.read_bytes() == data


async def test_corruption_in_an_older_segment_is_recovered_at_open_before_the_shipper_can_delete_it(
    tmp_path: Path,
) -> None:
    # A reviewer's probe: only the newest segment was checked, so a corrupt record in an
    # older one (a graph down for hours rolls many) lost everything after it, skipped.
    journal = Journal.open(tmp_path, segment_bytes=400)
    payloads = [f"record {n:02d}".encode() * 3 for n in range(30)]
    for payload in payloads:
        journal.append(payload)
    await journal.close()
    segments = list_segments(tmp_path)
    assert len(segments) >= 3
    first = segment_path(tmp_path, segments[0])
    data = bytearray(first.read_bytes())
    bad = 2 * len(frame(payloads[0]))  # the third record
    data[bad + 12] ^= 0xFF
    first.write_bytes(bytes(data))
    in_first = len(data) // len(frame(payloads[0]))

    journal = Journal.open(tmp_path)
    journal.append(b"after")
    await journal.close()

    # The corrupt third record is lost; the ones after it come after the newest segment's.
    records = read_all(JournalReader(tmp_path))[0]
    assert records == [*payloads[:2], *payloads[in_first:], *payloads[3:in_first], b"after"]
    assert list_segments(tmp_path) == [*segments, segments[-1] + 1]
    assert len(list((tmp_path / QUARANTINE).iterdir())) == 1


def _flip_in_place(path: Path, offset: int) -> None:
    """One byte of `path` flipped without replacing the file (the writer keeps its fd)."""
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0xFF]))


@pytest.mark.parametrize("sealed", [True, False], ids=["sealed-segment", "newest-segment"])
async def test_a_record_corrupted_while_the_proxy_runs_is_kept_and_read_past(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, sealed: bool
) -> None:
    # At open every segment is checked; a byte that rots afterwards, in a segment still to be
    # shipped, made the reader skip the rest of a sealed segment (lost once the shipper deleted
    # it) or stop for good at the newest one (delivery wedged until a restart).
    journal = Journal.open(tmp_path, segment_bytes=1 << 20)
    payloads = [f"record {n:02d}".encode() * 3 for n in range(8)]
    for payload in payloads:
        journal.append(payload)
    if sealed:
        journal._segment_bytes = 1  # the next append rolls to segment 2
        journal.append(b"in segment 2")
    await journal.flush()
    bad = sum(len(frame(p)) for p in payloads[:3])
    _flip_in_place(segment_path(tmp_path, 1), bad + 12)

    reader = journal.reader()
    with caplog.at_level(logging.ERROR, logger="bastion.proxy._journal"):
        records, end = read_all(reader)

    assert records == [*payloads[:3], *payloads[4:], *([b"in segment 2"] if sealed else [])]
    assert end == journal.durable
    [kept] = (tmp_path / QUARANTINE).iterdir()
    assert kept.read_bytes()[:12] == frame(payloads[3])[:12]
    assert len(kept.read_bytes()) == len(frame(payloads[3]))
    assert f"the record at offset {bad} is corrupt and lost, with whatever its {len(frame(payloads[3]))} bytes" in (
        caplog.text
    )
    # Read again from the start (a shipper retrying after the graph refused): nothing is
    # copied or logged twice, and the same records come back.
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="bastion.proxy._journal"):
        again, _ = read_all(reader)
    assert again == records
    assert len(list((tmp_path / QUARANTINE).iterdir())) == 1
    assert "corrupt" not in caplog.text
    await journal.close()


async def test_a_corrupt_last_record_of_a_sealed_segment_is_still_skipped(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, segment_bytes=1 << 20)
    journal.append(b"only")
    journal._segment_bytes = 1
    journal.append(b"next")
    await journal.flush()
    _flip_in_place(segment_path(tmp_path, 1), 9)

    reader = journal.reader()
    assert read_all(reader)[0] == [b"next"]
    [kept] = (tmp_path / QUARANTINE).iterdir()  # nothing to read past it: skipped as before, but kept
    assert kept.read_bytes() == segment_path(tmp_path, 1).read_bytes()
    assert read_all(reader)[0] == [b"next"]  # a retry copies nothing again
    assert len(list((tmp_path / QUARANTINE).iterdir())) == 1
    await journal.close()


# --- zeros are no records ---------------------------------------------------------------------


async def test_an_empty_record_is_refused_at_append(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    with pytest.raises(JournalError, match="empty record"):
        journal.append(b"")
    journal.append(b"one")
    await journal.close()
    assert read_all(JournalReader(tmp_path))[0] == [b"one"]


async def test_a_zero_filled_tail_is_a_tear_not_empty_records(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # crc32(b"") is 0, so eight zero bytes once passed for an empty record: a 4 KiB tail of
    # zeros (a power cut after the file grew) read as 512 records, shipped as empty events.
    journal = Journal.open(tmp_path)
    journal.append(b"one")
    await journal.close()
    path = segment_path(tmp_path, 1)
    good_size = path.stat().st_size
    with path.open("ab") as f:
        f.write(bytes(4096))
    assert read_all(JournalReader(tmp_path))[0] == [b"one"]

    with caplog.at_level(logging.WARNING, logger="bastion.proxy._journal"):
        journal = Journal.open(tmp_path)
    journal.append(b"two")
    await journal.close()

    assert path.stat().st_size == good_size + len(frame(b"two"))
    assert f"truncated 4096 bytes of a torn or corrupt tail at offset {good_size}" in caplog.text
    assert "corrupt record" not in caplog.text
    assert read_all(JournalReader(tmp_path))[0] == [b"one", b"two"]


async def test_zeros_over_records_of_a_running_journal_are_never_read_as_records(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, segment_bytes=1 << 20)
    payloads = [f"record {n:02d}".encode() * 3 for n in range(8)]
    for payload in payloads:
        journal.append(payload)
    await journal.flush()
    start = sum(len(frame(p)) for p in payloads[:3])
    with segment_path(tmp_path, 1).open("r+b") as f:
        f.seek(start)
        f.write(bytes(2 * len(frame(payloads[3]))))

    records, _ = read_all(journal.reader())
    # No empty record is made up; the reader stops at the zeros (no valid record follows
    # their first header's declared end), and what comes after them waits: the known limit
    # of a rotted length (docs/architecture.md), never a record invented.
    assert records == payloads[:3]
    await journal.close()
