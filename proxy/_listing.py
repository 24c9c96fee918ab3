"""List answers filtered by policy: `tools/list`, `prompts/list`, `resources/list` and
`resources/templates/list` show the caller only what its policy could allow.

A listing is protocol traffic (recorded, never blocked), but showing an agent tools it
may never call invites it to try them and leaks what the upstream offers. Each item is
asked of policy as a list action (TOOL_LIST, PROMPT_LIST, RESOURCE_LIST) on the policy
stream, concurrently; an item whose answer is anything but ALLOW — deny, an error, no
answer in time — is left out (fail closed: with policy down a listing is empty).

Transparency: when nothing is left out, the upstream's bytes are relayed untouched (a
tool's `inputSchema` byte for byte); only a listing that loses items is re-encoded, and
then only its result message: notifications in the same SSE stream pass unchanged, byte
for byte. Events are split as the agent's SDK splits them (`_sse.py`: CRLF, LF or CR line
ends), and a batch array is filtered element by element.

Not only a listing's answer: the SDKs route a response by its id, whatever stream or
answer it comes in, so every 2xx answer (a tool's, a session's GET stream, a resumption)
goes through `guard_answer` / `guard_stream`, which cost a scan for the items keys unless
one is there. An answer the filter cannot read — not JSON where a listing may be, a
Content-Encoding (the proxy asks for identity), another charset — is refused
(`UnreadableListing`), never relayed unread.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from bastion._errors import UnreadableListing, UpstreamError
from bastion.v1 import policy_pb2

from ._sse import MAX_EVENT_BYTES, Event, EventReader, encode, events
from ._upstream import UpstreamResponse


@dataclass(frozen=True, slots=True)
class ListShape:
    """Where a list method's items are and what names each one."""

    items_key: str
    name_key: str
    kind: policy_pb2.ActionKind.ValueType
    field: str  # the Action field the name goes in


LIST_SHAPES: dict[str, ListShape] = {
    "tools/list": ListShape("tools", "name", policy_pb2.TOOL_LIST, "tool"),
    "prompts/list": ListShape("prompts", "name", policy_pb2.PROMPT_LIST, "prompt"),
    "resources/list": ListShape("resources", "uri", policy_pb2.RESOURCE_LIST, "resource"),
    "resources/templates/list": ListShape("resourceTemplates", "uriTemplate", policy_pb2.RESOURCE_LIST, "resource"),
}

#: Asks policy about list actions; True for each one it allows (same order).
Allowed = Callable[[Sequence[policy_pb2.Action]], Awaitable[list[bool]]]
#: What a body must hold for any message in it to be a listing: one of the items keys, quoted.
_MARKS = tuple(f'"{shape.items_key}"'.encode() for shape in LIST_SHAPES.values())


#: Charsets whose bytes are the UTF-8 the filter reads.
_UTF8 = frozenset({b"utf-8", b"utf8", b"us-ascii"})


def unreadable_answer(response: UpstreamResponse) -> str | None:
    """What makes an answer unreadable to the filter, or None: a Content-Encoding (the
    proxy asks for `identity`; an SDK would decompress gzip) or a charset other than UTF-8
    (the SDK decodes the declared one): either hid a listing from the filter, which read the
    raw bytes (an attacker's re-probe)."""
    encoding = (response.header(b"content-encoding") or b"").strip().lower()
    if encoding not in (b"", b"identity"):
        return f"Content-Encoding {encoding[:32].decode('latin-1')!r}"
    for parameter in (response.header(b"content-type") or b"").split(b";")[1:]:
        name, _, value = parameter.partition(b"=")
        charset = value.strip().strip(b'"').lower()
        if name.strip().lower() == b"charset" and charset not in _UTF8:
            return f"charset {charset[:32].decode('latin-1')!r}"
    return None


def may_list(data: bytes) -> bool:
    """Whether `data` could hold a listing (a scan at memory speed; most answers hold none)."""
    return any(mark in data for mark in _MARKS)


async def filter_listing(body: bytes, *, sse: bool, method: str, server: str, allowed: Allowed) -> bytes:
    """`body` (a JSON answer or an event stream) with the listing's disallowed items removed.

    Every answer in it is filtered, whatever its id: an SDK may match an id the proxy would
    not (the TypeScript client reads `"1"` as 1), and filtering only removes what policy
    would not allow this caller anyway. Raises UnreadableListing for a body, or an event,
    that is not JSON orjson reads (fail closed: an agent's more lenient reader — NaN, a
    trailing comma — would see the listing whole).
    """
    return await _filter_body(body, sse=sse, what=method, server=server, allowed=allowed, strict=True)


