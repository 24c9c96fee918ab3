"""Reading MCP JSON-RPC messages on the hot path, without an SDK.

The body is parsed once with orjson; the proxy then needs only a few fields (method,
id, tool name, `_meta`) to govern it, and forwards the original bytes untouched, so
tool schemas and arguments reach the upstream byte for byte. That is safe only while
every reader of those bytes reads the same message: integers beyond 64 bits and keys
given twice are refused (`check_integers`, `check_unique_keys`), since the decision and
the upstream could read them differently.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

import orjson

from bastion._errors import HeaderMismatch, InvalidParams, InvalidRequest, ParseError
from bastion._json import RepeatedKey, loads_strict

WORKFLOW_META_KEY = "bastion.dev/workflow_id"
TASK_META_KEY = "bastion.dev/task"
_NAME_BEARING = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
_TOOL_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,127}")


@dataclass(frozen=True, slots=True)
class Message:
    """The parts of one JSON-RPC message the proxy governs."""

    body: dict[str, Any]
    method: str | None  # None for a response (the client answering a server request)
    id: Any
    params: dict[str, Any]

    @property
    def meta(self) -> dict[str, Any]:
        meta = self.params.get("_meta")
        return meta if isinstance(meta, dict) else {}

    @property
    def is_request(self) -> bool:
        return self.method is not None and "id" in self.body


def parse_message(raw: bytes) -> Message:
    """Parse one JSON-RPC message; batches are refused (MCP removed them in 2025-06)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ParseError(f"body is not valid JSON: {exc}") from exc
    check_integers(raw)
    if isinstance(body, list):
        raise InvalidRequest("JSON-RPC batches are not accepted: MCP since 2025-06-18 sends one message per request")
    check_unique_keys(raw, body)
    if not isinstance(body, dict):
        raise InvalidRequest("a JSON-RPC message must be a JSON object")
    if body.get("jsonrpc") != "2.0":
        raise InvalidRequest("'jsonrpc' must be \"2.0\"")
    msg_id = body.get("id")
    if msg_id is not None and (isinstance(msg_id, bool) or not isinstance(msg_id, str | int)):
        raise InvalidRequest("'id' must be a string or an integer")
    method = body.get("method")
    if method is None:
        if "id" not in body or ("result" in body) == ("error" in body):
            raise InvalidRequest("a message needs 'method' (request/notification) or 'result'/'error' (response)")
        return Message(body=body, method=None, id=msg_id, params={})
    if not isinstance(method, str) or not method:
        raise InvalidRequest("'method' must be a non-empty string")
    params = body.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise InvalidRequest("'params' must be an object")
    return Message(body=body, method=method, id=msg_id, params=params)


#: A run of 19+ digits is the only way to write an integer beyond 64 bits. Rare, so the
#: exact check below (a second, slower parse) runs almost never. The run is looked for
#: with every digit mapped to "0" and every other byte to "x": `translate` and `in` run at
#: memory speed, where the regex `\d{19}` took 37 ms over a 4 MB body of `0,0,…`.
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x78 for byte in range(256))
_LONG_RUN = b"0" * 19
_INT_LIMIT = 1 << 63


def check_integers(raw: bytes) -> None:
    """Refuse integers beyond 64 bits: orjson reads them as floats, so policy would decide
    on a rounded value while the upstream reads the exact digits."""
    if _LONG_RUN not in raw.translate(_DIGITS_AS_ZERO):
        return

    def exact(text: str) -> int:
        value = int(text)
        if not -_INT_LIMIT <= value < (_INT_LIMIT << 1):
            raise InvalidParams(
                f"integer {text[:40]}{'…' if len(text) > 40 else ''} is beyond 64 bits: it cannot be governed "
                "exactly (send it as a string)"
            )
        return value

    try:
        json.loads(raw, parse_int=exact)
    except (ValueError, RecursionError) as exc:  # orjson read it; fail closed if we cannot
        raise ParseError(f"body could not be checked for exact numbers: {exc}") from exc


