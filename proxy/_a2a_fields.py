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
"""

from __future__ import annotations

from typing import Any

from bastion._errors import InvalidParams, UpstreamError


def snake(name: str) -> str:
    """The proto field name of a lowerCamelCase JSON name (`taskId` → `task_id`)."""
    return "".join(f"_{char.lower()}" if char.isupper() else char for char in name)


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
    if any(mapping[key] != mapping[keys[0]] for key in keys[1:]):
        given = " and ".join(repr(key) for key in keys)
        raise UpstreamError(f"its answer gives {given} with different values; it was not relayed")
    return keys, mapping[keys[0]] if keys else None


def answered(mapping: dict[str, Any], name: str, aliases: tuple[str, ...] = ()) -> Any:
    """The value of an answer's field `name` under any of its spellings (`present`)."""
    return present(mapping, name, aliases)[1]
