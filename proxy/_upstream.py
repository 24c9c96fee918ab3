"""A lean pooled HTTP/1.1 client for upstream MCP servers.

Why not httpx/aiohttp: on this machine class a general-purpose client costs several
hundred microseconds per call (DESIGN §14), more than the rest of the pass-through.
This one writes a request in one syscall, parses with httptools (the same parser as
the server side), keeps connections alive per upstream, and streams response bodies
(SSE) as they arrive with back-pressure, so a slow client cannot make the proxy
buffer an upstream's stream without bound.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import cast
from urllib.parse import urlsplit

import httptools

from bastion._errors import ConfigError, UpstreamError, UpstreamTimeout

_HIGH_WATER = 1 << 20  # bytes buffered before we stop reading from the upstream socket
_LOW_WATER = 1 << 18
_EOF = b""
#: Idle connections older than this are closed rather than reused (below the 5 s
#: keep-alive timeout of uvicorn, the usual MCP server).
IDLE_TTL = 2.0


#: Default for the most bytes of one upstream answer read whole (BASTION_MAX_ANSWER_BYTES).
MAX_ANSWER_BYTES = 64 * 1024 * 1024


class _Connection(asyncio.Protocol):
    """One keep-alive connection; carries one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.headers_ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._wakeup: asyncio.Future[None] | None = None
        self.complete = False
        self.error: Exception | None = None
        self.received_any = False
        self.keep_alive = False
        self.idle_since = 0.0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport implements asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"upstream sent an invalid HTTP response: {exc}"))
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.complete:
            self._fail(UpstreamError(f"upstream closed the connection{f': {exc}' if exc else ''}"))
        self.transport = None

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if not self.headers_ready.done():
            self.headers_ready.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self._parser.should_keep_alive()
        self._wake()

    # exchange side
    def _fail(self, error: Exception) -> None:
        self.error = error
        if not self.headers_ready.done():
            self.headers_ready.set_exception(error)
            # Retrieved later by whoever awaits it; avoid "exception never retrieved" noise.
            self.headers_ready.exception()
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def reset(self) -> None:
        self.headers_ready = asyncio.get_running_loop().create_future()
        self.status = 0
        self.headers = []
        self.complete = False
        self.received_any = False
        self.keep_alive = False

    async def next_chunk(self, idle_timeout: float | None = None) -> bytes:
        """The next piece of the body (b"" at its end); UpstreamTimeout when nothing
        arrives for `idle_timeout` seconds."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered < _LOW_WATER and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                return chunk
            if self.complete:
                return _EOF
            if self.error is not None:
                raise self.error
            self._wakeup = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(idle_timeout):
                    await self._wakeup
            except TimeoutError:
                self.close()
                raise UpstreamTimeout(f"upstream sent no more of its answer within {idle_timeout:g}s") from None
            finally:
                self._wakeup = None

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing() and self.error is None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class UpstreamResponse:
    """Status and headers of an upstream response; the body is read or streamed once."""

    def __init__(self, pool: UpstreamPool, conn: _Connection) -> None:
        self._pool = pool
        self._conn = conn
        self.status = conn.status
        self.headers = conn.headers
        self._released = False

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def is_sse(self) -> bool:
        """Whether the body is an event stream, as a client reads it: media types are
        case-insensitive, and a stream may come with a Content-Length (an attacker's probe
        had both slip an answer past the result tap unread)."""
        return (self.header(b"content-type") or b"").strip().lower().startswith(b"text/event-stream")

    async def stream(self, idle_timeout: float | None = None) -> AsyncIterator[bytes]:
        """The body as it arrives; `idle_timeout` bounds the wait for each piece (None:
        a long-lived stream such as an MCP session's GET may stay quiet for as long as it likes)."""
        try:
            while chunk := await self._conn.next_chunk(idle_timeout):
                yield chunk
        finally:
            self.release()

    async def read(self, idle_timeout: float | None = None, *, limit: int | None = None) -> bytes:
        """The whole body, at most `limit` bytes (default: the pool's `max_answer`): an
        upstream that answers more (or declares it) is cut off with UpstreamError. Unbounded,
        one answer of a few gigabytes, or a few large ones at once, could take the proxy down
        for every agent."""
        limit = self._pool.max_answer if limit is None else limit
        declared = self.header(b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            self._conn.close()
            self.release()
            raise UpstreamError(f"its answer is {int(declared)} bytes, over the {limit} the proxy reads whole")
        parts: list[bytes] = []
        size = 0
        async for chunk in self.stream(idle_timeout):
            size += len(chunk)
            if size > limit:
                self._conn.close()
                raise UpstreamError(f"its answer is over the {limit} bytes the proxy reads whole")
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def release(self) -> None:
        """Give the connection back if the exchange finished cleanly, else close it."""
        if self._released:
            return
        self._released = True
        conn = self._conn
        if conn.complete and conn.keep_alive and conn.usable:
            self._pool.put_back(conn)
        else:
            conn.close()


class UpstreamPool:
    """Keep-alive connections to one upstream base URL."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        max_idle: int = 64,
        unix_path: str | None = None,
        headers: Iterable[tuple[bytes, bytes]] = (),
        max_answer: int = MAX_ANSWER_BYTES,
    ) -> None:
        parts = urlsplit(url)
        #: Added to every request (credentials Bastion brokers for this upstream); a header
        #: of the same name from the caller is dropped, so it can be neither read nor overridden.
        self._brokered = tuple((name.lower(), value) for name, value in headers)
        self._brokered_names = frozenset(name for name, _ in self._brokered)
        #: When set, connections go to this Unix socket (a stdio bridge) and `url` only names the path.
        self.unix_path = unix_path
        if parts.scheme != "http" or not parts.hostname:
            raise ConfigError(f"upstream url {url!r} must be http://host[:port]/path")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.path = parts.path or "/"
        self.authority = parts.netloc.encode("latin-1")
        self._timeout = timeout
        #: Seconds to wait for a response's headers, and for each further piece of a POST's body.
        self.timeout = timeout
        self._idle: deque[_Connection] = deque()
        self._max_idle = max_idle
        #: The most bytes of one answer read whole (`UpstreamResponse.read`).
        self.max_answer = max_answer

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            if self.unix_path is not None:
                connecting = loop.create_unix_connection(_Connection, self.unix_path)
            else:
                connecting = loop.create_connection(_Connection, self.host, self.port)
            _, conn = await asyncio.wait_for(connecting, timeout=min(self._timeout, 10.0))
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(f"cannot connect to upstream {self.host}:{self.port}: {exc}") from exc
        return conn

    def put_back(self, conn: _Connection) -> None:
        if len(self._idle) < self._max_idle:
            conn.reset()
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()

    async def request(
        self, method: bytes, path: bytes, headers: Iterable[tuple[bytes, bytes]], body: bytes
    ) -> UpstreamResponse:
        head = [method, b" ", path, b" HTTP/1.1\r\nhost: ", self.authority, b"\r\n"]
        for name, value in headers:
            if name not in self._brokered_names:
                head += [name, b": ", value, b"\r\n"]
        for name, value in self._brokered:
            head += [name, b": ", value, b"\r\n"]
        if body or method == b"POST":
            head += [b"content-length: ", str(len(body)).encode(), b"\r\n"]
        head.append(b"\r\n")
        payload = b"".join(head) + body
        # An upstream closes idle keep-alive connections on its own schedule (uvicorn
        # after 5 s), and the close is only seen on use. A tools/call must never run
        # twice, so a POST is never replayed: connections idle past IDLE_TTL are not
        # reused at all, and only requests without side effects on the upstream's
        # tools (GET, DELETE of a session) are retried once on a fresh connection.
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if not conn.usable or now - conn.idle_since > IDLE_TTL:
                conn.close()
                continue
            try:
                return await self._exchange(conn, payload)
            except UpstreamError:
                conn.close()
                if conn.received_any or method == b"POST":
                    raise
            break
        return await self._exchange(await self._connect(), payload)

    async def _exchange(self, conn: _Connection, payload: bytes) -> UpstreamResponse:
        assert conn.transport is not None
        conn.transport.write(payload)
        try:
            async with asyncio.timeout(self._timeout):
                await conn.headers_ready
        except TimeoutError as exc:
            conn.close()
            raise UpstreamTimeout(
                f"upstream {self.host}:{self.port} sent no response within {self._timeout:g}s"
            ) from exc
        except BaseException:
            conn.close()
            raise
        return UpstreamResponse(self, conn)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
