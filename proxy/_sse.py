"""Reading a server-sent event stream as its chunks arrive: one place for the framing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable


async def sse_data(chunks: AsyncIterator[bytes], on_id: Callable[[bytes], None] | None = None) -> AsyncIterator[bytes]:
    """The `data` of each event (its `data:` lines joined), as soon as the event is complete;
    `on_id` sees each event's `id:` (for resuming with `Last-Event-ID`)."""
    buffer = b""
    async for chunk in chunks:
        buffer += chunk.replace(b"\r\n", b"\n")
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            data = []
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    data.append(line[5:].lstrip())
                elif line.startswith(b"id:") and on_id is not None:
                    on_id(line[3:].strip())
            if data:
                yield b"\n".join(data)
