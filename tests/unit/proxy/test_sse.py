"""The one event-stream framer every reader in the proxy uses (WHATWG framing)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion._errors import UpstreamError
from bastion.proxy._sse import EventReader, encode, events, sse_data

STREAM = b'event: message\r\ndata: {"a":1}\r\n\r\n: keep-alive\rid: 7\rdata:x\rdata\r\rdata: tail'


def _split_every(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 2, 3, 5, len(STREAM)])
def test_events_are_the_same_however_the_stream_is_cut(size: int) -> None:
    reader = EventReader()
    found = [event for chunk in _split_every(STREAM, size) for event in reader.feed(chunk)]
    found += reader.close()
    assert [event.data for event in found] == [b'{"a":1}', b"x\n", b"tail"]
    assert [event.id for event in found] == [None, b"7", None]
    # Every byte is in exactly one event, in order: a filter can relay the others untouched.
    assert b"".join(event.raw for event in found) == STREAM


def _reference(stream: bytes) -> list[tuple[tuple[tuple[bytes, bytes], ...], bytes]]:
    """The WHATWG framing of a whole stream, written as plainly as possible: the reader's
    line search is checked against it."""
    found: list[tuple[tuple[tuple[bytes, bytes], ...], bytes]] = []
    fields: list[tuple[bytes, bytes]] = []
    raw = b""
    for line, ending in re.findall(rb"([^\r\n]*)(\r\n|\r|\n|$)", stream)[:-1] or []:
        raw += line + ending
        if not line and ending:
            found.append((tuple(fields), raw))
            fields, raw = [], b""
        elif line and not line.startswith(b":"):
            name, _, value = line.partition(b":")
            fields.append((name, value[1:] if value.startswith(b" ") else value))
    if raw:
        found.append((tuple(fields), raw))
    return found


@given(
    st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"data", b": ", b":", b"x", b"id: 1", b"\n\n"]), max_size=40),
    st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=10),
)
def test_the_reader_frames_any_stream_as_the_plain_reference_does(parts: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(parts)
    reader = EventReader()
    chunks, start, turn = [], 0, 0
    while start < len(stream):
        chunks.append(stream[start : start + cuts[turn % len(cuts)]])
        start += cuts[turn % len(cuts)]
        turn += 1
    found = [event for chunk in chunks for event in reader.feed(chunk)] + reader.close()
    assert [(event.fields, event.raw) for event in found] == _reference(stream)


def test_a_cr_at_the_end_of_a_chunk_waits_for_the_next_byte() -> None:
    reader = EventReader()
    assert reader.feed(b"data: 1\r\n\r") == []  # the CR may be half of a CRLF
    (event,) = reader.feed(b"\n")
    assert (event.data, event.raw) == (b"1", b"data: 1\r\n\r\n")
    assert reader.feed(b"data: 2\r") == []
    (event,) = reader.feed(b"\rdata: 3")  # a lone CR, then a second one: the event ends
    assert event.data == b"2"
    assert [event.data for event in reader.close()] == [b"3"]


def test_one_space_after_the_colon_is_dropped_and_fields_keep_their_order() -> None:
    (event,) = events(b"data:  two spaces\nevent: x\ndata:\n\n")
    assert event.fields == ((b"data", b" two spaces"), (b"event", b"x"), (b"data", b""))
    assert event.data == b" two spaces\n"


def test_comments_and_blank_lines_are_events_without_data() -> None:
    found = events(b": ping\n\n\n")
    assert [(event.fields, event.raw) for event in found] == [((), b": ping\n\n"), ((), b"\n")]
    assert all(event.data is None for event in found)


def test_buffered_counts_what_an_open_event_holds() -> None:
    reader = EventReader()
    reader.feed(b"data: " + b"x" * 1000)
    assert reader.buffered == 1006
    reader.feed(b"\n")
    assert reader.buffered == 1007


def test_encode_writes_each_line_of_a_value_as_a_field() -> None:
    encoded = encode([(b"event", b"message"), (b"data", b"a\r\nb\rc")])
    assert encoded == b"event: message\ndata: a\ndata: b\ndata: c\n\n"
    (event,) = events(encoded)
    assert event.data == b"a\nb\nc"


async def test_sse_data_yields_each_complete_event_and_reports_ids() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for chunk in _split_every(STREAM, 4):
            yield chunk

    ids: list[bytes] = []
    found = [data async for data in sse_data(chunks(), ids.append)]
    # The last event has no blank line: a relay does not pass on what may still change.
    assert found == [b'{"a":1}', b"x\n"]
    assert ids == [b"7"]


async def test_an_event_that_never_ends_is_refused_past_the_bound() -> None:
    async def endless() -> AsyncIterator[bytes]:
        yield b'data: {"jsonrpc": "2.0"}\n\n'
        while True:
            yield b"data: " + b"x" * 1000 + b"\n"

    found: list[bytes] = []

    async def read() -> None:
        async for data in sse_data(endless(), max_event=65536):
            found.append(data)

    with pytest.raises(UpstreamError, match="over 65536 bytes"):
        await read()
    assert found == [b'{"jsonrpc": "2.0"}']


def test_a_long_line_in_many_chunks_is_one_field() -> None:
    reader = EventReader()
    for _ in range(2048):
        assert reader.feed(b"y" * 4096) == []
    (event,) = reader.feed(b"\r\n\r\n")
    assert event.fields == ((b"y" * (2048 * 4096), b""),)
    assert reader.buffered == 0


async def test_a_listing_stream_with_a_priming_event_is_filtered_and_the_priming_event_kept() -> None:
    # 2025-11 servers open a stream with `id: …` and an empty `data:` (for resumption).
    from bastion.proxy._listing import filter_listing

    listing = b'{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a"},{"name":"b"}]}}'
    body = b"id: 0\r\ndata:\r\n\r\nevent: message\r\ndata: " + listing + b"\r\n\r\n"

    async def only_a(actions: Any) -> list[bool]:
        return [action.tool == "a" for action in actions]

    filtered = await filter_listing(body, sse=True, method="tools/list", server="s", allowed=only_a)
    assert filtered.startswith(b"id: 0\r\ndata:\r\n\r\n")
    (_, answer) = events(filtered)
    assert answer.data == b'{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a"}]}}'
