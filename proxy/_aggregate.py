"""The aggregated `/mcp` session: one client session fanned out to one link per upstream.

The client sees one server whose tools and prompts are `server__name` (resources keep
their URIs, named `server__name`); `initialize` opens a link to every upstream with the
client's own params and answers with the union of their capabilities; list methods ask
every upstream, rename, and keep only what the caller's policy could allow; a governed
call goes to the one upstream its name (or URI) belongs to, with the upstream's own
name and an id of the link's, and its answer comes back under the client's id.

Requests an upstream makes of the client (sampling, elicitation, roots) get an id of
ours on the way out, and the client's answer is routed back to that upstream under its
original id; notifications (progress, logging) go to the stream of the client request
they came with. The HTTP side (streams, `Last-Event-ID`, session lifecycle) is the
shared session host's (`_session_host.py`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bastion import __version__
from bastion._errors import InvalidParams, UpstreamError, UpstreamTimeout
from bastion.v1 import graph_pb2, policy_pb2

from ._envelope import public_reason
from ._links import Link
from ._listing import LIST_SHAPES
from ._session_host import HostedSession
from ._upstream import UpstreamPool

log = logging.getLogger("bastion.proxy")

#: Asks policy which of these list actions the caller could be allowed.
Allowed = Callable[[Any, Sequence[policy_pb2.Action]], Awaitable[list[bool]]]
_MAX_PAGES = 50
_CAPABILITIES = ("tools", "prompts", "resources", "logging", "completions")
_MISSING = object()


@dataclass(slots=True)
class Route:
    """What the front end decided about one message, for the backend."""

    server: str = ""
    params: dict[str, Any] | None = None  # the params as the upstream must see them
    caller: Any = None  # whose policy filters a listing
    #: Set by the backend when the upstream failed: (ResultOutcome, reason).
    failure: tuple[graph_pb2.ResultOutcome.ValueType, str] | None = None


def split_name(value: str) -> tuple[str, str]:
    """`server__name` → (server, name); ("", value) without a separator."""
    server, sep, name = value.partition("__")
    return (server, name) if sep and server and name else ("", value)


class FanOut:
    def __init__(self, session: HostedSession, pools: dict[str, UpstreamPool], allowed: Allowed) -> None:
        self._session = session
        self._stateless = session.shared
        self._links = {name: Link(name, pool, self._from_upstream(name)) for name, pool in pools.items()}
        # Stateless clients have no handshake: every link is usable at once.
        self._active: dict[str, Link] = dict(self._links) if self._stateless else {}
        self._allowed = allowed
        #: (server, link request id) → the client's request id, or a Future for our own requests.
        self._pending: dict[tuple[str, Any], Any] = {}
        #: our id of an upstream's request to the client → (server, the upstream's id)
        self._asked: dict[str, tuple[str, Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.resources: dict[str, str] = {}
        #: URIs two upstreams both list: reading one could not be governed unambiguously.
        self._ambiguous: set[str] = set()
        #: (URI prefix, server) of every template listed, once each: a list appended to on every
        #: listing grew for ever on the shared stateless session, one listing call at a time.
        self.templates: dict[tuple[str, str], None] = {}
        #: A stateless client's `_meta` (version, capabilities), for the requests we make for it.
        self._meta: dict[str, Any] | None = None

    # client → upstreams
    async def deliver(self, message: dict[str, Any], raw: bytes, context: Any) -> None:
        method = message.get("method")
        if method is None:
            self._answer_upstream(message)
        elif "id" not in message:
            self._spawn(self._notification(message))
        else:
            params = message.get("params")
            if self._stateless and isinstance(params, dict) and isinstance(params.get("_meta"), dict):
                self._meta = params["_meta"]
            self._spawn(self._request(message, context if isinstance(context, Route) else Route()))

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _answer_upstream(self, message: dict[str, Any]) -> None:
        asked = self._asked.pop(str(message.get("id")), None)
        link = self._active.get(asked[0]) if asked is not None else None
        if asked is None or link is None:
            log.warning("aggregated /mcp: an answer to no request of any upstream was dropped")
            return
        self._spawn(link.notify({**message, "id": asked[1]}))

    async def _notification(self, message: dict[str, Any]) -> None:
        method = message["method"]
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        # Not in the shared stateless session: there `_pending` holds the host's ids
        # (`bastion-N`), which only another caller guessing them could name; a caller's
        # own id is never among them, so no cancel of its own is lost.
        if method == "notifications/cancelled" and isinstance(params, dict) and not self._stateless:
            target = next((key for key, v in self._pending.items() if v == params.get("requestId")), None)
            if target is not None and (link := self._active.get(target[0])) is not None:
                await link.notify({**message, "params": {**params, "requestId": target[1]}})
        elif method == "notifications/roots/list_changed":
            await asyncio.gather(*(link.notify(message) for link in self._active.values()), return_exceptions=True)
        # notifications/initialized: each link sent its own at its handshake.

    async def _request(self, message: dict[str, Any], route: Route) -> None:
        client_id, method = message["id"], message["method"]
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        assert isinstance(params, dict)
        try:
            if method == "initialize":
                self._reply(client_id, await self._initialize(params))
            elif method == "server/discover":
                self._reply(client_id, await self._discover(message))
            elif method == "ping":
                self._reply(client_id, {})
            elif method in LIST_SHAPES:
                self._reply(client_id, await self._list(method, route.caller, params.get("_meta")))
            elif method == "logging/setLevel":
                await asyncio.gather(*(self._ask(link, message) for link in self._active.values()))
                self._reply(client_id, {})
            else:
                await self._forward(message, route)
        except UpstreamError as exc:
            outcome = graph_pb2.TIMEOUT if isinstance(exc, UpstreamTimeout) else graph_pb2.UPSTREAM_ERROR
            route.failure = (outcome, public_reason(str(exc)))
            error = {"code": -32603, "message": "UPSTREAM_UNAVAILABLE", "data": {"reason": public_reason(str(exc))}}
            self._session.emit({"jsonrpc": "2.0", "id": client_id, "error": error}, None)

    def _reply(self, client_id: Any, result: dict[str, Any]) -> None:
        if self._stateless:  # every 2026-07 result says what kind it is
            result = {"resultType": "complete", **result}
        self._session.emit({"jsonrpc": "2.0", "id": client_id, "result": result}, None)

    async def _forward(self, message: dict[str, Any], route: Route) -> None:
        link = self._active.get(route.server)
        if link is None:
            raise UpstreamError(f"upstream {route.server!r} is not connected in this session")
        upstream_id = link.next_id()
        self._pending[(link.server, upstream_id)] = message["id"]
        outgoing = {**message, "id": upstream_id}
        if route.params is not None:
            outgoing["params"] = route.params
        try:
            await link.request(outgoing, _stateless_headers(outgoing) if self._stateless else [])
        finally:
            self._pending.pop((link.server, upstream_id), None)

    async def _ask(self, link: Link, message: dict[str, Any]) -> dict[str, Any]:
        """Our own request to one upstream; its answer, not relayed."""
        upstream_id = link.next_id()
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[(link.server, upstream_id)] = answer
        try:
            await link.request({**message, "id": upstream_id}, _stateless_headers(message) if self._stateless else [])
            return await answer
        finally:
            self._pending.pop((link.server, upstream_id), None)

    async def _initialize(self, params: dict[str, Any]) -> dict[str, Any]:
        names = list(self._links)
        results = await asyncio.gather(
            *(self._links[name].initialize(params) for name in names), return_exceptions=True
        )
        answers: dict[str, dict[str, Any]] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, dict):
                answers[name] = result
                self._active[name] = self._links[name]
            else:
                log.warning("aggregated /mcp: upstream %r left out of the session: %s", name, result)
        if not answers:
            raise UpstreamError("no upstream accepted the session")
        versions = sorted({str(r.get("protocolVersion")) for r in answers.values()})
        instructions = [f"{name}: {r['instructions']}" for name, r in answers.items() if r.get("instructions")]
        merged: dict[str, Any] = {
            "protocolVersion": versions[0],
            "capabilities": _union(answers.values()),
            "serverInfo": {"name": "bastion", "version": __version__},
        }
        if instructions:
            merged["instructions"] = "\n".join(instructions)
        return merged

    async def _discover(self, message: dict[str, Any]) -> dict[str, Any]:
        links = list(self._active.values())
        results = await asyncio.gather(*(self._ask(link, message) for link in links), return_exceptions=True)
        answers = [r["result"] for r in results if isinstance(r, dict) and isinstance(r.get("result"), dict)]
        if not answers:
            raise UpstreamError("no upstream answered server/discover")
        return {
            **answers[0],
            "capabilities": _union(answers),
            "serverInfo": {"name": "bastion", "version": __version__},
        }

    async def _list(self, method: str, caller: Any, meta: Any = None) -> dict[str, Any]:
        shape = LIST_SHAPES[method]
        links = list(self._active.values())
        listed = await asyncio.gather(*(self._list_one(link, method, meta) for link in links), return_exceptions=True)
        items: list[dict[str, Any]] = []
        actions: list[policy_pb2.Action] = []
        extras: list[dict[str, Any]] = []
        for link, found in zip(links, listed, strict=True):
            if isinstance(found, BaseException):
                log.warning("aggregated /mcp: %s of upstream %r failed: %s", method, link.server, found)
                continue
            extras.append(found[1])
            for item in found[0]:
                name = item.get(shape.name_key)
                action = policy_pb2.Action(kind=shape.kind, server=link.server, method="list")
                if isinstance(name, str):
                    setattr(action, shape.field, name)
                items.append(self._rename(method, link.server, item))
                actions.append(action)
        if links and not extras:  # one per upstream that answered
            # Every upstream refused or failed: an empty list would read as "nothing is
            # there" (an audit got 200 and no tools from upstreams that all answered 400).
            raise UpstreamError(f"no upstream answered {method} ({len(links)} failed; the proxy's log says why)")
        verdicts = await self._allowed(caller, actions) if actions else []
        return {
            **_merge_extras(extras),
            shape.items_key: [item for item, ok in zip(items, verdicts, strict=True) if ok],
        }

    def _rename(self, method: str, server: str, item: dict[str, Any]) -> dict[str, Any]:
        renamed = dict(item)
        if isinstance(item.get("name"), str):
            renamed["name"] = f"{server}__{item['name']}"
        if method == "resources/list" and isinstance(item.get("uri"), str):
            if self.resources.setdefault(item["uri"], server) != server:
                self._ambiguous.add(item["uri"])
        elif method == "resources/templates/list" and isinstance(item.get("uriTemplate"), str):
            self.templates[(item["uriTemplate"].split("{", 1)[0], server)] = None
        return renamed

    async def _list_one(self, link: Link, method: str, meta: Any = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Every item of every page, and the first page's other result fields (2026-07 `ttlMs`, …)."""
        shape = LIST_SHAPES[method]
        items: list[dict[str, Any]] = []
        extras: dict[str, Any] | None = None
        cursor: Any = None
        for _ in range(_MAX_PAGES):
            params: dict[str, Any] = {"cursor": cursor} if cursor else {}
            meta = meta if isinstance(meta, dict) else self._meta
            if isinstance(meta, dict):  # a stateless client's version and capabilities
                params["_meta"] = meta
            answer = await self._ask(link, {"jsonrpc": "2.0", "method": method, "params": params})
            result = answer.get("result")
            if not isinstance(result, dict) or not isinstance(result.get(shape.items_key), list):
                raise UpstreamError(f"{method} of upstream {link.server!r} answered without a list")
            items += [item for item in result[shape.items_key] if isinstance(item, dict)]
            if extras is None:
                extras = {k: v for k, v in result.items() if k not in (shape.items_key, "nextCursor")}
            cursor = result.get("nextCursor")
            if not isinstance(cursor, str) or not cursor:
                return items, extras
        raise UpstreamError(f"{method} of upstream {link.server!r} has more than {_MAX_PAGES} pages")

    async def server_of(self, uri: str, meta: Any = None) -> str:
        """The upstream a resource URI belongs to; InvalidParams when none or several list it.
        `meta`: a stateless caller's `_meta`, for the listings made on its behalf."""
        server = await self._lookup(uri, meta)
        if uri in self._ambiguous:
            raise InvalidParams(
                f"resource {uri!r} is listed by several upstreams; on the aggregated endpoint it cannot be "
                "read unambiguously: use /mcp/{server}"
            )
        if not server:
            raise InvalidParams(f"resource {uri!r} is not offered by any upstream of this session")
        return server

    async def _lookup(self, uri: str, meta: Any) -> str:
        if uri not in self.resources and not self._template_of(uri):
            for method in ("resources/list", "resources/templates/list"):
                for link in list(self._active.values()):
                    try:
                        for item in (await self._list_one(link, method, meta))[0]:
                            self._rename(method, link.server, item)
                    except UpstreamError as exc:
                        log.warning("aggregated /mcp: %s of upstream %r failed: %s", method, link.server, exc)
        return self.resources.get(uri) or self._template_of(uri)

    def _template_of(self, uri: str) -> str:
        matches = {server for prefix, server in self.templates if prefix and uri.startswith(prefix)}
        return matches.pop() if len(matches) == 1 else ""

    # upstreams → client
    def _from_upstream(self, server: str) -> Callable[[dict[str, Any], Any], None]:
        def on_message(message: dict[str, Any], upstream_request: Any) -> None:
            pending = self._pending.get((server, upstream_request), _MISSING) if upstream_request is not None else None
            if "method" not in message:  # an answer to one of our link's requests
                if isinstance(pending, asyncio.Future):
                    if not pending.done():
                        pending.set_result(message)
                elif pending is not _MISSING and pending is not None and message.get("id") == upstream_request:
                    self._session.emit({**message, "id": pending}, None)
                return
            related = pending if pending is not _MISSING and not isinstance(pending, asyncio.Future) else None
            if "id" in message:  # the upstream asks the client something
                # Unguessable: stateless callers of every agent share this fan-out, and a
                # counter would let one answer (accept!) another's elicitation.
                ours = f"bastion-ask-{secrets.token_urlsafe(16)}"
                self._asked[ours] = (server, message["id"])
                message = {**message, "id": ours}
            if related is None:
                self._session.to_listener(message)
            else:
                self._session.emit(message, None, related=related)

        return on_message

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(link.close() for link in self._active.values()), return_exceptions=True)


