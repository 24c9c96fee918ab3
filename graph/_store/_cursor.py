"""Opaque keyset cursors: the sort key of the last item of a page.

Keyset paging (WHERE key < last key) costs the same on page 1000 as on page 1, and
does not skip or repeat items when new rows arrive between pages, as OFFSET would.
The cursor names the listing it belongs to, so a workflow cursor handed to the
violations listing is refused rather than silently misread.
"""

from __future__ import annotations

import base64
import binascii

import orjson

from bastion._errors import ProtocolError

#: A cursor's time, as the stores keep it: a signed 64-bit integer.
_MIN_NS, _MAX_NS = -(2**63), 2**63 - 1


def encode_cursor(kind: str, time_ns: int, key: str) -> str:
    raw = orjson.dumps([kind, time_ns, key])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(kind: str, cursor: str) -> tuple[int, str]:
    """The (time_ns, key) of a cursor made by `encode_cursor(kind, ...)`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        decoded = orjson.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise invalid_cursor() from exc
    match decoded:
        # Within a signed 64-bit integer, as the stores keep times: a forged 2**63 reached
        # SQLite and answered 500 (an attacker's probe). A bool is an int to `match`.
        case [str(found), int(time_ns), str(key)] if (
            found == kind and type(time_ns) is int and _MIN_NS <= time_ns <= _MAX_NS
        ):
            return time_ns, key
    raise invalid_cursor()


def invalid_cursor() -> ProtocolError:
    return ProtocolError("invalid cursor: pass back the next_cursor of the previous page unchanged")
