"""The web server every service uses (bastion/_web.py) bounds how long a request's headers
may take: an attacker's probe held proxy connections open for ever by never finishing
them (slowloris). Bodies are bounded elsewhere (proxy/_asgi.py)."""

from __future__ import annotations

import asyncio
import json
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
        await asyncio.sleep(0.01)  # in pieces, well inside the 0.3 s deadline even on a loaded machine
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


async def _refused_answer(server: WebServer, request: bytes, *, chunk: int = 16 * 1024) -> bytes:
    """What the server answers to `request`, sent in pieces (stopping when it closes)."""
    reader, writer = await _connect(server)
    try:
        for start in range(0, len(request), chunk):
            writer.write(request[start : start + chunk])
            await writer.drain()
    except ConnectionError:
        pass  # closed while we were still sending: the answer is already there
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


@pytest.mark.parametrize(
    "headers",
    [
        b"X-A: b\r\n" * 20_000,  # many small headers (160 KB)
        b"X-Big: " + b"v" * 200_000 + b"\r\n",  # one huge value
        b"Cookie: " + b"c=1; " * 30_000 + b"\r\n",
    ],
    ids=["many", "one-huge-value", "long-cookie"],
)
async def test_headers_over_the_cap_get_431_and_the_server_serves_on(
    server: WebServer, headers: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by an attacker's probe: 20 MB of `X-A: b` lines, no token, grew a service by
    # 230 MB and stalled its event loop; nothing bounded the size or count of headers.
    answer = await _refused_answer(server, b"GET / HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431")
    assert json.loads(body)["error"]["code"] == "bastion.protocol.headers_too_large"
    reader, writer = await _connect(server)
    writer.write(_GET)
    assert (await asyncio.wait_for(reader.readuntil(b"ok"), 10)).startswith(b"HTTP/1.1 200")
    writer.close()


async def test_headers_under_the_cap_with_a_large_body_in_the_same_piece_are_served() -> None:
    # Only the headers count: a body arriving in the same read as their end does not.
    async def echo_length(scope: dict[str, Any], receive: Any, send: Any) -> None:
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        answer = str(size).encode()
        length = [(b"content-length", b"%d" % len(answer))]
        await send({"type": "http.response.start", "status": 200, "headers": length})
        await send({"type": "http.response.body", "body": answer})

    running = await start_web_server(echo_length, "127.0.0.1:0")
    try:
        body = b"x" * 300_000
        headers = b"X-A: b\r\n" * 4_000  # 32 KB, under the cap
        request = b"POST / HTTP/1.1\r\nHost: x\r\n" + headers + b"Content-Length: %d\r\n\r\n" % len(body) + body
        reader, writer = await _connect(running)
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.readuntil(b"300000"), 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200")
    finally:
        await running.stop()


@pytest.mark.parametrize("length", [b"+5", b"abc", b"-1", b"5, 5", b"99999999999999999999999"])
async def test_a_request_that_is_not_http_gets_the_services_json_error_and_is_reported(length: bytes) -> None:
    # Found by an attacker's probe: uvicorn's own plain-text 400 answered these, and the
    # proxy journaled nothing of them.
    reported: list[tuple[int, str, str]] = []
    running = await start_web_server(_ok, "127.0.0.1:0", refused=lambda *seen: reported.append(seen))
    try:
        request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\n"
        answer = await _refused_answer(running, request)
    finally:
        await running.stop()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert b"content-type: application/json" in head
    assert json.loads(body)["error"]["code"] == "bastion.protocol"
    assert reported == [(400, "bastion.protocol", "the request is not valid HTTP/1.1")]
