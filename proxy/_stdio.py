"""One stdio MCP server as a child process: newline-delimited JSON-RPC on its stdin and
stdout, its stderr to our log.

What a child writes on stderr or as garbage on stdout reaches the operator's log (and the
garbage the audit trail) only redacted (`ChildLines`): a server that prints
its token, a `Bearer …` header or a private key there would otherwise put it in the log.
Each line is redacted whole with the proxy's Redactor before it is cut to MAX_LOGGED
characters (a secret cut first no longer matches its pattern); a stderr line longer than
MAX_STDERR_LINE is not logged, since it cannot be redacted whole; a private key printed
over several lines, which no pattern of one line finds, is hidden from its BEGIN line to
its END line. Without a Redactor, stderr is not logged at all (and garbage is shown as
before: its first 200 bytes).

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
import re
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from bastion._errors import UpstreamError

from ._redact import SECRET_KEYS, Redactor

log = logging.getLogger("bastion.proxy")

#: Longest stdout line (one JSON-RPC message) accepted from a child.
MAX_LINE = 16 * 1024 * 1024
#: Longest stderr line read; a longer one is dropped whole (it could not be redacted whole).
MAX_STDERR_LINE = 64 * 1024
#: Characters of a redacted stderr line (or stdout garbage preview) logged.
MAX_LOGGED = 2000
#: Lines of a multi-line private key hidden at most before stderr is logged again.
_MAX_KEY_LINES = 512
_KEY_PLACEHOLDER = "[REDACTED:private_key]"
#: A secret field's value in free text (`password=…`, `"token": "…"`, `Authorization: Basic
#: …`), which the Redactor's patterns do not find: they read a secret's shape, and a
#: password has none. The names are the Redactor's own secret field names (and a
#: placeholder's kind, `[REDACTED:api_key:…]`, is none of them).
_ASSIGNED = re.compile(
    r"(?i)(?<![a-z0-9])(?<!REDACTED:)(?:" + "|".join(sorted(map(re.escape, SECRET_KEYS), key=len, reverse=True)) + r")"
    r"(\"?\s*[=:]\s*)(?!\[REDACTED:)((?:(?:basic|bearer|digest|token)\s+)?(?:\"[^\"]*\"|'[^']*'|[^\s,;&]+))"
)
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
        redactor: Redactor | None = None,
    ) -> None:
        """`redactor`: the proxy's, for what the child writes that is logged; None logs none
        of its stderr."""
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
        self._stderr = asyncio.StreamReader(limit=MAX_STDERR_LINE)
        self._redactor = redactor
        self._garbage_lines = ChildLines(redactor, limit=200)
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
        if self._redactor is None:
            # Unchanged without a redactor: the journal's copy is still redacted (the
            # recorder's patterns), the log's is not — give StdioUpstream the redactor.
            shown: str | None = line[:200].decode("utf-8", "replace").strip()
        else:
            shown = self._garbage_lines.line(line[:MAX_STDERR_LINE])
        if shown is None:
            shown = f"[{len(line)} bytes, not shown: part of a private key]"
        self._on_garbage(f"stdio server {self.label} wrote a line that is not JSON-RPC on stdout: {shown!r}")

    async def _read_stderr(self) -> None:
        lines = ChildLines(self._redactor)
        if self._redactor is None:
            log.warning("stdio server %s: its stderr is not logged (no redactor given)", self.label)
        while True:
            try:
                line = await self._stderr.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:  # its end, and a last line with no LF
                line = exc.partial
                if not line:
                    return
            except asyncio.LimitOverrunError as exc:  # longer than MAX_STDERR_LINE: dropped whole
                await self._stderr.readexactly(exc.consumed)
                lines.overlong()
                continue
            if (text := lines.line(line)) is not None:
                log.info("%s", text, extra={"fields": {"stdio_server": self.label}})

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


class ChildLines:
    """What of the lines a child writes (on stderr, or as garbage on stdout) is shown (the
    module docstring): `line` gives a line's text to show, or None for one that is not."""

    def __init__(self, redactor: Redactor | None, limit: int = MAX_LOGGED) -> None:
        self._redactor = redactor
        self._limit = limit
        #: Lines of a private key block still to hide (0: none open).
        self._key_lines = 0
        #: The rest of an over-long line is still to come, as the next line read.
        self._tail = False

    def overlong(self) -> None:
        """The line being read was too long: it and the rest of it are not shown."""
        self._tail = True

    def line(self, raw: bytes) -> str | None:
        if self._redactor is None:
            return None
        if self._tail:
            self._tail = not raw.endswith(b"\n")
            return None
        text = raw.decode("utf-8", "replace").strip()
        if self._key_lines:
            # A key's body and END line, which no pattern of one line finds.
            self._key_lines = 0 if _closes_key(text) else self._key_lines - 1
            return None
        text, opened = _redacted(text, self._redactor)
        if opened:
            self._key_lines = _MAX_KEY_LINES
        if len(text) <= self._limit:
            return text
        return f"{text[: self._limit]}…[{len(text) - self._limit} more characters]"


def _redacted(text: str, redactor: Redactor) -> tuple[str, bool]:
    """`text` redacted, and whether a private key block is left open in it (its BEGIN line
    and no END line: the rest of it is replaced, and the lines after it are key too)."""
    text = redactor.text(text)[0]
    text = _ASSIGNED.sub(lambda match: match.group(0)[: match.start(2) - match.start(0)] + "[REDACTED:field]", text)
    begin = text.find("-----BEGIN")
    if begin < 0 or "PRIVATE KEY" not in text[begin:]:
        return text, False
    return text[:begin] + _KEY_PLACEHOLDER, True


def _closes_key(text: str) -> bool:
    end = text.find("-----END")
    return end >= 0 and "PRIVATE KEY" in text[end:]