def check_unique_keys(raw: bytes, parsed: object) -> None:
    """Refuse a body in which one object gives a key twice.

    orjson keeps the last copy and the decision is made on it, while the body goes upstream
    as it came: an upstream whose parser keeps the first copy (many streaming readers do)
    would run `{"name": "delete_file", "name": "echo"}` as the call nobody decided, and the
    journal would show the other. JSON (RFC 8259) leaves such a body's meaning to the reader,
    so it is refused rather than resolved.

    What a compact client sends is checked for the price of one `orjson.dumps`: re-serialised
    the same bytes, so no key repeats. Anything else (pretty-printed, escaped, spaced) is
    read once more keeping every key — bounded, as the value budget has bounded the body.
    """
    if orjson.dumps(parsed) == raw:
        return
    try:
        loads_strict(raw)
    except RepeatedKey as exc:
        shown = exc.key if len(exc.key) <= 64 else exc.key[:64] + "…"
        raise InvalidRequest(
            f"the key {shown!r} is given twice in one object: readers that keep the first and the last "
            "copy would see different requests; send each key once"
        ) from None
    except ValueError as exc:  # orjson read it; fail closed if we cannot
        raise ParseError(f"body could not be checked for repeated keys: {exc}") from exc


#: Headers the proxy reads one value of, while the upstream may read another: sent twice
#: (say, someone's session id first and one's own second), the check and the use could
#: see different values, so a second copy is refused.
_SINGLE_VALUED = frozenset(
    {
        b"authorization",
        b"mcp-session-id",
        b"mcp-protocol-version",
        b"mcp-method",
        b"mcp-name",
        b"bastion-workflow-id",
        b"bastion-delegation",
        b"last-event-id",
        b"content-type",
    }
)


def check_single_headers(headers: list[tuple[bytes, bytes]]) -> None:
    seen: set[bytes] = set()
    for name, _ in headers:
        if name in _SINGLE_VALUED:
            if name in seen:
                raise InvalidRequest(f"header {name.decode()!r} was sent more than once; send it once")
            seen.add(name)


def check_routing_headers(message: Message, mcp_method: str | None, mcp_name: str | None) -> None:
    """2026-07 stateless requests repeat method and name in headers; they must agree with the body.

    Otherwise a filter that reads headers (a gateway, a WAF) and the upstream that reads
    the body would see different calls.
    """
    if mcp_method is not None and mcp_method != message.method:
        raise HeaderMismatch(f"Mcp-Method header {mcp_method!r} does not match body method {message.method!r}")
    field = _NAME_BEARING.get(message.method or "")
    if mcp_name is not None and field is not None and mcp_name != message.params.get(field):
        raise HeaderMismatch(f"Mcp-Name header {mcp_name!r} does not match params.{field}")


def validate_tool_name(name: str, what: str = "tool name") -> None:
    """Reject names that could mean different tools (or prompts) to different readers.

    A name must already be in NFKC form and ASCII (so a full-width or ligature
    look-alike is not silently folded into a permitted name) and, compared
    case-insensitively, match `^[a-z0-9][a-z0-9_.-]{0,127}$` — real servers use
    camelCase names, so case is kept but cannot smuggle in other characters.
    Traversal (`..`), separators and control characters are named in the error.
    Case variants of a real name are caught later, against the upstream's live list.
    """
    for bad, label in (("\x00", "NUL"), ("/", "'/'"), ("\\", "'\\'"), ("..", "'..'")):
        if bad in name:
            raise InvalidParams(f"{what} {name!r} rejected: contains {label}")
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise InvalidParams(f"{what} {name!r} rejected: contains control or format characters")
    if unicodedata.normalize("NFKC", name) != name or not name.isascii():
        raise InvalidParams(f"{what} {name!r} rejected: non-ASCII or confusable characters")
    if _TOOL_NAME.fullmatch(name.lower()) is None:
        raise InvalidParams(
            f"{what} {name!r} rejected: must match ^[a-z0-9][a-z0-9_.-]{{0,127}}$ (ASCII letters, digits, _ . -)"
        )
