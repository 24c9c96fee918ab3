"""Which A2A requests are which actions: JSON-RPC methods (1.0 and 0.3 names) and the
HTTP+JSON (REST) routes, each mapped to the A2A 1.0 method it performs.

Every A2A method reads a task or changes the world, so every one is an action and is
decided; there is no protocol traffic on the JSON-RPC endpoint. The tables are
allowlists matched exactly (case, Unicode and all): a method or route not listed here —
a vendor extension, a method added to A2A tomorrow, `sendmessage`, `SendMessage ` or a
full-width look-alike — is refused before it reaches the agent, never carried undecided.

The action names the 1.0 method in `Action.tool` (`SendMessage`, …) whatever the wire
name was, so one policy rule (`match.a2a: ["billing__SendMessage"]`) governs 1.0 and 0.3
clients and both transports alike; and a send's arguments show its message under one
spelling whichever the client used (`_a2a_fields.canonical_send`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson

from bastion._errors import InvalidParams, InvalidRequest, MethodNotAllowed, ParseError
from bastion.v1 import policy_pb2

from ._a2a_fields import canonical_send
from ._budget import ValueBudget
from ._mcp import check_integers, check_unique_keys
from ._methods import Target


@dataclass(frozen=True, slots=True)
class A2aMethod:
    """An A2A 1.0 method: its action kind and whether its answer is an event stream."""

    name: str
    kind: policy_pb2.ActionKind.ValueType
    streaming: bool = False


def _methods(*items: A2aMethod) -> dict[str, A2aMethod]:
    return {item.name: item for item in items}


_SEND, _GET, _CANCEL, _PUSH = policy_pb2.A2A_SEND, policy_pb2.A2A_GET, policy_pb2.A2A_CANCEL, policy_pb2.A2A_PUSH_CONFIG
#: The A2A 1.0 methods, by their JSON-RPC names.
METHODS = _methods(
    A2aMethod("SendMessage", _SEND),
    A2aMethod("SendStreamingMessage", _SEND, streaming=True),
    A2aMethod("GetTask", _GET),
    A2aMethod("ListTasks", _GET),
    A2aMethod("SubscribeToTask", _GET, streaming=True),
    A2aMethod("GetExtendedAgentCard", _GET),
    A2aMethod("CancelTask", _CANCEL),
    A2aMethod("CreateTaskPushNotificationConfig", _PUSH),
    A2aMethod("GetTaskPushNotificationConfig", _PUSH),
    A2aMethod("ListTaskPushNotificationConfigs", _PUSH),
    A2aMethod("DeleteTaskPushNotificationConfig", _PUSH),
)
#: A2A 0.3 JSON-RPC names → the 1.0 method each performs.
LEGACY_NAMES = {
    "message/send": "SendMessage",
    "message/stream": "SendStreamingMessage",
    "tasks/get": "GetTask",
    "tasks/cancel": "CancelTask",
    "tasks/resubscribe": "SubscribeToTask",
    "tasks/pushNotificationConfig/set": "CreateTaskPushNotificationConfig",
    "tasks/pushNotificationConfig/get": "GetTaskPushNotificationConfig",
    "tasks/pushNotificationConfig/list": "ListTaskPushNotificationConfigs",
    "tasks/pushNotificationConfig/delete": "DeleteTaskPushNotificationConfig",
    "agent/getAuthenticatedExtendedCard": "GetExtendedAgentCard",
}
#: Where a caller may name the workflow and the task (A2A has no `_meta`; `metadata` is
#: the request's own extension point in 1.0 and 0.3).
WORKFLOW_METADATA_KEY = "bastion.dev/workflow_id"
TASK_METADATA_KEY = "bastion.dev/task"
MAX_ID_CHARS = 256


@dataclass(frozen=True, slots=True)
class Request:
    """One JSON-RPC request to an agent."""

    id: Any
    wire_method: str
    method: A2aMethod
    params: dict[str, Any]

    @property
    def metadata(self) -> dict[str, Any]:
        return _metadata(self.params)


def parse_jsonrpc(raw: bytes) -> tuple[Any, dict[str, Any]]:
    """The id and body of one JSON-RPC request; ParseError / InvalidRequest otherwise."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ParseError(f"body is not valid JSON: {exc}") from exc
    check_integers(raw)
    if isinstance(body, list):
        # One message per request: a batch would need every member decided and the
        # answers reassembled, and no A2A client sends one.
        raise InvalidRequest("JSON-RPC batches are not accepted on /a2a; send one request per HTTP request")
    check_unique_keys(raw, body)  # the agent is sent these bytes: it must read what was decided
    if not isinstance(body, dict):
        raise InvalidRequest("a JSON-RPC request must be a JSON object")
    msg_id = body.get("id")
    if msg_id is not None and (isinstance(msg_id, bool) or not isinstance(msg_id, str | int)):
        raise InvalidRequest("'id' must be a string or an integer")
    if body.get("jsonrpc") != "2.0":
        raise InvalidRequest("'jsonrpc' must be \"2.0\"")
    return msg_id, body


