"""The client end of MCP streamable HTTP: one aggregated session's link to one upstream.

A `Link` holds one upstream session (the 2025-11 handshake, with the client's own
`initialize` params, so an upstream sees the capabilities the real client declared) or,
for stateless (2026-07) clients, none. It POSTs each message, reads the answer as JSON
or SSE as it arrives, follows the upstream's own resumption (`Last-Event-ID` after an
SSE stream that ended before its answer), and keeps a GET stream open for messages
that belong to no request. Everything the upstream sends is handed to `on_message`
with the id of the upstream request it came with (None from the GET stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from bastion._errors import UpstreamError

from ._sse import sse_data
from ._upstream import UpstreamPool, UpstreamResponse

log = logging.getLogger("bastion.proxy")

#: (message, the upstream request id it answers or came with, or None)
OnMessage = Callable[[dict[str, Any], Any], None]
_ACCEPT = (b"accept", b"application/json, text/event-stream")
_JSON = (b"content-type", b"application/json")
_MAX_RESUMES = 5


class Link:
    def __init__(self, server: str, pool: UpstreamPool, on_message: OnMessage) -> None:
        self.server = server
        self._pool = pool
        self._path = pool.path.encode()
        self._on_message = on_message
        self._ids = itertools.count(1)
        self._session: bytes | None = None
        self._version: bytes | None = None
        self._listener: asyncio.Task[None] | None = None
        self.result: dict[str, Any] = {}

    def next_id(self) -> str:
        return f"bastion-{self.server}-{next(self._ids)}"

    def _headers(self, extra: list[tuple[bytes, bytes]] | None = None) -> list[tuple[bytes, bytes]]:
        headers = [_ACCEPT, _JSON, *(extra or [])]
        if self._session is not None:
            headers.append((b"mcp-session-id", self._session))
        if self._version is not None:
            headers.append((b"mcp-protocol-version", self._version))
        return headers

    async def initialize(self, params: dict[str, Any]) -> dict[str, Any]:
        """The handshake with the client's params; the upstream's `initialize` result."""
        request_id = self.next_id()
        message = {"jsonrpc": "2.0", "id": request_id, "method": "initialize", "params": params}
        answers: list[dict[str, Any]] = []
        response = await self._pool.request(b"POST", self._path, self._headers(), orjson.dumps(message))
        if response.status != 200:
            await response.read(self._pool.timeout)
            raise UpstreamError(f"upstream {self.server!r} refused initialize with HTTP {response.status}")
        self._session = response.header(b"mcp-session-id")
        async for answer in self._messages(response):
            answers.append(answer)
        result = next((a.get("result") for a in answers if a.get("id") == request_id), None)
        if not isinstance(result, dict):
            raise UpstreamError(f"upstream {self.server!r} answered initialize without a result")
        version = result.get("protocolVersion")
        if isinstance(version, str):
            self._version = version.encode()
        self.result = result
        await self.notify({"jsonrpc": "2.0", "method": "notifications/initialized"})
        if self._session is not None:
            self._listener = asyncio.create_task(self._listen(), name=f"bastion-link-{self.server}")
        return result

    async def request(self, message: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None) -> None:
        """POST a request (its id already the link's) and hand on every message of the answer."""
        request_id = message["id"]
        response = await self._pool.request(b"POST", self._path, self._headers(extra), orjson.dumps(message))
        answered = False
        event_ids: list[bytes] = []
        for _ in range(_MAX_RESUMES + 1):
            async for answer in self._messages(response, track=event_ids.append):
                answered = answered or (answer.get("id") == request_id and "method" not in answer)
                self._on_message(answer, request_id)
            if answered or not event_ids or self._session is None:
                break
            # The upstream ended the stream before answering (SEP-1699): resume it where it stopped.
            resume = self._headers([(b"last-event-id", event_ids[-1])])
            response = await self._pool.request(b"GET", self._path, resume, b"")
        if not answered:
            raise UpstreamError(
                f"upstream {self.server!r} ended its answer without a response (HTTP {response.status})"
            )

    async def notify(self, message: dict[str, Any]) -> None:
        """POST a notification or a response to an upstream's request (answered 202)."""
        response = await self._pool.request(b"POST", self._path, self._headers(), orjson.dumps(message))
        await response.read(self._pool.timeout)

    async def _messages(
        self, response: UpstreamResponse, track: Callable[[bytes], None] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        if not response.is_sse:
            body = await response.read(self._pool.timeout)
            if body.strip():
                message = _loads(body)
                if message is not None:
                    yield message
                elif response.status >= 400:
                    raise UpstreamError(f"upstream {self.server!r} answered HTTP {response.status}")
            return
        async for data in sse_data(response.stream(self._pool.timeout), track):
            message = _loads(data)
            if message is not None:
                yield message

    async def _listen(self) -> None:
        with contextlib.suppress(UpstreamError):
            response = await self._pool.request(b"GET", self._path, self._headers(), b"")
            if response.status != 200:
                response.release()
                return
            async for chunk in _stream_messages(response):
                self._on_message(chunk, None)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._session is not None:
            with contextlib.suppress(UpstreamError):
                response = await self._pool.request(b"DELETE", self._path, self._headers(), b"")
                await response.read(5.0)


async def _stream_messages(response: UpstreamResponse) -> AsyncIterator[dict[str, Any]]:
    """The messages of a long-lived SSE stream (no idle deadline)."""
    async for data in sse_data(response.stream(None)):
        message = _loads(data)
        if message is not None:
            yield message


def _loads(data: bytes) -> dict[str, Any] | None:
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return message if isinstance(message, dict) and message.get("jsonrpc") == "2.0" else None
