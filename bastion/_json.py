"""Strict JSON reading, for input in which every key matters: a repeated object key,
NaN/Infinity or nesting too deep raise ValueError.

The stdlib decoder and orjson keep the last of a repeated key, so a body could say one
thing to the reader that checks it and another to a reader that keeps the first copy (a
reviewer, an upstream, a spreadsheet). Used for signed policy bundles and the policy
service's REST bodies (policy/_bundles.py), bodies the proxy forwards as they came
(proxy/_mcp.py `check_unique_keys`), and audit export files (graph/_export.py).
"""

from __future__ import annotations

import json
from typing import Any


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
