"""`bastion wrap -- <command>`: a stdio MCP server behind the enforcer, spoken to over stdio.

A desktop MCP client starts its servers as commands and talks to them on stdin/stdout;
putting `bastion wrap --` in front of the command is the whole change to its config:

    {"command": "bastion", "args": ["wrap", "--name", "files", "--", "npx", "server-files", "/tmp"]}

The wrap process runs the proxy itself, in-process, on a loopback port, with the command
as its only upstream (`servers: NAME: {command: [...]}`: one supervised child per session,
as `bastion proxy serve` runs it), so every check and decision is the proxy's and goes to
the running stack's policy, verifier and graph. Its front end (`StdioFront`) reads the
client's JSON-RPC lines, POSTs each to `/mcp/NAME` as the agent, and writes what comes
back (JSON or SSE events, the server's requests included) as lines on stdout. Nothing
else ever goes to stdout: logs go to stderr.

Without a running stack the wrap refuses to start (exit 2) and says how to start one:
an enforcer that cannot ask policy would block every call, which a desktop client would
show as a server that mysteriously fails. Each wrap journals into a directory of its own
under `$BASTION_HOME/wrap/` (locked while in use); a later wrap adopts a directory whose
process died and ships what it left, so nothing a crashed wrap recorded is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import IO, Any

import orjson
from pydantic import ValidationError

from bastion._appconfig import AppConfig, ServerConfig, find_app_config
from bastion._errors import BastionError, ConfigError, UpstreamError
from bastion._identity import DEV_KEY_FILE, ensure_dev_key, issue_token
from bastion._logging import configure_logging
from bastion._rpc import check_health
from bastion._tls import grpc_tls

from ._config import ProxySettings
from ._server import serve
from ._sse import sse_data
from ._upstream import UpstreamPool

log = logging.getLogger("bastion.proxy")

#: Journal directories `$BASTION_HOME/wrap/journal-N` tried for a free one.
_MAX_JOURNALS = 256
_TOKEN_TTL_S = 30 * 24 * 3600
Write = Callable[[bytes], Awaitable[None]]


class StdioFront:
    """The client's side: lines in, POSTs to the in-process proxy, lines out."""

    def __init__(self, pool: UpstreamPool, token: str | Callable[[], str], write: Write) -> None:
        self._pool = pool
        self._path = pool.path.encode()
        self._token = token if callable(token) else (lambda: token)
        self._write = write
        self._session: bytes | None = None
        self._version: bytes | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Task[None] | None = None

    async def run(self, lines: asyncio.StreamReader) -> None:
        """Relay until the client closes stdin; then end the session."""
        try:
            while (line := await _read_line(lines)) != b"":
                if line is None:
                    await self._error(None, -32700, "Parse error: a line on stdin is over BASTION_MAX_BODY; dropped")
                    continue
                if not line.strip():
                    continue
                try:
                    message = orjson.loads(line)
                except orjson.JSONDecodeError:
                    # Sent on all the same: the proxy answers -32700 and journals the
                    # refusal, so the audit trail shows what the client sent.
                    message = None
                if isinstance(message, dict) and message.get("method") == "initialize":
                    # Everything after the handshake needs its session id: finish it first.
                    await self._post(message, line)
                    continue
                task = asyncio.create_task(self._post(message, line))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            await self.close()

    def _headers(self) -> list[tuple[bytes, bytes]]:
        headers = [
            (b"authorization", b"Bearer " + self._token().encode()),
            (b"accept", b"application/json, text/event-stream"),
            (b"content-type", b"application/json"),
        ]
        if self._session is not None:
            headers.append((b"mcp-session-id", self._session))
        if self._version is not None:
            headers.append((b"mcp-protocol-version", self._version))
        return headers

    async def _post(self, message: Any, line: bytes) -> None:
        msg_id = message.get("id") if isinstance(message, dict) else None
        try:
            response = await self._pool.request(b"POST", self._path, self._headers(), line.strip())
            if isinstance(message, dict) and message.get("method") == "initialize" and response.status == 200:
                self._session = response.header(b"mcp-session-id")
            if response.is_sse:
                async for data in sse_data(response.stream(None)):
                    self._learn_version(data)
                    await self._write(data)
                return
            body = await response.read(None)
        except UpstreamError as exc:
            await self._error(msg_id, -32603, f"Bastion proxy unreachable: {exc}")
            return
        await self._relay_body(msg_id, response.status, body)
        if self._session is not None and self._listener is None:
            self._listener = asyncio.create_task(self._listen())

    async def _relay_body(self, msg_id: Any, status: int, body: bytes) -> None:
        if not body.strip():
            return
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            answer = None
        if isinstance(answer, dict) and answer.get("jsonrpc") == "2.0":
            self._learn_version(body)
            await self._write(body)
        elif msg_id is not None:
            # An HTTP-level refusal (401, 403, 404 for an ended session, …): its reason, as JSON-RPC.
            error = answer.get("error") if isinstance(answer, dict) else None
            text = error.get("message") if isinstance(error, dict) else body[:200].decode("utf-8", "replace")
            await self._error(msg_id, -32001 if status == 404 else -32603, f"HTTP {status}: {text}")

    def _learn_version(self, data: bytes) -> None:
        if self._version is None and b'"protocolVersion"' in data:
            with contextlib.suppress(orjson.JSONDecodeError):
                result = orjson.loads(data).get("result")
                if isinstance(result, dict) and isinstance(result.get("protocolVersion"), str):
                    self._version = result["protocolVersion"].encode()

    async def _listen(self) -> None:
        """The session's GET stream: the server's messages that belong to no request."""
        with contextlib.suppress(UpstreamError):
            response = await self._pool.request(b"GET", self._path, self._headers(), b"")
            if response.status != 200:
                response.release()
                return
            async for data in sse_data(response.stream(None)):
                await self._write(data)

    async def _error(self, msg_id: Any, code: int, text: str) -> None:
        await self._write(orjson.dumps({"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": text}}))

    async def close(self) -> None:
        for task in [*self._tasks, *([self._listener] if self._listener else [])]:
            task.cancel()
        await asyncio.gather(*self._tasks, *([self._listener] if self._listener else []), return_exceptions=True)
        if self._session is not None:
            with contextlib.suppress(UpstreamError):
                response = await self._pool.request(b"DELETE", self._path, self._headers(), b"")
                await response.read(5.0)
        self._pool.close()


