"""The two deliberately lean HTTP/1.1 servers `bastion bench stack` measures against, each
run as its own process so its CPU is counted apart:

    python -m bastion.eval.bench._fast_http upstream --port-file F
    python -m bastion.eval.bench._fast_http hop --upstream http://127.0.0.1:P/mcp --port-file F

* `upstream`: a fast MCP server in the 2026-07 stateless style: `tools/list` names one
  tool, `echo`, and `tools/call` answers a fixed result with the caller's id. No SDK, no
  session: the cost of an MCP server that does nothing, so what a hop adds stands out.
  `initialize` is refused, which is how the proxy's tool catalog recognises a stateless
  server (it then lists with `_meta` as 2026-07 asks).
* `hop`: a pass-through without governance, the floor of one hop: each request is
  forwarded to the upstream over the proxy's own keep-alive `UpstreamPool` and the answer
  is written back whole. What Bastion adds beyond this is governance and its plumbing.

Both parse with httptools on uvloop (the stack Bastion's proxy serves on), one request at
a time per connection (pipelined requests are answered in order).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httptools
import orjson
import uvloop

from bastion.proxy._upstream import UpstreamPool


@dataclass(frozen=True, slots=True)
class Request:
    method: bytes
    path: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    content_type: bytes
    body: bytes


Handler = Callable[[Request], Awaitable[Response]]
_REASONS = {200: b"OK", 202: b"Accepted", 400: b"Bad Request", 502: b"Bad Gateway"}
#: Not forwarded by the hop: they describe one connection, not the request.
_HOP_BY_HOP = frozenset({b"host", b"content-length", b"connection", b"keep-alive", b"transfer-encoding"})


class _Connection(asyncio.Protocol):
    def __init__(self, handle: Handler) -> None:
        self._handle = handle
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._pending: deque[tuple[Request, bool]] = deque()
        self._busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        request = Request(self._parser.get_method(), self._url, self._headers, b"".join(self._body))
        self._url, self._headers, self._body = b"", [], []
        self._pending.append((request, self._parser.should_keep_alive()))
        if not self._busy:
            self._busy = True
            asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        while self._pending and self._transport is not None:
            request, keep_alive = self._pending.popleft()
            response = await self._handle(request)
            self._write(response, keep_alive)
        self._busy = False

    def _write(self, response: Response, keep_alive: bool) -> None:
        if self._transport is None:
            return
        head = b"HTTP/1.1 %d %s\r\ncontent-length: %d\r\n" % (
            response.status,
            _REASONS.get(response.status, b"Status"),
            len(response.body),
        )
        if response.content_type:
            head += b"content-type: " + response.content_type + b"\r\n"
        if not keep_alive:
            head += b"connection: close\r\n"
        self._transport.write(head + b"\r\n" + response.body)
        if not keep_alive:
            self._close()

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()


# -- the fast upstream ----------------------------------------------------------------

TOOL = "echo"
_JSON = b"application/json"
_TOOLS = orjson.dumps(
    {
        "tools": [
            {
                "name": TOOL,
                "description": "Answers a fixed text.",
                "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}},
            }
        ]
    }
)
_CALL_RESULT = orjson.dumps({"content": [{"type": "text", "text": "ok"}], "isError": False})


def _answer(request_id: Any, result: bytes) -> bytes:
    return b'{"jsonrpc":"2.0","id":' + orjson.dumps(request_id) + b',"result":' + result + b"}"


def _error(request_id: Any, code: int, message: str) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}})


async def upstream(request: Request) -> Response:
    """One JSON-RPC message in, its answer out; no state kept between requests."""
    try:
        message = orjson.loads(request.body)
        method = message["method"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return Response(400, _JSON, _error(None, -32700, "not a JSON-RPC request"))
    request_id = message.get("id")
    if request_id is None:
        return Response(202, b"", b"")  # a notification
    if method == "tools/call":
        return Response(200, _JSON, _answer(request_id, _CALL_RESULT))
    if method == "tools/list":
        return Response(200, _JSON, _answer(request_id, _TOOLS))
    if method == "initialize":
        return Response(400, _JSON, _error(request_id, -32600, "stateless server (2026-07-28): no initialize"))
    return Response(200, _JSON, _error(request_id, -32601, f"method not found: {method}"))


# -- the lean hop ---------------------------------------------------------------------


def hop(pool: UpstreamPool) -> Handler:
    path = pool.path.encode()

    async def forward(request: Request) -> Response:
        headers = [(name, value) for name, value in request.headers if name not in _HOP_BY_HOP]
        try:
            response = await pool.request(request.method, path, headers, request.body)
            body = await response.read(pool.timeout)
        except Exception as exc:  # the hop's client sees a 502, as from any gateway
            return Response(502, b"text/plain", str(exc).encode())
        return Response(response.status, response.header(b"content-type") or b"", body)

    return forward


async def _run(handle: Handler, port: int, port_file: Path | None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await loop.create_server(lambda: _Connection(handle), "127.0.0.1", port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    if port_file is not None:
        tmp = port_file.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(str(bound))
        os.replace(tmp, port_file)  # readers never see a half-written port
    async with server:
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", choices=("upstream", "hop"))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path, help="written with the bound port once listening")
    parser.add_argument("--upstream", help="hop only: the upstream's URL, http://host:port/path")
    args = parser.parse_args(argv)

    async def run() -> None:
        if args.role == "upstream":
            await _run(upstream, args.port, args.port_file)
            return
        if not args.upstream:
            parser.error("hop needs --upstream")
        pool = UpstreamPool(args.upstream, timeout=30.0, max_idle=256)
        try:
            await _run(hop(pool), args.port, args.port_file)
        finally:
            pool.close()

    uvloop.run(run())


if __name__ == "__main__":
    main()