async def guard_answer(body: bytes, *, sse: bool, server: str, allowed: Allowed) -> bytes:
    """Any answer but a listing's (a tool's, a GET stream's), with the items policy would
    not show removed from every listing-shaped response in it. The SDKs route a response
    by its id, whatever stream or answer it came in: an upstream that answers a pending
    `tools/list` on a resumption GET stream, or inside another call's answer, would
    otherwise show the agent every tool (an attacker's re-probe). UnreadableListing when a
    message that may be one cannot be read."""
    if not may_list(body):
        return body
    return await _filter_body(body, sse=sse, what="an answer", server=server, allowed=allowed, strict=False)


async def guard_stream(chunks: AsyncIterator[bytes], *, server: str, allowed: Allowed) -> AsyncIterator[bytes]:
    """`guard_answer` for an event stream, event by event as each completes (an event not
    yet ended is held back: its end could make it a listing)."""
    reader = EventReader()
    async for chunk in chunks:
        try:
            completed = reader.feed(chunk)
        except UpstreamError:  # the reader's bound on an open event
            over = f"an event of upstream {server!r}'s stream is over {MAX_EVENT_BYTES} bytes"
            raise UnreadableListing(over) from None
        for event in completed:
            yield await _guard_event(event, server, allowed)
    for event in reader.close():
        yield await _guard_event(event, server, allowed)


async def _guard_event(event: Event, server: str, allowed: Allowed) -> bytes:
    if not may_list(event.raw):
        return event.raw
    return await _filter_event(event, "an answer", server, allowed, strict=False)


async def _filter_body(body: bytes, *, sse: bool, what: str, server: str, allowed: Allowed, strict: bool) -> bytes:
    if not body.strip():
        return body
    if not sse:
        filtered = await _filter(_loads(body, what, server), server, allowed)
        return body if filtered is None else orjson.dumps(filtered)
    out: list[bytes] = []
    changed = False
    for event in events(body):
        encoded = await _filter_event(event, what, server, allowed, strict=strict)
        changed |= encoded is not event.raw
        out.append(encoded)
    return b"".join(out) if changed else body


async def _filter_event(event: Event, what: str, server: str, allowed: Allowed, *, strict: bool) -> bytes:
    """The event's bytes, re-encoded only when its message lost items. `strict`: every
    event must be readable (a listing's answer); else only one that may hold a listing."""
    data = event.data
    # No data, or empty data (an SSE priming event, `id: …` and `data:`): no client
    # dispatches it, nothing to filter.
    if data is None or not data.strip() or not (strict or may_list(data)):
        return event.raw
    filtered = await _filter(_loads(data, what, server), server, allowed)
    if filtered is None:
        return event.raw
    # The event as it was, its data lines replaced by the filtered message where they began.
    fields: list[tuple[bytes, bytes]] = []
    for name, value in event.fields:
        if name != b"data":
            fields.append((name, value))
        elif not any(field == b"data" for field, _ in fields):
            fields.append((b"data", orjson.dumps(filtered)))
    return encode(fields)


async def _filter(message: Any, server: str, allowed: Allowed) -> Any:
    """The message (or batch) with items removed, or None when it loses nothing."""
    if isinstance(message, list):
        parts = [await _filter_message(part, server, allowed) for part in message]
        if all(part is None for part in parts):
            return None
        return [part if part is not None else original for part, original in zip(parts, message, strict=True)]
    return await _filter_message(message, server, allowed)


async def _filter_message(message: Any, server: str, allowed: Allowed) -> dict[str, Any] | None:
    """The message with items removed, or None when it is not a listing or loses nothing.
    Any message with a listing's result is filtered, a request-shaped one too: the SDK
    reads `"method": null` beside a result as a response (an attacker's re-probe)."""
    if not isinstance(message, dict):
        return None
    result = message.get("result")
    if not isinstance(result, dict):
        return None
    shapes = [shape for shape in LIST_SHAPES.values() if isinstance(result.get(shape.items_key), list)]
    actions: list[policy_pb2.Action] = []
    for shape in shapes:
        for item in result[shape.items_key]:
            name = item.get(shape.name_key) if isinstance(item, dict) else None
            action = policy_pb2.Action(kind=shape.kind, server=server, method="list")
            if isinstance(name, str):
                setattr(action, shape.field, name)
            actions.append(action)
    if not actions:
        return None
    verdicts = await allowed(actions)
    if all(verdicts):
        return None
    kept: dict[str, list[Any]] = {}
    start = 0
    for shape in shapes:
        items = result[shape.items_key]
        shown = verdicts[start : start + len(items)]
        kept[shape.items_key] = [item for item, ok in zip(items, shown, strict=True) if ok]
        start += len(items)
    return {**message, "result": {**result, **kept}}


def _loads(data: bytes, what: str, server: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        reason = f"upstream {server!r} answered {what} with a message that is not JSON ({exc})"
        raise UnreadableListing(reason) from exc
