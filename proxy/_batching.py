"""Adaptive micro-batching on one long-lived batch stream (DESIGN §14, issue #24).

Per-message gRPC plumbing, not governance logic, is most of the hot path's CPU: a py-spy
profile under load puts grpc.aio's stream writes first in the proxy, and the policy and
verifier processes spend about two thirds of their samples inside grpc's event loop
machinery. So the proxy asks on `DecideBatchStream` / `ScoreBatchStream`, where one
message carries many requests, and batches adaptively:

* one writer task per stream writes one message at a time with `call.write()`;
* a request that arrives while the writer is idle goes out at once, alone: at
  concurrency 1 nothing waits for company and latency is that of a plain stream;
* every request that arrives while a message is being written waits for the next one
  and goes out with all the others, so under load one write, one read and one wake-up of
  each side serve many calls.

A batch holds at most `MAX_BATCH` requests and `MAX_BATCH_WEIGHT` bytes of request bodies
(the body's size is the caller's hint: Struct inflates a body up to ~6x, so a batch stays
far below the 16 MiB message limit); a request whose body alone is that large goes alone.

Fail closed exactly as `StreamCaller`: an answer that does not come in time, a stream that
breaks, a write that fails, is an error for every request waiting on that stream, and the
next request opens a new one.

An answer is taken only as the answer to the message its request went out in: the batch
RPCs answer each request message with one response message, one answer per request in
request order, so a response message must name exactly the ids of one message written,
in order. Matched by request_id alone, a verifier's answer message could carry a score
under the id of another call in flight, in another message, and that call took it (an
attacker's probe); such a message, like one answering a request twice, fails every
request it or that message names (INTERNAL), closed. It costs a dict entry per request
and one list comparison per message. A service without the batch RPC (UNIMPLEMENTED) is
remembered and asked through `fallback` (the per-request stream, then the unary RPC).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc

from ._streams import StreamCaller, StreamFailure, ended, refuse_oversized

log = logging.getLogger("bastion.proxy")

Req = TypeVar("Req")
Resp = TypeVar("Resp")
BatchReq = TypeVar("BatchReq")
BatchResp = TypeVar("BatchResp")
#: Requests per message at most: bounds a message's decode time on the other side.
MAX_BATCH = 64
#: Request-body bytes per message at most (see the module docstring).
MAX_BATCH_WEIGHT = 1 << 20
#: Messages waiting to be written at most. A service that stops reading stalls the
#: writer; every waiting request then times out, but without a bound the requests
#: themselves would pile up for as long as the stream stays open.
MAX_WAITING_MESSAGES = 256


@dataclass(slots=True)
class _Batches(Generic[Req]):
    """Requests waiting to be written, grouped into the messages they will go out in."""

    messages: deque[list[Req]] = field(default_factory=deque)
    #: The request ids of each of `messages`, in the same order.
    ids: deque[list[str]] = field(default_factory=deque)
    #: Body bytes of the last (still open) message.
    tail_weight: int = 0

    def add(self, request: Req, weight: int, request_id: str = "") -> list[str]:
        """Queue `request`; the ids of the message it goes out in (which grows until written)."""
        tail = self.messages[-1] if self.messages else None
        if tail is None or len(tail) >= MAX_BATCH or (tail and self.tail_weight + weight > MAX_BATCH_WEIGHT):
            self.messages.append([request])
            self.ids.append([request_id])
            self.tail_weight = weight
            return self.ids[-1]
        tail.append(request)
        ids = self.ids[-1]
        ids.append(request_id)
        self.tail_weight += weight
        return ids

    def take(self) -> list[Req]:
        """The next message to write (its ids go with it)."""
        self.ids.popleft()
        return self.messages.popleft()


@dataclass(slots=True)
class _Stream(Generic[Req, Resp]):
    call: Any  # grpc.aio.StreamStreamCall[BatchReq, BatchResp]
    waiting: _Batches[Req] = field(default_factory=_Batches)
    pending: dict[str, asyncio.Future[Resp]] = field(default_factory=dict)
    #: Each pending request's message: the ids it went out with (shared by them all).
    sent: dict[str, list[str]] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    ended: bool = False
    #: Whether any answer came on it (`StreamFailure.unanswered`).
    answered: bool = False


class BatchCaller(Generic[Req, Resp, BatchReq, BatchResp]):
    """`call()` as `StreamCaller.call`, answered over a batch stream."""

    def __init__(
        self,
        open_stream: Callable[[], Any],
        pack: Callable[[list[Req]], BatchReq],
        unpack: Callable[[BatchResp], Iterable[Resp]],
        answer_id: Callable[[Resp], str],
        fallback: StreamCaller[Req, Resp],
        service: str,
        timeout: float,
    ) -> None:
        self._open_stream = open_stream
        self._pack = pack
        self._unpack = unpack
        self._answer_id = answer_id
        self._fallback = fallback
        self._service = service
        self._timeout = timeout
        self._stream: _Stream[Req, Resp] | None = None
        #: Set once the service answered UNIMPLEMENTED: `fallback` is used from then on.
        self.unsupported = False

    async def call(
        self, request: Req, request_id: str, *, size: int = 0, weight: int = 0, timeout: float | None = None
    ) -> Resp:
        """The answer to `request`; `request_id` must be unique among requests in flight.

        `size` is the request's serialised size when the caller measured it (a request
        over the message limit fails alone, before it is written); `weight` is the size
        of the body it was built from, which bounds how many go in one message;
        `timeout` replaces the caller's own for this request.
        """
        timeout = timeout or self._timeout
        refuse_oversized(size)
        if not self.unsupported:
            try:
                return await self._on_stream(request, request_id, max(size, weight), timeout)
            except StreamFailure as exc:
                if not exc.falls_back:
                    raise
        return await self._fallback.call(request, request_id, size=size, timeout=timeout)

    async def _on_stream(self, request: Req, request_id: str, weight: int, timeout: float) -> Resp:
        stream = self._stream or self._open()
        if len(stream.waiting.messages) >= MAX_WAITING_MESSAGES:
            failed = f"the stream is not draining: {len(stream.waiting.messages)} messages wait to be written"
            self._end(stream, StreamFailure(grpc.StatusCode.UNAVAILABLE, failed))
            stream = self._open()
        future: asyncio.Future[Resp] = asyncio.get_running_loop().create_future()
        stream.pending[request_id] = future
        stream.sent[request_id] = stream.waiting.add(request, weight, request_id)
        stream.wake.set()
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            failed = f"no answer within {timeout * 1000:.0f} ms"
            raise StreamFailure(grpc.StatusCode.DEADLINE_EXCEEDED, failed) from None
        finally:
            stream.pending.pop(request_id, None)
            stream.sent.pop(request_id, None)

    def _open(self) -> _Stream[Req, Resp]:
        stream: _Stream[Req, Resp] = _Stream(call=self._open_stream())
        name = f"bastion-{self._service.replace(' ', '-')}-batch"
        stream.tasks = [
            asyncio.create_task(self._write(stream), name=f"{name}-writer"),
            asyncio.create_task(self._read(stream), name=f"{name}-reader"),
        ]
        self._stream = stream
        return stream

    async def _write(self, stream: _Stream[Req, Resp]) -> None:
        messages = stream.waiting.messages
        try:
            while True:
                if not messages:
                    stream.wake.clear()
                    await stream.wake.wait()
                    continue
                await stream.call.write(self._pack(stream.waiting.take()))
        except asyncio.CancelledError:
            return
        except Exception as exc:
            if stream.call.done():
                # The call ended under the write: the reader reports its status, which may be
                # UNIMPLEMENTED (ending the stream here hid it, and the request failed closed
                # instead of moving to the fallback).
                return
            # The channel broke: no request written or waiting will be answered.
            self._end(stream, StreamFailure(grpc.StatusCode.UNAVAILABLE, f"writing to the stream failed: {exc!r}"))

    async def _read(self, stream: _Stream[Req, Resp]) -> None:
        failure: StreamFailure
        try:
            async for message in stream.call:
                stream.answered = True
                answers = self._unpack(message)
                ids = [self._answer_id(answer) for answer in answers]
                # The message it answers: that of any of its ids still waiting (see the module
                # docstring); none waits when every one was answered or gave up.
                sent = next((stream.sent[request_id] for request_id in ids if request_id in stream.sent), None)
                if sent is None:
                    continue
                if ids != sent:
                    # Another message's id, a request answered twice (`[PASS x, BLOCK x]`), one
                    # left out: no answer in it can be trusted to be what it says.
                    _fail(stream, (*ids, *sent), _MISMATCHED)
                    continue
                for request_id, answer in zip(ids, answers, strict=True):
                    future = stream.pending.get(request_id)
                    if future is not None and not future.done():
                        future.set_result(answer)
            failure = StreamFailure(grpc.StatusCode.UNAVAILABLE, "the stream was closed by the server")
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                self.unsupported = True
                log.info("%s does not offer a batch stream; using its per-request stream", self._service)
            failure = ended(exc, stream.answered)
        except asyncio.CancelledError:
            failure = StreamFailure(grpc.StatusCode.CANCELLED, "the proxy is stopping")
        self._end(stream, failure)

    def _end(self, stream: _Stream[Req, Resp], failure: StreamFailure) -> None:
        """Fail every request waiting on `stream` and drop it; the next request opens a new one."""
        if self._stream is stream:
            self._stream = None
        if stream.ended:
            return
        stream.ended = True
        stream.call.cancel()
        current = asyncio.current_task()
        for task in stream.tasks:
            if task is not current:
                task.cancel()
        for future in stream.pending.values():
            if not future.done():
                future.set_exception(failure)

    async def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            self._end(stream, StreamFailure(grpc.StatusCode.CANCELLED, "the proxy is stopping"))
            for task in stream.tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._fallback.close()


_MISMATCHED = (
    "the service's answer message does not answer the message this request went out in "
    "(one answer per request of that message, in its order)"
)


def _fail(stream: _Stream[Any, Any], request_ids: Iterable[str], detail: str) -> None:
    """Fail the requests of `request_ids` still waiting on `stream` (INTERNAL: the service erred)."""
    for request_id in request_ids:
        future = stream.pending.get(request_id)
        if future is not None and not future.done():
            future.set_exception(StreamFailure(grpc.StatusCode.INTERNAL, detail))
