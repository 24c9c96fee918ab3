"""Minimal ASGI plumbing for the proxy's hot path: reading a capped body and sending
complete or streamed responses, without a web framework in the way."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import orjson

from bastion._errors import BodyTimeout, PayloadTooLarge, ProtocolError

if TYPE_CHECKING:
    from ._recorder import Record

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON = [(b"content-type", b"application/json")]


def node_headers(record: Record) -> Headers:
    """`Bastion-Workflow-Id` and `Bastion-Node-Id` of an answer: where the caller finds its node."""
    return [(b"bastion-workflow-id", record.workflow_id.encode()), (b"bastion-node-id", record.node_id.encode())]


def authorization_values(scope: Scope) -> list[str]:
    """Every `Authorization` header of the request (more than one is refused by the caller)."""
    return [value.decode("latin-1") for name, value in scope["headers"] if name == b"authorization"]


def header_text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


async def read_body(receive: Receive, headers: dict[bytes, bytes], limit: int, timeout: float) -> bytes:
    """The whole body, at most `limit` bytes, arriving within `timeout` seconds.

    Without the deadline a client that declares a body and never sends it holds a
    connection (and its task) forever: a probe kept 1,500 of them open.
    """
    declared = headers.get(b"content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ProtocolError("Content-Length is not a number")
        if int(declared) > limit:
            raise PayloadTooLarge(f"body of {int(declared)} bytes exceeds the limit of {limit} (BASTION_MAX_BODY)")
    try:
        async with asyncio.timeout(timeout):
            return await _read_all(receive, limit)
    except TimeoutError:
        raise BodyTimeout(f"the request body did not arrive within {timeout:g}s (BASTION_BODY_TIMEOUT_S)") from None


async def _read_all(receive: Receive, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ProtocolError("client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes (BASTION_MAX_BODY)")
            parts.append(chunk)
        if not message.get("more_body", False):
            break
    return parts[0] if len(parts) == 1 else b"".join(parts)


def with_length(headers: Headers, body: bytes) -> Headers:
    """`headers` with the Content-Length of `body` (a filtered or rewritten answer may differ)."""
    return [*((k, v) for k, v in headers if k != b"content-length"), (b"content-length", str(len(body)).encode())]


async def send_bytes(send: Send, status: int, body: bytes, headers: Headers) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, payload: Any, extra: Headers | None = None) -> None:
    await send_bytes(send, status, orjson.dumps(payload), JSON + (extra or []))


async def send_stream(
    send: Send, receive: Receive, status: int, headers: Headers, chunks: AsyncIterator[bytes]
) -> bool:
    """Relay a body as it arrives (SSE); stop when either side goes away. False when the
    client went away before the end.

    A client that disconnects from a long-lived stream is only visible on `receive`,
    so a watcher task cancels the relay and the upstream connection is closed. An error
    of `chunks` (the upstream failing mid-stream) propagates after the body is ended.
    """
    await send({"type": "http.response.start", "status": status, "headers": headers})
    relay = asyncio.current_task()
    assert relay is not None

    async def watch_disconnect() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        relay.cancel()

    watcher = asyncio.create_task(watch_disconnect())
    try:
        try:
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            if not watcher.done():
                # End the response however the relay ended: the client must not wait forever.
                with contextlib.suppress(OSError):
                    await send({"type": "http.response.body", "body": b""})
    except asyncio.CancelledError:
        if watcher.done():  # the client went away: a normal end of a stream
            relay.uncancel()
            return False
        raise
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    return True
