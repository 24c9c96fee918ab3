"""Long-lived bidirectional gRPC streams for the hot path (DESIGN §14).

A unary call pays for a new HTTP/2 stream every time (~800 µs here); a request on an
open stream costs about half. One `StreamCaller` per service keeps one stream open,
sends each request on it and matches answers to callers by request id, so any number
of concurrent actions share it.

Fail closed, per request: an answer that does not come within the caller's timeout, a
stream that breaks, or a service that never answers is an error for every request
waiting on that stream, and the next request opens a new stream. A service that does
not implement the stream (UNIMPLEMENTED) is remembered and called with its unary RPC
from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc

log = logging.getLogger("bastion.proxy")

Req = TypeVar("Req")
Resp = TypeVar("Resp")
_CLOSE: Any = object()
#: Below the 16 MiB every Bastion gRPC server accepts (bastion._rpc), with room for framing.
MAX_MESSAGE_BYTES = 15 << 20


class StreamFailure(Exception):
    """A request on a stream got no answer; `code` says why, like a gRPC status.

    `unanswered`: the stream ended with INTERNAL before its first answer. A service that
    does not offer the stream ends it with UNIMPLEMENTED at once, and when the client's
    first write races those trailers grpc replaces the status with its own INTERNAL
    ("Internal error from Core"): 1-5% of first calls to a Score-only verifier on a loaded
    machine failed closed so. Such a request goes on to the fallback RPC, as after
    UNIMPLEMENTED (asked again, never let through unasked), without giving up the stream
    for later requests."""

    def __init__(self, code: grpc.StatusCode, details: str, *, unanswered: bool = False) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.unanswered = unanswered

    @property
    def falls_back(self) -> bool:
        """Whether the request is to be asked again by the fallback RPC."""
        return self.code == grpc.StatusCode.UNIMPLEMENTED or (self.unanswered and self.code == grpc.StatusCode.INTERNAL)


def ended(exc: grpc.aio.AioRpcError, answered: bool) -> StreamFailure:
    """The failure of the requests left on a stream that ended with `exc`."""
    return StreamFailure(exc.code(), exc.details() or "stream failed", unanswered=not answered)


def refuse_oversized(size: int) -> None:
    """A request over the receiving server's message limit fails alone, before it is
    written: sent, it would break the stream for every request on it."""
    if size > MAX_MESSAGE_BYTES:
        raise StreamFailure(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"request of {size} bytes exceeds the {MAX_MESSAGE_BYTES}-byte message limit",
        )


@dataclass(slots=True)
class _Stream(Generic[Req, Resp]):
    queue: asyncio.Queue[Req]
    call: Any  # grpc.aio.StreamStreamCall[Req, Resp]
    pending: dict[str, asyncio.Future[Resp]] = field(default_factory=dict)
    reader: asyncio.Task[None] | None = None
    #: Whether any answer came on it (`StreamFailure.unanswered`).
    answered: bool = False


class StreamCaller(Generic[Req, Resp]):
    def __init__(
        self,
        open_stream: Callable[[AsyncIterator[Req]], Any],
        unary: Callable[[Req, float], Awaitable[Resp]],
        answer_id: Callable[[Resp], str],
        service: str,
        timeout: float,
    ) -> None:
        self._open_stream = open_stream
        self._unary = unary
        self._answer_id = answer_id
        self._service = service
        self._timeout = timeout
        self._stream: _Stream[Req, Resp] | None = None
        #: Set once the service answered UNIMPLEMENTED: the unary RPC is used from then on.
        self.unsupported = False

    async def call(self, request: Req, request_id: str, *, size: int = 0, timeout: float | None = None) -> Resp:
        """The answer to `request`; `request_id` must be unique among requests in flight.

        `size` is the request's serialised size when the caller measured it: a message
        over the receiving server's limit would break the stream for every request on
        it, so such a request fails alone, before it is written. `timeout` replaces the
        caller's own for this request.
        """
        timeout = timeout or self._timeout
        refuse_oversized(size)
        if not self.unsupported:
            try:
                return await self._on_stream(request, request_id, timeout)
            except StreamFailure as exc:
                if not exc.falls_back:
                    raise
        answer = await self._unary(request, timeout)
        # A unary answer need not echo the id; one that names another request's is garbage
        # (the stream refuses it too), not an answer to this one.
        answered = self._answer_id(answer)
        if answered and answered != request_id:
            raise StreamFailure(
                grpc.StatusCode.INTERNAL, f"answered request {answered[:64]!r} instead of {request_id[:64]!r}"
            )
        return answer

    async def _on_stream(self, request: Req, request_id: str, timeout: float) -> Resp:
        stream = self._stream or self._open()
        future: asyncio.Future[Resp] = asyncio.get_running_loop().create_future()
        stream.pending[request_id] = future
        stream.queue.put_nowait(request)
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise StreamFailure(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within {timeout * 1000:.0f} ms"
            ) from None
        finally:
            stream.pending.pop(request_id, None)

    def _open(self) -> _Stream[Req, Resp]:
        queue: asyncio.Queue[Req] = asyncio.Queue()

        async def requests() -> AsyncIterator[Req]:
            while (item := await queue.get()) is not _CLOSE:
                yield item

        stream: _Stream[Req, Resp] = _Stream(queue=queue, call=self._open_stream(requests()))
        stream.reader = asyncio.create_task(self._read(stream), name=f"bastion-{self._service}-stream")
        self._stream = stream
        return stream

    async def _read(self, stream: _Stream[Req, Resp]) -> None:
        failure: StreamFailure
        try:
            async for answer in stream.call:
                stream.answered = True
                future = stream.pending.get(self._answer_id(answer))
                if future is not None and not future.done():
                    future.set_result(answer)
            failure = StreamFailure(grpc.StatusCode.UNAVAILABLE, "the stream was closed by the server")
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                self.unsupported = True
                log.info("%s does not offer a stream; using unary calls", self._service)
            failure = ended(exc, stream.answered)
        except asyncio.CancelledError:
            failure = StreamFailure(grpc.StatusCode.CANCELLED, "the proxy is stopping")
        if self._stream is stream:
            self._stream = None
        # End the request generator and the call too: left waiting on the queue, grpc's
        # consumer task of a dead stream was destroyed pending at exit ("Task was destroyed").
        stream.queue.put_nowait(_CLOSE)
        stream.call.cancel()
        for future in stream.pending.values():
            if not future.done():
                future.set_exception(failure)

    async def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is None:
            return
        stream.queue.put_nowait(_CLOSE)
        stream.call.cancel()
        if stream.reader is not None:
            stream.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stream.reader