def classify_jsonrpc(msg_id: Any, body: dict[str, Any], budget: ValueBudget, raw: bytes) -> Request:
    """The A2A method a parsed JSON-RPC body asks for, its params checked against the budget."""
    wire = body.get("method")
    if not isinstance(wire, str) or not wire:
        raise InvalidRequest("'method' must be a non-empty string (responses and notifications are not A2A requests)")
    name = LEGACY_NAMES.get(wire, wire)
    method = METHODS.get(name)
    if method is None:
        raise MethodNotAllowed(_unknown(wire))
    if "id" not in body:
        raise InvalidRequest(f"{wire} is a request: it needs an 'id'")
    params = body.get("params", {})
    if not isinstance(params, dict):
        raise InvalidParams(f"{wire} params must be an object")
    if not budget.fits_raw(raw):
        budget.check(params, f"{wire} params")
    if method.kind == _SEND:
        params = canonical_send(params)
    return Request(msg_id, wire, method, params)


def target(agent: str, method: A2aMethod, arguments: dict[str, Any]) -> Target:
    return Target(method.kind, tool=method.name, arguments=arguments, target_agent=agent)


# --- HTTP+JSON ----------------------------------------------------------------------

#: (HTTP method, route) → 1.0 method. Routes are the binding's paths after the interface
#: URL, with `{id}` and `{push_id}` one segment each.
_ROUTES: dict[tuple[str, str], str] = {
    ("POST", "message:send"): "SendMessage",
    ("POST", "message:stream"): "SendStreamingMessage",
    ("GET", "tasks"): "ListTasks",
    ("GET", "tasks/{id}"): "GetTask",
    ("POST", "tasks/{id}:cancel"): "CancelTask",
    ("GET", "tasks/{id}:subscribe"): "SubscribeToTask",
    ("POST", "tasks/{id}:subscribe"): "SubscribeToTask",
    ("POST", "tasks/{id}/pushNotificationConfigs"): "CreateTaskPushNotificationConfig",
    ("GET", "tasks/{id}/pushNotificationConfigs"): "ListTaskPushNotificationConfigs",
    ("GET", "tasks/{id}/pushNotificationConfigs/{push_id}"): "GetTaskPushNotificationConfig",
    ("DELETE", "tasks/{id}/pushNotificationConfigs/{push_id}"): "DeleteTaskPushNotificationConfig",
    ("GET", "extendedAgentCard"): "GetExtendedAgentCard",
    ("GET", "card"): "GetExtendedAgentCard",  # 0.3 `/v1/card`
}
#: A path segment Bastion forwards as it came: unreserved characters only, so no
#: percent-encoded '/', '.' or '\\' can make the agent see a different path than policy.
_SEGMENT = re.compile(r"[A-Za-z0-9_~@!$'()*+,;=:.-]{1,256}")
_PREFIX = re.compile(r"[A-Za-z0-9_~-]{1,128}")


@dataclass(frozen=True, slots=True)
class RestCall:
    method: A2aMethod
    route: str
    arguments: dict[str, Any]
    #: The segment before the route ("" when none): a 1.0 tenant, or 0.3's `v1`, keyed as
    #: one all the same (`_a2a_tasks`: a tenant only ever narrows who reaches a task).
    tenant: str = ""


