"""Server-sent event framing, in one place: every reader of an event stream in the proxy
(the relay of A2A and stdio-bridged streams, the result tap, the listing filter, the task
sniffer, the tool catalog) splits events here, as the agent's own SDK will.

The WHATWG rules: a line ends in CRLF, LF or a lone CR, and a CR at the end of one chunk
may be the first half of a CRLF split across two; a blank line ends an event; a line
starting with `:` is a comment; `name: value` loses one space after the colon; an event's
`data` is its `data` lines joined with LF. Each reader used to split on `\\n\\n` its own
way; one that missed a CRLF- or CR-framed stream let an upstream's `tools/list` reach the
agent unfiltered (the agent's SDK reads every framing).

`Event.raw` keeps the event's bytes as they came, so a filter can rewrite one event and
relay the others byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from bastion._errors import UpstreamError

_LINE_END = re.compile(rb"\r\n|\r|\n")
#: Longest event a relay buffers (as long as a stdio upstream's longest line).
MAX_EVENT_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Event:
    """One event: its fields in order, and its bytes as received (through the blank line
    that ended it, or to the end of the stream for a last event left open)."""

    fields: tuple[tuple[bytes, bytes], ...]
    raw: bytes

    @property
    def data(self) -> bytes | None:
        """The `data` lines joined with LF; None when the event has none."""
        lines = [value for name, value in self.fields if name == b"data"]
        return b"\n".join(lines) if lines else None

    @property
    def id(self) -> bytes | None:
        """The last `id` the event gives."""
        ids = [value for name, value in self.fields if name == b"id"]
        return ids[-1] if ids else None


class EventReader:
    """Splits an event stream into events as its chunks arrive (`feed`), and, for a whole
    body, the last event even when no blank line closes it (`close`). Each chunk is scanned
    once: a long line arriving in many chunks costs its length, not its length squared.

    `feed` raises UpstreamError once the event still open holds more than `max_event`
    bytes: a stream that never sends a blank line would otherwise be buffered whole. Every
    streaming reader is bounded here, not by a check of its own (None: a body already in
    memory whole, `events`)."""

    def __init__(self, max_event: int | None = MAX_EVENT_BYTES) -> None:
        self._max_event = max_event
        self._pending: list[bytes] = []  # the pieces of a line not yet ended
        self._cr = False  # the last chunk ended in a CR: maybe half of a CRLF
        self._fields: list[tuple[bytes, bytes]] = []
        self._raw: list[bytes] = []
        self._buffered = 0  # bytes held for an event not yet complete

    @property
    def buffered(self) -> int:
        """Bytes held for an event not yet complete."""
        return self._buffered

    def feed(self, chunk: bytes) -> list[Event]:
        """The events `chunk` completes; UpstreamError past `max_event` (above)."""
        events = self._split(chunk)
        if self._max_event is not None and self._buffered > self._max_event:
            raise UpstreamError(f"an event of the upstream's stream is over {self._max_event} bytes")
        return events

    def _split(self, chunk: bytes) -> list[Event]:
        # Line ends are found with bytes.find (memchr), each of CR and LF searched for again
        # only once passed: a 4 MB event took 22 ms through a regular expression.
        events: list[Event] = []
        start = 0
        if self._cr:
            self._cr = False
            start = 1 if chunk.startswith(b"\n") else 0
            self._end_line(b"", b"\r\n" if start else b"\r", events)
        size = len(chunk)
        cr = chunk.find(b"\r", start)
        lf = chunk.find(b"\n", start)
        while cr >= 0 or lf >= 0:
            if cr < 0 or 0 <= lf < cr:
                end, ending = lf, b"\n"
            elif cr + 1 == size:  # maybe the first half of a CRLF: wait for the next byte
                self._hold(chunk[start:cr])
                self._cr = True
                return events
            else:
                end, ending = cr, b"\r\n" if chunk[cr + 1] == 0x0A else b"\r"
            self._end_line(chunk[start:end], ending, events)
            start = end + len(ending)
            if cr < start:
                cr = chunk.find(b"\r", start) if cr >= 0 else -1
            if lf < start:
                lf = chunk.find(b"\n", start) if lf >= 0 else -1
        self._hold(chunk[start:])
        return events

    def close(self) -> list[Event]:
        """What is left at the end of the stream: a last event without its blank line (an
        agent's lenient reader may take it, so filters and the tap read it too)."""
        events: list[Event] = []
        if self._pending or self._cr:
            self._end_line(b"", b"\r" if self._cr else b"", events)
            self._cr = False
        if self._raw:
            events.append(Event(tuple(self._fields), b"".join(self._raw)))
            self._fields, self._raw, self._buffered = [], [], 0
        return events

    def _hold(self, piece: bytes) -> None:
        if piece:
            self._pending.append(piece)
            self._buffered += len(piece)

    def _end_line(self, last: bytes, ending: bytes, events: list[Event]) -> None:
        """End the line whose held pieces and then `last` make it, with `ending`."""
        if self._pending:
            line = b"".join([*self._pending, last])
            self._pending = []
        else:
            line = last
        self._raw.append(line + ending)
        self._buffered += len(last) + len(ending)
        if not line:
            # Even an event of comments only, or a stray blank line: relays keep every byte.
            events.append(Event(tuple(self._fields), b"".join(self._raw)))
            self._fields, self._raw, self._buffered = [], [], 0
        elif not line.startswith(b":"):  # a comment otherwise
            name, _, value = line.partition(b":")
            self._fields.append((name, value[1:] if value.startswith(b" ") else value))


def events(body: bytes) -> list[Event]:
    """Every event of a whole stream, the last one even if left open."""
    reader = EventReader(max_event=None)
    return [*reader.feed(body), *reader.close()]


def encode(fields: list[tuple[bytes, bytes]]) -> bytes:
    """An event's bytes (LF line ends; a value with line breaks goes as several lines)."""
    lines: list[bytes] = []
    for name, value in fields:
        lines.extend(name + b": " + part for part in _LINE_END.split(value))
    return b"\n".join(lines) + b"\n\n"


async def sse_data(
    chunks: AsyncIterator[bytes], on_id: Callable[[bytes], None] | None = None, *, max_event: int = MAX_EVENT_BYTES
) -> AsyncIterator[bytes]:
    """The `data` of each event, as soon as the event is complete; `on_id` sees each
    event's `id` (for resuming with `Last-Event-ID`). UpstreamError when an event grows
    past `max_event` bytes without ending (a stream that never sends a blank line would
    otherwise be buffered whole)."""
    reader = EventReader(max_event)
    async for chunk in chunks:
        for event in reader.feed(chunk):
            if on_id is not None and (event_id := event.id) is not None:
                on_id(event_id.strip())
            if data := event.data:
                yield data
