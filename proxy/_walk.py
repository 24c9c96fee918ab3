"""Reading a JSON value's strings within bounds: how provenance walks a result or a call's
arguments (`_provenance.py`).

Iterative (results may nest deeply), depth first, each string with its path
(`content[0].text.sender`, `messages[2].body`). A string holding a JSON object or array (how
MCP tools return structured output in `content[].text`) may be walked as that structure.
Payloads and protocol (`_skipped`) are not data and are left out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from bastion._json import Copies, loads_every

#: Characters of one result read (all its strings together), and strings visited.
MAX_RESULT_CHARS = 32 * 1024
MAX_RESULT_VALUES = 1000
#: Characters of a path: past them a path ends in `…` and stops growing. A result's keys
#: choose its paths, and a path is copied into every label and INFORMED_BY hint that names
#: it (a 100,000-character key made a 100 KB taint label) and rebuilt at every level below.
MAX_PATH = 512
#: Largest integer a walk collects as a number (`Walk.numbers`).
_MAX_NUMBER = 10**15
#: Strings read as JSON whose paths a walk remembers (`Walk.opaque`).
_MAX_PARSED = 64
#: Integers read as identifiers (six digits and more); shorter ones are amounts and counts.
_LONG_NUMBER = 100_000
#: Keys whose values are payloads or protocol, not data: MCP image/audio `data`, resource
#: `blob`, A2A file `bytes`, MIME types and metadata.
SKIPPED_KEYS = frozenset({"data", "blob", "bytes", "mimeType", "_meta"})
#: Those of them that hold a payload.
_PAYLOAD_KEYS = frozenset({"data", "blob", "bytes"})
#: What those hold when they are what their names say (`_skipped`).
_MIN_PAYLOAD = 64
_BASE64 = re.compile(r"[A-Za-z0-9+/_\-]+=*\s*")
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][\w.+-]{0,63}/[\w.+-]{1,63}(;[ \w.+=\"-]{0,64})?")
_CONTENT_BLOCK = re.compile(r"(?:content|structuredContent)\[\d+\]")


class Walk:
    """(path, string) of the strings in a JSON value, depth first, within the bounds; `cut`
    is set once a bound left part of it unread.

    Iterative (results may nest deeply). A string longer than the characters left is read
    as normalised (a run of padding spaces counts as one) and then cut. `parse_json`: a
    string holding a JSON object or array (how MCP tools return structured output in
    `content[].text`) is walked as that structure, under the string's path."""

    __slots__ = (
        "_data_keys", "_max_chars", "_max_values", "_parse_json", "_skip", "_value", "cut", "numbers", "opaque",
    )  # fmt: skip

    def __init__(
        self,
        value: Any,
        max_values: int = MAX_RESULT_VALUES,
        max_chars: int = MAX_RESULT_CHARS,
        skip: frozenset[str] = SKIPPED_KEYS,
        *,
        parse_json: bool = False,
        numbers: list[tuple[str, float]] | None = None,
        data_keys: Callable[[str], bool] | None = None,
    ) -> None:
        self._value = value
        #: When a list: (path, value) of the JSON numbers read (within the walk's bounds).
        self.numbers = numbers
        #: Which keys of an object are data as well as names (a payee list keyed by IBAN):
        #: read as a string at their own path too.
        self._data_keys = data_keys
        self._max_values = max_values
        self._max_chars = max_chars
        self._skip = skip
        self._parse_json = parse_json
        self.cut = False
        #: Set once an encoded payload (an image's or a file's `data`, `blob`, `bytes`) was
        #: left unread: the agent may read what it holds, provenance cannot.
        self.opaque = False

    def __iter__(self) -> Iterator[tuple[str, str]]:
        stack: list[tuple[str, Any]] = [("", self._value)]
        visited = 0
        left = self._max_chars
        # Where strings were read as JSON: what they hold is text its writer chose, so a
        # payload key inside is no image or file the tool returned (`opaque`).
        parsed_at: list[str] = []
        while stack:
            if left <= 0 or visited >= self._max_values:
                self.cut = True
                return
            path, item = stack.pop()
            visited += 1
            if isinstance(item, str):
                if self._parse_json and item[:1] in ("{", "[") and len(item) <= left:
                    parsed = _loads(item)
                    if isinstance(parsed, dict | list):
                        left -= len(item) // 2  # its strings are counted again as they are read
                        stack.append((path, parsed))
                        if len(parsed_at) < _MAX_PARSED:
                            parsed_at.append(path)
                        continue
                if item:
                    if len(item) > left:
                        item = " ".join(item.split())
                        self.cut = self.cut or len(item) > left
                    text = item[:left]
                    left -= len(text)
                    yield path, text
            elif isinstance(item, int | float) and not isinstance(item, bool):
                # (An integer of 400 digits has no float: only numbers a float holds are kept.)
                if self.numbers is not None and (isinstance(item, float) or abs(item) < _MAX_NUMBER):
                    self.numbers.append((path, float(item)))
                if long_number(item):
                    # A long number is an identifier (an account, a chat, a phone), whether the
                    # JSON spells it as a string, an integer or a float (123456789.0, 1.23456789e8).
                    yield path, str(int(item))
            elif isinstance(item, dict):
                for key, child in reversed(item.items()):
                    if _skipped(key, child, self._skip, path):
                        self.opaque = self.opaque or (key in _PAYLOAD_KEYS and not _inside(path, parsed_at))
                        continue
                    below = _below(path, f"{path}.{key[:MAX_PATH]}" if path else str(key)[:MAX_PATH])
                    stack.append((below, child))
                    if self._data_keys is not None and isinstance(key, str) and self._data_keys(key):
                        stack.append((below, key))
            elif isinstance(item, Copies):  # a key given twice: each copy is at that key
                stack.extend((path, child) for child in reversed(item))
            elif isinstance(item, list):
                stack.extend(
                    (_below(path, f"{path}[{index}]"), child) for index, child in reversed(list(enumerate(item)))
                )


