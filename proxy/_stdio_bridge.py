"""A stdio MCP server of `bastion.yaml` (`servers: NAME: {command: [...]}`) as an upstream.

The per-server endpoint relays streamable HTTP byte for byte and governs it on the way
(`_mcp_http.py`); a stdio server is made to look like any other upstream instead of
growing a second governed path: the proxy serves it as streamable HTTP on a private Unix
socket (0600, in a private directory), where `_session_host.py` turns each
session into one child process. So every check of the HTTP path (authentication, exact
tool names against the live list, value budgets, caller-bound sessions, decisions,
result events) holds for stdio servers unchanged.

One child per client session, because a stdio server takes exactly one `initialize`;
one shared child for stateless (2026-07) requests. Children are supervised: a child that
exits answers every request still in flight with an error and ends its session (the
client's next request gets 404 and it initialises again); a server that keeps dying
right after it starts is started again only after an exponential backoff, so a broken
command cannot become a fork loop. Its stderr goes to the proxy's log, redacted with the
proxy's Redactor (`_stdio.py`; not logged without one), and what it writes on stdout that
is not JSON-RPC is dropped and reported.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bastion._appconfig import ServerConfig
from bastion._errors import UpstreamError
from bastion._web import WebServer, start_web_server

from ._redact import Redactor
from ._session_host import Backend, HostedSession, SessionHost
from ._stdio import StdioProcess
from ._upstream import MAX_ANSWER_BYTES, UpstreamPool

log = logging.getLogger("bastion.proxy")

#: A child that dies sooner than this after starting counts as a crash for the backoff.
_QUICK_EXIT_S = 10.0
#: Crashes in a row tolerated before starts are delayed.
_FREE_CRASHES = 3
_MAX_BACKOFF_S = 30.0
#: Lines that are not JSON-RPC reported per child (the rest are dropped silently).
_REPORTED_GARBAGE = 11

#: (kind, detail) of something that must reach the audit trail: a crash, garbage on stdout.
Report = Callable[[str, str], None]


class _Backoff:
    """Delays the next start after repeated quick crashes."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._crashes = 0
        self._not_before = 0.0

    def check(self) -> None:
        wait = self._not_before - time.monotonic()
        if wait > 0:
            raise UpstreamError(
                f"stdio server {self._label} exited {self._crashes} times in a row right after starting; "
                f"it is started again in {wait:.1f}s"
            )

    def exited(self, lived: float) -> None:
        if lived >= _QUICK_EXIT_S:
            self._crashes = 0
            return
        self._crashes += 1
        if self._crashes >= _FREE_CRASHES:
            delay = min(_MAX_BACKOFF_S, 0.5 * 2 ** (self._crashes - _FREE_CRASHES))
            self._not_before = time.monotonic() + delay
            log.warning("stdio server %s keeps exiting; next start in %.1fs", self._label, delay)


class _ChildBackend:
    """A hosted session's child: messages in on stdin, out through the session."""

    def __init__(self, process: StdioProcess) -> None:
        self.process = process
        self.started = time.monotonic()

    async def deliver(self, message: dict[str, Any], raw: bytes, context: Any) -> None:
        await self.process.send(raw)

    async def close(self) -> None:
        await self.process.close()


class StdioUpstream:
    def __init__(
        self,
        name: str,
        config: ServerConfig,
        *,
        report: Report,
        max_sessions: int,
        idle_timeout: float,
        max_body: int,
        redactor: Redactor | None = None,
        max_per_owner: int | None = None,
    ) -> None:
        """`redactor`: redacts what a child writes on stderr before it is logged (the
        proxy's: its placeholders match the journal's); without one stderr is not logged."""
        assert config.command is not None
        self.name = name
        self._redactor = redactor
        self._config = config
        self._report = report
        self._backoff = _Backoff(name)
        self._host = SessionHost(
            f"stdio server {name}",
            self._open,
            max_sessions=max_sessions,
            idle_timeout=idle_timeout,
            max_body=max_body,
            max_per_owner=max_per_owner,
        )
        self._socket = _socket_path(name)
        self._web: WebServer | None = None

    async def start(self) -> None:
        self._web = await start_web_server(self._host, self._socket)

    def pool(self, timeout: float, max_answer: int = MAX_ANSWER_BYTES) -> UpstreamPool:
        return UpstreamPool(
            f"http://stdio.{self.name}/mcp", timeout=timeout, unix_path=str(self._socket), max_answer=max_answer
        )

    @property
    def session_count(self) -> int:
        return self._host.session_count

    async def _open(self, session: HostedSession) -> Backend:
        self._backoff.check()
        backend: _ChildBackend | None = None

        def exited(reason: str) -> None:
            lived = time.monotonic() - (backend.started if backend is not None else 0.0)
            self._backoff.exited(lived)
            log.warning("%s", reason)
            self._report("bastion.stdio_exit", reason)
            session.backend_gone(reason)
            self._host.forget(session)

        garbage_lines = 0

        def garbage(detail: str) -> None:
            # Each report is an audit record: a child printing noise in a loop would flood
            # the journal and the graph (an attacker's probe: 500 lines, 500 records). The
            # first few are reported, then one note; the rest are dropped unreported.
            nonlocal garbage_lines
            garbage_lines += 1
            if garbage_lines > _REPORTED_GARBAGE:
                return
            if garbage_lines == _REPORTED_GARBAGE:
                detail += "; further lines that are not JSON-RPC go unreported for this child"
            log.warning("%s", detail)
            self._report("bastion.stdio_garbage", detail)

        assert self._config.command is not None
        process = StdioProcess(
            self.name,
            self._config.command,
            env=self._config.env,
            cwd=self._config.cwd,
            on_message=session.emit,
            on_garbage=garbage,
            on_exit=exited,
            redactor=self._redactor,
        )
        await process.start()
        backend = _ChildBackend(process)
        return backend

    async def close(self) -> None:
        await self._host.close()
        if self._web is not None:
            await self._web.stop()
        with contextlib.suppress(FileNotFoundError):
            self._socket.unlink()
        with contextlib.suppress(OSError):
            self._socket.parent.rmdir()


def _socket_path(name: str) -> Path:
    # A fresh private directory (0700 from mkdtemp) per process: `bastion wrap` and the
    # proxy may serve servers of the same name from one $BASTION_HOME, and a Unix socket
    # path must stay under 108 bytes however deep $BASTION_HOME is.
    return Path(tempfile.mkdtemp(prefix="bastion-stdio-")) / f"{name}.sock"