def _merge_extras(extras: list[dict[str, Any]]) -> dict[str, Any]:
    """One listing's result fields besides its items: the strictest caching of all upstreams'."""
    merged: dict[str, Any] = {}
    for extra in extras:
        for key, value in extra.items():
            if key == "ttlMs" and isinstance(value, int):
                merged[key] = min(value, merged.get(key, value))
            elif key == "cacheScope":
                merged[key] = "private" if "private" in (value, merged.get(key)) else value
            elif key != "_meta":
                merged.setdefault(key, value)
    return merged


def _union(results: Any) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for result in results:
        capabilities = result.get("capabilities") if isinstance(result, dict) else None
        if not isinstance(capabilities, dict):
            continue
        for key in _CAPABILITIES:
            value = capabilities.get(key)
            if isinstance(value, dict):
                into = merged.setdefault(key, {})
                for flag, on in value.items():
                    into[flag] = bool(into.get(flag)) or on
    return merged


def _stateless_headers(message: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    """The 2026-07 routing headers for a message the link sends on its own."""
    params = message.get("params") if isinstance(message.get("params"), dict) else {}
    assert isinstance(params, dict)
    meta = params.get("_meta") if isinstance(params.get("_meta"), dict) else {}
    assert isinstance(meta, dict)
    headers = [(b"mcp-method", str(message.get("method")).encode())]
    named = params.get("name", params.get("uri"))
    if isinstance(named, str) and named.isascii():
        headers.append((b"mcp-name", named.encode()))
    version = meta.get("io.modelcontextprotocol/protocolVersion")
    if isinstance(version, str):
        headers.append((b"mcp-protocol-version", version.encode()))
    return headers