async def _read_line(reader: asyncio.StreamReader) -> bytes | None:
    """The next line (b"" at the end of input); None for a line over the reader's limit,
    skipped to its end. `readline()` raises on such a line, which ended the wrap: one
    oversized message from the client took its server down with it."""
    try:
        return await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        return exc.partial  # the last line, without a newline
    except asyncio.LimitOverrunError as exc:
        consumed = exc.consumed
    # Drop the line a limit's worth at a time, so memory stays bounded however long it is.
    while True:
        await reader.readexactly(consumed)
        try:
            await reader.readuntil(b"\n")
            return None
        except asyncio.IncompleteReadError:
            return None
        except asyncio.LimitOverrunError as exc:
            consumed = exc.consumed


def _lock_journal(home: Path) -> tuple[Path, int]:
    """A journal directory no live wrap holds (its leftovers are shipped by us), and its lock."""
    base = home / "wrap"
    base.mkdir(parents=True, exist_ok=True)
    for index in range(_MAX_JOURNALS):
        directory = base / f"journal-{index}"
        directory.mkdir(exist_ok=True)
        fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return directory, fd
    raise ConfigError(f"{_MAX_JOURNALS} wraps already run from {home}")


def _token(home: Path, app: AppConfig, agent: str) -> str | Callable[[], str]:
    configured = os.environ.get("BASTION_AGENT_TOKEN")
    if configured:
        return configured
    if not (home / DEV_KEY_FILE).exists():
        raise ConfigError(
            f"no agent token: set BASTION_AGENT_TOKEN (bastion token issue --agent {agent}), "
            f"or run from the stack's BASTION_HOME (no dev key in {home})"
        )
    key = ensure_dev_key(home)
    # A desktop client keeps a wrap running for days, past any token's lifetime
    # (auth.max_token_lifetime_s): mint a fresh one when half of the current one is used.
    ttl = min(_TOKEN_TTL_S, app.auth.max_token_lifetime_s)
    minted: list[tuple[float, str]] = []

    def current() -> str:
        now = time.monotonic()
        if not minted or now - minted[0][0] > ttl / 2:
            minted[:] = [(now, issue_token(key, subject=agent, ttl_seconds=ttl, auth=app.auth))]
        return minted[0][1]

    current()
    return current


