"""Each upstream's live tool list, so a called name is checked against what really exists.

Policies match tool names case-insensitively (so `demo__getWeather` and a rule written
`demo__getweather` agree), but an upstream may resolve names in its own way. The
skeleton let `Transfer` and `TRANSFER` past a rule denying `bank__transfer` under a
default-allow policy, and only the upstream's own lookup stopped them. So a call is
forwarded only when its name is *exactly* in the upstream's live `tools/list`, and a
list holding two names that differ only in case makes both ambiguous: neither is
called, since no case-insensitive rule could tell them apart.

The catalog asks the upstream itself, with a session of its own (the 2025-11
handshake, else the 2026-07 stateless form), caches the answer for `ttl` seconds, and
on a name it does not know asks again at most every `min_refresh` seconds, so a tool
added upstream is callable within seconds while a caller spraying invented names
cannot make the proxy hammer the upstream. Fail closed: a list that cannot be fetched
refuses the call with the reason.

The same listing, with each tool's `inputSchema` as listed, is what operators read at
`GET /v1/tools` (proxy/_tools_api.py) and what policy validation checks rules against.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from bastion import __version__
from bastion._errors import UnknownTool, UpstreamError

from ._envelope import public_reason
from ._sse import events
from ._upstream import UpstreamPool

log = logging.getLogger("bastion.proxy")

_MAX_PAGES = 50
_MAX_TOOLS = 10_000
_LEGACY_VERSION = "2025-11-25"
_STATELESS_VERSION = "2026-07-28"
_ADDRESS_TUPLE = re.compile(r"\('<internal address>',\s*\d+\)")
_JSON_HEADERS = [(b"accept", b"application/json, text/event-stream"), (b"content-type", b"application/json")]


@dataclass(frozen=True, slots=True)
class LiveTool:
    """One tool of an upstream's live list: its exact name and input schema as listed."""

    name: str
    input_schema: Any


class _Listing:
    __slots__ = ("ambiguous", "by_lower", "names", "tools")

    def __init__(self, tools: list[LiveTool]) -> None:
        self.tools = tuple(tools)
        self.names = frozenset(tool.name for tool in tools)
        self.by_lower: dict[str, str] = {}
        self.ambiguous: set[str] = set()
        for name in self.names:
            lower = name.lower()
            if lower in self.by_lower:
                self.ambiguous.add(lower)
            self.by_lower[lower] = name


