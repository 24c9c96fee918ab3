"""Strict JSON reading, for input in which every key matters: a repeated object key,
NaN/Infinity or nesting too deep raise ValueError. And, for input Bastion relays but does
not own (tool results), a reading that keeps every copy of a repeated key (`loads_every`).

The stdlib decoder and orjson keep the last of a repeated key, so a body could say one
thing to the reader that checks it and another to a reader that keeps the first copy (a
reviewer, an upstream, a spreadsheet). Used for signed policy bundles and the policy
service's REST bodies (policy/_bundles.py), bodies the proxy forwards as they came
(proxy/_mcp.py `check_unique_keys`), and audit export files (graph/_export.py).
"""

from __future__ import annotations

import json
from typing import Any

import orjson


class RepeatedKey(ValueError):
    """An object gave `key` twice."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"duplicate key {key[:64]!r}")


def loads_strict(raw: bytes | str) -> Any:
    try:
        return json.loads(raw, object_pairs_hook=_pairs, parse_constant=_constant)
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc


def _pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in items:
        if key in found:
            raise RepeatedKey(key)
        found[key] = value
    return found


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads_as_clients(raw: bytes) -> Any:
    """`raw` read as orjson reads it or, when orjson refuses it, as the stdlib reader does,
    which is what the A2A SDK's client uses (`httpx.Response.json()`): it also takes UTF-16
    and UTF-32 (told from the bytes, with no charset declared), a UTF-8 BOM and NaN.
    For answers the proxy must read as the client will (an attacker's probe hid a
    ListTasks answer from the filter in UTF-16). ValueError for what neither reads."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw)
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc


class TooDeep(ValueError):
    """JSON nested deeper than the stdlib reader goes."""


class Copies(list[Any]):
    """Every value one object gave a repeated key, in the order given (`loads_every`)."""


def loads_every(raw: bytes | str) -> Any:
    """`raw` read as orjson reads it, except that a key an object repeats maps to `Copies`
    of all its values, not to the last one.

    For data Bastion passes on unchanged but fingerprints (provenance, proxy/_provenance.py):
    the reader it is passed to may keep the first copy, so every copy counts. Raises
    ValueError for what no JSON reader takes, and TooDeep for JSON nested too deeply to read.

    What a serialiser wrote, compact or indented by two (the MCP SDK's structured text), is
    read once by orjson and checked by writing it back the same way: written back the same
    bytes, no key repeats. Anything else is read a second time keeping every pair.
    """
    data = raw.encode() if isinstance(raw, str) else raw
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        # What orjson refuses but other readers take (NaN, 1e400, a lone surrogate; the MCP
        # and A2A SDKs do): read as they read it, or it would pass unread.
        return _every_copy(data)
    if not isinstance(parsed, dict | list) or _written_as(parsed, data):
        return parsed
    return _every_copy(data)


def _every_copy(data: bytes) -> Any:
    try:
        return json.loads(data, object_pairs_hook=_every)
    except RecursionError as exc:
        raise TooDeep("nested too deeply") from exc


def _written_as(parsed: Any, data: bytes) -> bool:
    try:
        return orjson.dumps(parsed) == data or orjson.dumps(parsed, option=orjson.OPT_INDENT_2) == data
    except TypeError:  # deeper than orjson writes (255 levels): read again
        return False


def _every(items: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in items:
        if key not in found:
            found[key] = value
        elif isinstance(held := found[key], Copies):
            held.append(value)
        else:
            found[key] = Copies((held, value))
    return found