async def _wrap(
    settings: ProxySettings, app: AppConfig, name: str, agent: str, stdin: IO[bytes], stdout: IO[bytes]
) -> int:
    tls = grpc_tls(settings)
    for service, addr in (("policy", settings.policy_grpc_addr), ("verifier", settings.verifier_addr)):
        if not await check_health(addr, timeout=2.0, tls=tls):
            print(
                f"bastion wrap: no Bastion stack is running (the {service} service at {addr} does not answer). "
                "Start it with `bastion up`, or set BASTION_POLICY_GRPC_ADDR, BASTION_VERIFIER_ADDR and "
                "BASTION_GRAPH_GRPC_ADDR to where it runs.",
                file=sys.stderr,
            )
            return 2
    token = _token(settings.home.resolve(), app, agent)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=settings.max_body + 1)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stdin)
    write_lock = asyncio.Lock()

    async def write(data: bytes) -> None:
        async with write_lock:  # one message per line, never interleaved
            stdout.write(data.strip() + b"\n")
            stdout.flush()

    stop = asyncio.Event()
    addresses: asyncio.Future[dict[str, str]] = loop.create_future()
    proxy = asyncio.create_task(serve(settings, app, addresses.set_result, stop))
    started: set[asyncio.Future[Any]] = {proxy, addresses}
    done, _ = await asyncio.wait(started, return_when=asyncio.FIRST_COMPLETED)
    if proxy in done:
        proxy.result()
        return 1
    pool = UpstreamPool(f"http://{addresses.result()['http']}/mcp/{name}", timeout=settings.upstream_timeout_s)
    try:
        await StdioFront(pool, token, write).run(reader)
    finally:
        stop.set()
        await proxy
    return 0


def wrap(command: Sequence[str], *, name: str, agent: str, config: Path | None) -> int:
    """Run `command` behind the enforcer until the client closes stdin. Exit codes as the CLI's."""
    if not command:
        print("bastion wrap: give the server's command after `--`", file=sys.stderr)
        return 2
    base = ProxySettings()
    configure_logging("wrap", base.log_level)
    try:
        home = base.home.resolve()
        # Only its auth and allowed hosts are used: the stack's upstreams' credentials are not.
        _, found = find_app_config(config, base.config, credentials=False)
        journal, lock = _lock_journal(home)
        # The wrapped command is the only upstream; auth and allowed hosts stay the stack's.
        app = AppConfig(
            servers={name: ServerConfig(command=tuple(command))},
            auth=found.auth,
            allowed_hosts=found.allowed_hosts,
        )
    except (BastionError, ValidationError) as exc:
        print(f"bastion wrap: {exc}", file=sys.stderr)
        return 2
    settings = base.model_copy(update={"proxy_addr": "127.0.0.1:0", "journal_dir": journal})
    try:
        import uvloop

        return uvloop.run(_wrap(settings, app, name, agent, sys.stdin.buffer, sys.stdout.buffer))
    except ConfigError as exc:
        print(f"bastion wrap: {exc}", file=sys.stderr)
        return 2
    except BastionError as exc:
        print(f"bastion wrap: {exc}", file=sys.stderr)
        return 1
    finally:
        os.close(lock)
