"""An A2A message's fields under every spelling an a2a-sdk reader takes.

a2a-sdk reads A2A 1.0 (and 0.3 HTTP+JSON) with protobuf's `json_format`, which takes a
field under its JSON name (`taskId`) or under the proto field's own name (`task_id`), and
0.3 JSON-RPC with pydantic models that validate by alias and by name alike. Agents read
requests so and clients read answers so: a check that reads one spelling is read past
under the other. Attackers' probes found it both ways: `task_id` in a request named
another caller's task, and an agent's answer under `context_id`, `next_page_token` or
`supported_interfaces` went around task ownership, the ListTasks filter and the card
rewrite.

A field given under two spellings with different values is refused, since the readers
disagree on which one wins (protobuf takes the later key, pydantic the JSON name): in a
request as a bad request (-32602), in an answer as an upstream fault (502, not relayed).

A send's message is read under every name an agent takes, too, and policy and the
verifier are shown it under one (`canonical_send`): the a2a-sdk's own 0.3 HTTP+JSON client
sends it as the 0.3 proto names it, `{"request": {"message_id", "task_id", "content"}}`,
where 1.0 and 0.3 JSON-RPC clients send `{"message": {"messageId", "taskId", "parts"}}`;
a rule reading `args.message.parts` must see either.
"""

from __future__ import annotations

import functools
from typing import Any

from bastion._errors import InvalidParams, UpstreamError


def snake(name: str) -> str:
    """The proto field name of a lowerCamelCase JSON name (`taskId` → `task_id`)."""
    return "".join(f"_{char.lower()}" if char.isupper() else char for char in name)


@functools.cache  # a handful of constant names, read for every message and event
def spellings(name: str, aliases: tuple[str, ...] = ()) -> tuple[str, ...]:
    """`name`, its proto field name and `aliases` (a field whose proto name is not the
    snake form of its JSON name: 0.3's `msg`, JSON name `message`), each once."""
    return tuple(dict.fromkeys((name, snake(name), *aliases)))


def spelled(mapping: dict[str, Any], name: str, aliases: tuple[str, ...] = ()) -> Any:
    """The value of a request's field `name` under any of its spellings (None when absent
    or null); InvalidParams when two spellings give different values."""
    values = [(key, mapping[key]) for key in spellings(name, aliases) if mapping.get(key) is not None]
    if any(value != values[0][1] for _, value in values[1:]):
        given = " and ".join(repr(key) for key, _ in values)
        raise InvalidParams(f"{given} are both given, with different values; send one")
    return values[0][1] if values else None


def present(mapping: dict[str, Any], name: str, aliases: tuple[str, ...] = ()) -> tuple[list[str], Any]:
    """The spellings of an answer's field `name` that `mapping` has, and their value (None
    when it has none). A null counts as given: protobuf reads it as "clear the field", so
    `{"taskId": "a", "task_id": null}` is two readings. UpstreamError when they differ."""
    keys = [key for key in spellings(name, aliases) if key in mapping]
    if len(keys) > 1 and any(mapping[key] != mapping[keys[0]] for key in keys[1:]):
        given = " and ".join(repr(key) for key in keys)
        raise UpstreamError(f"its answer gives {given} with different values; it was not relayed")
    return keys, mapping[keys[0]] if keys else None


def answered(mapping: dict[str, Any], name: str, aliases: tuple[str, ...] = ()) -> Any:
    """The value of an answer's field `name` under any of its spellings (`present`)."""
    return present(mapping, name, aliases)[1]


#: The other names of a send's `message`: the 0.3 proto's field name (JSON name `message`),
#: which the agent's 0.3 HTTP+JSON reader (protobuf) takes and the a2a-sdk 0.3 HTTP+JSON
#: client sends.
MESSAGE_ALIASES = ("request",)
#: A message's and a send configuration's fields under the names a reader takes besides
#: their JSON names: the proto field names (1.0 and 0.3), and the 0.3 proto's `content`
#: for the parts (`parts` in 1.0 and 0.3 JSON-RPC).
_MESSAGE_NAMES = {
    "message_id": "messageId",
    "context_id": "contextId",
    "task_id": "taskId",
    "reference_task_ids": "referenceTaskIds",
    "content": "parts",
}
_CONFIGURATION_NAMES = {
    "accepted_output_modes": "acceptedOutputModes",
    "history_length": "historyLength",
    "return_immediately": "returnImmediately",
    "task_push_notification_config": "taskPushNotificationConfig",
    "push_notification_config": "pushNotificationConfig",
    "push_notification": "pushNotification",
}


def canonical_send(params: dict[str, Any]) -> dict[str, Any]:
    """A send's params as policy and the verifier see them: the message under `message`
    and its fields, and the configuration's, under their JSON names, whichever spelling
    the caller used (a new dict: the request is forwarded as it came). InvalidParams when
    two spellings of one field give different values; a null is no value (`spelled`)."""
    message = spelled(params, "message", MESSAGE_ALIASES)
    out = {key: value for key, value in params.items() if key != "message" and key not in MESSAGE_ALIASES}
    if message is not None:
        out["message"] = _renamed(message, _MESSAGE_NAMES, "message")
    if (configuration := params.get("configuration")) is not None:
        out["configuration"] = _renamed(configuration, _CONFIGURATION_NAMES, "configuration")
    return out


def _renamed(fields: Any, names: dict[str, str], where: str) -> Any:
    if not isinstance(fields, dict) or not names.keys() & fields.keys():
        return fields
    out: dict[str, Any] = {}
    for key, value in fields.items():
        name: str = names.get(key) or key
        if value is None and name in out:
            continue
        if out.get(name) is not None and value is not None and out[name] != value:
            raise InvalidParams(f"{where}: {name!r} is given under two names, with different values; send one")
        out[name] = value
    return out
