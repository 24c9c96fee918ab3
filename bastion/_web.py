"""Serving an ASGI app (proxy, graph REST, policy admin REST) with uvicorn on
httptools, inside the service's own event loop.

We bind the socket ourselves so `host:0` works and the real port is known, and
we switch off uvicorn's signal capture: the service's lifecycle (bastion._service)
owns SIGTERM/SIGINT and stops every server it started, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ._errors import ConfigError
from ._settings import format_addr, parse_addr

#: How long a request's headers may take from its first byte, and a new connection from its
#: opening to its first request's headers: uvicorn bounds neither, so a client that never
#: finishes them held a connection, and a file descriptor, for ever (slowloris; found by an
#: attacker's probe). Bodies have their own bound (BASTION_BODY_TIMEOUT_S, proxy/_asgi.py).
HEADER_TIMEOUT_S = 10.0
_TOO_SLOW = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
#: Bytes a request's line and headers may take. uvicorn on httptools bounds neither their
#: size nor their count: 20 MB of `X-A: b` lines grew a service by 230 MB and stalled its
#: loop for every other client (an attacker's probe, no token needed). Tokens are capped at
#: 16 KiB; nginx's default is 32 KiB, h11's 16 KiB.
MAX_HEADER_BYTES = 64 * 1024
#: How long a refused connection is read (and dropped) after its answer before it closes.
LINGER_S = 2.0

#: Told of every request refused here, before it reached the app: (HTTP status, error
#: code, message). The proxy journals them like its other refusals.
Refused = Callable[[int, str, str], object]


def _error_response(status: int, reason: str, code: str, message: str) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class _HeaderDeadline(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on each request's headers.

    Armed when a connection opens and whenever bytes arrive between requests (a second
    probe held connections open for ever with a bare CRLF after a response: it cancels
    uvicorn's keep-alive timer and the parser skips it without beginning a request); kept,
    not restarted, when a request's first byte arrives; disarmed once its headers are in.
    """

    header_timeout = HEADER_TIMEOUT_S
    max_header_bytes = MAX_HEADER_BYTES
    refused: Refused | None = None
    _header_timer: asyncio.TimerHandle | None = None
    #: Bytes received since the current request began, while its headers are incomplete
    #: (None between requests and once they are in).
    _header_bytes: int | None = None
    #: Refused and lingering: whatever still arrives is dropped (`_linger`).
    _discarding = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        super().data_received(data)
        if self._discarding:
            return  # the parser refused it (send_400_response): no header deadline to re-arm
        if self._header_bytes is not None:
            # The whole chunk counts, what came before the request's first byte too: a chunk
            # that completes the headers has reset the count, so its body never counts.
            self._header_bytes += len(data)
            if self._header_bytes > self.max_header_bytes and not self.transport.is_closing():
                self._refuse(
                    431,
                    "Request Header Fields Too Large",
                    "bastion.protocol.headers_too_large",
                    f"the request line and headers exceed {self.max_header_bytes} bytes",
                )
                return
        if self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
            self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        if self._header_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        self._header_bytes = None
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        # uvicorn's own answer to bytes that are not HTTP/1.1 (a Content-Length of "+5" or
        # "5, 5") is plain text; every other refusal here is the services' JSON error body.
        self._refuse(400, "Bad Request", "bastion.protocol", "the request is not valid HTTP/1.1")

    def _refuse(self, status: int, reason: str, code: str, message: str) -> None:
        self._disarm()
        self._header_bytes = None
        if self.refused is not None:
            self.refused(status, code, message)
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request behind a response still going out: nothing is written
            # inside that response; no more is read, and the connection closes after it.
            self.cycle.keep_alive = False
            self.transport.pause_reading()
            return
        self.transport.write(_error_response(status, reason, code, message))
        self._linger()

    def _linger(self) -> None:
        """Close after the answer without losing it: closing a socket with unread bytes
        sends a reset, and the client's read fails before it sees the answer (a client
        still sending its headers always has some in flight). So the write side is shut,
        what still arrives is read and dropped, and the connection closes when the client
        closes it or after LINGER_S."""
        self._discarding = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A response is still going out (a pipelined request's headers stalled behind
            # it): no 408 inside it; the connection closes once it is sent.
            self.cycle.keep_alive = False
            return
        self.transport.write(_TOO_SLOW)
        self._linger()


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@dataclass(slots=True)
class WebServer:
    server: uvicorn.Server
    task: asyncio.Task[None]
    address: str

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task

    async def run_until(self, stop: asyncio.Event) -> None:
        """Wait for `stop`; if the server dies first, raise its error rather than idle
        on as a service whose HTTP side is gone."""
        stopped = asyncio.create_task(stop.wait(), name="web-stop")
        try:
            await asyncio.wait({stopped, self.task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if self.task.done():
            self.task.result()
            raise ConfigError(f"web server on {self.address} stopped unexpectedly")


def bind_socket(addr: str) -> socket.socket:
    host, port = parse_addr(addr)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose
    # proto is TCP, and with proto 0 every keep-alive response pays Nagle + delayed ACK
    # (~40 ms, measured).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {addr}: {exc}") from exc
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def bind_unix_socket(path: Path) -> socket.socket:
    """A listening Unix socket only its owner may connect to (the stdio bridges' upstream side)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left behind by a process that did not stop cleanly
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # created 0600: no window in which another user could connect
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {path}: {exc}") from exc
    finally:
        os.umask(old_umask)
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def start_web_server(
    app: Any, addr: str | Path, *, header_timeout: float = HEADER_TIMEOUT_S, refused: Refused | None = None
) -> WebServer:
    """Serve `app` on a TCP `host:port` (port 0 picks one), or on a Unix socket at a Path.
    `refused` is told of each request refused before it reached `app`."""
    sock = bind_unix_socket(addr) if isinstance(addr, Path) else bind_socket(addr)
    # staticmethod: a plain function stored on the class would be bound to the protocol.
    protocol = type(
        "HeaderDeadline",
        (_HeaderDeadline,),
        {"header_timeout": header_timeout, "refused": staticmethod(refused) if refused else None},
    )
    config = uvicorn.Config(
        app,
        http=protocol,
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        date_header=False,
        # No X-Forwarded-* rewriting: nothing here trusts the client address, and the
        # middleware would sit on every request of the hot path.
        proxy_headers=False,
        timeout_keep_alive=30,
        # Long-lived SSE streams (an MCP session's GET stream) would otherwise hold a
        # graceful stop open for as long as the client keeps them.
        timeout_graceful_shutdown=5,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
            raise ConfigError(f"web server on {addr} stopped during startup")
        await asyncio.sleep(0.005)
    if isinstance(addr, Path):
        return WebServer(server=server, task=task, address=str(addr))
    host, port = sock.getsockname()[:2]
    return WebServer(server=server, task=task, address=format_addr(host, port))
