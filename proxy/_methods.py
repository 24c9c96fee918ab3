"""Which MCP methods are actions (decided) and which are protocol traffic (recorded only).

Every method that reads data or changes the world is an action with its own kind and is
decided by policy and scored by the verifier, failing closed like `tools/call`. Protocol
traffic — the lifecycle, pings, notifications, list methods (answers are filtered by
policy in a later version), and the client's answers to server requests — is journaled
and forwarded. Any other method is refused before it reaches the upstream: an allowlist,
so a method added to MCP tomorrow, a vendor extension or a case variant such as
`Tools/Call` is never carried undecided. Method names are matched exactly.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from bastion._errors import InvalidParams, MethodNotAllowed
from bastion.v1 import policy_pb2

from ._budget import ValueBudget
from ._mcp import Message, validate_tool_name

#: Carried and recorded, never decided (MCP 2024-11-05 … 2026-07-28, client → server).
PROTOCOL_METHODS = frozenset(
    {
        "initialize",
        "ping",
        "server/discover",
        "logging/setLevel",
        "tools/list",
        "prompts/list",
        "resources/list",
        "resources/templates/list",
        # Stops something already decided; it reads and changes nothing.
        "resources/unsubscribe",
        "notifications/initialized",
        "notifications/cancelled",
        "notifications/progress",
        "notifications/roots/list_changed",
    }
)
#: A 2026-07 listen stream may subscribe to resources; each URI is decided like resources/subscribe.
_LISTEN = "subscriptions/listen"
MAX_URI_CHARS = 2048
MAX_LISTEN_URIS = 64
_DOT_SEGMENT = re.compile(r"(^|/)\.\.?(/|$)|%2e", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Target:
    """One governed action a message asks for."""

    kind: policy_pb2.ActionKind.ValueType
    tool: str = ""
    prompt: str = ""
    resource: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)
    #: The A2A agent an A2A action is addressed to (its key in bastion.yaml); "" for MCP.
    target_agent: str = ""

    @property
    def name(self) -> str:
        """What the action is about, as the verifier's history and the block envelope show it."""
        return self.tool or self.prompt or self.resource


def classify(message: Message, budget: ValueBudget, body: bytes) -> tuple[Target, ...]:
    """The actions `message` asks for; () for protocol traffic. Raises a ProtocolError
    for a method Bastion does not carry or params it cannot accept."""
    method = message.method
    if method is None or method in PROTOCOL_METHODS:
        return ()
    params = message.params
    if method == "tools/call":
        name = _string(params, "name", method)
        validate_tool_name(name)
        target = Target(policy_pb2.TOOL_CALL, tool=name, arguments=_object(params, "arguments", method))
    elif method == "prompts/get":
        name = _string(params, "name", method)
        validate_tool_name(name, what="prompt name")
        target = Target(policy_pb2.PROMPT_GET, prompt=name, arguments=_object(params, "arguments", method))
    elif method == "resources/read":
        target = Target(policy_pb2.RESOURCE_READ, resource=validate_uri(_string(params, "uri", method)))
    elif method == "resources/subscribe":
        target = Target(policy_pb2.RESOURCE_SUBSCRIBE, resource=validate_uri(_string(params, "uri", method)))
    elif method == "completion/complete":
        target = _completion(params)
    elif method == _LISTEN:
        return _listen(params)
    elif method.startswith("notifications/"):
        raise MethodNotAllowed(f"notification {method!r} is not one a client sends; it is not forwarded")
    else:
        raise MethodNotAllowed(_unknown(method))
    if target.arguments and not budget.fits_raw(body):
        budget.check(target.arguments, f"{method} arguments")
    return (target,)


def _completion(params: dict[str, Any]) -> Target:
    ref = params.get("ref")
    if not isinstance(ref, dict):
        raise InvalidParams("completion/complete needs params.ref (an object)")
    # What is being completed stays with the action; the ref itself is the target.
    arguments = {key: value for key, value in params.items() if key not in ("ref", "_meta")}
    if ref.get("type") == "ref/prompt":
        name = _string(ref, "name", "completion/complete ref")
        validate_tool_name(name, what="prompt name")
        return Target(policy_pb2.COMPLETION, prompt=name, arguments=arguments)
    if ref.get("type") == "ref/resource":
        uri = validate_uri(_string(ref, "uri", "completion/complete ref"))
        return Target(policy_pb2.COMPLETION, resource=uri, arguments=arguments)
    raise InvalidParams("completion/complete params.ref.type must be 'ref/prompt' or 'ref/resource'")


def _listen(params: dict[str, Any]) -> tuple[Target, ...]:
    notifications = params.get("notifications")
    uris = notifications.get("resourceSubscriptions") if isinstance(notifications, dict) else None
    if uris is None:
        return ()
    if not isinstance(uris, list) or not all(isinstance(uri, str) for uri in uris):
        raise InvalidParams("subscriptions/listen resourceSubscriptions must be a list of URI strings")
    if len(uris) > MAX_LISTEN_URIS:
        raise InvalidParams(f"subscriptions/listen subscribes to {len(uris)} resources; at most {MAX_LISTEN_URIS}")
    return tuple(Target(policy_pb2.RESOURCE_SUBSCRIBE, resource=validate_uri(uri)) for uri in dict.fromkeys(uris))


def validate_uri(uri: str) -> str:
    """A resource URI a policy glob can be trusted on: no dot segments (or their
    percent-encoded form) that an upstream might resolve to another resource, no
    whitespace, control or invisible characters."""
    if not uri or len(uri) > MAX_URI_CHARS:
        raise InvalidParams(f"resource URI must be 1-{MAX_URI_CHARS} characters")
    if any(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in uri):
        raise InvalidParams(f"resource URI {uri[:200]!r} rejected: contains whitespace, control or format characters")
    if "\\" in uri or _DOT_SEGMENT.search(uri.partition("?")[0]):
        raise InvalidParams(f"resource URI {uri[:200]!r} rejected: contains '.'/'..' segments, '%2e' or '\\'")
    return uri


def _string(params: dict[str, Any], key: str, what: str) -> str:
    value = params.get(key)
    if not isinstance(value, str):
        raise InvalidParams(f"{what} needs params.{key} (a string)")
    return value


def _object(params: dict[str, Any], key: str, what: str) -> dict[str, Any]:
    value = params.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidParams(f"{what} params.{key} must be an object")
    return value


def _unknown(method: str) -> str:
    known = {m.lower(): m for m in (*PROTOCOL_METHODS, "tools/call", "prompts/get", "resources/read")}
    hint = known.get(method.lower())
    suffix = f" (method names are case-sensitive: did you mean {hint!r}?)" if hint else ""
    return f"method {method[:200]!r} is not an MCP method Bastion carries; it was not forwarded{suffix}"