def classify_rest(http_method: str, path: str, query: bytes, body: bytes, budget: ValueBudget) -> RestCall:
    """The A2A method of an HTTP+JSON request. `path` is the raw (still percent-encoded)
    path after `/a2a/{agent}/`: an optional `v1/` (0.3) or tenant segment, then a route.

    Raises MethodNotAllowed for a route the binding does not have (the adapter answers
    404), InvalidParams / ParseError for path segments or a body it cannot accept.
    """
    segments = path.split("/")
    for segment in segments:
        if segment in ("", ".", "..") or _SEGMENT.fullmatch(segment) is None:
            raise InvalidParams(f"path {path[:200]!r} has an empty, dot or non-plain segment; it was not forwarded")
    # One optional leading segment: 0.3's `v1`, or a 1.0 tenant.
    for skip in (0, 1):
        if skip and _PREFIX.fullmatch(segments[0]) is None:
            break
        found = _route(http_method, segments[skip:])
        if found is not None:
            name, params = found
            arguments = _rest_arguments(name, params, query, body, budget)
            if METHODS[name].kind == _SEND:
                arguments = canonical_send(arguments)
            tenant = segments[0] if skip else ""
            if arguments.get("tenant") not in (None, tenant):
                # The a2a-sdk agent takes the path's; another may take the body's.
                raise InvalidParams("the request's 'tenant' disagrees with the path's tenant segment")
            return RestCall(METHODS[name], "/".join(segments[skip:]), arguments, tenant)
    raise MethodNotAllowed(f"{http_method} /{path[:200]} is not an A2A HTTP+JSON route Bastion carries")


def _route(http_method: str, segments: list[str]) -> tuple[str, dict[str, str]] | None:
    params: dict[str, str] = {}
    shape: list[str] = []
    for index, segment in enumerate(segments):
        if index == 1 and segments[0] == "tasks":
            head, sep, verb = segment.partition(":")
            params["id"] = head
            shape.append("{id}" + (sep + verb if sep else ""))
        elif index == 3 and segments[0] == "tasks" and segments[2] == "pushNotificationConfigs":
            params["push_id"] = segment
            shape.append("{push_id}")
        else:
            shape.append(segment)
    name = _ROUTES.get((http_method, "/".join(shape)))
    if name is None or any(not value for value in params.values()):
        return None
    return name, params


def _rest_arguments(
    name: str, params: dict[str, str], query: bytes, body: bytes, budget: ValueBudget
) -> dict[str, Any]:
    """The request as the JSON-RPC binding would carry it: body, then query, then path
    parameters under their JSON-RPC names. The agent acts on the path, so a body that
    names another task than the path is refused rather than shown to policy."""
    arguments: dict[str, Any] = {}
    if body.strip():
        budget.refuse_unparsed(body, f"the {name} body")
        try:
            decoded = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ParseError(f"body is not valid JSON: {exc}") from exc
        check_integers(body)  # as on the JSON-RPC binding: no integer policy would see rounded
        if not isinstance(decoded, dict):
            raise InvalidParams("an A2A HTTP+JSON body must be a JSON object")
        check_unique_keys(body, decoded)
        if not budget.fits_raw(body):
            budget.check(decoded, f"{name} body")
        arguments.update(decoded)
    if query:
        pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True, max_num_fields=64)
        for key, value in pairs:
            if key in arguments and arguments[key] != value:
                raise InvalidParams(f"query parameter {key!r} is given twice or disagrees with the body")
            arguments[key] = value
    renamed = {"id": "taskId", "push_id": "id"} if METHODS[name].kind == _PUSH else {"id": "id"}
    for key, value in params.items():
        field = renamed[key]
        if field in arguments and arguments[field] != value:
            raise InvalidParams(f"the body's {field!r} disagrees with the path; the agent would act on the path")
        arguments[field] = value
    return arguments


def _metadata(params: dict[str, Any]) -> dict[str, Any]:
    metadata = params.get("metadata")
    return metadata if isinstance(metadata, dict) else {}


def workflow_hint(arguments: dict[str, Any]) -> object:
    return _metadata(arguments).get(WORKFLOW_METADATA_KEY)


def task_hint(arguments: dict[str, Any]) -> object:
    return _metadata(arguments).get(TASK_METADATA_KEY)


def _unknown(method: str) -> str:
    known = {name.lower(): name for name in (*METHODS, *LEGACY_NAMES)}
    hint = known.get(method.lower())
    suffix = f" (method names are case-sensitive: did you mean {hint!r}?)" if hint else ""
    return f"method {method[:200]!r} is not an A2A method Bastion carries; it was not forwarded{suffix}"
