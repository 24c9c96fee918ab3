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
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from bastion._errors import UnreadableListing
from bastion.v1 import policy_pb2

from ._sse import encode, events


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


async def filter_listing(body: bytes, *, sse: bool, method: str, server: str, allowed: Allowed) -> bytes:
    """`body` (a JSON answer or an event stream) with the listing's disallowed items removed.

    Every answer in it is filtered, whatever its id: an SDK may match an id the proxy would
    not (the TypeScript client reads `"1"` as 1), and filtering only removes what policy
    would not allow this caller anyway. Raises UnreadableListing for a body, or an event,
    that is not JSON orjson reads (fail closed: an agent's more lenient reader — NaN, a
    trailing comma — would see the listing whole).
    """
    shape = LIST_SHAPES[method]
    if not body.strip():
        return body
    if not sse:
        filtered = await _filter(_loads(body, method, server), shape, server, allowed)
        return body if filtered is None else orjson.dumps(filtered)
    out: list[bytes] = []
    changed = False
    for event in events(body):
        data = event.data
        # No data, or empty data (an SSE priming event, `id: …` and `data:`): no client
        # dispatches it, nothing to filter.
        empty = data is None or not data.strip()
        filtered = None if empty else await _filter(_loads(data or b"", method, server), shape, server, allowed)
        if filtered is None:
            out.append(event.raw)
            continue
        # The event as it was, its data lines replaced by the filtered message where they began.
        fields: list[tuple[bytes, bytes]] = []
        for name, value in event.fields:
            if name != b"data":
                fields.append((name, value))
            elif not any(field == b"data" for field, _ in fields):
                fields.append((b"data", orjson.dumps(filtered)))
        out.append(encode(fields))
        changed = True
    return b"".join(out) if changed else body


async def _filter(message: Any, shape: ListShape, server: str, allowed: Allowed) -> Any:
    """The message (or batch) with items removed, or None when it loses nothing."""
    if isinstance(message, list):
        parts = [await _filter_message(part, shape, server, allowed) for part in message]
        if all(part is None for part in parts):
            return None
        return [part if part is not None else original for part, original in zip(parts, message, strict=True)]
    return await _filter_message(message, shape, server, allowed)


async def _filter_message(message: Any, shape: ListShape, server: str, allowed: Allowed) -> dict[str, Any] | None:
    """The message with items removed, or None when it is not a listing or loses nothing.
    Any message with a listing's result is filtered, a request-shaped one too: the SDK
    reads `"method": null` beside a result as a response (an attacker's re-probe)."""
    if not isinstance(message, dict):
        return None
    result = message.get("result")
    items = result.get(shape.items_key) if isinstance(result, dict) else None
    if not isinstance(items, list) or not items:
        return None
    actions = []
    for item in items:
        name = item.get(shape.name_key) if isinstance(item, dict) else None
        action = policy_pb2.Action(kind=shape.kind, server=server, method="list")
        if isinstance(name, str):
            setattr(action, shape.field, name)
        actions.append(action)
    verdicts = await allowed(actions)
    if all(verdicts):
        return None
    assert isinstance(result, dict)
    kept = [item for item, ok in zip(items, verdicts, strict=True) if ok]
    return {**message, "result": {**result, shape.items_key: kept}}


def _loads(data: bytes, method: str, server: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        reason = f"upstream {server!r} answered {method} with a message that is not JSON ({exc})"
        raise UnreadableListing(reason) from exc
