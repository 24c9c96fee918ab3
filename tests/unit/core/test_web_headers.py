"""The web server every service uses (bastion/_web.py) bounds how long a request's headers
may take: an attacker's probe held proxy connections open for ever by never finishing
them (slowloris). Bodies are bounded elsewhere (proxy/_asgi.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bastion._web import WebServer, start_web_server

_GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


async def _ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["path"] == "/slow":
        await asyncio.sleep(1.0)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
async def server() -> AsyncIterator[WebServer]:
    running = await start_web_server(_ok, "127.0.0.1:0", header_timeout=0.3)
    yield running
    await running.stop()


async def _connect(server: WebServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = server.address.rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def test_headers_never_finished_get_408_and_the_connection_is_closed(server: WebServer) -> None:
    reader, writer = await _connect(server)
    writer.write(b"POST /mcp/fast HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)  # read() returns once the server closes
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408")
    # Others are served as before.
    reader, writer = await _connect(server)
    writer.write(_GET)
    assert (await asyncio.wait_for(reader.readuntil(b"ok"), 10)).startswith(b"HTTP/1.1 200")
    writer.close()


@pytest.mark.parametrize(
    "then",
    [
        b"GET / HTTP/1.1\r\nHost",  # the next request's headers, never finished
        # A later probe: a bare CRLF cancelled uvicorn's keep-alive timer and began no
        # request, so the connection had no timer at all and stayed open for ever.
        b"\r\n",
    ],
    ids=["next-request-unfinished", "bare-crlf"],
)
async def test_a_kept_alive_connection_is_held_to_the_same_deadline_after_its_response(
    server: WebServer, then: bytes
) -> None:
    reader, writer = await _connect(server)
    writer.write(_GET)
    assert (await asyncio.wait_for(reader.readuntil(b"ok"), 10)).startswith(b"HTTP/1.1 200")
    writer.write(then)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408")


async def test_headers_sent_in_pieces_within_the_deadline_are_served(server: WebServer) -> None:
    reader, writer = await _connect(server)
    for piece in (b"GET / HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"):
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.05)
    assert (await asyncio.wait_for(reader.readuntil(b"ok"), 10)).startswith(b"HTTP/1.1 200")
    await asyncio.sleep(0.5)  # past the deadline, with no request under way: nothing closes it
    writer.write(_GET)
    assert (await asyncio.wait_for(reader.readuntil(b"ok"), 10)).startswith(b"HTTP/1.1 200")
    writer.close()


async def test_a_stalled_pipelined_request_closes_the_connection_after_the_response_not_inside_it(
    server: WebServer,
) -> None:
    reader, writer = await _connect(server)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHo")  # the second never finished
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200")
    assert answer.endswith(b"ok")  # the whole response, then the close: no 408 written into it