def _inside(path: str, parsed_at: list[str]) -> bool:
    """Whether `path` is at or below one of `parsed_at` (or there were too many to tell)."""
    if len(parsed_at) >= _MAX_PARSED:
        return True
    return any(path == at or path.startswith((f"{at}.", f"{at}[")) for at in parsed_at)


def _below(parent: str, path: str) -> str:
    """`path`, a child of `parent`, within MAX_PATH characters (see MAX_PATH)."""
    if len(path) <= MAX_PATH:
        return path
    return parent if parent.endswith("…") else path[: MAX_PATH - 1] + "…"


def _skipped(key: str, value: Any, skip: frozenset[str], parent: str) -> bool:
    """Whether a member (of the object at `parent`) is payload or protocol rather than data:
    `data`, `blob` and `bytes` holding an encoded payload (long base64), `mimeType` holding
    a media type, `_meta` of the result or of a content block. Anything else under those
    names is read: `{"data": {...}}` wraps many APIs' answers, an A2A DataPart's data is what
    the agent reads, and a source may put an IBAN or an address under any name it likes
    (an attacker's probe put them under `data`, `bytes` and `mimeType`)."""
    if key not in skip:
        return False
    if key == "_meta":
        return not parent or _CONTENT_BLOCK.fullmatch(parent) is not None
    if not isinstance(value, str):
        return False
    if key == "mimeType":
        return _MEDIA_TYPE.fullmatch(value) is not None
    return len(value) >= _MIN_PAYLOAD and _BASE64.fullmatch(value) is not None


def strings(
    value: Any,
    max_values: int = MAX_RESULT_VALUES,
    max_chars: int = MAX_RESULT_CHARS,
    skip: frozenset[str] = SKIPPED_KEYS,
) -> Iterator[tuple[str, str]]:
    """The strings `Walk` reads, when whether it was cut does not matter."""
    return iter(Walk(value, max_values, max_chars, skip))


def _loads(text: str) -> Any:
    """A result's JSON text, every copy of a repeated key kept; None (read as text, which
    holds every copy) when it is not JSON or too deep to read so."""
    try:
        return loads_every(text)
    except ValueError:
        return None


def long_number(item: Any) -> bool:
    if isinstance(item, bool):
        return False
    if isinstance(item, int):
        return abs(item) >= _LONG_NUMBER
    return isinstance(item, float) and item.is_integer() and _LONG_NUMBER <= abs(item) < 1e18
