"""The server end of MCP streamable HTTP, for upstreams that do not speak it themselves.

A stdio server speaks one stream of JSON-RPC lines; a client of `/mcp/{server}` expects
streamable HTTP: sessions (`Mcp-Session-Id`, 404 once gone, `DELETE`), a POST answered
with JSON or an SSE stream that carries the server's requests and notifications made
while the request runs, a GET stream for the rest, and `Last-Event-ID` resumption. This
module is that HTTP side; a `Backend` (a stdio child, …) is the message side.

Messages from the backend are routed the way the HTTP transport of the SDK routes them:
a response to the stream of its request; `notifications/progress` to the request that
gave the progress token; any other request or notification to the most recent request
still running (a stdio server has no other way to say which call it belongs to, and a
`sampling/createMessage` issued by a tool runs inside that tool's call), else to the
GET stream. Every stream keeps its recent events, so a client that reconnects with
`Last-Event-ID` gets what it missed and then the rest, live.

Sessions without a `Mcp-Session-Id` (the 2026-07 stateless form) share one backend;
their request ids are replaced by the host's own while in flight, so two clients that
both use id 1 cannot receive each other's answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

import orjson

from bastion._errors import UpstreamError

from ._asgi import JSON, Receive, Scope, Send, send_bytes, send_json, send_stream

log = logging.getLogger("bastion.proxy")

#: Events a stream keeps for `Last-Event-ID` replay.
_STREAM_EVENTS = 1024
#: Bytes of events a stream keeps (its newest event whatever its size): counted in events
#: alone, a server's 4 MiB notifications filled a stream to gigabytes (an attacker's probe).
STREAM_BYTES = 8 * 1024 * 1024
#: Requests of one session still waiting for the backend's answer; past it the oldest is
#: answered UPSTREAM_UNAVAILABLE (a server that never answers must not grow the proxy).
MAX_PENDING = 4096
#: The header the proxy names the initialising principal in, on the private socket of a
#: stdio server (never sent to a network upstream; a client's own copy is dropped).
OWNER_HEADER = b"bastion-owner"
#: Finished request streams a session keeps for late resumption.
_FINISHED_STREAMS = 64
#: Bytes of finished streams a session keeps for late resumption, all streams together.
_FINISHED_BYTES = 32 * 1024 * 1024
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_MISSING = object()
#: One part of an event id this host issues (`<stream>-<sequence>`).
_EVENT_PART = re.compile(r"[0-9]{1,18}")


class Backend(Protocol):
    async def deliver(self, message: dict[str, Any], raw: bytes, context: Any) -> None:
        """Pass one client message on (`context`: what the front end decided about it, or
        None); UpstreamError when it cannot be."""

    async def close(self) -> None: ...


class _Stream:
    """One SSE stream: a request's (index ≥ 1) or the session's GET stream (index 0)."""

    __slots__ = ("attached", "changed", "delivered", "done", "events", "index", "size")

    def __init__(self, index: int) -> None:
        self.index = index
        self.events: deque[tuple[int, bytes]] = deque()
        self.size = 0
        #: The last event handed to a reader: a new GET without Last-Event-ID starts after it.
        self.delivered = 0
        self.done = False
        self.attached = False
        self.changed = asyncio.Event()

    def push(self, seq: int, data: bytes, *, last: bool = False) -> None:
        self.events.append((seq, data))
        self.size += len(data)
        while len(self.events) > 1 and (len(self.events) > _STREAM_EVENTS or self.size > STREAM_BYTES):
            self.size -= len(self.events.popleft()[1])
        self.done = self.done or last
        self.changed.set()

    def finish(self) -> None:
        self.done = True
        self.changed.set()

    async def follow(self, after: int) -> AsyncIterator[tuple[int, bytes]]:
        """Events with a sequence number above `after`, then live ones until the stream ends."""
        while True:
            self.changed.clear()
            fresh = [(seq, data) for seq, data in self.events if seq > after]
            for seq, data in fresh:
                yield seq, data
                after = self.delivered = seq
            if self.done and not fresh:
                return
            if not fresh:
                await self.changed.wait()


class HostedSession:
    """One client session and its backend. `remap` replaces request ids (shared sessions)."""

    def __init__(self, session_id: str, *, remap: bool = False, owner: str = "") -> None:
        self.id = session_id
        #: Who initialised it (bastion.proxy._owners.owner_key), "" when not told.
        self.owner = owner
        #: Messages for the GET stream of the shared session, which no one can open: dropped.
        self.dropped = 0
        self.backend: Backend | None = None
        self.last_used = time.monotonic()
        self.closed = False
        self._remap = remap
        self._internal_ids = itertools.count(1)
        self._seq = 0
        self._indexes = itertools.count(1)
        self.standalone = _Stream(0)
        self._streams: OrderedDict[int, _Stream] = OrderedDict()
        self._pending: dict[bytes, tuple[_Stream, Any]] = {}
        #: progressToken as the backend knows it -> (stream, the token its client chose).
        self._progress: dict[bytes, tuple[_Stream, Any]] = {}

    # client → backend
    def begin(self, message: dict[str, Any]) -> tuple[_Stream, dict[str, Any], bytes | None]:
        """Open the stream of a client request; returns it and the message to deliver
        (with the host's id when ids are remapped; then also its new encoding)."""
        stream = _Stream(next(self._indexes))
        self._streams[stream.index] = stream
        self._prune()
        while len(self._pending) >= MAX_PENDING:
            oldest = next(iter(self._pending))
            waiting, first = self._pending.pop(oldest)
            reason = f"no answer after {MAX_PENDING} later requests of this session; dropped"
            waiting.push(
                self._next(), orjson.dumps({"jsonrpc": "2.0", "id": first, "error": _unavailable(reason)}), last=True
            )
        original = message["id"]
        raw: bytes | None = None
        params = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        token = meta.get("progressToken", _MISSING) if isinstance(meta, dict) else _MISSING
        if self._remap:
            internal = next(self._internal_ids)
            message = {**message, "id": f"bastion-{internal}"}
            if token is not _MISSING and isinstance(params, dict) and isinstance(meta, dict):
                # Callers of a shared session choose their tokens alike (often the request
                # id): kept as they came, one caller's progress went to another's stream.
                backend_token = f"bastion-progress-{internal}"
                message["params"] = {**params, "_meta": {**meta, "progressToken": backend_token}}
                self._progress[_key(backend_token)] = (stream, token)
            raw = orjson.dumps(message)
        elif token is not _MISSING:
            self._progress[_key(token)] = (stream, token)
        self._pending[_key(message["id"])] = (stream, original)
        return stream, message, raw

    def fail(self, message: dict[str, Any], reason: str) -> None:
        """Answer a request the backend could not take."""
        self.emit({"jsonrpc": "2.0", "id": message["id"], "error": _unavailable(reason)}, None)

    # backend → client
    def emit(self, message: dict[str, Any], raw: bytes | None, related: Any = _MISSING) -> None:
        """Send `message` to the client: a response to its request's stream; anything else
        to the stream of the request `related` names (when it still runs), else routed."""
        self.last_used = time.monotonic()
        msg_id = message.get("id", _MISSING)
        if "method" not in message and msg_id is not _MISSING:
            entry = self._pending.pop(_key(msg_id), None)
            if entry is not None:
                stream, original = entry
                if self._remap:
                    raw = orjson.dumps({**message, "id": original})
                self._progress = {k: v for k, v in self._progress.items() if v[0] is not stream}
                stream.push(self._next(), raw or orjson.dumps(message), last=True)
                return
        if related is not _MISSING:
            entry = self._pending.get(_key(related))
            stream = entry[0] if entry is not None else self.standalone
        elif (progress := self._progress_of(message)) is not None:
            stream, token = progress
            if self._remap:
                raw = orjson.dumps({**message, "params": {**message["params"], "progressToken": token}})
        else:
            stream = self._route()
        if stream is self.standalone and self._remap:
            self.dropped += 1
            return
        stream.push(self._next(), raw or orjson.dumps(message))

    def to_listener(self, message: dict[str, Any]) -> None:
        """A message that belongs to no request: the session's GET stream."""
        self.last_used = time.monotonic()
        if self._remap:
            # The shared session has no id, so no GET stream can be opened on it: kept, the
            # messages were memory no one could ever read.
            self.dropped += 1
            return
        self.standalone.push(self._next(), orjson.dumps(message))

    @property
    def shared(self) -> bool:
        """The one session of every stateless request (ids remapped)."""
        return self._remap

    def _progress_of(self, message: dict[str, Any]) -> tuple[_Stream, Any] | None:
        """The stream a progress notification belongs to, and its client's token."""
        if message.get("method") != "notifications/progress":
            return None
        params = message.get("params")
        token = params.get("progressToken", _MISSING) if isinstance(params, dict) else _MISSING
        return self._progress.get(_key(token)) if token is not _MISSING else None

    def _route(self) -> _Stream:
        if self._pending and not self._remap:
            return next(reversed(self._pending.values()))[0]
        return self.standalone

    def backend_gone(self, reason: str) -> None:
        """The backend ended: every request still running gets an error, and the session is over."""
        self.closed = True
        for stream, original in list(self._pending.values()):
            error = {"jsonrpc": "2.0", "id": original, "error": _unavailable(reason)}
            stream.push(self._next(), orjson.dumps(error), last=True)
        self._pending.clear()
        self.standalone.finish()

    def stream_of(self, event_id: str) -> tuple[_Stream, int] | None:
        index, _, seq = event_id.partition("-")
        # ASCII digits only, and as many as a sequence number can have: str.isdigit() takes
        # '²', and int() refuses over 4,300 digits (both were a 500).
        if not (_EVENT_PART.fullmatch(index) and _EVENT_PART.fullmatch(seq)):
            return None
        stream = self.standalone if index == "0" else self._streams.get(int(index))
        return (stream, int(seq)) if stream is not None else None

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def _prune(self) -> None:
        """Forget finished streams past what resumption may still ask for: the newest
        _FINISHED_STREAMS, within _FINISHED_BYTES; none in the shared session, which no GET
        can resume (kept, 70 delivered 2 MB answers held 130 MB there, an attacker's probe)."""
        finished = [index for index, stream in self._streams.items() if stream.done]
        keep = 0 if self._remap else _FINISHED_STREAMS
        for index in finished[: max(0, len(finished) - keep)]:
            del self._streams[index]
        kept = finished[max(0, len(finished) - keep) :]
        size = sum(self._streams[index].size for index in kept)
        for index in kept:
            if size <= _FINISHED_BYTES:
                break
            size -= self._streams.pop(index).size


class SessionHost:
    """The HTTP side of hosted sessions; `open_backend` starts a backend for a new session."""

    def __init__(
        self,
        label: str,
        open_backend: Callable[[HostedSession], Awaitable[Backend]],
        *,
        max_sessions: int,
        idle_timeout: float,
        max_body: int,
        shared: bool = True,
        max_per_owner: int | None = None,
        limit_name: str = "BASTION_STDIO_MAX_SESSIONS",
    ) -> None:
        """`max_per_owner`: most sessions one principal holds; its next `initialize` closes
        its least recently used one (None: no bound but `max_sessions`)."""
        self._label = label
        self._open_backend = open_backend
        self._max_sessions = max_sessions
        self._max_per_owner = max_per_owner
        self._limit_name = limit_name
        self._idle_timeout = idle_timeout
        self._max_body = max_body
        self._sessions: dict[str, HostedSession] = {}
        self._shared_enabled = shared
        self._shared: HostedSession | None = None
        self._shared_lock = asyncio.Lock()
        #: Sessions being opened (their backend starting), by owner: counted with the open
        #: ones, so a burst of initializes cannot pass the bounds while each waits.
        self._opening_by: dict[str, int] = {}
        self._reaper: asyncio.Task[None] | None = None

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap(), name=f"bastion-sessions-{self._label}")
        headers = dict(scope["headers"])
        method = scope["method"]
        session_id = headers.get(b"mcp-session-id", b"").decode("latin-1")
        try:
            if method == "POST":
                await self._post(scope, receive, send, headers, session_id)
            elif method == "GET":
                await self.get(receive, send, headers)
            elif method == "DELETE":
                await self.delete(send, session_id)
            else:
                await _error(send, 405, None, -32600, f"{method} is not a streamable HTTP method")
        except UpstreamError as exc:
            await send_json(send, 503, {"jsonrpc": "2.0", "id": None, "error": _unavailable(str(exc))})

    async def _post(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes], session_id: str
    ) -> None:
        body = await _read(receive, self._max_body)
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError:
            await _error(send, 400, None, -32700, "Parse error: the body is not JSON")
            return
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            await _error(send, 400, None, -32600, "Invalid Request: one JSON-RPC 2.0 object expected")
            return
        await self.post(receive, send, headers, message, body, owner=headers.get(OWNER_HEADER, b"").decode("latin-1"))

    def session(self, session_id: str) -> HostedSession | None:
        """The session a request names (the shared one when it names none)."""
        return self._sessions.get(session_id) if session_id else self._shared

    async def post(
        self,
        receive: Receive,
        send: Send,
        headers: dict[bytes, bytes],
        message: dict[str, Any],
        body: bytes,
        context: Any = None,
        bind: Callable[[str], None] | None = None,
        response_headers: Sequence[tuple[bytes, bytes]] = (),
        owner: str = "",
    ) -> bytes | None:
        """Serve one parsed client message (read, checked and decided by the caller); for a
        request, return the answer relayed (None when the client left first). `bind` sees a
        new session's id before the client does; `extra` headers go on the response."""
        session_id = headers.get(b"mcp-session-id", b"").decode("latin-1")
        extra: list[tuple[bytes, bytes]] = list(response_headers)
        if session_id:
            session = self._sessions.get(session_id)
            if session is None:
                await _error(send, 404, message.get("id"), -32001, "Session not found")
                return None
        elif message.get("method") == "initialize":
            session = await self._open(owner)
            if bind is not None:
                bind(session.id)
            extra.append((b"mcp-session-id", session.id.encode()))
        elif self._shared_enabled:
            session = await self.shared_session()
        else:
            await _error(send, 400, message.get("id"), -32600, "Bad Request: Missing session ID")
            return None
        session.last_used = time.monotonic()
        backend = session.backend
        assert backend is not None
        if "method" in message and "id" in message:
            stream, outgoing, raw = session.begin(message)
            try:
                await backend.deliver(outgoing, raw or body, context)
            except UpstreamError as exc:
                session.fail(outgoing, str(exc))
            await self._answer(stream, receive, send, headers, extra)
            return stream.events[-1][1] if stream.done and stream.events else None
        if not (session.shared and _answers_or_cancels(message)):
            await backend.deliver(message, body, context)
        await send_bytes(send, 202, b"", extra)
        return None

    async def _answer(
        self, stream: _Stream, receive: Receive, send: Send, headers: dict[bytes, bytes], extra: list[Any]
    ) -> None:
        """An SSE stream when the client takes one (as the SDK's HTTP servers answer), else
        JSON once the answer is there (then the request's notifications are dropped)."""
        if b"text/event-stream" in headers.get(b"accept", b""):
            await self._relay(stream, 0, receive, send, extra)
            return
        done = asyncio.ensure_future(_finished(stream))
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({done, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            done.cancel()
            gone.cancel()
        if stream.done:
            await send_bytes(send, 200, stream.events[-1][1], JSON + extra)

    async def _relay(self, stream: _Stream, after: int, receive: Receive, send: Send, extra: list[Any]) -> None:
        stream.attached = True
        try:
            await send_stream(send, receive, 200, _SSE_HEADERS + extra, _sse(stream, after))
        finally:
            stream.attached = False

    async def get(self, receive: Receive, send: Send, headers: dict[bytes, bytes]) -> None:
        """A session's GET stream, or the rest of a request's stream after `Last-Event-ID`."""
        session_id = headers.get(b"mcp-session-id", b"").decode("latin-1")
        if b"text/event-stream" not in headers.get(b"accept", b""):
            await _error(send, 406, None, -32600, "Not Acceptable: a GET stream needs Accept: text/event-stream")
            return
        session = self._sessions.get(session_id) if session_id else None
        if session is None:
            status, text = (404, "Session not found") if session_id else (400, "Bad Request: Missing session ID")
            await _error(send, status, None, -32001 if session_id else -32600, text)
            return
        stream, after = session.standalone, session.standalone.delivered
        last = headers.get(b"last-event-id")
        if last is not None:
            found = session.stream_of(last.decode("latin-1"))
            if found is not None:
                stream, after = found
        if stream.attached:
            await _error(send, 409, None, -32600, "Conflict: this stream already has a reader")
            return
        await self._relay(stream, after, receive, send, [])

    async def delete(self, send: Send, session_id: str) -> None:
        session = self._sessions.pop(session_id, None) if session_id else None
        if session is None:
            await _error(send, 404 if session_id else 400, None, -32001, "Session not found")
            return
        await self._close(session)
        await send_bytes(send, 200, b"", [])

    async def _open(self, owner: str = "") -> HostedSession:
        # Every check and the reservation happen before the first await: concurrent
        # initializes each saw room while the others' backends started (an attacker's probe
        # opened 12 sessions against a bound of 4 with one burst).
        stale: list[HostedSession] = []
        if owner and self._max_per_owner is not None:
            held = sorted((s for s in self._sessions.values() if s.owner == owner), key=lambda s: s.last_used)
            over = len(held) + self._opening_by.get(owner, 0) + 1 - self._max_per_owner
            if over > len(held):
                raise UpstreamError(
                    f"this caller is already opening {self._max_per_owner} sessions of {self._label} "
                    "(BASTION_SESSIONS_PER_PRINCIPAL); retry when they are open"
                )
            # One principal cannot hold every slot: past its share, its own least recently
            # used sessions make way (an attacker's probe took all 32 of a stdio server's
            # slots with bare initializes, locking every other tenant out).
            stale = held[: max(0, over)]
            for session in stale:
                self._sessions.pop(session.id, None)
        if len(self._sessions) + sum(self._opening_by.values()) >= self._max_sessions:
            raise UpstreamError(
                f"{self._label} already has {self._max_sessions} sessions ({self._limit_name}); "
                "close one or retry later"
            )
        self._opening_by[owner] = self._opening_by.get(owner, 0) + 1
        try:
            for session in stale:
                log.info("closing the least recently used session of a principal at its limit on %s", self._label)
                await self._close(session, "closed: the same caller opened a newer session past its limit")
            session = HostedSession(secrets.token_hex(16), owner=owner)
            session.backend = await self._open_backend(session)
            self._sessions[session.id] = session
        finally:
            if self._opening_by[owner] == 1:
                del self._opening_by[owner]
            else:
                self._opening_by[owner] -= 1
        return session

    async def shared_session(self) -> HostedSession:
        """The one session of every request that names none (stateless clients); started
        once however many requests arrive while it starts."""
        async with self._shared_lock:
            session = self._shared
            if session is None or session.closed:
                session = HostedSession("shared", remap=True)
                session.backend = await self._open_backend(session)
                self._shared = session
        return session

    def forget(self, session: HostedSession) -> None:
        """A session whose backend ended: later requests on it get 404."""
        if self._sessions.get(session.id) is session:
            del self._sessions[session.id]

    async def _close(self, session: HostedSession, reason: str = "the session was closed") -> None:
        # Requests still running get an answer: an evicted session's caller waited for ever.
        session.backend_gone(reason)
        if session.backend is not None:
            await session.backend.close()

    async def _reap(self) -> None:
        """Close sessions nobody has used for `idle_timeout` seconds (a client that never DELETEs)."""
        while True:
            await asyncio.sleep(min(30.0, self._idle_timeout / 2))
            cutoff = time.monotonic() - self._idle_timeout
            for session in [s for s in self._sessions.values() if s.last_used < cutoff and not s.standalone.attached]:
                log.info("closing idle session of %s", self._label)
                self._sessions.pop(session.id, None)
                await self._close(session)

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        sessions = list(self._sessions.values()) + ([self._shared] if self._shared is not None else [])
        self._sessions.clear()
        self._shared = None
        await asyncio.gather(*(self._close(session) for session in sessions))


async def _sse(stream: _Stream, after: int) -> AsyncIterator[bytes]:
    async for seq, data in stream.follow(after):
        yield b"event: message\nid: %d-%d\ndata: %s\n\n" % (stream.index, seq, data)


async def _read(receive: Receive, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise UpstreamError("the client went away before sending its whole request")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise UpstreamError(f"request body exceeds {limit} bytes")
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


async def _finished(stream: _Stream) -> None:
    while not stream.done:
        stream.changed.clear()
        await stream.changed.wait()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _error(send: Send, status: int, msg_id: Any, code: int, text: str) -> None:
    await send_json(send, status, {"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": text}})


def _unavailable(reason: str) -> dict[str, Any]:
    return {"code": -32603, "message": "UPSTREAM_UNAVAILABLE", "data": {"reason": reason}}


def _answers_or_cancels(message: dict[str, Any]) -> bool:
    """A client's answer, or its cancel of a request: in the shared session both could only
    name another caller's request (its own were renumbered, and nothing asks a stateless
    caller anything), so they are accepted and dropped. An attacker's probe cancelled
    another tenant's call by guessing the host's sequential ids."""
    return "method" not in message or message.get("method") == "notifications/cancelled"


def _key(value: Any) -> bytes:
    # 1 and "1" are different JSON-RPC ids.
    return orjson.dumps(value)
