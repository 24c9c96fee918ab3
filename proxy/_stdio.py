"""One stdio MCP server as a child process: newline-delimited JSON-RPC on its stdin and
stdout, its stderr to our log.

What a child writes on stdout is untrusted: a line that is not one JSON-RPC object
(a stray `print`, a banner, binary noise) is reported to `on_garbage` and skipped, never
relayed to a client; a line longer than the limit ends the child, since the stream
cannot be resynchronised inside it. The child never sees the proxy's environment (it
holds the service token): only a small set of harmless variables plus the `env:` of
its `bastion.yaml` entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from bastion._errors import UpstreamError

log = logging.getLogger("bastion.proxy")

#: Longest stdout line (one JSON-RPC message) accepted from a child.
MAX_LINE = 16 * 1024 * 1024
#: Variables a child inherits from the proxy; everything else must be named in `env:`.
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME", "SHELL", "TERM")
_STOP_GRACE_S = 2.0
_POLL_S = 0.01


def child_environment(extra: Mapping[str, str]) -> dict[str, str]:
    env = {name: os.environ[name] for name in _INHERITED if name in os.environ}
    env.update(extra)
    return env


class StdioProcess:
    """A running child; `on_message` gets each JSON-RPC object it writes, `on_exit` its end."""

    def __init__(
        self,
        label: str,
        command: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path | None,
        on_message: Callable[[dict[str, Any], bytes], None],
        on_garbage: Callable[[str], None],
        on_exit: Callable[[str], None],
    ) -> None:
        self.label = label
        self._command = tuple(command)
        self._env = child_environment(env)
        self._cwd = cwd
        self._on_message = on_message
        self._on_garbage = on_garbage
        self._on_exit = on_exit
        self._proc: subprocess.Popen[bytes] | None = None
        self._stdin: asyncio.StreamWriter | None = None
        self._stdout = asyncio.StreamReader(limit=MAX_LINE)
        self._stderr = asyncio.StreamReader(limit=MAX_LINE)
        self._tasks: list[asyncio.Task[None]] = []
        self._write_lock = asyncio.Lock()
        self._closing = False
        self.exited = False

    async def start(self) -> None:
        try:
            # The standard library's spawn (vfork + exec), not the event loop's: uvloop's
            # spawn forks, and a fork runs gRPC's at-fork handlers in a process whose gRPC
            # threads are busy, which crashed children (SIGSEGV) in the wrap.
            self._proc = subprocess.Popen(  # noqa: ASYNC220 - vfork+exec: returns in about a millisecond
                self._command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._env,
                cwd=self._cwd,
                # Its own process group: a Ctrl-C at the proxy's terminal is the proxy's to
                # handle, and the child is stopped in order, not killed mid-write.
                start_new_session=True,
            )
        except OSError as exc:
            self.exited = True
            raise UpstreamError(f"cannot start stdio server {self.label}: {exc.strerror or exc}") from exc
        proc = self._proc
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(self._stdout), proc.stdout)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(self._stderr), proc.stderr)
        transport, protocol = await loop.connect_write_pipe(
            lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), proc.stdin
        )
        self._stdin = asyncio.StreamWriter(transport, protocol, None, loop)
        self._tasks = [
            asyncio.create_task(self._read_stdout(), name=f"bastion-stdio-out-{self.label}"),
            asyncio.create_task(self._read_stderr(), name=f"bastion-stdio-err-{self.label}"),
        ]

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def send(self, line: bytes) -> None:
        """Write one message; UpstreamError when the child is gone."""
        stdin = self._stdin
        if stdin is None or self.exited:
            raise UpstreamError(f"stdio server {self.label} is not running")
        async with self._write_lock:
            try:
                stdin.write(line.rstrip(b"\n") + b"\n")
                await stdin.drain()
            except (OSError, RuntimeError) as exc:  # a closed pipe: the child died
                raise UpstreamError(f"stdio server {self.label} closed its stdin: {exc}") from exc

    async def _read_stdout(self) -> None:
        reason = "closed its stdout"
        try:
            while True:
                try:
                    line = await self._stdout.readuntil(b"\n")
                except asyncio.IncompleteReadError as exc:
                    if exc.partial.strip():
                        self._garbage(exc.partial)
                    break
                except asyncio.LimitOverrunError:
                    reason = f"wrote a line longer than {MAX_LINE} bytes on stdout"
                    break
                if not line.strip():
                    continue
                try:
                    message = orjson.loads(line)
                except orjson.JSONDecodeError:
                    self._garbage(line)
                    continue
                if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
                    self._garbage(line)
                    continue
                self._on_message(message, line.rstrip(b"\r\n"))
        finally:
            await self._finish(reason)

    def _garbage(self, line: bytes) -> None:
        preview = line[:200].decode("utf-8", "replace").strip()
        self._on_garbage(f"stdio server {self.label} wrote a line that is not JSON-RPC on stdout: {preview!r}")

    async def _read_stderr(self) -> None:
        while True:
            try:
                line = await self._stderr.readline()
            except (ValueError, asyncio.LimitOverrunError):
                continue  # an over-long stderr line: skip it, logs are best effort
            if not line:
                return
            log.info("%s", line.decode("utf-8", "replace").rstrip(), extra={"fields": {"stdio_server": self.label}})

    async def _finish(self, reason: str) -> None:
        if self.exited:
            return
        self.exited = True
        proc = self._proc
        assert proc is not None
        await self._stop_process(proc)
        if not self._closing:  # an exit we asked for is not news
            self._on_exit(f"stdio server {self.label} {reason} (exit status {proc.returncode})")

    async def close(self) -> None:
        """Stop the child: close its stdin, then SIGTERM, then SIGKILL."""
        self._closing = True
        proc = self._proc
        if proc is not None:
            await self._stop_process(proc)
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _stop_process(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is not None:
            return
        if self._stdin is not None:
            self._stdin.close()
        for step in (None, proc.terminate, proc.kill):
            if step is not None:
                with contextlib.suppress(ProcessLookupError):
                    step()
            # Polled, not waited in a thread: no thread per child, and an exit is noticed
            # within a few milliseconds.
            for _ in range(int(_STOP_GRACE_S / _POLL_S)):
                if proc.poll() is not None:
                    return
                await asyncio.sleep(_POLL_S)
