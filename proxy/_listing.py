"""List answers filtered by policy: `tools/list`, `prompts/list`, `resources/list` and
`resources/templates/list` show the caller only what its policy could allow.

A listing is protocol traffic (recorded, never blocked), but showing an agent tools it
may never call invites it to try them and leaks what the upstream offers. Each item is
asked of policy as a list action (TOOL_LIST, PROMPT_LIST, RESOURCE_LIST) on the policy
stream, concurrently; an item whose answer is anything but ALLOW — deny, an error, no
answer in time — is left out (fail closed: with policy down a listing is empty).

Transparency: when nothing is left out, the upstream's bytes are relayed untouched (a
tool's `inputSchema` byte for byte); only a listing that loses items is re-encoded, and
then only its result message: notifications in the same SSE stream pass unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from bastion.v1 import policy_pb2


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


async def filter_listing(
    body: bytes, *, sse: bool, request_id: Any, method: str, server: str, allowed: Allowed
) -> bytes:
    """`body` (a JSON answer or an SSE stream) with the listing's disallowed items removed."""
    shape = LIST_SHAPES[method]
    if not sse:
        message = _loads(body)
        filtered = await _filter_message(message, shape, request_id, server, allowed)
        return body if filtered is None else orjson.dumps(filtered)
    events = body.split(b"\n\n")
    changed = False
    for index, event in enumerate(events):
        lines = event.split(b"\n")
        data_lines = [i for i, line in enumerate(lines) if line.startswith(b"data:")]
        if not data_lines:
            continue
        message = _loads(b"\n".join(lines[i][5:].lstrip() for i in data_lines))
        filtered = await _filter_message(message, shape, request_id, server, allowed)
        if filtered is None:
            continue
        kept = [line for i, line in enumerate(lines) if i not in data_lines]
        kept.insert(data_lines[0] if data_lines[0] <= len(kept) else len(kept), b"data: " + orjson.dumps(filtered))
        events[index] = b"\n".join(kept)
        changed = True
    return b"\n\n".join(events) if changed else body


async def _filter_message(
    message: Any, shape: ListShape, request_id: Any, server: str, allowed: Allowed
) -> dict[str, Any] | None:
    """The message with items removed, or None when it is not the listing or loses nothing."""
    if not isinstance(message, dict) or message.get("id") != request_id or "method" in message:
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


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
