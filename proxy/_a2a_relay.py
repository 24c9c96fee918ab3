"""What Bastion checks in an A2A agent's answer before relaying it, and the shapes in which
it answers instead: the HTTP+JSON error body and the event that ends a refused stream.

Redirects. An agent's 3xx answer names, in `Location`, where the client should go next —
typically the agent's own address. A client that follows redirects (most do, for a GET)
would then fetch the agent's own card, or send its message, straight to the agent, around
every decision and around the card rewrite. So a redirect is never relayed: refused (502,
`UpstreamError`), whatever route it answers. A 304 (revalidation of the card) is no
redirect and is relayed, and no relayed answer carries a `Location`: A2A gives it no
meaning, and one naming the agent is a way around Bastion too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from bastion._errors import UpstreamError

from ._a2a_card import rewrite_card
from ._asgi import Headers
from ._upstream import UpstreamResponse

#: Never relayed from an answer: hop-by-hop headers, and `Location` (above).
_DROP_RESPONSE = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"trailer", b"upgrade", b"location"})
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    408: "DEADLINE_EXCEEDED",
    413: "RESOURCE_EXHAUSTED",
    429: "RESOURCE_EXHAUSTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


def redirect(response: UpstreamResponse) -> str | None:
    """Why the answer is not relayed when it is a redirect (above); None otherwise. The
    status only: the reason reaches the client, and `Location` names the agent."""
    if 300 <= response.status < 400 and response.status != 304:
        return (
            f"it answered with a redirect (HTTP {response.status}), which Bastion does not relay: "
            "a client following it would reach the agent around Bastion"
        )
    return None


def relayed_headers(response: UpstreamResponse) -> Headers:
    """The answer's headers as they are relayed (no hop-by-hop header, no `Location`)."""
    return [(key, value) for key, value in response.headers if key not in _DROP_RESPONSE]


def rest_error(status: int, reason: str, message: str, metadata: Mapping[str, Any]) -> bytes:
    """The A2A HTTP+JSON error body (google.rpc.Status with one ErrorInfo); metadata
    values become strings, as ErrorInfo's map<string, string> requires."""
    info = {
        "@type": _ERROR_INFO,
        "reason": reason,
        "domain": "bastion.dev",
        "metadata": {key: _string(value) for key, value in metadata.items()},
    }
    error = {"code": status, "status": _STATUS_NAMES.get(status, "INTERNAL"), "message": message, "details": [info]}
    return orjson.dumps({"error": error})


def error_event(payload: bytes) -> bytes:
    """The event that ends a stream Bastion stops relaying: `event: error`, as a2a-sdk agents
    end a failed stream and its clients raise (the JSON-RPC error, or the HTTP+JSON error
    body). `payload` is one line of JSON (orjson never writes a line break)."""
    return b"event: error\ndata: " + payload + b"\n\n"


def _string(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def rewritten_card(data: bytes, agent_url: str, bastion_url: str) -> bytes:
    """The public card's body, rewritten (`_a2a_card`); UpstreamError when it is no card."""
    try:
        card = orjson.loads(data)
    except orjson.JSONDecodeError:
        card = None
    if not isinstance(card, dict):
        raise UpstreamError("the agent's card is not a JSON object")
    return orjson.dumps(rewrite_card(card, agent_url, bastion_url))


def ambiguous_stream(response: UpstreamResponse, streaming: bool) -> str | None:
    """A streaming method's Content-Type that one client reads as an event stream and
    another as one JSON body (the a2a-sdk looks for `text/event-stream` anywhere in it, case
    and all; Bastion and others read the media type): the sniffer would read it one way and
    a client the other. None when every reader agrees."""
    declared = response.header(b"content-type") or b""
    if not streaming or (b"text/event-stream" in declared) == response.is_sse:
        return None
    return f"Content-Type {declared[:64].decode('latin-1')!r}, which clients read differently"