class ToolCatalog:
    def __init__(
        self, server: str, pool: UpstreamPool, *, ttl: float = 30.0, min_refresh: float = 2.0, timeout: float = 5.0
    ) -> None:
        self._server = server
        self._pool = pool
        self._ttl = ttl
        self._min_refresh = min_refresh
        self._timeout = timeout
        self._listing: _Listing | None = None
        self._fetched_at = float("-inf")
        self._inflight: asyncio.Task[_Listing] | None = None
        self._error = ""

    async def check(self, tool: str) -> None:
        """Return when `tool` is exactly one of the upstream's tools; else raise UnknownTool."""
        listing = self._listing
        now = time.monotonic()
        age = now - self._fetched_at
        if listing is not None and age > self._ttl and tool in listing.names:
            # Stale but naming the tool: answer from it and refresh behind the call. Waiting
            # made every call stall for as long as a listing takes, seconds for a stdio
            # server whose catalog session starts a child; the window in which a tool just
            # removed upstream still passes this check is one refresh, and the upstream
            # refuses a tool it no longer has anyway.
            self._refresh_behind()
        elif listing is None or age > self._ttl or (tool not in listing.names and age > self._min_refresh):
            listing = await self._refresh()
        assert listing is not None
        if tool.lower() in listing.ambiguous:
            raise UnknownTool(
                f"tool {tool!r}: upstream {self._server!r} lists several tools that differ only in case; "
                "none of them can be governed unambiguously, so none is called"
            )
        if tool in listing.names:
            return
        real = listing.by_lower.get(tool.lower())
        hint = f" (names are exact: did you mean {real!r}?)" if real is not None else ""
        raise UnknownTool(f"tool {tool!r} is not in the tools/list of upstream {self._server!r}{hint}")

    async def tools(self) -> tuple[LiveTool, ...]:
        """The upstream's live tools (cached as for `check`); UpstreamError, without internal
        addresses, when they cannot be listed."""
        listing = self._listing
        if listing is None or time.monotonic() - self._fetched_at > self._ttl:
            try:
                listing = await self._refresh()
            except UpstreamError:
                raise UpstreamError(f"cannot list the tools of upstream {self._server!r}: {self._error}") from None
        return listing.tools

    def _refresh_behind(self) -> None:
        if self._inflight is None:
            task = asyncio.create_task(self._fetch_guarded(), name=f"bastion-catalog-{self._server}")
            self._inflight = task

            def done(finished: asyncio.Task[_Listing]) -> None:
                if self._inflight is finished:
                    self._inflight = None
                if not finished.cancelled():
                    finished.exception()  # logged by _fetch_guarded; retrieved so asyncio stays quiet

            task.add_done_callback(done)

    async def _refresh(self) -> _Listing:
        if self._inflight is None:
            self._inflight = asyncio.create_task(self._fetch_guarded(), name=f"bastion-catalog-{self._server}")
        task = self._inflight
        try:
            return await asyncio.shield(task)
        finally:
            if task.done() and self._inflight is task:
                self._inflight = None

    async def _fetch_guarded(self) -> _Listing:
        try:
            async with asyncio.timeout(self._timeout):
                names = await self._fetch()
        except (UpstreamError, TimeoutError, ValueError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            log.warning("cannot list tools of upstream %r: %s", self._server, reason)
            self._fetched_at = time.monotonic()  # failures are retried at min_refresh pace too
            # public_reason leaves the port of an OSError's ('host', port) tuple: drop it too.
            self._error = _ADDRESS_TUPLE.sub("<internal address>", public_reason(reason))
            raise UpstreamError(
                f"cannot check the tool name against upstream {self._server!r}'s tools/list "
                f"({public_reason(reason)}); the call is refused (fail closed)"
            ) from exc
        listing = _Listing(names)
        self._listing = listing
        self._error = ""
        self._fetched_at = time.monotonic()
        return listing

    async def _fetch(self) -> list[LiveTool]:
        session = await self._initialize()
        if session is None:
            return await self._list([(b"mcp-protocol-version", _STATELESS_VERSION.encode())], stateless=True)
        headers = [(b"mcp-protocol-version", session[1].encode())]
        if session[0]:
            headers.append((b"mcp-session-id", session[0].encode()))
        try:
            await self._post({"jsonrpc": "2.0", "method": "notifications/initialized"}, headers)
            return await self._list(headers, stateless=False)
        finally:
            if session[0]:
                with contextlib.suppress(UpstreamError):
                    response = await self._pool.request(b"DELETE", self._pool.path.encode(), headers, b"")
                    await response.read()

    async def _initialize(self) -> tuple[str, str] | None:
        """(session id or "", negotiated version), or None when the upstream refuses the handshake."""
        params = {
            "protocolVersion": _LEGACY_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "bastion-tool-catalog", "version": __version__},
        }
        status, headers, messages = await self._post(
            {"jsonrpc": "2.0", "id": "bastion-init", "method": "initialize", "params": params}, []
        )
        result = _result(messages, "bastion-init")
        if status >= 400 or result is None:
            return None
        version = result.get("protocolVersion") if isinstance(result, dict) else None
        session = next((v.decode("latin-1") for k, v in headers if k == b"mcp-session-id"), "")
        return session, version if isinstance(version, str) else _LEGACY_VERSION

    async def _list(self, headers: list[tuple[bytes, bytes]], *, stateless: bool) -> list[LiveTool]:
        names: list[LiveTool] = []
        cursor: str | None = None
        for page in range(_MAX_PAGES):
            params: dict[str, Any] = {"cursor": cursor} if cursor else {}
            extra = headers
            if stateless:
                params["_meta"] = {
                    "io.modelcontextprotocol/protocolVersion": _STATELESS_VERSION,
                    "io.modelcontextprotocol/clientCapabilities": {},
                }
                extra = [*headers, (b"mcp-method", b"tools/list")]
            request_id = f"bastion-list-{page}"
            status, _, messages = await self._post(
                {"jsonrpc": "2.0", "id": request_id, "method": "tools/list", "params": params}, extra
            )
            result = _result(messages, request_id)
            if status >= 400 or not isinstance(result, dict) or not isinstance(result.get("tools"), list):
                raise ValueError(f"tools/list answered HTTP {status} without a tool list")
            names += [
                LiveTool(t["name"], t.get("inputSchema"))
                for t in result["tools"]
                if isinstance(t, dict) and isinstance(t.get("name"), str)
            ]
            if len(names) > _MAX_TOOLS:
                raise ValueError(f"more than {_MAX_TOOLS} tools listed")
            cursor = result.get("nextCursor")
            if not isinstance(cursor, str) or not cursor:
                return names
        raise ValueError(f"tools/list has more than {_MAX_PAGES} pages")

    async def _post(
        self, message: dict[str, Any], headers: list[tuple[bytes, bytes]]
    ) -> tuple[int, list[tuple[bytes, bytes]], list[Any]]:
        response = await self._pool.request(
            b"POST", self._pool.path.encode(), [*_JSON_HEADERS, *headers], orjson.dumps(message)
        )
        body = await response.read()
        if not body:
            return response.status, response.headers, []
        if response.is_sse:
            return response.status, response.headers, list(_sse_messages(body))
        try:
            return response.status, response.headers, [orjson.loads(body)]
        except orjson.JSONDecodeError:
            return response.status, response.headers, []


def _sse_messages(body: bytes) -> Iterator[Any]:
    for event in events(body):
        if data := event.data:
            with contextlib.suppress(orjson.JSONDecodeError):
                yield orjson.loads(data)


def _result(messages: list[Any], request_id: str) -> Any:
    for message in messages:
        if isinstance(message, dict) and message.get("id") == request_id and "result" in message:
            return message["result"]
    return None
