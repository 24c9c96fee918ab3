"""`POST /a2a/tasks/send`: the seed's (AstraGraph's) one A2A endpoint, kept for old clients.

It took an A2A 0.2 `tasks/send` JSON-RPC request and named the target agent in the
params. Bastion translates it into what the agent understands today — the 0.3
`message/send` (`{message, configuration?, metadata?}`; parts `{"kind": "text", …}`
instead of 0.2's `{"type": "text", …}`; the 0.2 `sessionId` becomes the message's
`contextId`; the 0.2 task `id`, which the client chose, is dropped: since 0.3 the agent
names new tasks, and a `taskId` would refer to an existing one) — and hands it to `/a2a/{agent}` as if the client had
sent that, so it is authenticated, decided, journaled and forwarded exactly like any
`SendMessage`. Nothing is forwarded that `/a2a/{agent}` would not forward.

    {"jsonrpc": "2.0", "id": 1, "method": "tasks/send",
     "params": {"agent": "billing", "id": "task-1",
                "message": {"role": "user", "parts": [{"type": "text", "text": "hi"}]}}}
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from bastion._errors import InvalidParams, InvalidRequest, MethodNotAllowed, ParseError

#: The agent may also be named by this header (its `params.agent` wins when both agree).
AGENT_HEADER = b"bastion-agent"
_METHODS = ("tasks/send", "message/send")


def translate(body: bytes, header_agent: str | None) -> tuple[str, bytes]:
    """(agent name, the 0.3 `message/send` request to send it); ProtocolError when the
    request is not one this endpoint takes."""
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ParseError(f"body is not valid JSON: {exc}") from exc
    if not isinstance(request, dict) or request.get("jsonrpc") != "2.0" or "id" not in request:
        raise InvalidRequest("one JSON-RPC 2.0 request (with an id) expected")
    if request.get("method") not in _METHODS:
        raise MethodNotAllowed(f"/a2a/tasks/send takes {' or '.join(_METHODS)}; other methods go to /a2a/{{agent}}")
    params = request.get("params")
    if not isinstance(params, dict):
        raise InvalidParams("'params' must be an object")
    agent = params.get("agent", header_agent)
    if not isinstance(agent, str) or not agent:
        raise InvalidParams("name the agent in params.agent (or the Bastion-Agent header)")
    if header_agent is not None and agent != header_agent:
        raise InvalidParams("params.agent and the Bastion-Agent header name different agents")
    message = params.get("message")
    if not isinstance(message, dict):
        raise InvalidParams("params.message must be an object")
    translated: dict[str, Any] = {"message": _message(message, params)}
    for key in ("configuration", "metadata"):
        if key in params:
            translated[key] = params[key]
    outgoing = {"jsonrpc": "2.0", "id": request["id"], "method": "message/send", "params": translated}
    return agent, orjson.dumps(outgoing)


def _message(message: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    out = {key: value for key, value in message.items() if key != "parts"}
    parts = message.get("parts")
    if not isinstance(parts, list):
        raise InvalidParams("params.message.parts must be a list")
    out["parts"] = [_part(part) for part in parts]
    out.setdefault("kind", "message")
    out.setdefault("messageId", str(uuid.uuid4()))
    if isinstance(params.get("sessionId"), str):
        out.setdefault("contextId", params["sessionId"])
    return out


def _part(part: Any) -> Any:
    if isinstance(part, dict) and "type" in part and "kind" not in part:
        return {**{k: v for k, v in part.items() if k != "type"}, "kind": part["type"]}
    return part
