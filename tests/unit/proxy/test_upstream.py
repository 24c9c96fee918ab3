"""The pooled upstream client against a real (raw asyncio) HTTP server on port 0."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from bastion import UpstreamError
from bastion.proxy import _upstream as upstream_module
from bastion.proxy._upstream import UpstreamPool


@dataclass
class RawServer:
    """Answers each request with whatever `respond` returns; records requests and connections."""

    respond: Callable[[bytes], list[bytes]]
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length) if length else b""
                self.requests.append(head + body)
                for part in self.respond(head + body):
                    if part == b"<close>":
                        writer.close()
                        return
                    if part == b"<pause>":
                        await asyncio.sleep(0.05)
                        continue
                    writer.write(part)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _serve(respond: Callable[[bytes], list[bytes]]) -> tuple[RawServer, asyncio.Server]:
    raw = RawServer(respond)
    server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
    raw.port = server.sockets[0].getsockname()[1]
    return raw, server


def _json(body: bytes) -> list[bytes]:
    return [b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body) + body]


async def test_request_is_written_with_host_and_length_and_connection_is_reused() -> None:
    raw, server = await _serve(lambda _: _json(b'{"ok":true}'))
    pool = UpstreamPool(f"http://127.0.0.1:{raw.port}/mcp", timeout=5)
    async with server:
        for _ in range(3):
            response = await pool.request(b"POST", b"/mcp", [(b"content-type", b"application/json")], b"{}")
            assert (response.status, await response.read()) == (200, b'{"ok":true}')
        pool.close()
    assert raw.connections == 1
    first = raw.requests[0]
    assert first.startswith(b"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1:%d\r\n" % raw.port)
    assert b"content-length: 2\r\n" in first
    assert first.endswith(b"\r\n\r\n{}")


async def test_chunked_sse_body_is_streamed_as_it_arrives() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    event = b"event: message\ndata: {}\n\n"
    chunk = b"%x\r\n%s\r\n" % (len(event), event)
    raw, server = await _serve(lambda _: [head, chunk, b"<pause>", chunk, b"0\r\n\r\n"])
    pool = UpstreamPool(f"http://127.0.0.1:{raw.port}/mcp", timeout=5)
    async with server:
        response = await pool.request(b"POST", b"/mcp", [], b"{}")
        assert response.header(b"content-type") == b"text/event-stream"
        parts = [part async for part in response.stream()]
        pool.close()
    assert parts == [event, event]


async def test_an_idle_connection_closed_by_the_upstream_is_replaced_transparently() -> None:
    raw, server = await _serve(lambda _: [*_json(b"{}"), b"<close>"])
    pool = UpstreamPool(f"http://127.0.0.1:{raw.port}/mcp", timeout=5)
    async with server:
        for _ in range(3):
            response = await pool.request(b"POST", b"/mcp", [], b"{}")
            assert await response.read() == b"{}"
            await asyncio.sleep(0.02)  # let the close reach us, as an idle keep-alive timeout would
        pool.close()
    assert raw.connections == 3


async def test_unreachable_upstream_is_an_upstream_error() -> None:
    raw, server = await _serve(lambda _: _json(b"{}"))
    port = raw.port
    server.close()
    await server.wait_closed()
    with pytest.raises(UpstreamError, match="cannot connect"):
        await UpstreamPool(f"http://127.0.0.1:{port}/mcp", timeout=5).request(b"POST", b"/mcp", [], b"{}")


async def test_upstream_that_never_answers_times_out() -> None:
    raw, server = await _serve(lambda _: [b"<pause>"] * 40)
    async with server:
        with pytest.raises(UpstreamError, match="no response within"):
            await UpstreamPool(f"http://127.0.0.1:{raw.port}/mcp", timeout=0.2).request(b"POST", b"/mcp", [], b"{}")


async def test_garbage_response_is_an_upstream_error() -> None:
    raw, server = await _serve(lambda _: [b"NOT HTTP AT ALL\r\n\r\n"])
    async with server:
        with pytest.raises(UpstreamError, match="invalid HTTP"):
            await UpstreamPool(f"http://127.0.0.1:{raw.port}/mcp", timeout=5).request(b"POST", b"/mcp", [], b"{}")


async def test_connection_dropped_mid_body_is_an_upstream_error() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"
    raw, server = await _serve(lambda _: [head, b"partial", b"<close>"])
    async with server:
        response = await UpstreamPool(f"http://127.0.0.1:{raw.port}/mcp", timeout=5).request(b"POST", b"/mcp", [], b"")
        with pytest.raises(UpstreamError, match="closed"):
            await response.read()


async def test_a_post_is_never_replayed_when_a_reused_connection_fails() -> None:
    # The upstream reads the request and drops the connection without answering: it
    # may have executed the call, so the pool must not send it a second time.
    responses = iter([_json(b"{}"), [b"<close>"], _json(b"{}")])
    raw, server = await _serve(lambda _: next(responses))
    pool = UpstreamPool(f"http://127.0.0.1:{raw.port}/mcp", timeout=5)
    async with server:
        first = await pool.request(b"POST", b"/mcp", [], b"{}")
        assert await first.read() == b"{}"
        with pytest.raises(UpstreamError):
            await pool.request(b"POST", b"/mcp", [], b"{}")
        pool.close()
    assert len(raw.requests) == 2


async def test_connections_idle_past_the_ttl_are_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    raw, server = await _serve(lambda _: _json(b"{}"))
    pool = UpstreamPool(f"http://127.0.0.1:{raw.port}/mcp", timeout=5)
    monkeypatch.setattr(upstream_module, "IDLE_TTL", 0.0)
    async with server:
        for _ in range(2):
            assert await (await pool.request(b"POST", b"/mcp", [], b"{}")).read() == b"{}"
            await asyncio.sleep(0.01)
        pool.close()
    assert raw.connections == 2


async def test_an_answer_over_the_bound_read_whole_is_cut_off_declared_or_chunked() -> None:
    # Unbounded, one upstream answer of gigabytes read whole (or a few large ones at once)
    # could take the proxy down for every agent.
    big = b"x" * 5000
    chunked = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    answers = {
        b"/declared": _json(big),
        b"/chunked": [chunked, b"%x\r\n%s\r\n" % (len(big), big), b"0\r\n\r\n"],
        b"/small": _json(b'{"ok":true}'),
    }
    raw, server = await _serve(lambda request: answers[request.split(b" ")[1]])
    pool = UpstreamPool(f"http://127.0.0.1:{raw.port}/mcp", timeout=5, max_answer=4096)
    async with server:
        for path, said in [(b"/declared", b"is 5000 bytes, over the 4096"), (b"/chunked", b"over the 4096 bytes")]:
            response = await pool.request(b"POST", path, [], b"{}")
            with pytest.raises(UpstreamError, match=said.decode()):
                await response.read()
        response = await pool.request(b"POST", b"/small", [], b"{}")
        assert await response.read() == b'{"ok":true}'  # the pool goes on serving
        pool.close()
    assert UpstreamPool("http://127.0.0.1:1/mcp", timeout=1).max_answer == upstream_module.MAX_ANSWER_BYTES
