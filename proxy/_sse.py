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

_LINE_END = re.compile(rb"\r\n|\r|\n")


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
    body, the last event even when no blank line closes it (`close`)."""

    def __init__(self) -> None:
        self._pending = b""  # the bytes after the last complete line
        self._fields: list[tuple[bytes, bytes]] = []
        self._raw: list[bytes] = []

    def feed(self, chunk: bytes) -> list[Event]:
        data = self._pending + chunk
        events: list[Event] = []
        start = 0
        for end in _LINE_END.finditer(data):
            if end.group() == b"\r" and end.end() == len(data):
                break  # maybe half of a CRLF: wait for the next byte
            self._line(data[start : end.start()], data[start : end.end()], events)
            start = end.end()
        self._pending = data[start:]
        return events

    def close(self) -> list[Event]:
        """What is left at the end of the stream: a last event without its blank line (an
        agent's lenient reader may take it, so filters and the tap read it too)."""
        events: list[Event] = []
        if self._pending:
            self._line(self._pending.rstrip(b"\r"), self._pending, events)
            self._pending = b""
        if self._raw:
            events.append(Event(tuple(self._fields), b"".join(self._raw)))
            self._fields, self._raw = [], []
        return events

    @property
    def buffered(self) -> int:
        """Bytes held for an event not yet complete (callers bound it)."""
        return len(self._pending) + sum(len(piece) for piece in self._raw)

    def _line(self, line: bytes, raw: bytes, events: list[Event]) -> None:
        self._raw.append(raw)
        if not line:
            # Even an event of comments only, or a stray blank line: relays keep every byte.
            events.append(Event(tuple(self._fields), b"".join(self._raw)))
            self._fields, self._raw = [], []
            return
        if line.startswith(b":"):
            return  # a comment
        name, _, value = line.partition(b":")
        self._fields.append((name, value[1:] if value.startswith(b" ") else value))


def events(body: bytes) -> list[Event]:
    """Every event of a whole stream, the last one even if left open."""
    reader = EventReader()
    return [*reader.feed(body), *reader.close()]


def encode(fields: list[tuple[bytes, bytes]]) -> bytes:
    """An event's bytes (LF line ends; a value with line breaks goes as several lines)."""
    lines: list[bytes] = []
    for name, value in fields:
        lines.extend(name + b": " + part for part in _LINE_END.split(value))
    return b"\n".join(lines) + b"\n\n"


async def sse_data(chunks: AsyncIterator[bytes], on_id: Callable[[bytes], None] | None = None) -> AsyncIterator[bytes]:
    """The `data` of each event, as soon as the event is complete; `on_id` sees each
    event's `id` (for resuming with `Last-Event-ID`)."""
    reader = EventReader()
    async for chunk in chunks:
        for event in reader.feed(chunk):
            if on_id is not None and (event_id := event.id) is not None:
                on_id(event_id.strip())
            if data := event.data:
                yield data
